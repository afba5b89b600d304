package authn_test

import (
	"context"
	"encoding/json"
	"strings"
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

// TestAlgorithmsValidatedByNew: New, for direct Options users, refuses the
// algorithms lists a policy file may not hold, by the same rule
// (policies.CheckAlgorithms), and accepts those it may: each list below is
// tried both ways. Before, New had a check of its own that accepted an
// entry listed twice, which policy validation refuses.
func TestAlgorithmsValidatedByNew(t *testing.T) {
	for _, tt := range []struct {
		algs []string
		ok   bool
		want string // in New's error
	}{
		{algs: []string{"RS256", "ES256", "EdDSA", "Ed25519"}, ok: true},
		{algs: policies.SupportedAlgorithms(), ok: true},
		{algs: nil, want: "algorithms: required"},
		{algs: []string{}, want: "algorithms: required"},
		{algs: []string{"RS256", "none"}, want: `algorithms[1]: "none" is never allowed`},
		{algs: []string{"HS256"}, want: `algorithms[0]: "HS256" is not allowed`},
		{algs: []string{"rs256"}, want: `algorithms[0]: unsupported algorithm "rs256"`},
		{algs: []string{""}, want: "algorithms[0]: unsupported algorithm"},
		{algs: []string{"RS256", "ES256", "RS256"}, want: `algorithms[2]: "RS256" is already listed at algorithms[0]`},
		{algs: []string{"EdDSA", "Ed25519", "EdDSA"}, want: `algorithms[2]: "EdDSA" is already listed at algorithms[0]`},
		{algs: []string{"HS256", "HS256"}, want: `algorithms[1]: "HS256" is already listed at algorithms[0]`},
	} {
		is := policies.Issuer{Algorithms: tt.algs}
		newAgreesWithParse(t, "algorithms", tt.algs, is, "", tt.ok, tt.want)
	}
}

// newAgreesWithParse checks that authn.New refuses a test issuer with
// is's Algorithms and TokenTypes exactly when policies.Parse refuses the
// same list written as field in a policy file (extra: more of the
// issuer's flow mapping there), and that New's error names want.
func newAgreesWithParse(t *testing.T, field string, list []string, is policies.Issuer, extra string, ok bool, want string) {
	t.Helper()
	is.Name, is.Issuer, is.JWKSURL, is.Audiences = "i", "https://i.example", "https://i.example/jwks", []string{"k"}
	is.MaxTokenLifetime = policies.Duration(time.Hour)
	_, err := authn.New(context.Background(), authn.Options{Issuers: []policies.Issuer{is}})
	switch {
	case ok && err != nil:
		t.Errorf("New(%s %q) = %v, want ok", field, list, err)
	case !ok && (err == nil || !strings.Contains(err.Error(), want)):
		t.Errorf("New(%s %q) = %v, want an error with %q", field, list, err, want)
	}
	// The same list in a policy file: refused exactly when New refuses it.
	y, err := json.Marshal(list)
	if err != nil {
		t.Fatal(err)
	}
	_, perr := policies.Parse("t.yaml", []byte(`version: 1
issuers:
  - {name: i, issuer: "https://i.example", jwks_url: "https://i.example/jwks", audiences: [k], `+extra+field+`: `+string(y)+`}
`))
	if (perr == nil) != ok {
		t.Errorf("policies.Parse(%s %q) = %v, want ok %v as New", field, list, perr, ok)
	}
}
