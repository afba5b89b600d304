package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/broker"
)

// TestRateLimitedExchangeIsAudited pins the README's "Per-source limits"
// note: a 429 is a refusal like any other, written to the audit log as a
// deny event (reason rate_limited), up to refusal_limit.per_identity per
// span (past it a summary counts them: broker TestRateLimitedWorkloadAuditBounded).
func TestRateLimitedExchangeIsAudited(t *testing.T) {
	f := newFixture(t) // rate: {per_second: 1, burst: 1}
	f.post(t, "/v1/token", "application/x-www-form-urlencoded", form().Encode())
	resp, _ := f.post(t, "/v1/token", "application/x-www-form-urlencoded", form().Encode())
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second exchange at 1/s = %d, want 429", resp.StatusCode)
	}
	var denies []string
	for _, ev := range f.sink.Events() {
		if ev.Type == "deny" && ev.Outcome != nil {
			denies = append(denies, ev.RequestID+" "+ev.Outcome.Reason+" "+ev.Workload)
		}
	}
	want := []string{resp.Header.Get("X-Request-Id") + " rate_limited deployer"}
	if len(denies) != 1 || denies[0] != want[0] {
		t.Errorf("deny events = %q, want %q", denies, want)
	}
}

// TestUnauditedRateLimitedCounted: the 429s of authenticated callers past
// refusal_limit.per_identity, answered with no audit event of their own
// (counted by their caller's summary), are counted by
// keytrail_refusals_suppressed_total{scope="identity"}, on /v1/token and
// /v1/introspect alike, and only those: the ones audited on their own,
// and the unauthenticated refusals' scopes, are not. The 429 itself is
// answered as before. (No metric counted them.)
func TestUnauditedRateLimitedCounted(t *testing.T) {
	f := newRefusalFixtureWith(t, &broker.RefusalLimits{PerIdentity: 2},
		testPolicy(t, "    rate: {per_second: 0.001, burst: 1}", ""), broker.IntrospectLimits{PerSecond: 0.001, Burst: 1})
	const a = "203.0.113.7"
	if got := fmt.Sprint(seriesOf(t, f.reg, "keytrail_refusals_suppressed_total", "scope")); got != "[global identity source]" {
		t.Errorf("keytrail_refusals_suppressed_total scopes at start = %s, want [global identity source]", got)
	}
	exchange := func() *httptest.ResponseRecorder { return f.do(http.MethodPost, "/v1/token", a, "", form().Encode()) }
	introspect := func() *httptest.ResponseRecorder {
		return f.do(http.MethodPost, "/v1/introspect", a, callerToken, "token=hvs.whatever")
	}
	for name, req := range map[string]func() *httptest.ResponseRecorder{"exchange": exchange, "introspection": introspect} {
		if w := req(); w.Code != http.StatusOK {
			t.Fatalf("first %s = %d %s, want 200", name, w.Code, w.Body)
		}
	}
	const exchanges, introspections = 5, 4 // past the rate: 2 of each audited on their own
	for i := range exchanges + introspections {
		req := exchange
		if i >= exchanges {
			req = introspect
		}
		w := req()
		if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") == "" ||
			!strings.Contains(w.Body.String(), `"slow_down"`) || !strings.Contains(w.Body.String(), `"rate limit exceeded; slow down"`) {
			t.Fatalf("request %d past the rate = %d Retry-After %q %s, want 429 slow_down with Retry-After", i+1, w.Code, w.Header().Get("Retry-After"), w.Body)
		}
	}
	if got, want := suppressedOf(t, f.reg, broker.RefusalScopeIdentity), float64(exchanges-2+introspections-2); got != want {
		t.Errorf("keytrail_refusals_suppressed_total{scope=identity} = %v, want %v", got, want)
	}
	if got := fmt.Sprint(suppressedOf(t, f.reg, "source"), " ", suppressedOf(t, f.reg, "global")); got != "0 0" {
		t.Errorf("keytrail_refusals_suppressed_total{scope=source, global} = %s, want 0 0", got)
	}
	if got := deniesOf(t, f.reg, broker.ReasonRateLimited); got != exchanges+introspections {
		t.Errorf("keytrail_denies_total{reason=rate_limited} = %v, want every 429's %d", got, exchanges+introspections)
	}
	// The metric counts what the summaries count.
	f.svc.FlushRefusalSummaries(context.Background(), true)
	n := 0
	for _, ev := range f.sink.Events() {
		if ev.Details["scope"] == broker.RefusalScopeIdentity {
			s, _ := ev.Details["suppressed"].(int)
			n += s
		}
	}
	if n != exchanges-2+introspections-2 {
		t.Errorf("summaries count %d suppressed 429s, want %d", n, exchanges-2+introspections-2)
	}
}

// seriesOf is the sorted values of label in the series of metric name.
func seriesOf(t *testing.T, reg *prometheus.Registry, name, label string) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label {
					out = append(out, l.GetValue())
				}
			}
		}
	}
	sort.Strings(out)
	return out
}
