package proxy_test

import (
	"net/url"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestProxyResponsesStayOutOfSharedCaches: a shared cache in front of the
// broker must never store a proxied response (it would answer later
// requests with no credential check and no use event), whatever the
// upstream says.
func TestProxyResponsesStayOutOfSharedCaches(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	tests := []struct {
		name     string
		upstream []string // the upstream's Cache-Control lines
		want     []string
	}{
		{name: "none", want: []string{"private"}},
		{name: "public", upstream: []string{"public, max-age=600"}, want: []string{"max-age=600, private"}},
		{name: "s-maxage", upstream: []string{"S-Maxage=600", "max-age=60, must-revalidate"}, want: []string{"max-age=60, must-revalidate, private"}},
		{name: "already-private", upstream: []string{"private, max-age=60"}, want: []string{"private, max-age=60"}},
		{name: "no-store", upstream: []string{"no-store"}, want: []string{"no-store, private"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := url.Values{}
			for _, v := range tt.upstream {
				q.Add("Cache-Control", v)
			}
			res := f.do(t, "GET", "/v1/proxy/stripe/up/request-ids?"+q.Encode(), bearer(tok), nil)
			if res.Status != 200 {
				t.Fatalf("status %d, want 200: %s", res.Status, res.Body)
			}
			if diff := cmp.Diff(tt.want, res.Header.Values("Cache-Control")); diff != "" {
				t.Errorf("Cache-Control relayed (-want +got):\n%s", diff)
			}
		})
	}
}
