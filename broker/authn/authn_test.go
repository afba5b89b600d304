package authn_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/policies"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

const (
	testSub = "system:serviceaccount:payments:api"
	canary  = "c4n4ry-v4lue"
)

// fakeClock is an injected clock that only moves when told.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// fixture is three issuers served over loopback HTTP and a Verifier trusting
// them:
//   - es: ES256 signer plus an extra published RSA key; allows ES256, RS256.
//   - ed: EdDSA, found through OIDC discovery.
//   - rs: RS256 only.
type fixture struct {
	clock      *fakeClock
	es, ed, rs *authntest.Issuer
	esRSA      *authntest.Key // published by es, not its signer
	attacker   *authntest.Key // ES256, never published
	v          *authn.Verifier
	opts       authn.Options
}

func newIssuer(tb testing.TB, alg string) *authntest.Issuer {
	tb.Helper()
	iss, err := authntest.NewIssuer(alg)
	if err != nil {
		tb.Fatalf("NewIssuer(%s) = %v", alg, err)
	}
	srv := httptest.NewServer(iss.Handler())
	tb.Cleanup(srv.Close)
	iss.URL = srv.URL
	return iss
}

func newKey(tb testing.TB, alg string) *authntest.Key {
	tb.Helper()
	k, err := authntest.NewKey(alg)
	if err != nil {
		tb.Fatalf("NewKey(%s) = %v", alg, err)
	}
	return k
}

func newFixture(tb testing.TB, mod func(*authn.Options)) *fixture {
	tb.Helper()
	f := &fixture{clock: &fakeClock{now: t0}}
	f.es = newIssuer(tb, "ES256")
	f.ed = newIssuer(tb, "EdDSA")
	f.rs = newIssuer(tb, "RS256")
	f.esRSA = newKey(tb, "RS256")
	f.es.AddKey(f.esRSA)
	f.attacker = newKey(tb, "ES256")
	f.opts = authn.Options{
		Issuers: []policies.Issuer{
			{
				Name: "es", Issuer: f.es.URL, JWKSURL: f.es.URL + authntest.JWKSPath,
				Audiences: []string{"keytrail", "keytrail-admin"}, Algorithms: []string{"ES256", "RS256"},
				MaxTokenLifetime: policies.Duration(24 * time.Hour),
			},
			{
				Name: "ed", Issuer: f.ed.URL, Discovery: true,
				Audiences: []string{"keytrail"}, Algorithms: []string{"EdDSA"},
				MaxTokenLifetime: policies.Duration(time.Hour),
			},
			{
				Name: "rs", Issuer: f.rs.URL, JWKSURL: f.rs.URL + authntest.JWKSPath,
				Audiences: []string{"keytrail"}, Algorithms: []string{"RS256"},
				MaxTokenLifetime: policies.Duration(24 * time.Hour),
			},
		},
		Now: f.clock.Now,
	}
	if mod != nil {
		mod(&f.opts)
	}
	v, err := authn.New(context.Background(), f.opts)
	if err != nil {
		tb.Fatalf("New() = %v", err)
	}
	f.v = v
	return f
}

type claimMod func(jwt.MapClaims)

func set(k string, v any) claimMod { return func(c jwt.MapClaims) { c[k] = v } }
func del(k string) claimMod        { return func(c jwt.MapClaims) { delete(c, k) } }

// claims are valid claims of iss at t0, changed by mods.
func claims(iss *authntest.Issuer, mods ...claimMod) jwt.MapClaims {
	c := jwt.MapClaims{
		"iss":           iss.URL,
		"sub":           testSub,
		"aud":           "keytrail",
		"iat":           t0.Add(-10 * time.Second).Unix(),
		"nbf":           t0.Add(-10 * time.Second).Unix(),
		"exp":           t0.Add(10 * time.Minute).Unix(),
		"jti":           "jti-1",
		"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}},
		"canary":        canary,
		"groups":        []any{"a", "b"},
		"run_attempt":   2,
	}
	for _, m := range mods {
		m(c)
	}
	return c
}

func sign(tb testing.TB, k *authntest.Key, header map[string]any, c jwt.MapClaims) string {
	tb.Helper()
	s, err := authntest.SignWith(k, header, c)
	if err != nil {
		tb.Fatalf("SignWith() = %v", err)
	}
	return s
}

