package trace_test

import (
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// A revoke decision whose write was late may be written again by another
// instance's revocation worker (or the same instance's after a restart),
// from the stored revocation: the same revoke event, sealed later into
// another chain or the same one, followed by a worker result. A trace
// shows the issuance revoked by that revocation at the first revoke
// event, and a report counts it revoked once.
func TestDuplicatedDecisionTracedOnce(t *testing.T) {
	const id = "iss_01JXD0000000000000000000DD"
	issue := func() *audit.Event {
		return &audit.Event{Type: audit.TypeIssue, RequestID: "req_I", IssuanceID: id, Workload: "payments-api", Owner: "team-payments",
			Grant: "payments-vault", Kind: broker.KindVaultToken,
			Credential: &audit.Credential{Accessor: "accD", ExpiresAt: rfc(at(time.Hour))},
			Outcome:    &audit.Outcome{Status: 200}}
	}
	revoke := func() *audit.Event {
		return &audit.Event{Type: audit.TypeRevoke, RequestID: "req_R", RevocationID: "rev_D1", IssuanceID: id, Admin: "secops:alice",
			Reason: "leaked", Details: map[string]any{"selector": map[string]any{"issuance_id": id}, "matched": 1, "issuance_ids": []any{id}},
			Outcome: &audit.Outcome{Status: 200}}
	}
	result := func(by string) *audit.Event {
		return &audit.Event{Type: audit.TypeRevokeResult, RevocationID: "rev_D1", Admin: "secops:alice",
			Details: map[string]any{"matched": 1, "revoked": []any{id}, "pending": []any{}, "failed": []any{}, "by": by},
			Outcome: &audit.Outcome{Status: 200}}
	}
	for _, tc := range []struct {
		name  string
		lines [][]byte
	}{
		{"two-logs", append(sealed(t, "chn_maker", 0, []*audit.Event{issue(), revoke(), result("request")}),
			sealed(t, "chn_other", 10*time.Second, []*audit.Event{revoke(), result("worker")})...)},
		{"one-log-after-restart", sealed(t, "chn_maker", 0, []*audit.Event{issue(), revoke(), result("request"), revoke(), result("worker")})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, err := trace.NewIndex(trace.Options{})
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range tc.lines {
				if err := x.AddLine(l); err != nil {
					t.Fatal(err)
				}
			}
			res, err := x.Lookup("accD")
			if err != nil {
				t.Fatal(err)
			}
			if res.Issuance.RevocationID != "rev_D1" || !res.Issuance.RevokedAt.Equal(at(time.Second)) {
				t.Errorf("Lookup: revoked_at %v by %q, want %v by rev_D1 (the first revoke event)", res.Issuance.RevokedAt, res.Issuance.RevocationID, at(time.Second))
			}
			if len(res.Revocations) != 4 {
				t.Errorf("Lookup: %d revocation events, want the 4 (each decision and result shown)", len(res.Revocations))
			}
			var evs []*audit.Event
			for _, l := range tc.lines {
				ev, err := audit.ParseLine(l)
				if err != nil {
					t.Fatal(err)
				}
				evs = append(evs, ev)
			}
			rep, err := trace.BuildReport(trace.ReportInput{Now: at(time.Minute), Events: evs})
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for _, w := range rep.Workloads {
				if w.Name == "payments-api" {
					found = true
					if w.Revoked != 1 || w.Issued != 1 {
						t.Errorf("report: payments-api issued %d revoked %d, want 1 and 1", w.Issued, w.Revoked)
					}
				}
			}
			if !found {
				t.Errorf("report: no payments-api workload in %+v", rep.Workloads)
			}
		})
	}
}

// A revoke decision whose late write was lost is written again, from the
// stored revocation, by another instance's worker (or after a restart),
// stamped with the time it is written again: its details.decided_at says
// when the admin decided. With only that copy in the logs, a trace used to
// give the re-write's time as revoked_at, and a report counted the
// revocation in the re-write's bucket; both now take decided_at.
func TestRewrittenDecisionRevokedAtDecision(t *testing.T) {
	const id = "iss_01JXD0000000000000000000DE"
	decided := at(time.Second)
	lines := append(sealed(t, "chn_maker", 0, []*audit.Event{
		{Type: audit.TypeIssue, RequestID: "req_I", IssuanceID: id, Workload: "payments-api", Owner: "team-payments",
			Grant: "payments-vault", Kind: broker.KindVaultToken,
			Credential: &audit.Credential{Accessor: "accE", ExpiresAt: rfc(at(2 * time.Hour))},
			Outcome:    &audit.Outcome{Status: 200}},
	}), sealed(t, "chn_other", 30*time.Minute, []*audit.Event{
		{Type: audit.TypeRevoke, RequestID: "req_R", RevocationID: "rev_E1", IssuanceID: id, Admin: "secops:alice", Reason: "leaked",
			Details: map[string]any{"selector": map[string]any{"issuance_id": id}, "matched": 1, "issuance_ids": []any{id},
				"decided_at": decided.Format(audit.TimeFormat)},
			Outcome: &audit.Outcome{Status: 200}},
		{Type: audit.TypeRevokeResult, RevocationID: "rev_E1", Admin: "secops:alice",
			Details: map[string]any{"matched": 1, "revoked": []any{id}, "pending": []any{}, "failed": []any{}, "by": "worker"},
			Outcome: &audit.Outcome{Status: 200}},
	})...)
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	var evs []*audit.Event
	for _, l := range lines {
		if err := x.AddLine(l); err != nil {
			t.Fatal(err)
		}
		ev, err := audit.ParseLine(l)
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
	res, err := x.Lookup("accE")
	if err != nil {
		t.Fatal(err)
	}
	if res.Issuance.RevocationID != "rev_E1" || !res.Issuance.RevokedAt.Equal(decided) {
		t.Errorf("Lookup: revoked_at %v by %q, want %v (decided_at) by rev_E1", res.Issuance.RevokedAt, res.Issuance.RevocationID, decided)
	}
	rep, err := trace.BuildReport(trace.ReportInput{Now: at(time.Hour), Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range rep.Timeline.Rows {
		if r.Workload != "payments-api" {
			continue
		}
		found = true
		if r.Revocations[0] != 1 || sum(r.Revocations) != 1 {
			t.Errorf("report timeline: payments-api revocations %v (buckets of %ds from %v), want 1 in the first (decided %v), not at the re-write",
				r.Revocations, rep.Timeline.BucketSeconds, rep.Timeline.Start, decided)
		}
	}
	if !found {
		t.Errorf("report timeline: no payments-api row in %+v", rep.Timeline.Rows)
	}
}

func sum(xs []int) int {
	n := 0
	for _, x := range xs {
		n += x
	}
	return n
}
