//go:build linux

package client

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestReadPipeBlockingClearsNonblock: where a pipe cannot be polled
// (darwin: os does not put FIFOs in kqueue), readPipe reads it blocking,
// as before the open took O_NONBLOCK. It did so with fh.Fd(), which
// clears only an O_NONBLOCK os set itself, not one the caller asked for:
// the descriptor stayed non-blocking, and a helper that had opened the
// named pipe and not written yet (the usual case: it writes once a reader
// comes) read as EAGAIN, a permanent IdentityError. Checked on the
// descriptor, on Linux, where the fallback can be called directly.
func TestReadPipeBlockingClearsNonblock(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "token")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0) // as FileIdentity opens it
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteString("jwt\n"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	b, err := readPipeBlocking(r)
	if err != nil || string(b) != "jwt\n" {
		t.Fatalf("readPipeBlocking = %q, %v, want %q", b, err, "jwt\n")
	}
	fl, err := unix.FcntlInt(r.Fd(), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if fl&unix.O_NONBLOCK != 0 {
		t.Fatal("readPipeBlocking read the pipe with O_NONBLOCK still set: where it is not polled (darwin), a writer that has not written yet reads as EAGAIN")
	}
}

// TestReadPipeBlockingWaitsForAWriterThatHasNotWritten: the same fallback
// waits, blocked in read(2) on the pipe (seen in /proc), for a writer
// that has not written yet, and returns what it writes.
func TestReadPipeBlockingWaitsForAWriterThatHasNotWritten(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "token")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	// Opened as FileIdentity opens it.
	r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := readPipeBlocking(r)
		done <- result{b, err}
	}()
	// Wait until the read is blocked in read(2) on the pipe, or returned.
	deadline := time.Now().Add(time.Minute) // a guard, not a measure
	for !blockedInRead(t, int(r.Fd())) {
		select {
		case res := <-done:
			t.Fatalf("readPipeBlocking returned %q, %v before the writer wrote; want it to wait", res.b, res.err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("readPipeBlocking neither blocked in read(2) nor returned within a minute")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := w.WriteString("jwt-late\n"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	select {
	case res := <-done:
		if res.err != nil || string(res.b) != "jwt-late\n" {
			t.Fatalf("readPipeBlocking = %q, %v, want %q", res.b, res.err, "jwt-late\n")
		}
	case <-time.After(time.Minute):
		t.Fatal("readPipeBlocking did not return within a minute of the writer closing")
	}
}

// blockedInRead reports whether a thread of this process is in read(2) on
// fd (/proc/self/task/*/syscall: the number, then the arguments).
func blockedInRead(t *testing.T, fd int) bool {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("%d %#x ", syscall.SYS_READ, fd)
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "syscall"))
		if err == nil && strings.HasPrefix(string(b), want) {
			return true
		}
	}
	return false
}
