//go:build linux

package harness

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

const helperEnv = "KEYTRAIL_HARNESS_HELPER"

// TestServersDieWithTheBinary: a test binary killed before its cleanups run
// (SIGKILL here; the -timeout panic or a closed output pipe in practice)
// takes the servers it started with it: a helper run of this test starts
// redis-server and a Vault dev server, prints their pids and waits; this
// test kills it and waits for both servers to be gone.
func TestServersDieWithTheBinary(t *testing.T) {
	if os.Getenv(helperEnv) == "1" {
		r := StartRedis(t)
		v := StartVault(t)
		fmt.Printf("pids %d %d\n", r.PID(), v.PID())
		select {} // until killed
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestServersDieWithTheBinary$", "-test.v", "-test.timeout=5m")
	// The helper is killed, so its own cleanups (t.TempDir, the servers'
	// data directories) never run: its temporary files go under ours.
	cmd.Env = append(os.Environ(), helperEnv+"=1", "TMPDIR="+t.TempDir())
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var pids [2]int
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if n, _ := fmt.Sscanf(sc.Text(), "pids %d %d", &pids[0], &pids[1]); n == 2 {
			break
		}
	}
	if pids[0] == 0 || pids[1] == 0 {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("the helper printed no server pids; its stderr:\n%s", stderr.String())
	}
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	for _, pid := range pids {
		if err := waitExit(pid, 30*time.Second); err != nil {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			t.Errorf("server pid %d: %v", pid, err)
		}
	}
}

// waitExit waits until process pid (not a child of ours: the servers were
// the helper's) has ended, through a pidfd, which becomes readable when the
// process terminates.
func waitExit(pid int, timeout time.Duration) error {
	fd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil // already gone and reaped
	}
	if err != nil {
		return fmt.Errorf("pidfd_open: %w", err)
	}
	defer unix.Close(fd)
	for {
		n, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, int(timeout.Milliseconds()))
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return fmt.Errorf("poll: %w", err)
		case n == 0:
			return fmt.Errorf("still running %s after the test binary that started it was killed", timeout)
		}
		return nil
	}
}
