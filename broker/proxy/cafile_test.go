package proxy_test

import (
	"os"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/audit"
)

// TestProxyBrokenCAFileIsResolvedOncePerPolicy: a grant whose transport
// could not be built (its ca_file missing) was not remembered: every
// proxied request read the file again and failed with 503. The failure is
// now kept for the policy: requests answer the same 503
// temporarily_unavailable (Retry-After 30, deny reason upstream_config, no
// path in the body) without touching the file, so putting it back changes
// nothing until a reload (a new policy) tries again.
func TestProxyBrokenCAFileIsResolvedOncePerPolicy(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	cred := f.credential(t, "stripe")
	away := f.caFile + ".away"
	if err := os.Rename(f.caFile, away); err != nil {
		t.Fatal(err)
	}
	f.reload(t, false) // not checked: the first request finds the ca_file missing
	get := func() *response {
		return f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(cred.AccessToken), nil)
	}
	refused := func(when string, res *response) {
		t.Helper()
		if res.Status != 503 || oauthError(t, res.Body) != "temporarily_unavailable" || res.Header.Get("Retry-After") != "30" {
			t.Errorf("%s: status %d %q (Retry-After %q), want 503 temporarily_unavailable, Retry-After 30", when, res.Status, res.Body, res.Header.Get("Retry-After"))
		}
		if strings.Contains(res.Body, f.caFile) || strings.Contains(res.Body, "ca_file") {
			t.Errorf("%s: the body %q names the ca_file", when, res.Body)
		}
	}
	for range 3 {
		refused("ca_file missing", get())
	}
	if err := os.Rename(away, f.caFile); err != nil {
		t.Fatal(err)
	}
	refused("ca_file back, same policy", get())
	if n := f.up.Hits(); n != 0 {
		t.Errorf("upstream hit %d times, want 0", n)
	}
	denies := f.eventsOf(audit.TypeDeny)
	if len(denies) != 4 {
		t.Errorf("%d deny events, want 4", len(denies))
	}
	for _, ev := range denies {
		if ev.Outcome == nil || ev.Outcome.Status != 503 || ev.Outcome.Reason != "upstream_config" {
			t.Errorf("deny event outcome = %+v, want 503 upstream_config", ev.Outcome)
		}
	}

	f.reload(t, false)
	if res := get(); res.Status != 200 {
		t.Errorf("after a reload: status %d %q, want 200", res.Status, res.Body)
	}
}

// TestProxyUsesTheCAFileTheReloadChecked: a grant's ca_file was read again
// by the first proxied request after a reload, although the reload's
// CheckFiles had read and checked it: changed in between, the proxy
// trusted a bundle nobody checked (here none: every request failed 503).
// The transport is now built from the bytes CheckFiles read
// (policies.Policy.CAFile).
func TestProxyUsesTheCAFileTheReloadChecked(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	cred := f.credential(t, "stripe")
	f.reload(t, true)
	if err := os.WriteFile(f.caFile, []byte("changed since the reload checked it\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(cred.AccessToken), nil); res.Status != 200 {
		t.Errorf("status %d %q, want 200: the upstream verified by the bundle the reload checked", res.Status, res.Body)
	}
}
