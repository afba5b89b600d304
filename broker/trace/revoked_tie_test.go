package trace_test

import (
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// TestRevokedTieSameInTraceAndReport: two revocations of one credential
// decided at the same second, on two instances (chains): rev_B's revoke
// event written at once, rev_A's written late (details.decided_at the same
// second). trace takes the first in its revocation order (decided_at, then
// chain and seq: rev_A); report took the first in write order (rev_B), and
// counted the revocation under rev_B's workload. Both now take rev_A.
func TestRevokedTieSameInTraceAndReport(t *testing.T) {
	const id = "iss_01JXT0000000000000000000TT"
	decided := at(time.Minute)
	revoke := func(rev, workload string) *audit.Event {
		return &audit.Event{Type: audit.TypeRevoke, RequestID: "req_" + rev, RevocationID: rev, Workload: workload, Admin: "secops:alice",
			Reason: "INC-3", Details: map[string]any{"selector": map[string]any{"workload": workload}, "matched": 1, "issuance_ids": []any{id},
				"decided_at": decided.Format(audit.TimeFormat)},
			Outcome: &audit.Outcome{Status: 200}}
	}
	lines := append(sealedAt(t, "chn_b", []timed{{revoke("rev_B", "batch-b"), decided}}),
		sealedAt(t, "chn_a", []timed{{revoke("rev_A", "batch-a"), at(10 * time.Minute)}})...)
	x := indexed(t, lines)
	res, err := x.Lookup(id)
	if err != nil {
		t.Fatal(err)
	}
	if res.Issuance.RevocationID != "rev_A" || !res.Issuance.RevokedAt.Equal(decided) {
		t.Fatalf("trace: revoked by %s at %v, want rev_A at %v", res.Issuance.RevocationID, res.Issuance.RevokedAt, decided)
	}
	rep, err := trace.BuildReport(trace.ReportInput{Now: at(20 * time.Minute), Events: x.Events()})
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for _, r := range rep.Timeline.Rows {
		for _, n := range r.Revocations {
			if n > 0 {
				rows = append(rows, r.Workload)
			}
		}
	}
	if len(rows) != 1 || rows[0] != "batch-a" {
		t.Errorf("report: the revocation counted under %v, want [batch-a] (rev_A's, as trace)", rows)
	}
}
