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
// broker already asks for identity; a body that does not decode as its
// coding says, whose bytes arrived whole; an upstream address the grant
// does not allow, which stays refused until the policy or the upstream's
// DNS changes) carries no Retry-After, as response_contains_secret does
// not: it would invite a retry that goes upstream, and into the audit log
// as a use, again for the same answer. A 502 of a misbehaving upstream
// keeps it. response_undecodable and upstream_address_refused used to
// carry Retry-After: 1.
func TestProxyFixedOutcome502sHaveNoRetryAfter(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	// The streamed case takes the branch where ReverseProxy's early header
	// flush loses the race to the refusal (the others fail before it).
	proxy.DropEarlyFlush(f.proxy)
	tok := f.credential(t, "stripe").AccessToken
	closedTok := f.credential(t, "closed").AccessToken
	tests := []struct {
		name, path string
		grant      string // default stripe
		reason     string
		retryAfter string
	}{
		{name: "declared-response-over-cap", path: "/up/big", reason: "response_too_large"},
		{name: "streamed-response-over-cap-before-headers", path: "/up/encoded?as=members&ce=gzip&stream=1", reason: "response_too_large"},
		{name: "encoding-unsupported", path: "/up/encoded?as=plain&ce=br", reason: "response_encoding_unsupported"},
		{name: "undecodable-gzip", path: "/up/encoded?as=garbage&ce=gzip", reason: "response_undecodable"},
		{name: "undecodable-gzip-streamed-before-headers", path: "/up/encoded?as=garbage&ce=gzip&stream=1", reason: "response_undecodable"},
		// Grant closed has the fixture's loopback upstream without
		// allow_private.
		{name: "address-refused", grant: "closed", path: "/v1/charges", reason: "upstream_address_refused"},
		{name: "upstream-error-keeps-it", path: "/up/switch", reason: "upstream_error", retryAfter: "1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(f.eventsOf(audit.TypeUseResult))
			grant, cred := "stripe", tok
			if tt.grant != "" {
				grant, cred = tt.grant, closedTok
			}
			res := f.do(t, "GET", "/v1/proxy/"+grant+tt.path, bearer(cred), nil)
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
