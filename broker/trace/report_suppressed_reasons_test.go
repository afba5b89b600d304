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

// TestReportCountsSuppressedRefusalsByReason: a refusal summary whose
// details.reasons says what its refusals were counts them under those
// reasons (a fleet's expired tokens past the global bucket are
// token_expired in the report, not refusals_suppressed), the rest under
// refusals_suppressed; reasons that are not usable counts, or add up to
// more than the summary's suppressed, are not read.
func TestReportCountsSuppressedRefusalsByReason(t *testing.T) {
	evs := []*audit.Event{
		jsonEvent(t, 1, `{"type":"deny","outcome":{"status":401,"error":"invalid_grant","reason":"token_expired"}}`),
		jsonEvent(t, 2, `{"type":"deny","outcome":{"status":429,"error":"slow_down","reason":"refusals_suppressed"},"details":{"scope":"global","suppressed":900,"reasons":{"token_expired":812,"bad_signature":80}}}`),
		jsonEvent(t, 3, `{"type":"deny","source":{"ip":"192.0.2.1"},"outcome":{"status":429,"error":"slow_down","reason":"refusals_suppressed"},"details":{"scope":"source","suppressed":5,"reasons":{"token_expired":5}}}`),
		// Not read: more than suppressed; not a whole number.
		jsonEvent(t, 4, `{"type":"deny","outcome":{"status":429,"error":"slow_down","reason":"refusals_suppressed"},"details":{"scope":"global","suppressed":3,"reasons":{"token_expired":4}}}`),
		jsonEvent(t, 5, `{"type":"deny","outcome":{"status":429,"error":"slow_down","reason":"refusals_suppressed"},"details":{"scope":"global","suppressed":3,"reasons":{"token_expired":1.5}}}`),
		// One refusal past the bucket in the span: a summary of one, whose
		// reason is read as any other's.
		jsonEvent(t, 7, `{"type":"deny","source":{"ip":"192.0.2.2"},"outcome":{"status":429,"error":"slow_down","reason":"refusals_suppressed"},"details":{"scope":"source","suppressed":1,"reasons":{"bad_signature":1}}}`),
		// A suppressed that is not a usable count is one refusal; its
		// reasons are not read.
		jsonEvent(t, 8, `{"type":"deny","outcome":{"status":429,"error":"slow_down","reason":"refusals_suppressed"},"details":{"scope":"global","suppressed":-5,"reasons":{"bad_signature":1}}}`),
		// As the broker writes it, not read back from a file.
		{Type: audit.TypeDeny, Seq: 6, Chain: "chn_a", Time: at(6 * time.Second).Format(time.RFC3339Nano),
			Outcome: &audit.Outcome{Status: 429, Error: "slow_down", Reason: broker.ReasonRefusalsSuppressed},
			Details: map[string]any{"suppressed": 4, "reasons": map[string]int{"missing_token": 4}}},
	}
	rep, err := trace.BuildReport(trace.ReportInput{Now: at(time.Minute), Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	want := []trace.ReasonCount{
		{Reason: "token_expired", Count: 1 + 812 + 5},
		{Reason: "bad_signature", Count: 80 + 1},
		{Reason: broker.ReasonRefusalsSuppressed, Count: 8 + 3 + 3 + 1},
		{Reason: "missing_token", Count: 4},
	}
	if diff := cmp.Diff(want, rep.Denies, cmpopts.SortSlices(func(a, b trace.ReasonCount) bool { return a.Reason < b.Reason })); diff != "" {
		t.Errorf("report denies (-want +got):\n%s", diff)
	}
}
