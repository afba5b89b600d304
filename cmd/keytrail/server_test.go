package main

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/e2e/harness"
)

// serverTestPolicy is a minimal valid policy (no Vault key is named).
const serverTestPolicy = `version: 1
issuers:
  - name: test
    issuer: http://127.0.0.1:1
    jwks_url: http://127.0.0.1:1/jwks.json
    audiences: [keytrail]
    algorithms: [ES256]
workloads:
  - name: payments-api
    owner: team-payments
    match: {issuer: test, subject: payments}
    grants: [payments-vault]
grants:
  - name: payments-vault
    kind: vault_token
    ttl: 5m
    vault_token: {policies: [payments-read]}
`

// TestSIGHUPDuringStartupDoesNotKillServer: SIGHUP reloads the policy
// (SPEC: "reloaded on SIGHUP"), so a SIGHUP that arrives while the server
// is still starting (here: waiting for Vault) must not be the default
// action, which ends the process at once, without a word and without
// closing the audit log. Config reloaders and `systemctl reload` send it
// whenever they like.
func TestSIGHUPDuringStartupDoesNotKillServer(t *testing.T) {
	bin := harness.KeytrailBinary(t)
	dir := t.TempDir()

	arrived, release := make(chan struct{}, 1), make(chan struct{})
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case arrived <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusForbidden)
		_, _ = w.Write([]byte(`{"errors":["permission denied"]}`))
	}))
	defer vault.Close()
	var releaseOnce bool
	defer func() {
		if !releaseOnce {
			close(release)
		}
	}()

	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "keytrail.yaml")
	cfg := "listen: 127.0.0.1:0\npublic_url: http://127.0.0.1:7700\npolicy: " + pol +
		"\nvault: {address: " + vault.URL + ", timeout: 60s}\naudit: {file: " + filepath.Join(dir, "audit.jsonl") + "}\n"
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "keytrail.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	logs := logText{path: logf.Name()}
	cmd := exec.Command(bin, "server", "--config", cfgPath)
	cmd.Env = append(os.Environ(), "VAULT_TOKEN=test-token", "VAULT_ADDR=", "KEYTRAIL_LISTEN=", "KEYTRAIL_REDIS_URL=")
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	defer func() {
		select {
		case <-exited:
		default:
			_ = cmd.Process.Kill()
			<-exited
		}
	}()

	select {
	case <-arrived: // the server is in its start-up, waiting for Vault
	case <-exited:
		t.Fatalf("server exited before reaching Vault: %v\n%s", waitErr, logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("server never called Vault\n%s", logs.String())
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	// Vault now refuses the broker: start-up fails with an error of its own.
	releaseOnce = true
	close(release)
	select {
	case <-exited:
		err = waitErr
	case <-time.After(60 * time.Second):
		t.Fatalf("server did not end after Vault refused it\n%s", logs.String())
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("server exit = %v, want exit status 1 (Vault refused the login)\n%s", err, logs.String())
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		t.Fatalf("server was killed by %v during start-up; a SIGHUP must not end it\n%s", ws.Signal(), logs.String())
	}
	if ee.ExitCode() != 1 || !strings.Contains(logs.String(), "vault") {
		t.Fatalf("server exit = %v, want exit status 1 naming Vault\n%s", err, logs.String())
	}
}

// logText reads a log file a child process writes.
type logText struct{ path string }

func (l logText) String() string {
	b, _ := os.ReadFile(l.path)
	return string(b)
}
