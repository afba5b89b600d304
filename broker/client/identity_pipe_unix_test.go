//go:build unix

package client

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// TestFileIdentityReadsAPipe: the identity token file (fetch and exec
// --identity-token-file) may be a pipe, read to its end: bash process
// substitution (--identity-token-file <(get-token)) names one as
// /dev/fd/N, and a named pipe a helper writes the token into is another.
// Unlike the files the server's config and policy name (refused when they
// are not regular files), this one must keep working.
func TestFileIdentityReadsAPipe(t *testing.T) {
	// readGuarded is IdentityToken, failing the test if it has not
	// returned within a minute (a guard, not a measure of speed).
	readGuarded := func(t *testing.T, path string) (string, error) {
		t.Helper()
		type result struct {
			tok string
			err error
		}
		done := make(chan result, 1)
		go func() {
			tok, err := FileIdentity{Path: path}.IdentityToken(context.Background())
			done <- result{tok, err}
		}()
		select {
		case r := <-done:
			return r.tok, r.err
		case <-time.After(time.Minute):
			t.Fatalf("IdentityToken(%s) did not return within a minute", path)
			return "", nil
		}
	}

	t.Run("named-pipe", func(t *testing.T) {
		fifo := filepath.Join(t.TempDir(), "token")
		if err := syscall.Mkfifo(fifo, 0o600); err != nil {
			t.Fatal(err)
		}
		// The writer's open waits for a reader: the helper that writes
		// the token when asked.
		wrote := make(chan error, 1)
		go func() {
			w, err := os.OpenFile(fifo, os.O_WRONLY, 0)
			if err != nil {
				wrote <- err
				return
			}
			_, err = w.WriteString("jwt-from-fifo\n")
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			wrote <- err
		}()
		t.Cleanup(func() {
			// Should the read not have opened the pipe, let the writer's
			// open return so that its goroutine ends.
			if r, err := os.OpenFile(fifo, os.O_RDONLY|syscall.O_NONBLOCK, 0); err == nil {
				defer r.Close()
			}
			select {
			case <-wrote:
			case <-time.After(time.Minute):
			}
		})
		tok, err := readGuarded(t, fifo)
		if err != nil || tok != "jwt-from-fifo" {
			t.Errorf("IdentityToken(named pipe) = %q, %v, want %q", tok, err, "jwt-from-fifo")
		}
	})

	t.Run("process-substitution", func(t *testing.T) {
		r, w, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		path := fmt.Sprintf("/dev/fd/%d", r.Fd())
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("no %s for the pipe: %v", path, err)
		}
		if _, err := w.WriteString("jwt-from-pipe\n"); err != nil {
			t.Fatal(err)
		}
		w.Close() // the command ended: the read sees the end
		tok, err := readGuarded(t, path)
		if err != nil || tok != "jwt-from-pipe" {
			t.Errorf("IdentityToken(%s) = %q, %v, want %q", path, tok, err, "jwt-from-pipe")
		}
	})
}
