package trace_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// The chart counts every revoked issuance once, when it was first revoked,
// like the totals: one the revocation sweep found is named only by the
// revoke_result events (cumulative: each lists it again), and one a
// successful orphan_revoked event ended has no revoke event at all.
func TestReportTimelineCountsSweptAndOrphanRevocations(t *testing.T) {
	const idS, idO = "iss_01JXS0000000000000000000SS", "iss_01JXO0000000000000000000OO"
	issue := func(id, req string) *audit.Event {
		return &audit.Event{Type: audit.TypeIssue, RequestID: req, IssuanceID: id, Workload: "payments-api", Owner: "team-payments",
			Grant: "payments-vault", Kind: broker.KindVaultToken,
			Credential: &audit.Credential{Accessor: "acc" + req, ExpiresAt: rfc(at(time.Hour))}, Outcome: &audit.Outcome{Status: 200}}
	}
	result := func(by string) *audit.Event {
		return &audit.Event{Type: audit.TypeRevokeResult, RevocationID: "rev_S1", Admin: "secops:alice",
			Details: map[string]any{"matched": 0, "revoked": []any{idS}, "pending": []any{}, "failed": []any{}, "by": by},
			Outcome: &audit.Outcome{Status: 200}}
	}
	evs := []*audit.Event{
		// A workload revocation that matched nothing yet: it revoked no
		// issuance itself.
		{Type: audit.TypeRevoke, RequestID: "req_R", RevocationID: "rev_S1", Workload: "payments-api", Admin: "secops:alice",
			Reason: "INC-2", Details: map[string]any{"selector": map[string]any{"workload": "payments-api"}, "matched": 0, "issuance_ids": []any{}},
			Outcome: &audit.Outcome{Status: 200}},
		issue(idS, "req_S"),
		result("sweep"),
		result("retry"), // lists idS again: still one revocation
		issue(idO, "req_O"),
		{Type: audit.TypeOrphanRevoked, RequestID: "req_O", IssuanceID: idO, Workload: "payments-api", Owner: "team-payments",
			Grant: "payments-vault", Kind: broker.KindVaultToken, Reason: "store_failed", Outcome: &audit.Outcome{Status: 200}},
	}
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range sealed(t, "chn_tl", 0, evs) {
		if err := x.AddLine(l); err != nil {
			t.Fatal(err)
		}
	}
	now := at(5 * time.Minute)
	rep, err := trace.BuildReport(trace.ReportInput{Now: now, Events: x.Events()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Workloads) != 1 || rep.Workloads[0].Revoked != 2 {
		t.Fatalf("BuildReport().Workloads = %+v, want payments-api with 2 revoked", rep.Workloads)
	}
	// One hour ending now in 2-minute buckets: t0 (the fixture's first
	// second) falls in bucket 27.
	bucket := func(n int) []int { b := make([]int, trace.TimelineBuckets); b[27] = n; return b }
	want := []trace.TimelineRow{{Workload: "payments-api", Issues: bucket(2), Uses: bucket(0), Revocations: bucket(2)}}
	if diff := cmp.Diff(want, rep.Timeline.Rows); diff != "" {
		t.Errorf("BuildReport().Timeline.Rows = got, want want (-want +got):\n%s", diff)
	}
}
