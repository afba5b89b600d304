package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
)

// devRun is a `keytrail dev` process (not --once) started by a test.
type devRun struct {
	cmd    *exec.Cmd
	out    *brokertest.SyncBuffer // stdout and stderr
	done   chan struct{}          // closed when the process has exited
	err    error                  // cmd.Wait's result, once done is closed
	dir    string
	listen string
}

// startDev starts `keytrail dev --dir dir --listen listen` in the repository
// and waits until it says it is running. The demo issuer's fixed port
// (127.0.0.1:7701) may be held for a while by another test's dev: a start
// that fails on it is retried until the deadline. The process is killed at
// the end of the test if it is still running.
func startDev(t *testing.T, dir, listen string) *devRun {
	t.Helper()
	return startDevWith(t, []string{harness.KeytrailBinary(t)}, dir, listen)
}

// startDevWith is startDev with the command that runs keytrail, e.g.
// {"go", "run", "./cmd/keytrail"}.
func startDevWith(t *testing.T, keytrail []string, dir, listen string) *devRun {
	t.Helper()
	vault := harness.VaultBinary(t)
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		d := &devRun{out: &brokertest.SyncBuffer{}, done: make(chan struct{}), dir: dir, listen: listen}
		args := append(keytrail[1:len(keytrail):len(keytrail)], "dev", "--dir", dir, "--listen", listen, "--vault-bin", vault)
		d.cmd = exec.Command(keytrail[0], args...)
		d.cmd.Dir = root
		d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
		if keytrail[0] == "go" {
			// A go command ended by a signal leaves its work directory
			// (the built keytrail, ~35 MB) behind: keep it under the
			// test's temp dir, removed after the cleanup below.
			d.cmd.Env = append(os.Environ(), "GOTMPDIR="+t.TempDir())
		}
		// Under go run, dev shares the output pipe: a dev that outlives
		// the go command must not keep Wait (and done) from returning.
		d.cmd.WaitDelay = 30 * time.Second
		if err := d.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { d.err = d.cmd.Wait(); close(d.done) }()
		t.Cleanup(func() {
			select {
			case <-d.done:
			default:
				_ = d.cmd.Process.Kill()
				<-d.done
			}
		})
		for exited := false; !exited; {
			if strings.Contains(d.out.String(), "keytrail dev is running") {
				return d
			}
			if time.Now().After(deadline) {
				t.Fatalf("keytrail dev did not say it is running in time:\n%s", d.out.String())
			}
			select {
			case <-d.done:
				exited = true
			case <-time.After(20 * time.Millisecond):
			}
		}
		if !strings.Contains(d.out.String(), "127.0.0.1:7701") || time.Now().After(deadline) {
			t.Fatalf("keytrail dev exited (%v):\n%s", d.err, d.out.String())
		}
		t.Logf("127.0.0.1:7701 is taken (another test's dev?); retrying")
		waitFor(t, time.Until(deadline), "127.0.0.1:7701 to be free", func() bool {
			l, err := net.Listen("tcp", "127.0.0.1:7701")
			if err != nil {
				return false
			}
			l.Close()
			return true
		})
	}
}

// TestDevRefusesASecondDev: a second `keytrail dev` while one runs started
// its own Vault dev server (appending to the first one's Vault logs when the
// --dir was the same) and only then failed on the demo issuer's port, with
// a bare "address already in use". It now fails before starting anything,
// naming the conflict: the running dev's pid and --dir, the --listen
// address, or the demo issuer's port; a --dir it created for the attempt
// is removed again (it was left behind).
func TestDevRefusesASecondDev(t *testing.T) {
	first := startDev(t, t.TempDir(), fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)))
	bin := harness.KeytrailBinary(t)
	vault := harness.VaultBinary(t)
	// A Vault dev server logs "root token generated" once as it starts;
	// the first dev's own Vault goes on logging other lines meanwhile.
	vaultLog := filepath.Join(first.dir, "vault", "vault.log")
	vaultStarts := func() int {
		b, err := os.ReadFile(vaultLog)
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(string(b), "root token generated")
	}
	before := vaultStarts()
	if before == 0 {
		t.Fatalf("the first dev's Vault log %s does not say its Vault started", vaultLog)
	}
	other := t.TempDir()
	for _, c := range []struct {
		name, dir, listen, want string
	}{
		{"same-dir", first.dir, fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)),
			fmt.Sprintf("another keytrail dev (pid %d) is running with --dir %s", first.cmd.Process.Pid, first.dir)},
		{"same-listen", filepath.Join(other, "a"), first.listen,
			"--listen " + first.listen + " is in use"},
		{"demo-issuer-port", filepath.Join(other, "b"), fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)),
			"the demo issuer needs 127.0.0.1:7701 (the example policies trust it), which is in use"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "dev", "--once", "--dir", c.dir, "--listen", c.listen, "--vault-bin", vault)
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 1 {
				t.Fatalf("second dev: %v, want exit status 1\n%s", err, out)
			}
			if !strings.Contains(string(out), c.want) {
				t.Errorf("second dev's output does not name the conflict (%q):\n%s", c.want, out)
			}
			if strings.Contains(string(out), "starting Vault") {
				t.Errorf("second dev started a Vault server before failing:\n%s", out)
			}
			if c.dir != first.dir {
				// Not even the --dir it made: it is removed again.
				if _, err := os.Stat(c.dir); !errors.Is(err, os.ErrNotExist) {
					t.Errorf("second dev left %s behind (%v), which it created", c.dir, err)
				}
			}
		})
	}
	if after := vaultStarts(); after != before {
		t.Errorf("the first dev's Vault log %s says a Vault started %d times, %d before the second devs: a second Vault wrote to it", vaultLog, after, before)
	}
	select {
	case <-first.done:
		t.Fatalf("the first dev exited (%v):\n%s", first.err, first.out.String())
	default:
	}
}
