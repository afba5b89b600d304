package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/e2e/harness"
)

// TestReadyzFailsWhenVaultRefusesTheBrokerToken: with the broker's own
// Vault token revoked (or expired) Vault still answers sys/health, but every
// mint fails (503 vault_denied). /readyz must say so too, so that a load
// balancer and an operator see the broker as unable to serve, and turn ready
// again without a restart once a working token is back.
func TestReadyzFailsWhenVaultRefusesTheBrokerToken(t *testing.T) {
	vp := harness.StartVault(t)
	sec, err := vp.Client.Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{"root"}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(sec.Auth.ClientToken), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	readyc, errc := goServer(t, ctx, dir, pol, vp.Addr, "", func(c *Config) { c.Vault.TokenFile = tokenFile })
	var addr string
	select {
	case addr = <-readyc:
	case err := <-errc:
		t.Fatalf("server: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("server did not start")
	}
	readyz := func() (int, string) {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			t.Fatalf("GET /readyz: %v", err)
		}
		defer resp.Body.Close()
		var body struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.Error
	}
	if st, _ := readyz(); st != 200 {
		t.Fatalf("/readyz = %d before the revocation, want 200", st)
	}
	if err := vp.Client.Auth().Token().RevokeTree(sec.Auth.ClientToken); err != nil {
		t.Fatal(err)
	}
	if st, why := readyz(); st != 503 || why != "vault unavailable" {
		t.Errorf("/readyz with the broker's token revoked = %d %q, want 503 %q", st, why, "vault unavailable")
	}
	// A new token in the token file: ready again, without a restart.
	sec2, err := vp.Client.Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{"root"}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte(sec2.Auth.ClientToken), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, _ := readyz()
		if st == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz = %d 30s after a new token was written, want 200", st)
		}
		<-time.After(100 * time.Millisecond)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("runServer() = %v", err)
	}
}
