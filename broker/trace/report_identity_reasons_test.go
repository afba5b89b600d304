package trace_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// TestReportCountsIdentitySummaryReasons: a workload's deny summary
// (reason rate_limited, scope identity) also counts the refusals of a
// revoked broker JWT presented to /v1/token past refusal_limit.per_identity,
// by details.reasons: the report counts those under credential_revoked
// (a leaked JWT still presented is what an auditor looks for), the rest
// under rate_limited, all of them in the workload's denied.
func TestReportCountsIdentitySummaryReasons(t *testing.T) {
	ev := func(seq int, o audit.Outcome, details map[string]any) *audit.Event {
		return &audit.Event{Type: audit.TypeDeny, Seq: uint64(seq), Chain: "chn_a", Time: at(time.Duration(seq) * time.Second).Format(time.RFC3339Nano),
			Workload: "payments-agent", Owner: "team-payments", Outcome: &o, Details: details}
	}
	limited := audit.Outcome{Status: 429, Error: "slow_down", Reason: broker.ReasonRateLimited}
	evs := []*audit.Event{
		ev(1, audit.Outcome{Status: 403, Error: "access_denied", Reason: "credential_revoked"}, nil),
		ev(2, limited, map[string]any{"scope": broker.RefusalScopeIdentity, "suppressed": 980,
			"reasons": map[string]int{"credential_revoked": 900, "actor_credential_revoked": 50}}),
		// A summary of 429s alone, as before.
		ev(3, limited, map[string]any{"scope": broker.RefusalScopeIdentity, "suppressed": 7}),
	}
	rep, err := trace.BuildReport(trace.ReportInput{Now: at(time.Minute), Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	want := []trace.ReasonCount{
		{Reason: "credential_revoked", Count: 1 + 900},
		{Reason: "actor_credential_revoked", Count: 50},
		{Reason: broker.ReasonRateLimited, Count: 30 + 7},
	}
	if diff := cmp.Diff(want, rep.Denies, cmpopts.SortSlices(func(a, b trace.ReasonCount) bool { return a.Reason < b.Reason })); diff != "" {
		t.Errorf("report denies (-want +got):\n%s", diff)
	}
	denied := -1
	for _, w := range rep.Workloads {
		if w.Name == "payments-agent" {
			denied = w.Denied
		}
	}
	if denied != 1+980+7 {
		t.Errorf("payments-agent denied %d (-1: not in the report), want %d", denied, 1+980+7)
	}
}
