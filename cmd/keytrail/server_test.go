package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/adapters/vault/devserver"
	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
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

// TestPolicyChangedDuringStartupIsLoaded: the policy is read first thing at
// start-up, and the file watcher starts later (after Vault login, the store,
// the audit log). A change made in between must be loaded: the watcher has
// to compare with the files the policy in force was read from, not with
// what they hold once it starts, or the broker serves the old policy (a
// removed workload keeps its grants) until the next change or SIGHUP.
// Real Vault (harness.StartVault).
func TestPolicyChangedDuringStartupIsLoaded(t *testing.T) {
	vp := harness.StartVault(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()

	// Vault behind a gate: the first request (the broker's login, after
	// the policy was read) waits until the test has changed the policy.
	target, err := url.Parse(vp.Addr)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	arrived, release := make(chan struct{}), make(chan struct{})
	var gate sync.Once
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gate.Do(func() {
			close(arrived)
			select {
			case <-release:
			case <-r.Context().Done():
			}
		})
		rp.ServeHTTP(w, r)
	}))
	defer front.Close()
	var releaseOnce sync.Once
	defer releaseOnce.Do(func() { close(release) })

	polDir := filepath.Join(dir, "policies")
	if err := os.Mkdir(polDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(polDir, "main.yaml"), []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	readyc, errc := goServer(t, ctx, dir, polDir, front.URL, vp.RootToken)
	select {
	case <-arrived:
	case err := <-errc:
		t.Fatalf("server: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("server never called Vault")
	}
	// The policy was read; the broker waits for Vault. Add a file.
	const extra = "version: 1\nworkloads:\n  - name: late\n    owner: team-late\n    match: {issuer: test, subject: late}\n    grants: [payments-vault]\n"
	if err := os.WriteFile(filepath.Join(polDir, "late.yaml"), []byte(extra), 0o600); err != nil {
		t.Fatal(err)
	}
	want, err := policies.Load(polDir)
	if err != nil {
		t.Fatal(err)
	}
	releaseOnce.Do(func() { close(release) })
	base := "http://" + awaitServing(t, readyc, errc)
	defer func() { cancel(); <-errc }()

	// The policy file added during start-up must be loaded (the watcher
	// polls every 2 s).
	waitMetric(t, base, `keytrail_policy_info{hash="`+want.Hash()+`"} 1`, "")
}

// TestPolicyReloadKeepsLastGoodJWKS: while an issuer's JWKS endpoint is
// down, the last good keys are used for a bounded time (ARCHITECTURE.md,
// "Issuer JWKS unreachable"). A policy reload (SIGHUP, or any file change,
// e.g. a new grant for another team) must not drop them: the issuer's key
// source did not change, and dropping them turns a reload during an
// identity-provider outage into 503s for every workload of that issuer.
func TestPolicyReloadKeepsLastGoodJWKS(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	issSrv := httptest.NewServer(iss.Handler())
	defer issSrv.Close()
	iss.URL = issSrv.URL

	polFile := filepath.Join(dir, "policy.yaml")
	writePol := func(grants string) {
		p := strings.NewReplacer("{ISS}", issSrv.URL, "{GRANTS}", grants).Replace(reloadKeysPolicy)
		if err := os.WriteFile(polFile, []byte(p), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writePol("payments-vault")

	rt, _, pol := newPolicyRuntime(t, ctx, dir, polFile)

	tok, err := iss.Token("system:serviceaccount:payments:api", "keytrail", time.Now(), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.state.Load().authn.Authenticate(ctx, tok); err != nil {
		t.Fatalf("before the outage: %v", err)
	}
	iss.SetDown(true) // the identity provider's JWKS endpoint fails from now on
	if _, err := rt.state.Load().authn.Authenticate(ctx, tok); err != nil {
		t.Fatalf("during the outage, before any reload (cached keys): %v", err)
	}

	writePol("payments-vault, payments-db")
	rt.reloadPolicy(ctx, "sighup")
	if rt.state.Load().pol.Hash() == pol.Hash() {
		t.Fatal("the reload did not take the new policy")
	}
	if _, err := rt.state.Load().authn.Authenticate(ctx, tok); err != nil {
		t.Fatalf("during the outage, after a reload that left the issuer unchanged: %v; the last good keys must be kept", err)
	}
}

// newPolicyRuntime builds the brokerRuntime serving the policy at polFile
// as runServer does before it serves: metrics, an audit file sink in dir
// (closed at cleanup) and the policy's verifier in force. It returns the
// runtime, its metrics and the policy loaded.
func newPolicyRuntime(t *testing.T, ctx context.Context, dir, polFile string) (*brokerRuntime, *opsMetrics, *policies.Policy) {
	t.Helper()
	m, err := newOpsMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	sink, err := auditfile.Open(auditfile.Options{Path: filepath.Join(dir, "audit.jsonl")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	rt := &brokerRuntime{cfg: &Config{Policy: polFile}, log: slog.New(slog.DiscardHandler), metrics: m, sink: sink}
	pol, err := loadServedPolicy(polFile, rt.log)
	if err != nil {
		t.Fatal(err)
	}
	v, err := rt.newVerifier(ctx, pol)
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.initPolicy(pol, v); err != nil {
		t.Fatal(err)
	}
	return rt, m, pol
}

const reloadKeysPolicy = reloadPolicyHead + `grants:
  - name: payments-vault
    kind: vault_token
    ttl: 5m
    vault_token: {policies: [payments-read]}
  - name: payments-db
    kind: vault_token
    ttl: 5m
    vault_token: {policies: [payments-db]}
`

// TestServerLeavesNoGoroutine: once runServer has returned, none of the
// goroutines it started is left behind (the watcher of a second signal
// used to wait forever on a channel nobody closes). Real Vault.
func TestServerLeavesNoGoroutine(t *testing.T) {
	_, cancel, errc := serveTestPolicy(t)
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("runServer() = %v", err)
	}
	buf := make([]byte, 1<<20)
	stacks := string(buf[:runtime.Stack(buf, true)])
	for _, g := range strings.Split(stacks, "\n\n") {
		if strings.Contains(g, "cmd/keytrail.runServer") {
			t.Errorf("a goroutine started by runServer is still there after it returned:\n%s", g)
		}
	}
}

// TestServerExitsNonZeroWhenTheFinalCheckpointFails: at shutdown the audit
// log's last lines get their signed checkpoint. When that fails (here: the
// transit mount signing checkpoints is gone) the server must not exit 0 as
// if the log were sealed: runServer returns the error (exit status 1).
func TestServerExitsNonZeroWhenTheFinalCheckpointFails(t *testing.T) {
	vp, cancel, errc := serveTestPolicy(t, func(c *Config) {
		c.Audit.CheckpointTransitKey = devserver.Ed25519Key
	})
	if err := vp.Client.Sys().Unmount(devserver.TransitMount); err != nil {
		t.Fatal(err)
	}
	cancel()
	err := <-errc
	if err == nil || !strings.Contains(err.Error(), "final checkpoint") {
		t.Fatalf("runServer() = %v, want the final checkpoint's failure", err)
	}
}

// serveTestPolicy starts a Vault of its own and, in process, a server of
// serverTestPolicy on it (mods change goServer's configuration), and waits
// until it serves. cancel shuts the server down; runServer's result then
// arrives on errc.
func serveTestPolicy(t *testing.T, mods ...func(*Config)) (vp *harness.Vault, cancel func(), errc chan error) {
	t.Helper()
	vp = harness.StartVault(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	readyc, errc := goServer(t, ctx, dir, pol, vp.Addr, vp.RootToken, mods...)
	awaitServing(t, readyc, errc)
	return vp, cancel, errc
}

// goServer runs runServer in process with a minimal configuration (listen
// on a free port, the policy at policy, Vault at vaultAddr with token, the
// audit log in dir) until ctx ends. The server's address arrives on readyc
// once it serves; runServer's result on errc.
func goServer(t *testing.T, ctx context.Context, dir, policy, vaultAddr, token string, mods ...func(*Config)) (readyc chan string, errc chan error) {
	t.Helper()
	return goServerLog(t, ctx, io.Discard, dir, policy, vaultAddr, token, mods...)
}

// awaitServing waits until the server goServer started serves (up to 60
// s), and returns its address; the test fails if runServer returns first.
func awaitServing(t *testing.T, readyc chan string, errc chan error) (addr string) {
	t.Helper()
	select {
	case addr = <-readyc:
	case err := <-errc:
		t.Fatalf("server: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("server did not start")
	}
	return addr
}

// goServerLog is goServer with the server's log (stderr) on stderr.
func goServerLog(t *testing.T, ctx context.Context, stderr io.Writer, dir, policy, vaultAddr, token string, mods ...func(*Config)) (readyc chan string, errc chan error) {
	t.Helper()
	cfg := &Config{Listen: "127.0.0.1:0", PublicURL: "http://127.0.0.1:7700", Policy: policy,
		Vault: VaultConfig{Address: vaultAddr}, Audit: AuditConfig{File: filepath.Join(dir, "audit.jsonl")},
		Log: LogConfig{Level: "error", Format: "text"}}
	for _, m := range mods {
		m(cfg)
	}
	cfg.applyDefaults()
	if err := cfg.validate("test config"); err != nil {
		t.Fatal(err)
	}
	e := &env{ctx: ctx, stdout: io.Discard, stderr: stderr, getenv: func(k string) string {
		if k == "VAULT_TOKEN" {
			return token
		}
		return ""
	}}
	readyc, errc = make(chan string, 1), make(chan error, 1)
	go func() { errc <- runServer(ctx, e, cfg, func(a string) { readyc <- a }) }()
	return readyc, errc
}
