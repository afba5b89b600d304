package e2e

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/e2e/harness"
)

// testShSandbox is a copy of what scripts/test.sh needs from the repository
// (the script, scripts/build-vault.sh, a fresh bin/vault, the Vault tools
// module's go.sum, one Go file) with a PATH of its own: the real basic tools,
// and fakes for go, gofmt, id (root) and, when withApt, apt-get. The fake
// apt-get "installs" a package by putting a fake of its command on the PATH,
// except for the packages in notInstalled. The fakes record their calls.
type testShSandbox struct {
	root, bin string
}

func newTestShSandbox(t *testing.T, withGo, withApt bool, notInstalled ...string) *testShSandbox {
	t.Helper()
	repo, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	s := &testShSandbox{root: t.TempDir()}
	s.bin = filepath.Join(s.root, "sandbox-bin")
	for _, d := range []string{"scripts", "e2e/vaultserver", "bin", "sandbox-bin"} {
		if err := os.MkdirAll(filepath.Join(s.root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []string{"scripts/test.sh", "scripts/build-vault.sh"} {
		b, err := os.ReadFile(filepath.Join(repo, f))
		if err != nil {
			t.Fatal(err)
		}
		s.write(t, f, string(b), 0o755)
	}
	s.write(t, "e2e/vaultserver/go.sum", "x\n", 0o644)
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(filepath.Join(s.root, "e2e/vaultserver/go.sum"), old, old); err != nil {
		t.Fatal(err)
	}
	s.write(t, "bin/vault", "vault", 0o755)
	s.write(t, "main.go", "package main\n", 0o644)
	for _, tool := range []string{"bash", "sh", "dirname", "ls", "find", "date", "mkdir", "rm", "mv", "env", "cat", "chmod", "flock"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatalf("%s not found: %v", tool, err)
		}
		if err := os.Symlink(p, filepath.Join(s.bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	record := func(name string) string {
		return `echo "` + name + ` $*" >> "` + filepath.Join(s.root, "calls") + `"` + "\n"
	}
	s.write(t, "sandbox-bin/id", "#!/bin/sh\necho 0\n", 0o755)
	s.write(t, "sandbox-bin/gofmt", "#!/bin/sh\n"+record("gofmt"), 0o755)
	if withGo {
		s.write(t, "sandbox-bin/go", "#!/bin/sh\n"+record("go"), 0o755)
	}
	if withApt {
		script := "#!/bin/sh\n" + record("apt-get") + `[ "$1" = install ] || exit 0
echo "apt-get DEBIAN_FRONTEND=$DEBIAN_FRONTEND" >> "` + filepath.Join(s.root, "calls") + `"
for p in "$@"; do
  case " ` + strings.Join(notInstalled, " ") + ` " in *" $p "*) continue;; esac
  case "$p" in
    redis-server) c=redis-server;; postgresql) c=postgres;; postgresql-client) c=psql;;
    chromium) c=chromium;; gcc) c=gcc;; *) continue;;
  esac
  printf '#!/bin/sh\n' > "` + s.bin + `/$c"; chmod +x "` + s.bin + `/$c"
done
`
		s.write(t, "sandbox-bin/apt-get", script, 0o755)
	}
	return s
}

func (s *testShSandbox) write(t *testing.T, rel, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(s.root, rel), []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

// run runs scripts/test.sh in the sandbox; it returns the exit status, the
// output and the calls the fakes recorded.
func (s *testShSandbox) run(t *testing.T) (code int, out, calls string) {
	t.Helper()
	cmd := exec.Command(filepath.Join(s.bin, "bash"), filepath.Join(s.root, "scripts", "test.sh"))
	cmd.Dir = s.root
	cmd.Env = []string{"PATH=" + s.bin, "HOME=" + s.root}
	b, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	c, _ := os.ReadFile(filepath.Join(s.root, "calls"))
	_ = os.Remove(filepath.Join(s.root, "calls"))
	return code, string(b), string(c)
}

// TestTestShInstallsWhatTheSuiteNeeds: scripts/test.sh, the README's test
// command, promises to install what the tests need on a fresh Debian
// machine with Go. It did not install a C compiler, so on a machine
// without gcc the run ended, after the Vault build, in "go test -race"
// failing for want of cgo; an install that did not provide a command went
// unnoticed; and a machine without apt-get got "apt-get: command not
// found". Now gcc (and libc6-dev) are installed when missing, what is still
// missing after apt-get is named and fails the run before any test, a
// missing apt-get or go is named, and a second run installs nothing.
func TestTestShInstallsWhatTheSuiteNeeds(t *testing.T) {
	t.Run("installs-once", func(t *testing.T) {
		s := newTestShSandbox(t, true, true)
		code, out, calls := s.run(t)
		if code != 0 {
			t.Fatalf("test.sh exit status %d\n%s\ncalls:\n%s", code, out, calls)
		}
		var install string
		for _, l := range strings.Split(calls, "\n") {
			if strings.HasPrefix(l, "apt-get install ") {
				install = l
			}
		}
		for _, pkg := range []string{"redis-server", "chromium", "gcc", "libc6-dev", "postgresql-client"} {
			if !strings.Contains(install+" ", " "+pkg+" ") {
				t.Errorf("apt-get install line %q lacks %s\n%s", install, pkg, calls)
			}
		}
		if !strings.Contains(calls, "apt-get DEBIAN_FRONTEND=noninteractive") {
			t.Errorf("apt-get install ran without DEBIAN_FRONTEND=noninteractive:\n%s", calls)
		}
		if !strings.Contains(calls, "go test -race -count=1 -timeout 40m ./...") {
			t.Errorf("test.sh did not run go test -race:\n%s", calls)
		}
		code, out, calls = s.run(t)
		if code != 0 || strings.Contains(calls, "apt-get") {
			t.Errorf("second run: exit status %d, apt-get calls:\n%s\noutput:\n%s", code, calls, out)
		}
	})
	for _, c := range []struct {
		name         string
		withGo, apt  bool
		notInstalled []string
		want         string
	}{
		{"install-does-not-provide", true, true, []string{"chromium"}, "test: still missing after apt-get install: chromium"},
		{"no-apt-get", true, false, nil, "and no apt-get to install them"},
		{"no-go", false, true, nil, "test: go not found on PATH"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := newTestShSandbox(t, c.withGo, c.apt, c.notInstalled...)
			code, out, calls := s.run(t)
			if code != 1 || !strings.Contains(out, c.want) {
				t.Errorf("test.sh: exit status %d, want 1 with %q; output:\n%s", code, c.want, out)
			}
			if strings.Contains(calls, "go ") || strings.Contains(calls, "gofmt") {
				t.Errorf("test.sh went on to the tests:\n%s", calls)
			}
		})
	}
}

// TestFuzzShFailsWhenNothingMatches: scripts/fuzz.sh with a filter that
// matched no target (a typo in a scheduled job) or was not a valid
// extended regular expression (grep's exit 2 read as "no match") printed
// "ran 0 target(s), 0 failed" and exited 0: green, having fuzzed nothing.
// It now exits 1 naming the filter, before running go.
func TestFuzzShFailsWhenNothingMatches(t *testing.T) {
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ filter, want string }{
		{"FuzzNoSuchTarget", "fuzz: no fuzz target matches FuzzNoSuchTarget"},
		{"Fuzz(", "fuzz: bad filter Fuzz("},
	} {
		cmd := exec.Command("bash", filepath.Join(root, "scripts", "fuzz.sh"), c.filter)
		cmd.Env = append(os.Environ(), "FUZZTIME=1x")
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || !strings.Contains(string(out), c.want) {
			t.Errorf("fuzz.sh %q: %v, want exit status 1 with %q; output:\n%s", c.filter, err, c.want, out)
		}
	}
}
