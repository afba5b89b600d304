package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestDevRemovesTheDirItCreatedWhenItFails: dev created --dir (and
// --dir/tokens, dev.lock) before it found --listen or the demo issuer's
// port taken, and left the new directory behind with its exit 1; 8d3f8ae
// said the checks ran "before anything starts or is written", true only of
// the usage checks. A --dir this run created (with the parents it created)
// is now removed again when dev fails before Vault starts; a --dir that
// existed before is kept, with what it holds, whatever fails.
func TestDevRemovesTheDirItCreatedWhenItFails(t *testing.T) {
	if out, _, err := runCLI(t, nil, "dev", "--help"); err != nil || !strings.Contains(strings.Join(strings.Fields(out), " "),
		"A dev that fails before Vault starts removes the --dir it created (never one that existed before), once the rest has stopped, and then says whether it did") {
		t.Errorf("dev --help (%v) does not say a --dir it created is removed on failure:\n%s", err, out)
	}
	out := t.TempDir()
	t.Chdir(out)
	pol := writeFile(t, out, "p.yaml", "version: 1\n")
	noVault := filepath.Join(out, "no-vault")
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	// The demo issuer's port: held here for the run, or by someone else
	// already, the same for this test.
	if l, err := net.Listen("tcp", devIssuerAddr); err == nil {
		defer l.Close()
	}
	free := closedLoopbackAddrs(t, 1)[0]
	existing := filepath.Join(out, "existing")
	if err := os.Mkdir(existing, 0o700); err != nil {
		t.Fatal(err)
	}
	marker := writeFile(t, existing, "keep-me", "x\n")

	for _, c := range []struct {
		name, dir, listen, want string
	}{
		{"listen-taken", filepath.Join(out, "new", "deeper", "dev"), held.Addr().String(), "dev: --listen " + held.Addr().String() + " is in use"},
		{"issuer-port-taken", filepath.Join(out, "new", "dev"), free, "dev: the demo issuer needs " + devIssuerAddr},
		{"listen-taken-existing-dir", existing, held.Addr().String(), "is in use"},
		{"issuer-port-taken-existing-dir", existing, free, "dev: the demo issuer needs " + devIssuerAddr},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, stderr, err := runCLI(t, nil, "dev", "--dir", c.dir, "--listen", c.listen, "--policy", pol, "--vault-bin", noVault)
			if err == nil || exitCode(err) != -1 || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("dev = %v, want exit 1 with %q", err, c.want)
			}
			if strings.Contains(stderr, "state kept in") && c.dir != existing {
				t.Errorf("stderr %q says state is kept", stderr)
			}
			if c.dir == existing {
				if _, err := os.Stat(marker); err != nil {
					t.Errorf("the --dir that existed lost its file: %v", err)
				}
				return
			}
			if _, err := os.Stat(filepath.Join(out, "new")); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("dev left %s behind (stat: %v), which it created", filepath.Join(out, "new"), err)
			}
			// The outermost directory it created, said once removed.
			if want := "keytrail dev: removed " + filepath.Join(out, "new") + ", which it had created\n"; !strings.Contains(stderr, want) {
				t.Errorf("stderr %q does not say %q", stderr, want)
			}
		})
	}
	t.Run("dir-locked", func(t *testing.T) {
		unlock, err := lockDevDir(existing)
		if err != nil {
			t.Fatal(err)
		}
		defer unlock()
		_, _, err = runCLI(t, nil, "dev", "--dir", existing, "--listen", free, "--policy", pol, "--vault-bin", noVault)
		if err == nil || !strings.Contains(err.Error(), "another keytrail dev (pid") {
			t.Fatalf("dev on a locked --dir = %v, want the other dev named", err)
		}
		for _, p := range []string{marker, filepath.Join(existing, "dev.lock")} {
			if _, err := os.Stat(p); err != nil {
				t.Errorf("dev on a locked --dir removed %s: %v", p, err)
			}
		}
	})
	if _, err := os.Stat(pol); err != nil {
		t.Errorf("the policy file is gone: %v", err)
	}
}

