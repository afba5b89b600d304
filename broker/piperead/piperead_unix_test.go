//go:build unix

package piperead

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// openFIFO makes a named pipe and opens it for reading without blocking,
// as both callers do.
func openFIFO(t *testing.T) (string, *os.File) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(p, 0o600); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return p, f
}

// TestReadCompleteEndsWithWriterOpen: a caller's Complete ends the read
// while the writer lingers; without it, the read waits for the writer to
// close (here: the context's end).
func TestReadCompleteEndsWithWriterOpen(t *testing.T) {
	for _, withComplete := range []bool{true, false} {
		p, f := openFIFO(t)
		w, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if _, err := w.WriteString("line\n"); err != nil {
			t.Fatal(err)
		}
		o := Options{Limit: 1 << 10}
		if withComplete {
			o.Complete = func(b []byte) bool { return bytes.HasSuffix(b, []byte("\n")) }
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		b, _, err := Read(ctx, f, time.Minute, o)
		cancel()
		switch {
		case withComplete && (err != nil || string(b) != "line\n"):
			t.Fatalf("with Complete: Read = %q, %v; want %q, nil", b, err, "line\n")
		case !withComplete && !errors.Is(err, os.ErrDeadlineExceeded):
			t.Fatalf("without Complete: Read = %q, %v; want os.ErrDeadlineExceeded at the context's end", b, err)
		}
	}
}

// TestReadStopsPastLimit: a writer that writes more than Limit is not
// read to its end.
func TestReadStopsPastLimit(t *testing.T) {
	p, f := openFIFO(t)
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	go func() { _, _ = w.Write(make([]byte, 64<<10)) }() // blocks once the pipe is full
	b, _, err := Read(context.Background(), f, time.Minute, Options{Limit: 100, BufSize: 64})
	if err != nil || len(b) <= 100 || len(b) > 100+64 {
		t.Fatalf("Read = %d bytes, %v; want 101..164 bytes, nil", len(b), err)
	}
}
