package httpapi_test

import (
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/policies"
)

// TestIntrospectAudience: an active broker JWT's introspection answers
// aud, the audience it was signed for (RFC 7662 §2.2), as its issuance
// records it; a credential without an audience (a Vault token) answers
// none. (Introspection never answered aud.)
func TestIntrospectAudience(t *testing.T) {
	pol, err := policies.Parse("p.yaml", []byte(`
version: 1
issuers:
  - {name: ci, issuer: https://ci.example, jwks_url: https://ci.example/jwks, audiences: [keytrail], algorithms: [ES256]}
workloads:
  - name: deployer
    owner: team-platform
    match: {issuer: ci, subject: repo:acme/deploy}
    grants: [deploy-vault, orders-jwt]
grants:
  - {name: deploy-vault, kind: vault_token, ttl: 10m, vault_token: {policies: [deploy]}}
  - {name: orders-jwt, kind: jwt, ttl: 5m, jwt: {audience: orders-api, transit_key: k}}
`))
	if err != nil {
		t.Fatal(err)
	}
	f := newIntrospectFixture(t, pol, nil, broker.KindVaultToken, broker.KindJWT)

	for _, tc := range []struct{ grant, aud string }{{"orders-jwt", "orders-api"}, {"deploy-vault", ""}} {
		resp, tok := f.post(t, "/v1/token", "application/x-www-form-urlencoded", form("audience", tc.grant).Encode())
		if resp.StatusCode != 200 {
			t.Fatalf("exchange %s = %d %v", tc.grant, resp.StatusCode, tok)
		}
		status, got := f.introspect(t, callerToken, tok["access_token"].(string))
		if status != 200 || got["active"] != true {
			t.Fatalf("introspect %s = %d %v", tc.grant, status, got)
		}
		aud, has := got["aud"]
		switch {
		case tc.aud == "" && has:
			t.Errorf("introspect of the %s credential answers aud %v, want none", tc.grant, aud)
		case tc.aud != "" && aud != tc.aud:
			t.Errorf("introspect of the %s credential: aud = %v, want %q", tc.grant, aud, tc.aud)
		}
	}
}
