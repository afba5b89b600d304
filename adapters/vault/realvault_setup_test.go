package vault_test

import (
	"context"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/e2e/harness"
)

// The set-up the real-Vault tests share: policies written and a token
// created with the root token, and a client of the broker's own token.

// putPolicies writes each policy (name: rules) with the root client.
func putPolicies(t *testing.T, ctx context.Context, root *vaultapi.Client, policies map[string]string) {
	t.Helper()
	for name, rules := range policies {
		if err := root.Sys().PutPolicyWithContext(ctx, name, rules); err != nil {
			t.Fatalf("put policy %s: %v", name, err)
		}
	}
}

// newTokenClient creates a token of v as req asks (with v's root token) and
// returns a client of v that uses it (timeout as vault.ClientOptions
// takes it: 0 is the client's default); the token is its Token().
func newTokenClient(t *testing.T, ctx context.Context, v *harness.Vault, req *vaultapi.TokenCreateRequest, timeout time.Duration) *vaultapi.Client {
	t.Helper()
	bt, err := v.Client.Auth().Token().CreateWithContext(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	c, err := vault.NewClient(vault.ClientOptions{Address: v.Addr, Token: bt.Auth.ClientToken, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// writeVault writes data at path with the root client.
func writeVault(t *testing.T, ctx context.Context, root *vaultapi.Client, path string, data map[string]any) {
	t.Helper()
	if _, err := root.Logical().WriteWithContext(ctx, path, data); err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
}