// signPayload signs payload, taken as the exact claims bytes, with k (header
// alg, kid and typ "JWT").
func signPayload(tb testing.TB, k *authntest.Key, payload string) string {
	tb.Helper()
	in := seg(tb, map[string]any{"alg": k.Alg, "kid": k.KID, "typ": "JWT"}) + "." + base64.RawURLEncoding.EncodeToString([]byte(payload))
	sig, err := jwt.GetSigningMethod(k.Alg).Sign(in, k.Signer)
	if err != nil {
		tb.Fatalf("Sign() = %v", err)
	}
	return in + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func seg(tb testing.TB, v any) string {
	tb.Helper()
	if s, ok := v.(string); ok {
		return base64.RawURLEncoding.EncodeToString([]byte(s))
	}
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatalf("json.Marshal() = %v", err)
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

// raw assembles a token from a header, claims and signature bytes.
func raw(tb testing.TB, header, c any, sig []byte) string {
	return seg(tb, header) + "." + seg(tb, c) + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// resign replaces the signature of tok.
func resign(tok string, sig []byte) string {
	i := strings.LastIndexByte(tok, '.')
	return tok[:i+1] + base64.RawURLEncoding.EncodeToString(sig)
}

func sigOf(tb testing.TB, tok string) []byte {
	tb.Helper()
	b, err := base64.RawURLEncoding.DecodeString(tok[strings.LastIndexByte(tok, '.')+1:])
	if err != nil {
		tb.Fatalf("decode signature: %v", err)
	}
	return b
}

type tokenCase struct {
	name   string
	token  func(tb testing.TB, f *fixture) string
	reason string // "" for ok
	issuer string // for ok cases: the policy issuer name
}

func tokenCases() []tokenCase {
	esTok := func(mods ...claimMod) func(testing.TB, *fixture) string {
		return func(tb testing.TB, f *fixture) string { return sign(tb, f.es.Key(), nil, claims(f.es, mods...)) }
	}
	esHdr := func(h map[string]any, mods ...claimMod) func(testing.TB, *fixture) string {
		return func(tb testing.TB, f *fixture) string { return sign(tb, f.es.Key(), h, claims(f.es, mods...)) }
	}
	fixed := func(s string) func(testing.TB, *fixture) string {
		return func(testing.TB, *fixture) string { return s }
	}
	unsigned := func(alg any) func(testing.TB, *fixture) string {
		return func(tb testing.TB, f *fixture) string {
			return raw(tb, map[string]any{"alg": alg, "typ": "JWT"}, claims(f.es), nil)
		}
	}
	return []tokenCase{
		// Accepted tokens.
		{name: "ok/es256", token: esTok(), issuer: "es"},
		{name: "ok/eddsa-discovery", issuer: "ed", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, f.ed.Key(), nil, claims(f.ed))
		}},
		{name: "ok/rs256", issuer: "rs", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, f.rs.Key(), nil, claims(f.rs))
		}},
		{name: "ok/rs256-second-key-of-issuer", issuer: "es", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, f.esRSA, nil, claims(f.es))
		}},
		{name: "ok/no-kid-single-usable-key", issuer: "es", token: esHdr(map[string]any{"kid": nil})},
		{name: "ok/aud-array-containing-ours", issuer: "es", token: esTok(set("aud", []any{"other", "keytrail-admin"}))},
		{name: "ok/no-iat-no-nbf", issuer: "es", token: esTok(del("iat"), del("nbf"))},
		{name: "ok/expired-within-leeway", issuer: "es", token: esTok(set("exp", t0.Add(-20*time.Second).Unix()))},
		{name: "ok/nbf-within-leeway", issuer: "es", token: esTok(set("nbf", t0.Add(20*time.Second).Unix()))},
		{name: "ok/lifetime-exactly-max", issuer: "es", token: esTok(set("iat", t0.Unix()), set("exp", t0.Add(24*time.Hour).Unix()))},
		{name: "ok/no-jti", issuer: "es", token: esTok(del("jti"))},
		// An empty jti names no session (broker's sessionID skips it): the
		// token is digested as one without jti (wantIdentity expects it).
		{name: "ok/empty-jti", issuer: "es", token: esTok(set("jti", ""))},

		// Shape.
		{name: "fail/empty", token: fixed(""), reason: "malformed"},
		{name: "fail/whitespace", token: fixed("  \t\n"), reason: "malformed"},
		{name: "fail/trailing-newline", token: func(tb testing.TB, f *fixture) string { return esTok()(tb, f) + "\n" }, reason: "malformed"},
		{name: "fail/leading-space", token: func(tb testing.TB, f *fixture) string { return " " + esTok()(tb, f) }, reason: "malformed"},
		{name: "fail/bearer-prefix", token: func(tb testing.TB, f *fixture) string { return "Bearer " + esTok()(tb, f) }, reason: "malformed"},
		{name: "fail/one-part", token: fixed("abc"), reason: "malformed"},
		{name: "fail/two-parts", token: func(tb testing.TB, f *fixture) string {
			t := esTok()(tb, f)
			return t[:strings.LastIndexByte(t, '.')]
		}, reason: "malformed"},
		{name: "fail/four-parts", token: func(tb testing.TB, f *fixture) string { return esTok()(tb, f) + ".e30" }, reason: "malformed"},
		{name: "fail/jwe-five-parts", token: func(tb testing.TB, f *fixture) string {
			return seg(tb, map[string]any{"alg": "RSA-OAEP", "enc": "A256GCM"}) + ".ZW5jcnlwdGVka2V5.aXY.Y2lwaGVydGV4dA.dGFn"
		}, reason: "malformed"},
		{name: "fail/empty-header", token: func(tb testing.TB, f *fixture) string { return "." + seg(tb, claims(f.es)) + ".c2ln" }, reason: "malformed"},
		{name: "fail/padded-base64", token: func(tb testing.TB, f *fixture) string { return esTok()(tb, f) + "==" }, reason: "malformed"},
		{name: "fail/std-base64-chars", token: func(tb testing.TB, f *fixture) string {
			return strings.Replace(esTok()(tb, f), "e", "+", 1)
		}, reason: "malformed"},
		{name: "fail/header-not-json", token: func(tb testing.TB, f *fixture) string {
			return seg(tb, "not json") + "." + seg(tb, claims(f.es)) + ".c2ln"
		}, reason: "malformed"},
		{name: "fail/payload-not-json", token: func(tb testing.TB, f *fixture) string {
			return seg(tb, map[string]any{"alg": "ES256"}) + "." + seg(tb, "{not json") + ".c2ln"
		}, reason: "malformed"},
		{name: "fail/payload-array", token: func(tb testing.TB, f *fixture) string {
			return seg(tb, map[string]any{"alg": "ES256"}) + "." + seg(tb, []string{"a"}) + ".c2ln"
		}, reason: "malformed"},
		{name: "fail/payload-trailing-object", token: func(tb testing.TB, f *fixture) string {
			b, err := json.Marshal(claims(f.es))
			if err != nil {
				tb.Fatal(err)
			}
			return signPayload(tb, f.es.Key(), string(b)+`{"sub":"someone-else"}`)
		}, reason: "malformed"},
		{name: "fail/oversized", token: esTok(set("pad", strings.Repeat("a", 17<<10))), reason: "oversized"},

		// Algorithms (RFC 8725 2.1, 3.1; CVE-2015-9235, CVE-2016-10555).
		{name: "fail/alg-none", token: unsigned("none"), reason: "unsupported_alg"},
		{name: "fail/alg-None", token: unsigned("None"), reason: "unsupported_alg"},
		{name: "fail/alg-NONE", token: unsigned("NONE"), reason: "unsupported_alg"},
		{name: "fail/alg-nOnE", token: unsigned("nOnE"), reason: "unsupported_alg"},
		{name: "fail/alg-none-with-real-signature", token: func(tb testing.TB, f *fixture) string {
			return resign(raw(tb, map[string]any{"alg": "none"}, claims(f.es), nil), sigOf(tb, esTok()(tb, f)))
		}, reason: "unsupported_alg"},
		{name: "fail/alg-missing", token: func(tb testing.TB, f *fixture) string {
			return raw(tb, map[string]any{"typ": "JWT", "kid": f.es.Key().KID}, claims(f.es), []byte("sig"))
		}, reason: "unsupported_alg"},
		{name: "fail/alg-empty", token: unsigned(""), reason: "unsupported_alg"},
		{name: "fail/alg-number", token: unsigned(256), reason: "unsupported_alg"},
		{name: "fail/alg-hs256-key-confusion-pem", token: func(tb testing.TB, f *fixture) string {
			der, err := x509.MarshalPKIXPublicKey(f.rs.Key().Public())
			if err != nil {
				tb.Fatal(err)
			}
			secret := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
			t := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(f.rs))
			t.Header["kid"] = f.rs.Key().KID
			s, err := t.SignedString(secret)
			if err != nil {
				tb.Fatal(err)
			}
			return s
		}, reason: "unsupported_alg"},
		{name: "fail/alg-hs256-key-confusion-jwks-bytes", token: func(tb testing.TB, f *fixture) string {
			t := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(f.es))
			s, err := t.SignedString(f.es.JWKS())
			if err != nil {
				tb.Fatal(err)
			}
			return s
		}, reason: "unsupported_alg"},
		{name: "fail/alg-not-allowed-for-issuer", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, f.attacker, nil, claims(f.ed)) // ES256 for the EdDSA-only issuer
		}, reason: "unsupported_alg"},
		{name: "fail/alg-ps256-with-rs256-key", token: func(tb testing.TB, f *fixture) string {
			k := *f.rs.Key()
			k.Alg = "PS256"
			return sign(tb, &k, nil, claims(f.rs))
		}, reason: "unsupported_alg"},
		{name: "fail/alg-es384-unknown-to-issuer", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, newKey(tb, "ES384"), nil, claims(f.es))
		}, reason: "unsupported_alg"},

		// Keys and kid (RFC 8725 3.10, CVE-2018-0114 and friends).
		{name: "fail/kid-path-traversal", token: esHdr(map[string]any{"kid": "../../../../dev/null"}), reason: "unknown_key"},
		{name: "fail/kid-sql", token: esHdr(map[string]any{"kid": "x' UNION SELECT 'secret' --"}), reason: "unknown_key"},
		{name: "ok/kid-empty-taken-as-absent", issuer: "es", token: esHdr(map[string]any{"kid": ""})},
		{name: "fail/kid-unknown", token: esHdr(map[string]any{"kid": "no-such-key"}), reason: "unknown_key"},
		{name: "fail/kid-number", token: esHdr(map[string]any{"kid": 7}), reason: "malformed"},
		{name: "fail/kid-of-rsa-key-on-es256-token", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, f.es.Key(), map[string]any{"kid": f.esRSA.KID}, claims(f.es))
		}, reason: "unknown_key"},
		{name: "fail/kid-of-ec-key-on-rs256-token", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, f.esRSA, map[string]any{"kid": f.es.Key().KID}, claims(f.es))
		}, reason: "unknown_key"},
		{name: "fail/kid-of-other-issuer", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, f.rs.Key(), nil, claims(f.es)) // rs key, es iss: es does not publish it
		}, reason: "unknown_key"},
		{name: "fail/signed-by-unpublished-key", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, f.attacker, nil, claims(f.es))
		}, reason: "unknown_key"},
		{name: "fail/signed-by-unpublished-key-with-published-kid", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, f.attacker, map[string]any{"kid": f.es.Key().KID}, claims(f.es))
		}, reason: "bad_signature"},
		{name: "fail/header-jku", token: esHdr(map[string]any{"jku": "https://attacker.invalid/jwks.json"}), reason: "forbidden_header"},
		{name: "fail/header-x5u", token: esHdr(map[string]any{"x5u": "https://attacker.invalid/cert.pem"}), reason: "forbidden_header"},
		{name: "fail/header-x5c", token: esHdr(map[string]any{"x5c": []string{"MIIB"}}), reason: "forbidden_header"},
		{name: "fail/header-embedded-jwk", token: func(tb testing.TB, f *fixture) string {
			var set struct{ Keys []map[string]any }
			b, err := authntest.MarshalJWKS(f.attacker)
			if err != nil {
				tb.Fatal(err)
			}
			if err := json.Unmarshal(b, &set); err != nil {
				tb.Fatal(err)
			}
			return sign(tb, f.attacker, map[string]any{"jwk": set.Keys[0]}, claims(f.es))
		}, reason: "forbidden_header"},
		{name: "fail/header-crit", token: esHdr(map[string]any{"crit": []string{"exp"}, "exp": 1}), reason: "unsupported_crit"},
		{name: "fail/header-crit-empty", token: esHdr(map[string]any{"crit": []string{}}), reason: "unsupported_crit"},
		{name: "fail/header-crit-b64", token: esHdr(map[string]any{"crit": []string{"b64"}, "b64": false}), reason: "unsupported_crit"},

		// Signatures.
		{name: "fail/signature-flipped-byte", token: func(tb testing.TB, f *fixture) string {
			t := esTok()(tb, f)
			sig := sigOf(tb, t)
			sig[10] ^= 0x01
			return resign(t, sig)
		}, reason: "bad_signature"},
		{name: "fail/signature-truncated", token: func(tb testing.TB, f *fixture) string {
			t := esTok()(tb, f)
			sig := sigOf(tb, t)
			return resign(t, sig[:len(sig)-3])
		}, reason: "bad_signature"},
		{name: "fail/signature-empty", token: func(tb testing.TB, f *fixture) string { return resign(esTok()(tb, f), nil) }, reason: "bad_signature"},
		{name: "fail/signature-rs256-flipped-byte", token: func(tb testing.TB, f *fixture) string {
			t := sign(tb, f.rs.Key(), nil, claims(f.rs))
			sig := sigOf(tb, t)
			sig[len(sig)/2] ^= 0x80
			return resign(t, sig)
		}, reason: "bad_signature"},
		{name: "fail/signature-eddsa-flipped-byte", token: func(tb testing.TB, f *fixture) string {
			t := sign(tb, f.ed.Key(), nil, claims(f.ed))
			sig := sigOf(tb, t)
			sig[0] ^= 0x01
			return resign(t, sig)
		}, reason: "bad_signature"},
		{name: "fail/payload-tampered", token: func(tb testing.TB, f *fixture) string {
			t := esTok()(tb, f)
			parts := strings.Split(t, ".")
			parts[1] = seg(tb, claims(f.es, set("sub", "system:serviceaccount:kube-system:admin")))
			return strings.Join(parts, ".")
		}, reason: "bad_signature"},
		{name: "fail/header-tampered-kid-kept", token: func(tb testing.TB, f *fixture) string {
			t := esTok()(tb, f)
			parts := strings.Split(t, ".")
			parts[0] = seg(tb, map[string]any{"alg": "ES256", "kid": f.es.Key().KID, "typ": "at+jwt"})
			return strings.Join(parts, ".")
		}, reason: "bad_signature"},
		{name: "fail/es256-der-signature", token: func(tb testing.TB, f *fixture) string {
			h := map[string]any{"alg": "ES256", "typ": "JWT", "kid": f.es.Key().KID}
			input := seg(tb, h) + "." + seg(tb, claims(f.es))
			sum := sha256.Sum256([]byte(input))
			der, err := ecdsa.SignASN1(rand.Reader, f.es.Key().Signer.(*ecdsa.PrivateKey), sum[:])
			if err != nil {
				tb.Fatal(err)
			}
			return input + "." + base64.RawURLEncoding.EncodeToString(der)
		}, reason: "bad_signature"},
		{name: "fail/bad-signature-and-expired", token: func(tb testing.TB, f *fixture) string {
			t := esTok(set("exp", t0.Add(-time.Hour).Unix()))(tb, f)
			sig := sigOf(tb, t)
			sig[5] ^= 0x01
			return resign(t, sig)
		}, reason: "bad_signature"},

		// Time claims.
		{name: "fail/exp-missing", token: esTok(del("exp")), reason: "missing_exp"},
		{name: "fail/exp-zero", token: esTok(set("exp", 0)), reason: "token_expired"},
		{name: "fail/exp-string", token: esTok(set("exp", "2030-01-01")), reason: "malformed"},
		{name: "fail/exp-numeric-string", token: esTok(set("exp", "1900000000")), reason: "malformed"},
		{name: "fail/exp-null", token: esTok(set("exp", nil)), reason: "malformed"},
		{name: "fail/exp-negative", token: esTok(set("exp", -1)), reason: "malformed"},
		{name: "fail/exp-huge", token: esTok(set("exp", json.Number("1e400"))), reason: "malformed"},
		{name: "fail/exp-year-10000", token: esTok(set("exp", int64(253402300800))), reason: "malformed"},
		{name: "fail/iat-string", token: esTok(set("iat", "yesterday")), reason: "malformed"},
		{name: "fail/expired", token: esTok(set("iat", t0.Add(-time.Hour).Unix()), set("nbf", t0.Add(-time.Hour).Unix()), set("exp", t0.Add(-5*time.Minute).Unix())), reason: "token_expired"},
		{name: "fail/expired-just-past-leeway", token: esTok(set("exp", t0.Add(-31*time.Second).Unix())), reason: "token_expired"},
		{name: "fail/nbf-future", token: esTok(set("nbf", t0.Add(5*time.Minute).Unix())), reason: "token_not_yet_valid"},
		{name: "fail/iat-future", token: esTok(set("iat", t0.Add(5*time.Minute).Unix()), del("nbf")), reason: "issued_in_future"},
		{name: "fail/lifetime-too-long", token: esTok(set("iat", t0.Unix()), set("exp", t0.Add(24*time.Hour+time.Second).Unix())), reason: "lifetime_too_long"},
		{name: "fail/lifetime-too-long-without-iat", token: esTok(del("iat"), set("exp", t0.Add(25*time.Hour).Unix())), reason: "lifetime_too_long"},
		{name: "fail/lifetime-old-iat", token: esTok(set("iat", t0.Add(-48*time.Hour).Unix())), reason: "lifetime_too_long"},
		{name: "fail/lifetime-per-issuer", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, f.ed.Key(), nil, claims(f.ed, set("exp", t0.Add(2*time.Hour).Unix()))) // ed allows 1h
		}, reason: "lifetime_too_long"},

		// Issuer.
		{name: "fail/iss-trailing-slash", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, f.es.Key(), nil, claims(f.es, set("iss", f.es.URL+"/")))
		}, reason: "untrusted_issuer"},
		{name: "fail/iss-different-case", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, f.es.Key(), nil, claims(f.es, set("iss", strings.ToUpper(f.es.URL))))
		}, reason: "untrusted_issuer"},
		{name: "fail/iss-missing", token: esTok(del("iss")), reason: "missing_issuer"},
		{name: "fail/iss-empty", token: esTok(set("iss", "")), reason: "missing_issuer"},
		{name: "fail/iss-number", token: esTok(set("iss", 1)), reason: "untrusted_issuer"},
		{name: "fail/iss-array", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, f.es.Key(), nil, claims(f.es, set("iss", []any{f.es.URL})))
		}, reason: "untrusted_issuer"},
		{name: "fail/iss-unknown", token: esTok(set("iss", "https://attacker.invalid")), reason: "untrusted_issuer"},

		// Audience.
		{name: "fail/aud-missing", token: esTok(del("aud")), reason: "bad_audience"},
		{name: "fail/aud-other", token: esTok(set("aud", "vault")), reason: "bad_audience"},
		{name: "fail/aud-array-without-ours", token: esTok(set("aud", []any{"vault", "KEYTRAIL", "keytrail "})), reason: "bad_audience"},
		{name: "fail/aud-empty-string", token: esTok(set("aud", "")), reason: "bad_audience"},
		{name: "fail/aud-empty-array", token: esTok(set("aud", []any{})), reason: "bad_audience"},
		{name: "fail/aud-of-other-issuer", token: func(tb testing.TB, f *fixture) string {
			return sign(tb, f.rs.Key(), nil, claims(f.rs, set("aud", "keytrail-admin"))) // only es has it
		}, reason: "bad_audience"},
		{name: "fail/aud-number", token: esTok(set("aud", 5)), reason: "malformed"},
		{name: "fail/aud-array-with-number", token: esTok(set("aud", []any{"keytrail", 5})), reason: "malformed"},

		// Subject and other claims.
		{name: "fail/sub-missing", token: esTok(del("sub")), reason: "missing_subject"},
		{name: "fail/sub-empty", token: esTok(set("sub", "")), reason: "missing_subject"},
		{name: "fail/sub-number", token: esTok(set("sub", 42)), reason: "malformed"},
		{name: "fail/jti-number", token: esTok(set("jti", 42)), reason: "malformed"},

		// A sub is written into audit events, logs, report and trace
		// output, and keys: one with a control, format or separator
		// character, or the replacement character invalid UTF-8 is
		// decoded to (two different byte strings, one identity), is
		// refused whoever signed it.
		{name: "fail/sub-newline", token: esTok(set("sub", testSub+"\nlevel=INFO msg=forged")), reason: "bad_subject"},
		{name: "fail/sub-cr", token: esTok(set("sub", testSub+"\r")), reason: "bad_subject"},
		{name: "fail/sub-tab", token: esTok(set("sub", "system:serviceaccount:\tpayments:api")), reason: "bad_subject"},
		{name: "fail/sub-nul", token: esTok(set("sub", "system:serviceaccount:payments:api\x00x")), reason: "bad_subject"},
		{name: "fail/sub-escape", token: esTok(set("sub", "\x1b[2J\x1b[31mroot")), reason: "bad_subject"},
		{name: "fail/sub-del", token: esTok(set("sub", "repo:o/r\x7f")), reason: "bad_subject"},
		{name: "fail/sub-c1-nel", token: esTok(set("sub", "repo:o/r\u0085x")), reason: "bad_subject"},
		{name: "fail/sub-c1-csi", token: esTok(set("sub", "repo:o/r\u009b31m")), reason: "bad_subject"},
		{name: "fail/sub-bidi-override", token: esTok(set("sub", "user:\u202eevil")), reason: "bad_subject"},
		{name: "fail/sub-zero-width", token: esTok(set("sub", "system:serviceaccount:payments:a\u200bpi")), reason: "bad_subject"},
		{name: "fail/sub-bom", token: esTok(set("sub", "\ufeffsystem:serviceaccount:payments:api")), reason: "bad_subject"},
		{name: "fail/sub-line-separator", token: esTok(set("sub", "a\u2028b")), reason: "bad_subject"},
		{name: "fail/sub-paragraph-separator", token: esTok(set("sub", "a\u2029b")), reason: "bad_subject"},
		{name: "fail/sub-replacement-char", token: esTok(set("sub", "a\ufffdb")), reason: "bad_subject"},
		{name: "fail/sub-invalid-utf8", token: func(tb testing.TB, f *fixture) string {
			return signPayload(tb, f.es.Key(), payloadWithSub(tb, f, "a\xffb"))
		}, reason: "bad_subject"},
		{name: "fail/sub-lone-surrogate", token: func(tb testing.TB, f *fixture) string {
			return signPayload(tb, f.es.Key(), payloadWithSub(tb, f, `a\ud800b`))
		}, reason: "bad_subject"},
		// Real subjects pass: SPIFFE IDs, Kubernetes service accounts,
		// GitHub Actions (an environment name may hold spaces), e-mail
		// addresses, printable non-ASCII.
		{name: "ok/sub-spiffe", issuer: "es", token: esTok(set("sub", "spiffe://example.org/ns/payments/sa/api"))},
		{name: "ok/sub-k8s", issuer: "es", token: esTok(set("sub", "system:serviceaccount:payments:api"))},
		{name: "ok/sub-github-ref", issuer: "es", token: esTok(set("sub", "repo:octo-org/octo-repo:ref:refs/heads/main"))},
		{name: "ok/sub-github-environment", issuer: "es", token: esTok(set("sub", "repo:octo-org/octo-repo:environment:Production East"))},
		{name: "ok/sub-github-pr", issuer: "es", token: esTok(set("sub", "repo:octo-org/octo-repo:pull_request"))},
		{name: "ok/sub-email", issuer: "es", token: esTok(set("sub", "alice+ci@example.com"))},
		{name: "ok/sub-unicode", issuer: "es", token: esTok(set("sub", "user:Zoë Ångström/日本"))},
		// ZWNJ and ZWJ (Cf) are parts of text: Persian and Indic words,
		// emoji sequences, in a workflow or environment name a GitHub
		// custom sub template includes. trace and report quote them.
		{name: "ok/sub-zwnj-persian", issuer: "es", token: esTok(set("sub", "repo:o/r:environment:می\u200cخواهم"))},
		{name: "ok/sub-zwnj-devanagari", issuer: "es", token: esTok(set("sub", "repo:o/r:environment:क्\u200cष"))},
		{name: "ok/sub-zwj-emoji", issuer: "es", token: esTok(set("sub", "repo:o/r:environment:👩\u200d💻 deploy"))},
		// Every other format character stays refused: invisible, or
		// reordering what follows.
		{name: "fail/sub-lrm", token: esTok(set("sub", "user:\u200eevil")), reason: "bad_subject"},
		{name: "fail/sub-rlm", token: esTok(set("sub", "user:\u200fevil")), reason: "bad_subject"},
		{name: "fail/sub-bidi-embedding", token: esTok(set("sub", "user:\u202aevil")), reason: "bad_subject"},
		{name: "fail/sub-bidi-isolate", token: esTok(set("sub", "user:\u2067evil\u2069")), reason: "bad_subject"},
		{name: "fail/sub-arabic-letter-mark", token: esTok(set("sub", "user:\u061cevil")), reason: "bad_subject"},
		{name: "fail/sub-word-joiner", token: esTok(set("sub", "a\u2060pi")), reason: "bad_subject"},
		{name: "fail/sub-invisible-times", token: esTok(set("sub", "a\u2062pi")), reason: "bad_subject"},
		{name: "fail/sub-invisible-plus", token: esTok(set("sub", "a\u2064pi")), reason: "bad_subject"},
		{name: "fail/sub-soft-hyphen", token: esTok(set("sub", "pay\u00adments")), reason: "bad_subject"},
		{name: "fail/sub-tag-character", token: esTok(set("sub", "api\U000e0041")), reason: "bad_subject"},
		{name: "fail/sub-zwnj-with-bidi", token: esTok(set("sub", "user:\u200c\u202eevil")), reason: "bad_subject"},
	}
}

