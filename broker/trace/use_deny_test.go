package trace_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// TestUseAnsweredByDeny: a proxied request refused after its use event (the
// use event was not durable in time, or the credential was revoked right
// before the request went upstream) has a deny with the use's use_id
// instead of a use_result that went upstream. The timeline pairs them by
// the id and says the use was not forwarded, so a late-landing use event
// does not read as a call that reached the upstream.
func TestUseAnsweredByDeny(t *testing.T) {
	cred := &audit.Credential{Fingerprint: broker.Fingerprint(secretB)}
	evs := append(fixtureEvents(),
		&audit.Event{Type: audit.TypeUse, RequestID: "req_U3", UseID: "use_U3", IssuanceID: idB, Workload: "payments-api", Owner: "team-payments",
			SessionID: "ses_a", Grant: "stripe", Kind: broker.KindProxy, Credential: cred,
			Upstream: &audit.Upstream{Method: "POST", Host: "api.stripe.com", Path: "/v1/refunds"}},
		&audit.Event{Type: audit.TypeDeny, RequestID: "req_U3", UseID: "use_U3", IssuanceID: idB, Workload: "payments-api", Owner: "team-payments",
			SessionID: "ses_a", Grant: "stripe", Kind: broker.KindProxy, Credential: cred,
			Outcome: &audit.Outcome{Status: 503, Error: "temporarily_unavailable", Reason: "audit_unavailable"}},
	)
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range sealed(t, "chn_fixture", 0, evs) {
		if err := x.AddLine(line); err != nil {
			t.Fatal(err)
		}
	}
	res, err := x.Lookup("use_U3")
	if err != nil {
		t.Fatalf("Lookup(use_U3) = %v", err)
	}
	want := []string{"use:use_U1", "use_result:use_U1", "shared_use_suspected:req_U2", "use:use_U3", "deny:use_U3"}
	if diff := cmp.Diff(want, summarize(res).Uses); diff != "" {
		t.Errorf("Lookup(use_U3) uses (-want +got):\n%s", diff)
	}
	var txt bytes.Buffer
	if err := res.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	var denyLine string
	for _, l := range strings.Split(txt.String(), "\n") {
		if strings.Contains(l, "deny") && strings.Contains(l, "use_U3") {
			denyLine = l
		}
	}
	if !strings.Contains(denyLine, "not forwarded") || !strings.Contains(denyLine, "audit_unavailable") {
		t.Errorf("timeline's deny of use_U3 = %q, want it to say not forwarded (audit_unavailable):\n%s", denyLine, txt.String())
	}
	// A deny that answers no use (the checks refused the request) says
	// nothing of the kind.
	if strings.Count(txt.String(), "not forwarded") != 1 {
		t.Errorf("timeline says \"not forwarded\" %d times, want once:\n%s", strings.Count(txt.String(), "not forwarded"), txt.String())
	}
}
