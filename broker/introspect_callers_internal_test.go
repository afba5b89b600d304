package broker

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/keytrail/keytrail/policies"
)

// TestCallerLimitersBounded: the introspection buckets of callers that
// match no workload are kept for at most maxIntrospectCallers identities,
// the least recently seen dropped first (a trusted issuer may sign tokens
// for any number of subjects).
func TestCallerLimitersBounded(t *testing.T) {
	var c callerLimiters
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	rt := policies.Rate{PerSecond: 1, Burst: 1}
	if err := c.allow("first", rt, now); err != nil {
		t.Fatal(err)
	}
	if err := c.allow("first", rt, now); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("second call of a burst of 1 = %v, want rate limited", err)
	}
	for i := 0; i < maxIntrospectCallers; i++ {
		if err := c.allow("id-"+strconv.Itoa(i), rt, now); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.order.Len(); n != maxIntrospectCallers || len(c.m) != maxIntrospectCallers {
		t.Fatalf("identities kept = %d (map %d), want %d", n, len(c.m), maxIntrospectCallers)
	}
	if _, ok := c.m["first"]; ok {
		t.Errorf("the least recently seen identity is still kept")
	}
	if _, ok := c.m["id-1"]; !ok {
		t.Errorf("a recent identity was dropped")
	}
}
