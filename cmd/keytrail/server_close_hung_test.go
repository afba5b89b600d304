package main

import (
	"context"
	"errors"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
)

// brokenListener is a listener whose Accept fails at once: srv.Serve
// returns an error before the broker serves.
type brokenListener struct{ net.Listener }

func (brokenListener) Accept() (net.Conn, error) { return nil, errors.New("accept: listener broken") }

// hungClose is a runServer started by startHungClose.
type hungClose struct {
	c       *vaultapi.Client // the Vault's
	before  int              // Vault tokens before the start-up
	logs    *brokertest.SyncBuffer
	exited  chan int        // e.exit's status
	done    <-chan struct{} // closed when runServer returns
	closing chan struct{}   // closed once the audit sink's Close hangs
	runErr  func() error    // runServer's error, once done
	// release lets the audit sink's Close return (safe to call more
	// than once; the test's cleanup calls it).
	release func()
}

// startHungClose starts runServer (ctx) logged in with AppRole (Vault
// policy policy), its audit sink's Close hanging (as on an audit disk
// that hangs) until release or the test's end; edit, if set, changes the
// configuration and env first.
func startHungClose(t *testing.T, ctx context.Context, policy string, edit func(*Config, *env)) *hungClose {
	t.Helper()
	vp := harness.StartVault(t)
	r := &hungClose{c: vp.Client, closing: make(chan struct{})}
	dir := t.TempDir()
	roleFile, secretFile := approleLogin(t, r.c, policy, dir)
	r.before = vaultTokenCount(t, r.c)
	cfg := startupDeadlineConfig(t, dir, vp.Addr, func(cfg *Config) {
		cfg.Vault.Auth = &VaultAuthConfig{Method: "approle", RoleIDFile: roleFile, SecretIDFile: secretFile}
	})
	// No startup_timeout: the bounds are those of the close.
	cfg.StartupTimeout = new(duration)
	var e *env
	r.logs, r.exited, e = hardExitEnv()
	e.getenv = func(k string) string { return map[string]string{envReconcile: "off"}[k] }
	releasec := make(chan struct{})
	var once sync.Once
	r.release = func() { once.Do(func() { close(releasec) }) }
	e.auditClosing = func() {
		close(r.closing)
		<-releasec
	}
	if edit != nil {
		edit(cfg, e)
	}
	done, runErr := goRunServer(ctx, e, cfg)
	r.done, r.runErr = done, runErr
	t.Cleanup(func() {
		r.release()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
		}
	})
	return r
}

// hungCloseRun is startHungClose returning once the Close hangs, with
// the Vault client, the number of Vault tokens before the start-up, the
// log, the exit channel, runServer's done and closing.
func hungCloseRun(t *testing.T, ctx context.Context, policy string, edit func(*Config, *env)) (c *vaultapi.Client, before int, logs *brokertest.SyncBuffer, exited chan int, done, closing <-chan struct{}) {
	t.Helper()
	r := startHungClose(t, ctx, policy, edit)
	return r.c, r.before, r.logs, r.exited, r.done, r.closing
}

// awaitHardExit waits for the exit (e.exit) of a runServer whose close
// hangs, within the bound, and checks its status is 1; what names the
// run in the failure.
func awaitHardExit(t *testing.T, logs *brokertest.SyncBuffer, exited <-chan int, done <-chan struct{}, within time.Duration, what string) {
	t.Helper()
	select {
	case code := <-exited:
		if code != 1 {
			t.Errorf("exit status %d, want 1", code)
		}
	case <-done:
		t.Fatalf("runServer returned while its audit sink's Close hangs\n%s", logs.String())
	case <-time.After(within):
		t.Fatalf("no exit within %v of %s\n%s", within, what, logs.String())
	}
}

// awaitClosing waits until the runtime's close reaches the audit sink's
// Close (which hangs).
func awaitClosing(t *testing.T, logs *brokertest.SyncBuffer, done, closing <-chan struct{}) {
	t.Helper()
	select {
	case <-closing:
	case <-done:
		t.Fatalf("runServer returned without closing its audit sink\n%s", logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("the runtime's close never reached its audit sink\n%s", logs.String())
	}
}

// TestServeFailedBeforeServingHungCloseExitsAndRevokes: a broker whose
// Serve failed before it served (its listener broken) closed its runtime
// with no bound: its audit sink's Close hanging (a hung audit disk), it
// waited for ever for a second signal that nothing would send, its
// AppRole login's token valid. It now exits as a failed start-up does:
// startupCloseGrace later, an ERROR with the serve error, the login's
// token (nothing was served with it) revoked first, exit status 1.
func TestServeFailedBeforeServingHungCloseExitsAndRevokes(t *testing.T) {
	c, before, logs, exited, done, closing := hungCloseRun(t, context.Background(), "kt-servefail", func(cfg *Config, e *env) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		e.listener = brokenListener{ln}
	})
	awaitClosing(t, logs, done, closing)
	awaitHardExit(t, logs, exited, done, 45*time.Second, "a broker whose Serve failed before serving and whose close hangs (grace 2s)")
	if after := vaultTokenCount(t, c); after != before {
		t.Errorf("Vault tokens: %d before the start-up, %d after the exit: the unserved login's token was left valid\n%s", before, after, logs.String())
	}
	l := logs.String()
	if !strings.Contains(l, `level=ERROR msg="serving failed before it began and its close did not end: exiting now, the audit log left as it is (no checkpoint written)" waited=2s error="serve: accept: listener broken"`) {
		t.Errorf("the hard exit's ERROR (with the serve error) is not logged\n%s", l)
	}
	if !strings.Contains(l, `msg="serving failed before it began: revoked the Vault token the broker logged in for"`) {
		t.Errorf("the revocation's line does not name its cause\n%s", l)
	}
}

