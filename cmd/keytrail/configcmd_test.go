package main

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestConfigCheck: keytrail config check validates a server configuration
// and its policy as keytrail server does at start-up (same decoder,
// validation and environment overrides), names every problem by file,
// field and line, and contacts nothing: no request reaches Vault, no
// connection Redis, and the audit file is not created.
func TestConfigCheck(t *testing.T) {
	var vaultCalls atomic.Int32
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		vaultCalls.Add(1)
		http.Error(w, "config check must not call Vault", http.StatusTeapot)
	}))
	defer vault.Close()
	redis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer redis.Close()

	dir := t.TempDir()
	pol := writeFile(t, dir, "policy.yaml", serverTestPolicy)
	badPol := writeFile(t, dir, "bad-policy.yaml", strings.Replace(serverTestPolicy, "ttl: 5m", "ttl: 0s", 1))
	auditFile := filepath.Join(dir, "audit.jsonl")
	config := func(policy, extra string) string {
		return "public_url: http://127.0.0.1:7700\n" + // 1
			"policy: " + policy + "\n" + // 2
			"vault: {address: " + vault.URL + "}\n" + // 3
			"store: {redis_url: 'redis://" + redis.Addr().String() + "/0'}\n" + // 4
			"audit: {file: " + auditFile + "}\n" + // 5
			extra
	}
	tests := []struct {
		name       string
		yaml       string
		env        map[string]string
		wantCode   int
		wantOut    []string
		wantStderr []string // lines, each after "<config file>: " unless it starts with "/"
	}{
		{name: "ok/valid", yaml: config(pol, ""),
			wantOut: []string{"ok: config {config} (listen 127.0.0.1:7700, public_url http://127.0.0.1:7700, store redis, audit " + auditFile + ")",
				"ok: policy " + pol + ": 1 issuers, 1 workloads, 1 grants, 0 admins, 0 exceptions (hash "}},
		{name: "ok/env-override", yaml: config(pol, ""), env: map[string]string{"KEYTRAIL_LISTEN": "127.0.0.1:9999"},
			wantOut: []string{"(listen 127.0.0.1:9999,"}},
		{name: "fail/bad-field", yaml: config(pol, "log:\n  level: loud\n"), wantCode: 1,
			wantStderr: []string{"log.level: must be debug, info, warn or error (line 7)"}},
		{name: "fail/unknown-field", yaml: config(pol, "listen_addr: 127.0.0.1:1\n"), wantCode: 1,
			wantStderr: []string{"listen_addr: unknown field (line 6)"}},
		{name: "fail/env-override-named", yaml: config(pol, ""), env: map[string]string{"VAULT_ADDR": "not a url"}, wantCode: 1,
			wantStderr: []string{"vault.address: must be an absolute URL (from VAULT_ADDR)"}},
		{name: "fail/missing-policy", yaml: config(filepath.Join(dir, "nope.yaml"), ""), wantCode: 1,
			wantStderr: []string{"policy: stat " + filepath.Join(dir, "nope.yaml") + ": no such file or directory (line 2)"}},
		{name: "fail/invalid-policy", yaml: config(badPol, ""), wantCode: 1, wantOut: []string{"ok: config {config}"},
			wantStderr: []string{badPol + ": grants[0].ttl: "}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := writeFile(t, t.TempDir(), "keytrail.yaml", tt.yaml)
			out, stderr, err := runCLI(t, tt.env, "config", "check", "--config", cfg)
			if got := exitCode(err); got != tt.wantCode {
				t.Fatalf("config check = %v (exit %d), want exit %d\nstdout: %s\nstderr: %s", err, got, tt.wantCode, out, stderr)
			}
			for _, w := range tt.wantOut {
				if w = strings.ReplaceAll(w, "{config}", cfg); !strings.Contains(out, w) {
					t.Errorf("stdout lacks %q:\n%s", w, out)
				}
			}
			for _, w := range tt.wantStderr {
				if !strings.HasPrefix(w, "/") {
					w = cfg + ": " + w
				}
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr lacks %q:\n%s", w, stderr)
				}
			}
			if tt.wantCode != 0 && len(tt.wantOut) == 0 && out != "" {
				t.Errorf("stdout = %q for an invalid configuration, want nothing", out)
			}
		})
	}
	t.Run("fail/no-such-file", func(t *testing.T) {
		missing := filepath.Join(dir, "missing.yaml")
		_, stderr, err := runCLI(t, nil, "config", "check", "--config", missing)
		if exitCode(err) != 1 || !strings.Contains(err.Error(), "configuration not read") || !strings.Contains(stderr, missing+": no such file or directory") {
			t.Errorf("config check of a missing file = %v (stderr %q), want exit 1, not read, naming the file", err, stderr)
		}
	})
	if n := vaultCalls.Load(); n != 0 {
		t.Errorf("config check sent %d request(s) to Vault, want none", n)
	}
	// A connection attempt made during the checks is queued by now.
	if err := redis.(*net.TCPListener).SetDeadline(time.Now()); err != nil {
		t.Fatal(err)
	}
	if c, err := redis.Accept(); err == nil {
		c.Close()
		t.Errorf("config check connected to Redis, want no connection")
	} else if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
		t.Fatalf("accept: %v", err)
	}
	if _, err := os.Stat(auditFile); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("audit file after config check: %v, want it not created", err)
	}
}

func TestConfigCheckHelp(t *testing.T) {
	out, _, err := runCLI(t, nil, "config", "check", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--config", "KEYTRAIL_LISTEN", "VAULT_ADDR", "KEYTRAIL_REDIS_URL", "file, field and line",
		"Nothing is contacted or written", "Exit status: 0", "2 usage"} {
		if !strings.Contains(out, want) {
			t.Errorf("keytrail config check --help lacks %q", want)
		}
	}
}
