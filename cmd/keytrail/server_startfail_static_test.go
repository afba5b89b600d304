package main

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestFailedStartupKeepsOperatorToken pins the other side of
// TestFailedStartupRevokesItsLoginToken: a token the operator gave
// (VAULT_TOKEN, vault.token_file) is not the broker's to revoke, and a
// start-up that failed after using it leaves it valid.
func TestFailedStartupKeepsOperatorToken(t *testing.T) {
	vp := harness.StartVault(t)
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, how := range []string{"VAULT_TOKEN", "token_file"} {
		t.Run(how, func(t *testing.T) {
			sec, err := vp.Client.Auth().Token().Create(&vaultapi.TokenCreateRequest{})
			if err != nil {
				t.Fatal(err)
			}
			tok := sec.Auth.ClientToken
			vars := map[string]string{envReconcile: "off"}
			cfg := &Config{Listen: taken.Addr().String(), PublicURL: "http://127.0.0.1:7700", Policy: pol,
				Vault: VaultConfig{Address: vp.Addr},
				Audit: AuditConfig{File: filepath.Join(t.TempDir(), "audit.jsonl")}, Log: LogConfig{Level: "info", Format: "text"}}
			if how == "VAULT_TOKEN" {
				vars["VAULT_TOKEN"] = tok
			} else {
				cfg.Vault.TokenFile = filepath.Join(t.TempDir(), "token")
				if err := os.WriteFile(cfg.Vault.TokenFile, []byte(tok), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			cfg.applyDefaults()
			if err := cfg.validate("test config"); err != nil {
				t.Fatal(err)
			}
			var logs brokertest.SyncBuffer
			e := &env{ctx: context.Background(), stdout: &logs, stderr: &logs, getenv: func(k string) string { return vars[k] }}
			err = runServer(context.Background(), e, cfg, nil)
			if err == nil || !strings.Contains(err.Error(), "listen") {
				t.Fatalf("runServer() = %v, want the listen failure\n%s", err, logs.String())
			}
			if _, err := vp.Client.Auth().Token().Lookup(tok); err != nil {
				t.Errorf("the operator's token (%s) after a start-up that failed: lookup = %v, want it still valid\n%s", how, err, logs.String())
			}
		})
	}
}
