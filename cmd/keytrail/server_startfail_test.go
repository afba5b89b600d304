package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestFailedStartupRevokesItsLoginToken: a start-up that logged in to
// Vault with AppRole and then failed (here: its audit log cannot be
// created; a taken listen address fails before the login now)
// left the token of that login valid for its TTL (an AppRole's default is
// Vault's, 32 days): a broker in a crash loop piled up a token per start.
// Nothing was served with it and nobody else holds it, so it is revoked
// (revoke-self) before runServer returns. One that served keeps it.
func TestFailedStartupRevokesItsLoginToken(t *testing.T) {
	vp := harness.StartVault(t)
	c := vp.Client
	dir := t.TempDir()
	roleFile, secretFile := approleLogin(t, c, "kt-startfail", dir)
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	// A regular file where the audit log's directory should be.
	blocker := filepath.Join(dir, "not-a-dir")
	if err := os.WriteFile(blocker, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	tokens := func() int { t.Helper(); return vaultTokenCount(t, c) }
	before := tokens()
	var logs brokertest.SyncBuffer
	e := &env{ctx: context.Background(), stdout: &logs, stderr: &logs, getenv: func(k string) string {
		return map[string]string{envReconcile: "off"}[k]
	}}
	cfg := &Config{Listen: "127.0.0.1:0", PublicURL: "http://127.0.0.1:7700", Policy: pol,
		Vault: VaultConfig{Address: vp.Addr, Auth: &VaultAuthConfig{Method: "approle", RoleIDFile: roleFile, SecretIDFile: secretFile}},
		Audit: AuditConfig{File: filepath.Join(blocker, "audit.jsonl")}, Log: LogConfig{Level: "info", Format: "text"}}
	cfg.applyDefaults()
	if err := cfg.validate("test config"); err != nil {
		t.Fatal(err)
	}
	err := runServer(context.Background(), e, cfg, nil)
	if err == nil || !strings.Contains(err.Error(), "audit") {
		t.Fatalf("runServer() = %v, want the audit log's failure\n%s", err, logs.String())
	}
	if !strings.Contains(logs.String(), `msg="vault login"`) {
		t.Fatalf("the start-up did not log in before it failed\n%s", logs.String())
	}
	if after := tokens(); after != before {
		t.Errorf("Vault tokens: %d before a start-up that failed, %d after: its AppRole login's token was left valid\n%s", before, after, logs.String())
	}

	// A broker that served keeps its token at shutdown: credentials
	// minted without an orphan token_role are its children.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg.Audit.File = filepath.Join(dir, "audit.jsonl")
	errc := make(chan error, 1)
	go func() { errc <- runServer(ctx, e, cfg, func(string) { cancel() }) }()
	if err := <-errc; err != nil {
		t.Fatalf("runServer() = %v\n%s", err, logs.String())
	}
	if after := tokens(); after != before+1 {
		t.Errorf("Vault tokens: %d before a broker served and shut down, %d after, want its login's token kept\n%s", before, after, logs.String())
	}
}
