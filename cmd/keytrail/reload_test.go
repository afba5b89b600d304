package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// reloadRuntime is a brokerRuntime with what reloadPolicy uses (metrics,
// an audit sink in dir, a logger writing to logs) and the policy at polFile
// in force; it needs no Vault (the policy names no transit key).
func reloadRuntime(t *testing.T, dir, polFile string, logs *brokertest.SyncBuffer) (*brokerRuntime, *auditfile.Sink) {
	t.Helper()
	m, err := newOpsMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	sink, err := auditfile.Open(auditfile.Options{Path: filepath.Join(dir, "audit.jsonl")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sink.Close() })
	rt := &brokerRuntime{cfg: &Config{Policy: polFile}, log: slog.New(slog.NewTextHandler(logs, nil)), metrics: m, sink: sink}
	pol, err := loadServedPolicy(polFile, rt.log)
	if err != nil {
		t.Fatal(err)
	}
	v, err := rt.newVerifier(context.Background(), pol)
	if err != nil {
		t.Fatal(err)
	}
	st, err := rt.newPolicyState(pol, v, nil)
	if err != nil {
		t.Fatal(err)
	}
	rt.state.Store(st)
	return rt, sink
}

// TestPolicyReloadWaitsForItsDurableEvent: a reloaded policy used to take
// effect before its policy_load event was written, and stayed in force when
// that write failed: credentials were then handed out under a policy the
// audit log never recorded. Now the event is made durable first; when the
// audit log cannot take it the policy in force stays (fail closed), the
// failure is logged and counted as a failed reload.
func TestPolicyReloadWaitsForItsDurableEvent(t *testing.T) {
	dir := t.TempDir()
	polFile := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(polFile, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	var logs brokertest.SyncBuffer
	rt, sink := reloadRuntime(t, dir, polFile, &logs)
	before := rt.state.Load().pol.Hash()

	if err := sink.Close(); err != nil { // every audit write fails from now on
		t.Fatal(err)
	}
	const extra = "  - name: late\n    owner: team-late\n    match: {issuer: test, subject: late}\n    grants: [payments-vault]\n"
	changed := strings.Replace(serverTestPolicy, "grants:\n  - name: payments-vault", strings.TrimSuffix(extra, "\n")+"\ngrants:\n  - name: payments-vault", 1)
	if err := os.WriteFile(polFile, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := loadServedPolicy(polFile, rt.log); err != nil {
		t.Fatalf("the changed policy must be valid: %v", err)
	}
	rt.reloadPolicy(context.Background(), "sighup")

	if got := rt.state.Load().pol.Hash(); got != before {
		t.Errorf("policy in force after a reload whose policy_load event could not be written = %s, want the old %s", got, before)
	}
	if n := readCounter(t, rt.metrics.policyReloads.WithLabelValues("error")); n != 1 {
		t.Errorf("keytrail_policy_reloads_total{outcome=\"error\"} = %v, want 1", n)
	}
	if n := readCounter(t, rt.metrics.policyReloads.WithLabelValues("ok")); n != 0 {
		t.Errorf("keytrail_policy_reloads_total{outcome=\"ok\"} = %v, want 0", n)
	}
	if !strings.Contains(logs.String(), "keeping the policy in force") {
		t.Errorf("log does not say the reload was not applied:\n%s", logs.String())
	}
}

func readCounter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
