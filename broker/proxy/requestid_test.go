package proxy_test

import (
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
)

// TestProxyRecordsUpstreamRequestID: the request id an upstream returns in
// a well-known response header (its own, which its logs show) is recorded
// in the use_result event's details.upstream_request_ids, and the response
// reaches the caller unchanged; a value too long, not printable ASCII,
// sent twice, carrying the injected secret or echoing the use id is not
// recorded.
func TestProxyRecordsUpstreamRequestID(t *testing.T) {
	long := "req_" + strings.Repeat("a", 124) // 128 bytes: the bound
	tests := []struct {
		name    string
		headers url.Values        // sent by the upstream
		want    map[string]string // details.upstream_request_ids; nil: no details
	}{
		{"ok/stripe", url.Values{"Request-Id": {"req_ABC"}}, map[string]string{"request-id": "req_ABC"}},
		{"ok/aws-and-cloudflare", url.Values{"X-Amzn-RequestId": {"6f1c0e2a-1b2c-4d5e-8f90-0a1b2c3d4e5f"}, "CF-Ray": {"8f3a2b1c4d5e6f70-IAD"}},
			map[string]string{"x-amzn-requestid": "6f1c0e2a-1b2c-4d5e-8f90-0a1b2c3d4e5f", "cf-ray": "8f3a2b1c4d5e6f70-IAD"}},
		{"ok/github", url.Values{"X-GitHub-Request-Id": {"C4F2:3B0E:1A2B3C:1B2C3D:5F0E7A9B"}}, map[string]string{"x-github-request-id": "C4F2:3B0E:1A2B3C:1B2C3D:5F0E7A9B"}},
		{"ok/generic-x-request-id", url.Values{"X-Request-Id": {"upstream-own-id"}}, map[string]string{"x-request-id": "upstream-own-id"}},
		{"ok/at-the-bound", url.Values{"Request-Id": {long}}, map[string]string{"request-id": long}},
		{"skip/too-long", url.Values{"Request-Id": {long + "b"}}, nil},
		{"skip/not-ascii", url.Values{"Request-Id": {"req_ABC\u00e9"}}, nil},
		{"skip/space", url.Values{"Request-Id": {"req ABC"}}, nil},
		{"skip/sent-twice", url.Values{"Request-Id": {"req_1", "req_2"}}, nil},
		{"skip/carries-the-secret", url.Values{"Request-Id": {"{secret}"}}, nil},
		{"skip/echoes-the-use-id", url.Values{"X-Request-Id": {"{use}"}}, nil},
		{"skip/unlisted-header", url.Values{"X-Trace-Id": {"abc"}}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{})
			tok := f.credential(t, "stripe").AccessToken
			res := f.do(t, "GET", "/v1/proxy/stripe/up/request-ids?"+tt.headers.Encode(), bearer(tok), nil)
			if res.Status != 200 || res.Body != `{"id":"ch_1"}` {
				t.Fatalf("GET = %d %q, want 200 and the upstream's body", res.Status, res.Body)
			}
			f.waitEvent(t, audit.TypeUseResult)
			r := f.eventsOf(audit.TypeUseResult)[0]
			var got map[string]string
			if r.Details != nil {
				got, _ = r.Details["upstream_request_ids"].(map[string]string)
				if got == nil {
					t.Fatalf("use_result details = %#v, want upstream_request_ids as a map", r.Details)
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("use_result details.upstream_request_ids (-want +got):\n%s", diff)
			}
			if leaks(eventJSON(t, r)) {
				t.Errorf("use_result carries the injected secret: %s", eventJSON(t, r))
			}
			// The caller sees the upstream's headers as the upstream sent
			// them (X-Request-Id aside: the broker's own response header).
			for name, vs := range tt.headers {
				if name == "X-Request-Id" || strings.HasPrefix(vs[0], "{") {
					continue
				}
				if diff := cmp.Diff(vs, res.Header.Values(name)); diff != "" {
					t.Errorf("caller's %s header (-want +got):\n%s", name, diff)
				}
			}
		})
	}
}
