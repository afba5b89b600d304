package proxy_test

import (
	"net/url"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/proxy"
)

// TestProxyTimeoutBehindHeldBackFirstBytes: a response of declared length
// whose first bytes could start the secret ("%", a percent escape's start)
// is held back by the scan until more arrives; when the upstream then
// stalls until the overall timeout, nothing of the response was sent, and
// the caller gets the error answer of the timeout: 504 upstream_timeout,
// as the use_result event records. It used to be 502 upstream_error: the
// error of a read after the first bytes was not the one reported.
func TestProxyTimeoutBehindHeldBackFirstBytes(t *testing.T) {
	f := newFixture(t, fixtureOpts{timeouts: proxy.Timeouts{Overall: 300 * time.Millisecond}})
	tok := f.credential(t, "stripe").AccessToken
	f.up.holdRequest(t)
	res := f.do(t, "GET", "/v1/proxy/stripe/up/hold?length=100&first="+url.QueryEscape("%"), bearer(tok), nil)
	got := []any{res.Status, oauthError(t, res.Body)}
	want := []any{504, "temporarily_unavailable"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("[status code] (-want +got):\n%s", diff)
	}
	f.waitEvent(t, audit.TypeUseResult)
	r := f.eventsOf(audit.TypeUseResult)[0]
	got = []any{*r.Outcome, r.Upstream.Status, *r.Upstream.Bytes}
	want = []any{audit.Outcome{Status: 504, Error: "temporarily_unavailable", Reason: "upstream_timeout"}, 200, int64(0)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("[use_result-outcome upstream-status bytes] (-want +got):\n%s", diff)
	}
}
