package harness

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// TestStopWaitsForTheServersGrace: after shutdown_timeout keytrail server
// gives the handlers it cut off up to their grace (42 s by default) so
// their audit events are written; Stop SIGKILLed it 30 s after its
// SIGTERM, losing them and the final checkpoint (and the test blamed the
// broker's exit). The stand-in server here takes 35 s to stop, as a broker
// whose cut-off exchange ends late does: Stop waits for its clean exit.
func TestStopWaitsForTheServersGrace(t *testing.T) {
	ready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer ready.Close()
	dir := t.TempDir()
	bin := filepath.Join(dir, "keytrail")
	script := "#!/bin/sh\ntrap 'sleep 35; exit 0' TERM\necho started >&2\nwhile :; do sleep 0.05; done\n"
	if err := os.WriteFile(bin, []byte(script), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte("shutdown_timeout: 20s\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	binOverride = bin
	defer func() { binOverride = "" }()
	rec := &recordTB{TB: t}
	k := StartKeytrail(rec, ready.URL, cfg)
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(k.Logs(), "started"); {
		if time.Now().After(deadline) {
			t.Fatalf("the stand-in server did not start; log:\n%s", k.Logs())
		}
		select {
		case <-k.Done():
			t.Fatalf("the stand-in server exited: %v", k.exitErr())
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := k.Stop(); err != nil {
		t.Errorf("Stop() = %v, want the stand-in's clean exit after 35 s (StopWait %v)", err, StopWait(cfg))
	}
	rec.runCleanups()
}

// TestStopWait: the wait is the server's own bound of its stop (drain,
// shutdown_timeout, the cut-off grace of its vault.timeout, then the
// bound of its close: ShutdownCloseBound, 52 s by default, past which
// it logs an ERROR naming the step it waits for and exits 1) plus
// stopSlack; the defaults for what the file leaves out or cannot be
// read. Without the close's bound Stop SIGKILLed a broker whose close
// hung before its own bound, losing that ERROR.
func TestStopWait(t *testing.T) {
	dir := t.TempDir()
	def := broker.TimeoutsFor(0)
	for _, tc := range []struct {
		name, yaml string
		want       time.Duration
	}{
		{"ok/defaults", "listen: 127.0.0.1:7700\n", 20*time.Second + 2*def.CutOffGrace() + broker.DefaultAuditTimeout},
		{"ok/set", "shutdown_drain: 15s\nshutdown_timeout: 30s\nvault: {timeout: 20s}\n", 45*time.Second + 2*(2*20*time.Second+broker.DefaultStoreTimeout+3*broker.DefaultAuditTimeout) + broker.DefaultAuditTimeout},
		{"ok/missing-file", "", 20*time.Second + 2*def.CutOffGrace() + broker.DefaultAuditTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, "/", "-")+".yaml")
			if tc.yaml != "" {
				if err := os.WriteFile(p, []byte(tc.yaml), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if got, want := StopWait(p), tc.want+stopSlack; got != want {
				t.Errorf("StopWait = %v, want %v", got, want)
			}
			if got := StopWait(p); got <= 114*time.Second {
				t.Errorf("StopWait = %v: not above the default stop bound (20 s + 42 s + 52 s)", got)
			}
		})
	}
}

// TestShutdownCloseBound: the bound of a served broker's close is its
// cut-off grace plus one audit write (52 s by default), and never less
// than a close after a Serve failed before serving (StartupExitBound);
// cmd/keytrail's TestHarnessStartWaitsForTheDefaultStartupTimeout keeps
// it in step with the server's shutdownCloseGrace.
func TestShutdownCloseBound(t *testing.T) {
	for _, vt := range []time.Duration{0, 5 * time.Second, 20 * time.Second, 2 * time.Minute} {
		want := broker.TimeoutsFor(vt).CutOffGrace() + broker.DefaultAuditTimeout
		if got := ShutdownCloseBound(vt); got != want {
			t.Errorf("ShutdownCloseBound(%v) = %v, want %v", vt, got, want)
		}
		if got := ShutdownCloseBound(vt); got < StartupExitBound {
			t.Errorf("ShutdownCloseBound(%v) = %v, below StartupExitBound (%v)", vt, got, StartupExitBound)
		}
	}
	if got := ShutdownCloseBound(0); got != 52*time.Second {
		t.Errorf("ShutdownCloseBound(0) = %v, want 52s", got)
	}
}

// TestStartWait: the wait for /readyz is the server's own bound of its
// start-up (startup_timeout, then StartupExitBound) plus startSlack; the default for a file that
// leaves it out, sets none (0) or cannot be read.
func TestStartWait(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, yaml string
		want       time.Duration
	}{
		{"ok/default", "listen: 127.0.0.1:7700\n", DefaultStartupTimeout},
		{"ok/set", "startup_timeout: 90s\n", 90 * time.Second},
		{"ok/none-is-the-default", "startup_timeout: 0s\n", DefaultStartupTimeout},
		{"ok/missing-file", "", DefaultStartupTimeout},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, "/", "-")+".yaml")
			if tc.yaml != "" {
				if err := os.WriteFile(p, []byte(tc.yaml), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if got, want := StartWait(p), tc.want+StartupExitBound+startSlack; got != want {
				t.Errorf("StartWait = %v, want %v", got, want)
			}
		})
	}
}
