package vault

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
)

// DefaultKeyRefresh is how long a transit key's type and latest version are
// cached when no interval is configured.
const DefaultKeyRefresh = time.Minute

// DefaultPublishDelay is how old a transit key version must be before JWTs
// and audit checkpoints are signed with it: the broker's JWKS cache (DefaultPublicKeysTTL, 30 s),
// its Cache-Control max-age (60 s) and a verifier's spacing of refetches
// on an unknown kid (30 s, as broker/authn's).
const DefaultPublishDelay = 2 * time.Minute

// JWTMinterOptions configure NewJWTMinter.
type JWTMinterOptions struct {
	Client       *vaultapi.Client // from NewClient (required)
	PublicURL    string           // the broker's public URL: iss of every JWT (required)
	TransitMount string           // default "transit"
	KeyRefresh   time.Duration    // key metadata cache; default DefaultKeyRefresh
	// PublishDelay: a version Vault created less than this long ago is
	// not signed with while an older one can be; default
	// DefaultPublishDelay.
	PublishDelay time.Duration
	Now          func() time.Time // default time.Now; used when req.Now is zero
}

// JWTMinter mints JWTs for grants of kind jwt, signed by a Vault transit key
// (ecdsa-p256 → ES256, ed25519 → EdDSA); the header kid is
// "<transit key>:<version>", as TransitKeys lists it.
//
// It signs with the newest version Vault created at least PublishDelay ago
// (the latest one unless the key was just rotated, or min_encryption_version
// leaves no older one): a rotated-in version is first published in the
// JWKS, then used, so verifiers that cached the JWKS before the rotation
// do not refuse fresh JWTs for an unknown kid.
//
// Claims: iss (PublicURL), sub (workload), aud (the grant's audience, a
// single string), owner, sid (session id), jti (issuance id), grant, iat,
// nbf (= iat) and exp (iat + TTL in whole seconds, never later than
// req.Now+req.TTL). Every signature Vault returns is verified against the
// key's public key before the JWT is handed out.
type JWTMinter struct {
	c       *vaultapi.Client
	iss     string
	mount   string
	keys    *keyCache
	publish time.Duration
	now     func() time.Time
}

var (
	_ broker.Minter  = (*JWTMinter)(nil)
	_ broker.Revoker = (*JWTMinter)(nil)
)

// NewJWTMinter validates o and returns a JWTMinter.
func NewJWTMinter(o JWTMinterOptions) (*JWTMinter, error) {
	keys, errs := transitKeyCache("vault jwt minter", o.Client, o.TransitMount, o.KeyRefresh, o.Now)
	if u, err := url.Parse(o.PublicURL); o.PublicURL == "" || err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		errs = append(errs, errors.New("vault jwt minter: public_url must be an absolute http(s) URL"))
	}
	publish, err := publishDelay("vault jwt minter", o.PublishDelay)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	// iss is the discovery issuer, which httpapi serves without a trailing
	// slash; verifiers compare the two byte for byte.
	return &JWTMinter{c: o.Client, iss: strings.TrimRight(o.PublicURL, "/"), mount: keys.mount, keys: keys, publish: publish, now: keys.now}, nil
}

// Mint signs one JWT.
func (m *JWTMinter) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	g := req.Grant.JWT
	switch {
	case req.Grant.Kind != broker.KindJWT || g == nil:
		return nil, configError("grant %q of kind %q is not a jwt grant", req.Grant.Name, req.Grant.Kind)
	case g.Audience == "":
		return nil, configError("grant %q has no audience", req.Grant.Name)
	case !validName(g.TransitKey) || strings.Contains(g.TransitKey, "/"):
		return nil, configError("grant %q: bad transit key name %q", req.Grant.Name, g.TransitKey)
	case req.IssuanceID == "" || req.Workload == "":
		return nil, configError("mint request without issuance id or workload")
	}
	secs := int64(req.TTL / time.Second)
	if secs < 1 {
		return nil, broker.Errorf(broker.ErrInvalidRequest, "ttl_too_short", "the requested ttl is too short", fmt.Errorf("jwt ttl %v < 1s", req.TTL))
	}
	k, err := m.keys.get(ctx, g.TransitKey)
	if err != nil {
		return nil, err
	}
	now := req.Now
	if now.IsZero() {
		now = m.now()
	}
	iat := now.Unix() // floors: exp = iat+secs <= now+TTL
	exp := iat + secs
	version := k.signingVersion(now, m.publish)
	method := k.method()
	tok := jwt.NewWithClaims(method, jwt.MapClaims{
		"iss":   m.iss,
		"sub":   req.Workload,
		"aud":   g.Audience,
		"owner": req.Owner,
		"sid":   req.SessionID,
		"jti":   req.IssuanceID,
		"grant": req.Grant.Name,
		"iat":   iat,
		"nbf":   iat,
		"exp":   exp,
	})
	keyID := kid(k.Name, version)
	tok.Header["kid"] = keyID
	signing, err := tok.SigningString()
	if err != nil {
		return nil, configError("encode jwt: %v", err)
	}
	sig, err := m.sign(ctx, k, version, signing)
	if err != nil {
		return nil, err
	}
	if err := method.Verify(signing, sig, k.Public[version]); err != nil {
		m.keys.forget(k.Name)
		return nil, badResponse("sign", "signature does not verify with key "+keyID)
	}
	return &broker.Credential{
		AccessToken: signing + "." + base64.RawURLEncoding.EncodeToString(sig),
		Fields:      map[string]any{"jti": req.IssuanceID, "kid": keyID},
		Refs:        broker.CredentialRefs{JTI: req.IssuanceID, ExpiresAt: time.Unix(exp, 0).UTC()},
	}, nil
}

// sign asks transit to sign the JWS signing input with the given version of
// the key and returns the raw signature.
func (m *JWTMinter) sign(ctx context.Context, k *transitKey, version int, signing string) ([]byte, error) {
	const op = "sign"
	body := map[string]any{
		"input":       base64.StdEncoding.EncodeToString([]byte(signing)),
		"key_version": version,
	}
	if k.Type == KeyTypeECDSAP256 {
		body["hash_algorithm"] = "sha2-256"
		body["marshaling_algorithm"] = "jws"
	}
	sec, err := m.c.Logical().WriteWithContext(ctx, m.mount+"/sign/"+k.Name, body)
	if err != nil {
		if statusOf(err) == 400 {
			// The key may have changed (rotated, min_encryption_version
			// raised): read it again next time.
			m.keys.forget(k.Name)
		}
		return nil, translate(op, err)
	}
	if sec == nil || sec.Data == nil {
		return nil, badResponse(op, "no data")
	}
	s, _ := sec.Data["signature"].(string)
	sig, err := parseVaultSignature(s, version, k.Type)
	if err != nil {
		return nil, badResponse(op, err.Error())
	}
	return sig, nil
}

// Revoke does nothing at Vault: a JWT cannot be recalled from its holders;
// the broker's revocation list (checked on introspection) covers it.
func (m *JWTMinter) Revoke(context.Context, *broker.Issuance) error { return nil }
