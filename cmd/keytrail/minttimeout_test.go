package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestMintTimeoutFollowsVaultTimeout: vault.timeout is the bound of one
// Vault request, but every mint used to be cut at a fixed 5 s, so raising
// vault.timeout for a slow Vault did not let a mint wait longer. With
// vault.timeout 12s, a transit sign that takes 6 s is waited for. Real
// Vault behind a proxy that delays the signs once told to.
func TestMintTimeoutFollowsVaultTimeout(t *testing.T) {
	vp := harness.StartVault(t)
	const delay = 6 * time.Second // past the old fixed 5 s
	px := startGatedVaultOn(t, vp, isTransitSign, delay)

	iss, dir, polFile := ordersJWTPolicy(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	readyc, errc := goServer(t, ctx, dir, polFile, px.URL, vp.RootToken, func(c *Config) { c.Vault.Timeout = duration(12 * time.Second) })
	base := "http://" + awaitServing(t, readyc, errc)
	defer func() { cancel(); <-errc }()

	exchange := func() (int, map[string]any) {
		tok, err := iss.Token("system:serviceaccount:payments:api", "keytrail", time.Now(), 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		form := url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"}, "subject_token": {tok},
			"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"}, "audience": {"orders-jwt"}}
		resp, err := http.PostForm(base+"/v1/token", form)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatalf("/v1/token: status %d, body not JSON: %v", resp.StatusCode, err)
		}
		return resp.StatusCode, m
	}
	if st, m := exchange(); st != 200 {
		t.Fatalf("exchange with a fast Vault = %d %v, want 200", st, m)
	}
	px.hold.Store(true)
	start := time.Now()
	st, m := exchange()
	if st != 200 {
		t.Fatalf("exchange with a %v transit sign and vault.timeout 12s = %d %v after %v, want 200", delay, st, m, time.Since(start).Round(time.Millisecond))
	}
	if took := time.Since(start); took < delay {
		t.Errorf("exchange took %v, want at least the sign's %v (was the sign delayed?)", took, delay)
	}
}

// TestMintTimeout: the mint timeout is the longer of the default and
// vault.timeout, capped so an exchange ends within the server's
// WriteTimeout.
func TestMintTimeout(t *testing.T) {
	for _, tc := range []struct {
		name  string
		vault time.Duration
		want  time.Duration
	}{
		{"ok/default-vault-timeout", 5 * time.Second, broker.DefaultMintTimeout},
		{"ok/shorter-vault-timeout-keeps-default", 2 * time.Second, broker.DefaultMintTimeout},
		{"ok/longer-vault-timeout", 20 * time.Second, 20 * time.Second},
		{"ok/capped", 5 * time.Minute, maxMintTimeout},
	} {
		if got := mintTimeout(tc.vault); got != tc.want {
			t.Errorf("%s: mintTimeout(%v) = %v, want %v", tc.name, tc.vault, got, tc.want)
		}
	}
}

// TestExchangeHistogramCoversTheMintTimeout: keytrail_exchange_duration_seconds
// must tell an exchange that waited the longest mint timeout vault.timeout
// allows (maxMintTimeout, plus its store write and audit event) from one
// that hung: its largest finite bucket reaches past maxMintTimeout (it
// stopped at 30 s while mints could wait 60).
func TestExchangeHistogramCoversTheMintTimeout(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := httpapi.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.ExchangeSeconds.WithLabelValues("ok").Observe(1)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "keytrail_exchange_duration_seconds" {
			continue
		}
		b := mf.GetMetric()[0].GetHistogram().GetBucket()
		top := b[len(b)-1].GetUpperBound()
		if top <= maxMintTimeout.Seconds() {
			t.Fatalf("largest bucket of keytrail_exchange_duration_seconds = %gs, want > maxMintTimeout (%s)", top, maxMintTimeout)
		}
		return
	}
	t.Fatal("keytrail_exchange_duration_seconds not registered")
}

// ordersJWTPolicy starts an ES256 identity issuer (closed at the test's
// end) and writes reloadJWKSPolicy for it with the orders-jwt grant into a
// new directory: the set-up of the real-Vault server tests that mint a JWT.
func ordersJWTPolicy(t *testing.T) (iss *authntest.Issuer, dir, polFile string) {
	t.Helper()
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	issSrv := httptest.NewServer(iss.Handler())
	t.Cleanup(issSrv.Close)
	iss.URL = issSrv.URL
	dir = t.TempDir()
	polFile = filepath.Join(dir, "policy.yaml")
	p := strings.NewReplacer("{ISS}", issSrv.URL, "{GRANTS}", "orders-jwt", "{EXTRA}", "").Replace(reloadJWKSPolicy)
	if err := os.WriteFile(polFile, []byte(p), 0o600); err != nil {
		t.Fatal(err)
	}
	return iss, dir, polFile
}