// payloadWithSub is valid claims of f's es issuer whose sub is written
// into the JSON as the exact bytes sub (not escaped: invalid UTF-8 stays
// as it is).
func payloadWithSub(tb testing.TB, f *fixture, sub string) string {
	tb.Helper()
	b, err := json.Marshal(claims(f.es, set("sub", "SUB-PLACEHOLDER")))
	if err != nil {
		tb.Fatal(err)
	}
	return strings.Replace(string(b), "SUB-PLACEHOLDER", sub, 1)
}

// wantIdentity builds the identity an accepted token must yield, from the
// token's own payload.
func wantIdentity(tb testing.TB, issuerName, tok string) *broker.Identity {
	tb.Helper()
	payload, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
	if err != nil {
		tb.Fatal(err)
	}
	dec := json.NewDecoder(bytes.NewReader(payload))
	dec.UseNumber()
	var c map[string]any
	if err := dec.Decode(&c); err != nil {
		tb.Fatal(err)
	}
	unix := func(k string) time.Time {
		n, ok := c[k].(json.Number)
		if !ok {
			return time.Time{}
		}
		i, err := n.Int64()
		if err != nil {
			tb.Fatal(err)
		}
		return time.Unix(i, 0)
	}
	id := &broker.Identity{
		IssuerName: issuerName,
		Iss:        c["iss"].(string),
		Sub:        c["sub"].(string),
		IssuedAt:   unix("iat"),
		Expiry:     unix("exp"),
		Claims:     c,
	}
	id.JTI, _ = c["jti"].(string)
	switch a := c["aud"].(type) {
	case string:
		id.Audience = []string{a}
	case []any:
		for _, s := range a {
			id.Audience = append(id.Audience, s.(string))
		}
	}
	if id.JTI == "" {
		id.TokenDigest = wantTokenDigest(tb, tok)
	}
	return id
}

