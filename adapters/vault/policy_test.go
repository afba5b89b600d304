package vault_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/policies"
)

// policyWithGrants is a valid keytrail policy with the given grants
// (indented YAML list items) all allowed to one workload.
func policyWithGrants(t *testing.T, names []string, grants string) *policies.Policy {
	t.Helper()
	src := fmt.Sprintf(`version: 1
issuers:
  - name: test
    issuer: http://127.0.0.1:9/
    jwks_url: http://127.0.0.1:9/jwks.json
    audiences: [keytrail]
    algorithms: [ES256]
workloads:
  - name: api
    owner: team-a
    match: {issuer: test, subject: api}
    grants: [%s]
grants:
%s`, strings.Join(names, ", "), grants)
	p, err := policies.Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatalf("policy: %v\n%s", err, src)
	}
	return p
}

const (
	grantVault = `  - name: g-vault
    kind: vault_token
    ttl: 5m
    vault_token: {policies: [payments-read, deploy]}
`
	grantVault2 = `  - name: g-vault2
    kind: vault_token
    ttl: 5m
    vault_token: {policies: [deploy]}
`
	grantJWT = `  - name: g-jwt
    kind: jwt
    ttl: 5m
    jwt: {audience: orders, transit_key: keytrail-signing}
`
	grantJWT2 = `  - name: g-jwt2
    kind: jwt
    ttl: 5m
    jwt: {audience: billing, transit_key: keytrail-signing}
`
	grantProxy = `  - name: g-proxy
    kind: proxy
    ttl: 5m
    proxy:
      upstream: https://api.example.com
      secret: {vault_kv: secret/data/upstreams/example, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      paths: ["/v1/*"]
`
	grantDynamic = `  - name: g-db
    kind: vault_dynamic
    ttl: 5m
    vault_dynamic: {path: database/creds/payments-rw}
`
	grantPKI = `  - name: g-pki
    kind: pki
    ttl: 5m
    pki: {path: pki/issue/workloads, trust_domain: example.org}
`
	grantPKI2 = `  - name: g-pki2
    kind: pki
    ttl: 5m
    pki: {path: pki/issue/web}
`
	grantPKI3 = `  - name: g-pki3
    kind: pki
    ttl: 5m
    pki: {path: pki/issuer/root-2026/issue/workloads}
`
)

const (
	hclSelf = `# keytrail broker: minimum policy for its own token (generated)
path "auth/token/lookup-self" {
  capabilities = ["read"]
}
path "auth/token/renew-self" {
  capabilities = ["update"]
}
path "auth/token/revoke-self" {
  capabilities = ["update"]
}
`
	hclMint = `path "auth/token/create-orphan" {
  capabilities = ["update"]
}
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}
`
	hclTransit = `path "transit/keys/keytrail-signing" {
  capabilities = ["read"]
}
path "transit/sign/keytrail-signing" {
  capabilities = ["update"]
}
`
	hclKV = `path "secret/data/upstreams/example" {
  capabilities = ["read"]
}
`
)

