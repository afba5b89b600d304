package authn_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/policies"
)

// connCounter counts the connections an httptest server accepts and closes.
type connCounter struct {
	opened, closed atomic.Int64
	changed        chan struct{} // a send (dropped when full) per state change
}

func newCountedServer(tb testing.TB, h http.Handler) (*httptest.Server, *connCounter) {
	tb.Helper()
	cc := &connCounter{changed: make(chan struct{}, 1)}
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			cc.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			cc.closed.Add(1)
		}
		select {
		case cc.changed <- struct{}{}:
		default:
		}
	}
	srv.Start()
	tb.Cleanup(srv.Close)
	return srv, cc
}

// waitClosed waits until n connections have closed, failing after a
// generous deadline (a hang, not a timing).
func (cc *connCounter) waitClosed(tb testing.TB, n int64) {
	tb.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for cc.closed.Load() < n {
		select {
		case <-cc.changed:
		case <-deadline.C:
			tb.Fatalf("connections closed: %d, want %d", cc.closed.Load(), n)
		}
	}
}

func closeTestIssuer(url string) policies.Issuer {
	return policies.Issuer{
		Name: "es", Issuer: url, JWKSURL: url + authntest.JWKSPath,
		Audiences: []string{"keytrail"}, Algorithms: []string{"ES256"},
		MaxTokenLifetime: policies.Duration(time.Hour),
	}
}

// reloadPair is an issuer behind a counted server, a verifier v1 that has
// fetched its keys once (for tok), and v2 replacing it (Options.Previous).
type reloadPair struct {
	ctx    context.Context
	iss    *authntest.Issuer
	cc     *connCounter
	clock  *fakeClock
	opts   authn.Options
	v1, v2 *authn.Verifier
	tok    string
}

func newReloadPair(t *testing.T) *reloadPair {
	t.Helper()
	ctx := context.Background()
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	srv, cc := newCountedServer(t, iss.Handler())
	iss.URL = srv.URL
	clock := &fakeClock{now: t0}
	opts := authn.Options{Issuers: []policies.Issuer{closeTestIssuer(srv.URL)}, Now: clock.Now}
	v1, err := authn.New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := iss.Token(testSub, "keytrail", t0, 10*time.Minute)
	if _, err := v1.Authenticate(ctx, tok); err != nil {
		t.Fatalf("v1.Authenticate() = %v", err)
	}
	opts.Previous = v1
	v2, err := authn.New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &reloadPair{ctx: ctx, iss: iss, cc: cc, clock: clock, opts: opts, v1: v1, v2: v2, tok: tok}
}

// rotate moves past RefreshInterval and gives the issuer a new kid, so the
// next Authenticate fetches; it returns a token signed with the new kid.
func (r *reloadPair) rotate(t *testing.T) string {
	t.Helper()
	r.clock.Advance(authn.DefaultRefreshInterval + time.Second)
	if _, err := r.iss.Rotate("ES256", true); err != nil {
		t.Fatal(err)
	}
	tok2, _ := r.iss.Token(testSub, "keytrail", r.clock.Now(), 10*time.Minute)
	return tok2
}

// TestPreviousSharesFetchClient: a verifier that replaces another
// (Options.Previous) with the issuer's fetch settings unchanged fetches
// over the previous one's client, so over its keep-alive connection: a
// reload opens no new connection to the issuer (and leaves none idle
// behind).
func TestPreviousSharesFetchClient(t *testing.T) {
	r := newReloadPair(t)
	ctx, iss, cc, v2 := r.ctx, r.iss, r.cc, r.v2
	// A new kid past RefreshInterval: v2 fetches.
	tok2 := r.rotate(t)
	if _, err := v2.Authenticate(ctx, tok2); err != nil {
		t.Fatalf("v2.Authenticate(new kid) = %v", err)
	}
	if n := iss.JWKSFetches(); n != 2 {
		t.Fatalf("JWKS fetches = %d, want 2", n)
	}
	if n := cc.opened.Load(); n != 1 {
		t.Errorf("connections opened for 2 fetches of one issuer across a reload = %d, want 1 (the first verifier's, reused)", n)
	}
}

