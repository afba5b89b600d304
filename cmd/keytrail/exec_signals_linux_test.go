//go:build linux

package main

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestExecForwardsQuitAndUserSignals: keytrail exec is often a container's
// PID 1 (ENTRYPOINT keytrail exec ... -- nginx), and what a supervisor
// sends is for CMD: SIGQUIT is the stop signal of nginx's image (docker
// stop sends it), SIGUSR1 and SIGUSR2 ask many programs to reopen their
// logs or reload. keytrail must pass them on, not swallow them (SIGUSR1,
// SIGUSR2) or die of them with a goroutine dump, leaving CMD running
// without its parent (SIGQUIT).
func TestExecForwardsQuitAndUserSignals(t *testing.T) {
	_, addr := newFakeTokenBroker(t)
	dir := t.TempDir()
	signals, started := filepath.Join(dir, "signals"), filepath.Join(dir, "started")
	script := `trap 'echo USR1 >> "$1"' USR1; trap 'echo USR2 >> "$1"' USR2; trap 'echo QUIT >> "$1"; exit 0' QUIT
echo $$ > "$2"; while :; do sleep 0.05; done`
	cmd, done, stderr := startExec(t, addr, dir, func(done chan error) { <-done },
		"--quiet", "--grant", "payments-db", "--env", "T", "--", "sh", "-c", script, "sh", signals, started)
	waitUntil(t, "CMD to start", func() bool { b, _ := os.ReadFile(started); return strings.HasSuffix(string(b), "\n") })
	b, _ := os.ReadFile(started)
	if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil {
		// CMD outlives a keytrail that died of a signal.
		t.Cleanup(func() { _ = syscall.Kill(pid, syscall.SIGKILL) })
	}
	noted := func(want string) func() bool {
		return func() bool { b, _ := os.ReadFile(signals); return string(b) == want }
	}
	want := ""
	for _, s := range []struct {
		sig  syscall.Signal
		name string
	}{{syscall.SIGUSR1, "USR1"}, {syscall.SIGUSR2, "USR2"}, {syscall.SIGQUIT, "QUIT"}} {
		if err := syscall.Kill(cmd.Process.Pid, s.sig); err != nil {
			t.Fatal(err)
		}
		want += s.name + "\n"
		waitUntil(t, "CMD to note SIG"+s.name, noted(want))
	}
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Errorf("keytrail exec = %v, want exit 0 (CMD's, after the SIGQUIT it was sent)\nstderr:\n%s", err, stderr())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("keytrail exec did not end when CMD did\nstderr:\n%s", stderr())
	}
	if strings.Contains(stderr(), "goroutine") {
		t.Errorf("keytrail printed a goroutine dump:\n%s", stderr())
	}
}
