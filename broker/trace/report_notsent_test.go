package trace_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// notSentEvents are the fixture and three proxied requests that wrote a use
// event and were not forwarded, as the proxy logs them: use_U3's use event
// was not durable in time (a deny naming it, no use_result); use_U4's
// credential was revoked right before sending, logged before denies named
// the use (a deny without use_id, a use_result with details.not_sent);
// use_U5 the same, logged now (both name it). details.not_sent is as read
// back from JSON.
func notSentEvents() []*audit.Event {
	cred := &audit.Credential{Fingerprint: broker.Fingerprint(secretB)}
	ev := func(typ, req, use string) *audit.Event {
		return &audit.Event{Type: typ, RequestID: req, UseID: use, IssuanceID: idB, Workload: "payments-api", Owner: "team-payments",
			SessionID: "ses_a", Grant: "stripe", Kind: broker.KindProxy, Credential: cred,
			Upstream: &audit.Upstream{Method: "GET", Host: "api.stripe.com", Path: "/v1/charges"}}
	}
	deny := func(req, use, reason string, status int) *audit.Event {
		d := ev(audit.TypeDeny, req, use)
		d.Upstream = nil
		d.Outcome = &audit.Outcome{Status: status, Error: "access_denied", Reason: reason}
		if status == 503 {
			d.Outcome.Error = "temporarily_unavailable"
		}
		return d
	}
	notSent := func(req, use string) *audit.Event {
		r := ev(audit.TypeUseResult, req, use)
		r.Outcome = &audit.Outcome{Status: 403, Error: "access_denied", Reason: "credential_revoked"}
		r.Details = map[string]any{"not_sent": true}
		return r
	}
	return append(fixtureEvents(),
		ev(audit.TypeUse, "req_U3", "use_U3"), deny("req_U3", "use_U3", "audit_unavailable", 503),
		ev(audit.TypeUse, "req_U4", "use_U4"), deny("req_U4", "", "credential_revoked", 403), notSent("req_U4", "use_U4"),
		ev(audit.TypeUse, "req_U5", "use_U5"), deny("req_U5", "use_U5", "credential_revoked", 403), notSent("req_U5", "use_U5"),
	)
}

// TestReportCountsForwardedUsesOnly: a use event answered by a deny naming
// its use_id, or by a use_result with details.not_sent, was not forwarded:
// the report's use counts (workload, grant, chart) leave it out, as the
// trace's timeline says it was not forwarded. The fixture's forwarded use
// and its introspection still count.
func TestReportCountsForwardedUsesOnly(t *testing.T) {
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range sealed(t, "chn_ns", 0, notSentEvents()) {
		if err := x.AddLine(l); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := trace.BuildReport(trace.ReportInput{Now: at(5 * time.Minute), Events: x.Events()})
	if err != nil {
		t.Fatal(err)
	}
	var wr *trace.WorkloadReport
	for i := range rep.Workloads {
		if rep.Workloads[i].Name == "payments-api" {
			wr = &rep.Workloads[i]
		}
	}
	if wr == nil {
		t.Fatalf("BuildReport().Workloads = %+v, want payments-api", rep.Workloads)
	}
	if wr.Uses != 2 {
		t.Errorf("payments-api uses = %d, want 2 (use_U1 and the introspection; use_U3..5 were not forwarded)", wr.Uses)
	}
	for _, g := range wr.Grants {
		if g.Name == "stripe" && g.Uses != 1 {
			t.Errorf("payments-api grant stripe uses = %d, want 1 (use_U1)", g.Uses)
		}
	}
	if wr.Denied != 4 {
		t.Errorf("payments-api denied = %d, want 4 (grant_not_allowed and the three refusals)", wr.Denied)
	}
	for _, r := range rep.Timeline.Rows {
		if r.Workload != "payments-api" {
			continue
		}
		n := 0
		for _, v := range r.Uses {
			n += v
		}
		if n != 2 {
			t.Errorf("timeline uses of payments-api = %v (sum %d), want 2 in all", r.Uses, n)
		}
	}
}

// TestUseResultNotSent: the timeline says "not sent" on a use_result with
// details.not_sent (the request was refused after its use event), as it
// says "not forwarded" on a deny naming a use, and on no other line.
func TestUseResultNotSent(t *testing.T) {
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range sealed(t, "chn_ns", 0, notSentEvents()) {
		if err := x.AddLine(l); err != nil {
			t.Fatal(err)
		}
	}
	res, err := x.Lookup(idB)
	if err != nil {
		t.Fatal(err)
	}
	var txt bytes.Buffer
	if err := res.WriteText(&txt); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, l := range strings.Split(txt.String(), "\n") {
		if strings.Contains(l, "not sent") {
			for _, id := range []string{"use_U1", "use_U3", "use_U4", "use_U5"} {
				if strings.Contains(l, "use_result") && strings.Contains(l, id) {
					got[id] = true
				}
			}
		}
	}
	if !got["use_U4"] || !got["use_U5"] || len(got) != 2 || strings.Count(txt.String(), "not sent") != 2 {
		t.Errorf("timeline says \"not sent\" on use_result of %v, want use_U4 and use_U5 only:\n%s", got, txt.String())
	}
	if n := strings.Count(txt.String(), "not forwarded"); n != 2 {
		t.Errorf("timeline says \"not forwarded\" %d times, want twice (the denies naming use_U3 and use_U5):\n%s", n, txt.String())
	}
}
