package proxy

import (
	"net/http/httptest"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
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
