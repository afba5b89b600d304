package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/authn/authntest"
)

// TestPolicyReloadsLeaveNoGoroutines: N policy reloads, each followed by
// an exchange's authentication (an issuer whose keys the new verifier
// keeps from the one before), leave the goroutine count where the first
// policy left it: a reload starts nothing that outlives it.
func TestPolicyReloadsLeaveNoGoroutines(t *testing.T) {
	testReloadGoroutines(t, false)
}

// TestPolicyReloadsChangingJWKSURLLeaveNoGoroutines: as above, but each
// reload changes the issuer's jwks_url, so each new verifier fetches its
// keys over a client of its own: the verifier a reload replaces is closed,
// and so is its keep-alive connection to the issuer (it used to stay for
// the transport's 90 s IdleConnTimeout, with its two goroutines).
func TestPolicyReloadsChangingJWKSURLLeaveNoGoroutines(t *testing.T) {
	testReloadGoroutines(t, true)
}

func testReloadGoroutines(t *testing.T, changeURL bool) {
	const reloads = 50
	ctx := context.Background()
	dir := t.TempDir()
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	issSrv := httptest.NewServer(iss.Handler())
	defer issSrv.Close()
	iss.URL = issSrv.URL
	polFile := filepath.Join(dir, "policy.yaml")
	writePol := func(i int) {
		p := strings.NewReplacer("{ISS}", issSrv.URL, "{GRANTS}", "payments-vault").Replace(reloadKeysPolicy)
		if changeURL {
			p = strings.Replace(p, "/jwks.json", fmt.Sprintf("/jwks.json?reload=%d", i), 1)
		}
		if err := os.WriteFile(polFile, []byte(p+strings.Repeat("#\n", i)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writePol(0)
	rt, m, _ := newPolicyRuntime(t, ctx, dir, polFile)
	tok, err := iss.Token("system:serviceaccount:payments:api", "keytrail", time.Now(), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.state.Load().authn.Authenticate(ctx, tok); err != nil {
		t.Fatal(err)
	}
	before := runtime.NumGoroutine()
	for i := 1; i <= reloads; i++ {
		writePol(i)
		if err := rt.reloadPolicy(ctx, "sighup"); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		if _, err := rt.state.Load().authn.Authenticate(ctx, tok); err != nil {
			t.Fatalf("after reload %d: %v", i, err)
		}
	}
	if n := readCounter(t, m.policyReloads.WithLabelValues("ok")); n != reloads {
		t.Fatalf("keytrail_policy_reloads_total{outcome=\"ok\"} = %v, want %d", n, reloads)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		after := runtime.NumGoroutine()
		if after <= before {
			t.Logf("goroutines: %d before %d reloads, %d after", before, reloads, after)
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("goroutines: %d before %d reloads, %d 10s after them", before, reloads, after)
		}
		<-time.After(20 * time.Millisecond)
	}
}

// TestCloseVerifiersClosesIssuerConnection: the shutdown's closer closes
// the verifier in force (its keep-alive connection to the issuer is
// closed), and a verifier a reload puts in force after it is closed too: it
// fetches nothing.
func TestCloseVerifiersClosesIssuerConnection(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	var closedConns atomic.Int64
	connClosed := make(chan struct{}, 1)
	issSrv := httptest.NewUnstartedServer(iss.Handler())
	issSrv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			closedConns.Add(1)
			select {
			case connClosed <- struct{}{}:
			default:
			}
		}
	}
	issSrv.Start()
	defer issSrv.Close()
	iss.URL = issSrv.URL
	polFile := filepath.Join(dir, "policy.yaml")
	writePol := func(i int) {
		p := strings.NewReplacer("{ISS}", issSrv.URL, "{GRANTS}", "payments-vault").Replace(reloadKeysPolicy)
		p = strings.Replace(p, "/jwks.json", fmt.Sprintf("/jwks.json?reload=%d", i), 1)
		if err := os.WriteFile(polFile, []byte(p), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writePol(0)
	rt, _, _ := newPolicyRuntime(t, ctx, dir, polFile)
	tok, err := iss.Token("system:serviceaccount:payments:api", "keytrail", time.Now(), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rt.state.Load().authn.Authenticate(ctx, tok); err != nil {
		t.Fatal(err)
	}
	if err := rt.closeVerifiers(); err != nil {
		t.Fatal(err)
	}
	deadline := time.NewTimer(30 * time.Second) // a hang, not a timing: the idle timeout is 90 s
	defer deadline.Stop()
	for closedConns.Load() < 1 {
		select {
		case <-connClosed:
		case <-deadline.C:
			t.Fatal("the verifier's connection to the issuer is still open after closeVerifiers")
		}
	}
	// A reload racing the shutdown: its verifier (jwks_url changed, so no
	// keys kept) is closed as it is put in force.
	writePol(1)
	if err := rt.reloadPolicy(ctx, "sighup"); err != nil {
		t.Fatal(err)
	}
	fetches := iss.JWKSFetches()
	if _, err := rt.state.Load().authn.Authenticate(ctx, tok); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Authenticate() with the verifier a reload put in force after closeVerifiers = %v, want ErrUnavailable", err)
	}
	if n := iss.JWKSFetches(); n != fetches {
		t.Errorf("JWKS fetches after closeVerifiers: %d, want none", n-fetches)
	}
}
