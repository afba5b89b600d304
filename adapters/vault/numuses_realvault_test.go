package vault_test

import (
	"context"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
)

var unavailableKind = broker.ErrUnavailable.Error()

// TestLoginRestrictedUseTokenRealVault: a broker token with num_uses > 0
// cannot create a single token ("restricted use token cannot generate
// child tokens"), so Start refuses it with a vault_config error naming the
// setting, for an AppRole whose role sets token_num_uses and for a static
// token made with num_uses, instead of starting a broker whose every
// vault_token and vault_dynamic exchange fails.
func TestLoginRestrictedUseTokenRealVault(t *testing.T) {
	v := harness.StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := v.Client

	if err := root.Sys().EnableAuthWithOptionsWithContext(ctx, "approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	approleFiles := func(t *testing.T, role string, numUses int) (string, string) {
		t.Helper()
		if _, err := root.Logical().WriteWithContext(ctx, "auth/approle/role/"+role, map[string]any{
			"token_ttl": "1m", "token_policies": []string{"default"}, "token_num_uses": numUses,
		}); err != nil {
			t.Fatal(err)
		}
		rid, err := root.Logical().ReadWithContext(ctx, "auth/approle/role/"+role+"/role-id")
		if err != nil {
			t.Fatal(err)
		}
		sid, err := root.Logical().WriteWithContext(ctx, "auth/approle/role/"+role+"/secret-id", nil)
		if err != nil {
			t.Fatal(err)
		}
		return writeLoginFile(t, dir, role+"-role-id", rid.Data["role_id"].(string)),
			writeLoginFile(t, dir, role+"-secret-id", sid.Data["secret_id"].(string))
	}
	staticToken := func(t *testing.T, numUses int) string {
		t.Helper()
		s, err := root.Auth().Token().CreateWithContext(ctx, &vaultapi.TokenCreateRequest{Policies: []string{"default"}, TTL: "1m", NumUses: numUses})
		if err != nil {
			t.Fatal(err)
		}
		return s.Auth.ClientToken
	}
	newClient := func(t *testing.T) *vaultapi.Client {
		t.Helper()
		c, err := vault.NewClient(vault.ClientOptions{Address: v.Addr, Token: placeholderToken, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}

	for _, tc := range []struct {
		name     string
		opts     func(t *testing.T) vault.LoginOptions
		wantErr  loginErr
		wantText []string
		// after, when set, checks Vault after Start.
		after func(t *testing.T)
	}{
		{
			name: "ok/approle-unlimited",
			opts: func(t *testing.T) vault.LoginOptions {
				r, s := approleFiles(t, "unlimited", 0)
				return vault.LoginOptions{Method: vault.LoginAppRole, RoleIDFile: r, SecretIDFile: s}
			},
		},
		{
			name: "fail/approle-token-num-uses",
			opts: func(t *testing.T) vault.LoginOptions {
				r, s := approleFiles(t, "limited", 5)
				return vault.LoginOptions{Method: vault.LoginAppRole, RoleIDFile: r, SecretIDFile: s}
			},
			wantErr:  loginErr{Kind: unavailableKind, Reason: vault.ReasonConfig},
			wantText: []string{"approle login at auth/approle/login", "use limit (num_uses=5)", "token_num_uses=0 on the approle role"},
			// The refused token was revoked, not left valid for its TTL.
			after: func(t *testing.T) {
				if n := approleTokens(t, ctx, root, "limited"); n != 0 {
					t.Errorf("%d tokens of the approle role limited are still valid after the refused login, want 0", n)
				}
			},
		},
		{
			name: "ok/token-unlimited",
			opts: func(t *testing.T) vault.LoginOptions {
				return vault.LoginOptions{Method: vault.LoginToken, Token: staticToken(t, 0)}
			},
		},
		{
			name: "fail/token-num-uses",
			opts: func(t *testing.T) vault.LoginOptions {
				return vault.LoginOptions{Method: vault.LoginToken, Token: staticToken(t, 5)}
			},
			wantErr:  loginErr{Kind: unavailableKind, Reason: vault.ReasonConfig},
			wantText: []string{"lookup-self of the broker token (token)", "use limit", "-use-limit=0"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := tc.opts(t)
			o.Client = newClient(t)
			l, err := vault.NewLogin(o)
			if err != nil {
				t.Fatal(err)
			}
			err = l.Start(ctx)
			if got := loginErrOf(err); got != tc.wantErr {
				t.Fatalf("Start() = %v (%+v), want %+v", err, got, tc.wantErr)
			}
			if tc.after != nil {
				tc.after(t)
			}
			if err == nil {
				return
			}
			t.Logf("Start() = %v", err)
			for _, s := range tc.wantText {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("Start() = %q, want it to say %q", err, s)
				}
			}
		})
	}
}

// approleTokens counts the valid tokens Vault holds that an AppRole login
// as role made (meta role_name), looking every accessor up as root.
func approleTokens(t *testing.T, ctx context.Context, root *vaultapi.Client, role string) int {
	t.Helper()
	sec, err := root.Logical().ListWithContext(ctx, "auth/token/accessors")
	if err != nil || sec == nil {
		t.Fatalf("list accessors: %v", err)
	}
	keys, _ := sec.Data["keys"].([]any)
	n := 0
	for _, k := range keys {
		acc, _ := k.(string)
		s, err := root.Auth().Token().LookupAccessorWithContext(ctx, acc)
		if err != nil {
			continue // revoked meanwhile
		}
		if meta, _ := s.Data["meta"].(map[string]any); meta != nil && meta["role_name"] == role {
			n++
		}
	}
	return n
}
