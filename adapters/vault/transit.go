package vault

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
)

// Transit key types this package signs with, and their JWS algorithms.
const (
	KeyTypeECDSAP256 = "ecdsa-p256" // ES256
	KeyTypeEd25519   = "ed25519"    // EdDSA
)

// errUnsupportedKey marks a transit key this package cannot use (wrong type,
// derived); a configuration problem rather than a bad response.
var errUnsupportedKey = errors.New("unsupported transit key")

// transitKey is what transit/keys/<name> says about a signing key.
type transitKey struct {
	Name          string
	Type          string // KeyTypeECDSAP256 or KeyTypeEd25519
	Latest        int
	MinDecryption int
	MinEncryption int                      // transit refuses to sign with older versions; 0 = none
	Public        map[int]crypto.PublicKey // every version >= MinDecryption
	Created       map[int]time.Time        // creation_time of each version in Public; zero when Vault gave none
}

// signingVersion is the version to sign with at now: the newest version
// created at least delay ago, so that verifiers holding a JWKS read (and
// cached) before a rotation already know it, else (every signable version
// is newer, e.g. a new key) the oldest signable one. Versions below
// min_encryption_version (transit refuses to sign with them) or
// min_decryption_version (no public key is served) are never chosen. A
// version without creation_time counts as old.
func (k *transitKey) signingVersion(now time.Time, delay time.Duration) int {
	return k.signingVersionIn(now, delay, nil)
}

// signingVersionIn is signingVersion among the versions published accepts
// (all when nil), each counted as created at the later of its creation_time
// and the since published returns for it; 0 when published accepts none.
func (k *transitKey) signingVersionIn(now time.Time, delay time.Duration, published func(v int) (ok bool, since time.Time)) int {
	lo := max(k.MinDecryption, k.MinEncryption, 1)
	oldest := 0
	for v := k.Latest; v >= lo; v-- {
		c := k.Created[v]
		if published != nil {
			ok, since := published(v)
			if !ok {
				continue
			}
			if since.After(c) {
				c = since
			}
		}
		if c.IsZero() || !now.Before(c.Add(delay)) {
			return v
		}
		oldest = v
	}
	return oldest
}

// method is the JWS signing method of the key.
func (k *transitKey) method() jwt.SigningMethod {
	if k.Type == KeyTypeEd25519 {
		return jwt.SigningMethodEdDSA
	}
	return jwt.SigningMethodES256
}

// kid names one version of the key: broker.KeyID ("<name>:<version>"),
// which broker.ParseKeyID reads back, here and in broker/jwks.
func kid(name string, version int) string { return broker.KeyID(name, version) }

// parseTransitKey reads the data of a transit/keys/<name> response.
func parseTransitKey(name string, data map[string]any) (*transitKey, error) {
	if data == nil {
		return nil, errors.New("no data")
	}
	typ, _ := data["type"].(string)
	if typ != KeyTypeECDSAP256 && typ != KeyTypeEd25519 {
		return nil, fmt.Errorf("%w: key %q has type %q (want %s or %s)", errUnsupportedKey, name, typ, KeyTypeECDSAP256, KeyTypeEd25519)
	}
	if derived, _ := data["derived"].(bool); derived {
		return nil, fmt.Errorf("%w: key %q is derived", errUnsupportedKey, name)
	}
	latest, err := asInt(data["latest_version"])
	if err != nil || latest < 1 {
		return nil, fmt.Errorf("key %q: bad latest_version", name)
	}
	minDec, err := asInt(data["min_decryption_version"])
	if err != nil {
		return nil, fmt.Errorf("key %q: bad min_decryption_version", name)
	}
	minDec = max(minDec, 1)
	minEnc := 0
	if raw, ok := data["min_encryption_version"]; ok && raw != nil {
		if minEnc, err = asInt(raw); err != nil || minEnc < 0 {
			return nil, fmt.Errorf("key %q: bad min_encryption_version", name)
		}
	}
	if minEnc > latest {
		return nil, fmt.Errorf("key %q: min_encryption_version %d > latest_version %d", name, minEnc, latest)
	}
	if minDec > latest {
		return nil, fmt.Errorf("key %q: min_decryption_version %d > latest_version %d", name, minDec, latest)
	}
	versions, ok := data["keys"].(map[string]any)
	if !ok {
		return nil, fmt.Errorf("key %q: no keys", name)
	}
	k := &transitKey{Name: name, Type: typ, Latest: latest, MinDecryption: minDec, MinEncryption: minEnc,
		Public: map[int]crypto.PublicKey{}, Created: map[int]time.Time{}}
	for vs, raw := range versions {
		v, err := strconv.Atoi(vs)
		if err != nil || v < 1 || strconv.Itoa(v) != vs {
			return nil, fmt.Errorf("key %q: bad version %q", name, vs)
		}
		if v < minDec || v > latest {
			continue
		}
		entry, _ := raw.(map[string]any)
		pub, _ := entry["public_key"].(string)
		if pub == "" {
			return nil, fmt.Errorf("key %q version %d: no public_key", name, v)
		}
		pk, err := parsePublicKey(typ, pub)
		if err != nil {
			return nil, fmt.Errorf("key %q version %d: %w", name, v, err)
		}
		k.Public[v] = pk
		if ct, _ := entry["creation_time"].(string); ct != "" {
			if c, err := time.Parse(time.RFC3339Nano, ct); err == nil {
				k.Created[v] = c
			}
		}
	}
	for v := minDec; v <= latest; v++ {
		if _, ok := k.Public[v]; !ok {
			return nil, fmt.Errorf("key %q: version %d missing", name, v)
		}
	}
	return k, nil
}

