package proxy_test

import (
	"net/http"
	"slices"
	"testing"
)

// TestProxyStripsEveryListedRequestHeader: each class of caller header the
// broker never forwards, sent in one request, is missing upstream, while an
// ordinary header goes through: every name of the stripped list (the
// caller's Authorization is its credential; the grant injects its own), the
// hop-by-hop headers and those the caller's Connection header names
// (removed by httputil), X-Forwarded-* and X-Keytrail-* by prefix.
func TestProxyStripsEveryListedRequestHeader(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	cred := f.credential(t, "stripe")
	stripped := []string{"Proxy-Authorization", "Cookie", "X-Request-Id", "Forwarded", "X-Real-Ip",
		"X-Http-Method-Override", "X-Http-Method", "X-Method-Override", "X-Original-Url", "X-Rewrite-Url",
		"Range", "If-Range", "Request-Range",
		"Keep-Alive", "Proxy-Connection", "Te", "X-Hop-Named",
		"X-Forwarded-Proto", "X-Keytrail-Use"}
	hdr := http.Header{
		"Authorization": {"Bearer " + cred.AccessToken},
		"Connection":    {"keep-alive, X-Hop-Named"},
		"X-Custom":      {"kept"},
	}
	for _, name := range stripped {
		hdr[name] = []string{"caller-" + name}
	}
	hdr["Range"] = []string{"bytes=0-1"} // a valid Range, which a file server would honour
	res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", hdr, nil)
	if res.Status != 200 {
		t.Fatalf("GET = %d %s, want 200", res.Status, res.Body)
	}
	seen := f.up.Last().Header
	for _, name := range stripped {
		for _, v := range seen.Values(name) {
			if v == hdr[name][0] {
				t.Errorf("upstream got the caller's %s: %q", name, v)
			}
		}
	}
	if got := seen.Values("Authorization"); slices.Contains(got, "Bearer "+cred.AccessToken) || len(got) != 1 {
		t.Errorf("upstream Authorization = %q, want the injected secret only", got)
	}
	if got := seen.Get("X-Custom"); got != "kept" {
		t.Errorf("upstream X-Custom = %q, want kept", got)
	}
}