// wantTokenDigest is broker.Identity.TokenDigest as documented: SHA-256 of
// the signing input, a 0 byte and the signature (an ECDSA one's r only);
// zero for a token with a jti (wantIdentity leaves it zero then).
func wantTokenDigest(tb testing.TB, tok string) [sha256.Size]byte {
	tb.Helper()
	parts := strings.Split(tok, ".")
	header, err := base64.RawURLEncoding.DecodeString(parts[0])
	if err != nil {
		tb.Fatal(err)
	}
	var h struct{ Alg string }
	if err := json.Unmarshal(header, &h); err != nil {
		tb.Fatal(err)
	}
	sig, err := base64.RawURLEncoding.DecodeString(parts[2])
	if err != nil {
		tb.Fatal(err)
	}
	if strings.HasPrefix(h.Alg, "ES") {
		sig = sig[:len(sig)/2]
	}
	return sha256.Sum256([]byte(parts[0] + "." + parts[1] + "\x00" + string(sig)))
}

func checkRejection(tb testing.TB, err error, tok, wantReason string) {
	tb.Helper()
	var be *broker.Error
	if !errors.As(err, &be) {
		tb.Fatalf("Authenticate() error = %v (%T), want *broker.Error", err, err)
	}
	if diff := cmp.Diff(wantReason, be.Reason); diff != "" {
		tb.Errorf("Authenticate() reason = %q, want %q (err: %v)", be.Reason, wantReason, err)
	}
	if !errors.Is(err, broker.ErrUnauthenticated) {
		tb.Errorf("Authenticate() kind = %v, want ErrUnauthenticated", be.Kind)
	}
	if !strings.HasPrefix(be.Safe, "identity token rejected") {
		tb.Errorf("Authenticate() safe text = %q, want a coarse rejection", be.Safe)
	}
	// Neither the safe text nor the internal error may leak the token or a
	// claim value.
	for _, s := range []string{be.Safe, err.Error()} {
		for _, leak := range []string{canary, testSub, "payments"} {
			if strings.Contains(s, leak) {
				tb.Errorf("error text %q contains claim value %q", s, leak)
			}
		}
		for _, part := range strings.Split(tok, ".") {
			if len(part) >= 8 && strings.Contains(s, part) {
				tb.Errorf("error text %q contains a token part", s)
			}
		}
	}
}

func TestAuthenticate(t *testing.T) {
	f := newFixture(t, nil)
	for _, tc := range tokenCases() {
		t.Run(tc.name, func(t *testing.T) {
			tok := tc.token(t, f)
			got, err := f.v.Authenticate(context.Background(), tok)
			// Presented again (a verified-token cache hit for the good
			// ones), the token gets the same answer.
			again, errAgain := f.v.Authenticate(context.Background(), tok)
			if diff := cmp.Diff(got, again); diff != "" || reasonOf(err) != reasonOf(errAgain) {
				t.Errorf("second Authenticate() differs: %v / %v, identity (-first +second):\n%s", err, errAgain, diff)
			}
			if tc.reason != "" {
				if got != nil {
					t.Errorf("Authenticate() = %+v, want nil", got)
				}
				checkRejection(t, err, tok, tc.reason)
				return
			}
			if err != nil {
				t.Fatalf("Authenticate() = %v, want ok", err)
			}
			if diff := cmp.Diff(wantIdentity(t, tc.issuer, tok), got); diff != "" {
				t.Errorf("Authenticate() identity mismatch (-want +got):\n%s", diff)
			}
		})
	}
	// The table made one JWKS fetch per issuer (and one discovery for ed):
	// unknown kids within RefreshInterval did not cause more.
	got := []int64{f.es.JWKSFetches(), f.ed.DiscoveryFetches(), f.ed.JWKSFetches(), f.rs.JWKSFetches()}
	if diff := cmp.Diff([]int64{1, 1, 1, 1}, got); diff != "" {
		t.Errorf("fetches [es jwks, ed discovery, ed jwks, rs jwks] = %v, want [1 1 1 1]", got)
	}
}

