//go:build linux

package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// reaperHelperEnv makes TestExecReapsOrphans, run in a child of the test
// binary, become a child subreaper and exec keytrail exec there.
const reaperHelperEnv = "KEYTRAIL_TEST_REAPER_HELPER"

// TestExecReapsOrphans: keytrail exec is often a container's PID 1
// (ENTRYPOINT keytrail exec ... -- CMD), and the orphans of the container
// (CMD's children whose parent exited first: a daemon's double fork, a
// shell's background job) become its children. It never waited for them,
// and their zombies piled up. Now exec reaps them, when PID 1 or a child
// subreaper (the same to the kernel, and what this test makes it, without
// root or a PID namespace), and still exits with CMD's status: the reaper
// does not take it from os/exec.
//
// CMD leaves an orphan (a background sleep of a shell that exits), waits
// until it is gone from /proc (reaped, not a zombie), and exits 7; if it
// is still there after 20 s, CMD exits 3 and leaves its /proc stat line.
func TestExecReapsOrphans(t *testing.T) {
	if dir := os.Getenv(reaperHelperEnv); dir != "" {
		// The helper: a subreaper, which execve keeps.
		if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
			t.Fatal(err)
		}
		self, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		script := `sh -c 'sleep 0.1 & echo $! > "$1/orphan"' sh "$1"
pid=$(cat "$1/orphan"); i=0
while [ -e /proc/$pid ]; do
	i=$((i+1)); if [ $i -ge 400 ]; then cat /proc/$pid/stat > "$1/left"; exit 3; fi
	sleep 0.05
done
exit 7`
		env := []string{benchChildEnv + "=1"}
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, reaperHelperEnv+"=") {
				env = append(env, kv)
			}
		}
		err = syscall.Exec(self, []string{self, "exec", "--quiet", "--identity-token-file", filepath.Join(dir, "identity"), "--grant", "payments-db", "--env", "T",
			"--", "sh", "-c", script, "sh", dir}, env)
		t.Fatalf("exec %s: %v", self, err)
	}

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	_, addr := newFakeTokenBroker(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "identity"), []byte("identity.jwt"), 0o600); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		cmd := exec.Command(self, "-test.run=^TestExecReapsOrphans$")
		cmd.Env = append(os.Environ(), reaperHelperEnv+"="+dir, "KEYTRAIL_ADDR="+addr)
		// Files, not pipes: an orphan left running would hold a pipe open.
		out, err := os.Create(filepath.Join(dir, "out"))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout, cmd.Stderr = out, out
		done := make(chan error, 1)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { done <- cmd.Wait() }()
		select {
		case err = <-done:
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			<-done
			t.Fatal("keytrail exec did not end within a minute")
		}
		out.Close()
		output, _ := os.ReadFile(out.Name())
		left, _ := os.ReadFile(filepath.Join(dir, "left"))
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 7 {
			t.Fatalf("run %d: keytrail exec = %v, want exit 7 (CMD's, the orphan reaped)\norphan left: %s\noutput:\n%s", i, err, left, output)
		}
	}
}

// TestSiginfoPidIsTheExitedChild: siginfoPid reads si_pid at a fixed offset
// of x/sys's opaque unix.Siginfo (16 on 64-bit systems, after si_signo,
// si_errno, si_code and the union's alignment; 12 on 32-bit ones: the
// kernel's asm-generic/siginfo.h). A wrong offset would make the reaper
// reap the wrong pid or none: checked against a real exited child, on
// whichever architecture the tests run.
func TestSiginfoPidIsTheExitedChild(t *testing.T) {
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Wait() }()
	var si unix.Siginfo
	for {
		// WNOWAIT: os/exec's Wait still reaps it.
		err := unix.Waitid(unix.P_PID, cmd.Process.Pid, &si, unix.WEXITED|unix.WNOWAIT, nil)
		if err == nil {
			break
		}
		if !errors.Is(err, unix.EINTR) {
			t.Fatal(err)
		}
	}
	if si.Signo != int32(unix.SIGCHLD) || siginfoPid(&si) != cmd.Process.Pid {
		t.Fatalf("waitid for pid %d: si_signo %d, siginfoPid %d; want SIGCHLD (%d) and the child's pid",
			cmd.Process.Pid, si.Signo, siginfoPid(&si), unix.SIGCHLD)
	}
}
