package proxy_test

import (
	"net/http"
	"testing"
)

// A secret source that keeps values in memory (broker.CachedSecretSource,
// as KVSecrets does within its TTL) is asked from memory first: once a
// value is held, a proxied request makes no Secret call (and no
// SecretTimeout deadline for one), and still injects the secret.
func TestProxySecretFromMemory(t *testing.T) {
	f := newFixture(t, fixtureOpts{fastReads: true})
	tok := f.credential(t, "stripe").AccessToken
	for i := range 3 {
		res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", http.Header{"Authorization": {"Bearer " + tok}}, nil)
		if res.Status != http.StatusOK {
			t.Fatalf("request %d: status %d, body %s", i, res.Status, res.Body)
		}
		if got := f.up.Last().Header.Get("Authorization"); got != "Bearer "+upstreamKey {
			t.Fatalf("request %d: upstream got the wrong Authorization (len %d)", i, len(got))
		}
	}
	if n := f.mem.calls.Load(); n != 1 {
		t.Errorf("Secret calls = %d, want 1 (the first request; the others from memory)", n)
	}
}
