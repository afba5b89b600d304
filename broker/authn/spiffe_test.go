package authn_test

import (
	"context"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/keytrail/keytrail/broker"

	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/policies"
)

// spiffeJWK is k's public JWK as a SPIFFE bundle holds it (the SPIFFE
// Trust Domain and Bundle spec, §4.2): use "jwt-svid" or "x509-svid", no
// alg (SPIRE sets none); an x509-svid key carries its CA certificate in
// x5c, and a kid only when kid is not "".
func spiffeJWK(t *testing.T, k *authntest.Key, use, kid string) jwkset.JWKMarshal {
	t.Helper()
	j, err := jwkset.NewJWKFromKey(k.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: kid}})
	if err != nil {
		t.Fatalf("NewJWKFromKey() = %v", err)
	}
	m := j.Marshal()
	m.USE = jwkset.USE(use)
	if use == "x509-svid" {
		tmpl := &x509.Certificate{
			SerialNumber:          big.NewInt(1),
			Subject:               pkix.Name{Organization: []string{"example.org"}},
			NotBefore:             t0.Add(-time.Hour),
			NotAfter:              t0.Add(24 * time.Hour),
			KeyUsage:              x509.KeyUsageCertSign,
			BasicConstraintsValid: true,
			IsCA:                  true,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k.Signer)
		if err != nil {
			t.Fatalf("CreateCertificate() = %v", err)
		}
		m.X5C = []string{base64.StdEncoding.EncodeToString(der)}
	}
	return m
}

// spiffeBundle is a SPIFFE bundle document: a JWK set with
// spiffe_sequence and, unless hint is nil, spiffe_refresh_hint.
func spiffeBundle(t *testing.T, hint any, keys ...jwkset.JWKMarshal) []byte {
	t.Helper()
	doc := map[string]any{"spiffe_sequence": 7, "keys": keys}
	if hint != nil {
		doc["spiffe_refresh_hint"] = hint
	}
	b, err := json.Marshal(doc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestSPIFFEBundle: a SPIFFE bundle endpoint's JWK set (SPIRE's federation
// bundle endpoint) verifies JWT-SVIDs with its "jwt-svid" keys and never
// with its "x509-svid" ones (CA keys, §4.2.2 of the SPIFFE Trust Domain and
// Bundle spec).
func TestSPIFFEBundle(t *testing.T) {
	iss := newIssuer(t, "ES256")
	jwtKey, caKey := iss.Key(), newKey(t, "ES256")
	caNamed := newKey(t, "ES256")
	body := spiffeBundle(t, 300,
		spiffeJWK(t, caKey, "x509-svid", ""),
		spiffeJWK(t, jwtKey, "jwt-svid", jwtKey.KID),
		spiffeJWK(t, caNamed, "x509-svid", caNamed.KID),
	)
	srv := staticServer(t, body)
	v := verifierFor(t, iss.URL, srv.URL, nil)
	ctx := context.Background()
	svid := claims(iss, set("sub", "spiffe://example.org/payments/api"))

	tok := sign(t, jwtKey, nil, svid)
	id, err := v.Authenticate(ctx, tok)
	if err != nil {
		t.Fatalf("Authenticate(JWT-SVID signed by the jwt-svid key) = %v, want ok", err)
	}
	if id.Sub != "spiffe://example.org/payments/api" {
		t.Errorf("Sub = %q", id.Sub)
	}
	noKid := sign(t, jwtKey, map[string]any{"kid": nil}, svid)
	if _, err := v.Authenticate(ctx, noKid); err != nil {
		t.Errorf("Authenticate(no kid; the only jwt-svid key) = %v, want ok (x509-svid keys are not candidates)", err)
	}

	// The x509-svid keys' private halves sign a token: refused, named by
	// its kid or not.
	named := sign(t, caNamed, nil, svid)
	_, err = v.Authenticate(ctx, named)
	checkRejection(t, err, named, "unknown_key")
	unnamed := sign(t, caKey, map[string]any{"kid": nil}, svid)
	_, err = v.Authenticate(ctx, unnamed)
	checkRejection(t, err, unnamed, "bad_signature")
	// Not even when the jwt-svid key is gone from the bundle.
	only := staticServer(t, spiffeBundle(t, nil, spiffeJWK(t, caNamed, "x509-svid", caNamed.KID)))
	v2 := verifierFor(t, iss.URL, only.URL, nil)
	if _, err := v2.Authenticate(ctx, named); err == nil {
		t.Errorf("Authenticate(signed by an x509-svid key, the only key) = ok, want refused")
	}
	if _, err := v2.Authenticate(ctx, tok); err == nil {
		t.Errorf("Authenticate(bundle without a jwt-svid key) = ok, want refused")
	}
}

// TestSPIFFERefreshHint: a bundle's spiffe_refresh_hint (seconds) brings
// the refetch forward when it is shorter than CacheTTL, never below 30 s;
// a longer, missing or malformed hint leaves CacheTTL in force.
func TestSPIFFERefreshHint(t *testing.T) {
	tests := []struct {
		name    string
		hint    any
		refetch time.Duration // first moment the keys are refetched
	}{
		{name: "shorter-than-cache-ttl", hint: 90, refetch: 90 * time.Second},
		{name: "bounded-below", hint: 1, refetch: 30 * time.Second},
		{name: "zero-ignored", hint: 0, refetch: authn.DefaultCacheTTL},
		{name: "longer-than-cache-ttl", hint: 2419200, refetch: authn.DefaultCacheTTL},
		{name: "absent", hint: nil, refetch: authn.DefaultCacheTTL},
		{name: "negative-ignored", hint: -60, refetch: authn.DefaultCacheTTL},
		{name: "fraction-ignored", hint: 90.5, refetch: authn.DefaultCacheTTL},
		{name: "string-ignored", hint: "90", refetch: authn.DefaultCacheTTL},
		{name: "huge-ignored", hint: json.Number("99999999999999999999999"), refetch: authn.DefaultCacheTTL},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			iss := newIssuer(t, "ES256")
			k := iss.Key()
			body := spiffeBundle(t, tc.hint, spiffeJWK(t, k, "jwt-svid", k.KID))
			var fetches atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				fetches.Add(1)
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write(body)
			}))
			t.Cleanup(srv.Close)
			clock := &fakeClock{now: t0}
			v := verifierFor(t, iss.URL, srv.URL, func(o *authn.Options) { o.Now = clock.Now })
			ctx := context.Background()
			tok := sign(t, k, nil, claims(iss, set("exp", t0.Add(50*time.Minute).Unix())))
			step := func(at time.Duration, want int64) {
				t.Helper()
				clock.Advance(t0.Add(at).Sub(clock.Now()))
				if _, err := v.Authenticate(ctx, tok); err != nil {
					t.Fatalf("Authenticate(at %v) = %v, want ok", at, err)
				}
				v.WaitFetches()
				if got := fetches.Load(); got != want {
					t.Errorf("at %v: fetches = %d, want %d", at, got, want)
				}
			}
			step(0, 1)
			step(tc.refetch-time.Second, 1)
			step(tc.refetch, 2)
		})
	}
}

