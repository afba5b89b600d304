package proxy_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestProxyUnauthenticatedRefusalsLimited: the proxy's refusals of a
// missing or unknown credential count against their source's
// RefusalLimits like the API's: audited within the burst, then answered
// 429 slow_down with Retry-After and no event of their own, counted by
// one summary event; a caller with a valid credential from the same
// address is not limited.
func TestProxyUnauthenticatedRefusalsLimited(t *testing.T) {
	f := newFixture(t, fixtureOpts{refusalLimits: &broker.RefusalLimits{PerSecond: 1, Burst: 2, SummaryEvery: time.Minute}})
	const src = "203.0.113.7"
	tok := f.credential(t, "stripe").AccessToken
	from := func(h http.Header) http.Header {
		if h == nil {
			h = http.Header{}
		}
		h.Set("X-Forwarded-For", src)
		return h
	}
	unknown := func() *response {
		return f.do(t, "GET", "/v1/proxy/stripe/v1/charges", from(bearer("ktp_"+strings.Repeat("A", 43))), nil)
	}
	missing := func() *response { return f.do(t, "GET", "/v1/proxy/stripe/v1/charges", from(nil), nil) }
	for i, req := range []func() *response{unknown, missing} {
		if res := req(); res.Status != http.StatusUnauthorized {
			t.Fatalf("refusal %d within the burst = %d, want 401", i+1, res.Status)
		}
	}
	for i, req := range []func() *response{unknown, missing, unknown} {
		res := req()
		if res.Status != http.StatusTooManyRequests || res.Header.Get("Retry-After") != "1" || oauthError(t, res.Body) != "slow_down" {
			t.Fatalf("refusal %d past the burst = %d Retry-After %q %s, want 429 slow_down Retry-After 1", i+1, res.Status, res.Header.Get("Retry-After"), res.Body)
		}
	}
	if res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", from(bearer(tok)), nil); res.Status != http.StatusOK {
		t.Errorf("a valid credential from the same source = %d %s, want 200", res.Status, res.Body)
	}
	reasons := func() []string {
		var out []string
		for _, ev := range f.eventsOf(audit.TypeDeny) {
			out = append(out, ev.Outcome.Reason)
		}
		return out
	}
	if got, want := fmt.Sprint(reasons()), "[unknown_credential missing_credential]"; got != want {
		t.Errorf("deny events = %s, want %s (the burst's only)", got, want)
	}
	f.clk.Advance(time.Minute)
	f.svc.FlushRefusalSummaries(context.Background(), false)
	denies := f.eventsOf(audit.TypeDeny)
	if len(denies) != 3 {
		t.Fatalf("deny events after the span = %q, want one summary more", reasons())
	}
	sum := denies[2]
	if got, want := fmt.Sprint(sum.Outcome.Reason, " ", sum.Source.IP, " ", sum.Details["scope"], " ", sum.Details["suppressed"]), fmt.Sprint(broker.ReasonRefusalsSuppressed, " ", src, " source 3"); got != want {
		t.Errorf("summary = %s, want %s", got, want)
	}
	if got := counterValue(t, f, "keytrail_refusals_suppressed_total", map[string]string{"scope": broker.RefusalScopeSource}); got != 3 {
		t.Errorf("keytrail_refusals_suppressed_total{scope=source} = %v, want 3", got)
	}
}

// TestProxyRefusalAfterLastSummary: once the summaries' last flush ran
// (RunRefusalSummaries stopped at shutdown), nothing would write another:
// an unknown credential refused later (a request still running after
// shutdown_timeout) is audited on its own, not counted and lost.
func TestProxyRefusalAfterLastSummary(t *testing.T) {
	f := newFixture(t, fixtureOpts{refusalLimits: &broker.RefusalLimits{PerSecond: 1, Burst: 1, SummaryEvery: time.Minute}})
	unknown := func() *response {
		return f.do(t, "GET", "/v1/proxy/stripe/v1/charges", http.Header{"Authorization": {"Bearer ktp_" + strings.Repeat("A", 43)}, "X-Forwarded-For": {"203.0.113.7"}}, nil)
	}
	if res := unknown(); res.Status != http.StatusUnauthorized {
		t.Fatalf("refusal within the burst = %d, want 401", res.Status)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := f.svc.RunRefusalSummaries(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if res := unknown(); res.Status != http.StatusUnauthorized {
		t.Errorf("refusal past the burst after the last summaries = %d, want 401 (audited)", res.Status)
	}
	if got := len(f.eventsOf(audit.TypeDeny)); got != 2 {
		t.Errorf("%d deny events, want 2 (each refusal's own)", got)
	}
}
