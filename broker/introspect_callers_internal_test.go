package broker

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/policies"
)

// TestCallerLimitersBounded: the introspection buckets of callers that
// match no workload are kept for at most IntrospectLimits.MaxCallers
// identities (the default when unset),
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
	for i := 0; i < DefaultIntrospectLimits.MaxCallers; i++ {
		if err := c.allow("id-"+strconv.Itoa(i), rt, now); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.order.Len(); n != DefaultIntrospectLimits.MaxCallers || len(c.m) != DefaultIntrospectLimits.MaxCallers {
		t.Fatalf("identities kept = %d (map %d), want %d", n, len(c.m), DefaultIntrospectLimits.MaxCallers)
	}
	if _, ok := c.m["first"]; ok {
		t.Errorf("the least recently seen identity is still kept")
	}
	if _, ok := c.m["id-1"]; !ok {
		t.Errorf("a recent identity was dropped")
	}
}

// TestIntrospectLimitsConfigured: IntrospectLimits' zero fields are the
// defaults, MaxCallers bounds the identities kept, and a PerSecond that is
// not a finite number, or a negative Burst or MaxCallers, is refused by
// NewService rather than turning the limit off unsaid.
func TestIntrospectLimitsConfigured(t *testing.T) {
	if got := (IntrospectLimits{Burst: 5}).withDefaults(); got != (IntrospectLimits{PerSecond: 100, Burst: 5, MaxCallers: 10000}) {
		t.Errorf("withDefaults = %+v", got)
	}
	if got := (IntrospectLimits{PerSecond: -1}).withDefaults(); got.PerSecond != -1 {
		t.Errorf("withDefaults of off = %+v, want PerSecond -1", got)
	}
	c := callerLimiters{max: 3}
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	for i := 0; i < 5; i++ {
		if err := c.allow("id-"+strconv.Itoa(i), policies.Rate{PerSecond: 1, Burst: 1}, now); err != nil {
			t.Fatal(err)
		}
	}
	if c.order.Len() != 3 || len(c.m) != 3 {
		t.Errorf("identities kept = %d (map %d), want 3", c.order.Len(), len(c.m))
	}
	for _, l := range []IntrospectLimits{{PerSecond: math.NaN()}, {PerSecond: math.Inf(1)}, {Burst: -1}, {MaxCallers: -1}} {
		_, err := NewService(Deps{Policy: func() *policies.Policy { return nil }, Authn: func() Authenticator { return nil },
			Store: struct{ Store }{}, Audit: struct{ AuditSink }{}, IntrospectLimits: l})
		if err == nil || !strings.Contains(err.Error(), "Deps.IntrospectLimits") {
			t.Errorf("NewService with IntrospectLimits %+v = %v, want an error naming Deps.IntrospectLimits", l, err)
		}
	}
}
