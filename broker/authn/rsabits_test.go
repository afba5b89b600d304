package authn_test

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/broker/authn/authntest"
)

// TestJWKSWeakRSAKeysSkipped: an RSA key under 2048 bits in an issuer's
// JWKS is never used (Go itself verifies with keys from 1024 bits): a
// token it signed is refused as signed by an unknown key when the set has
// another usable key, and the issuer is unavailable when it has none.
// Coverage of minRSABits, which no test exercised.
func TestJWKSWeakRSAKeysSkipped(t *testing.T) {
	iss := newIssuer(t, "RS256")
	rsaKey := func(kid string, bits int) *authntest.Key {
		t.Helper()
		rk, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			t.Fatal(err)
		}
		return &authntest.Key{KID: kid, Alg: "RS256", Signer: rk}
	}
	weak, weak2047, strong := rsaKey("weak", 1024), rsaKey("weak-2047", 2047), rsaKey("strong", 2048)
	rs256 := func(o *authn.Options) { o.Issuers[0].Algorithms = []string{"RS256"} }

	mixed, err := authntest.MarshalJWKS(weak, weak2047, strong)
	if err != nil {
		t.Fatal(err)
	}
	v := verifierFor(t, iss.URL, staticServer(t, mixed).URL, rs256)
	ctx := context.Background()
	if _, err := v.Authenticate(ctx, sign(t, strong, nil, claims(iss))); err != nil {
		t.Errorf("token of the 2048-bit key: Authenticate() = %v, want ok", err)
	}
	for _, k := range []*authntest.Key{weak, weak2047} {
		tok := sign(t, k, nil, claims(iss))
		_, err := v.Authenticate(ctx, tok)
		checkRejection(t, err, tok, "unknown_key")
	}

	only, err := authntest.MarshalJWKS(weak)
	if err != nil {
		t.Fatal(err)
	}
	v = verifierFor(t, iss.URL, staticServer(t, only).URL, rs256)
	if _, err := v.Authenticate(ctx, sign(t, weak, nil, claims(iss))); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("JWKS of a 1024-bit key only: Authenticate() = %v, want ErrUnavailable (no usable key)", err)
	}
}
