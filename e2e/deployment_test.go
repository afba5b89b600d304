package e2e

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestTwoDeploymentsShareVault: two single-instance brokers (each its own
// in-memory store and audit log) mint through one Vault. Each one's token
// reconciliation must leave the other's tokens alone: its own records
// cannot explain them. It used to revoke them as no_record orphans once
// they were past the grace, cutting the other broker's workloads off.
func TestTwoDeploymentsShareVault(t *testing.T) {
	const grace = 20 * time.Second // above the broker's mint, store and audit timeouts
	v := harness.StartVault(t)
	setupVaultPolicies(t, v)
	reconcile := []string{"KEYTRAIL_RECONCILE_INTERVAL=1s", "KEYTRAIL_RECONCILE_GRACE=" + grace.String()}
	a := startFaultStack(t, v, faultOptions{env: reconcile})
	b := startFaultStack(t, v, faultOptions{env: reconcile})

	fromA := faultExchange(t, a.url, a.token(t, "app-a"))
	fromB := faultExchange(t, b.url, b.token(t, "app-b"))
	if fromA.status != 200 || !fromA.credential || fromB.status != 200 || !fromB.credential {
		t.Fatalf("exchanges on a and b = %+v, %+v; want 200 with a credential", fromA, fromB)
	}
	minted := time.Now()

	// Two of a's runs that began once b's token was past the grace (a
	// run logs its line when it ends, one interval after the previous).
	waitFor(t, grace+60*time.Second, "two reconciliations on a judging b's token past the grace", func() bool {
		return reconciliationsAfter(a.broker.Logs(), minted.Add(grace+time.Second)) >= 2
	})
	// a's metrics count those runs and no revocation.
	m := metrics(t, a.url)
	if got := metricValue(m, `keytrail_reconcile_runs_total{outcome="ok"}`); got < 2 {
		t.Errorf(`keytrail_reconcile_runs_total{outcome="ok"} on a = %v, want 2 or more`, got)
	}
	if got := metricValue(m, `keytrail_reconcile_revoked_total{reason="no_record"}`); got != 0 {
		t.Errorf(`keytrail_reconcile_revoked_total{reason="no_record"} on a = %v, want 0`, got)
	}
	if got := metricValue(m, "keytrail_reconcile_last_success_timestamp_seconds"); got < float64(minted.Unix()) {
		t.Errorf("keytrail_reconcile_last_success_timestamp_seconds on a = %v, want after %d", got, minted.Unix())
	}
	live := liveKeytrailTokens(t, v)
	for _, s := range []struct {
		name, auditPath, issuanceID string
	}{{"a", a.auditPath, fromA.issuanceID}, {"b", b.auditPath, fromB.issuanceID}} {
		if _, ok := live[s.issuanceID]; !ok {
			t.Errorf("the token %s issued by %s is no longer live in Vault", s.issuanceID, s.name)
		}
		for _, ev := range auditEvents(t, s.auditPath) {
			if ev.Type == audit.TypeOrphanRevoked {
				t.Errorf("%s revoked %s (%s) as an orphan", s.name, ev.IssuanceID, ev.Reason)
			}
		}
	}
}

// reconciliationsAfter counts the reconciliation log lines (JSON) logged
// after since.
func reconciliationsAfter(logs string, since time.Time) int {
	n := 0
	for _, line := range strings.Split(logs, "\n") {
		if !strings.Contains(line, `"msg":"reconciliation"`) {
			continue
		}
		var l struct {
			Time time.Time `json:"time"`
		}
		if json.Unmarshal([]byte(line), &l) == nil && l.Time.After(since) {
			n++
		}
	}
	return n
}
