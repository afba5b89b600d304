package trace_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// withUpstreamIDs returns the fixture events with the proxied call's
// use_result recording the upstream's own request ids, as the proxy writes
// them.
func withUpstreamIDs(ids map[string]string) []*audit.Event {
	evs := fixtureEvents()
	for _, ev := range evs {
		if ev.Type == audit.TypeUseResult {
			ev.Details = map[string]any{"upstream_request_ids": ids}
		}
	}
	return evs
}

// TestLookupUpstreamRequestID: the request id an upstream returned for a
// proxied call (Stripe's Request-Id, GitHub's X-GitHub-Request-Id, which
// also reads as a hex serial, Cloudflare's CF-Ray) traces to the use and
// its issuance, from the audit lines (offline) and from events added as
// the broker makes them; the timeline shows it.
func TestLookupUpstreamRequestID(t *testing.T) {
	ids := map[string]string{"request-id": "req_ABC", "x-github-request-id": "C4F2:3B0E:1A2B3C:1B2C3D:5F0E7A9B", "cf-ray": "8f3a2b1c4d5e6f70-IAD"}
	fromLines, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range sealed(t, "chn_fixture", 0, withUpstreamIDs(ids)) {
		if err := fromLines.AddLine(line); err != nil {
			t.Fatal(err)
		}
	}
	fromEvents, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range withUpstreamIDs(ids) {
		fromEvents.Add(ev)
	}
	usesB := []string{"use:use_U1", "use_result:use_U1", "shared_use_suspected:req_U2"}
	for name, x := range map[string]*trace.Index{"audit-lines": fromLines, "events": fromEvents} {
		for _, q := range []string{"req_ABC", "C4F2:3B0E:1A2B3C:1B2C3D:5F0E7A9B", `"8f3a2b1c4d5e6f70-IAD"`} {
			res, err := x.Lookup(q)
			if err != nil {
				t.Fatalf("%s: Lookup(%s) = %v, want issuance %s", name, q, err, idB)
			}
			want := summary{Issuance: idB, Workload: "payments-api", Kind: trace.KindUpstreamRequestID, Value: trace.Unwrap(q), Uses: usesB, From: trace.FromAuditLog}
			if diff := cmp.Diff(want, summarize(res)); diff != "" {
				t.Errorf("%s: Lookup(%s) (-want +got):\n%s", name, q, diff)
			}
			var txt bytes.Buffer
			if err := res.WriteText(&txt); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(txt.String(), "upstream request-id req_ABC") {
				t.Errorf("%s: the timeline of Lookup(%s) does not show the upstream's request id:\n%s", name, q, txt.String())
			}
		}
	}
	// Only a use_result's details count: the same key elsewhere is no id.
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range fixtureEvents() {
		if ev.Type == audit.TypeUse {
			ev.Details = map[string]any{"upstream_request_ids": map[string]any{"request-id": "req_ELSEWHERE"}}
		}
		x.Add(ev)
	}
	if res, err := x.Lookup("req_ELSEWHERE"); err == nil {
		t.Errorf("Lookup(req_ELSEWHERE) = %s, want no match", res.Issuance.ID)
	}
}
