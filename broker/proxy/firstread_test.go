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

// TestProxyDeclaredBodyFailingWhileGatheredIsAnErrorAnswer: the first 16
// KiB of a body of declared length are gathered before anything of the
// response (its status neither) goes out; when the upstream fails within
// them (it closes the connection short of its Content-Length, or stalls
// until the overall timeout), nothing was sent and the caller gets the
// error answer of the failure. It used to be released with the status,
// the copy then failed, and the connection was cut with nothing on the
// wire (net/http had not flushed its buffer): what an HTTP client on a
// reused keep-alive connection takes for an idle close, and answers by
// sending the GET again, upstream too.
func TestProxyDeclaredBodyFailingWhileGatheredIsAnErrorAnswer(t *testing.T) {
	tests := []struct {
		name    string
		release bool // the upstream sends more, then closes short of its length
		want    audit.Outcome
	}{
		{name: "closed-short", release: true, want: audit.Outcome{Status: 502, Error: "temporarily_unavailable", Reason: "upstream_error"}},
		{name: "stalled", want: audit.Outcome{Status: 504, Error: "temporarily_unavailable", Reason: "upstream_timeout"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t, fixtureOpts{timeouts: proxy.Timeouts{Overall: 300 * time.Millisecond}})
			tok := f.credential(t, "stripe").AccessToken
			h := f.up.holdRequest(t)
			if tt.release {
				go func() { <-h.arrived; h.letGo() }()
			}
			res := f.do(t, "GET", "/v1/proxy/stripe/up/hold?length=1000&first=hello", bearer(tok), nil)
			got := []any{res.Status, oauthError(t, res.Body)}
			want := []any{tt.want.Status, tt.want.Error}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("[status code] (-want +got):\n%s", diff)
			}
			f.waitEvent(t, audit.TypeUseResult)
			r := f.eventsOf(audit.TypeUseResult)[0]
			got = []any{*r.Outcome, r.Upstream.Status, *r.Upstream.Bytes}
			want = []any{tt.want, 200, int64(0)}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("[use_result-outcome upstream-status bytes] (-want +got):\n%s", diff)
			}
		})
	}
}
