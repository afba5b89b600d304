package proxy_test

import (
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// TestProxyUseAuditFailureDoesNotForward: a `use` event that cannot be made
// durable stops the call before the upstream sees it (fail closed): 503
// temporarily_unavailable with Retry-After, and a deny event naming the
// issuance where the sink still takes one.
func TestProxyUseAuditFailureDoesNotForward(t *testing.T) {
	sink := &brokertest.Sink{Fail: func(ev *audit.Event) bool { return ev.Type == audit.TypeUse }}
	f := newFixture(t, fixtureOpts{audit: sink})
	cred := f.credential(t, "stripe")
	res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(cred.AccessToken), nil)
	if res.Status != 503 || !strings.Contains(res.Body, "temporarily_unavailable") || res.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d %q (Retry-After %q), want 503 temporarily_unavailable with Retry-After", res.Status, res.Body, res.Header.Get("Retry-After"))
	}
	if n := f.up.Hits(); n != 0 {
		t.Errorf("upstream hit %d times, want 0", n)
	}
	var deny *audit.Event
	for _, ev := range sink.Events() {
		if ev.Type == audit.TypeDeny {
			deny = ev
		}
	}
	if deny == nil || deny.IssuanceID != cred.Issuance.ID || deny.Outcome == nil || deny.Outcome.Status != 503 || deny.Outcome.Reason != "audit_unavailable" {
		t.Errorf("deny event = %+v, want one for %s with 503 audit_unavailable", deny, cred.Issuance.ID)
	}
}
