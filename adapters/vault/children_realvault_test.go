package vault_test

import (
	"context"
	"errors"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// TestMintedTokenChildrenRealVault: what a keytrail-minted Vault token can
// create, and what revoking its issuance takes with it, on a real Vault.
// Such a child carries no keytrail meta (trace calls it not_keytrail), so
// the only thing that ends it is Vault's token tree:
//   - with the grant's policies alone (plus Vault's default policy, which
//     grants no token creation) the token cannot create a child at all;
//   - a grant policy with update on auth/token/create lets it create
//     children; they are not orphans (no_parent needs sudo), and Revoke
//     (revoke-accessor) of the issuance revokes them with it;
//   - a grant policy with update on auth/token/create-orphan lets it create
//     orphans, which the revocation does not reach: such a policy defeats
//     revocation (docs/DYNAMIC.md says not to grant it).
func TestMintedTokenChildrenRealVault(t *testing.T) {
	v := harness.StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := v.Client
	putPolicies(t, ctx, root, map[string]string{
		"payments-read":   `path "secret/data/payments/*" { capabilities = ["read"] }`,
		"make-children":   `path "auth/token/create" { capabilities = ["update"] }`,
		"make-orphans":    `path "auth/token/create-orphan" { capabilities = ["update"] }`,
		"keytrail-broker": vault.BrokerPolicy(""),
	})
	bc := newTokenClient(t, ctx, v, &vaultapi.TokenCreateRequest{
		Policies: []string{"keytrail-broker", "payments-read", "make-children", "make-orphans", "default"}, TTL: "1h",
	}, 10*time.Second)
	m, err := vault.NewTokenMinter(vault.TokenMinterOptions{Client: bc})
	if err != nil {
		t.Fatal(err)
	}
	// alive reports whether token is still valid, by looking it up with
	// the root token.
	alive := func(t *testing.T, token string) bool {
		t.Helper()
		sec, err := root.Auth().Token().LookupWithContext(ctx, token)
		if err != nil {
			var re *vaultapi.ResponseError
			if errors.As(err, &re) && (re.StatusCode == 403 || re.StatusCode == 400) {
				return false
			}
			t.Fatalf("lookup: %v", err)
		}
		return sec != nil
	}
	for _, tc := range []struct {
		name     string
		policies []string
		path     string // where the minted token creates its child
		canMake  bool
		survives bool // the child outlives the issuance's revocation
	}{
		{"fail/grant-policies-alone", []string{"payments-read"}, "auth/token/create", false, false},
		{"ok/child-revoked-with-issuance", []string{"payments-read", "make-children"}, "auth/token/create", true, false},
		{"fail/no-parent-without-sudo", []string{"payments-read", "make-children"}, "auth/token/create?no_parent", false, false},
		{"hazard/orphan-survives", []string{"payments-read", "make-orphans"}, "auth/token/create-orphan", true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := broker.NewID(broker.PrefixIssuance)
			cred, err := m.Mint(ctx, broker.MintRequest{
				IssuanceID: id, Workload: "payments-api", Owner: "team-payments", SessionID: "ses_children",
				Grant: policies.Grant{Name: "payments-vault", Kind: broker.KindVaultToken, TTL: policies.Duration(10 * time.Minute),
					VaultToken: &policies.VaultTokenGrant{Policies: tc.policies}},
				TTL: 10 * time.Minute, Now: time.Now(),
			})
			if err != nil {
				t.Fatalf("Mint() = %v", err)
			}
			wc, err := vaultapi.NewClient(&vaultapi.Config{Address: v.Addr})
			if err != nil {
				t.Fatal(err)
			}
			wc.SetToken(cred.AccessToken)
			path, body := tc.path, map[string]any{"policies": []string{"payments-read"}, "ttl": "5m"}
			if path == "auth/token/create?no_parent" {
				path, body["no_parent"] = "auth/token/create", true
			}
			sec, err := wc.Logical().WriteWithContext(ctx, path, body)
			if !tc.canMake {
				var re *vaultapi.ResponseError
				if !errors.As(err, &re) || (re.StatusCode != 403 && re.StatusCode != 400) {
					t.Fatalf("child through %s with policies %v = %v, %v; want Vault to refuse it (403 or 400)", path, tc.policies, sec, err)
				}
				return
			}
			if err != nil || sec == nil || sec.Auth == nil {
				t.Fatalf("child through %s = %v, %v; want a token", path, sec, err)
			}
			child := sec.Auth.ClientToken
			look, err := root.Auth().Token().LookupWithContext(ctx, child)
			if err != nil {
				t.Fatal(err)
			}
			orphan, _ := look.Data["orphan"].(bool)
			if orphan != tc.survives {
				t.Errorf("child orphan = %v, want %v", orphan, tc.survives)
			}
			if meta, _ := look.Data["meta"].(map[string]any); meta["issuance_id"] != nil {
				t.Errorf("child meta = %v; want none of keytrail's", meta)
			}
			if err := m.Revoke(ctx, &broker.Issuance{ID: id, Refs: cred.Refs}); err != nil {
				t.Fatalf("Revoke() = %v", err)
			}
			if alive(t, cred.AccessToken) {
				t.Fatalf("the issuance's token is alive after Revoke()")
			}
			if got := alive(t, child); got != tc.survives {
				t.Errorf("child alive after the issuance's revocation = %v, want %v", got, tc.survives)
			}
		})
	}
}