func TestIdentityClaimsArePlain(t *testing.T) {
	f := newFixture(t, nil)
	tok := sign(t, f.es.Key(), nil, claims(f.es, set("big", int64(9007199254740993))))
	id, err := f.v.Authenticate(context.Background(), tok)
	if err != nil {
		t.Fatalf("Authenticate() = %v", err)
	}
	// Nested maps are map[string]any (not jwt.MapClaims), numbers keep every digit.
	ns, ok := id.Claims["kubernetes.io"].(map[string]any)
	if !ok {
		t.Fatalf("Claims[kubernetes.io] = %T, want map[string]any", id.Claims["kubernetes.io"])
	}
	got := []any{ns["namespace"], id.Claims["big"], id.Claims["groups"]}
	want := []any{"payments", json.Number("9007199254740993"), []any{"a", "b"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("claims = %v, want %v", got, want)
	}
	if _, isMapClaims := any(id.Claims).(jwt.MapClaims); isMapClaims {
		t.Errorf("Claims has type jwt.MapClaims, want map[string]any")
	}
}

func TestNoKidAmbiguous(t *testing.T) {
	f := newFixture(t, nil)
	if _, err := f.es.Rotate("ES256", true); err != nil { // two ES256 keys now
		t.Fatal(err)
	}
	tok := sign(t, f.es.Key(), map[string]any{"kid": nil}, claims(f.es))
	_, err := f.v.Authenticate(context.Background(), tok)
	checkRejection(t, err, tok, "unknown_key")
	// With its kid the same token's key is found.
	if _, err := f.v.Authenticate(context.Background(), sign(t, f.es.Key(), nil, claims(f.es))); err != nil {
		t.Errorf("Authenticate(with kid) = %v, want ok", err)
	}
}

// TestEmptyKidTakenAsAbsent: a token with "kid": "" selects its key exactly
// as a token without kid does, whatever mix of keys with and without kid the
// issuer publishes: the only key usable for the alg, else refused as
// ambiguous (never the kid-less keys tried as a set).
func TestEmptyKidTakenAsAbsent(t *testing.T) {
	kidless := func(tb testing.TB, alg string) *authntest.Key {
		k := newKey(tb, alg)
		k.KID = ""
		return k
	}
	cases := []struct {
		name   string
		keys   func(tb testing.TB) []*authntest.Key // the first signs
		reason string                               // "" for ok
	}{
		{name: "ok/one-key-with-kid", keys: func(tb testing.TB) []*authntest.Key {
			return []*authntest.Key{newKey(tb, "ES256")}
		}},
		{name: "ok/one-kidless-key", keys: func(tb testing.TB) []*authntest.Key {
			return []*authntest.Key{kidless(tb, "ES256")}
		}},
		{name: "ok/kidless-key-and-rsa-key-with-kid", keys: func(tb testing.TB) []*authntest.Key {
			return []*authntest.Key{kidless(tb, "ES256"), newKey(tb, "RS256")}
		}},
		{name: "fail/kidless-key-and-es256-key-with-kid", reason: "unknown_key", keys: func(tb testing.TB) []*authntest.Key {
			return []*authntest.Key{kidless(tb, "ES256"), newKey(tb, "ES256")}
		}},
		{name: "fail/two-kidless-keys", reason: "unknown_key", keys: func(tb testing.TB) []*authntest.Key {
			return []*authntest.Key{kidless(tb, "ES256"), kidless(tb, "ES256")}
		}},
	}
	for _, tc := range cases {
		for _, hdr := range []struct {
			name string
			kid  any
		}{{"absent", nil}, {"empty", ""}} {
			t.Run(tc.name+"/kid-"+hdr.name, func(t *testing.T) {
				f := newFixture(t, nil)
				keys := tc.keys(t)
				f.es.ReplaceKeys(keys...)
				tok := sign(t, keys[0], map[string]any{"kid": hdr.kid}, claims(f.es))
				id, err := f.v.Authenticate(context.Background(), tok)
				if tc.reason == "" {
					if err != nil {
						t.Fatalf("Authenticate() = %v, want ok", err)
					}
					if id.IssuerName != "es" {
						t.Errorf("IssuerName = %q, want es", id.IssuerName)
					}
					return
				}
				checkRejection(t, err, tok, tc.reason)
			})
		}
	}
}

func TestUnknownKidRefetchRateLimited(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	ok := sign(t, f.es.Key(), nil, claims(f.es))
	unknown := sign(t, f.attacker, nil, claims(f.es))
	steps := []struct {
		name    string
		advance time.Duration
		tok     string
		reason  string
		fetches int64
	}{
		{name: "ok/first-use-fetches", tok: ok, fetches: 1},
		{name: "fail/unknown-kid-within-interval-no-fetch", tok: unknown, reason: "unknown_key", fetches: 1},
		{name: "fail/unknown-kid-again-no-fetch", advance: 29 * time.Second, tok: unknown, reason: "unknown_key", fetches: 1},
		{name: "fail/unknown-kid-after-interval-fetches-once", advance: time.Second, tok: unknown, reason: "unknown_key", fetches: 2},
		{name: "fail/unknown-kid-right-after-no-fetch", tok: unknown, reason: "unknown_key", fetches: 2},
		{name: "ok/known-kid-no-fetch", advance: 10 * time.Second, tok: ok, fetches: 2},
	}
	for _, s := range steps {
		f.clock.Advance(s.advance)
		_, err := f.v.Authenticate(ctx, s.tok)
		if s.reason == "" && err != nil {
			t.Errorf("%s: Authenticate() = %v, want ok", s.name, err)
		}
		if s.reason != "" {
			checkRejection(t, err, s.tok, s.reason)
		}
		if got := f.es.JWKSFetches(); got != s.fetches {
			t.Errorf("%s: fetches = %d, want %d", s.name, got, s.fetches)
		}
	}
}

func TestConcurrentFetchesCoalesce(t *testing.T) {
	f := newFixture(t, nil)
	tok := sign(t, f.es.Key(), nil, claims(f.es))
	const n = 16
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := f.v.Authenticate(context.Background(), tok)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("Authenticate() = %v, want ok", err)
		}
	}
	if got := f.es.JWKSFetches(); got != 1 {
		t.Errorf("fetches = %d, want 1", got)
	}
}

func TestKeyRotation(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	old := sign(t, f.es.Key(), nil, claims(f.es))
	if _, err := f.v.Authenticate(ctx, old); err != nil {
		t.Fatalf("Authenticate(old) = %v", err)
	}
	if _, err := f.es.Rotate("ES256", false); err != nil {
		t.Fatal(err)
	}
	fresh := sign(t, f.es.Key(), nil, claims(f.es))

	_, err := f.v.Authenticate(ctx, fresh)
	checkRejection(t, err, fresh, "unknown_key") // within RefreshInterval of the first fetch

	f.clock.Advance(authn.DefaultRefreshInterval)
	if _, err := f.v.Authenticate(ctx, fresh); err != nil {
		t.Fatalf("Authenticate(new key after interval) = %v, want ok", err)
	}
	// The retired key is gone from the cache with the refetch.
	_, err = f.v.Authenticate(ctx, old)
	checkRejection(t, err, old, "unknown_key")
	if got := f.es.JWKSFetches(); got != 2 {
		t.Errorf("fetches = %d, want 2", got)
	}
}

func TestCacheTTLRefetchDropsRevokedKey(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	old := sign(t, f.es.Key(), nil, claims(f.es, set("exp", t0.Add(time.Hour).Unix())))
	if _, err := f.v.Authenticate(ctx, old); err != nil {
		t.Fatalf("Authenticate() = %v", err)
	}
	if _, err := f.es.Rotate("ES256", false); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(authn.DefaultCacheTTL - time.Second)
	if _, err := f.v.Authenticate(ctx, old); err != nil {
		t.Errorf("Authenticate(before CacheTTL) = %v, want ok from cache", err)
	}
	f.clock.Advance(time.Second)
	// Past CacheTTL the stale keys serve while the refetch runs in the
	// background; once it is done, the revoked key is gone.
	if _, err := f.v.Authenticate(ctx, old); err != nil {
		t.Errorf("Authenticate(at CacheTTL) = %v, want ok from the stale keys", err)
	}
	f.v.WaitFetches()
	_, err := f.v.Authenticate(ctx, old)
	checkRejection(t, err, old, "unknown_key")
	if got := f.es.JWKSFetches(); got != 2 {
		t.Errorf("fetches = %d, want 2", got)
	}
}

func TestStaleKeysWhileIssuerDown(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	tok := sign(t, f.es.Key(), nil, claims(f.es, set("exp", t0.Add(2*time.Hour).Unix())))
	if _, err := f.v.Authenticate(ctx, tok); err != nil {
		t.Fatalf("Authenticate() = %v", err)
	}
	f.es.SetDown(true)
	steps := []struct {
		name    string
		at      time.Duration // since t0
		unavail bool
		fetches int64
	}{
		{name: "ok/fresh-no-fetch", at: authn.DefaultCacheTTL - time.Second, fetches: 1},
		{name: "ok/stale-refetch-fails-cache-served", at: authn.DefaultCacheTTL, fetches: 2},
		{name: "ok/stale-within-interval-no-fetch", at: authn.DefaultCacheTTL + 10*time.Second, fetches: 2},
		{name: "ok/stale-refetch-fails-again", at: authn.DefaultCacheTTL + authn.DefaultStaleFor - time.Second, fetches: 3},
		{name: "fail/past-stale-for-rate-limited", at: authn.DefaultCacheTTL + authn.DefaultStaleFor, unavail: true, fetches: 3},
		{name: "fail/past-stale-for-refetch-fails", at: authn.DefaultCacheTTL + authn.DefaultStaleFor - time.Second + authn.DefaultRefreshInterval, unavail: true, fetches: 4},
		{name: "fail/past-stale-for-no-fetch-within-interval", at: authn.DefaultCacheTTL + authn.DefaultStaleFor + authn.DefaultRefreshInterval, unavail: true, fetches: 4},
	}
	for _, s := range steps {
		f.clock.Advance(t0.Add(s.at).Sub(f.clock.Now()))
		_, err := f.v.Authenticate(ctx, tok)
		f.v.WaitFetches() // a refetch the stale keys answered runs in the background
		switch {
		case s.unavail:
			var be *broker.Error
			if !errors.As(err, &be) || !errors.Is(err, broker.ErrUnavailable) || be.Reason != "jwks_unavailable" || be.RetryAfter <= 0 {
				t.Errorf("%s: Authenticate() = %v, want ErrUnavailable jwks_unavailable with RetryAfter", s.name, err)
			}
			if errors.Is(err, broker.ErrUnauthenticated) {
				t.Errorf("%s: Authenticate() = %v, must not be ErrUnauthenticated", s.name, err)
			}
		case err != nil:
			t.Errorf("%s: Authenticate() = %v, want ok", s.name, err)
		}
		if got := f.es.JWKSFetches(); got != s.fetches {
			t.Errorf("%s: fetches = %d, want %d", s.name, got, s.fetches)
		}
	}
	// Back up: the next allowed fetch restores service.
	f.es.SetDown(false)
	f.clock.Advance(authn.DefaultRefreshInterval)
	if _, err := f.v.Authenticate(ctx, tok); err != nil {
		t.Errorf("Authenticate(after recovery) = %v, want ok", err)
	}
}

