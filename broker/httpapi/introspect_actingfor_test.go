package httpapi_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// TestIntrospectAnswersActingFor: the introspection of a credential
// minted with an actor token names the party its workload acts for (the
// actor token's iss and sub, as the issuance records it) as acting_for;
// one minted without answers none. It is never answered as act: RFC 8693
// §4.1's act names the acting party, which here is the workload (sub)
// itself; keytrail's recorded act is the party acted for, and a resource
// server reading act by the RFC would take the user for the actor
// (docs/SPEC-ADDITIONS.md "Delegation"). (Introspection answered neither:
// a resource server could not learn for whom the agent acted.)
func TestIntrospectAnswersActingFor(t *testing.T) {
	pol, err := policies.Parse("p.yaml", []byte(`
version: 1
issuers:
  - {name: ci, issuer: https://ci.example, jwks_url: https://ci.example/jwks, audiences: [keytrail], algorithms: [ES256]}
workloads:
  - name: deployer
    owner: team-platform
    match: {issuer: ci, subject: repo:acme/deploy}
    grants: [deploy-vault]
grants:
  - {name: deploy-vault, kind: vault_token, ttl: 10m, vault_token: {policies: [deploy]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	f := newIntrospectFixture(t, pol, brokertest.Authn{
		"user-token": {IssuerName: "sso", Iss: "https://sso.example", Sub: "user:carol", JTI: "sso-jti-1", Expiry: time.Now().Add(time.Hour),
			Claims: map[string]any{"sub": "user:carol"}}}, broker.KindVaultToken)

	for _, tc := range []struct {
		name string
		form []string
		want any // acting_for; nil: absent
	}{
		{"delegated", []string{"actor_token", "user-token", "actor_token_type", broker.TokenTypeJWT},
			map[string]any{"iss": "https://sso.example", "sub": "user:carol"}},
		{"alone", nil, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp, tok := f.post(t, "/v1/token", "application/x-www-form-urlencoded", form(tc.form...).Encode())
			if resp.StatusCode != 200 {
				t.Fatalf("exchange = %d %v", resp.StatusCode, tok)
			}
			status, got := f.introspect(t, callerToken, tok["access_token"].(string))
			if status != 200 || got["active"] != true {
				t.Fatalf("introspect = %d %v", status, got)
			}
			if a, has := got["act"]; has {
				t.Errorf("introspection answers act %v: want none (RFC 8693's act is the acting party, here sub)", a)
			}
			if got["sub"] != "deployer" {
				t.Errorf("sub = %v, want the workload", got["sub"])
			}
			a, has := got["acting_for"]
			switch {
			case tc.want == nil && has:
				t.Errorf("acting_for = %v, want none", a)
			case tc.want != nil && !reflect.DeepEqual(a, tc.want):
				t.Errorf("acting_for = %#v, want %#v", a, tc.want)
			}
		})
	}
}
