package proxy_test

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/proxy"
)

// TestProxyFixedOutcome502sHaveNoRetryAfter: a 502 whose cause a retry
// cannot change (a response over the cap, declared or refused at a streamed
// body's first read; a content coding the broker does not decode: the
// broker already asks for identity) carries no Retry-After, as
// response_contains_secret does not: it would invite a retry that goes
// upstream, and into the audit log as a use, again for the same answer. A
// 502 of a misbehaving upstream keeps it.
func TestProxyFixedOutcome502sHaveNoRetryAfter(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	// The streamed case takes the branch where ReverseProxy's early header
	// flush loses the race to the refusal (the others fail before it).
	proxy.DropEarlyFlush(f.proxy)
	tok := f.credential(t, "stripe").AccessToken
	tests := []struct {
		name, path string
		reason     string
		retryAfter string
	}{
		{name: "declared-response-over-cap", path: "/up/big", reason: "response_too_large"},
		{name: "streamed-response-over-cap-before-headers", path: "/up/encoded?as=members&ce=gzip&stream=1", reason: "response_too_large"},
		{name: "encoding-unsupported", path: "/up/encoded?as=plain&ce=br", reason: "response_encoding_unsupported"},
		{name: "upstream-error-keeps-it", path: "/up/switch", reason: "upstream_error", retryAfter: "1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(f.eventsOf(audit.TypeUseResult))
			res := f.do(t, "GET", "/v1/proxy/stripe"+tt.path, bearer(tok), nil)
			f.waitEvent(t, audit.TypeUseResult)
			results := f.eventsOf(audit.TypeUseResult)
			if len(results) != before+1 {
				t.Fatalf("use_result events = %d, want %d", len(results), before+1)
			}
			got := []any{res.Status, oauthError(t, res.Body), res.Header.Get("Retry-After"), results[before].Outcome.Reason}
			want := []any{502, "temporarily_unavailable", tt.retryAfter, tt.reason}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("[status code retry-after use_result-reason] (-want +got):\n%s", diff)
			}
		})
	}
}
