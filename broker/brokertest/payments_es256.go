package brokertest

import (
	"net/http/httptest"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keytrail/keytrail/broker/authn/authntest"
)

// PaymentsES256 is the payments workload of PaymentsPolicy with a real
// issuer, for benchmarks of a token verified in full: an ES256 test issuer
// served on a loopback HTTP server (closed at the end of tb), an identity
// token of the workload it signed (valid for an hour), and the text of
// PaymentsPolicy naming that issuer and its JWKS (max_token_lifetime 2h).
func PaymentsES256(tb TB) (iss *authntest.Issuer, token, policy string) {
	tb.Helper()
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		tb.Fatal(err)
	}
	srv := httptest.NewServer(iss.Handler())
	tb.Cleanup(srv.Close)
	iss.URL = srv.URL
	now := time.Now()
	token, err = iss.Sign(jwt.MapClaims{
		"iss": iss.URL, "sub": "system:serviceaccount:payments:api", "aud": "keytrail",
		"iat": now.Unix(), "exp": now.Add(time.Hour).Unix(), "jti": "bench-1",
		"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}},
	})
	if err != nil {
		tb.Fatal(err)
	}
	policy = strings.NewReplacer(
		"issuer: https://k8s.example", "issuer: "+iss.URL,
		"jwks_url: https://k8s.example/jwks", "jwks_url: "+iss.URL+authntest.JWKSPath,
		"audiences: [keytrail]", "audiences: [keytrail]\n    max_token_lifetime: 2h",
	).Replace(PaymentsPolicy)
	return iss, token, policy
}
