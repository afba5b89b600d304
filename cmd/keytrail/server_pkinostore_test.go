package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/e2e/harness"
)

// pkiRolePolicy is jwtOnlyTestPolicy with a pki grant issuing through
// pki/issue/<role>.
func pkiRolePolicy(role string) string {
	return strings.Replace(jwtOnlyTestPolicy, "grants: [orders-jwt]", "grants: [orders-jwt, orders-cert]", 1) + `  - name: orders-cert
    kind: pki
    ttl: 5m
    pki: {path: pki/issue/` + role + `}
`
}

// pkiRolesVault is a real Vault with a pki mount and two roles: stored,
// and unstored (no_store=true).
func pkiRolesVault(t *testing.T) *harness.Vault {
	t.Helper()
	vp := harness.StartVault(t)
	bg := context.Background()
	if err := vp.Client.Sys().MountWithContext(bg, "pki", &vaultapi.MountInput{Type: "pki"}); err != nil {
		t.Fatal(err)
	}
	for role, noStore := range map[string]bool{"stored": false, "unstored": true} {
		if _, err := vp.Client.Logical().WriteWithContext(bg, "pki/roles/"+role, map[string]any{"allow_any_name": true, "no_store": noStore}); err != nil {
			t.Fatal(err)
		}
	}
	return vp
}

// TestServerRefusesPKIRoleWithoutStore: a pki role with no_store=true
// issues certificates Vault keeps no record of, so none can be revoked by
// serial and every keytrail revocation of the grant's issuances would fail
// until expiry. The server refuses to start with such a grant, naming it
// and the setting, and a policy reload that adds one is refused (the
// policy in force stays). Real Vault.
func TestServerRefusesPKIRoleWithoutStore(t *testing.T) {
	vp := pkiRolesVault(t)
	for _, tc := range []struct {
		name, role, wantErr string // wantErr "" = the server starts
	}{
		{"fail/no-store", "unstored", "no_store=true"},
		{"ok/stored", "stored", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			dir := t.TempDir()
			pol := filepath.Join(dir, "policy.yaml")
			if err := os.WriteFile(pol, []byte(pkiRolePolicy(tc.role)), 0o600); err != nil {
				t.Fatal(err)
			}
			readyc, errc := goServer(t, ctx, dir, pol, vp.Addr, harness.VaultRootToken)
			select {
			case addr := <-readyc:
				if tc.wantErr == "" {
					// A reload onto the role without store is refused as
					// the start-up is: the policy in force stays.
					if err := os.WriteFile(pol, []byte(pkiRolePolicy("unstored")), 0o600); err != nil {
						t.Fatal(err)
					}
					waitMetric(t, "http://"+addr, `keytrail_policy_reloads_total{outcome="error"} 1`, `keytrail_policy_reloads_total{outcome="ok"}`)
				}
				cancel()
				<-errc
				if tc.wantErr != "" {
					t.Fatalf("server started with a pki grant on a no_store role; want a start-up error containing %q", tc.wantErr)
				}
			case err := <-errc:
				if tc.wantErr == "" || err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), `"orders-cert"`) {
					t.Fatalf("runServer() = %v, want %s", err, map[bool]string{true: "a start", false: "an error naming no_store=true and grant orders-cert"}[tc.wantErr == ""])
				}
			case <-time.After(60 * time.Second):
				t.Fatal("server neither started nor failed")
			}
		})
	}
}