// TestEmptyJWKSKeepsLastGoodKeys: an answer {"keys": []} (a misbehaving IdP
// or proxy) is a failed fetch, not a removal of every key: the last good
// keys serve for StaleFor, then the issuer's tokens get 503, never 401.
func TestEmptyJWKSKeepsLastGoodKeys(t *testing.T) {
	iss := newIssuer(t, "ES256")
	var body atomic.Pointer[[]byte]
	good := iss.JWKS()
	body.Store(&good)
	var fetches atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(*body.Load())
	}))
	t.Cleanup(srv.Close)
	clock := &fakeClock{now: t0}
	v := verifierFor(t, iss.URL, srv.URL, func(o *authn.Options) { o.Now = clock.Now })
	ctx := context.Background()
	tok := sign(t, iss.Key(), nil, claims(iss, set("exp", t0.Add(30*time.Minute).Unix())))
	if _, err := v.Authenticate(ctx, tok); err != nil {
		t.Fatalf("Authenticate() = %v, want ok", err)
	}
	empty := []byte(`{"keys":[]}`)
	body.Store(&empty)

	clock.Advance(authn.DefaultCacheTTL)
	if _, err := v.Authenticate(ctx, tok); err != nil {
		t.Errorf("Authenticate(refetch answered an empty set) = %v, want ok from the last good keys", err)
	}
	v.WaitFetches()
	if _, err := v.Authenticate(ctx, tok); err != nil {
		t.Errorf("Authenticate(after the refetch answered an empty set) = %v, want ok from the last good keys", err)
	}
	if got := fetches.Load(); got != 2 {
		t.Errorf("fetches = %d, want 2", got)
	}
	clock.Advance(authn.DefaultStaleFor)
	_, err := v.Authenticate(ctx, tok)
	if !errors.Is(err, broker.ErrUnavailable) || broker.AsError(err).Reason != "jwks_unavailable" {
		t.Errorf("Authenticate(past StaleFor, still empty) = %v, want ErrUnavailable jwks_unavailable", err)
	}
	// A good set again restores service at the next allowed fetch.
	body.Store(&good)
	clock.Advance(authn.DefaultRefreshInterval)
	if _, err := v.Authenticate(ctx, tok); err != nil {
		t.Errorf("Authenticate(after the keys are back) = %v, want ok", err)
	}
}

func TestFirstFetchFailsIsUnavailable(t *testing.T) {
	f := newFixture(t, nil)
	f.rs.SetDown(true)
	tok := sign(t, f.rs.Key(), nil, claims(f.rs))
	for i := range 2 {
		_, err := f.v.Authenticate(context.Background(), tok)
		if !errors.Is(err, broker.ErrUnavailable) || broker.AsError(err).Reason != "jwks_unavailable" {
			t.Errorf("Authenticate() #%d = %v, want ErrUnavailable jwks_unavailable", i, err)
		}
	}
	if got := f.rs.JWKSFetches(); got != 1 {
		t.Errorf("fetches = %d, want 1 (rate limited)", got)
	}
}

func TestContextCancelled(t *testing.T) {
	f := newFixture(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := f.v.Authenticate(ctx, sign(t, f.es.Key(), nil, claims(f.es)))
	if !errors.Is(err, context.Canceled) || !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Authenticate(cancelled) = %v, want ErrUnavailable wrapping context.Canceled", err)
	}
}

// staticServer serves body at every path.
func staticServer(t *testing.T, body []byte) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// verifierFor trusts one issuer named "x" with iss iss and the given JWKS URL.
func verifierFor(t *testing.T, iss, jwksURL string, mod func(*authn.Options)) *authn.Verifier {
	t.Helper()
	o := authn.Options{
		Issuers: []policies.Issuer{{
			Name: "x", Issuer: iss, JWKSURL: jwksURL, Audiences: []string{"keytrail"},
			Algorithms: []string{"ES256"}, MaxTokenLifetime: policies.Duration(time.Hour),
		}},
		Now: func() time.Time { return t0 },
	}
	if mod != nil {
		mod(&o)
	}
	v, err := authn.New(context.Background(), o)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	return v
}

func TestJWKSBodyLimit(t *testing.T) {
	iss := newIssuer(t, "ES256")
	jwks := iss.JWKS()
	const limit = 4096
	tests := []struct {
		name    string
		size    int
		unavail bool
	}{
		{name: "ok/at-limit", size: limit},
		{name: "fail/one-byte-over", size: limit + 1, unavail: true},
		{name: "fail/far-over", size: 10 * limit, unavail: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			body := append(append([]byte(nil), jwks...), bytes.Repeat([]byte(" "), tc.size-len(jwks))...)
			srv := staticServer(t, body)
			v := verifierFor(t, iss.URL, srv.URL, func(o *authn.Options) { o.MaxJWKSBytes = limit })
			_, err := v.Authenticate(context.Background(), sign(t, iss.Key(), nil, claims(iss)))
			if got := errors.Is(err, broker.ErrUnavailable); got != tc.unavail {
				t.Errorf("Authenticate() = %v, unavailable %v, want %v", err, got, tc.unavail)
			}
		})
	}
}

func TestJWKSContentRules(t *testing.T) {
	iss := newIssuer(t, "ES256")
	k := iss.Key()
	var set struct {
		Keys []map[string]any `json:"keys"`
	}
	if err := json.Unmarshal(iss.JWKS(), &set); err != nil {
		t.Fatal(err)
	}
	jwk := set.Keys[0]
	with := func(changes map[string]any) []byte {
		m := map[string]any{}
		for key, val := range jwk {
			m[key] = val
		}
		for key, val := range changes {
			if val == nil {
				delete(m, key)
			} else {
				m[key] = val
			}
		}
		b, _ := json.Marshal(map[string]any{"keys": []any{m}})
		return b
	}
	tests := []struct {
		name    string
		body    []byte
		reason  string // "" ok; "jwks_unavailable" for ErrUnavailable
		comment string
	}{
		{name: "ok/plain", body: with(nil)},
		{name: "ok/no-alg-no-use", body: with(map[string]any{"alg": nil, "use": nil})},
		{name: "ok/key-ops-verify", body: with(map[string]any{"key_ops": []string{"verify"}})},
		{name: "fail/use-enc", body: with(map[string]any{"use": "enc"}), reason: "unknown_key"},
		{name: "fail/alg-mismatch", body: with(map[string]any{"alg": "ES384"}), reason: "unknown_key"},
		{name: "fail/key-ops-without-verify", body: with(map[string]any{"key_ops": []string{"encrypt"}}), reason: "unknown_key"},
		{name: "fail/curve-mismatch", body: func() []byte {
			b, err := authntest.MarshalJWKS(&authntest.Key{KID: k.KID, Alg: "ES384", Signer: newKey(t, "ES384").Signer})
			if err != nil {
				t.Fatal(err)
			}
			return bytes.Replace(b, []byte(`"alg":"ES384",`), nil, 1)
		}(), reason: "unknown_key"},
		{name: "fail/symmetric-key-only", body: []byte(`{"keys":[{"kty":"oct","kid":"` + k.KID + `","k":"c2VjcmV0"}]}`), reason: "jwks_unavailable"},
		{name: "fail/not-json", body: []byte(`<html>`), reason: "jwks_unavailable"},
		{name: "fail/no-keys-member", body: []byte(`{"jwks":[]}`), reason: "jwks_unavailable"},
		{name: "fail/empty-set", body: []byte(`{"keys":[]}`), reason: "jwks_unavailable"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := staticServer(t, tc.body)
			v := verifierFor(t, iss.URL, srv.URL, nil)
			tok := sign(t, k, nil, claims(iss))
			_, err := v.Authenticate(context.Background(), tok)
			switch tc.reason {
			case "":
				if err != nil {
					t.Errorf("Authenticate() = %v, want ok", err)
				}
			case "jwks_unavailable":
				if !errors.Is(err, broker.ErrUnavailable) {
					t.Errorf("Authenticate() = %v, want ErrUnavailable", err)
				}
			default:
				checkRejection(t, err, tok, tc.reason)
			}
		})
	}
}

func TestDiscovery(t *testing.T) {
	iss := newIssuer(t, "ES256")
	docServer := func(t *testing.T, doc map[string]any) string {
		b, _ := json.Marshal(doc)
		return staticServer(t, b).URL
	}
	tests := []struct {
		name    string
		setup   func(t *testing.T) string // returns the configured issuer URL
		unavail bool
	}{
		{name: "ok/discovery", setup: func(t *testing.T) string { return iss.URL }},
		{name: "fail/doc-names-other-issuer", unavail: true, setup: func(t *testing.T) string {
			return docServer(t, map[string]any{"issuer": "https://other.invalid", "jwks_uri": iss.URL + authntest.JWKSPath})
		}},
		{name: "fail/jwks-uri-plain-http-non-loopback", unavail: true, setup: func(t *testing.T) string {
			var srv *httptest.Server
			srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				_ = json.NewEncoder(w).Encode(map[string]any{"issuer": srv.URL, "jwks_uri": "http://keys.example.invalid/jwks"})
			}))
			t.Cleanup(srv.Close)
			return srv.URL
		}},
		{name: "fail/no-jwks-uri", unavail: true, setup: func(t *testing.T) string {
			var srv *httptest.Server
			srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				_ = json.NewEncoder(w).Encode(map[string]any{"issuer": srv.URL})
			}))
			t.Cleanup(srv.Close)
			return srv.URL
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			issURL := tc.setup(t)
			v, err := authn.New(context.Background(), authn.Options{
				Issuers: []policies.Issuer{{
					Name: "x", Issuer: issURL, Discovery: true, Audiences: []string{"keytrail"},
					Algorithms: []string{"ES256"}, MaxTokenLifetime: policies.Duration(time.Hour),
				}},
				Now: func() time.Time { return t0 },
			})
			if err != nil {
				t.Fatalf("New() = %v", err)
			}
			_, err = v.Authenticate(context.Background(), sign(t, iss.Key(), nil, claims(iss, set("iss", issURL))))
			if got := errors.Is(err, broker.ErrUnavailable); got != tc.unavail || (!tc.unavail && err != nil) {
				t.Errorf("Authenticate() = %v, unavailable %v, want %v", err, got, tc.unavail)
			}
		})
	}
}

func writeCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "ca.pem")
	b := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(p, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCAFile(t *testing.T) {
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(iss.Handler())
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the unknown-authority case logs a handshake error
	srv.StartTLS()
	t.Cleanup(srv.Close)
	iss.URL = srv.URL // https://127.0.0.1:port
	caFile := writeCA(t, srv)

	redirect := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, "http://keys.example.invalid/jwks.json", http.StatusFound)
	}))
	t.Cleanup(redirect.Close)
	// A plain-http loopback server that does serve the right keys: a
	// redirect from https down to it is refused all the same.
	plain := httptest.NewServer(iss.Handler())
	t.Cleanup(plain.Close)
	downgrade := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+authntest.JWKSPath, http.StatusFound)
	}))
	t.Cleanup(downgrade.Close)

	tests := []struct {
		name    string
		jwksURL string
		caFile  string
		unavail bool
	}{
		{name: "ok/ca-file-trusts-server", jwksURL: srv.URL + authntest.JWKSPath, caFile: caFile},
		{name: "fail/no-ca-file-unknown-authority", jwksURL: srv.URL + authntest.JWKSPath, unavail: true},
		{name: "fail/redirect-to-plain-http-refused", jwksURL: redirect.URL + "/jwks.json", caFile: writeCA(t, redirect), unavail: true},
		{name: "fail/redirect-to-plain-http-loopback-refused", jwksURL: downgrade.URL + "/jwks.json", caFile: writeCA(t, downgrade), unavail: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			v := verifierFor(t, iss.URL, tc.jwksURL, func(o *authn.Options) { o.Issuers[0].CAFile = tc.caFile })
			_, err := v.Authenticate(context.Background(), sign(t, iss.Key(), nil, claims(iss)))
			if got := errors.Is(err, broker.ErrUnavailable); got != tc.unavail || (!tc.unavail && err != nil) {
				t.Errorf("Authenticate() = %v, unavailable %v, want %v", err, got, tc.unavail)
			}
		})
	}
}

// TestReadCAFileIsTheBundleTrusted: an issuer's ca_file is read through
// Options.ReadCAFile, once, and the bundle it returns is the one the JWKS
// fetch trusts, whatever the file holds now: the server passes the bytes
// the reload's CheckFiles read and checked (policies.Policy.CAFile).
func TestReadCAFileIsTheBundleTrusted(t *testing.T) {
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewTLSServer(iss.Handler())
	t.Cleanup(srv.Close)
	iss.URL = srv.URL
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, []byte("changed since it was checked\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	checked := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	var reads []string
	v := verifierFor(t, iss.URL, srv.URL+authntest.JWKSPath, func(o *authn.Options) {
		o.Issuers[0].CAFile = caFile
		o.ReadCAFile = func(path string) ([]byte, error) { reads = append(reads, path); return checked, nil }
	})
	if _, err := v.Authenticate(context.Background(), sign(t, iss.Key(), nil, claims(iss))); err != nil {
		t.Errorf("Authenticate() = %v, want the JWKS fetched over TLS verified by the bundle ReadCAFile returned", err)
	}
	if diff := cmp.Diff([]string{caFile}, reads); diff != "" {
		t.Errorf("ReadCAFile calls (-want +got):\n%s", diff)
	}
}

func TestNewValidation(t *testing.T) {
	good := func() policies.Issuer {
		return policies.Issuer{
			Name: "k8s", Issuer: "https://kubernetes.default.svc", JWKSURL: "https://kubernetes.default.svc/openid/v1/jwks",
			Audiences: []string{"keytrail"}, Algorithms: []string{"RS256", "ES256"}, MaxTokenLifetime: policies.Duration(24 * time.Hour),
		}
	}
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a cert"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		mod  func(*authn.Options)
		want string // substring of the error; "" for ok
	}{
		{name: "ok/https", mod: func(o *authn.Options) {}},
		{name: "ok/loopback-http", mod: func(o *authn.Options) { o.Issuers[0].JWKSURL = "http://127.0.0.1:8080/jwks" }},
		{name: "ok/localhost-http", mod: func(o *authn.Options) { o.Issuers[0].JWKSURL = "http://localhost:8080/jwks" }},
		{name: "ok/ipv6-loopback-http", mod: func(o *authn.Options) { o.Issuers[0].JWKSURL = "http://[::1]:8080/jwks" }},
		{name: "ok/max-leeway", mod: func(o *authn.Options) { o.Leeway = 60 * time.Second }},
		{name: "ok/no-issuers", mod: func(o *authn.Options) { o.Issuers = nil }},
		{name: "ok/discovery", mod: func(o *authn.Options) { o.Issuers[0].JWKSURL = ""; o.Issuers[0].Discovery = true }},
		{name: "fail/plain-http-non-loopback", mod: func(o *authn.Options) { o.Issuers[0].JWKSURL = "http://kubernetes.default.svc/jwks" }, want: "issuers[0].jwks_url: plain http"},
		{name: "fail/plain-http-private-ip", mod: func(o *authn.Options) { o.Issuers[0].JWKSURL = "http://10.0.0.1/jwks" }, want: "issuers[0].jwks_url"},
		{name: "fail/ftp", mod: func(o *authn.Options) { o.Issuers[0].JWKSURL = "ftp://x/jwks" }, want: "issuers[0].jwks_url"},
		{name: "fail/file", mod: func(o *authn.Options) { o.Issuers[0].JWKSURL = "file:///etc/jwks" }, want: "issuers[0].jwks_url"},
		{name: "fail/relative-url", mod: func(o *authn.Options) { o.Issuers[0].JWKSURL = "/jwks" }, want: "issuers[0].jwks_url"},
		{name: "fail/userinfo", mod: func(o *authn.Options) { o.Issuers[0].JWKSURL = "https://u:p@x/jwks" }, want: "issuers[0].jwks_url"},
		{name: "fail/discovery-plain-http", mod: func(o *authn.Options) {
			o.Issuers[0].JWKSURL, o.Issuers[0].Discovery, o.Issuers[0].Issuer = "", true, "http://idp.example.com"
		}, want: "issuers[0].issuer"},
		{name: "fail/jwks-url-and-discovery", mod: func(o *authn.Options) { o.Issuers[0].Discovery = true }, want: "issuers[0].jwks_url"},
		{name: "fail/no-key-source", mod: func(o *authn.Options) { o.Issuers[0].JWKSURL = "" }, want: "issuers[0].jwks_url"},
		{name: "fail/leeway-too-large", mod: func(o *authn.Options) { o.Leeway = 61 * time.Second }, want: "leeway"},
		{name: "fail/negative-refresh", mod: func(o *authn.Options) { o.RefreshInterval = -time.Second }, want: "refresh_interval"},
		{name: "fail/alg-hs256", mod: func(o *authn.Options) { o.Issuers[0].Algorithms = []string{"HS256"} }, want: "issuers[0].algorithms[0]"},
		{name: "fail/alg-none", mod: func(o *authn.Options) { o.Issuers[0].Algorithms = []string{"RS256", "none"} }, want: "issuers[0].algorithms[1]"},
		{name: "fail/no-algs", mod: func(o *authn.Options) { o.Issuers[0].Algorithms = nil }, want: "issuers[0].algorithms"},
		{name: "fail/no-audiences", mod: func(o *authn.Options) { o.Issuers[0].Audiences = nil }, want: "issuers[0].audiences"},
		{name: "fail/empty-audience", mod: func(o *authn.Options) { o.Issuers[0].Audiences = []string{""} }, want: "issuers[0].audiences[0]"},
		{name: "fail/no-max-lifetime", mod: func(o *authn.Options) { o.Issuers[0].MaxTokenLifetime = 0 }, want: "issuers[0].max_token_lifetime"},
		{name: "fail/no-name", mod: func(o *authn.Options) { o.Issuers[0].Name = "" }, want: "issuers[0].name"},
		{name: "fail/no-issuer", mod: func(o *authn.Options) { o.Issuers[0].Issuer = "" }, want: "issuers[0].issuer"},
		{name: "fail/duplicate-name", mod: func(o *authn.Options) {
			d := good()
			d.Issuer = "https://other"
			o.Issuers = append(o.Issuers, d)
		}, want: "issuers[1].name: duplicate"},
		{name: "fail/duplicate-issuer", mod: func(o *authn.Options) {
			d := good()
			d.Name = "other"
			o.Issuers = append(o.Issuers, d)
		}, want: "issuers[1].issuer: duplicate"},
		{name: "fail/ca-file-missing", mod: func(o *authn.Options) { o.Issuers[0].CAFile = "/nonexistent/ca.pem" }, want: "issuers[0].ca_file"},
		{name: "fail/ca-file-garbage", mod: func(o *authn.Options) { o.Issuers[0].CAFile = garbage }, want: "issuers[0].ca_file"},
		{name: "fail/ca-file-with-custom-transport", mod: func(o *authn.Options) {
			o.Issuers[0].CAFile = garbage
			o.HTTPClient = &http.Client{Transport: roundTripFunc(nil)}
		}, want: "issuers[0].ca_file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			o := authn.Options{Issuers: []policies.Issuer{good()}}
			tc.mod(&o)
			v, err := authn.New(context.Background(), o)
			if tc.want == "" {
				if err != nil || v == nil {
					t.Errorf("New() = %v, %v, want ok", v, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New() error = %v, want containing %q", err, tc.want)
			}
		})
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// verifiedByFixture reports whether tok carries a valid signature of a key
// the fixture's issuers publish, for the issuer the token names.
func verifiedByFixture(f *fixture, tok string) bool {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return false
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	sig, err2 := base64.RawURLEncoding.DecodeString(parts[2])
	if err1 != nil || err2 != nil {
		return false
	}
	var h struct {
		Alg string `json:"alg"`
	}
	if json.Unmarshal(hb, &h) != nil {
		return false
	}
	m := jwt.GetSigningMethod(h.Alg)
	if m == nil || h.Alg == "none" || strings.HasPrefix(h.Alg, "HS") {
		return false
	}
	keys := map[*authntest.Issuer][]*authntest.Key{
		f.es: {f.es.Key(), f.esRSA},
		f.ed: {f.ed.Key()},
		f.rs: {f.rs.Key()},
	}
	for _, ks := range keys {
		for _, k := range ks {
			if m.Verify(parts[0]+"."+parts[1], sig, k.Public()) == nil {
				return true
			}
		}
	}
	return false
}

func FuzzAuthenticate(f *testing.F) {
	fx := newFixture(f, nil)
	for _, tc := range tokenCases() {
		f.Add(tc.token(f, fx))
	}
	f.Fuzz(func(t *testing.T, tok string) {
		id, err := fx.v.Authenticate(context.Background(), tok)
		if err != nil {
			var be *broker.Error
			if !errors.As(err, &be) || be.Reason == "" {
				t.Fatalf("Authenticate() error = %v, want *broker.Error with a reason", err)
			}
			if id != nil {
				t.Fatalf("Authenticate() = %v and %v, want nil identity on error", id, err)
			}
			return
		}
		if !verifiedByFixture(fx, tok) {
			t.Fatalf("Authenticate() accepted a token not signed by a published key")
		}
		if id.Sub == "" || id.Expiry.IsZero() || !t0.Before(id.Expiry.Add(authn.DefaultLeeway)) {
			t.Fatalf("Authenticate() accepted identity %+v with missing sub or past expiry", id)
		}
	})
}

func TestOnFetchReportsEveryAttempt(t *testing.T) {
	var mu sync.Mutex
	var got []string
	f := newFixture(t, func(o *authn.Options) {
		o.OnFetch = func(issuer string, err error) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, fmt.Sprintf("%s:%v", issuer, err == nil))
		}
	})
	if _, err := f.v.Authenticate(context.Background(), sign(t, f.es.Key(), nil, claims(f.es))); err != nil {
		t.Fatal(err)
	}
	f.rs.SetDown(true)
	_, err := f.v.Authenticate(context.Background(), sign(t, f.rs.Key(), nil, claims(f.rs)))
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("issuer down: %v, want ErrUnavailable", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if diff := cmp.Diff([]string{"es:true", "rs:false"}, got); diff != "" {
		t.Errorf("OnFetch calls (-want +got):\n%s", diff)
	}
}

func TestUnknownKidWhileIssuerDownIsUnavailable(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	if _, err := f.v.Authenticate(ctx, sign(t, f.es.Key(), nil, claims(f.es))); err != nil {
		t.Fatal(err)
	}
	f.es.SetDown(true)
	f.clock.Advance(31 * time.Second)
	rotated := newKey(t, "ES256")
	_, err := f.v.Authenticate(ctx, sign(t, rotated, nil, claims(f.es)))
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("unknown kid while the JWKS endpoint is down: %v, want ErrUnavailable (503), not a 401", err)
	}
	// Cached keys still serve known kids meanwhile.
	if _, err := f.v.Authenticate(ctx, sign(t, f.es.Key(), nil, claims(f.es))); err != nil {
		t.Errorf("known kid while down: %v, want ok from cached keys", err)
	}
	f.es.SetDown(false)
	f.clock.Advance(31 * time.Second)
	if _, err := f.v.Authenticate(ctx, sign(t, rotated, nil, claims(f.es))); !errors.Is(err, broker.ErrUnauthenticated) {
		t.Errorf("unknown kid with the issuer up: %v, want unknown_key (401)", err)
	}
}

// TestDiscoveryNoDowngradeToPlainHTTP: the discovery document of an https
// issuer may not send the key fetch to a plain-http jwks_uri, loopback
// included, as a redirect may not (TestCAFile).
func TestDiscoveryNoDowngradeToPlainHTTP(t *testing.T) {
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	// A plain-http loopback server that does serve the right keys.
	plain := httptest.NewServer(iss.Handler())
	t.Cleanup(plain.Close)
	var srv *httptest.Server
	srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]any{"issuer": srv.URL, "jwks_uri": plain.URL + authntest.JWKSPath})
	}))
	t.Cleanup(srv.Close)
	v, err := authn.New(context.Background(), authn.Options{
		Issuers: []policies.Issuer{{
			Name: "x", Issuer: srv.URL, Discovery: true, CAFile: writeCA(t, srv), Audiences: []string{"keytrail"},
			Algorithms: []string{"ES256"}, MaxTokenLifetime: policies.Duration(time.Hour),
		}},
		Now: func() time.Time { return t0 },
	})
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	_, err = v.Authenticate(context.Background(), sign(t, iss.Key(), nil, claims(iss, set("iss", srv.URL))))
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Authenticate() = %v, want ErrUnavailable (jwks_uri downgraded to plain http)", err)
	}
}

