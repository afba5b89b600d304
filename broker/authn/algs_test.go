package authn_test

import (
	"context"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/policies"
)

// TestSupportedAlgorithmsVerifiable: the algorithms an issuer may list are
// policies' one list (policies.SupportsAlgorithm, which New and the check
// of a token's alg header read); each has a jwt/v5 signing method (Ed25519
// is the one authn registers) and New accepts an issuer listing it.
func TestSupportedAlgorithmsVerifiable(t *testing.T) {
	algs := policies.SupportedAlgorithms()
	if len(algs) == 0 {
		t.Fatal("policies.SupportedAlgorithms() is empty")
	}
	for _, a := range algs {
		if !policies.SupportsAlgorithm(a) {
			t.Errorf("policies.SupportsAlgorithm(%q) = false for an entry of SupportedAlgorithms", a)
		}
		if m := jwt.GetSigningMethod(a); m == nil || m.Alg() != a {
			t.Errorf("jwt.GetSigningMethod(%q) = %v, want a method of that name", a, m)
		}
		is := policies.Issuer{
			Name: "i", Issuer: "https://i.example", JWKSURL: "https://i.example/jwks", Audiences: []string{"k"},
			Algorithms: []string{a}, MaxTokenLifetime: policies.Duration(time.Hour),
		}
		if _, err := authn.New(context.Background(), authn.Options{Issuers: []policies.Issuer{is}}); err != nil {
			t.Errorf("New(algorithms [%s]) = %v, want ok", a, err)
		}
	}
	for _, a := range []string{"none", "HS256", "rs256", "ES256K", "Ed448", ""} {
		if policies.SupportsAlgorithm(a) {
			t.Errorf("policies.SupportsAlgorithm(%q) = true", a)
		}
	}
}
