package vault_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// TestTokenRoleRealVault: against a real Vault, a token role with
// token_type=batch makes batch tokens whatever the request's type says:
// they have no accessor, so keytrail can neither record nor revoke them and
// every mint through the role fails. CheckRole refuses such a role at
// start-up; a default-batch role still makes the service tokens asked for.
func TestTokenRoleRealVault(t *testing.T) {
	v := harness.StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := v.Client
	for role, body := range map[string]map[string]any{
		"kt-service":       {"orphan": true, "allowed_policies": "payments-read", "renewable": false},
		"kt-batch":         {"orphan": true, "allowed_policies": "payments-read", "renewable": false, "token_type": "batch"},
		"kt-default-batch": {"orphan": true, "allowed_policies": "payments-read", "renewable": false, "token_type": "default-batch"},
		"kt-num-uses":      {"orphan": true, "allowed_policies": "payments-read", "renewable": false, "token_num_uses": 1},
	} {
		if _, err := root.Logical().WriteWithContext(ctx, "auth/token/roles/"+role, body); err != nil {
			t.Fatalf("write role %s: %v", role, err)
		}
	}
	bc, err := vault.NewClient(vault.ClientOptions{Address: v.Addr, Token: harness.VaultRootToken})
	if err != nil {
		t.Fatal(err)
	}
	mint := func(m *vault.TokenMinter) (*broker.Credential, error) {
		return m.Mint(ctx, broker.MintRequest{
			IssuanceID: broker.NewID(broker.PrefixIssuance), Workload: "payments-api", Owner: "team-payments", SessionID: "ses_role",
			Grant: policies.Grant{Name: "payments-vault", Kind: broker.KindVaultToken, TTL: policies.Duration(time.Minute),
				VaultToken: &policies.VaultTokenGrant{Policies: []string{"payments-read"}}},
			TTL: time.Minute, Now: time.Now(),
		})
	}
	for _, tc := range []struct {
		role     string
		checkErr string // "" = CheckRole passes
		mintOK   bool
	}{
		{"kt-service", "", true},
		{"kt-default-batch", "", true},
		{"kt-batch", "token_type", false},
		{"kt-num-uses", "token_num_uses", true}, // Vault caps the token at one use
	} {
		t.Run(tc.role, func(t *testing.T) {
			m, err := vault.NewTokenMinter(vault.TokenMinterOptions{Client: bc, Role: tc.role})
			if err != nil {
				t.Fatal(err)
			}
			err = m.CheckRole(ctx)
			switch {
			case tc.checkErr == "" && err != nil:
				t.Errorf("CheckRole() = %v, want nil", err)
			case tc.checkErr != "" && (err == nil || !strings.Contains(err.Error(), tc.checkErr)):
				t.Errorf("CheckRole() = %v, want an error naming %s", err, tc.checkErr)
			}
			cred, err := mint(m)
			if (err == nil) != tc.mintOK {
				t.Fatalf("Mint() through role %s = %v, want success %v", tc.role, err, tc.mintOK)
			}
			if err == nil {
				if cred.Refs.Accessor == "" {
					t.Errorf("minted token has no accessor")
				}
				// A role CheckRole accepts keeps the grant's num_uses (0:
				// unlimited) on the token Vault makes.
				look, err := root.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": cred.Refs.Accessor})
				if err != nil || look == nil {
					t.Fatalf("lookup-accessor: %v", err)
				}
				if uses := look.Data["num_uses"]; fmt.Sprint(uses) != "0" && m.CheckRole(ctx) == nil {
					t.Errorf("token minted through role %s for a grant with num_uses 0 has num_uses %v, and CheckRole accepted the role", tc.role, uses)
				}
				if err := m.Revoke(ctx, &broker.Issuance{ID: "iss_x", Refs: cred.Refs}); err != nil {
					t.Errorf("Revoke() = %v", err)
				}
			}
		})
	}
}