// parsePublicKey decodes a transit public key: PEM (PKIX) for ECDSA, standard
// base64 of the 32 raw bytes for Ed25519.
func parsePublicKey(typ, s string) (crypto.PublicKey, error) {
	switch typ {
	case KeyTypeECDSAP256:
		blk, _ := pem.Decode([]byte(s))
		if blk == nil || blk.Type != "PUBLIC KEY" {
			return nil, errors.New("public_key is not a PEM public key")
		}
		pk, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public_key: %w", err)
		}
		ek, ok := pk.(*ecdsa.PublicKey)
		if !ok || ek.Curve != elliptic.P256() {
			return nil, errors.New("public_key is not a P-256 key")
		}
		return ek, nil
	case KeyTypeEd25519:
		b, err := base64.StdEncoding.Strict().DecodeString(s)
		if err != nil || len(b) != ed25519.PublicKeySize {
			return nil, errors.New("public_key is not a base64 Ed25519 key")
		}
		return ed25519.PublicKey(b), nil
	}
	return nil, fmt.Errorf("%w: type %q", errUnsupportedKey, typ)
}

// parseVaultSignature decodes a transit signature "vault:v<N>:<sig>" made
// with version want of a key of type typ, returning the raw JWS signature
// bytes (r||s for ECDSA with marshaling_algorithm=jws, which Vault encodes
// as unpadded base64url; the 64 signature bytes for Ed25519, which Vault
// encodes as standard base64).
func parseVaultSignature(s string, want int, typ string) ([]byte, error) {
	rest, ok := strings.CutPrefix(s, "vault:v")
	if !ok {
		return nil, errors.New("signature lacks the vault:v prefix")
	}
	vs, enc, ok := strings.Cut(rest, ":")
	if !ok {
		return nil, errors.New("signature lacks a version")
	}
	v, err := strconv.Atoi(vs)
	if err != nil || strconv.Itoa(v) != vs {
		return nil, errors.New("signature has a malformed version")
	}
	if v != want {
		return nil, fmt.Errorf("signature made with key version %d, want %d", v, want)
	}
	var sig []byte
	switch typ {
	case KeyTypeECDSAP256:
		sig, err = base64.RawURLEncoding.Strict().DecodeString(enc)
	case KeyTypeEd25519:
		sig, err = base64.StdEncoding.Strict().DecodeString(enc)
	default:
		return nil, fmt.Errorf("%w: type %q", errUnsupportedKey, typ)
	}
	if err != nil {
		return nil, errors.New("signature is not valid base64")
	}
	if len(sig) != 64 {
		return nil, fmt.Errorf("signature has %d bytes, want 64", len(sig))
	}
	return sig, nil
}

