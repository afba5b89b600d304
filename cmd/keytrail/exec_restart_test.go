package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// syncBuffer is a bytes.Buffer safe for the child's output and keytrail's
// lines written at the same time, read while they are.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// renewingBroker answers every exchange with a new token, tok-1, tok-2, ...,
// that expires in ttl seconds.
func renewingBroker(t *testing.T, ttl int) string {
	t.Helper()
	var n atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		i := n.Add(1)
		w.Header().Set("X-Request-Id", "req_fake")
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"access_token":"tok-%d","token_type":"Bearer","expires_in":%d,"issuance_id":"iss_%d","grant":"g","kind":"vault_token"}`, i, ttl, i)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// TestExecWatchRestartsOncePerRenewal: with --watch (--on-renew restart),
// a renewal that comes while CMD is being stopped for the previous one is
// in the environment of the CMD started next. That CMD must not be
// stopped and started again for it: a restart for nothing, which kills a
// program that has just started (mid-initialisation, before its TERM
// handler is set). Here CMD takes until the next renewal to stop, so that
// one always comes during the restart.
//
// What is checked is each CMD's environment, as exec started it, not the
// order of keytrail's lines: a renewal's status line is written before
// exec is told of it, so a CMD may start between the two (the renewing
// goroutine descheduled under load), rightly with the credential before
// that renewal, and the restart for it then follows with no status line
// between the two "restarted" lines.
func TestExecWatchRestartsOncePerRenewal(t *testing.T) {
	addr := renewingBroker(t, 1)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt"), 0o600); err != nil {
		t.Fatal(err)
	}
	outDir := filepath.Join(dir, "out")
	stop := filepath.Join(dir, "stop")
	// On SIGTERM, CMD waits until the credential file changes (the next
	// renewal has been written, just before exec is told of it) or the
	// test ends, then exits; it exits by itself when the test ends.
	script := `out="$1"; stop="$2"
trap 'c=$(cat "$out"); while [ "$(cat "$out")" = "$c" ] && [ ! -e "$stop" ]; do sleep 0.02; done; exit 0' TERM
while [ ! -e "$stop" ]; do sleep 0.02; done`
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stdout, stderr syncBuffer
	getenv := func(k string) string {
		if k == "KEYTRAIL_ADDR" {
			return addr
		}
		return ""
	}
	// The T of each CMD started, in order.
	var startedMu sync.Mutex
	var started []string
	e := &env{ctx: ctx, getenv: getenv, stdout: &stdout, stderr: &stderr, progressEvery: time.Hour,
		execStarted: func(environ []string) {
			tok := "(no T)"
			for _, kv := range environ {
				if v, ok := strings.CutPrefix(kv, "T="); ok {
					tok = v
				}
			}
			startedMu.Lock()
			defer startedMu.Unlock()
			started = append(started, tok)
		}}
	done := make(chan error, 1)
	go func() {
		root := newRootCmd(e)
		root.SetArgs([]string{"exec", "--identity-token-file", tokenFile, "--grant", "g", "--env", "T", "--out-dir", outDir, "--watch",
			"--", "sh", "-c", script, "sh", filepath.Join(outDir, "g"), stop})
		root.SetOut(&stdout)
		root.SetErr(&stderr)
		done <- root.ExecuteContext(ctx)
	}()
	const restarts = 3
	deadline := time.Now().Add(time.Minute) // a guard, not a measure of speed
	for strings.Count(stderr.String(), "restarted sh") < restarts {
		select {
		case err := <-done:
			t.Fatalf("exec ended early: %v\nstderr:\n%s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %d restarts within a minute\nstderr:\n%s", restarts, stderr.String())
		}
	}
	if err := os.WriteFile(stop, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exec = %v, want CMD's exit status 0\nstderr:\n%s", err, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatalf("exec did not end when CMD did\nstderr:\n%s", stderr.String())
	}
	// Every restart follows a renewal of its own: no CMD is started with
	// the credential the CMD before it had. (exec has ended: no more
	// starts.)
	startedMu.Lock()
	defer startedMu.Unlock()
	if len(started) < restarts+1 {
		t.Fatalf("%d CMDs started, want at least %d\nstderr:\n%s", len(started), restarts+1, stderr.String())
	}
	for i := 1; i < len(started); i++ {
		if started[i] == started[i-1] {
			t.Fatalf("CMD restarted with the credential it had (T=%s): a restart for no renewal\nCMDs' T: %v\nstderr:\n%s", started[i], started, stderr.String())
		}
	}
}
