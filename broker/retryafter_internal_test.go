package broker

import (
	"errors"
	"testing"
	"time"

	"github.com/keytrail/keytrail/policies"
)

// tinyRates are refill rates whose wait for one token does not fit a
// time.Duration (1e-300: +Inf; 1e-12: 1e21 ns) or is longer than
// maxRetryAfter (one token every two hours); each must give Retry-After
// maxRetryAfter, not a negative or zero one (a +Inf or out-of-range float
// converts to math.MinInt64 on amd64).
var tinyRates = []float64{1e-300, 1e-12, 1.0 / 7200}

// TestRateLimitedRetryAfterTinyRate: the 429 of a workload's (and an
// introspection caller's) bucket refilled at a tiny rate says
// Retry-After maxRetryAfter; a wait below it is unchanged.
func TestRateLimitedRetryAfterTinyRate(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for _, ps := range tinyRates {
		svc := &Service{d: Deps{Now: func() time.Time { return now }}}
		wl := &policies.Workload{Name: "tiny", Rate: &policies.Rate{PerSecond: ps, Burst: 1}}
		if err := svc.Allow(wl); err != nil {
			t.Fatalf("per_second %g: first request of a burst of 1 = %v", ps, err)
		}
		err := svc.Allow(wl)
		if !errors.Is(err, ErrRateLimited) || AsError(err).RetryAfter != maxRetryAfter {
			t.Errorf("per_second %g: workload's second request = %v (Retry-After %v), want rate limited with Retry-After %v", ps, err, AsError(err).RetryAfter, maxRetryAfter)
		}
		var c callerLimiters
		rt := policies.Rate{PerSecond: ps, Burst: 1}
		if err := c.allow("caller", rt, now); err != nil {
			t.Fatal(err)
		}
		err = c.allow("caller", rt, now)
		if !errors.Is(err, ErrRateLimited) || AsError(err).RetryAfter != maxRetryAfter {
			t.Errorf("per_second %g: introspection caller's second call = %v (Retry-After %v), want rate limited with Retry-After %v", ps, err, AsError(err).RetryAfter, maxRetryAfter)
		}
	}
	var c callerLimiters
	rt := policies.Rate{PerSecond: 1.0 / 600, Burst: 1}
	c.allow("caller", rt, now)
	if err := c.allow("caller", rt, now); AsError(err).RetryAfter != 600*time.Second {
		t.Errorf("per_second 1/600: Retry-After %v, want 10m0s", AsError(err).RetryAfter)
	}
}

// TestRefusalGuardRetryAfterTinyRate: a refusal suppressed by a source's
// or the global bucket refilled at a tiny rate is told Retry-After
// maxRetryAfter.
func TestRefusalGuardRetryAfterTinyRate(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for _, ps := range tinyRates {
		g := newRefusalGuard(RefusalLimits{PerSecond: ps, Burst: 1, MaxSources: 2, SummaryEvery: time.Minute, GlobalPerSecond: -1})
		g.take("192.0.2.1", "", t0)
		if by, retry, _ := g.take("192.0.2.1", "", t0); by != RefusalScopeSource || retry != maxRetryAfter {
			t.Errorf("source per_second %g: take = %q, Retry-After %v; want %q, %v", ps, by, retry, RefusalScopeSource, maxRetryAfter)
		}
		g = newRefusalGuard(RefusalLimits{PerSecond: 1, Burst: 5, MaxSources: 2, SummaryEvery: time.Minute, GlobalPerSecond: ps, GlobalBurst: 1})
		g.take("192.0.2.1", "", t0)
		if by, retry, _ := g.take("192.0.2.2", "", t0); by != RefusalScopeGlobal || retry != maxRetryAfter {
			t.Errorf("global per_second %g: take = %q, Retry-After %v; want %q, %v", ps, by, retry, RefusalScopeGlobal, maxRetryAfter)
		}
	}
}