// TestSPIFFEUseIsCaseSensitive: a bundle key's use is compared exactly
// (§4.2.2: "The values are case sensitive"; an unknown use makes the
// whole JWK ignored): "JWT-SVID" is not "jwt-svid", so such a key never
// verifies, named by its kid or not, and "X509-SVID" is no signature key
// either.
func TestSPIFFEUseIsCaseSensitive(t *testing.T) {
	iss := newIssuer(t, "ES256")
	jwtKey, upper, upperCA := iss.Key(), newKey(t, "ES256"), newKey(t, "ES256")
	body := spiffeBundle(t, nil,
		spiffeJWK(t, jwtKey, "jwt-svid", jwtKey.KID),
		spiffeJWK(t, upper, "JWT-SVID", upper.KID),
		spiffeJWK(t, upperCA, "X509-SVID", upperCA.KID),
	)
	v := verifierFor(t, iss.URL, staticServer(t, body).URL, nil)
	ctx := context.Background()
	svid := claims(iss, set("sub", "spiffe://example.org/payments/api"))
	if _, err := v.Authenticate(ctx, sign(t, jwtKey, nil, svid)); err != nil {
		t.Fatalf("Authenticate(signed by the jwt-svid key) = %v, want ok", err)
	}
	for _, k := range []*authntest.Key{upper, upperCA} {
		named := sign(t, k, nil, svid)
		_, err := v.Authenticate(ctx, named)
		checkRejection(t, err, named, "unknown_key")
		// Without kid the only candidate is the jwt-svid key.
		unnamed := sign(t, k, map[string]any{"kid": nil}, svid)
		_, err = v.Authenticate(ctx, unnamed)
		checkRejection(t, err, unnamed, "bad_signature")
	}
}

// svidClaims are the claims of a SPIRE JWT-SVID from a server without
// jwt_issuer: sub, aud, exp, iat, and no iss.
func svidClaims(mods ...claimMod) jwt.MapClaims {
	c := jwt.MapClaims{
		"sub": "spiffe://example.org/ns/payments/sa/api",
		"aud": []any{"keytrail"},
		"iat": t0.Add(-10 * time.Second).Unix(),
		"exp": t0.Add(5 * time.Minute).Unix(),
	}
	for _, m := range mods {
		m(c)
	}
	return c
}

