package vault

import (
	"context"
	"crypto"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
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
	// Published is the key list the broker's JWKS serves (TransitKeys, or
	// what serves it): when set, Mint signs only with a version it lists,
	// with the same public key, and counts a version it lists later than
	// at the first look as published from then on (PublishDelay applies
	// from the later of that and creation_time). It is asked on every mint,
	// so it must answer from a cache (as TransitKeys does, reading Vault
	// at most every CacheTTL). Nil: versions are chosen from the minter's
	// own read of the key only.
	Published broker.PublicKeySource
	// Log gets Vault's warnings on transit sign (a 200 that signed, with
	// something about the key or the request Vault would have the
	// operator know), each once per grant and warning every 10 minutes,
	// and on the reads of the key, each once per key and warning every 10
	// minutes; default slog.Default().
	Log *slog.Logger
	Now func() time.Time // default time.Now; used when req.Now is zero
}

// JWTMinter mints JWTs for grants of kind jwt, signed by a Vault transit key
// (ecdsa-p256 → ES256, ed25519 → EdDSA); the header kid is
// "<transit key>:<version>", as TransitKeys lists it. EdDSA, not RFC 9864's
// fully specified "Ed25519" (the same signature), on purpose: relying
// parties' libraries (golang-jwt v5, keyfunc v3) do not verify "Ed25519"
// yet; broker/authn accepts both from identity-token issuers.
//
// It signs with the newest version Vault created at least PublishDelay ago
// (the latest one unless the key was just rotated, or min_encryption_version
// leaves no older one): a rotated-in version is first published in the
// JWKS, then used, so verifiers that cached the JWKS before the rotation
// do not refuse fresh JWTs for an unknown kid. With Published set, the
// version is also one the JWKS serves at that moment: when Vault flaps and
// the JWKS keeps serving its last list (TransitKeys' MaxStale) while the
// minter's own read sees a newer version, JWTs keep the served kid; when
// the JWKS serves no version transit would sign with, Mint fails
// (ErrUnavailable, vault_unavailable) rather than sign with a kid
// verifiers cannot find.
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
	warn    *warnLog

	published broker.PublicKeySource
	mu        sync.Mutex
	// since is when Mint first found each version in Published's list;
	// the zero time for versions listed when it first looked at their key
	// (published, as far as the minter knows, since their creation).
	since map[keyVersion]time.Time
}

// keyVersion names one version of a transit key.
type keyVersion struct {
	name    string
	version int
}

var (
	_ broker.Minter  = (*JWTMinter)(nil)
	_ broker.Revoker = (*JWTMinter)(nil)
)

// NewJWTMinter validates o and returns a JWTMinter.
func NewJWTMinter(o JWTMinterOptions) (*JWTMinter, error) {
	keys, errs := transitKeyCache("vault jwt minter", o.Client, o.TransitMount, o.KeyRefresh, o.Now, o.Log)
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
	return &JWTMinter{c: o.Client, iss: strings.TrimRight(o.PublicURL, "/"), mount: keys.mount, keys: keys, publish: publish, now: keys.now,
		warn: newWarnLog(o.Log, keys.now), published: o.Published, since: map[keyVersion]time.Time{}}, nil
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
	if m.published != nil {
		if version, err = m.publishedVersion(ctx, k, now); err != nil {
			return nil, err
		}
	}
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
	sig, err := m.sign(ctx, k, version, signing, req)
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

// publishedVersion is the version of k to sign with at now among those
// m.published lists (see JWTMinter).
func (m *JWTMinter) publishedVersion(ctx context.Context, k *transitKey, now time.Time) (int, error) {
	served, err := m.published.PublicKeys(ctx)
	if err != nil {
		return 0, translate("read the served JWKS", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if _, looked := m.since[keyVersion{name: k.Name}]; !looked {
		// The first look at the key (version 0 marks it): what is served
		// now counts as published since its creation.
		m.since[keyVersion{name: k.Name}] = time.Time{}
		for v := k.MinDecryption; v <= k.Latest; v++ {
			if servesVersion(served, k.Name, v, k.Public[v]) {
				m.since[keyVersion{k.Name, v}] = time.Time{}
			}
		}
	}
	v := k.signingVersionIn(now, m.publish, func(v int) (bool, time.Time) {
		if !servesVersion(served, k.Name, v, k.Public[v]) {
			return false, time.Time{}
		}
		kv := keyVersion{k.Name, v}
		since, ok := m.since[kv]
		if !ok {
			since = now
			m.since[kv] = since
		}
		return true, since
	})
	if v == 0 {
		return 0, broker.Unavailable(ReasonUnavailable, retryOutage,
			fmt.Errorf("vault jwt minter: the JWKS the broker serves lists no version of transit key %s/keys/%s that transit signs with", m.mount, k.Name))
	}
	return v, nil
}

// servesVersion reports whether keys lists version v of transit key name
// with public key pub.
func servesVersion(keys []broker.PublicKey, name string, v int, pub crypto.PublicKey) bool {
	for _, pk := range keys {
		if n, got, ok := broker.ParseKeyID(pk.KID); !ok || n != name || got != v {
			continue
		}
		eq, ok := pk.Key.(interface{ Equal(crypto.PublicKey) bool })
		return ok && eq.Equal(pub)
	}
	return false
}

// sign asks transit to sign the JWS signing input with the given version of
// the key and returns the raw signature. Vault's warnings on the answer are
// logged with req's grant and issuance.
func (m *JWTMinter) sign(ctx context.Context, k *transitKey, version int, signing string, req broker.MintRequest) ([]byte, error) {
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
	if sec != nil {
		m.warn.note(op, req.Grant.Name, req.IssuanceID, sec.Warnings)
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
