//go:build unix

package client

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// readGuarded is FileIdentity{Path: path}.IdentityToken, failing the test
// if it has not returned within wait (said as waitText): a guard, not a
// measure of speed.
func readGuarded(t *testing.T, path string, wait time.Duration, waitText string) (string, error) {
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
	case <-time.After(wait):
		t.Fatalf("IdentityToken(%s) did not return within %s", path, waitText)
		return "", nil
	}
}

// TestFileIdentityReadsAPipe: the identity token file (fetch and exec
// --identity-token-file) may be a pipe, read to its end: bash process
// substitution (--identity-token-file <(get-token)) names one as
// /dev/fd/N, and a named pipe a helper writes the token into is another.
// Unlike the files the server's config and policy name (refused when they
// are not regular files), this one must keep working.
func TestFileIdentityReadsAPipe(t *testing.T) {
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
		tok, err := readGuarded(t, fifo, time.Minute, "a minute")
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
		tok, err := readGuarded(t, path, time.Minute, "a minute")
		if err != nil || tok != "jwt-from-pipe" {
			t.Errorf("IdentityToken(%s) = %q, %v, want %q", path, tok, err, "jwt-from-pipe")
		}
	})
}

// TestFileIdentityPipeWithoutWriterReturns: a named pipe nobody writes to
// (its helper not running, or stuck) made IdentityToken wait forever: the
// open for reading waited for a writer, without regard to ctx, and fetch
// and exec hung, their --timeout and Ctrl-C unheeded. Now a writer, and
// what it writes, are waited for until ctx ends or, at the latest,
// pipeReadTimeout (the exchange's own bound) has passed: then a transient
// error (a first fetch retries until its --timeout, a renewal keeps the
// last credential).
func TestFileIdentityPipeWithoutWriterReturns(t *testing.T) {
	// returns is IdentityToken(ctx), failing the test if it has not
	// returned within a minute (a guard, not a measure of speed).
	returns := func(t *testing.T, ctx context.Context, path string) error {
		t.Helper()
		done := make(chan error, 1)
		go func() {
			_, err := FileIdentity{Path: path}.IdentityToken(ctx)
			done <- err
		}()
		select {
		case err := <-done:
			return err
		case <-time.After(time.Minute):
			// Let a blocked open return, so that the goroutine ends.
			if w, err := os.OpenFile(path, os.O_WRONLY|syscall.O_NONBLOCK, 0); err == nil {
				w.Close()
			}
			t.Fatalf("IdentityToken(%s) did not return within a minute", path)
			return nil
		}
	}
	mkfifo := func(t *testing.T) string {
		t.Helper()
		p := filepath.Join(t.TempDir(), "token")
		if err := syscall.Mkfifo(p, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	transient := func(t *testing.T, err error, want string) {
		t.Helper()
		var ie *IdentityError
		if !errors.As(err, &ie) || !ie.Transient || !strings.Contains(err.Error(), want) {
			t.Errorf("IdentityToken = %v, want a transient *IdentityError saying %q", err, want)
		}
	}

	t.Run("no-writer", func(t *testing.T) {
		fifo := mkfifo(t)
		defer func(d time.Duration) { pipeReadTimeout = d }(pipeReadTimeout)
		pipeReadTimeout = 200 * time.Millisecond
		transient(t, returns(t, context.Background(), fifo), "file "+fifo+": a named pipe nothing was written to within 200ms")
	})

	t.Run("no-writer-ctx-ends", func(t *testing.T) {
		fifo := mkfifo(t)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		transient(t, returns(t, ctx, fifo), "file "+fifo+": a named pipe nothing was written to")
	})

	// The writer may come after the read has begun: it is waited for.
	t.Run("writer-after-reader", func(t *testing.T) {
		fifo := mkfifo(t)
		wrote := make(chan error, 1)
		go func() {
			// O_NONBLOCK: the open fails (ENXIO) until a reader has the
			// pipe open, here IdentityToken.
			deadline := time.Now().Add(time.Minute)
			for {
				w, err := os.OpenFile(fifo, os.O_WRONLY|syscall.O_NONBLOCK, 0)
				if err == nil {
					_, err = w.WriteString("jwt-late\n")
					w.Close()
					wrote <- err
					return
				}
				if !errors.Is(err, syscall.ENXIO) || time.Now().After(deadline) {
					wrote <- err
					return
				}
				time.Sleep(time.Millisecond)
			}
		}()
		tok, err := FileIdentity{Path: fifo}.IdentityToken(context.Background())
		if werr := <-wrote; werr != nil {
			t.Fatalf("writer: %v", werr)
		}
		if err != nil || tok != "jwt-late" {
			t.Errorf("IdentityToken = %q, %v, want %q", tok, err, "jwt-late")
		}
	})

	// silent opens fifo for writing, writes nothing, and keeps it open
	// until the test ends.
	silent := func(t *testing.T, fifo string) {
		t.Helper()
		w, err := os.OpenFile(fifo, os.O_RDWR, 0) // O_RDWR: the open does not wait for a reader
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { w.Close() })
	}

	t.Run("silent-writer-ctx-ends", func(t *testing.T) {
		fifo := mkfifo(t)
		silent(t, fifo)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		transient(t, returns(t, ctx, fifo), "file "+fifo+": a named pipe nothing was written to")
	})

	t.Run("silent-writer-own-bound", func(t *testing.T) {
		fifo := mkfifo(t)
		silent(t, fifo)
		defer func(d time.Duration) { pipeReadTimeout = d }(pipeReadTimeout)
		pipeReadTimeout = 200 * time.Millisecond
		transient(t, returns(t, context.Background(), fifo), "file "+fifo+": a named pipe nothing was written to within 200ms")
	})
}

// TestFetchNamesAPipeNobodyWroteTo: a first fetch whose --timeout ends
// while the identity token file, a named pipe, is waited for says so
// (LastFailure), not only that ctx ended: fetch and exec said "the broker
// stayed busy or unreachable", the broker never asked.
func TestFetchNamesAPipeNobodyWroteTo(t *testing.T) {
	fifo := filepath.Join(t.TempDir(), "token")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := New(Options{Addr: "http://127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	src, err := NewSource(SourceOptions{Client: c, Grant: "g", Exchange: ExchangeOptions{Identity: FileIdentity{Path: fifo}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err = src.Fetch(ctx)
	last := LastFailure(err)
	if !errors.Is(err, context.DeadlineExceeded) || last == nil || !strings.Contains(last.Error(), "file "+fifo+": a named pipe nothing was written to") {
		t.Errorf("Fetch = %v, last failure %v; want ctx's error, the last failure naming the pipe", err, last)
	}
}
