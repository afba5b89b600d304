package proxy

import (
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

var eventSink any

// A proxied request writes two events (use, use_result): each is one
// allocation, its credential, source, upstream and outcome included, and
// carries what it always carried.
func TestCallEventOneAllocation(t *testing.T) {
	c := &call{
		r:   httptest.NewRequest("GET", "/v1/proxy/stripe/v1/charges", nil),
		fp:  "sha256:00",
		src: broker.Source{IP: "10.0.0.7", UserAgent: "curl/8"},
		is: &broker.Issuance{ID: "iss_1", Workload: "payments", Owner: "team-a", SessionID: "ses_1",
			Grant: "stripe", Kind: broker.KindProxy},
	}
	ev := c.event(audit.TypeUse)
	if ev.Type != audit.TypeUse || ev.IssuanceID != "iss_1" || ev.Workload != "payments" || ev.Owner != "team-a" ||
		ev.SessionID != "ses_1" || ev.Grant != "stripe" || ev.Kind != broker.KindProxy ||
		ev.Credential == nil || ev.Credential.Fingerprint != "sha256:00" ||
		ev.Source == nil || ev.Source.IP != "10.0.0.7" || ev.Source.UserAgent != "curl/8" ||
		ev.Upstream != nil || ev.Outcome != nil {
		t.Fatalf("event: %+v", ev)
	}
	c.src = broker.Source{}
	if ev := c.event(audit.TypeUse); ev.Source != nil {
		t.Errorf("event without a source: Source %+v, want nil", ev.Source)
	}
	c.src = broker.Source{IP: "10.0.0.7"}
	if n := testing.AllocsPerRun(100, func() { eventSink = c.event(audit.TypeUseResult) }); n != 1 {
		t.Errorf("event: %v allocations, want 1", n)
	}
}

// The value of an injected header is made once per secret value and format,
// not on every request, and is what strings.ReplaceAll makes.
func TestInjectedValueKept(t *testing.T) {
	f := newFormSet("sk_live_1")
	for _, format := range []string{"Bearer {secret}", "{secret}", "token={secret}; again={secret}", "no placeholder", "Bearer {secret}"} {
		if got, want := f.injected(format), strings.ReplaceAll(format, policies.SecretPlaceholder, "sk_live_1"); got != want {
			t.Errorf("injected(%q) = %q, want %q", format, got, want)
		}
	}
	var v string
	if n := testing.AllocsPerRun(100, func() { v = f.injected("Bearer {secret}") }); n != 0 || v != "Bearer sk_live_1" {
		t.Errorf("injected, same format again: %v allocations, want 0", n)
	}
}