// spiffeVerifier trusts the trust domain example.org (issuer
// spiffe://example.org, keys from a SPIFFE bundle of one jwt-svid key and
// one x509-svid key) and, beside it, an ordinary issuer "other" with the
// same key under another kid. It returns the verifier and the jwt-svid and
// x509-svid keys.
func spiffeVerifier(t *testing.T) (*authn.Verifier, *authntest.Key, *authntest.Key) {
	t.Helper()
	jwtKey, caKey := newKey(t, "ES256"), newKey(t, "ES256")
	bundle := staticServer(t, spiffeBundle(t, 300,
		spiffeJWK(t, caKey, "x509-svid", caKey.KID),
		spiffeJWK(t, jwtKey, "jwt-svid", jwtKey.KID),
	))
	other := newIssuer(t, "ES256")
	v := verifierFor(t, "spiffe://example.org", bundle.URL, func(o *authn.Options) {
		o.Issuers[0].Name = "spire-prod"
		o.Issuers = append(o.Issuers, policies.Issuer{
			Name: "other", Issuer: other.URL, JWKSURL: other.URL + "/jwks", Audiences: []string{"keytrail"},
			Algorithms: []string{"ES256"}, MaxTokenLifetime: policies.Duration(time.Hour),
		})
	})
	return v, jwtKey, caKey
}

