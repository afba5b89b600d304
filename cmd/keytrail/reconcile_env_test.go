package main

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReconcileEnvCheckedBeforeStart: a bad KEYTRAIL_RECONCILE,
// KEYTRAIL_RECONCILE_INTERVAL or KEYTRAIL_RECONCILE_GRACE was refused only
// by startReconciler, after the Vault login:
// with no Vault at the address the server said "vault login: ... connection
// refused" instead, and 'config check', which reads the server's other
// variables (VAULT_ADDR, VAULT_TOKEN, ...), said ok. The server now refuses
// them before anything starts (here: before the login that would fail),
// dev before it creates --dir or starts anything, and config check reports
// them as a problem (exit 1). KEYTRAIL_RECONCILE=off (any case) still turns
// the reconciliation off without the other two being read.
func TestReconcileEnvCheckedBeforeStart(t *testing.T) {
	addrs := closedLoopbackAddrs(t, 2) // distinct: both bound at once
	vaultAddr := "http://" + addrs[0]
	listen := addrs[1]
	dir := t.TempDir()
	pol := writeFile(t, dir, "p.yaml", "version: 1\n")
	auditFile := filepath.Join(dir, "audit.jsonl")
	cfg := writeFile(t, dir, "config.yaml", "listen: "+listen+"\npublic_url: http://"+listen+
		"\npolicy: "+pol+"\naudit: {file: "+auditFile+"}\nvault: {address: "+vaultAddr+"}\n")
	for _, tc := range []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{envReconcile: "false"}, `KEYTRAIL_RECONCILE="false"`},
		{map[string]string{envReconcileGrace: "soon"}, "KEYTRAIL_RECONCILE_GRACE"},
		{map[string]string{envReconcile: "on", envReconcileInterval: "0s"}, "KEYTRAIL_RECONCILE_INTERVAL"},
	} {
		env := map[string]string{"VAULT_TOKEN": "hvs.x"}
		for k, v := range tc.env {
			env[k] = v
		}
		getenv := func(k string) string { return env[k] }

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		var out, errb strings.Builder
		err := run(ctx, []string{"server", "--config", cfg}, getenv, &out, &errb)
		cancel()
		if err == nil || !strings.Contains(err.Error(), tc.want) || strings.Contains(err.Error(), "vault login") {
			t.Errorf("server with %v = %v, want an error naming %s before the Vault login", tc.env, err, tc.want)
		}
		if _, err := os.Stat(auditFile); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("server with %v opened the audit log (%v)", tc.env, err)
		}

		_, stderr, err := runCLI(t, env, "config", "check", "--config", cfg)
		if c := exitCode(err); c != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("config check with %v = exit %d (%v), stderr %q; want exit 1 naming %s", tc.env, c, err, stderr, tc.want)
		}

		state := filepath.Join(dir, "dev-state")
		_, stderr, err = runCLI(t, env, "dev", "--dir", state, "--policy", pol, "--vault-bin", filepath.Join(dir, "no-vault"), "--listen", listen)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("dev with %v = %v, want an error naming %s", tc.env, err, tc.want)
		}
		if strings.Contains(stderr, "starting Vault") || strings.Contains(stderr, "stopped") {
			t.Errorf("dev with %v started something: %q", tc.env, stderr)
		}
		if _, err := os.Stat(state); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("dev with %v created %s (%v)", tc.env, state, err)
		}
	}
	// off, in any case, is accepted (the other two then unread) by config check.
	for _, v := range []string{"off", "OFF"} {
		env := map[string]string{"VAULT_TOKEN": "hvs.x", envReconcile: v, envReconcileGrace: "soon"}
		if _, stderr, err := runCLI(t, env, "config", "check", "--config", cfg); err != nil {
			t.Errorf("config check with KEYTRAIL_RECONCILE=%s = %v (%q), want ok", v, err, stderr)
		}
	}
}
