package main

import (
	"context"
	"log/slog"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/broker/authn/authntest"
)

// TestPolicyReloadsLeaveNoGoroutines: N policy reloads, each followed by
// an exchange's authentication (an issuer whose keys the new verifier
// keeps from the one before), leave the goroutine count where the first
// policy left it: a reload starts nothing that outlives it.
func TestPolicyReloadsLeaveNoGoroutines(t *testing.T) {
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
		if err := os.WriteFile(polFile, []byte(p+strings.Repeat("#\n", i)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writePol(0)
	m, err := newOpsMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	sink, err := auditfile.Open(auditfile.Options{Path: filepath.Join(dir, "audit.jsonl")})
	if err != nil {
		t.Fatal(err)
	}
	defer sink.Close()
	rt := &brokerRuntime{cfg: &Config{Policy: polFile}, log: slog.New(slog.DiscardHandler), metrics: m, sink: sink}
	pol, err := loadServedPolicy(polFile, rt.log)
	if err != nil {
		t.Fatal(err)
	}
	v, err := rt.newVerifier(ctx, pol)
	if err != nil {
		t.Fatal(err)
	}
	if err := rt.initPolicy(pol, v); err != nil {
		t.Fatal(err)
	}
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
