package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/policies"
)

// proxyGrant is a proxy grant stripe, added to testPolicy.
const proxyGrant = `
  - name: stripe
    kind: proxy
    ttl: 10m
    proxy:
      upstream: https://api.stripe.example
      secret: {vault_kv: secret/data/upstreams/stripe, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      paths: ["/v1/charges"]
`

// TestIntrospectProxyCredentialPolicy: introspection answers what a proxy
// credential can do. The proxy refuses a credential whose grant is no
// longer in the policy in force (grant_removed) or no longer allowed to its
// workload (grant_not_allowed): introspection answers {"active": false} for
// it, as for a revoked one, and active again once the policy allows it.
func TestIntrospectProxyCredentialPolicy(t *testing.T) {
	f := newFixture(t)
	parse := func(name, src string) *policies.Policy {
		t.Helper()
		pol, err := policies.Parse(name, []byte(src))
		if err != nil {
			t.Fatal(err)
		}
		return pol
	}
	allowed := parse("allowed.yaml", strings.Replace(testPolicy, "    grants: [payments-vault]\n    rate:", "    grants: [payments-vault, stripe]\n    rate:", 1)+proxyGrant)
	notAllowed := parse("not-allowed.yaml", testPolicy+proxyGrant)
	removed := parse("removed.yaml", testPolicy)
	// The grant's name now names a grant of another kind.
	otherKind := parse("other-kind.yaml", strings.Replace(strings.Replace(testPolicy, "    grants: [payments-vault]\n    rate:", "    grants: [payments-vault, stripe]\n    rate:", 1),
		"  - name: orders-jwt", "  - name: stripe\n    kind: vault_token\n    ttl: 5m\n    vault_token: {policies: [x]}\n  - name: orders-jwt", 1))
	// The credential's workload is gone from the policy.
	noWorkload := parse("no-workload.yaml", strings.Replace(strings.Replace(testPolicy, "  - name: payments-api\n", "  - name: payments-renamed\n", 1),
		"    grants: [payments-vault]\n    rate:", "    grants: [payments-vault, stripe]\n    rate:", 1)+proxyGrant)

	const tok = "kt_proxy_credential_for_test"
	is := &broker.Issuance{
		ID: broker.NewID(broker.PrefixIssuance), Workload: "payments-api", Owner: "team-payments", SessionID: "ses_x",
		Grant: "stripe", Kind: broker.KindProxy, IssuedAt: f.now, ExpiresAt: f.now.Add(10 * time.Minute),
		Refs: broker.CredentialRefs{Fingerprint: broker.Fingerprint(tok), ExpiresAt: f.now.Add(10 * time.Minute)},
	}
	if err := f.store.PutIssuance(context.Background(), is); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name string
		pol  *policies.Policy
		want bool
	}{
		{"ok/allowed", allowed, true},
		{"inactive/grant-not-allowed", notAllowed, false},
		{"inactive/grant-removed", removed, false},
		{"inactive/grant-of-another-kind", otherKind, false},
		{"inactive/workload-removed", noWorkload, false},
		{"ok/allowed-again", allowed, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f.pol = tt.pol
			f.now = f.now.Add(time.Second) // past the caller's rate limit
			res, err := f.svc.Introspect(context.Background(), broker.IntrospectRequest{CallerToken: "batch", Token: tok})
			if err != nil {
				t.Fatalf("Introspect = %v", err)
			}
			if res.Active != tt.want {
				t.Fatalf("Introspect active = %v, want %v", res.Active, tt.want)
			}
			if !tt.want && res.Issuance != nil {
				t.Errorf("inactive answer carries the issuance %s", res.Issuance.ID)
			}
		})
	}
}
