package proxy_test

import (
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestProxyAuditQueryBounded: a workload holding a proxy credential sends a
// request to an allowed path with query parameter names (recorded in the
// audit path, unlike their values) tens of KiB long. The path is bounded
// (4 KiB, path_too_long) but the query was not: each such request wrote the
// whole of it into the audit log twice (use and use_result), and into the
// trace index (200,000 kept events) as often. The request still goes
// upstream as sent; the events record at most 2 KiB of parameter names,
// then their full length and SHA-256.
func TestProxyAuditQueryBounded(t *testing.T) {
	long := strings.Repeat("a", 30<<10)
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges?"+long+"=1&b=2", bearer(tok), nil)
	if res.Status != 200 {
		t.Fatalf("GET = %d %.200s", res.Status, res.Body)
	}
	f.waitEvent(t, audit.TypeUseResult)
	if got, want := f.up.Last().Query, long+"=1&b=2"; got != want {
		t.Errorf("upstream query is %d bytes, want the %d sent", len(got), len(want))
	}
	names := long + "&b"
	for _, typ := range []string{audit.TypeUse, audit.TypeUseResult} {
		evs := f.eventsOf(typ)
		if len(evs) != 1 {
			t.Fatalf("%s events = %d, want 1", typ, len(evs))
		}
		p := evs[0].Upstream.Path
		if len(p) > len("/v1/charges?")+2<<10+128 {
			t.Errorf("%s event path is %d bytes, want at most 2 KiB of parameter names and a note", typ, len(p))
		}
		if !strings.HasPrefix(p, "/v1/charges?"+long[:2<<10]) || !strings.Contains(p, broker.Fingerprint(names)) {
			t.Errorf("%s event path = %.80q...%q, want the path, 2 KiB of names, then their length and SHA-256", typ, p, p[max(0, len(p)-100):])
		}
	}
}
