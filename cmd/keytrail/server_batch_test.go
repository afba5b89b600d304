package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/e2e/harness"
)

// jwtOnlyTestPolicy needs no token creation from the broker's Vault token:
// only transit reads and signatures.
const jwtOnlyTestPolicy = `version: 1
issuers:
  - name: test
    issuer: http://127.0.0.1:1
    jwks_url: http://127.0.0.1:1/jwks.json
    audiences: [keytrail]
    algorithms: [ES256]
workloads:
  - name: orders-api
    owner: team-orders
    match: {issuer: test, subject: orders}
    grants: [orders-jwt]
grants:
  - name: orders-jwt
    kind: jwt
    ttl: 5m
    jwt: {audience: orders, transit_key: ` + harness.VaultSigningKey + `}
`

// TestServerRefusesBatchVaultTokenForTokenGrants: Vault answers "batch
// tokens cannot create more tokens" to every create-orphan (and token role)
// call made with a batch token, so a broker logged in with one (an AppRole
// or Kubernetes role with token_type=batch, a batch token file) cannot serve
// a single vault_token or vault_dynamic exchange. It must refuse to start,
// saying why, instead of starting ready and answering 503 to each of them. A
// policy without such grants (jwt only) works with a batch token. Real Vault.
func TestServerRefusesBatchVaultTokenForTokenGrants(t *testing.T) {
	vp := harness.StartVault(t)
	// Everything but root (a batch token cannot carry root).
	if err := vp.Client.Sys().PutPolicyWithContext(context.Background(), "everything",
		`path "*" { capabilities = ["create", "read", "update", "delete", "list", "sudo"] }`); err != nil {
		t.Fatal(err)
	}
	bt, err := vp.Client.Auth().Token().CreateOrphanWithContext(context.Background(), &vaultapi.TokenCreateRequest{
		Type: "batch", Policies: []string{"everything"}, TTL: "10m",
	})
	if err != nil {
		t.Fatal(err)
	}
	batch := bt.Auth.ClientToken
	for _, tc := range []struct {
		name, policy, wantErr string // wantErr "" = the server starts
	}{
		{"fail/vault-token-grant", serverTestPolicy, "batch token"},
		{"ok/jwt-only", jwtOnlyTestPolicy, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			dir := t.TempDir()
			pol := filepath.Join(dir, "policy.yaml")
			if err := os.WriteFile(pol, []byte(tc.policy), 0o600); err != nil {
				t.Fatal(err)
			}
			readyc, errc := goServer(t, ctx, dir, pol, vp.Addr, batch)
			select {
			case addr := <-readyc:
				if tc.wantErr == "" {
					// A reload that adds a vault_token grant is refused
					// as the start-up is: the policy in force stays.
					if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
						t.Fatal(err)
					}
					waitMetric(t, "http://"+addr, `keytrail_policy_reloads_total{outcome="error"} 1`, `keytrail_policy_reloads_total{outcome="ok"}`)
				}
				cancel()
				<-errc
				if tc.wantErr != "" {
					t.Fatalf("server started with a batch Vault token and a vault_token grant; want a start-up error containing %q", tc.wantErr)
				}
			case err := <-errc:
				if tc.wantErr == "" || err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), "payments-vault") {
					t.Fatalf("runServer() = %v, want %s", err, map[bool]string{true: "a start", false: "an error naming the batch token and grant payments-vault"}[tc.wantErr == ""])
				}
				if strings.Contains(err.Error(), batch) {
					t.Errorf("the error carries the token")
				}
			case <-time.After(60 * time.Second):
				t.Fatal("server neither started nor failed")
			}
		})
	}
}

// waitMetric polls base's /metrics (the policy watcher polls every 2 s)
// until it has the line want, failing when it shows bad (a line prefix)
// first or when 20 s pass.
func waitMetric(t *testing.T, base, want, bad string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, line := range strings.Split(string(b), "\n") {
			if line == want {
				return
			}
			if bad != "" && strings.HasPrefix(line, bad) {
				t.Fatalf("/metrics has %q, want %q", line, want)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("/metrics never had %q", want)
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-t.Context().Done():
			t.Fatal(t.Context().Err())
		}
	}
}
