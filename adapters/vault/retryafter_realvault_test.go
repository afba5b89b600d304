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

// TestRetryAfterRealVault: with a rate limit quota on auth/token/ that
// blocks for 40 s once exceeded, and enable_rate_limit_response_headers,
// Vault answers the second mint 429 with Retry-After ≈ 40; the mint's
// error carries that wait (not the fixed 2 s) for the broker's 503.
func TestRetryAfterRealVault(t *testing.T) {
	v := harness.StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := v.Client
	if err := root.Sys().PutPolicyWithContext(ctx, "payments-read", `path "secret/data/payments/*" { capabilities = ["read"] }`); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().WriteWithContext(ctx, "sys/quotas/config", map[string]any{"enable_rate_limit_response_headers": true}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().WriteWithContext(ctx, "sys/quotas/rate-limit/keytrail-test", map[string]any{
		"path": "auth/token/", "rate": 1, "interval": "1m", "block_interval": "40s",
	}); err != nil {
		t.Fatal(err)
	}
	bc, err := vault.NewClient(vault.ClientOptions{Address: v.Addr, Token: "root", Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	m, err := vault.NewTokenMinter(vault.TokenMinterOptions{Client: bc})
	if err != nil {
		t.Fatal(err)
	}
	req := func(id string) broker.MintRequest {
		return broker.MintRequest{
			IssuanceID: id, Workload: "payments-api", Owner: "team-payments", SessionID: "ses_r",
			Grant: policies.Grant{Name: "payments-vault", Kind: broker.KindVaultToken, TTL: policies.Duration(time.Minute),
				VaultToken: &policies.VaultTokenGrant{Policies: []string{"payments-read"}}},
			TTL: time.Minute, Now: time.Now(),
		}
	}
	var err2 error
	for i := range 5 { // the first is allowed; a later one is refused
		if _, err2 = m.Mint(ctx, req("iss_01JRATE"+string(rune('A'+i)))); err2 != nil {
			break
		}
	}
	var be *broker.Error
	if !errors.As(err2, &be) {
		t.Fatalf("Mint() = %v, want a rate-limited *broker.Error", err2)
	}
	var re *vaultapi.ResponseError
	if !errors.As(err2, &re) || re.StatusCode != 429 {
		t.Fatalf("Mint() = %v, want Vault's 429", err2)
	}
	if be.Reason != vault.ReasonUnavailable || be.RetryAfter < 30*time.Second || be.RetryAfter > 40*time.Second {
		t.Errorf("Mint() = %v: reason %s, retry after %v; want %s, about 40s (Vault's Retry-After)", err2, be.Reason, be.RetryAfter, vault.ReasonUnavailable)
	}
}
