package vault_test

import (
	"context"
	"strings"
	"testing"
	"time"

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
				if err := m.Revoke(ctx, &broker.Issuance{ID: "iss_x", Refs: cred.Refs}); err != nil {
					t.Errorf("Revoke() = %v", err)
				}
			}
		})
	}
}
