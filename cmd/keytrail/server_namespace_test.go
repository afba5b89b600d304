package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestServerWarnsVaultNamespaceIgnored: keytrail talks to Vault's root
// namespace only (adapters/vault.NewClient clears any namespace), but
// VAULT_NAMESPACE is the standard way Vault Enterprise and HCP Vault users
// select one, and the broker took no notice of it: its requests silently
// went to another namespace than the operator meant. The server now says at
// start-up that it ignores it. Real Vault.
func TestServerWarnsVaultNamespaceIgnored(t *testing.T) {
	vp := harness.StartVault(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &Config{Listen: "127.0.0.1:0", PublicURL: "http://127.0.0.1:7700", Policy: pol,
		Vault: VaultConfig{Address: vp.Addr}, Audit: AuditConfig{File: filepath.Join(dir, "audit.jsonl")},
		Log: LogConfig{Level: "warn", Format: "text"}}
	cfg.applyDefaults()
	if err := cfg.validate("test config"); err != nil {
		t.Fatal(err)
	}
	var logs brokertest.SyncBuffer
	e := &env{ctx: ctx, stdout: &logs, stderr: &logs, getenv: func(k string) string {
		switch k {
		case "VAULT_TOKEN":
			return vp.RootToken
		case "VAULT_NAMESPACE":
			return "admin"
		}
		return ""
	}}
	readyc, errc := make(chan string, 1), make(chan error, 1)
	go func() { errc <- runServer(ctx, e, cfg, func(a string) { readyc <- a }) }()
	select {
	case <-readyc:
	case err := <-errc:
		t.Fatalf("runServer() = %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("server did not start")
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("runServer() = %v", err)
	}
	if out := logs.String(); !strings.Contains(out, "VAULT_NAMESPACE is ignored") || !strings.Contains(out, "admin") {
		t.Errorf("server log does not say that VAULT_NAMESPACE=admin is ignored:\n%s", out)
	}
}
