package trace_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// TestReportCountsSuppressedRefusals: a refusal summary event (reason
// refusals_suppressed) stands for details.suppressed refusals, not one:
// the report's deny counts, by reason and in all, add them up, as read
// back from the log (a JSON number) or as written (an int). A summary
// without a usable count still counts as one.
func TestReportCountsSuppressedRefusals(t *testing.T) {
	evs := []*audit.Event{
		jsonEvent(t, 1, `{"type":"deny","source":{"ip":"192.0.2.1"},"outcome":{"status":401,"error":"invalid_grant","reason":"bad_signature"}}`),
		jsonEvent(t, 2, `{"type":"deny","source":{"ip":"192.0.2.1"},"outcome":{"status":429,"error":"slow_down","reason":"refusals_suppressed"},"details":{"scope":"source","suppressed":35}}`),
		jsonEvent(t, 3, `{"type":"deny","outcome":{"status":429,"error":"slow_down","reason":"refusals_suppressed"},"details":{"scope":"global","suppressed":1200}}`),
		jsonEvent(t, 4, `{"type":"deny","outcome":{"status":429,"error":"slow_down","reason":"refusals_suppressed"},"details":{"suppressed":"junk"}}`),
		{Type: audit.TypeDeny, Seq: 5, Chain: "chn_a", Time: at(5 * time.Second).Format(time.RFC3339Nano),
			Outcome: &audit.Outcome{Status: 429, Error: "slow_down", Reason: broker.ReasonRefusalsSuppressed}, Details: map[string]any{"suppressed": 4}},
		// An authenticated caller's 429s past its per_identity allowance:
		// one summary of reason rate_limited standing for 980 of them,
		// next to one 429 audited on its own.
		jsonEvent(t, 6, `{"type":"deny","workload":"payments-api","outcome":{"status":429,"error":"slow_down","reason":"rate_limited"},"details":{"scope":"identity","suppressed":980}}`),
		jsonEvent(t, 7, `{"type":"deny","workload":"payments-api","outcome":{"status":429,"error":"slow_down","reason":"rate_limited"}}`),
		// scope identity on a deny of another reason is no summary: one.
		jsonEvent(t, 8, `{"type":"deny","workload":"payments-api","outcome":{"status":403,"error":"access_denied","reason":"workload_blocked"},"details":{"scope":"identity","suppressed":50}}`),
	}
	rep, err := trace.BuildReport(trace.ReportInput{Now: at(time.Minute), Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	want := []trace.ReasonCount{{Reason: broker.ReasonRefusalsSuppressed, Count: 35 + 1200 + 1 + 4}, {Reason: "rate_limited", Count: 980 + 1}, {Reason: "bad_signature", Count: 1}, {Reason: "workload_blocked", Count: 1}}
	if diff := cmp.Diff(want, rep.Denies); diff != "" {
		t.Errorf("report denies (-want +got):\n%s", diff)
	}
}

// TestReportWorkloadDeniedCountsSuppressed429s: an authenticated caller's
// 429 summary (reason rate_limited, details.scope identity) names its
// workload and stands for details.suppressed 429s: the workload's denied
// count adds them up, as the report's deny counts by reason do (each of
// those 429s was a deny event of that workload before they were bounded).
func TestReportWorkloadDeniedCountsSuppressed429s(t *testing.T) {
	evs := []*audit.Event{
		jsonEvent(t, 1, `{"type":"deny","workload":"payments-api","owner":"team-pay","outcome":{"status":429,"error":"slow_down","reason":"rate_limited"}}`),
		jsonEvent(t, 2, `{"type":"deny","workload":"payments-api","owner":"team-pay","outcome":{"status":429,"error":"slow_down","reason":"rate_limited"},"details":{"scope":"identity","suppressed":980}}`),
		jsonEvent(t, 3, `{"type":"deny","workload":"payments-api","owner":"team-pay","outcome":{"status":403,"error":"access_denied","reason":"grant_not_allowed"}}`),
	}
	rep, err := trace.BuildReport(trace.ReportInput{Now: at(time.Minute), Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	var denied, total int
	found := false
	for _, wr := range rep.Workloads {
		if wr.Name == "payments-api" {
			denied, found = wr.Denied, true
		}
	}
	for _, rc := range rep.Denies {
		total += rc.Count
	}
	if !found {
		t.Fatalf("no workload payments-api in the report: %+v", rep.Workloads)
	}
	if want := 1 + 980 + 1; denied != want || total != want {
		t.Errorf("payments-api denied %d, report denies in all %d, want both %d", denied, total, want)
	}
}
