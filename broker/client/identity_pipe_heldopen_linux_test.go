//go:build linux

package client

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestFileIdentityPipeWriterKeptOpen: a pipe's writer that wrote the token
// and keeps the pipe open (--identity-token-file <(echo $TOK; sleep 100),
// a helper that serves the token and lingers) was waited for until
// pipeReadTimeout (30 s), and then the token read was dropped for a
// transient "nothing was written to within 30s": the token was consumed,
// so every retry found the pipe empty and waited 30 s again, until
// --timeout. A token whose line has ended (a newline after it) is complete:
// it is returned at once. A token without its newline yet is still waited
// for, within the bound, and said to be incomplete when the bound passes.
func TestFileIdentityPipeWriterKeptOpen(t *testing.T) {
	read := func(t *testing.T, path string) (string, error) {
		t.Helper()
		return readGuarded(t, path, 2*time.Minute, "two minutes")
	}
	named := func(t *testing.T) (string, *os.File) {
		t.Helper()
		fifo := filepath.Join(t.TempDir(), "token")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		// Read end first (non-blocking), so the writer's open does not
		// wait; it stays open for IdentityToken's own open to find.
		keep, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0)
		if err != nil {
			t.Fatal(err)
		}
		w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { keep.Close(); w.Close() })
		return fifo, w
	}
	for name, mk := range map[string]func(*testing.T) (string, *os.File){"unnamed": anonPipe, "named": named} {
		t.Run(name+"/line-ended", func(t *testing.T) {
			path, w := mk(t)
			if _, err := w.WriteString("jwt-kept-open\n"); err != nil {
				t.Fatal(err)
			}
			// w stays open: the writer sleeps on.
			if tok, err := read(t, path); err != nil || tok != "jwt-kept-open" {
				t.Fatalf("IdentityToken = %q, %v, want %q at once", tok, err, "jwt-kept-open")
			}
		})
		t.Run(name+"/line-not-ended", func(t *testing.T) {
			path, w := mk(t)
			defer func(d time.Duration) { pipeReadTimeout = d }(pipeReadTimeout)
			pipeReadTimeout = 500 * time.Millisecond
			if _, err := w.WriteString("jwt-part"); err != nil {
				t.Fatal(err)
			}
			_, err := read(t, path)
			var ie *IdentityError
			want := "wrote part of a token (no newline after it) and neither ended the line nor closed the pipe within 500ms"
			if !errors.As(err, &ie) || !ie.Transient || !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "jwt-part") {
				t.Errorf("IdentityToken = %v, want a transient *IdentityError saying %q (and not the token)", err, want)
			}
		})
	}
}

// TestReadPipeBlockingWriterKeptOpen: the same where a pipe cannot be
// polled (darwin's fallback, called directly here): it read to the
// writer's close, so a writer that wrote the token and lingered blocked
// fetch and exec for as long as it lingered.
func TestReadPipeBlockingWriterKeptOpen(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close() // open until the test ends: the writer lingers
	if _, err := w.WriteString("jwt-kept-open\n"); err != nil {
		t.Fatal(err)
	}
	type result struct {
		b   []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		b, err := readPipeBlocking(r)
		done <- result{b, err}
	}()
	select {
	case res := <-done:
		if res.err != nil || string(res.b) != "jwt-kept-open\n" {
			t.Fatalf("readPipeBlocking = %q, %v, want %q", res.b, res.err, "jwt-kept-open\n")
		}
	case <-time.After(time.Minute): // a guard, not a measure
		w.Close() // let the read end
		t.Fatal("readPipeBlocking did not return within a minute of the token's line: it waits for the writer to close")
	}
}
