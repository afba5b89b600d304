package trace_test

import (
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// TestRefusalSummariesVerifyAndReport: both summary shapes the broker
// writes (a source's, with source.ip and details.scope "source"; the
// global one, no source, details.scope "global"; suppressed an int as
// written) seal into a log that verifies, load into the trace index, and
// are counted in the report as the refusals they stand for.
func TestRefusalSummariesVerifyAndReport(t *testing.T) {
	sum := func(src *audit.Source, scope string, n int) *audit.Event {
		return &audit.Event{Type: audit.TypeDeny, RequestID: "req_S" + scope, Source: src,
			Outcome: &audit.Outcome{Status: 429, Error: "slow_down", Reason: broker.ReasonRefusalsSuppressed},
			Details: map[string]any{"scope": scope, "suppressed": n, "first": at(0).Format(audit.TimeFormat), "last": at(time.Second).Format(audit.TimeFormat)}}
	}
	lines := sealed(t, "chn_s", 0, []*audit.Event{
		sum(&audit.Source{IP: "203.0.113.7"}, broker.RefusalScopeSource, 35),
		sum(nil, broker.RefusalScopeGlobal, 1200),
	})
	p := writeLines(t, t.TempDir(), "audit.log", lines)
	vr, err := audit.VerifyFiles([]string{p}, audit.VerifyOptions{})
	if err != nil || !vr.OK() || vr.Lines != 2 {
		t.Fatalf("verify = %+v, %v; want 2 lines, no problem", vr, err)
	}
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := trace.LoadFiles(x, []string{p}); err != nil {
		t.Fatal(err)
	}
	rep, err := trace.BuildReport(trace.ReportInput{Now: at(time.Minute), Events: x.Events()})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Denies) != 1 || rep.Denies[0].Count != 1235 {
		t.Errorf("report denies = %+v, want refusals_suppressed 1235", rep.Denies)
	}
}
