package httpapi_test

import (
	"net/http"
	"testing"
)

// TestRateLimitedExchangeIsAudited pins the README's "Per-source limits"
// note: a 429 is a refusal like any other, written to the audit log as a
// deny event (reason rate_limited), so a workload's rate does not bound
// the audit events its refused requests cost.
func TestRateLimitedExchangeIsAudited(t *testing.T) {
	f := newFixture(t) // rate: {per_second: 1, burst: 1}
	f.post(t, "/v1/token", "application/x-www-form-urlencoded", form().Encode())
	resp, _ := f.post(t, "/v1/token", "application/x-www-form-urlencoded", form().Encode())
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("second exchange at 1/s = %d, want 429", resp.StatusCode)
	}
	var denies []string
	for _, ev := range f.sink.Events() {
		if ev.Type == "deny" && ev.Outcome != nil {
			denies = append(denies, ev.RequestID+" "+ev.Outcome.Reason+" "+ev.Workload)
		}
	}
	want := []string{resp.Header.Get("X-Request-Id") + " rate_limited deployer"}
	if len(denies) != 1 || denies[0] != want[0] {
		t.Errorf("deny events = %q, want %q", denies, want)
	}
}
