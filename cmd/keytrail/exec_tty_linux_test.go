//go:build linux

package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestExecCtrlCReachesCMDOnce runs `keytrail exec` on a pseudo-terminal as
// its controlling terminal, the way a shell runs it, and types Ctrl-C. The
// terminal sends SIGINT to keytrail and CMD alike; keytrail must not forward
// another (a second SIGINT means "stop now" to many programs). SIGTERM sent
// to keytrail alone still reaches CMD.
func TestExecCtrlCReachesCMDOnce(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	_, addr := newFakeTokenBroker(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt"), 0o600); err != nil {
		t.Fatal(err)
	}
	signals, started := filepath.Join(dir, "signals"), filepath.Join(dir, "started")
	ptm, pts := openPTY(t)

	// CMD notes each SIGINT and SIGTERM; the terminal's SIGINT also ends
	// the sleep it waits in.
	script := `trap 'echo INT >> "$1"' INT; trap 'echo TERM >> "$1"; exit 0' TERM; : > "$2"; while :; do sleep 0.05; done`
	cmd := exec.Command(self, "exec", "--quiet", "--identity-token-file", tokenFile, "--grant", "payments-db", "--env", "T",
		"--", "sh", "-c", script, "sh", signals, started)
	cmd.Env = append(os.Environ(), benchChildEnv+"=1", "KEYTRAIL_ADDR="+addr)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pts, pts, pts
	// A new session whose controlling terminal is the pty: keytrail's
	// process group (and CMD's) is the terminal's foreground group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pts.Close()
	var out lockedBuffer
	go func() { _, _ = out.ReadFrom(ptm) }() // the terminal's screen
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})

	waitUntil(t, "CMD to start", func() bool { _, err := os.Stat(started); return err == nil })
	// keytrail is stopped while Ctrl-C is typed, so that CMD has taken the
	// terminal's SIGINT before keytrail sees its own: a second one
	// forwarded while CMD still had the first pending would merge with it.
	if err := syscall.Kill(cmd.Process.Pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	if _, err := ptm.Write([]byte{0x03}); err != nil { // Ctrl-C
		t.Fatal(err)
	}
	waitUntil(t, "CMD to note the SIGINT", func() bool { b, _ := os.ReadFile(signals); return len(b) > 0 })
	// Once running again keytrail takes its pending SIGINT before this
	// SIGTERM (the lower signal number first), so a forwarded SIGINT would
	// reach CMD before the forwarded SIGTERM.
	for _, sig := range []syscall.Signal{syscall.SIGCONT, syscall.SIGTERM} {
		if err := syscall.Kill(cmd.Process.Pid, sig); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case err := <-done:
		done <- err
		if err != nil {
			t.Errorf("keytrail exec = %v, want exit 0 (CMD's)\nterminal:\n%s", err, out.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("keytrail exec did not end after SIGTERM\nterminal:\n%s", out.String())
	}
	b, _ := os.ReadFile(signals)
	if got, want := string(b), "INT\nTERM\n"; got != want {
		t.Errorf("signals CMD got = %q, want %q (one Ctrl-C, one forwarded SIGTERM)", got, want)
	}
}

// openPTY opens a pseudo-terminal pair.
func openPTY(t *testing.T) (ptm, pts *os.File) {
	t.Helper()
	fd, err := unix.Open("/dev/ptmx", unix.O_RDWR|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open /dev/ptmx: %v", err)
	}
	ptm = os.NewFile(uintptr(fd), "/dev/ptmx")
	t.Cleanup(func() { ptm.Close() })
	if err := unix.IoctlSetPointerInt(fd, unix.TIOCSPTLCK, 0); err != nil {
		t.Fatalf("unlockpt: %v", err)
	}
	n, err := unix.IoctlGetUint32(fd, unix.TIOCGPTN)
	if err != nil {
		t.Fatalf("ptsname: %v", err)
	}
	pts, err = os.OpenFile("/dev/pts/"+strconv.Itoa(int(n)), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatalf("open pts: %v", err)
	}
	return ptm, pts
}

// lockedBuffer is a buffer one goroutine fills while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) ReadFrom(f *os.File) (int64, error) {
	buf := make([]byte, 4096)
	var n int64
	for {
		k, err := f.Read(buf)
		l.mu.Lock()
		l.b.Write(buf[:k])
		l.mu.Unlock()
		n += int64(k)
		if err != nil {
			return n, err
		}
	}
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startExec starts `keytrail exec --identity-token-file <dir>/identity
// args...` (this test binary as keytrail) against the broker at addr, in
// a session of its own: no controlling terminal, whatever the test's
// (run from a terminal, the test's would take a SIGQUIT for Ctrl-\). Its
// stderr goes to a file in dir, not a pipe: a CMD or a child of CMD left
// running would hold a pipe open, and Wait would wait for it. done gets
// Wait's result. At the test's end keytrail is killed, then afterKill
// runs (wait for done, kill what CMD left running: what each test needs).
func startExec(t *testing.T, addr, dir string, afterKill func(done chan error), args ...string) (cmd *exec.Cmd, done chan error, stderr func() string) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(dir, "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt"), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(self, append([]string{"exec", "--identity-token-file", tokenFile}, args...)...)
	cmd.Env = append(os.Environ(), benchChildEnv+"=1", "KEYTRAIL_ADDR="+addr)
	stderrFile, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stderrFile.Close() })
	cmd.Stderr = stderrFile
	stderr = func() string { b, _ := os.ReadFile(stderrFile.Name()); return string(b) }
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done = make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		afterKill(done)
	})
	return cmd, done, stderr
}

// waitUntil polls cond until it holds, or fails the test after 20 s.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
