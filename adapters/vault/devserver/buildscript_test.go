package devserver

import (
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
)

// buildScriptRepo makes a copy of the repository's layout that
// scripts/build-vault.sh needs (the script, the tools module's go.sum) and a
// fake go command that records each call (its directory and arguments, one
// per line) in calls and writes the -o output.
func buildScriptRepo(t *testing.T) (root, path, calls string) {
	t.Helper()
	repo, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	script, err := os.ReadFile(filepath.Join(repo, "scripts", "build-vault.sh"))
	if err != nil {
		t.Fatal(err)
	}
	root = t.TempDir()
	for _, d := range []string{"scripts", "e2e/vaultserver", "fakebin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(root, "scripts", "build-vault.sh"), script, 0o755); err != nil {
		t.Fatal(err)
	}
	sum := filepath.Join(root, "e2e", "vaultserver", "go.sum")
	if err := os.WriteFile(sum, []byte("x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(sum, old, old); err != nil {
		t.Fatal(err)
	}
	calls = filepath.Join(root, "go-calls")
	fake := `#!/bin/sh
{ echo "$PWD"; for a in "$@"; do echo "$a"; done; echo; } >> "` + calls + `"
while [ $# -gt 0 ]; do
  if [ "$1" = -o ]; then printf 'vault' > "$2"; chmod +x "$2"; fi
  shift
done
`
	if err := os.WriteFile(filepath.Join(root, "fakebin", "go"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	return root, filepath.Join(root, "fakebin") + string(os.PathListSeparator) + os.Getenv("PATH"), calls
}

// TestBuildVaultScriptSharesTheBuildLock: scripts/build-vault.sh (run by
// scripts/test.sh) built into bin/vault.tmp without the lock that keytrail
// dev and the e2e tests take (BuildVault), so running the README's two
// commands at once on a fresh machine ran two 10-20 minute Vault builds
// into the same temporary file. The script now waits for the lock, and
// uses the binary the lock holder built instead of building again; without
// a lock holder it builds once, with exactly BuildVault's command (the Go
// build cache key), and a re-run reuses the finished bin/vault.
func TestBuildVaultScriptSharesTheBuildLock(t *testing.T) {
	if _, err := exec.LookPath("flock"); err != nil {
		t.Fatalf("flock (util-linux) not found: %v", err)
	}
	t.Run("waits-for-the-lock", func(t *testing.T) {
		root, path, calls := buildScriptRepo(t)
		bin := filepath.Join(root, "bin", "vault")
		if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
			t.Fatal(err)
		}
		unlock, err := vaultBuildLock(context.Background(), filepath.Join(root, "bin", vaultBuildLockName), io.Discard)
		if err != nil {
			t.Fatal(err)
		}
		var out brokertest.SyncBuffer
		cmd := exec.Command("bash", filepath.Join(root, "scripts", "build-vault.sh"))
		cmd.Env = append(os.Environ(), "PATH="+path)
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Start(); err != nil {
			unlock()
			t.Fatal(err)
		}
		errc := make(chan error, 1)
		go func() { errc <- cmd.Wait() }()
		deadline := time.After(30 * time.Second)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for !strings.Contains(out.String(), "waiting for another Vault build") {
			select {
			case err := <-errc:
				unlock()
				got, _ := os.ReadFile(calls)
				t.Fatalf("build-vault.sh ended (%v) while another build held the lock; go was called with:\n%s\noutput:\n%s", err, got, out.String())
			case <-deadline:
				unlock()
				t.Fatalf("build-vault.sh did not say it waits for the lock:\n%s", out.String())
			case <-tick.C:
			}
		}
		// The lock holder finishes its build.
		if err := os.WriteFile(bin, []byte("vault"), 0o755); err != nil {
			t.Fatal(err)
		}
		unlock()
		if err := <-errc; err != nil {
			t.Fatalf("build-vault.sh: %v\n%s", err, out.String())
		}
		if got, err := os.ReadFile(calls); err == nil {
			t.Errorf("build-vault.sh built again after waiting for the lock; go calls:\n%s", got)
		}
		if !strings.Contains(out.String(), "is up to date") {
			t.Errorf("build-vault.sh output = %q, want it to say bin/vault is up to date", out.String())
		}
	})
	t.Run("builds-once-with-the-cache-key", func(t *testing.T) {
		root, path, calls := buildScriptRepo(t)
		for i := 0; i < 2; i++ {
			cmd := exec.Command("bash", filepath.Join(root, "scripts", "build-vault.sh"))
			cmd.Env = append(os.Environ(), "PATH="+path)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Fatalf("build-vault.sh run %d: %v\n%s", i+1, err, out)
			}
		}
		got, err := os.ReadFile(calls)
		if err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(root, "bin", "vault")
		want := strings.Join([]string{filepath.Join(root, "e2e", "vaultserver"),
			"build", "-trimpath", "-ldflags=-s -w", "-o", bin + ".tmp", "github.com/hashicorp/vault"}, "\n") + "\n\n"
		if string(got) != want {
			t.Errorf("go calls over two runs:\n%s\nwant one, the command BuildVault runs:\n%s", got, want)
		}
		if fi, err := os.Stat(bin); err != nil || fi.Size() == 0 {
			t.Errorf("bin/vault after the build: %v", err)
		}
	})
}
