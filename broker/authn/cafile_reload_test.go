package authn_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log"
	"math/big"
	"net/http/httptest"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/broker/authn/authntest"
)

// otherCAPEM is a self-signed CA certificate that did not sign the
// httptest server's certificate, as PEM.
func otherCAPEM(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "rotated CA"},
		NotBefore: t0.Add(-time.Hour), NotAfter: t0.Add(365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestPreviousDropsKeysWhenCABundleChanged: a reload (Options.Previous)
// keeps an issuer's fetched keys only if its ca_file is unchanged in
// content, not only in path. With the bundle at the same path rotated, the
// keys fetched over TLS the old bundle verified are dropped and the JWKS is
// fetched again at once under the new bundle: one that no longer trusts the
// server makes the issuer's tokens unavailable, one that still does serves
// them from a fresh fetch. Before, the old keys were kept (and served for
// CacheTTL plus StaleFor) whatever the new bundle held.
func TestPreviousDropsKeysWhenCABundleChanged(t *testing.T) {
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(iss.Handler())
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the rotated-away case logs a handshake error
	srv.StartTLS()
	t.Cleanup(srv.Close)
	iss.URL = srv.URL
	serverCA := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	otherCA := otherCAPEM(t)
	const caPath = "/etc/keytrail/jwks-ca.pem" // read through ReadCAFile only
	opts := func(bundle []byte, prev *authn.Verifier) func(*authn.Options) {
		return func(o *authn.Options) {
			o.Issuers[0].CAFile = caPath
			o.ReadCAFile = func(string) ([]byte, error) { return slices.Clone(bundle), nil }
			o.Previous = prev
		}
	}
	ctx := context.Background()
	tok := sign(t, iss.Key(), nil, claims(iss))

	v1 := verifierFor(t, iss.URL, srv.URL+authntest.JWKSPath, opts(serverCA, nil))
	if _, err := v1.Authenticate(ctx, tok); err != nil {
		t.Fatalf("Authenticate() before the reload = %v", err)
	}
	if got := iss.JWKSFetches(); got != 1 {
		t.Fatalf("fetches = %d, want 1", got)
	}

	// Same path, same bytes: the keys are kept, no fetch.
	same := verifierFor(t, iss.URL, srv.URL+authntest.JWKSPath, opts(serverCA, v1))
	if _, err := same.Authenticate(ctx, tok); err != nil {
		t.Errorf("unchanged ca_file: Authenticate() = %v, want the kept keys", err)
	}
	if got := iss.JWKSFetches(); got != 1 {
		t.Errorf("unchanged ca_file: fetches = %d, want 1 (keys kept)", got)
	}

	// Same path, a bundle that no longer trusts the server.
	away := verifierFor(t, iss.URL, srv.URL+authntest.JWKSPath, opts(otherCA, v1))
	if _, err := away.Authenticate(ctx, tok); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("ca_file rotated to a CA that does not sign the JWKS server: Authenticate() = %v, want ErrUnavailable (old keys not kept)", err)
	}

	// Same path, a bundle that still trusts the server: fetched again.
	fetches := iss.JWKSFetches()
	both := append(slices.Clone(otherCA), serverCA...)
	rotated := verifierFor(t, iss.URL, srv.URL+authntest.JWKSPath, opts(both, v1))
	if _, err := rotated.Authenticate(ctx, tok); err != nil {
		t.Errorf("ca_file rotated, still trusting the server: Authenticate() = %v, want ok", err)
	}
	if got := iss.JWKSFetches(); got != fetches+1 {
		t.Errorf("ca_file rotated: fetches = %d, want %d (fetched again under the new bundle)", got, fetches+1)
	}
}
