//go:build unix

package main

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// loadConfigGuarded is LoadConfig(path), failing the test if it has not
// returned within a minute (a guard against hanging, not a measure of
// speed).
func loadConfigGuarded(t *testing.T, path string) (*Config, error) {
	t.Helper()
	type result struct {
		c   *Config
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := LoadConfig(path, func(string) string { return "" })
		done <- result{c, err}
	}()
	select {
	case r := <-done:
		return r.c, r.err
	case <-time.After(time.Minute):
		t.Fatalf("LoadConfig(%s) did not return within a minute", path)
		return nil, nil
	}
}

// TestLoadConfigRefusesNonRegularFiles: a config path that names a named
// pipe, a device or a directory is refused before anything is read,
// naming the path and what it is. Before, LoadConfig of a FIFO blocked in
// open until something wrote to it, and /dev/zero was read up to the cap.
func TestLoadConfigRefusesNonRegularFiles(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "config.yaml")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.yaml")
	if err := os.Symlink(fifo, link); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ path, want string }{
		{fifo, fifo + ": is a named pipe, not a regular file"},
		{link, link + ": is a named pipe, not a regular file"},
		{dir, dir + ": is a directory, not a regular file"},
	}
	if _, err := os.Stat("/dev/zero"); err == nil {
		tests = append(tests, struct{ path, want string }{"/dev/zero", "/dev/zero: is a character device, not a regular file"})
	}
	for _, tt := range tests {
		c, err := loadConfigGuarded(t, tt.path)
		if err == nil || err.Error() != tt.want {
			t.Errorf("LoadConfig(%s) = %v, %v; want %q", tt.path, c, err, tt.want)
		}
	}
}

// TestLoadConfigConfigMapSymlinks: a config file mounted from a Kubernetes
// ConfigMap is a chain of symlinks (config.yaml -> ..data/config.yaml,
// ..data -> ..<timestamp>): it is read through them.
func TestLoadConfigConfigMapSymlinks(t *testing.T) {
	dir := t.TempDir()
	pol := writeFile(t, dir, "p.yaml", "version: 1\n")
	mount := filepath.Join(dir, "mount")
	stamp := filepath.Join(mount, "..2026_11_29_06_30_00.123")
	if err := os.MkdirAll(stamp, 0o700); err != nil {
		t.Fatal(err)
	}
	writeFile(t, stamp, "config.yaml", "public_url: https://keytrail.internal\npolicy: "+pol+"\nvault: {address: https://vault.internal:8200}\naudit: {file: "+filepath.Join(dir, "audit.jsonl")+"}\n")
	if err := os.Symlink(filepath.Base(stamp), filepath.Join(mount, "..data")); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(mount, "config.yaml")
	if err := os.Symlink(filepath.Join("..data", "config.yaml"), path); err != nil {
		t.Fatal(err)
	}
	c, err := loadConfigGuarded(t, path)
	if err != nil {
		t.Fatalf("LoadConfig(%s) = %v", path, err)
	}
	if c.PublicURL != "https://keytrail.internal" {
		t.Errorf("LoadConfig(%s).PublicURL = %q, want the file's", path, c.PublicURL)
	}
}
