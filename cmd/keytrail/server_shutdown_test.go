package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/e2e/harness"
)

// gatedVault puts a reverse proxy in front of vp: once hold is set, each
// request it holds signals arrived and waits until release is closed, its
// delay (if any) has passed, or its caller gives up. startGatedVault holds
// sys/health: /readyz asks it first, so a /readyz request can be held in
// flight for as long as a test needs; startGatedVaultOn holds the requests
// a test picks (a slow or hung transit sign, for a mint in flight).
type gatedVault struct {
	URL      string
	hold     atomic.Bool
	arrived  chan struct{}
	release  chan struct{}
	released sync.Once
}

func startGatedVault(t *testing.T, vp *harness.Vault) *gatedVault {
	t.Helper()
	// Only /readyz's health check is held: the clock watch's reading
	// of Vault's time (sys/health too, with standbyok=true) runs in
	// the background at start-up, and holding it instead would let
	// the test believe a request was in flight when none was.
	return startGatedVaultOn(t, vp, func(r *http.Request) bool {
		return strings.HasPrefix(r.URL.Path, "/v1/sys/health") && r.URL.Query().Get("standbyok") == ""
	}, 0)
}

// isTransitSign picks the transit signs, which a JWT mint asks Vault for.
func isTransitSign(r *http.Request) bool { return strings.HasPrefix(r.URL.Path, "/v1/transit/sign/") }

