//go:build linux

package client

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"
)

// TestFileIdentityEndedPipeIsAPermanentError: an identity token file that
// is an unnamed pipe (bash's --identity-token-file <(get-token), named
// /dev/fd/N) gives the token once. Once its writer has exited and the
// token was read (fetch --watch and exec --watch read the file again at
// every renewal), or when its writer exited without writing, reading it
// again is its end at once, and nothing can ever write to it again: no
// one can open an unnamed pipe for writing. It was taken for a named pipe
// whose writer has not come yet and waited for, pipeReadTimeout (30 s) at
// every renewal, before a transient error said nothing was written within
// 30s. It is a permanent error, at once, saying what happened. A pipe
// whose writer is still open keeps the bound (below).
func TestFileIdentityEndedPipeIsAPermanentError(t *testing.T) {
	read := func(t *testing.T, path string) (string, error) {
		t.Helper()
		return readGuarded(t, path, time.Minute, "a minute")
	}
	permanent := func(t *testing.T, path string, err error) {
		t.Helper()
		var ie *IdentityError
		want := "identity token from file " + path + ": a pipe whose writer has exited with nothing left to read"
		if !errors.As(err, &ie) || ie.Transient || !IsPermanent(err) || !strings.Contains(err.Error(), want) {
			t.Errorf("IdentityToken = %v, want a permanent *IdentityError saying %q", err, want)
		}
	}

	t.Run("read-again", func(t *testing.T) {
		path, w := anonPipe(t)
		if _, err := w.WriteString("jwt-once\n"); err != nil {
			t.Fatal(err)
		}
		w.Close() // the command ended
		if tok, err := read(t, path); err != nil || tok != "jwt-once" {
			t.Fatalf("first IdentityToken = %q, %v, want %q", tok, err, "jwt-once")
		}
		// A renewal.
		_, err := read(t, path)
		permanent(t, path, err)
	})

	t.Run("nothing-written", func(t *testing.T) {
		path, w := anonPipe(t)
		w.Close() // <(true)
		_, err := read(t, path)
		permanent(t, path, err)
	})

	t.Run("writer-open-keeps-the-bound", func(t *testing.T) {
		path, _ := anonPipe(t) // the writer open, nothing written
		defer func(d time.Duration) { pipeReadTimeout = d }(pipeReadTimeout)
		pipeReadTimeout = 200 * time.Millisecond
		_, err := read(t, path)
		var ie *IdentityError
		// Said as what it is: not a named pipe.
		want := "identity token from file " + path + ": an unnamed pipe (<(cmd), /dev/fd/N) nothing was written to within 200ms"
		if !errors.As(err, &ie) || !ie.Transient || !strings.Contains(err.Error(), want) {
			t.Errorf("IdentityToken = %v, want a transient *IdentityError saying %q", err, want)
		}
	})

	t.Run("writer-open-writes", func(t *testing.T) {
		path, w := anonPipe(t)
		go func() {
			_, _ = w.WriteString("jwt-slow\n")
			w.Close()
		}()
		if tok, err := read(t, path); err != nil || tok != "jwt-slow" {
			t.Errorf("IdentityToken = %q, %v, want %q", tok, err, "jwt-slow")
		}
	})
}

// anonPipe is an unnamed pipe, as bash's <(cmd) gives one: the path of its
// read end (/dev/fd/N) and its write end, both closed when t ends.
func anonPipe(t *testing.T) (path string, w *os.File) {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	return fmt.Sprintf("/dev/fd/%d", r.Fd()), w
}
