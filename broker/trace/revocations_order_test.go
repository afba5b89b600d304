package trace_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// Two revocations of one credential: rev_LATE decided at 1 s but its
// revoke event queued behind a write that hung and sealed at 10 min
// (details.decided_at 1 s), rev_B decided and written at 5 min. The text
// timeline put rev_LATE's revoke line at its decision, first; the JSON
// (offline, Live, and Live read back as the CLI reads the API's) listed
// the revocation events in write order, rev_LATE's decision after rev_B's.
// The revocations now come in the order the timeline shows: by decided_at,
// falling back to the event's time.
func TestRevocationsOrderedByDecision(t *testing.T) {
	const id = "iss_01JXD0000000000000000000RO"
	decided := at(time.Second)
	written := at(10 * time.Minute)
	lines := sealedAt(t, "chn_a", []timed{
		{&audit.Event{Type: audit.TypeIssue, RequestID: "req_I", IssuanceID: id, Workload: "payments-api", Owner: "team-payments",
			Grant: "payments-vault", Kind: broker.KindVaultToken,
			Credential: &audit.Credential{Accessor: "accRO", ExpiresAt: rfc(at(2 * time.Hour))},
			Outcome:    &audit.Outcome{Status: 200}}, at(0)},
		{&audit.Event{Type: audit.TypeRevoke, RequestID: "req_B", RevocationID: "rev_B", Admin: "secops:bob", Reason: "owner",
			Owner:   "team-payments",
			Details: map[string]any{"selector": map[string]any{"owner": "team-payments"}, "matched": 1, "issuance_ids": []any{id}, "decided_at": at(5 * time.Minute).Format(audit.TimeFormat)},
			Outcome: &audit.Outcome{Status: 200}}, at(5 * time.Minute)},
		{&audit.Event{Type: audit.TypeRevokeResult, RequestID: "req_B", RevocationID: "rev_B", Admin: "secops:bob",
			Details: map[string]any{"matched": 1, "revoked": []any{id}, "pending": []any{}, "failed": []any{}},
			Outcome: &audit.Outcome{Status: 200}}, at(5*time.Minute + time.Millisecond)},
		{&audit.Event{Type: audit.TypeRevoke, RequestID: "req_L", RevocationID: "rev_LATE", Admin: "secops:alice", Reason: "leaked",
			IssuanceID: id,
			Details:    map[string]any{"selector": map[string]any{"issuance_id": id}, "matched": 1, "issuance_ids": []any{id}, "decided_at": decided.Format(audit.TimeFormat)},
			Outcome:    &audit.Outcome{Status: 200}}, written},
		{&audit.Event{Type: audit.TypeRevokeResult, RequestID: "req_L", RevocationID: "rev_LATE", Admin: "secops:alice",
			Details: map[string]any{"matched": 1, "revoked": []any{id}, "pending": []any{}, "failed": []any{}},
			Outcome: &audit.Outcome{Status: 200}}, written.Add(time.Millisecond)},
	})
	want := []string{"revoke rev_LATE", "revoke rev_B", "revoke_result rev_B", "revoke_result rev_LATE"}
	order := func(r *trace.Result) []string {
		var out []string
		for _, ev := range r.Revocations {
			out = append(out, ev.Type+" "+ev.RevocationID)
		}
		return out
	}
	check := func(name string, r *trace.Result) {
		t.Helper()
		got := order(r)
		if len(got) != len(want) {
			t.Fatalf("%s: revocations %v, want %v", name, got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s: revocations %v, want %v (ordered by decided_at)", name, got, want)
				break
			}
		}
		if r.Issuance.RevocationID != "rev_LATE" || !r.Issuance.RevokedAt.Equal(decided) {
			t.Errorf("%s: revoked by %s at %v, want rev_LATE at %v", name, r.Issuance.RevocationID, r.Issuance.RevokedAt, decided)
		}
	}

	x := indexed(t, lines)
	off, err := x.Lookup("accRO")
	if err != nil {
		t.Fatal(err)
	}
	check("offline", off)

	live, err := trace.NewLive(trace.LiveOptions{Path: writeLines(t, t.TempDir(), "audit.jsonl", lines)})
	if err != nil {
		t.Fatal(err)
	}
	on, err := live.Trace(context.Background(), "accRO")
	if err != nil {
		t.Fatal(err)
	}
	check("Live", on)
	b, err := json.Marshal(on)
	if err != nil {
		t.Fatal(err)
	}
	var api trace.Result
	if err := json.Unmarshal(b, &api); err != nil {
		t.Fatal(err)
	}
	check("Live through JSON", &api)
}

// An instance's log that begins with a decision written again from the
// revocation record (after a restart, or by another instance's worker):
// sealed 30 s after its decided_at. The totals counted the revocation at
// decided_at, the chart not at all: it starts at the oldest event's time
// (Since), which the decision predates, and dropped what came before. Since
// now covers the decision's time too, and the chart counts it.
func TestReportTimelineCountsDecisionBeforeFirstEvent(t *testing.T) {
	const id = "iss_01JXD0000000000000000000RT"
	decided := at(0)
	lines := sealedAt(t, "chn_b", []timed{
		{&audit.Event{Type: audit.TypeRevoke, RevocationID: "rev_AGAIN", Workload: "payments-api", Admin: "secops:alice", Reason: "leaked",
			Details: map[string]any{"selector": map[string]any{"workload": "payments-api"}, "matched": 1, "issuance_ids": []any{id}, "decided_at": decided.Format(audit.TimeFormat)},
			Outcome: &audit.Outcome{Status: 200}}, at(30 * time.Second)},
		{&audit.Event{Type: audit.TypeRevokeResult, RevocationID: "rev_AGAIN", Workload: "payments-api", Admin: "secops:alice",
			Details: map[string]any{"matched": 1, "revoked": []any{id}, "pending": []any{}, "failed": []any{}, "by": "worker"},
			Outcome: &audit.Outcome{Status: 200}}, at(30*time.Second + time.Millisecond)},
		{&audit.Event{Type: audit.TypeIssue, RequestID: "req_N", IssuanceID: "iss_01JXD0000000000000000000NW", Workload: "payments-api", Owner: "team-payments",
			Grant: "payments-vault", Kind: broker.KindVaultToken,
			Credential: &audit.Credential{Accessor: "accNW", ExpiresAt: rfc(at(3 * time.Hour))},
			Outcome:    &audit.Outcome{Status: 200}}, at(2 * time.Hour)},
	})
	x := indexed(t, lines)
	rep, err := trace.BuildReport(trace.ReportInput{Now: at(2*time.Hour + time.Minute), Events: x.Events()})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Since.Equal(decided) {
		t.Errorf("BuildReport().Since = %v, want %v (the decision's time)", rep.Since, decided)
	}
	n := 0
	for _, r := range rep.Timeline.Rows {
		for _, v := range r.Revocations {
			n += v
		}
	}
	if n != 1 {
		t.Errorf("BuildReport().Timeline counts %d revocation(s), want 1 (rows %+v)", n, rep.Timeline.Rows)
	}
}
