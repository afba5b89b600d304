// Package authntest is a small identity-token issuer for tests, demos
// (`keytrail dev`) and end-to-end runs: it generates signing keys, signs
// JWTs with them and serves its OIDC discovery document and JWKS over HTTP,
// counting the fetches. It does not depend on package testing.
//
// Typical use:
//
//	iss, _ := authntest.NewIssuer("ES256")
//	srv := httptest.NewServer(iss.Handler())
//	iss.URL = srv.URL
//	tok, _ := iss.Token("system:serviceaccount:ns:sa", "keytrail", time.Now(), 10*time.Minute)
package authntest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
)

// Paths served by Handler.
const (
	DiscoveryPath = "/.well-known/openid-configuration"
	JWKSPath      = "/jwks.json"
)

// Key is one signing key of an Issuer.
type Key struct {
	KID    string
	Alg    string
	Signer crypto.Signer // *ecdsa.PrivateKey, ed25519.PrivateKey or *rsa.PrivateKey
}

// Public returns the key's public half.
func (k *Key) Public() crypto.PublicKey { return k.Signer.Public() }

// Issuer is a test identity-token issuer. Its methods are safe for
// concurrent use.
type Issuer struct {
	// URL is the issuer URL: the iss claim of Token, the discovery
	// document's issuer and the base of its jwks_uri. Set it once, after the
	// server serving Handler has started and before the first request.
	URL string

	mu      sync.Mutex
	keys    []*Key // published in the JWKS, in order
	current *Key   // signs Sign and Token

	down             atomic.Bool
	jwksFetches      atomic.Int64
	discoveryFetches atomic.Int64
}

// NewIssuer returns an issuer with one fresh key of alg: "ES256", "EdDSA" or
// "RS256" (2048 bits; "ES384", "ES512", "PS256" also work; "Ed25519" is an
// Ed25519 key signing with RFC 9864's fully specified alg name).
func NewIssuer(alg string) (*Issuer, error) {
	k, err := NewKey(alg)
	if err != nil {
		return nil, err
	}
	return &Issuer{keys: []*Key{k}, current: k}, nil
}

// NewKey generates a key for alg with a random kid.
func NewKey(alg string) (*Key, error) {
	var (
		s   crypto.Signer
		err error
	)
	switch alg {
	case "ES256":
		s, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ES384":
		s, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ES512":
		s, err = ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "EdDSA", algEd25519:
		_, s, err = ed25519.GenerateKey(rand.Reader)
	case "RS256", "RS384", "RS512", "PS256", "PS384", "PS512":
		s, err = rsa.GenerateKey(rand.Reader, 2048)
	default:
		return nil, fmt.Errorf("authntest: unsupported alg %q", alg)
	}
	if err != nil {
		return nil, fmt.Errorf("authntest: generate %s key: %w", alg, err)
	}
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		return nil, fmt.Errorf("authntest: kid: %w", err)
	}
	return &Key{KID: alg + "-" + hex.EncodeToString(b[:]), Alg: alg, Signer: s}, nil
}

// Key returns the current signing key.
func (i *Issuer) Key() *Key {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.current
}

// AddKey publishes k in the JWKS without making it the signing key.
func (i *Issuer) AddKey(k *Key) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.keys = append(i.keys, k)
}

// ReplaceKeys publishes exactly keys; the first becomes the signing key.
// With a copied KID it stands for an issuer that reuses a kid for new key
// material.
func (i *Issuer) ReplaceKeys(keys ...*Key) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.keys = append([]*Key(nil), keys...)
	i.current = keys[0]
}