// TestDevMissingDefaultPolicyNamesNoFlag: in a repository whose
// policies/examples is missing, dev without --policy said "dev: --policy
// .../policies/examples: no such file or directory", naming a flag the
// user did not give. It now names the default and says --policy chooses
// another.
func TestDevMissingDefaultPolicyNamesNoFlag(t *testing.T) {
	repo := t.TempDir()
	writeFile(t, repo, "go.mod", "module github.com/keytrail/keytrail\n\ngo 1.22\n")
	t.Chdir(repo)
	state := filepath.Join(repo, "dev")
	_, _, err := runCLI(t, nil, "dev", "--dir", state, "--vault-bin", filepath.Join(repo, "no-vault"))
	want := "dev: the default policy " + filepath.Join(repo, "policies", "examples") +
		" (policies/examples of the repository): no such file or directory; restore it, or give one with --policy"
	if err == nil || exitCode(err) != -1 || !strings.Contains(err.Error(), want) {
		t.Fatalf("dev = %v, want exit 1 with %q", err, want)
	}
	if strings.Contains(err.Error(), "dev: --policy") {
		t.Errorf("dev = %v names --policy, which was not given", err)
	}
	if _, err := os.Stat(state); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("dev created %s (%v)", state, err)
	}
}

// TestDevFailingLeavesAloneTheDevThatLockedItsDir: a dev that failed
// before Vault on a --dir it created released the lock first and removed
// --dir/tokens after, so a second dev started meanwhile on the same --dir
// (whose mkdir had found tokens there, made before the first one's lock)
// took the lock and then had its tokens directory removed under it; it
// failed after starting Vault, writing the demo tokens. Nothing that was in
// --dir when the lock was released is removed now (tokens is made once
// Vault has started), and the second dev's dev.lock stays.
func TestDevFailingLeavesAloneTheDevThatLockedItsDir(t *testing.T) {
	out := t.TempDir()
	pol := writeFile(t, out, "p.yaml", "version: 1\n")
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	dir := filepath.Join(out, "dev")
	var inDir []string
	var unlockSecond func()
	e := &env{ctx: context.Background(), stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }}
	e.devUnlocked = func() {
		// The second dev, which had made --dir and what it needs before
		// its lock, takes the lock the failing one released.
		inDir = listDir(t, dir)
		if unlockSecond, err = lockDevDir(dir); err != nil {
			t.Errorf("the second dev could not lock --dir: %v", err)
		}
	}
	err = runDev(context.Background(), e, devOptions{dir: dir, listen: held.Addr().String(), policy: pol, vaultBin: filepath.Join(out, "no-vault")})
	if err == nil || !strings.Contains(err.Error(), "is in use") {
		t.Fatalf("dev = %v, want --listen in use", err)
	}
	if unlockSecond == nil {
		t.Fatal("dev failed without releasing the lock of --dir")
	}
	defer unlockSecond()
	now := listDir(t, dir)
	for _, p := range inDir {
		if !slices.Contains(now, p) {
			t.Errorf("the failing dev removed %s after the second dev locked --dir (left: %q)", p, now)
		}
	}
	if !slices.Contains(now, "dev.lock") {
		t.Errorf("the second dev's dev.lock is gone (left: %q)", now)
	}
}

// listDir lists what is under dir, as paths relative to it.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p != dir {
			rel, _ := filepath.Rel(dir, p)
			names = append(names, rel)
		}
		return nil
	})
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	return names
}

// TestDevLockIsTheFileAtItsPath: a dev that fails before Vault removes the
// dev.lock it created while it holds it. A second dev that had opened that
// file before, and locked it once released, held a lock on a file no
// longer in --dir: a third dev created dev.lock again and locked it too,
// two devs on one --dir. lockDevDir now checks, once locked, that the file
// is still the one at its path, else opens it again.
func TestDevLockIsTheFileAtItsPath(t *testing.T) {
	dir := t.TempDir()
	first, err := lockDevDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { devLockOpened = nil })
	devLockOpened = func() {
		devLockOpened = nil
		// The first dev fails before Vault, between the second one's
		// open and its lock.
		if err := os.Remove(filepath.Join(dir, "dev.lock")); err != nil {
			t.Error(err)
		}
		first()
	}
	second, err := lockDevDir(dir)
	if err != nil {
		t.Fatalf("the second dev could not lock --dir: %v", err)
	}
	defer second()
	if third, err := lockDevDir(dir); err == nil {
		third()
		t.Fatal("a third dev locked --dir while the second one holds it")
	} else if !strings.Contains(err.Error(), "another keytrail dev (pid") {
		t.Errorf("third dev = %v, want the second one named", err)
	}
}

