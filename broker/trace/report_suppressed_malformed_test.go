package trace_test

import (
	"encoding/json"
	"math"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// TestReportSuppressedMalformed: a refusal summary whose details.suppressed
// is no usable count (negative, zero, fractional, past the bound, a string,
// NaN) counts as one refusal, as read back from the log and as written (an
// int); no sum of counts wraps around.
func TestReportSuppressedMalformed(t *testing.T) {
	sum := func(v any) *audit.Event {
		return &audit.Event{Type: audit.TypeDeny, Seq: 1, Chain: "chn_a", Time: at(time.Second).Format(time.RFC3339Nano),
			Outcome: &audit.Outcome{Status: 429, Error: "slow_down", Reason: broker.ReasonRefusalsSuppressed},
			Details: map[string]any{"scope": "global", "suppressed": v}}
	}
	fromJSON := func(js string) any {
		var d map[string]any
		if err := json.Unmarshal([]byte(`{"s":`+js+`}`), &d); err != nil {
			t.Fatal(err)
		}
		return d["s"]
	}
	for _, c := range []struct {
		name string
		v    []any
		want int
	}{
		{"negative int", []any{-5}, 1},
		{"negative json", []any{fromJSON("-5")}, 1},
		{"zero", []any{0}, 1},
		{"fractional json", []any{fromJSON("2.5")}, 1},
		{"fractional number", []any{json.Number("2.5")}, 1},
		{"string", []any{"12"}, 1},
		{"nil", []any{nil}, 1},
		{"NaN", []any{math.NaN()}, 1},
		{"huge json", []any{fromJSON("1e300")}, 1},
		{"huge number", []any{json.Number("99999999999999999999999")}, 1},
		{"huge int", []any{math.MaxInt}, 1},
		{"huge int64", []any{int64(math.MaxInt64)}, 1},
		{"negative json.Number", []any{json.Number("-7")}, 1},
		{"two max int32", []any{math.MaxInt32, math.MaxInt32}, 2 * math.MaxInt32},
		{"two huge ints", []any{math.MaxInt, math.MaxInt}, 2},
		{"int and json agree", []any{7, fromJSON("7"), json.Number("7"), int64(7)}, 28},
	} {
		var evs []*audit.Event
		for i, v := range c.v {
			ev := sum(v)
			ev.Seq = uint64(i + 1)
			evs = append(evs, ev)
		}
		rep, err := trace.BuildReport(trace.ReportInput{Now: at(time.Minute), Events: evs})
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for _, d := range rep.Denies {
			if d.Reason == broker.ReasonRefusalsSuppressed {
				got = d.Count
			}
		}
		if got != c.want {
			t.Errorf("%s: refusals_suppressed count = %d, want %d", c.name, got, c.want)
		}
	}
}