// startGatedVaultOn is startGatedVault holding the requests held picks; a
// delay above 0 lets each go on after that long (a slow Vault) if release
// has not been closed first. The proxy closes at the test's end, after
// release is closed.
func startGatedVaultOn(t *testing.T, vp *harness.Vault, held func(*http.Request) bool, delay time.Duration) *gatedVault {
	t.Helper()
	target, err := url.Parse(vp.Addr)
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedVault{arrived: make(chan struct{}, 1), release: make(chan struct{})}
	rp := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.hold.Load() && held(r) {
			select {
			case g.arrived <- struct{}{}:
			default:
			}
			var after <-chan time.Time // nil, never ready, without a delay
			if delay > 0 {
				after = time.After(delay)
			}
			select {
			case <-g.release:
			case <-after:
			case <-r.Context().Done():
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	t.Cleanup(g.open)
	g.URL = front.URL
	return g
}

func (g *gatedVault) open() { g.released.Do(func() { close(g.release) }) }

// TestServerExitsNonZeroWhenShutdownTimesOut: a request still running when
// shutdown_timeout ends is cut off. That stop is not clean, and a
// supervisor (systemd, Kubernetes) sees it only in the exit status:
// runServer must return an error (exit status 1), not nil after logging
// "shutdown incomplete". The request held in flight is a /readyz whose
// Vault health check waits at a gate.
func TestServerExitsNonZeroWhenShutdownTimesOut(t *testing.T) {
	vp := harness.StartVault(t)
	gate := startGatedVault(t, vp)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, errc := startTestServer(t, ctx, gate.URL, vp.RootToken, func(c *Config) {
		c.ShutdownTimeout = duration(200 * time.Millisecond)
	})

	gate.hold.Store(true)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	go func() {
		resp, err := client.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-gate.arrived: // /readyz is in flight, waiting for Vault
	case err := <-errc:
		t.Fatalf("server ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("/readyz never asked Vault")
	}
	cancel()
	var err error
	select {
	case err = <-errc:
	case <-time.After(30 * time.Second):
		t.Fatal("runServer did not return after shutdown_timeout")
	}
	if err == nil || !strings.Contains(err.Error(), "shutdown incomplete") || !strings.Contains(err.Error(), "shutdown_timeout") {
		t.Fatalf("runServer() = %v after a request outlived shutdown_timeout, want an error saying the shutdown was incomplete (exit status 1)", err)
	}
}

// readyzAnswer is one GET /readyz on a new connection.
func readyzAnswer(base string) (status int, errCode string, closed bool, err error) {
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Get(base + "/readyz")
	if err != nil {
		return 0, "", false, err
	}
	defer resp.Body.Close()
	var body struct {
		Error string `json:"error"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return resp.StatusCode, body.Error, resp.Close, nil
}

// waitShuttingDown polls /readyz (new connections) until it answers 503
// "shutting down", failing on a refused connection (the listener closed
// instead of draining) or when the deadline passes.
func waitShuttingDown(t *testing.T, base string, deadline time.Time, logs func() string) {
	t.Helper()
	for {
		st, code, _, err := readyzAnswer(base)
		switch {
		case err != nil:
			t.Fatalf("GET /readyz after SIGTERM: %v; the listener must keep serving during shutdown_drain\n%s", err, logs())
		case st == http.StatusServiceUnavailable && code == httpapi.ReadyShuttingDown:
			return
		case st != http.StatusOK:
			t.Fatalf("/readyz after SIGTERM = %d %q, want 503 %q\n%s", st, code, httpapi.ReadyShuttingDown, logs())
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz still 200 long after SIGTERM, want 503 %q\n%s", httpapi.ReadyShuttingDown, logs())
		}
		<-time.After(20 * time.Millisecond)
	}
}

// TestServerDrainsBeforeShutdown: with shutdown_drain, a SIGTERM first
// turns /readyz to 503 "shutting down" while the listener keeps serving
// (new connections included; each response closes its connection, so
// keep-alive clients reconnect through the load balancer), and only after
// the drain does the shutdown proper start. Before, the listener closed at
// once: requests a load balancer still sent were refused.
func TestServerDrainsBeforeShutdown(t *testing.T) {
	const drain = 3 * time.Second
	vp := harness.StartVault(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, errc := startTestServer(t, ctx, vp.Addr, vp.RootToken, func(c *Config) {
		c.ShutdownDrain = duration(drain)
	})
	base := "http://" + addr
	if st, code, _, err := readyzAnswer(base); err != nil || st != http.StatusOK {
		t.Fatalf("/readyz before the shutdown = %d %q %v, want 200", st, code, err)
	}

	cancel() // SIGTERM
	stopped := time.Now()
	waitShuttingDown(t, base, stopped.Add(drain), func() string { return "" })
	// Every other route keeps answering, on a new connection too, and
	// closes the connection after the response.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 10 * time.Second}
	resp, err := client.Get(base + "/healthz")
	if err != nil {
		t.Fatalf("GET /healthz during the drain: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !resp.Close {
		t.Errorf("GET /healthz during the drain = %d (Connection: close %v), want 200 closing the connection", resp.StatusCode, resp.Close)
	}

	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("runServer() = %v after the drain, want nil", err)
		}
	case <-time.After(drain + 30*time.Second):
		t.Fatal("runServer did not return after the drain")
	}
	if took := time.Since(stopped); took < drain {
		t.Errorf("runServer returned %v after the shutdown began, before shutdown_drain (%v) ended", took, drain)
	}
}

// TestSecondSignalEndsTheDrain: a second SIGTERM during shutdown_drain
// exits at once (status 1), as it does during the shutdown proper; an
// operator or kubelet does not have to wait out the drain. Real binary.
func TestSecondSignalEndsTheDrain(t *testing.T) {
	vp := harness.StartVault(t)
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", harness.FreePort(t))
	cfg := filepath.Join(dir, "keytrail.yaml")
	if err := os.WriteFile(cfg, []byte("listen: "+strings.TrimPrefix(base, "http://")+"\npublic_url: "+base+"\npolicy: "+pol+
		"\nvault: {address: "+vp.Addr+"}\naudit: {file: "+filepath.Join(dir, "audit.jsonl")+"}\nshutdown_drain: 10m\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k := harness.StartKeytrail(t, base, cfg, "VAULT_TOKEN="+vp.RootToken, "VAULT_ADDR=", "KEYTRAIL_LISTEN=", "KEYTRAIL_REDIS_URL=")
	if err := k.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitShuttingDown(t, base, time.Now().Add(30*time.Second), k.Logs)
	if err := k.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-k.Done():
	case <-time.After(30 * time.Second):
		t.Fatalf("a second SIGTERM during the drain did not end the server\n%s", k.Logs())
	}
	var ee *exec.ExitError
	if err := k.Stop(); !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("exit after a second SIGTERM = %v, want exit status 1\n%s", err, k.Logs())
	}
}

// TestNoPolicyReloadDuringShutdown: a SIGHUP received during
// shutdown_drain reloaded the policy (and wrote its policy_load event)
// while the broker was going away. Once the shutdown has begun no reload
// starts, from SIGHUP or from a change of the policy files: each is logged
// at INFO, and the audit log has no policy_load event after the start.
func TestNoPolicyReloadDuringShutdown(t *testing.T) {
	const drain = 8 * time.Second
	vp := harness.StartVault(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	auditPath := filepath.Join(dir, "audit.jsonl")
	var logs brokertest.SyncBuffer
	e := &env{ctx: ctx, stdout: io.Discard, stderr: &logs, getenv: func(k string) string {
		return map[string]string{"VAULT_TOKEN": vp.RootToken, envReconcile: "off"}[k]
	}}
	cfg := &Config{Listen: "127.0.0.1:0", PublicURL: "http://127.0.0.1:7700", Policy: pol,
		Vault: VaultConfig{Address: vp.Addr}, Audit: AuditConfig{File: auditPath},
		Log: LogConfig{Level: "info", Format: "text"}, ShutdownDrain: duration(drain)}
	cfg.applyDefaults()
	if err := cfg.validate("test config"); err != nil {
		t.Fatal(err)
	}
	readyc, done := make(chan string, 1), make(chan struct{})
	var runErr error
	go func() { defer close(done); runErr = runServer(ctx, e, cfg, func(a string) { readyc <- a }) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(drain + 60*time.Second):
		}
	})
	var base string
	select {
	case a := <-readyc:
		base = "http://" + a
	case <-done:
		t.Fatalf("server: %v", runErr)
	case <-time.After(60 * time.Second):
		t.Fatal("server did not start")
	}

	cancel() // SIGTERM
	waitShuttingDown(t, base, time.Now().Add(drain), logs.String)
	if err := syscall.Kill(os.Getpid(), syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	handled := func(why string) func() bool {
		return func() bool {
			l := logs.String()
			return strings.Contains(l, `msg="policy reloaded" why=`+why) ||
				strings.Contains(l, `msg="policy reload not started: shutting down" why=`+why)
		}
	}
	waitReload(t, "the SIGHUP received during the drain is handled", handled("sighup"), &logs)
	// A change of the files, seen by the watcher's next poll (2 s).
	writeAtomically(t, pol, serverTestPolicy+"\n# changed during the drain\n")
	waitReload(t, "the policy change made during the drain is handled", handled("file_change"), &logs)
	if l := logs.String(); strings.Contains(l, "policy reloaded") {
		t.Errorf("a policy reload ran during shutdown_drain, want none\n%s", l)
	}
	for _, l := range strings.Split(logs.String(), "\n") {
		if strings.Contains(l, "policy reload not started") && !strings.Contains(l, "level=INFO") {
			t.Errorf("log line %q, want it at INFO", l)
		}
	}

	select {
	case <-done:
		if runErr != nil {
			t.Fatalf("runServer() = %v, want a clean shutdown", runErr)
		}
	case <-time.After(drain + 60*time.Second):
		t.Fatalf("runServer did not return after the drain\n%s", logs.String())
	}
	raw, err := os.ReadFile(auditPath)
	if err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(raw, []byte(`"type":"policy_load"`)); n != 1 {
		t.Errorf("audit log has %d policy_load events, want 1 (the start's): a reload ran during the shutdown", n)
	}
}