func TestMinimumBrokerPolicy(t *testing.T) {
	tests := []struct {
		name   string
		grants []string
		yaml   string
		opts   vault.BrokerPolicyOptions
		want   string
		held   []string
	}{
		{
			name: "ok/vault-token-only", grants: []string{"g-vault", "g-vault2"}, yaml: grantVault + grantVault2,
			want: hclSelf + hclMint, held: []string{"default", "deploy", "payments-read"},
		},
		{
			name: "ok/jwt-keys-once", grants: []string{"g-jwt", "g-jwt2"}, yaml: grantJWT + grantJWT2,
			want: hclSelf + hclMint + hclTransit,
		},
		{
			name: "ok/jwt-other-mount", grants: []string{"g-jwt"}, yaml: grantJWT, opts: vault.BrokerPolicyOptions{TransitMount: "keytrail-transit"},
			want: hclSelf + hclMint + strings.ReplaceAll(hclTransit, `"transit/`, `"keytrail-transit/`),
		},
		{
			name: "ok/proxy-kv-read", grants: []string{"g-vault", "g-jwt", "g-proxy"}, yaml: grantVault + grantJWT + grantProxy,
			want: hclSelf + hclMint + hclTransit + hclKV, held: []string{"default", "deploy", "payments-read"},
		},
		{
			name: "ok/dynamic-and-pki", grants: []string{"g-db", "g-pki"}, yaml: grantDynamic + grantPKI,
			want: hclSelf + hclMint + vault.DynamicBrokerPolicy() + mustPKI(t, "pki/issue/workloads"),
			held: []string{vault.DefaultReaderPolicy},
		},
		{
			// Two grants on one mount share pki/revoke, and an issue path
			// through a named issuer shares the role's read: each path
			// once (Vault would merge repeats, but the output says
			// "listed once", and operators diff it).
			name: "ok/pki-one-mount-paths-once", grants: []string{"g-pki", "g-pki2", "g-pki3"}, yaml: grantPKI + grantPKI2 + grantPKI3,
			want: hclSelf + hclMint + `path "pki/issue/web" {
  capabilities = ["update"]
}
path "pki/revoke" {
  capabilities = ["update"]
}
path "pki/roles/web" {
  capabilities = ["read"]
}
path "pki/issue/workloads" {
  capabilities = ["update"]
}
path "pki/roles/workloads" {
  capabilities = ["read"]
}
path "pki/issuer/root-2026/issue/workloads" {
  capabilities = ["update"]
}
`,
		},
		{
			name: "ok/reconcile-adds-inventory", grants: []string{"g-vault"}, yaml: grantVault,
			opts: vault.BrokerPolicyOptions{Reconcile: true},
			want: hclSelf + hclMint + vault.InventoryPolicy(), held: []string{"default", "deploy", "payments-read"},
		},
		{
			name: "ok/checkpoint-transit-key", grants: []string{"g-vault"}, yaml: grantVault,
			opts: vault.BrokerPolicyOptions{CheckpointTransitKey: "keytrail-signing"},
			want: hclSelf + hclMint + hclTransit, held: []string{"default", "deploy", "payments-read"},
		},
		{
			// The role's allowed_policies bound what it hands out: the
			// broker need not hold the grants' or the readers' policies.
			name: "ok/token-role", grants: []string{"g-vault", "g-db"}, yaml: grantVault + grantDynamic,
			opts: vault.BrokerPolicyOptions{TokenRole: "keytrail"},
			want: hclSelf + `path "auth/token/create/keytrail" {
  capabilities = ["update"]
}
path "auth/token/roles/keytrail" {
  capabilities = ["read"]
}
path "auth/token/revoke-accessor" {
  capabilities = ["update"]
}
` + vault.DynamicBrokerPolicy(),
		},
		{
			name: "ok/dynamic-reader-policies", grants: []string{"g-db"}, yaml: grantDynamic,
			opts: vault.BrokerPolicyOptions{ReaderPolicies: []string{"db-reader"}},
			want: hclSelf + hclMint + vault.DynamicBrokerPolicy(), held: []string{"db-reader"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pol := policyWithGrants(t, tt.grants, tt.yaml)
			got, err := vault.MinimumBrokerPolicy(pol, tt.opts)
			if err != nil {
				t.Fatalf("MinimumBrokerPolicy() = %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("MinimumBrokerPolicy(%s) (-want +got):\n%s", tt.name, diff)
			}
			// Never less than BrokerPolicy for the same keys.
			if base := vault.BrokerPolicy(tt.opts.TransitMount); tt.opts.TokenRole == "" && !strings.Contains(got, base) {
				t.Errorf("MinimumBrokerPolicy(%s) lacks BrokerPolicy's stanzas:\n%s", tt.name, base)
			}
			if diff := cmp.Diff(tt.held, vault.HeldPolicies(pol, tt.opts)); diff != "" {
				t.Errorf("HeldPolicies(%s) (-want +got):\n%s", tt.name, diff)
			}
		})
	}
	t.Run("fail/token-role-path", func(t *testing.T) {
		pol := policyWithGrants(t, []string{"g-vault"}, grantVault)
		if _, err := vault.MinimumBrokerPolicy(pol, vault.BrokerPolicyOptions{TokenRole: "a/../b"}); err == nil {
			t.Error("MinimumBrokerPolicy(token role a/../b) = nil error, want one")
		}
	})
	t.Run("fail/no-policy", func(t *testing.T) {
		if got, err := vault.MinimumBrokerPolicy(nil, vault.BrokerPolicyOptions{}); err == nil {
			t.Errorf("MinimumBrokerPolicy(nil) = %q, nil; want an error", got)
		}
	})
}

func mustPKI(t *testing.T, path string) string {
	t.Helper()
	h, err := vault.PKIBrokerPolicy(path)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestPlainRoleName(t *testing.T) {
	for _, tt := range []struct {
		in   string
		want bool
	}{
		{"keytrail", true}, {"keytrail-workloads", true}, {"k8s_prod.v2", true}, {"a", true},
		{"", false}, {"a/b", false}, {"a/../b", false}, {"..", false}, {"-r", false}, {"r.", false},
		{"r?x=1", false}, {"r#f", false}, {"r%2f", false}, {"r x", false},
	} {
		if got := vault.PlainRoleName(tt.in); got != tt.want {
			t.Errorf("PlainRoleName(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}
