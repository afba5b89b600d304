//go:build unix

package main

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestWriteAtomicRefusesNonRegular: --out naming an existing device, named
// pipe or directory is refused, not renamed over: `keytrail report --out
// /dev/null` (or fetch's) as root replaced /dev/null with a 0600 regular
// file. A named pipe stands in for the device here (the old code renamed
// over it the same way); a symbolic link is still replaced as before.
func TestWriteAtomicRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "pipe")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	err := writeAtomic(fifo, []byte("secret"))
	if err == nil || !strings.Contains(err.Error(), "is a named pipe, not a regular file") {
		t.Errorf("writeAtomic(named pipe) = %v, want an error naming a named pipe", err)
	}
	if fi, err := os.Lstat(fifo); err != nil || fi.Mode()&os.ModeNamedPipe == 0 {
		t.Errorf("after writeAtomic the named pipe is %v (%v), want it still a named pipe", fi.Mode(), err)
	}
	if err := writeAtomic(dir, []byte("x")); err == nil || !strings.Contains(err.Error(), "is a directory") {
		t.Errorf("writeAtomic(directory) = %v, want an error naming a directory", err)
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) != 1 {
		t.Errorf("%d entries left in the directory, want only the pipe (no temporary file)", len(entries))
	}
	// A symbolic link is replaced by the file, as before.
	target := filepath.Join(dir, "target")
	if err := os.WriteFile(target, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := writeAtomic(link, []byte("new")); err != nil {
		t.Errorf("writeAtomic(symbolic link) = %v, want it replaced", err)
	}
}
