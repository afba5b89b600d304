package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestProxyRateLimitedAuditBounded: a holder of a proxy credential that
// keeps sending past its workload's proxy rate is answered 429 each time,
// but only the first of those 429s (DefaultRefusalLimits.PerIdentity per
// span) are audited on their own, as before (a deny naming the issuance);
// one summary deny names the workload and counts the rest, so a proxy
// credential cannot grow the audit log without bound. (Each 429 wrote a
// deny event of its own.)
func TestProxyRateLimitedAuditBounded(t *testing.T) {
	f := newFixture(t, fixtureOpts{proxyRate: "proxy_rate: {per_second: 0.001, burst: 1}", refusalLimits: &broker.RefusalLimits{}})
	cred := f.credential(t, "stripe")
	if res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(cred.AccessToken), nil); res.Status != http.StatusOK {
		t.Fatalf("first use = %d %s, want 200", res.Status, res.Body)
	}
	const refused = 1000
	for i := range refused {
		res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(cred.AccessToken), nil)
		if res.Status != http.StatusTooManyRequests || res.Header.Get("Retry-After") == "" || oauthError(t, res.Body) != "slow_down" {
			t.Fatalf("use %d past the proxy rate = %d Retry-After %q %s, want 429 slow_down with Retry-After", i+1, res.Status, res.Header.Get("Retry-After"), res.Body)
		}
	}
	f.svc.FlushRefusalSummaries(context.Background(), true)

	perIdentity := broker.DefaultRefusalLimits.PerIdentity
	var single, sums []*audit.Event
	for _, ev := range f.eventsOf(audit.TypeDeny) {
		if ev.Outcome == nil || ev.Outcome.Status != http.StatusTooManyRequests || ev.Outcome.Reason != broker.ReasonRateLimited {
			t.Errorf("deny event %+v, want only 429 rate_limited ones", ev.Outcome)
			continue
		}
		if ev.Details["scope"] == broker.RefusalScopeIdentity {
			sums = append(sums, ev)
		} else {
			single = append(single, ev)
		}
	}
	if len(single) > perIdentity {
		t.Fatalf("%d refused requests wrote %d deny events of their own, want at most %d", refused, len(single), perIdentity)
	}
	// Those audited on their own are what they were: the issuance's deny.
	for _, ev := range single {
		if ev.IssuanceID != cred.Issuance.ID || ev.Grant != "stripe" || ev.Workload != "payments" || ev.Outcome.Error != "slow_down" {
			t.Fatalf("deny of a 429 = issuance %q grant %q workload %q outcome %+v; want %s, stripe, payments, slow_down",
				ev.IssuanceID, ev.Grant, ev.Workload, ev.Outcome, cred.Issuance.ID)
		}
	}
	if len(sums) != 1 {
		t.Fatalf("%d summaries of the suppressed 429s, want 1", len(sums))
	}
	sum := sums[0]
	n, _ := sum.Details["suppressed"].(int)
	if len(single)+n != refused {
		t.Errorf("%d events of their own + %d suppressed = %d, want the %d refused requests", len(single), n, len(single)+n, refused)
	}
	ts := f.clk.Now().UTC().Format(audit.TimeFormat)
	if sum.Workload != "payments" || sum.Owner != "team-payments" || sum.Outcome.Error != "slow_down" || sum.Details["first"] != ts || sum.Details["last"] != ts {
		t.Errorf("summary workload %q owner %q outcome %+v details %v; want payments, team-payments, slow_down, first and last %s",
			sum.Workload, sum.Owner, sum.Outcome, sum.Details, ts)
	}
	// Every 429 is still counted by the metrics, and those with no deny
	// of their own by keytrail_refusals_suppressed_total{scope=identity}.
	if got := counterValue(t, f, "keytrail_rate_limited_total", map[string]string{"endpoint": "proxy"}); got != refused {
		t.Errorf("keytrail_rate_limited_total{endpoint=proxy} = %v, want %d", got, refused)
	}
	if got := counterValue(t, f, "keytrail_refusals_suppressed_total", map[string]string{"scope": broker.RefusalScopeIdentity}); got != float64(n) {
		t.Errorf("keytrail_refusals_suppressed_total{scope=identity} = %v, want the summary's %d", got, n)
	}
	if hits := f.up.Hits(); hits != 1 {
		t.Errorf("upstream hits = %d, want 1", hits)
	}
}

// TestProxyAndExchangeRateLimitedShareAudit: a workload's 429s are one
// caller's, whether its proxied requests or its exchanges were refused:
// they take from one bucket of audited 429s and are counted by one
// summary naming the workload.
func TestProxyAndExchangeRateLimitedShareAudit(t *testing.T) {
	// rate burst 2, no proxy_rate: the exchange and the first use take it.
	f := newFixture(t, fixtureOpts{ratePerSecond: 0.001, burst: 2, refusalLimits: &broker.RefusalLimits{PerIdentity: 1}})
	tok := f.credential(t, "stripe").AccessToken
	if res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(tok), nil); res.Status != http.StatusOK {
		t.Fatalf("first use = %d %s, want 200", res.Status, res.Body)
	}
	if res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(tok), nil); res.Status != http.StatusTooManyRequests {
		t.Fatalf("second use = %d %s, want 429", res.Status, res.Body)
	}
	_, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: identityToken, Grant: "stripe", RequestID: "req_renew"})
	if !errors.Is(err, broker.ErrRateLimited) {
		t.Fatalf("renewal past the rate = %v, want 429", err)
	}
	f.svc.FlushRefusalSummaries(context.Background(), true)
	var got []string
	for _, ev := range f.eventsOf(audit.TypeDeny) {
		got = append(got, fmt.Sprint(ev.Outcome.Reason, " ", ev.Workload, " ", ev.Grant, " ", ev.Details["scope"], " ", ev.Details["suppressed"]))
	}
	want := []string{"rate_limited payments stripe <nil> <nil>", "rate_limited payments  identity 1"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("deny events = %q, want %q (the proxied 429's own, then a summary counting the exchange's)", got, want)
	}
}
