package vault_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// TestTokenMinterMisspelledPolicyRealVault: Vault creates a token with a
// policy that does not exist (the broker's token holds the same misspelled
// name, so the subset rule passes) and only warns; the mint succeeds and
// the minter logs Vault's warning with the grant, never the token.
func TestTokenMinterMisspelledPolicyRealVault(t *testing.T) {
	v := harness.StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := v.Client
	putPolicies(t, ctx, root, map[string]string{"keytrail-broker": vault.BrokerPolicy("")})
	bc := newTokenClient(t, ctx, v, &vaultapi.TokenCreateRequest{
		Policies: []string{"keytrail-broker", "payments-raed"}, TTL: "1h",
	}, 10*time.Second)
	var logs bytes.Buffer
	m, err := vault.NewTokenMinter(vault.TokenMinterOptions{Client: bc, Log: slog.New(slog.NewJSONHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	cred, err := m.Mint(ctx, broker.MintRequest{
		IssuanceID: "iss_01JWARN", Workload: "payments-api", Owner: "team-payments", SessionID: "ses_w",
		Grant: policies.Grant{Name: "payments-vault", Kind: broker.KindVaultToken, TTL: policies.Duration(time.Minute),
			VaultToken: &policies.VaultTokenGrant{Policies: []string{"payments-raed"}}},
		TTL: time.Minute, Now: time.Now(),
	})
	if err != nil {
		t.Fatalf("Mint() = %v, want a token (Vault only warns)", err)
	}
	got := logs.String()
	for _, s := range []string{`"grant":"payments-vault"`, `"vault_warning":"Policy \"payments-raed\" does not exist"`, `"op":"create token"`} {
		if !strings.Contains(got, s) {
			t.Errorf("log = %q, want it to contain %s", got, s)
		}
	}
	for _, s := range []string{cred.AccessToken, bc.Token()} {
		if strings.Contains(got, s) {
			t.Errorf("log contains a token:\n%s", got)
		}
	}
}