// TestSPIFFEWithoutIss: a JWT-SVID without iss (the SPIFFE JWT-SVID spec
// makes it optional; SPIRE sets it only with jwt_issuer) is routed to the
// issuer spiffe://<td> of its sub's trust domain and checked as any other
// token: audience, lifetime, keys of the trust domain's bundle.
func TestSPIFFEWithoutIss(t *testing.T) {
	v, jwtKey, caKey := spiffeVerifier(t)
	ctx := context.Background()

	tok := sign(t, jwtKey, nil, svidClaims())
	id, err := v.Authenticate(ctx, tok)
	if err != nil {
		t.Fatalf("Authenticate(JWT-SVID without iss) = %v, want ok", err)
	}
	// Iss is the trust domain id: what the session id of a token without
	// jti hashes with sub and iat, and what Policy.Trusts compares.
	want := &broker.Identity{IssuerName: "spire-prod", Iss: "spiffe://example.org", Sub: "spiffe://example.org/ns/payments/sa/api",
		Audience: []string{"keytrail"}, IssuedAt: t0.Add(-10 * time.Second), Expiry: t0.Add(5 * time.Minute),
		TokenDigest: wantTokenDigest(t, tok)}
	if diff := cmp.Diff(want, id, cmpopts.IgnoreFields(broker.Identity{}, "Claims")); diff != "" {
		t.Errorf("Authenticate() identity (-want +got):\n%s", diff)
	}
	// Again, from the verified-token cache: the same answer, no signature
	// check.
	checks := v.SignatureChecks()
	id2, err := v.Authenticate(ctx, tok)
	if err != nil || id2.Iss != "spiffe://example.org" || id2.IssuerName != "spire-prod" {
		t.Errorf("Authenticate(again) = %+v, %v", id2, err)
	}
	if got := v.SignatureChecks(); got != checks {
		t.Errorf("signature checks = %d after a cache hit, want %d", got, checks)
	}
	// With iss set to the trust domain id it is the same issuer.
	if id, err := v.Authenticate(ctx, sign(t, jwtKey, nil, svidClaims(set("iss", "spiffe://example.org")))); err != nil || id.IssuerName != "spire-prod" {
		t.Errorf("Authenticate(iss = trust domain id) = %v, %v; want spire-prod", id, err)
	}

	tests := []struct {
		name   string
		key    *authntest.Key
		claims jwt.MapClaims
		reason string
	}{
		{"sub-other-trust-domain", jwtKey, svidClaims(set("sub", "spiffe://example.com/ns/payments/sa/api")), "untrusted_issuer"},
		{"sub-trust-domain-suffix", jwtKey, svidClaims(set("sub", "spiffe://prod.example.org/api")), "untrusted_issuer"},
		{"sub-not-spiffe", jwtKey, svidClaims(set("sub", testSub)), "missing_issuer"},
		{"sub-missing", jwtKey, svidClaims(del("sub")), "missing_issuer"},
		{"sub-trust-domain-id", jwtKey, svidClaims(set("sub", "spiffe://example.org")), "missing_issuer"},
		{"sub-upper-case-trust-domain", jwtKey, svidClaims(set("sub", "spiffe://Example.org/api")), "missing_issuer"},
		{"sub-port", jwtKey, svidClaims(set("sub", "spiffe://example.org:443/api")), "missing_issuer"},
		{"sub-userinfo", jwtKey, svidClaims(set("sub", "spiffe://u@example.org/api")), "missing_issuer"},
		{"sub-query", jwtKey, svidClaims(set("sub", "spiffe://example.org/api?x=1")), "missing_issuer"},
		{"sub-fragment", jwtKey, svidClaims(set("sub", "spiffe://example.org/api#x")), "missing_issuer"},
		{"sub-dot-segment", jwtKey, svidClaims(set("sub", "spiffe://example.org/ns/../api")), "missing_issuer"},
		{"sub-empty-segment", jwtKey, svidClaims(set("sub", "spiffe://example.org//api")), "missing_issuer"},
		{"sub-trailing-slash", jwtKey, svidClaims(set("sub", "spiffe://example.org/api/")), "missing_issuer"},
		{"sub-not-string", jwtKey, svidClaims(set("sub", []any{"spiffe://example.org/api"})), "missing_issuer"},
		// Odd encodings of sub route nowhere: the SPIFFE ID is parsed
		// strictly, never decoded or folded.
		{"sub-percent-escape-path", jwtKey, svidClaims(set("sub", "spiffe://example.org/%61pi")), "missing_issuer"},
		{"sub-percent-escape-trust-domain", jwtKey, svidClaims(set("sub", "spiffe://example%2Eorg/api")), "missing_issuer"},
		{"sub-upper-case-scheme", jwtKey, svidClaims(set("sub", "SPIFFE://example.org/api")), "missing_issuer"},
		{"sub-empty-trust-domain", jwtKey, svidClaims(set("sub", "spiffe:///api")), "missing_issuer"},
		{"sub-homoglyph-trust-domain", jwtKey, svidClaims(set("sub", "spiffe://ex\u0430mple.org/api")), "missing_issuer"},
		{"sub-nul", jwtKey, svidClaims(set("sub", "spiffe://example.org\x00/api")), "missing_issuer"},
		{"sub-nul-in-path", jwtKey, svidClaims(set("sub", "spiffe://example.org/api\x00")), "missing_issuer"},
		// A trailing dot makes another trust domain name, one nobody claims.
		{"sub-trailing-dot-trust-domain", jwtKey, svidClaims(set("sub", "spiffe://example.org./api")), "untrusted_issuer"},
		{"iss-trust-domain-sub-trailing-dot", jwtKey, svidClaims(set("iss", "spiffe://example.org"), set("sub", "spiffe://example.org./api")), "untrusted_issuer"},
		// An iss that is not a string is present: never "without iss",
		// never routed by sub.
		{"iss-array-of-trust-domain", jwtKey, svidClaims(set("iss", []any{"spiffe://example.org"})), "untrusted_issuer"},
		{"iss-object", jwtKey, svidClaims(set("iss", map[string]any{"spiffe://example.org": true})), "untrusted_issuer"},
		{"iss-number", jwtKey, svidClaims(set("iss", 1)), "untrusted_issuer"},
		{"iss-false", jwtKey, svidClaims(set("iss", false)), "untrusted_issuer"},
		{"iss-null", jwtKey, svidClaims(set("iss", nil)), "missing_issuer"},
		{"iss-empty", jwtKey, svidClaims(set("iss", "")), "missing_issuer"},
		// With iss the trust domain id, sub must be in that trust domain too.
		{"iss-trust-domain-sub-other", jwtKey, svidClaims(set("iss", "spiffe://example.org"), set("sub", "spiffe://example.com/api")), "untrusted_issuer"},
		{"iss-trust-domain-sub-not-spiffe", jwtKey, svidClaims(set("iss", "spiffe://example.org"), set("sub", testSub)), "untrusted_issuer"},
		// iss present is always compared exactly.
		{"iss-trust-domain-with-slash", jwtKey, svidClaims(set("iss", "spiffe://example.org/")), "untrusted_issuer"},
		// Every other check as for any token.
		{"aud-other", jwtKey, svidClaims(set("aud", "spire-server")), "bad_audience"},
		{"aud-missing", jwtKey, svidClaims(del("aud")), "bad_audience"},
		{"expired", jwtKey, svidClaims(set("exp", t0.Add(-time.Minute).Unix())), "token_expired"},
		{"exp-missing", jwtKey, svidClaims(del("exp")), "missing_exp"},
		{"lifetime-too-long", jwtKey, svidClaims(set("exp", t0.Add(2*time.Hour).Unix())), "lifetime_too_long"},
		{"signed-by-x509-svid-key", caKey, svidClaims(), "unknown_key"},
		{"signed-by-unknown-key", newKey(t, "ES256"), svidClaims(), "unknown_key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tok := sign(t, tc.key, nil, tc.claims)
			_, err := v.Authenticate(ctx, tok)
			checkRejection(t, err, tok, tc.reason)
		})
	}
	t.Run("alg-not-allowed", func(t *testing.T) {
		tok := sign(t, newKey(t, "ES384"), nil, svidClaims())
		_, err := v.Authenticate(ctx, tok)
		checkRejection(t, err, tok, "unsupported_alg")
	})
}