// TestCloseClosesIdleConnectionOnceUnshared: closing a replaced verifier
// leaves the connection its successor shares open, and closing the last
// verifier using a client closes its idle connection.
func TestCloseClosesIdleConnectionOnceUnshared(t *testing.T) {
	r := newReloadPair(t)
	ctx, cc, opts, v1, v2 := r.ctx, r.cc, r.opts, r.v1, r.v2
	v1.Close()
	v1.Close() // idempotent
	tok2 := r.rotate(t)
	if _, err := v2.Authenticate(ctx, tok2); err != nil {
		t.Fatalf("v2.Authenticate(new kid) = %v", err)
	}
	if o, c := cc.opened.Load(), cc.closed.Load(); o != 1 || c != 0 {
		t.Fatalf("after v1.Close: %d connections opened, %d closed; want 1, 0 (v2 shares it)", o, c)
	}
	v2.Close()
	cc.waitClosed(t, 1)

	// Another issuer (a jwks_url changed): not shared, closed with v2's
	// successor while v2's own was closed before.
	opts.Issuers[0].JWKSURL += "?changed"
	opts.Previous = v2
	v3, err := authn.New(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := v3.Authenticate(ctx, tok2); err != nil {
		t.Fatalf("v3.Authenticate() = %v", err)
	}
	v3.Close()
	cc.waitClosed(t, 2)
}

// TestCloseCutsOffHangingFetch: Close during a JWKS fetch that hangs ends
// it at once (not FetchTimeout later) and waits for it; the request waiting
// on it gets ErrUnavailable; the cut-off fetch is neither logged as the
// issuer's failure nor reported to OnFetch; a closed verifier starts no
// fetch.
func TestCloseCutsOffHangingFetch(t *testing.T) {
	ctx := context.Background()
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	var requests atomic.Int64
	srv, _ := newCountedServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		select {
		case started <- struct{}{}:
		default:
		}
		select {
		case <-r.Context().Done():
		case <-release:
		}
	}))
	t.Cleanup(func() { close(release) }) // before srv.Close (cleanups run last first)
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	iss.URL = srv.URL
	var logs syncBuffer
	var onFetch atomic.Int64
	v, err := authn.New(ctx, authn.Options{
		Issuers:      []policies.Issuer{closeTestIssuer(srv.URL)},
		FetchTimeout: time.Hour,
		Logger:       slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		OnFetch:      func(string, error) { onFetch.Add(1) },
	})
	if err != nil {
		t.Fatal(err)
	}
	tok, _ := iss.Token(testSub, "keytrail", time.Now(), 10*time.Minute)
	authErr := make(chan error, 1)
	go func() {
		_, err := v.Authenticate(ctx, tok)
		authErr <- err
	}()
	<-started
	closed := make(chan struct{})
	go func() {
		v.Close()
		close(closed)
	}()
	hang := time.NewTimer(30 * time.Second) // FetchTimeout is an hour
	defer hang.Stop()
	select {
	case <-closed:
	case <-hang.C:
		t.Fatal("Close did not return while the fetch hung")
	}
	select {
	case err := <-authErr:
		if !errors.Is(err, broker.ErrUnavailable) || broker.AsError(err).Reason != "jwks_unavailable" {
			t.Errorf("Authenticate() waiting on the cut-off fetch = %v, want ErrUnavailable jwks_unavailable", err)
		}
	case <-hang.C:
		t.Fatal("Authenticate did not return once the fetch was cut off")
	}
	if n := onFetch.Load(); n != 0 {
		t.Errorf("OnFetch calls = %d, want 0 (the fetch was cut off by Close)", n)
	}
	if s := logs.String(); bytes.Contains([]byte(s), []byte("jwks fetch failed")) {
		t.Errorf("a fetch cut off by Close was logged as failed:\n%s", s)
	}
	_, err = v.Authenticate(ctx, tok)
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Authenticate() after Close = %v, want ErrUnavailable", err)
	}
	if n := requests.Load(); n != 1 {
		t.Errorf("JWKS requests = %d, want 1 (a closed verifier starts no fetch)", n)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestRetiredVerifierStillFetches: a verifier a reload replaced (Retire)
// still answers a request that held it and needs a fetch (a new kid), over
// the client its successor shares, whose connection stays open until the
// successor is retired too.
func TestRetiredVerifierStillFetches(t *testing.T) {
	r := newReloadPair(t)
	ctx, iss, cc, v1, v2, tok := r.ctx, r.iss, r.cc, r.v1, r.v2, r.tok
	v1.Retire()
	v1.Retire() // no-op
	tok2 := r.rotate(t)
	if _, err := v1.Authenticate(ctx, tok2); err != nil {
		t.Fatalf("retired v1.Authenticate(new kid) = %v, want the identity", err)
	}
	if n := iss.JWKSFetches(); n != 2 {
		t.Fatalf("JWKS fetches = %d, want 2", n)
	}
	if o, c := cc.opened.Load(), cc.closed.Load(); o != 1 || c != 0 {
		t.Fatalf("after a fetch of retired v1: %d connections opened, %d closed; want 1, 0 (v2 shares it)", o, c)
	}
	v1.Close() // after Retire: nothing left to release
	if _, err := v2.Authenticate(ctx, tok); err != nil {
		t.Fatalf("v2.Authenticate() = %v", err)
	}
	if c := cc.closed.Load(); c != 0 {
		t.Fatalf("v1.Close after Retire closed %d connections, want 0 (v2 shares it)", c)
	}
	v2.Retire()
	cc.waitClosed(t, 1)
}
