package authn_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"math/big"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"

	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/broker/authn/authntest"
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