// TestDevSaysWhatBecameOfItsDirOnceDone: a dev that failed before Vault
// after starting the demo issuer (here: getting the Vault binary fails)
// said "stopped the demo issuer; removed DIR, which it had created" before
// it removed DIR (the line's defer ran before the removal's), and said so
// too when the removal then failed because DIR was no longer empty. The
// line now comes after the removal and says what happened: the outermost
// directory removed, or the one kept and why.
func TestDevSaysWhatBecameOfItsDirOnceDone(t *testing.T) {
	// A repository without e2e/vaultserver/go.sum: with no --vault-bin
	// and no $KEYTRAIL_VAULT_BIN, getting bin/vault fails at once, after
	// the demo issuer has started.
	repo := t.TempDir()
	writeFile(t, repo, "go.mod", "module github.com/keytrail/keytrail\n\ngo 1.22\n")
	t.Chdir(repo)
	pol := writeFile(t, repo, "p.yaml", "version: 1\n")
	listen := closedLoopbackAddrs(t, 1)[0]

	for _, c := range []struct {
		name     string
		dir      string
		putInDir bool // something is put in --dir once the lock is released
		want     string
		gone     string // what must not exist afterwards ("" for nothing)
	}{
		{"removed", filepath.Join(repo, "new", "dev"), false,
			"keytrail dev: stopped the demo issuer; removed " + filepath.Join(repo, "new") + ", which it had created\n",
			filepath.Join(repo, "new")},
		{"kept", filepath.Join(repo, "taken", "dev"), true,
			"keytrail dev: stopped the demo issuer; kept " + filepath.Join(repo, "taken", "dev") + ", which it had created: directory not empty\n",
			""},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Whether c.dir existed when the stop line was written.
			var dirAtLine []bool
			var stderr *writeSpy
			// The demo issuer's port may be held for a while by a dev of
			// another test package (go test runs packages at the same
			// time): a run that found it taken is tried again once it is
			// free, for up to 3 minutes.
			deadline := time.Now().Add(3 * time.Minute)
			var err error
			for {
				dirAtLine = nil
				stderr = &writeSpy{onWrite: func(p []byte) {
					if strings.Contains(string(p), "keytrail dev: stopped") {
						_, err := os.Stat(c.dir)
						dirAtLine = append(dirAtLine, err == nil)
					}
				}}
				e := &env{ctx: context.Background(), stdout: io.Discard, stderr: stderr, getenv: func(string) string { return "" }}
				if c.putInDir {
					e.devUnlocked = func() {
						// Another dev took --dir meanwhile: its dev.lock.
						writeFile(t, c.dir, "dev.lock", "4242\n")
					}
				}
				err = runDev(context.Background(), e, devOptions{dir: c.dir, listen: listen, policy: pol})
				if err == nil || !strings.Contains(err.Error(), "the demo issuer needs "+devIssuerAddr) {
					break
				}
				// As before this run: neither --dir nor its parent there.
				if rerr := os.RemoveAll(filepath.Dir(c.dir)); rerr != nil {
					t.Fatal(rerr)
				}
				for {
					if time.Now().After(deadline) {
						t.Fatalf("the demo issuer's port %s stayed taken for 3 minutes (another keytrail dev running?): %v", devIssuerAddr, err)
					}
					if l, lerr := net.Listen("tcp", devIssuerAddr); lerr == nil {
						l.Close()
						break
					}
					time.Sleep(50 * time.Millisecond) // polling the port until it is free, not a timed wait
				}
			}
			if err == nil || !strings.Contains(err.Error(), "building Vault") {
				t.Fatalf("dev = %v, want getting the Vault binary to fail", err)
			}
			got := stderr.String()
			if !strings.Contains(got, c.want) {
				t.Errorf("stderr:\n%s\nwant the line %q", got, c.want)
			}
			if len(dirAtLine) != 1 {
				t.Fatalf("%d stop lines in stderr:\n%s", len(dirAtLine), got)
			}
			if c.gone != "" {
				if dirAtLine[0] {
					t.Errorf("the stop line says %s was removed while it still existed", c.dir)
				}
				if _, err := os.Stat(c.gone); !errors.Is(err, fs.ErrNotExist) {
					t.Errorf("%s is still there (%v)", c.gone, err)
				}
				return
			}
			if strings.Contains(got, "removed") {
				t.Errorf("stderr says something was removed:\n%s", got)
			}
			if !slices.Contains(listDir(t, c.dir), "dev.lock") {
				t.Errorf("the other dev's dev.lock is gone from %s", c.dir)
			}
		})
	}
}

// writeSpy is a bytes.Buffer that calls onWrite with each write before it
// keeps it.
type writeSpy struct {
	bytes.Buffer
	onWrite func(p []byte)
}

func (w *writeSpy) Write(p []byte) (int, error) {
	w.onWrite(p)
	return w.Buffer.Write(p)
}
