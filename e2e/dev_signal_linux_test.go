//go:build linux

package e2e

import (
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/e2e/harness"
)

// TestDevStopsEverythingOnSignal: Ctrl-C (SIGINT) or SIGTERM to a running
// `keytrail dev` stops everything it started (its Vault dev server child
// is gone, --listen and the --dir lock are free, the audit log closed with
// a signed checkpoint), exits 0, and says what it stopped and where the
// state was kept (the stop was silent: nothing said that .dev stays).
func TestDevStopsEverythingOnSignal(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			dir := t.TempDir()
			d := startDev(t, dir, fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)))
			m := regexp.MustCompile(`Vault dev server at \S+ \(pid (\d+),`).FindStringSubmatch(d.out.String())
			if m == nil {
				t.Fatalf("dev does not say which Vault process it started:\n%s", d.out.String())
			}
			vaultPID, _ := strconv.Atoi(m[1])
			if ppid, ok := procParent(vaultPID); !ok || ppid != d.cmd.Process.Pid {
				t.Fatalf("process %d (the Vault dev said it started) has parent %d (running %v), want dev's pid %d", vaultPID, ppid, ok, d.cmd.Process.Pid)
			}

			if err := d.cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			select {
			case <-d.done:
			case <-time.After(time.Minute):
				t.Fatalf("dev still running a minute after %v:\n%s", sig, d.out.String())
			}
			if d.err != nil {
				t.Errorf("dev after %v: %v, want exit status 0\n%s", sig, d.err, d.out.String())
			}
			waitFor(t, 10*time.Second, fmt.Sprintf("Vault (pid %d) to be gone", vaultPID), func() bool {
				_, running := procParent(vaultPID)
				return !running
			})
			l, err := net.Listen("tcp", d.listen)
			if err != nil {
				t.Errorf("--listen %s still taken after dev stopped: %v", d.listen, err)
			} else {
				l.Close()
			}
			lf, err := os.OpenFile(filepath.Join(dir, "dev.lock"), os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
				t.Errorf("dev.lock still held after dev stopped: %v", err)
			}
			lf.Close()
			want := fmt.Sprintf("stopped the broker, Vault (pid %d), the demo issuer; state kept in %s", vaultPID, dir)
			if !strings.Contains(d.out.String(), want) {
				t.Errorf("dev's output lacks %q:\n%s", want, d.out.String())
			}
			out, err := exec.Command(harness.KeytrailBinary(t), "audit", "verify", "--key", filepath.Join(dir, "checkpoint.pub"), filepath.Join(dir, "audit.jsonl")).CombinedOutput()
			if err != nil {
				t.Errorf("audit verify after dev stopped: %v\n%s", err, out)
			}
		})
	}
}

// TestDevUnderGoRunStopsWithTheGoCommand: under `go run ./cmd/keytrail
// dev`, the README's command, a SIGTERM to the go command (what a
// supervisor, an IDE's stop button or timeout(1) sends) ended it without
// passing the signal on: keytrail dev and its Vault dev server kept running
// and holding their ports. dev now stops, as on its own SIGTERM.
func TestDevUnderGoRunStopsWithTheGoCommand(t *testing.T) {
	dir := t.TempDir()
	d := startDevWith(t, []string{"go", "run", "./cmd/keytrail"}, dir, fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)))
	m := regexp.MustCompile(`Vault dev server at \S+ \(pid (\d+),`).FindStringSubmatch(d.out.String())
	if m == nil {
		t.Fatalf("dev does not say which Vault process it started:\n%s", d.out.String())
	}
	vaultPID, _ := strconv.Atoi(m[1])
	devPID, ok := procParent(vaultPID)
	if !ok {
		t.Fatalf("Vault (pid %d) is not running", vaultPID)
	}
	if goPID, _ := procParent(devPID); goPID != d.cmd.Process.Pid {
		t.Fatalf("dev (pid %d) has parent %d, want the go command %d", devPID, goPID, d.cmd.Process.Pid)
	}
	t.Cleanup(func() { _ = syscall.Kill(devPID, syscall.SIGKILL) }) // if it outlived the test

	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		name string
		pid  int
	}{{"keytrail dev", devPID}, {"Vault", vaultPID}} {
		waitFor(t, 30*time.Second, fmt.Sprintf("%s (pid %d) to stop after the go command ended", p.name, p.pid), func() bool {
			_, running := procParent(p.pid)
			return !running
		})
	}
	<-d.done // dev has exited: its output is complete
	if want := "state kept in " + dir; !strings.Contains(d.out.String(), want) {
		t.Errorf("dev's output lacks %q:\n%s", want, d.out.String())
	}
}

// procParent returns the parent pid of a running process; ok is false when
// pid has exited (gone, or a zombie nobody has reaped yet).
func procParent(pid int) (ppid int, ok bool) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if errors.Is(err, os.ErrNotExist) {
		return 0, false
	}
	if err != nil {
		return 0, true
	}
	// pid (comm) state ppid ...; comm may hold spaces and parentheses.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 2 || f[0] == "Z" || f[0] == "X" {
		return 0, false
	}
	ppid, _ = strconv.Atoi(f[1])
	return ppid, true
}
