package authn_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"testing"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/broker/authn/authntest"
)

// keep is jwksOf's "leave the JWK's alg as MarshalJWKS wrote it".
const keep = "\x00keep"

// jwksOf is a JWKS of keys, the alg of key i set to algs[i] ("" removes it,
// keep leaves it).
func jwksOf(tb testing.TB, keys []*authntest.Key, algs []string) []byte {
	tb.Helper()
	var out []map[string]any
	for i, k := range keys {
		b, err := authntest.MarshalJWKS(k)
		if err != nil {
			tb.Fatal(err)
		}
		var set struct{ Keys []map[string]any }
		if err := json.Unmarshal(b, &set); err != nil {
			tb.Fatal(err)
		}
		j := set.Keys[0]
		switch algs[i] {
		case keep:
		case "":
			delete(j, "alg")
		default:
			j["alg"] = algs[i]
		}
		out = append(out, j)
	}
	b, err := json.Marshal(map[string]any{"keys": out})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// TestEd25519Alg: RFC 9864's fully specified "Ed25519" verifies with an
// issuer's Ed25519 keys when the issuer allows it, whichever of "EdDSA" and
// "Ed25519" (or none) the JWK names, and never with an RSA or ECDSA key,
// whatever the token's kid or the JWK's alg says (algorithm confusion).
func TestEd25519Alg(t *testing.T) {
	iss := newIssuer(t, "Ed25519")
	ed := newKey(t, "Ed25519")
	edAsEdDSA := *ed
	edAsEdDSA.Alg = "EdDSA"
	other := newKey(t, "Ed25519") // never published
	other.KID = ed.KID
	rs := newKey(t, "RS256")
	ec := newKey(t, "ES256")

	// forged is a token with header alg Ed25519 and kid, its signature
	// sig.
	forged := func(kid string, sig func(input string) []byte) func(testing.TB) string {
		return func(tb testing.TB) string {
			h := map[string]any{"alg": "Ed25519", "typ": "JWT"}
			if kid != "" {
				h["kid"] = kid
			}
			input := seg(tb, h) + "." + seg(tb, claims(iss))
			return input + "." + seg(tb, string(sig(input)))
		}
	}
	rsaSig := func(input string) []byte {
		s, err := jwt.SigningMethodRS256.Sign(input, rs.Signer)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	ecSig := func(input string) []byte {
		s, err := jwt.SigningMethodES256.Sign(input, ec.Signer)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	signed := func(k *authntest.Key) func(testing.TB) string {
		return func(tb testing.TB) string { return sign(tb, k, nil, claims(iss)) }
	}
	cases := []struct {
		name   string
		algs   []string // the issuer's algorithms
		keys   []*authntest.Key
		jwkAlg []string // per key, see jwksOf
		token  func(testing.TB) string
		reason string // "" for ok
	}{
		{name: "ok/jwk-alg-ed25519", algs: []string{"Ed25519"}, keys: []*authntest.Key{ed}, jwkAlg: []string{keep}, token: signed(ed)},
		{name: "ok/jwk-alg-eddsa", algs: []string{"Ed25519"}, keys: []*authntest.Key{ed}, jwkAlg: []string{"EdDSA"}, token: signed(ed)},
		{name: "ok/jwk-no-alg", algs: []string{"Ed25519"}, keys: []*authntest.Key{ed}, jwkAlg: []string{""}, token: signed(ed)},
		{name: "ok/eddsa-token-jwk-alg-ed25519", algs: []string{"EdDSA"}, keys: []*authntest.Key{ed}, jwkAlg: []string{keep}, token: signed(&edAsEdDSA)},
		{name: "ok/both-allowed-next-to-rsa-and-ec", algs: []string{"RS256", "ES256", "EdDSA", "Ed25519"}, keys: []*authntest.Key{rs, ec, ed}, jwkAlg: []string{keep, keep, keep}, token: signed(ed)},
		{name: "fail/ed25519-not-allowed", algs: []string{"EdDSA"}, keys: []*authntest.Key{ed}, jwkAlg: []string{keep}, token: signed(ed), reason: "unsupported_alg"},
		{name: "fail/eddsa-not-allowed", algs: []string{"Ed25519"}, keys: []*authntest.Key{ed}, jwkAlg: []string{keep}, token: signed(&edAsEdDSA), reason: "unsupported_alg"},
		{name: "fail/ed25519-other-key-same-kid", algs: []string{"Ed25519"}, keys: []*authntest.Key{ed}, jwkAlg: []string{keep}, token: signed(other), reason: "bad_signature"},

		// Algorithm confusion: an Ed25519 alg with an RSA or ECDSA key.
		{name: "fail/ed25519-with-rsa-kid", algs: []string{"Ed25519", "RS256"}, keys: []*authntest.Key{rs, ed}, jwkAlg: []string{keep, keep},
			token: forged(rs.KID, rsaSig), reason: "unknown_key"},
		{name: "fail/ed25519-with-ec-kid", algs: []string{"Ed25519", "ES256"}, keys: []*authntest.Key{ec, ed}, jwkAlg: []string{keep, keep},
			token: forged(ec.KID, ecSig), reason: "unknown_key"},
		{name: "fail/ed25519-no-kid-only-rsa-and-ec-keys", algs: []string{"Ed25519", "RS256", "ES256"}, keys: []*authntest.Key{rs, ec}, jwkAlg: []string{keep, keep},
			token: forged("", rsaSig), reason: "unknown_key"},
		{name: "fail/rsa-key-labelled-ed25519", algs: []string{"Ed25519", "RS256"}, keys: []*authntest.Key{rs}, jwkAlg: []string{"Ed25519"},
			token: forged(rs.KID, rsaSig), reason: "unknown_key"},
		{name: "fail/ec-key-labelled-ed25519", algs: []string{"Ed25519", "ES256"}, keys: []*authntest.Key{ec}, jwkAlg: []string{"Ed25519"},
			token: forged(ec.KID, ecSig), reason: "unknown_key"},
		{name: "fail/ed25519-hmac-over-public-key", algs: []string{"Ed25519"}, keys: []*authntest.Key{ed}, jwkAlg: []string{keep},
			token: forged(ed.KID, func(input string) []byte {
				m := hmac.New(sha256.New, ed.Public().(ed25519.PublicKey))
				m.Write([]byte(input))
				return m.Sum(nil)
			}), reason: "bad_signature"},
		{name: "fail/rs256-token-with-ed-kid", algs: []string{"Ed25519", "RS256"}, keys: []*authntest.Key{ed, rs}, jwkAlg: []string{keep, keep},
			token: func(tb testing.TB) string { return sign(tb, rs, map[string]any{"kid": ed.KID}, claims(iss)) }, reason: "unknown_key"},
		{name: "fail/es256-token-key-labelled-ed25519", algs: []string{"ES256", "Ed25519"}, keys: []*authntest.Key{ec}, jwkAlg: []string{"Ed25519"},
			token: signed(ec), reason: "unknown_key"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			srv := staticServer(t, jwksOf(t, tc.keys, tc.jwkAlg))
			v := verifierFor(t, iss.URL, srv.URL, func(o *authn.Options) { o.Issuers[0].Algorithms = tc.algs })
			tok := tc.token(t)
			for _, pass := range []string{"first", "again (cache)"} {
				id, err := v.Authenticate(context.Background(), tok)
				if tc.reason == "" {
					if err != nil {
						t.Fatalf("%s: Authenticate() = %v, want ok", pass, err)
					}
					if id.Sub != testSub {
						t.Errorf("%s: Sub = %q, want %q", pass, id.Sub, testSub)
					}
					continue
				}
				checkRejection(t, err, tok, tc.reason)
			}
		})
	}
}

// TestEd25519MethodTakesOnlyEd25519Keys: the method registered for
// "Ed25519" verifies with an ed25519.PublicKey and refuses any other key
// type, so no key selection can pair the alg with an RSA or ECDSA key.
func TestEd25519MethodTakesOnlyEd25519Keys(t *testing.T) {
	m := jwt.GetSigningMethod("Ed25519")
	if m == nil || m.Alg() != "Ed25519" {
		t.Fatalf(`jwt.GetSigningMethod("Ed25519") = %v, want the Ed25519 method`, m)
	}
	ed := newKey(t, "Ed25519")
	sig, err := jwt.SigningMethodEdDSA.Sign("input", ed.Signer)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Verify("input", sig, ed.Public()); err != nil {
		t.Errorf("Verify(ed25519 key) = %v, want nil", err)
	}
	if err := m.Verify("other input", sig, ed.Public()); err == nil {
		t.Error("Verify(other input) = nil, want an error")
	}
	for _, key := range []any{
		newKey(t, "RS256").Public().(*rsa.PublicKey),
		newKey(t, "ES256").Public().(*ecdsa.PublicKey),
		[]byte(ed.Public().(ed25519.PublicKey)), // the key's bytes as an HMAC secret
		ed.Signer,                               // a private key
		nil,
	} {
		if err := m.Verify("input", sig, key); !errors.Is(err, jwt.ErrInvalidKeyType) {
			t.Errorf("Verify(%T) = %v, want jwt.ErrInvalidKeyType", key, err)
		}
	}
}