// TestPreviousKeepsKeysOfUnchangedIssuers: a verifier built with Previous
// (a policy reload) serves the last good keys of the issuers whose key
// source is unchanged, without a fetch, even while the issuer is down; an
// issuer whose jwks_url changed starts from nothing.
func TestPreviousKeepsKeysOfUnchangedIssuers(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	esTok := sign(t, f.es.Key(), nil, claims(f.es))
	rsTok := sign(t, f.rs.Key(), nil, claims(f.rs))
	for _, tok := range []string{esTok, rsTok} {
		if _, err := f.v.Authenticate(ctx, tok); err != nil {
			t.Fatalf("Authenticate() = %v", err)
		}
	}
	f.es.SetDown(true)
	f.rs.SetDown(true)
	opts := f.opts
	opts.Issuers = slices.Clone(f.opts.Issuers)
	opts.Issuers[2].JWKSURL += "?v=2" // rs: another key source
	opts.Previous = f.v
	v2, err := authn.New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v2.Authenticate(ctx, esTok); err != nil {
		t.Errorf("unchanged issuer after the reload: Authenticate() = %v, want the kept keys", err)
	}
	if got := f.es.JWKSFetches(); got != 1 {
		t.Errorf("unchanged issuer: fetches = %d, want 1 (the kept keys are fresh)", got)
	}
	if _, err := v2.Authenticate(ctx, rsTok); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("issuer with a new jwks_url: Authenticate() = %v, want ErrUnavailable (its old keys are not kept)", err)
	}
}

// TestClaimsNotOneJSONObject: the payload must be one JSON object (RFC 7519
// §7.2 step 10), as the header must. jwt/v5 decodes claims with a
// json.Decoder when numbers are kept exact, which stops after the first
// value: a signed payload with bytes after the object would otherwise be
// accepted, read one way here and refused (or read another way) by stricter
// parsers.
func TestClaimsNotOneJSONObject(t *testing.T) {
	f := newFixture(t, nil)
	c := claims(f.es)
	body, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	// The same claims with strings full of escaped quotes, backslashes and
	// brackets, \u escapes among them, last in the object.
	ct := claims(f.es)
	ct["note"] = map[string]any{"a": `x\"}{"]`, "b": []any{`\`, `"}]`, "\u0022}"}}
	ct["zz"] = `\`
	tricky, err := json.Marshal(ct)
	if err != nil {
		t.Fatal(err)
	}
	tricky = append(tricky[:len(tricky)-1], `,"u":"\u005c\u0022}"}`...)
	cases := []struct {
		name    string
		payload string
		reason  string // "" for ok
	}{
		{name: "ok/object", payload: string(body)},
		{name: "ok/surrounding-whitespace", payload: " \n" + string(body) + "\r\n\t "},
		{name: "fail/second-object", payload: string(body) + `{"sub":"someone-else"}`, reason: "malformed"},
		{name: "fail/trailing-garbage", payload: string(body) + "garbage", reason: "malformed"},
		{name: "fail/trailing-bracket", payload: string(body) + "]", reason: "malformed"},
		{name: "fail/trailing-nul", payload: string(body) + "\x00", reason: "malformed"},
		// Not JSON whitespace after the object: json.Valid refuses them,
		// and so must the check that finds the object's end by its brackets.
		{name: "fail/trailing-vertical-tab", payload: string(body) + "\v", reason: "malformed"},
		{name: "fail/trailing-form-feed", payload: string(body) + "\f", reason: "malformed"},
		{name: "fail/trailing-nbsp", payload: string(body) + "\u00a0", reason: "malformed"},
		{name: "fail/trailing-bom", payload: string(body) + "\ufeff", reason: "malformed"},
		{name: "fail/trailing-line-separator", payload: string(body) + "\u2028", reason: "malformed"},
		{name: "fail/trailing-invalid-utf8", payload: string(body) + "\xff", reason: "malformed"},
		{name: "fail/leading-bom", payload: "\ufeff" + string(body), reason: "malformed"},
		// Strings whose quotes, backslashes and brackets would end the
		// object early, or late, for a scan that did not skip escapes.
		{name: "ok/escapes-in-strings", payload: string(tricky) + "\n"},
		{name: "fail/escapes-in-strings-then-object", payload: string(tricky) + `{"sub":"someone-else"}`, reason: "malformed"},
		{name: "fail/escapes-in-strings-then-whitespace-and-object", payload: string(tricky) + " \n{}", reason: "malformed"},
		{name: "fail/escapes-in-strings-then-quote", payload: string(tricky) + `"`, reason: "malformed"},
		{name: "fail/escapes-in-strings-then-bracket", payload: string(tricky) + "}", reason: "malformed"},
		// A scan that ended strings at an escaped quote would take the
		// tail `"}}` for the rest of the object and accept it.
		{name: "fail/escaped-quote-then-tail-that-closes", payload: string(body[:len(body)-1]) + `,"v":"\"{"}"}}`, reason: "malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok := signPayload(t, f.es.Key(), tc.payload)
			id, err := f.v.Authenticate(context.Background(), tok)
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("Authenticate() = %v, want ok", err)
				}
				if id.Sub != testSub {
					t.Errorf("Authenticate().Sub = %q, want %q", id.Sub, testSub)
				}
				return
			}
			if id != nil {
				t.Errorf("Authenticate() = %+v, want nil", id)
			}
			checkRejection(t, err, tok, tc.reason)
		})
	}
}
