package authn_test

import (
	"context"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/policies"
)

// BenchmarkAuthenticate measures one identity-token verification with the
// issuer's keys cached (the steady state of every exchange), per signing
// algorithm: "new-token" is a token seen for the first time (parsing,
// signature check and claim checks; the verified-token cache is off),
// "repeat" the same token presented again (a cache hit: key check and claim
// checks only).
func BenchmarkAuthenticate(b *testing.B) {
	for _, c := range []struct {
		alg, mode string
		cache     int
	}{
		{"ES256", "new-token", -1}, {"ES256", "repeat", 0},
		{"EdDSA", "new-token", -1}, {"EdDSA", "repeat", 0},
		{"RS256", "new-token", -1}, {"RS256", "repeat", 0},
	} {
		alg := c.alg
		b.Run(alg+"/"+c.mode, func(b *testing.B) {
			iss, err := authntest.NewIssuer(alg)
			if err != nil {
				b.Fatal(err)
			}
			srv := httptest.NewServer(iss.Handler())
			b.Cleanup(srv.Close)
			iss.URL = srv.URL
			v, err := authn.New(context.Background(), authn.Options{Issuers: []policies.Issuer{{
				Name: "bench", Issuer: iss.URL, JWKSURL: iss.URL + authntest.JWKSPath,
				Audiences: []string{"keytrail"}, Algorithms: []string{alg},
				MaxTokenLifetime: policies.Duration(2 * time.Hour),
			}}, VerifiedCacheSize: c.cache})
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now()
			tok, err := iss.Sign(jwt.MapClaims{
				"iss": iss.URL, "sub": "system:serviceaccount:payments:api", "aud": "keytrail",
				"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(), "jti": "bench-1",
				"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}},
			})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			if _, err := v.Authenticate(ctx, tok); err != nil { // fetches the JWKS
				b.Fatalf("Authenticate() = %v", err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := v.Authenticate(ctx, tok); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