// TestTokenRoleEditedToChildrenRealVault: a token role that had
// orphan=true when the broker started (CheckRole passed) and was edited to
// orphan=false afterwards makes children of the broker's own token, which
// Vault revokes with that token (at its expiry, or its revocation when the
// broker logs in anew) long before their TTL. Mint must see it in Vault's
// answer (auth.orphan), take the token back and fail, for vault_token
// grants and for the dynamic minter's reader tokens alike.
func TestTokenRoleEditedToChildrenRealVault(t *testing.T) {
	v := harness.StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := v.Client
	const role = "kt-edited"
	putPolicies(t, ctx, root, map[string]string{
		"payments-read": `path "secret/data/payments/*" { capabilities = ["read"] }`,
		"keytrail-broker": `path "auth/token/create/` + role + `" { capabilities = ["update"] }
path "auth/token/roles/` + role + `" { capabilities = ["read"] }
path "auth/token/revoke-accessor" { capabilities = ["update"] }`,
	})
	writeRole := func(orphan bool) {
		t.Helper()
		if _, err := root.Logical().WriteWithContext(ctx, "auth/token/roles/"+role, map[string]any{
			"orphan": orphan, "allowed_policies": "payments-read,keytrail-dynamic", "renewable": false,
		}); err != nil {
			t.Fatalf("write role: %v", err)
		}
	}
	writeRole(true)
	bc := newTokenClient(t, ctx, v, &vaultapi.TokenCreateRequest{Policies: []string{"keytrail-broker"}, TTL: "1h"}, 0)
	tm, err := vault.NewTokenMinter(vault.TokenMinterOptions{Client: bc, Role: role})
	if err != nil {
		t.Fatal(err)
	}
	if err := tm.CheckRole(ctx); err != nil {
		t.Fatalf("CheckRole() with orphan=true = %v", err)
	}
	dm, err := vault.NewDynamicMinter(vault.DynamicMinterOptions{Client: bc, Role: role})
	if err != nil {
		t.Fatal(err)
	}
	writeRole(false) // edited while the broker runs

	// tokensOf lists the accessors of the tokens Vault keeps with meta
	// issuance_id id (the ones the mint left valid).
	tokensOf := func(t *testing.T, id string) []string {
		t.Helper()
		sec, err := root.Logical().ListWithContext(ctx, "auth/token/accessors")
		if err != nil || sec == nil {
			t.Fatalf("list accessors: %v", err)
		}
		var out []string
		for _, a := range sec.Data["keys"].([]any) {
			look, err := root.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": a})
			if err != nil || look == nil {
				continue
			}
			if meta, _ := look.Data["meta"].(map[string]any); meta["issuance_id"] == id {
				out = append(out, a.(string))
			}
		}
		return out
	}
	for _, tc := range []struct {
		name string
		mint func(id string) (*broker.Credential, error)
	}{
		{"vault_token", func(id string) (*broker.Credential, error) {
			return tm.Mint(ctx, broker.MintRequest{
				IssuanceID: id, Workload: "payments-api", Owner: "team-payments", SessionID: "ses_role",
				Grant: policies.Grant{Name: "payments-vault", Kind: broker.KindVaultToken, TTL: policies.Duration(time.Minute),
					VaultToken: &policies.VaultTokenGrant{Policies: []string{"payments-read"}}},
				TTL: time.Minute, Now: time.Now(),
			})
		}},
		{"vault_dynamic reader token", func(id string) (*broker.Credential, error) {
			return dm.Mint(ctx, broker.MintRequest{
				IssuanceID: id, Workload: "payments-api", Owner: "team-payments", SessionID: "ses_role",
				Grant: policies.Grant{Name: "payments-db", Kind: broker.KindVaultDynamic, TTL: policies.Duration(time.Minute),
					VaultDynamic: &policies.VaultDynamicGrant{Path: "database/creds/payments-rw"}},
				TTL: time.Minute, Now: time.Now(),
			})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := broker.NewID(broker.PrefixIssuance)
			_, err := tc.mint(id)
			var be *broker.Error
			if !errors.As(err, &be) || be.Reason != vault.ReasonConfig {
				t.Errorf("Mint() through role %s edited to orphan=false = %v, want a %s error", role, err, vault.ReasonConfig)
			}
			if left := tokensOf(t, id); len(left) != 0 {
				t.Errorf("Mint() left %d token(s) of issuance %s valid in Vault (children of the broker's token), want them revoked", len(left), id)
			}
		})
	}
}