// TestSPIFFEIssuerValidatedByNew: New, for direct Options users, takes an
// issuer of scheme spiffe only as a trust domain id, and one issuer per
// trust domain.
func TestSPIFFEIssuerValidatedByNew(t *testing.T) {
	is := func(name, iss string) policies.Issuer {
		return policies.Issuer{Name: name, Issuer: iss, JWKSURL: "https://spire.example.org/bundle", Audiences: []string{"keytrail"},
			Algorithms: []string{"ES256"}, MaxTokenLifetime: policies.Duration(time.Hour)}
	}
	for _, tc := range []struct {
		name    string
		issuers []policies.Issuer
		want    string
	}{
		{"with-path", []policies.Issuer{is("a", "spiffe://example.org/api")}, "issuers[0].issuer: a SPIFFE issuer is a trust domain id"},
		{"upper-case", []policies.Issuer{is("a", "spiffe://EXAMPLE.org")}, "issuers[0].issuer: not a SPIFFE ID"},
		{"scheme-case", []policies.Issuer{is("a", "Spiffe://example.org")}, "issuers[0].issuer: not a SPIFFE ID"},
		{"same-trust-domain", []policies.Issuer{is("a", "spiffe://example.org"), is("b", "spiffe://example.org")}, `issuers[1].issuer: duplicate "spiffe://example.org"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := authn.New(context.Background(), authn.Options{Issuers: tc.issuers})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New() = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestSPIFFESequence: a bundle whose spiffe_sequence is lower than the
// held bundle's is a stale copy (the SPIFFE Trust Domain and Bundle spec,
// §4.1.1: the sequence increases with every change): it is not taken, and
// the held keys serve on as when a fetch fails. An equal or higher
// sequence, or a bundle without one, is taken.
func TestSPIFFESequence(t *testing.T) {
	a, b := newKey(t, "ES256"), newKey(t, "ES256")
	bundle := func(seq any, ks ...*authntest.Key) []byte {
		keys := make([]jwkset.JWKMarshal, len(ks))
		for i, k := range ks {
			keys[i] = spiffeJWK(t, k, "jwt-svid", k.KID)
		}
		doc := map[string]any{"keys": keys}
		if seq != nil {
			doc["spiffe_sequence"] = seq
		}
		body, err := json.Marshal(doc)
		if err != nil {
			t.Fatal(err)
		}
		return body
	}
	var body atomic.Pointer[[]byte]
	serve := func(b []byte) { body.Store(&b) }
	var fetches atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fetches.Add(1)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(*body.Load())
	}))
	t.Cleanup(srv.Close)
	clock := &fakeClock{now: t0}
	var fetchErrs []error
	v := verifierFor(t, "spiffe://example.org", srv.URL, func(o *authn.Options) {
		o.Now = clock.Now
		o.OnFetch = func(_ string, err error) { fetchErrs = append(fetchErrs, err) }
	})
	ctx := context.Background()
	tokA := sign(t, a, nil, svidClaims(set("exp", t0.Add(50*time.Minute).Unix())))
	tokB := sign(t, b, nil, svidClaims(set("exp", t0.Add(50*time.Minute).Unix())))

	serve(bundle(7, a))
	if _, err := v.Authenticate(ctx, tokA); err != nil {
		t.Fatalf("Authenticate(key of bundle 7) = %v, want ok", err)
	}
	// Past CacheTTL the endpoint answers an older copy of the bundle: it
	// shares key a with bundle 7 and still holds b, withdrawn since. (One
	// that shares no key is a new bundle: TestSPIFFESequenceWentBack.)
	serve(bundle(6, a, b))
	clock.Advance(authn.DefaultCacheTTL + time.Second)
	if _, err := v.Authenticate(ctx, tokA); err != nil {
		t.Fatalf("Authenticate(key of bundle 7, stale, refetch started) = %v, want ok", err)
	}
	v.WaitFetches()
	if n := fetches.Load(); n != 2 || len(fetchErrs) != 2 || fetchErrs[1] == nil {
		t.Errorf("fetches = %d, errors %v; want the second fetch (bundle 6) to count as failed", n, fetchErrs)
	}
	if _, err := v.Authenticate(ctx, tokA); err != nil {
		t.Errorf("Authenticate(key of bundle 7 after bundle 6 was served) = %v, want ok: the held keys stay", err)
	}
	if _, err := v.Authenticate(ctx, tokB); err == nil {
		t.Errorf("Authenticate(key of bundle 6) = ok, want refused: bundle 6 was not taken")
	}

	// A newer bundle is taken.
	serve(bundle(8, b))
	clock.Advance(authn.DefaultRefreshInterval)
	if _, err := v.Authenticate(ctx, tokB); err != nil {
		t.Fatalf("Authenticate(key of bundle 8) = %v, want ok", err)
	}
	_, err := v.Authenticate(ctx, tokA)
	checkRejection(t, err, tokA, "unknown_key")

	// So is an equal one, and one without spiffe_sequence (nothing to
	// compare).
	for _, tc := range []struct {
		seq any
		key *authntest.Key
		tok string
	}{{8, a, tokA}, {nil, b, tokB}} {
		serve(bundle(tc.seq, tc.key))
		clock.Advance(authn.DefaultRefreshInterval)
		if _, err := v.Authenticate(ctx, tc.tok); err != nil {
			t.Fatalf("Authenticate(key of a bundle of sequence %v) = %v, want ok", tc.seq, err)
		}
	}
	if n := fetches.Load(); n != 5 {
		t.Errorf("fetches = %d, want 5", n)
	}
}

// TestSPIFFESequenceWentBack: a bundle whose spiffe_sequence is lower than
// the held one's is not always a stale copy. A SPIRE server reinstalled
// (its datastore new) serves a bundle of new keys whose sequence restarted;
// a datastore restored from a backup, an older sequence. Refused for ever,
// every token of the trust domain would be refused until the broker
// restarted (a policy reload keeps the held set). Such a bundle is taken
// when it shares no key with the held one (not an older copy of it: a new
// bundle), or once the held keys are past their stale window (they serve
// no token any more).
func TestSPIFFESequenceWentBack(t *testing.T) {
	a, b := newKey(t, "ES256"), newKey(t, "ES256")
	bundle := func(seq int, keys ...*authntest.Key) []byte {
		jwks := make([]jwkset.JWKMarshal, len(keys))
		for i, k := range keys {
			jwks[i] = spiffeJWK(t, k, "jwt-svid", k.KID)
		}
		body, err := json.Marshal(map[string]any{"spiffe_sequence": seq, "keys": jwks})
		if err != nil {
			t.Fatal(err)
		}
		return body
	}
	setup := func(t *testing.T) (*authn.Verifier, *fakeClock, func([]byte)) {
		var body atomic.Pointer[[]byte]
		serve := func(b []byte) { body.Store(&b) }
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write(*body.Load())
		}))
		t.Cleanup(srv.Close)
		clock := &fakeClock{now: t0}
		v := verifierFor(t, "spiffe://example.org", srv.URL, func(o *authn.Options) { o.Now = clock.Now })
		serve(bundle(57, a))
		if _, err := v.Authenticate(context.Background(), sign(t, a, nil, svidClaims(set("exp", t0.Add(50*time.Minute).Unix())))); err != nil {
			t.Fatalf("Authenticate(key of bundle 57) = %v, want ok", err)
		}
		return v, clock, serve
	}
	ctx := context.Background()
	tokB := sign(t, b, nil, svidClaims(set("exp", t0.Add(50*time.Minute).Unix())))

	t.Run("reinstalled-server-new-keys", func(t *testing.T) {
		v, clock, serve := setup(t)
		serve(bundle(1, b))
		clock.Advance(authn.DefaultRefreshInterval)
		if _, err := v.Authenticate(ctx, tokB); err != nil {
			t.Errorf("Authenticate(key of the reinstalled server's bundle 1, no key shared with bundle 57) = %v, want ok", err)
		}
		clock.Advance(authn.DefaultCacheTTL + authn.DefaultStaleFor + time.Second)
		if _, err := v.Authenticate(ctx, tokB); err != nil {
			t.Errorf("Authenticate(key of bundle 1, past the stale window of bundle 57) = %v, want ok", err)
		}
	})
	t.Run("older-copy-past-stale-window", func(t *testing.T) {
		v, clock, serve := setup(t)
		serve(bundle(3, a, b)) // shares a with the held bundle: an older copy
		clock.Advance(authn.DefaultRefreshInterval)
		if _, err := v.Authenticate(ctx, tokB); err == nil {
			t.Errorf("Authenticate(key of bundle 3 while bundle 57 serves) = ok, want refused")
		}
		clock.Advance(authn.DefaultCacheTTL + authn.DefaultStaleFor + time.Second)
		if _, err := v.Authenticate(ctx, tokB); err != nil {
			t.Errorf("Authenticate(key of bundle 3, bundle 57 past its stale window) = %v, want ok", err)
		}
	})
}

// TestSPIFFESequenceNotAnInteger: a spiffe_sequence that is not a
// non-negative integer is ignored, as documented: the bundle is taken as
// one without a sequence, whatever the held bundle's. JSON null was read as
// sequence 0, so a bundle sharing a key with the held one was refused.
func TestSPIFFESequenceNotAnInteger(t *testing.T) {
	a, b := newKey(t, "ES256"), newKey(t, "ES256")
	for _, seq := range []string{"null", "-1", "8.5", `"9"`, "18446744073709551616"} {
		t.Run(seq, func(t *testing.T) {
			var body atomic.Pointer[[]byte]
			serve := func(seq string, keys ...*authntest.Key) {
				jwks := make([]jwkset.JWKMarshal, len(keys))
				for i, k := range keys {
					jwks[i] = spiffeJWK(t, k, "jwt-svid", k.KID)
				}
				kb, err := json.Marshal(jwks)
				if err != nil {
					t.Fatal(err)
				}
				b := []byte(`{"spiffe_sequence":` + seq + `,"keys":` + string(kb) + `}`)
				body.Store(&b)
			}
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				_, _ = w.Write(*body.Load())
			}))
			t.Cleanup(srv.Close)
			clock := &fakeClock{now: t0}
			v := verifierFor(t, "spiffe://example.org", srv.URL, func(o *authn.Options) { o.Now = clock.Now })
			ctx := context.Background()
			serve("7", a)
			if _, err := v.Authenticate(ctx, sign(t, a, nil, svidClaims())); err != nil {
				t.Fatalf("Authenticate(key of bundle 7) = %v, want ok", err)
			}
			serve(seq, a, b)
			clock.Advance(authn.DefaultRefreshInterval)
			if _, err := v.Authenticate(ctx, sign(t, b, nil, svidClaims())); err != nil {
				t.Errorf("Authenticate(key of a bundle of spiffe_sequence %s) = %v, want ok: the sequence is ignored", seq, err)
			}
		})
	}
}

// TestSPIFFEIssuerConfusion: routing by the sub's trust domain never hands
// a token to the keys of another issuer. A token without iss goes to the
// trust domain's issuer and only its bundle verifies it; a token with iss
// goes to that iss's issuer whatever its sub, even when both issuers
// publish the same key (a SPIRE OIDC discovery provider beside the bundle
// endpoint), and the identity names the issuer routed to.
func TestSPIFFEIssuerConfusion(t *testing.T) {
	svidKey := newKey(t, "ES256")
	bundle := staticServer(t, spiffeBundle(t, nil, spiffeJWK(t, svidKey, "jwt-svid", svidKey.KID)))
	other := newIssuer(t, "ES256")
	clock := &fakeClock{now: t0}
	v := verifierFor(t, "spiffe://example.org", bundle.URL, func(o *authn.Options) {
		o.Now = clock.Now
		o.Issuers[0].Name = "spire-prod"
		o.Issuers = append(o.Issuers, policies.Issuer{
			Name: "other", Issuer: other.URL, JWKSURL: other.URL + authntest.JWKSPath, Audiences: []string{"keytrail"},
			Algorithms: []string{"ES256"}, MaxTokenLifetime: policies.Duration(time.Hour),
		})
	})
	ctx := context.Background()

	// other's key, no iss, sub in example.org: example.org's bundle lacks it.
	tok := sign(t, other.Key(), nil, svidClaims())
	_, err := v.Authenticate(ctx, tok)
	checkRejection(t, err, tok, "unknown_key")
	// The trust domain's key, iss other's: other's JWKS lacks it.
	tok = sign(t, svidKey, nil, svidClaims(set("iss", other.URL)))
	_, err = v.Authenticate(ctx, tok)
	checkRejection(t, err, tok, "unknown_key")

	// Both publish the key: each token is its own iss's (or trust domain's).
	other.AddKey(svidKey)
	clock.Advance(authn.DefaultRefreshInterval)
	for _, tc := range []struct {
		name, wantIssuer, wantIss string
		claims                    jwt.MapClaims
	}{
		{"without-iss", "spire-prod", "spiffe://example.org", svidClaims()},
		{"iss-other", "other", other.URL, svidClaims(set("iss", other.URL))},
		{"iss-trust-domain", "spire-prod", "spiffe://example.org", svidClaims(set("iss", "spiffe://example.org"))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := sign(t, svidKey, nil, tc.claims)
			for range 2 { // verified, then from the verified-token cache
				id, err := v.Authenticate(ctx, tok)
				if err != nil || id.IssuerName != tc.wantIssuer || id.Iss != tc.wantIss {
					t.Fatalf("Authenticate() = %+v, %v; want issuer %s, iss %s", id, err, tc.wantIssuer, tc.wantIss)
				}
			}
		})
	}
}

// TestSPIFFEIDLengthLimit: a sub over the SPIFFE ID spec's 2048 bytes is
// no SPIFFE ID: a token without iss is not routed by it (missing_issuer),
// one whose iss is the trust domain id is not the trust domain's
// (untrusted_issuer), and the logged cause says why. One of 2048 bytes is
// taken.
func TestSPIFFEIDLengthLimit(t *testing.T) {
	v, jwtKey, _ := spiffeVerifier(t)
	ctx := context.Background()
	const prefix = "spiffe://example.org/ns/payments/sa/"
	longest := prefix + strings.Repeat("a", 2048-len(prefix))
	for _, tc := range []struct {
		name   string
		claims jwt.MapClaims
	}{
		{"without-iss", svidClaims(set("sub", longest))},
		{"iss-trust-domain", svidClaims(set("iss", "spiffe://example.org"), set("sub", longest))},
	} {
		if id, err := v.Authenticate(ctx, sign(t, jwtKey, nil, tc.claims)); err != nil || id.Sub != longest {
			t.Errorf("%s: Authenticate(sub of 2048 bytes) = %v, %v; want ok", tc.name, id, err)
		}
	}
	tooLong := longest + "b"
	for _, tc := range []struct {
		name   string
		claims jwt.MapClaims
		reason string
	}{
		{"without-iss", svidClaims(set("sub", tooLong)), "missing_issuer"},
		{"iss-trust-domain", svidClaims(set("iss", "spiffe://example.org"), set("sub", tooLong)), "untrusted_issuer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tok := sign(t, jwtKey, nil, tc.claims)
			_, err := v.Authenticate(ctx, tok)
			checkRejection(t, err, tok, tc.reason)
			if err == nil || !strings.Contains(err.Error(), "longer than 2048 bytes") {
				t.Errorf("Authenticate(sub of 2049 bytes) = %v, want a cause naming the 2048-byte limit", err)
			}
		})
	}
}

// TestSPIFFETokenDigest: two JWT-SVIDs of one SPIFFE ID with equal claims
// (no jti; issued in one second) are told apart by TokenDigest, what their
// session ids hash; one token, verified or from the cache, and its ES256
// signature twin (r, n-s) have one.
func TestSPIFFETokenDigest(t *testing.T) {
	v, jwtKey, _ := spiffeVerifier(t)
	ctx := context.Background()
	digest := func(name, tok string) [32]byte {
		t.Helper()
		id, err := v.Authenticate(ctx, tok)
		if err != nil {
			t.Fatalf("%s: Authenticate() = %v", name, err)
		}
		if id.TokenDigest == ([32]byte{}) {
			t.Fatalf("%s: TokenDigest is zero", name)
		}
		return id.TokenDigest
	}
	tok := sign(t, jwtKey, nil, svidClaims())
	first := digest("token", tok)
	if again := digest("token from the cache", tok); again != first {
		t.Error("one token, verified then from the cache: two digests")
	}
	i := strings.LastIndexByte(tok, '.')
	sig, err := base64.RawURLEncoding.DecodeString(tok[i+1:])
	if err != nil || len(sig) != 64 {
		t.Fatalf("not an ES256 signature: %v", err)
	}
	s := new(big.Int).SetBytes(sig[32:])
	s.Sub(elliptic.P256().Params().N, s)
	s.FillBytes(sig[32:])
	if twin := digest("signature twin", tok[:i+1]+base64.RawURLEncoding.EncodeToString(sig)); twin != first {
		t.Error("the token's signature twin (r, n-s) has another digest")
	}
	other := sign(t, jwtKey, nil, svidClaims())
	if other == tok {
		t.Fatal("two ES256 signatures of one payload are equal")
	}
	if digest("token of equal claims", other) == first {
		t.Error("two tokens of equal claims have one digest")
	}
}
