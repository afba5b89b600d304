package harness

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// standIn writes a stand-in keytrail binary running script and a config
// file holding yaml; it returns the config's path (binOverride is set
// until the test ends).
func standIn(t *testing.T, script, yaml string) string {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "keytrail")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"+script), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "config.yaml")
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	binOverride = bin
	t.Cleanup(func() { binOverride = "" })
	return cfg
}

// notReady is a /readyz that answers 503, as a broker's does while its
// Vault, store or audit sink check fails.
func notReady(t *testing.T) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"status":"not ready","component":"vault"}`, http.StatusServiceUnavailable)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestWaitReadyEndsSoonAfterServing: a server that logged "keytrail
// serving" has ended its start-up; a /readyz that still fails then is not
// a start-up the server may still finish. WaitReady waited the whole
// StartWait (startup_timeout 5m + 40s + 15s) for it, so every e2e test whose
// broker serves but never gets ready took 5 minutes to fail (a dozen of
// them more than the e2e package's go test -timeout of 40m, which then
// panics instead of failing each test); it ends servingReadyWait after
// the serving line (30 s, the old fixed wait; shortened here).
func TestWaitReadyEndsSoonAfterServing(t *testing.T) {
	defer func(d time.Duration) { servingReadyWait = d }(servingReadyWait)
	servingReadyWait = time.Second
	cfg := standIn(t, `echo 'time=2026-01-01T00:00:00Z level=INFO msg="keytrail serving" listen=127.0.0.1:1' >&2
trap 'exit 0' TERM
while :; do sleep 0.05; done
`, "listen: 127.0.0.1:7700\n")
	k := &Keytrail{t: t, URL: notReady(t), Config: cfg, LogPath: filepath.Join(t.TempDir(), "keytrail.log")}
	k.start()
	defer k.Stop()
	errc := make(chan error, 1)
	go func() { errc <- k.WaitReady(StartWait(cfg)) }()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "serving") || !strings.Contains(err.Error(), "503") {
			t.Errorf("WaitReady() = %v, want an error saying the server serves and /readyz answers 503", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("WaitReady(%v) still waiting 2m after the server logged serving (servingReadyWait %v)", StartWait(cfg), servingReadyWait)
	}
}

// fatalTB records a Fatalf and ends its goroutine (runtime.Goexit), as
// testing does, from any goroutine; Deadline is the test binary's
// deadline it reports.
type fatalTB struct {
	testing.TB
	deadline time.Time
	mu       sync.Mutex
	fatal    string
	cleanups []func()
}

func (f *fatalTB) Helper()                           {}
func (f *fatalTB) Deadline() (time.Time, bool)       { return f.deadline, true }
func (f *fatalTB) Errorf(format string, args ...any) { f.TB.Errorf(format, args...) }
func (f *fatalTB) Cleanup(fn func())                 { f.mu.Lock(); f.cleanups = append(f.cleanups, fn); f.mu.Unlock() }
func (f *fatalTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.fatal = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fatalTB) fatalMsg() string { f.mu.Lock(); defer f.mu.Unlock(); return f.fatal }
func (f *fatalTB) runCleanups() {
	for i := len(f.cleanups) - 1; i >= 0; i-- {
		f.cleanups[i]()
	}
}

// TestStartKeytrailFailsBeforeTheTestDeadline: a start-up that never gets
// ready (here a stand-in that never serves, as a broker stuck waiting for
// Vault until its startup_timeout) was waited for the whole StartWait
// even past the test binary's deadline (go test -timeout): the binary
// then panicked ("test timed out"), with a goroutine dump instead of the
// test's failure and the broker's log. StartKeytrail now stops waiting
// early enough for the test to fail, and its cleanup (Stop: StopWait) to
// end, before that deadline.
func TestStartKeytrailFailsBeforeTheTestDeadline(t *testing.T) {
	defer func(d time.Duration) { servingReadyWait = d }(servingReadyWait)
	servingReadyWait = time.Second // the least it waits
	cfg := standIn(t, "trap 'exit 0' TERM\necho started >&2\nwhile :; do sleep 0.05; done\n", "shutdown_timeout: 1s\n")
	url := notReady(t)
	// The binary's deadline: the stop's bound and the margin, then 3 s.
	tb := &fatalTB{TB: t, deadline: time.Now().Add(StopWait(cfg) + deadlineMargin + 3*time.Second)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		StartKeytrail(tb, url, cfg)
	}()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		t.Fatalf("StartKeytrail still waiting 2m into the test, %v past the test binary's deadline (StartWait %v)", -time.Until(tb.deadline).Round(time.Second), StartWait(cfg))
	}
	tb.runCleanups()
	if msg := tb.fatalMsg(); !strings.Contains(msg, "not ready") || !strings.Contains(msg, "deadline") {
		t.Errorf("StartKeytrail's failure = %q, want it not ready, naming the test's deadline", msg)
	}
}

// TestWaitReadyServingLineOfThisStartOnly: Restart appends to the log,
// which then holds the serving line of the run before: a restart still
// in its start-up gets the whole wait, not servingReadyWait.
func TestWaitReadyServingLineOfThisStartOnly(t *testing.T) {
	defer func(d time.Duration) { servingReadyWait = d }(servingReadyWait)
	servingReadyWait = time.Millisecond
	cfg := standIn(t, "trap 'exit 0' TERM\nwhile :; do sleep 0.05; done\n", "listen: 127.0.0.1:7700\n")
	k := &Keytrail{t: t, URL: notReady(t), Config: cfg, LogPath: filepath.Join(t.TempDir(), "keytrail.log")}
	if err := os.WriteFile(k.LogPath, []byte(`level=INFO msg="keytrail serving"`+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	k.start()
	defer k.Stop()
	if err := k.WaitReady(2 * time.Second); err == nil || strings.Contains(err.Error(), "serving") {
		t.Errorf("WaitReady() = %v, want it timed out: the serving line is the run before's", err)
	}
}