// TestServedShutdownHungCloseExitsWithoutRevoking: the close at the end
// of a shutdown after serving (its audit sink's Close hanging: a hung
// audit disk) waited for ever unless a second signal came. It is now
// bounded (shutdownCloseGrace): an ERROR naming the step it waited for,
// exit status 1. The login's token is left valid: the broker served with
// it, and the credentials and leases it made are its children.
func TestServedShutdownHungCloseExitsWithoutRevoking(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c, before, logs, exited, done, closing := hungCloseRun(t, ctx, "kt-servedhung", func(cfg *Config, e *env) {
		e.shutdownCloseGrace = 2 * time.Second
	})
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(logs.String(), "keytrail serving") {
		if time.Now().After(deadline) {
			t.Fatalf("the broker never served\n%s", logs.String())
		}
		select {
		case <-done:
			t.Fatalf("runServer returned before serving\n%s", logs.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	if n := vaultTokenCount(t, c); n != before+1 {
		t.Fatalf("Vault tokens: %d before the start-up, %d serving, want its login's one more", before, n)
	}
	cancel() // SIGTERM
	awaitClosing(t, logs, done, closing)
	awaitHardExit(t, logs, exited, done, 45*time.Second, "a shutdown whose close hangs (grace 2s)")
	if after := vaultTokenCount(t, c); after != before+1 {
		t.Errorf("Vault tokens: %d serving, %d after the exit: the served login's token was revoked\n%s", before+1, after, logs.String())
	}
	l := logs.String()
	if !strings.Contains(l, `level=ERROR msg="the shutdown's close did not end: exiting now, the audit log left as it is (no checkpoint written)" waited=2s waiting_for="the audit log's final flush and checkpoint (audit.file)"`) {
		t.Errorf("the exit's ERROR naming the step is not logged\n%s", l)
	}
	if strings.Contains(l, "the Vault token the broker logged in for") {
		t.Errorf("a revocation of the served login's token was tried\n%s", l)
	}
}

// TestSecondSignalDuringHungFailedCloseRevokesFirst: a second SIGTERM
// while a failed start-up's close hangs (its audit sink's Close) exited
// at once, its AppRole login's token (nothing was served with it) left
// valid for its TTL. The token is now revoked (bounded) before the exit.
func TestSecondSignalDuringHungFailedCloseRevokesFirst(t *testing.T) {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	c, before, logs, exited, done, closing := hungCloseRun(t, ctx, "kt-secondsig", func(cfg *Config, e *env) {
		cfg.Vault.TokenRole = "kt-no-such-role"
		e.startupCloseGrace = 10 * time.Minute // the signal ends it, not the bound
	})
	awaitClosing(t, logs, done, closing)
	if n := vaultTokenCount(t, c); n != before+1 {
		t.Fatalf("Vault tokens: %d before the start-up, %d while its close hangs, want its login's one more", before, n)
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done()
	deadline := time.After(30 * time.Second)
sending:
	for {
		if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case code := <-exited:
			if code != 1 {
				t.Errorf("exit status after a second signal = %d, want 1", code)
			}
			break sending
		case <-deadline:
			t.Fatalf("SIGTERMs sent during a failed start-up's hung close never exited\n%s", logs.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
	if after := vaultTokenCount(t, c); after != before {
		t.Errorf("Vault tokens: %d before the start-up, %d after the second signal's exit: the unserved login's token was left valid\n%s", before, after, logs.String())
	}
	l := logs.String()
	if exit, revoked := strings.Index(l, "second signal: exiting now"), strings.Index(l, `msg="start-up failed: revoked the Vault token the broker logged in for"`); exit < 0 || revoked < exit {
		t.Errorf("the second signal's exit did not revoke the login's token first\n%s", l)
	}
}
