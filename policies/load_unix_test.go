//go:build unix

package policies

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// returnsWithin runs f, a call that may block forever (opening a named
// pipe), in a goroutine and returns its error, failing the test if it has
// not returned within a minute: a guard against hanging, not a measure of
// speed. (broker/brokertest.ReturnsWithin, which this package's tests
// cannot import: brokertest imports policies.)
func returnsWithin(t *testing.T, what string, f func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-time.After(time.Minute):
		t.Fatalf("%s did not return within a minute: blocked reading a named pipe", what)
		return nil
	}
}

// loadGuarded is Load(p) run by returnsWithin.
func loadGuarded(t *testing.T, p string) (*Policy, error) {
	t.Helper()
	var pol *Policy
	err := returnsWithin(t, "Load("+p+")", func() error {
		var err error
		pol, err = Load(p)
		return err
	})
	return pol, err
}

// TestLoadRefusesNonRegularFiles: a policy path that names a named pipe, a
// device or a directory where a file is read (a *.yaml link to one in a
// policy directory) is refused before anything is read, naming the path and
// what it is. Before, Load of a FIFO blocked in open until something wrote
// to it, and /dev/zero was read up to the size cap. The error is the
// config file's, without the "policies: " prefix it had.
func TestLoadRefusesNonRegularFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	linked := filepath.Join(dir, "linked")
	if err := os.Mkdir(linked, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(fifo, filepath.Join(linked, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	dirLink := filepath.Join(dir, "dirlink")
	if err := os.Mkdir(dirLink, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(dir, filepath.Join(dirLink, "b.yaml")); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ path, want string }{
		{fifo, fifo + ": is a named pipe, not a regular file"},
		{linked, filepath.Join(linked, "a.yaml") + ": is a named pipe, not a regular file"},
		{dirLink, filepath.Join(dirLink, "b.yaml") + ": is a directory, not a regular file"},
	}
	if _, err := os.Stat("/dev/zero"); err == nil {
		tests = append(tests, struct{ path, want string }{"/dev/zero", "/dev/zero: is a character device, not a regular file"})
	}
	for _, tt := range tests {
		p, err := loadGuarded(t, tt.path)
		if err == nil || err.Error() != tt.want {
			t.Errorf("Load(%s) = %v, %v; want %q", tt.path, p, err, tt.want)
		}
	}
}

// TestLoadConfigMapSymlinks: a policy mounted from a Kubernetes ConfigMap is
// a chain of symlinks (p.yaml -> ..data/p.yaml, ..data -> ..<timestamp>);
// it loads, as a directory and as a file, the hidden entries left out.
func TestLoadConfigMapSymlinks(t *testing.T) {
	dir := t.TempDir()
	stamp := filepath.Join(dir, "..2026_11_29_06_30_00.123")
	if err := os.Mkdir(stamp, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(stamp, "p.yaml"), []byte("version: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Base(stamp), filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join("..data", "p.yaml"), filepath.Join(dir, "p.yaml")); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{dir, filepath.Join(dir, "p.yaml")} {
		p, err := loadGuarded(t, path)
		if err != nil {
			t.Fatalf("Load(%s) = %v", path, err)
		}
		if got := p.Sources(); len(got) != 1 || !strings.HasSuffix(got[0].Path, "p.yaml") {
			t.Errorf("Load(%s).Sources() = %v, want the one p.yaml", path, got)
		}
	}
}

// TestLoadDirectoryRefusesNonRegularEntries: in a policy directory, an
// entry named *.yaml or *.yml that is not a regular file (a named pipe, a
// socket, a directory) is an error naming it and what it is, as a symlink
// to one is, and policy reloads notice it (Considers). Before, Load left it
// out without a word, so its workloads were silently missing from a policy
// that validated. Hidden entries (a ConfigMap's ..data) stay ignored.
func TestLoadDirectoryRefusesNonRegularEntries(t *testing.T) {
	for _, tt := range []struct {
		name, what string
		make       func(string) error
	}{
		{"b.yaml", "a named pipe", func(p string) error { return syscall.Mkfifo(p, 0o600) }},
		{"b.yml", "a directory", func(p string) error { return os.Mkdir(p, 0o700) }},
		{"b.yaml", "a socket", func(p string) error {
			l, err := net.Listen("unix", p)
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
			return nil
		}},
	} {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("version: 1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, tt.name)
		if err := tt.make(p); err != nil {
			t.Fatal(err)
		}
		want := p + ": is " + tt.what + ", not a regular file"
		if pol, err := loadGuarded(t, dir); err == nil || err.Error() != want {
			t.Errorf("Load(dir with %s) = %v, %v; want %q", tt.what, pol, err, want)
		}
		entries, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if e.Name() == tt.name && !Considers(e) {
				t.Errorf("Considers(%s, %s) = false, want true: a reload must notice it", tt.name, tt.what)
			}
		}
	}

	// Hidden entries of any kind stay ignored.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("version: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, ".b.yaml"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "..c.yaml"), 0o700); err != nil {
		t.Fatal(err)
	}
	if pol, err := loadGuarded(t, dir); err != nil || len(pol.Sources()) != 1 {
		t.Errorf("Load(dir with hidden pipe and directory) = %v, %v; want the one a.yaml", pol, err)
	}
}

// TestOpenRegular: OpenRegular (what ReadFile opens with, and the readers
// of the Vault secret files, the admin token and a JWKS file) opens a
// regular file or a symlink to one, and refuses a named pipe, a device or a
// directory without blocking, naming the path and what it is; a missing
// file is the os package's *fs.PathError.
func TestOpenRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	regular := filepath.Join(dir, "regular")
	if err := os.WriteFile(regular, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink("regular", link); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	tests := []struct{ path, want string }{
		{fifo, fifo + ": is a named pipe, not a regular file"},
		{dir, dir + ": is a directory, not a regular file"},
		{missing, "open " + missing + ": no such file or directory"},
		{regular, ""},
		{link, ""},
	}
	if _, err := os.Stat("/dev/zero"); err == nil {
		tests = append(tests, struct{ path, want string }{"/dev/zero", "/dev/zero: is a character device, not a regular file"})
	}
	for _, tt := range tests {
		err := returnsWithin(t, "OpenRegular("+tt.path+")", func() error {
			f, err := OpenRegular(tt.path)
			if err == nil {
				f.Close()
			}
			return err
		})
		if got := fmt.Sprint(err); (tt.want == "" && err != nil) || (tt.want != "" && got != tt.want) {
			t.Errorf("OpenRegular(%s) = %v, want %q", tt.path, err, tt.want)
		}
	}
}

// TestLoadDirectoryReportsMiscasedNonRegularEntries: in a policy directory,
// an entry whose extension is miscased (X.YAML, y.Yml) and that is not a
// regular file (a named pipe, a socket, a directory, a symlink to a pipe)
// is a problem naming it and what it is, listed with the other miscased
// entries, and policy reloads notice it (Considers). Before, it was left
// out without a word while a regular B.YAML beside it was reported. It is
// not told to rename itself: renamed, it would be refused as not a regular
// file, so the problem says what a policy file is instead.
func TestLoadDirectoryReportsMiscasedNonRegularEntries(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("version: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "B.YAML"), []byte("version: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(dir, "P.YAML"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "d.Yml"), 0o700); err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("unix", filepath.Join(dir, "s.yAml"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	if err := os.Symlink(filepath.Join(dir, "P.YAML"), filepath.Join(dir, "l.YML")); err != nil {
		t.Fatal(err)
	}
	const policyFiles = `policy files are regular files named *.yaml or *.yml (lowercase)`
	want := []string{
		filepath.Join(dir, "B.YAML") + `: not read: policy file names end in ".yaml" or ".yml" (lowercase); rename it`,
		filepath.Join(dir, "P.YAML") + `: not read: is a named pipe, not a regular file; ` + policyFiles,
		filepath.Join(dir, "d.Yml") + `: not read: is a directory, not a regular file; ` + policyFiles,
		filepath.Join(dir, "l.YML") + `: not read: is a named pipe, not a regular file; ` + policyFiles,
		filepath.Join(dir, "s.yAml") + `: not read: is a socket, not a regular file; ` + policyFiles,
	}
	p, err := loadGuarded(t, dir)
	if got := problemStrings(err); strings.Join(got, "\n") != strings.Join(want, "\n") || p != nil {
		t.Errorf("Load = %v, %v\ngot problems:\n%s\nwant:\n%s", p, err, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != "a.yaml" && !Considers(e) {
			t.Errorf("Considers(%s, %v) = false, want true: a reload must notice it", e.Name(), e.Type())
		}
	}
}

// TestLoadDirectoryReportsDanglingSymlinks: in a policy directory, a
// symlink named *.yaml or *.YAML whose target does not exist is a problem
// naming it, as a dangling symlink, and its target. Before, the miscased
// one was told to rename itself (renamed, it would still lead nowhere) and
// the lowercase one stopped the load with "open DIR/x.yaml: no such file or
// directory", which says neither that it is a symlink nor where it points.
func TestLoadDirectoryReportsDanglingSymlinks(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("version: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "B.YAML"), []byte("version: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	gone := filepath.Join(dir, "gone", "p.yaml")
	if err := os.Symlink(gone, filepath.Join(dir, "L.YAML")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../nowhere.yaml", filepath.Join(dir, "l.yaml")); err != nil {
		t.Fatal(err)
	}
	const policyFiles = `policy files are regular files named *.yaml or *.yml (lowercase)`
	want := []string{
		filepath.Join(dir, "B.YAML") + `: not read: policy file names end in ".yaml" or ".yml" (lowercase); rename it`,
		filepath.Join(dir, "L.YAML") + `: not read: is a dangling symlink to ` + gone + `; ` + policyFiles,
		filepath.Join(dir, "l.yaml") + `: not read: is a dangling symlink to ../nowhere.yaml`,
	}
	p, err := loadGuarded(t, dir)
	if got := problemStrings(err); strings.Join(got, "\n") != strings.Join(want, "\n") || p != nil {
		t.Errorf("Load = %v, %v\ngot problems:\n%s\nwant:\n%s", p, err, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestLoadDirectoryDanglingSymlinkTargets: a dangling symlink's problem
// stays one line when its target holds a newline (the target is quoted
// then, as explain quotes a subject), and one that leads to another link
// that dangles names the last link of the chain and its target: before,
// l.yaml -> m.yaml -> nowhere said "dangling symlink to m.yaml", a file
// that exists (as a link), and a newline in a target split its problem
// in two lines.
func TestLoadDirectoryDanglingSymlinkTargets(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("version: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, ".links"), 0o700); err != nil {
		t.Fatal(err)
	}
	for link, target := range map[string]string{
		"l.yaml":    "m.yaml",
		"m.yaml":    "../nowhere.yaml",
		"k.yaml":    ".links/k",
		".links/k":  "j",
		".links/j":  "../gone.yaml",
		"n.yaml":    "gone\nx.yaml: not read: is a dangling symlink to y",
		"abs.yaml":  filepath.Join(dir, ".links", "k"),
		"self.yaml": "gone.yaml",
	} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	links := filepath.Join(dir, ".links")
	want := []string{
		filepath.Join(dir, "abs.yaml") + `: not read: is a chain of symlinks (to ` + filepath.Join(links, "k") + `) ending at ` + filepath.Join(links, "j") + `, a dangling symlink to ../gone.yaml`,
		filepath.Join(dir, "k.yaml") + `: not read: is a chain of symlinks (to .links/k) ending at ` + filepath.Join(links, "j") + `, a dangling symlink to ../gone.yaml`,
		filepath.Join(dir, "l.yaml") + `: not read: is a chain of symlinks (to m.yaml) ending at ` + filepath.Join(dir, "m.yaml") + `, a dangling symlink to ../nowhere.yaml`,
		filepath.Join(dir, "m.yaml") + `: not read: is a dangling symlink to ../nowhere.yaml`,
		filepath.Join(dir, "n.yaml") + `: not read: is a dangling symlink to "gone\nx.yaml: not read: is a dangling symlink to y"`,
		filepath.Join(dir, "self.yaml") + `: not read: is a dangling symlink to gone.yaml`,
	}
	p, err := loadGuarded(t, dir)
	if got := problemStrings(err); strings.Join(got, "\n") != strings.Join(want, "\n") || p != nil {
		t.Errorf("Load = %v, %v\ngot problems:\n%s\nwant:\n%s", p, err, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if err != nil {
		// A header line, then one line a problem.
		if n := strings.Count(err.Error(), "\n"); n != len(want) {
			t.Errorf("error has %d lines after its header for %d problems:\n%s", n, len(want), err)
		}
	}
}