// asInt reads a JSON number as decoded by vault/api (json.Number) or by
// encoding/json (float64).
func asInt(v any) (int, error) {
	switch n := v.(type) {
	case json.Number:
		i, err := strconv.ParseInt(string(n), 10, 32)
		return int(i), err
	case float64:
		if n != math.Trunc(n) || n < math.MinInt32 || n > math.MaxInt32 {
			return 0, errors.New("not an integer")
		}
		return int(n), nil
	case int:
		return n, nil
	}
	return 0, fmt.Errorf("not a number: %T", v)
}

// readTransitKey reads and parses mount/keys/name. Vault's warnings on the
// answer go to warn (nil: dropped).
func readTransitKey(ctx context.Context, c *vaultapi.Client, mount, name string, warn *warnLog) (*transitKey, error) {
	const op = "read transit key"
	sec, err := c.Logical().ReadWithContext(ctx, mount+"/keys/"+name)
	if err != nil {
		return nil, translate(op, err)
	}
	if sec == nil {
		return nil, configError("transit key %s/keys/%s does not exist", mount, name)
	}
	warn.noteKey(op, mount+"/keys/"+name, sec.Warnings)
	k, err := parseTransitKey(name, sec.Data)
	if errors.Is(err, errUnsupportedKey) {
		return nil, configError("%v", err)
	}
	if err != nil {
		return nil, badResponse(op, err.Error())
	}
	return k, nil
}

// keyCache keeps parsed transit keys for a short time.
type keyCache struct {
	c     *vaultapi.Client
	mount string
	ttl   time.Duration
	now   func() time.Time
	warn  *warnLog // Vault's warnings on key reads

	mu   sync.Mutex
	keys map[string]cachedKey
}

type cachedKey struct {
	key *transitKey
	at  time.Time
}

func newKeyCache(c *vaultapi.Client, mount string, ttl time.Duration, now func() time.Time, log *slog.Logger) *keyCache {
	return &keyCache{c: c, mount: mount, ttl: ttl, now: now, warn: newWarnLog(log, now), keys: map[string]cachedKey{}}
}

// transitKeyCache checks the options every transit-backed signer shares
// (client, mount, key refresh, clock), applies their defaults and returns
// the key cache, which logs Vault's warnings on key reads to log (nil:
// slog.Default()); who prefixes the errors.
func transitKeyCache(who string, c *vaultapi.Client, mount string, refresh time.Duration, now func() time.Time, log *slog.Logger) (*keyCache, []error) {
	var errs []error
	if c == nil {
		errs = append(errs, fmt.Errorf("%s: client is required", who))
	}
	if mount == "" {
		mount = "transit"
	}
	if !validName(mount) {
		errs = append(errs, fmt.Errorf("%s: bad transit mount %q", who, mount))
	}
	if refresh < 0 {
		errs = append(errs, fmt.Errorf("%s: key refresh must not be negative", who))
	}
	if refresh == 0 {
		refresh = DefaultKeyRefresh
	}
	if now == nil {
		now = time.Now
	}
	return newKeyCache(c, mount, refresh, now, log), errs
}

// publishDelay checks a signer's PublishDelay option and applies its default
// (DefaultPublishDelay); who prefixes the error.
func publishDelay(who string, d time.Duration) (time.Duration, error) {
	if d < 0 {
		return 0, fmt.Errorf("%s: publish delay must not be negative", who)
	}
	if d == 0 {
		return DefaultPublishDelay, nil
	}
	return d, nil
}

// get returns the key, from the cache when it is younger than ttl.
func (kc *keyCache) get(ctx context.Context, name string) (*transitKey, error) {
	kc.mu.Lock()
	ck, ok := kc.keys[name]
	kc.mu.Unlock()
	if ok && kc.now().Sub(ck.at) < kc.ttl {
		return ck.key, nil
	}
	k, err := readTransitKey(ctx, kc.c, kc.mount, name, kc.warn)
	if err != nil {
		return nil, err
	}
	kc.mu.Lock()
	kc.keys[name] = cachedKey{key: k, at: kc.now()}
	kc.mu.Unlock()
	return k, nil
}

// forget drops a key so the next get reads it again.
func (kc *keyCache) forget(name string) {
	kc.mu.Lock()
	delete(kc.keys, name)
	kc.mu.Unlock()
}