// Rotate makes a fresh key of alg the signing key and publishes it; with
// keepOld false the previous keys are no longer published.
func (i *Issuer) Rotate(alg string, keepOld bool) (*Key, error) {
	k, err := NewKey(alg)
	if err != nil {
		return nil, err
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if keepOld {
		i.keys = append(i.keys, k)
	} else {
		i.keys = []*Key{k}
	}
	i.current = k
	return k, nil
}

// SetDown makes Handler answer 503 to everything while down is true.
func (i *Issuer) SetDown(down bool) { i.down.Store(down) }

// JWKSFetches counts the JWKS requests Handler has answered (down or not).
func (i *Issuer) JWKSFetches() int64 { return i.jwksFetches.Load() }

// DiscoveryFetches counts the discovery requests Handler has answered.
func (i *Issuer) DiscoveryFetches() int64 { return i.discoveryFetches.Load() }

// JWKS returns the published key set as JSON (public keys only).
func (i *Issuer) JWKS() []byte {
	i.mu.Lock()
	keys := append([]*Key(nil), i.keys...)
	i.mu.Unlock()
	b, err := MarshalJWKS(keys...)
	if err != nil {
		// Keys made by NewKey always marshal; a failure is a programming error
		// surfaced as an empty set rather than a panic.
		return []byte(`{"keys":[]}`)
	}
	return b
}

// algEd25519 is RFC 9864's fully specified name for EdDSA over Ed25519.
// jwt/v5 has no signing method of that name and jwkset refuses it as the
// alg of an Ed25519 key, so Sign and MarshalJWKS write it themselves.
const algEd25519 = "Ed25519"

// MarshalJWKS returns the JWKS JSON of the public halves of keys, each with
// its kid, alg and use "sig".
func MarshalJWKS(keys ...*Key) ([]byte, error) {
	set := jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{}}
	for _, k := range keys {
		alg := jwkset.ALG(k.Alg)
		if k.Alg == algEd25519 {
			alg = jwkset.AlgEdDSA
		}
		j, err := jwkset.NewJWKFromKey(k.Public(), jwkset.JWKOptions{
			Metadata: jwkset.JWKMetadataOptions{KID: k.KID, ALG: alg, USE: jwkset.UseSig},
		})
		if err != nil {
			return nil, fmt.Errorf("authntest: jwk %s: %w", k.KID, err)
		}
		m := j.Marshal()
		if k.Alg == algEd25519 {
			m.ALG = algEd25519
		}
		set.Keys = append(set.Keys, m)
	}
	return json.Marshal(set)
}

// Sign signs claims with the current key; the header has alg, typ "JWT" and
// the key's kid.
func (i *Issuer) Sign(claims jwt.MapClaims) (string, error) {
	return SignWith(i.Key(), nil, claims)
}

// Token signs a token of this issuer for sub and aud, issued at now and
// valid for ttl, with a random jti.
func (i *Issuer) Token(sub, aud string, now time.Time, ttl time.Duration) (string, error) {
	var b [12]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return i.Sign(jwt.MapClaims{
		"iss": i.URL,
		"sub": sub,
		"aud": aud,
		"iat": now.Unix(),
		"nbf": now.Unix(),
		"exp": now.Add(ttl).Unix(),
		"jti": hex.EncodeToString(b[:]),
	})
}

// SignWith signs claims with k. header entries are added to (or replace)
// alg, typ and kid; an entry with a nil value removes that header.
func SignWith(k *Key, header map[string]any, claims jwt.MapClaims) (string, error) {
	if k == nil {
		return "", errors.New("authntest: no key")
	}
	m := jwt.GetSigningMethod(k.Alg)
	if k.Alg == algEd25519 {
		m = jwt.SigningMethodEdDSA // the same signature; the header says Ed25519
	}
	if m == nil {
		return "", fmt.Errorf("authntest: unknown alg %q", k.Alg)
	}
	t := jwt.NewWithClaims(m, claims)
	t.Header["alg"] = k.Alg
	t.Header["kid"] = k.KID
	for name, val := range header {
		if val == nil {
			delete(t.Header, name)
			continue
		}
		t.Header[name] = val
	}
	return t.SignedString(k.Signer)
}

// Handler serves the discovery document at DiscoveryPath and the JWKS at
// JWKSPath; everything else is 404.
func (i *Issuer) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET "+JWKSPath, func(w http.ResponseWriter, _ *http.Request) {
		i.jwksFetches.Add(1)
		if i.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(i.JWKS())
	})
	mux.HandleFunc("GET "+DiscoveryPath, func(w http.ResponseWriter, _ *http.Request) {
		i.discoveryFetches.Add(1)
		if i.down.Load() {
			http.Error(w, "down", http.StatusServiceUnavailable)
			return
		}
		u, alg := i.URL, i.Key().Alg
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]any{
			"issuer":                                u,
			"jwks_uri":                              u + JWKSPath,
			"response_types_supported":              []string{"id_token"},
			"subject_types_supported":               []string{"public"},
			"id_token_signing_alg_values_supported": []string{alg},
		})
	})
	return mux
}
