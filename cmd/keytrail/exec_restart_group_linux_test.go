//go:build linux

package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestExecRestartStopsWhatCMDStarted: exec --watch restarts CMD at every
// renewal, and stopped CMD alone (SIGTERM to its pid): a CMD that is a
// shell script left its children running, with the old credential, beside
// the new CMD's. Without a controlling terminal (a container, a service,
// CI: here a session of its own) CMD runs in a process group of its own,
// and a restart stops and waits for the whole group. With one, CMD shares
// keytrail's group (TestExecCtrlCReachesCMDOnce).
func TestExecRestartStopsWhatCMDStarted(t *testing.T) {
	for _, tc := range []struct {
		name, grace string
		// The script CMD runs: it starts a grandchild, notes its pid
		// in $1 and waits for it. SIGTERM ends the shell (not trapped).
		script string
	}{
		{"child-ends-on-sigterm", "1m", `sleep 1000 & echo $! >> "$1"; wait`},
		// SIGKILL after --restart-grace.
		{"child-ignores-sigterm", "1s", `(trap '' TERM; exec sleep 1000) & echo $! >> "$1"; wait`},
	} {
		t.Run(tc.name, func(t *testing.T) { testExecRestartStopsWhatCMDStarted(t, tc.grace, tc.script) })
	}
}

func testExecRestartStopsWhatCMDStarted(t *testing.T, grace, script string) {
	addr := renewingBroker(t, 1)
	dir := t.TempDir()
	pids := filepath.Join(dir, "pids")
	grandchildren := func() []int {
		b, _ := os.ReadFile(pids)
		var out []int
		for _, l := range strings.Split(string(b), "\n") {
			if p, err := strconv.Atoi(l); err == nil {
				out = append(out, p)
			}
		}
		return out
	}
	_, _, stderr := startExec(t, addr, dir, func(done chan error) {
		<-done
		for _, p := range grandchildren() {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	}, "--grant", "g", "--env", "T", "--watch", "--restart-grace", grace, "--", "sh", "-c", script, "sh", pids)

	// The second CMD starts once the first is stopped.
	waitUntil(t, "CMD to be restarted", func() bool { return len(grandchildren()) >= 2 })
	first := grandchildren()[0]
	if alive(first) {
		t.Fatalf("the first CMD's child (pid %d) still runs after the restart\nstderr:\n%s", first, stderr())
	}
	// keytrail says so once the next CMD has started, which may be
	// after that CMD noted its child's pid.
	waitUntil(t, "the restart line", func() bool { return strings.Contains(stderr(), "restarted sh") })
}

// alive reports whether pid is a process that has not exited (a zombie,
// whose parent has not reaped it, has).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	i := bytes.LastIndexByte(b, ')')
	f := strings.Fields(string(b[i+1:]))
	return len(f) > 0 && f[0] != "Z" && f[0] != "X"
}

// TestExecStopSignalReachesCMDsGroup: where CMD runs in a process group
// of its own (--watch restart, no controlling terminal), a SIGTERM sent to
// keytrail's group (timeout(1), a CI runner cancelling a job, a
// supervisor signalling the group) no longer reaches what CMD started, and
// keytrail forwarded it to CMD alone: a shell script CMD died and left its
// children running, orphaned, with the credential. Stop signals (SIGTERM,
// SIGINT, SIGQUIT) keytrail forwards now go to CMD's group, as a restart's
// do; keytrail still exits with CMD's status.
func TestExecStopSignalReachesCMDsGroup(t *testing.T) {
	addr := renewingBroker(t, 3600) // no renewal, no restart, during the test
	dir := t.TempDir()
	pids := filepath.Join(dir, "pids")
	grandchild := 0
	cmd, done, stderr := startExec(t, addr, dir, func(chan error) {
		if grandchild > 0 {
			_ = syscall.Kill(grandchild, syscall.SIGKILL)
		}
	}, "--grant", "g", "--env", "T", "--watch", "--", "sh", "-c", `sleep 1000 & echo $! >> "$1"; wait`, "sh", pids)
	waitUntil(t, "CMD to start its child", func() bool {
		b, _ := os.ReadFile(pids)
		grandchild, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		return grandchild > 0
	})
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	var werr error
	waitUntil(t, "keytrail to exit", func() bool {
		select {
		case werr = <-done:
			done <- werr // for the clean-up
			return true
		default:
			return false
		}
	})
	var ee *exec.ExitError
	if !errors.As(werr, &ee) || ee.ExitCode() != 128+int(syscall.SIGTERM) {
		t.Errorf("keytrail exited with %v, want CMD's status, 143 (SIGTERM)\nstderr:\n%s", werr, stderr())
	}
	waitUntil(t, fmt.Sprintf("CMD's child (pid %d) to end after keytrail was sent SIGTERM and exited", grandchild),
		func() bool { return !alive(grandchild) })
}
