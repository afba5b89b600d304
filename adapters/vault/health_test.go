package vault

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"
)

// TestTokenCheckerKeepsOnlySuccess: /readyz asks TokenChecker on every
// probe; Vault sees one lookup-self per TTL while the token is accepted,
// never one kept past the token's expiry, and one per probe while it is
// refused (a failure is not kept).
func TestTokenCheckerKeepsOnlySuccess(t *testing.T) {
	t.Parallel()
	const lookup = "GET /v1/auth/token/lookup-self"
	var (
		mu      sync.Mutex
		now     = t0
		status  = 200
		expires = t0.Add(time.Hour)
	)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	f := newFakeVault(t, map[string]http.HandlerFunc{
		lookup: func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			st, exp, n := status, expires, now
			mu.Unlock()
			if st != 200 {
				replyRaw(st, `{"errors":["permission denied"]}`)(w, r)
				return
			}
			reply(w, 200, map[string]any{"data": map[string]any{
				"ttl": int(exp.Sub(n) / time.Second), "expire_time": exp.Format(time.RFC3339Nano), "policies": []string{"keytrail-broker"},
			}})
		},
	})
	tc, err := NewTokenChecker(TokenCheckerOptions{Client: f.client(t), Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	ok, denied := errShape{}, errShape{unavailable, ReasonDenied}
	for _, s := range []struct {
		name        string
		before      func()
		probes      int
		want        errShape
		wantLookups int // in total, after the step
	}{
		{"ok/probes-within-ttl-one-lookup", func() {}, 10, ok, 1},
		{"ok/still-within-ttl", func() { advance(DefaultTokenHealthTTL - time.Millisecond) }, 5, ok, 1},
		{"ok/after-ttl-another-lookup", func() { advance(time.Millisecond) }, 5, ok, 2},
		{"fail/refusal-not-kept", func() {
			advance(DefaultTokenHealthTTL)
			mu.Lock()
			status = 403
			mu.Unlock()
		}, 3, denied, 5},
		{"ok/accepted-again", func() {
			mu.Lock()
			status = 200
			mu.Unlock()
		}, 4, ok, 6},
		// The token expires in 300ms: its success is kept no longer.
		{"ok/kept-until-token-expiry", func() {
			advance(DefaultTokenHealthTTL)
			mu.Lock()
			expires = now.Add(300 * time.Millisecond)
			mu.Unlock()
		}, 3, ok, 7},
		{"ok/expired-asks-again", func() {
			advance(300 * time.Millisecond)
			mu.Lock()
			expires = now.Add(time.Hour)
			mu.Unlock()
		}, 3, ok, 8},
	} {
		s.before()
		for i := range s.probes {
			if got := shapeOf(tc.Check(context.Background())); got != s.want {
				t.Errorf("%s: probe %d: Check() = %+v, want %+v", s.name, i, got, s.want)
			}
		}
		if got := f.count(lookup); got != s.wantLookups {
			t.Errorf("%s: lookups = %d, want %d", s.name, got, s.wantLookups)
		}
	}
}

// TestTokenCheckerCallerGivesUp: a caller whose ctx ends while the lookup
// is in flight gets an error at once; the lookup's success still counts for
// the next caller.
func TestTokenCheckerCallerGivesUp(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	f := newFakeVault(t, map[string]http.HandlerFunc{
		"GET /v1/auth/token/lookup-self": func(w http.ResponseWriter, r *http.Request) {
			<-release
			reply(w, 200, map[string]any{"data": map[string]any{"ttl": 0, "expire_time": nil}})
		},
	})
	tc, err := NewTokenChecker(TokenCheckerOptions{Client: f.client(t), TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got, want := shapeOf(tc.Check(ctx)), (errShape{unavailable, ReasonUnavailable}); got != want {
		t.Errorf("Check(cancelled) = %+v, want %+v", got, want)
	}
	close(release)
	if err := tc.Check(context.Background()); err != nil {
		t.Errorf("Check() = %v, want nil", err)
	}
	if err := tc.Check(context.Background()); err != nil {
		t.Errorf("second Check() = %v, want nil", err)
	}
	if n := f.count("GET /v1/auth/token/lookup-self"); n != 1 {
		t.Errorf("lookups = %d, want 1 (the cancelled caller's lookup, shared)", n)
	}
}

// TestTokenCheckerAnswersForTheCurrentToken: a probe made after the
// broker's token changed (a new login, a token_file change) is answered
// for that token, not by a lookup of the previous one still in flight:
// here the previous token is refused after a slow lookup and the current
// one accepted at once, so the probe must pass without waiting for the old
// lookup (before, it shared it and failed).
func TestTokenCheckerAnswersForTheCurrentToken(t *testing.T) {
	t.Parallel()
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/auth/token/lookup-self" {
			http.NotFound(w, r)
			return
		}
		switch r.Header.Get("X-Vault-Token") {
		case "old-token":
			once.Do(func() { close(started) })
			<-release
			replyRaw(403, `{"errors":["permission denied"]}`)(w, r)
		case "new-token":
			reply(w, 200, map[string]any{"data": map[string]any{"ttl": 3600}})
		default:
			replyRaw(403, `{"errors":["permission denied"]}`)(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(release) }) // runs before srv.Close
	c, err := NewClient(ClientOptions{Address: srv.URL, Token: "old-token", Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	tc, err := NewTokenChecker(TokenCheckerOptions{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	oldDone := make(chan error, 1)
	go func() { oldDone <- tc.Check(context.Background()) }()
	select {
	case <-started:
	case <-time.After(10 * time.Second):
		t.Fatal("the lookup of the old token never reached Vault")
	}
	c.SetToken("new-token")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := tc.Check(ctx); err != nil {
		t.Errorf("Check() with the new token = %v, want nil (Vault accepts it)", err)
	}
	release <- struct{}{}
	if got, want := shapeOf(<-oldDone), (errShape{unavailable, ReasonDenied}); got != want {
		t.Errorf("Check() with the old token = %+v, want %+v", got, want)
	}
}
