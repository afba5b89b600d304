package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/authn/authntest"
)

// reloadRaceRig is a runtime whose policy trusts one test issuer whose
// JWKS requests can be held (gate), with the issuer server's connections
// counted.
type reloadRaceRig struct {
	rt             *brokerRuntime
	iss            *authntest.Issuer
	gate           chan struct{} // closed to let held JWKS requests go on
	held           atomic.Bool
	started        chan struct{} // a send per JWKS request (dropped when full)
	opened, closed atomic.Int64
	connChanged    chan struct{}
	writePol       func(i int)
}

func newReloadRaceRig(t *testing.T) *reloadRaceRig {
	t.Helper()
	ctx := context.Background()
	dir := t.TempDir()
	g := &reloadRaceRig{gate: make(chan struct{}), started: make(chan struct{}, 1), connChanged: make(chan struct{}, 1)}
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	g.iss = iss
	h := iss.Handler()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == authntest.JWKSPath {
			select {
			case g.started <- struct{}{}:
			default:
			}
			if g.held.Load() {
				select {
				case <-g.gate:
				case <-r.Context().Done():
					return
				}
			}
		}
		h.ServeHTTP(w, r)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			g.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			g.closed.Add(1)
		}
		select {
		case g.connChanged <- struct{}{}:
		default:
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	iss.URL = srv.URL
	polFile := filepath.Join(dir, "policy.yaml")
	g.writePol = func(i int) {
		p := strings.NewReplacer("{ISS}", srv.URL, "{GRANTS}", "payments-vault").Replace(reloadKeysPolicy)
		p = strings.Replace(p, "/jwks.json", fmt.Sprintf("/jwks.json?reload=%d", i), 1)
		if err := os.WriteFile(polFile, []byte(p), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	g.writePol(0)
	g.rt, _, _ = newPolicyRuntime(t, ctx, dir, polFile)
	t.Cleanup(func() { g.rt.closeVerifiers() })
	return g
}

// waitConnsClosed waits until every connection the issuer server accepted
// is closed, failing after a generous deadline (a hang: the transport's
// idle timeout is 90 s).
func (g *reloadRaceRig) waitConnsClosed(t *testing.T) {
	t.Helper()
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	for g.closed.Load() < g.opened.Load() {
		select {
		case <-g.connChanged:
		case <-deadline.C:
			t.Fatalf("issuer connections: %d opened, %d closed; want all closed", g.opened.Load(), g.closed.Load())
		}
	}
}

// TestReloadRacingRequestNeedingFetchSucceeds: a request that read the
// verifier in force just before a policy reload replaced it, and that
// needs a JWKS fetch (the issuer's first token, or a new kid after a key
// rotation: often just when an operator reloads), is answered by that
// verifier, not refused with 503 jwks_unavailable; and the connection the
// replaced verifier alone used is closed once its fetch is done.
func TestReloadRacingRequestNeedingFetchSucceeds(t *testing.T) {
	ctx := context.Background()
	g := newReloadRaceRig(t)
	tok, err := g.iss.Token("system:serviceaccount:payments:api", "keytrail", time.Now(), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	a := g.rt.state.Load().authn // the request reads the pair in force
	g.writePol(1)
	if err := g.rt.reloadPolicy(ctx, "sighup"); err != nil {
		t.Fatal(err)
	}
	if g.rt.state.Load().authn == a {
		t.Fatal("the reload did not replace the verifier")
	}
	if _, err := a.Authenticate(ctx, tok); err != nil {
		t.Fatalf("Authenticate() on the verifier read just before the reload = %v, want the identity", err)
	}
	if n := g.iss.JWKSFetches(); n != 1 {
		t.Fatalf("JWKS fetches = %d, want 1", n)
	}
	// The replaced verifier's client (jwks_url changed: shared by none)
	// leaves no keep-alive connection behind.
	g.waitConnsClosed(t)
}

// TestReloadDuringFetchLetsItFinish: a request waiting on a JWKS fetch
// when a reload replaces its verifier gets the fetch's keys: the reload
// neither waits for the fetch (it returns while the fetch hangs) nor cuts
// it off.
func TestReloadDuringFetchLetsItFinish(t *testing.T) {
	ctx := context.Background()
	g := newReloadRaceRig(t)
	tok, err := g.iss.Token("system:serviceaccount:payments:api", "keytrail", time.Now(), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	a := g.rt.state.Load().authn
	g.held.Store(true)
	authErr := make(chan error, 1)
	go func() {
		_, err := a.Authenticate(ctx, tok)
		authErr <- err
	}()
	<-g.started
	g.writePol(1)
	if err := g.rt.reloadPolicy(ctx, "sighup"); err != nil {
		t.Fatal(err)
	}
	g.held.Store(false)
	close(g.gate)
	if err := <-authErr; err != nil {
		t.Fatalf("Authenticate() waiting on a fetch when a reload replaced its verifier = %v, want the identity", err)
	}
	g.waitConnsClosed(t)
}

// TestShutdownRacingReloads: closeVerifiers racing reloads (each with the
// jwks_url changed or not) and requests neither panics nor races; once both
// are done the verifier in force is closed (it starts no fetch) and every
// connection to the issuer is closed.
func TestShutdownRacingReloads(t *testing.T) {
	ctx := context.Background()
	g := newReloadRaceRig(t)
	tok, err := g.iss.Token("system:serviceaccount:payments:api", "keytrail", time.Now(), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	const reloads = 20
	reloaded := make(chan struct{})
	go func() {
		defer close(reloaded)
		for i := 1; i <= reloads; i++ {
			g.writePol(i / 2) // every other reload keeps the jwks_url: shared client
			if err := g.rt.reloadPolicy(ctx, "sighup"); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	requests := make(chan struct{})
	go func() {
		defer close(requests)
		for range reloads {
			g.rt.state.Load().authn.Authenticate(ctx, tok) // any outcome: closed or not
		}
	}()
	if err := g.rt.closeVerifiers(); err != nil {
		t.Fatal(err)
	}
	<-reloaded
	<-requests
	fetches := g.iss.JWKSFetches()
	if _, err := g.iss.Rotate("ES256", true); err != nil { // a kid the verifier in force cannot hold
		t.Fatal(err)
	}
	tok2, err := g.iss.Token("system:serviceaccount:payments:api", "keytrail", time.Now(), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.rt.state.Load().authn.Authenticate(ctx, tok2); err == nil {
		t.Error("Authenticate(new kid) after closeVerifiers and the reloads succeeded, want a refusal (no fetch)")
	}
	if n := g.iss.JWKSFetches(); n != fetches {
		t.Errorf("JWKS fetches after closeVerifiers and the reloads: %d, want none", n-fetches)
	}
	g.waitConnsClosed(t)
}
