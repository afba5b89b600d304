package authn_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/authn"
)

// TestStaleKeysRefetchInBackground: a request that finds its key in a set
// past CacheTTL (within StaleFor) is answered with it at once and leaves
// the refetch running in the background; it does not wait on a slow
// issuer. A request whose kid is unknown still waits for that fetch.
func TestStaleKeysRefetchInBackground(t *testing.T) {
	iss := newIssuer(t, "ES256")
	var (
		fetches atomic.Int64
		started = make(chan struct{}, 1)
		release = make(chan struct{})
	)
	jwks := iss.Handler()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if fetches.Add(1) > 1 { // the first fetch is served at once, later ones are held
			started <- struct{}{}
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		jwks.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	var fetchDone atomic.Int64
	clock := &fakeClock{now: t0}
	v := verifierFor(t, iss.URL, srv.URL+"/jwks.json", func(o *authn.Options) {
		o.Now = clock.Now
		o.VerifiedCacheSize = -1 // every request resolves its key
		o.OnFetch = func(string, error) { fetchDone.Add(1) }
	})
	ctx := context.Background()
	old := iss.Key()
	tok := sign(t, old, nil, claims(iss, set("exp", t0.Add(50*time.Minute).Unix())))
	if _, err := v.Authenticate(ctx, tok); err != nil {
		t.Fatalf("Authenticate(first use) = %v, want ok", err)
	}
	rotated, err := iss.Rotate("ES256", true)
	if err != nil {
		t.Fatal(err)
	}
	newTok := sign(t, rotated, nil, claims(iss, set("exp", t0.Add(50*time.Minute).Unix())))

	clock.Advance(authn.DefaultCacheTTL)
	done := make(chan error, 1)
	go func() { _, err := v.Authenticate(ctx, tok); done <- err }()
	<-started // the refetch has begun and is held
	if err := <-done; err != nil {
		t.Fatalf("Authenticate(stale keys, refetch held) = %v, want ok from the stale keys", err)
	}
	if n := fetchDone.Load(); n != 1 {
		t.Fatalf("the request returned after %d fetches finished, want 1: it waited for the held refetch", n)
	}
	// Another request with a stale but known key: served, no second fetch.
	if _, err := v.Authenticate(ctx, tok); err != nil {
		t.Errorf("Authenticate(stale keys, refetch running) = %v, want ok", err)
	}
	// A kid the stale set lacks waits for the running fetch.
	waited := make(chan error, 1)
	go func() { _, err := v.Authenticate(ctx, newTok); waited <- err }()
	close(release)
	if err := <-waited; err != nil {
		t.Errorf("Authenticate(unknown kid, refetch released) = %v, want ok with the refetched keys", err)
	}
	v.WaitFetches()
	if got := fetches.Load(); got != 2 {
		t.Errorf("fetches = %d, want 2", got)
	}
	if n := fetchDone.Load(); n != 2 {
		t.Errorf("fetches finished = %d, want 2", n)
	}
	// The refetched set is fresh: no further fetch.
	if _, err := v.Authenticate(ctx, newTok); err != nil {
		t.Errorf("Authenticate(new key, fresh set) = %v, want ok", err)
	}
	v.WaitFetches()
	if got := fetches.Load(); got != 2 {
		t.Errorf("fetches = %d, want 2", got)
	}
}
