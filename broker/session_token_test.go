package broker_test

import (
	"net/http/httptest"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keytrail/keytrail/broker/authn/authntest"
)

// TestSessionOfTokenWithoutJTI: a token without jti (a SPIRE JWT-SVID) and
// without a session claim is its own session. Two tokens of one sub issued
// in the same second (two replicas of one workload, one SPIFFE ID) used to
// share one, their iss+sub+iat being equal: now each token is its own
// session, while one token presented again, or its ES256 signature twin
// (r, n-s), which verifies as well and its holder can compute, stays the
// token's session.
func TestSessionOfTokenWithoutJTI(t *testing.T) {
	iss, exchange, claims := gatewaySessions(t, "ES256")
	replica1 := sign(t, iss, claims)
	replica2 := sign(t, iss, claims) // the same claims; ECDSA signs with a fresh nonce
	if replica1 == replica2 {
		t.Fatal("two ES256 signatures of one payload are equal")
	}
	session := func(name, tok string) string {
		t.Helper()
		is, err := exchange(tok, "g")
		if err != nil {
			t.Fatalf("%s: Exchange = %v", name, err)
		}
		return is.SessionID
	}
	first := session("replica 1", replica1)
	if again := session("replica 1 again", replica1); again != first {
		t.Errorf("one token presented twice: sessions %s and %s, want one", first, again)
	}
	if twin := session("replica 1's signature twin", signatureTwin(t, replica1)); twin != first {
		t.Errorf("the token's signature twin (r, n-s): session %s, want the token's %s", twin, first)
	}
	if second := session("replica 2", replica2); second == first {
		t.Errorf("two tokens of one sub, same iat, no jti: both in session %s, want one session each", first)
	}
}

// TestSessionOfDeterministicSignatures: what README "Sessions" says of
// tokens without jti of equal claims. RS256 signatures are deterministic:
// two such tokens (two replicas' JWT-SVIDs from a SPIRE server with an RSA
// jwt_key_type, issued in one second) are the same bytes, one token, one
// session. PS256 signatures are randomized, as ES256's are: two tokens, two
// sessions.
func TestSessionOfDeterministicSignatures(t *testing.T) {
	for _, tc := range []struct {
		alg      string
		wantSame bool
	}{{"RS256", true}, {"PS256", false}} {
		t.Run(tc.alg, func(t *testing.T) {
			iss, exchange, claims := gatewaySessions(t, tc.alg)
			replica1, replica2 := sign(t, iss, claims), sign(t, iss, claims)
			if (replica1 == replica2) != tc.wantSame {
				t.Fatalf("two %s signatures of one payload equal: %v, want %v", tc.alg, replica1 == replica2, tc.wantSame)
			}
			a, err := exchange(replica1, "g")
			if err != nil {
				t.Fatal(err)
			}
			b, err := exchange(replica2, "g")
			if err != nil {
				t.Fatal(err)
			}
			if (a.SessionID == b.SessionID) != tc.wantSame {
				t.Errorf("%s tokens of equal claims: sessions %s and %s; want one session: %v", tc.alg, a.SessionID, b.SessionID, tc.wantSame)
			}
		})
	}
}

// gatewaySessions is an issuer signing with alg, served for t, a Service
// whose policy trusts it (workload gateway, grant g, no session claim) and
// the claims of a token of gateway's SPIFFE ID issued now, without jti.
func gatewaySessions(t *testing.T, alg string) (*authntest.Issuer, signedExchange, jwt.MapClaims) {
	t.Helper()
	iss, err := authntest.NewIssuer(alg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(iss.Handler())
	t.Cleanup(srv.Close)
	iss.URL = srv.URL
	exchange := signedService(t, "session.yaml", `version: 1
issuers:
  - {name: idp, issuer: `+iss.URL+`, jwks_url: `+iss.URL+authntest.JWKSPath+`, audiences: [keytrail], algorithms: [`+alg+`]}
workloads:
  - {name: gateway, owner: team-mesh, match: {issuer: idp, subject: "spiffe://example.org/gateway"}, grants: [g]}
grants:
  - {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}
`)
	now := time.Now()
	claims := jwt.MapClaims{"iss": iss.URL, "sub": "spiffe://example.org/gateway", "aud": "keytrail",
		"iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix()}
	return iss, exchange, claims
}
