package harness

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// recordTB is a testing.TB whose errors and cleanups are recorded rather
// than applied, to see what StartKeytrail's cleanup reports.
type recordTB struct {
	testing.TB
	errs     []string
	cleanups []func()
}

func (r *recordTB) Helper()          {}
func (r *recordTB) Cleanup(f func()) { r.cleanups = append(r.cleanups, f) }
func (r *recordTB) Errorf(format string, args ...any) {
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}
func (r *recordTB) Fatalf(format string, args ...any) {
	r.TB.Helper()
	r.TB.Fatalf(format, args...)
}

// runCleanups runs the recorded cleanups, last first, as testing does.
func (r *recordTB) runCleanups() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

// TestServerRaceFailsTheTest: a keytrail server that reported a data race
// fails the test that started it, whether it exits when the test ends
// (SIGTERM: the race detector's exit status 66, its report in the log,
// now without the 1 s atexit sleep) or the test killed it; a server that
// reported none does not. The server here is a stand-in script and
// /readyz a test server, so no keytrail binary is built.
func TestServerRaceFailsTheTest(t *testing.T) {
	ready := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer ready.Close()
	fake := func(t *testing.T, script string) string {
		p := filepath.Join(t.TempDir(), "keytrail")
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script), 0o700); err != nil {
			t.Fatal(err)
		}
		return p
	}
	const report = "==================\nWARNING: DATA RACE\nWrite at 0x00c000123456 by goroutine 7:\n==================\n"
	for _, c := range []struct {
		name, script string
		kill, want   bool
	}{
		{"race/sigterm", "printf '" + report + "' >&2\ntrap 'exit 66' TERM\necho started >&2\nwhile :; do sleep 0.05; done\n", false, true},
		{"race/killed", "printf '" + report + "' >&2\necho started >&2\nwhile :; do sleep 0.05; done\n", true, true},
		{"race/exit-status-only", "trap 'exit 66' TERM\necho started >&2\nwhile :; do sleep 0.05; done\n", false, true},
		{"ok/clean", "trap 'exit 0' TERM\necho started >&2\nwhile :; do sleep 0.05; done\n", false, false},
		{"ok/killed", "echo started >&2\nwhile :; do sleep 0.05; done\n", true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			binOverride = fake(t, c.script)
			defer func() { binOverride = "" }()
			rec := &recordTB{TB: t}
			k := StartKeytrail(rec, ready.URL, "unused.yaml")
			// The script has written what it writes and set its trap.
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
			if c.kill {
				k.Kill()
			}
			rec.runCleanups()
			if got := len(rec.errs) > 0; got != c.want {
				t.Errorf("the test failed = %v (%q), want %v; log:\n%s", got, rec.errs, c.want, k.Logs())
			}
			if c.want && len(rec.errs) > 0 && !strings.Contains(strings.ToLower(rec.errs[0]), "race") {
				t.Errorf("error = %q, want it to name the race", rec.errs[0])
			}
		})
	}
}
