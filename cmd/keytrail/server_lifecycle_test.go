package main

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
)

// TestBadListenerFailsBeforeVault: the listener was bound, the serving
// key pair loaded and pprof's listener bound only after the whole start-up
// (Vault login, store, audit log, reconciler, the start's policy_load
// event): a taken port or a bad certificate was found after all that,
// with the audit log opened and written. They are now checked first: the
// start-up fails before Vault is asked anything and before the audit log
// is created.
func TestBadListenerFailsBeforeVault(t *testing.T) {
	var vaultCalls atomic.Int64
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		vaultCalls.Add(1)
		http.Error(w, `{"errors":["test vault"]}`, http.StatusInternalServerError)
	}))
	defer vault.Close()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, tc := range []struct {
		name string
		mod  func(c *Config, dir string)
		want string
	}{
		{"fail/listen-taken", func(c *Config, _ string) { c.Listen = taken.Addr().String() }, "listen"},
		{"fail/pprof-taken", func(c *Config, _ string) { c.PprofListen = taken.Addr().String() }, "pprof_listen"},
		{"fail/bad-key-pair", func(c *Config, dir string) {
			cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
			for _, f := range []string{cert, key} {
				if err := os.WriteFile(f, []byte("not PEM\n"), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			c.TLS = &TLSConfig{CertFile: cert, KeyFile: key}
		}, "tls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vaultCalls.Store(0)
			dir := t.TempDir()
			pol := filepath.Join(dir, "policy.yaml")
			if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
				t.Fatal(err)
			}
			auditPath := filepath.Join(dir, "audit.jsonl")
			cfg := &Config{Listen: "127.0.0.1:0", PublicURL: "http://127.0.0.1:7700", Policy: pol,
				Vault: VaultConfig{Address: vault.URL}, Audit: AuditConfig{File: auditPath},
				Log: LogConfig{Level: "info", Format: "text"}}
			tc.mod(cfg, dir)
			cfg.applyDefaults()
			var logs brokertest.SyncBuffer
			e := &env{ctx: context.Background(), stdout: &logs, stderr: &logs, getenv: func(k string) string {
				return map[string]string{"VAULT_TOKEN": "test-token"}[k]
			}}
			done := make(chan error, 1)
			go func() { done <- runServer(context.Background(), e, cfg, nil) }()
			select {
			case err = <-done:
			case <-time.After(60 * time.Second):
				t.Fatalf("runServer did not return\n%s", logs.String())
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("runServer() = %v, want an error naming %s\n%s", err, tc.want, logs.String())
			}
			if n := vaultCalls.Load(); n != 0 {
				t.Errorf("Vault got %d requests from a start-up that could not listen, want none: the listener must be checked first\n%s", n, logs.String())
			}
			if _, err := os.Stat(auditPath); !os.IsNotExist(err) {
				t.Errorf("audit log %s: %v, want none created by a start-up that could not listen\n%s", auditPath, err, logs.String())
			}
		})
	}
}
