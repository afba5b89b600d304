package redisstore

import (
	"strconv"
	"testing"
)

// TestCallsForgetsPastRecentCalls: an id is "again" while it is one of the
// last recentCalls ids seen, and new once recentCalls others came after it.
func TestCallsForgetsPastRecentCalls(t *testing.T) {
	var c calls
	if c.again("a") {
		t.Fatal(`again("a") on a fresh set = true, want false`)
	}
	if !c.again("a") {
		t.Fatal(`again("a") the second time = false, want true`)
	}
	for i := range recentCalls - 1 {
		if c.again(strconv.Itoa(i)) {
			t.Fatalf("again(%d) = true, want false", i)
		}
	}
	if !c.again("a") {
		t.Fatalf(`again("a") after %d others = false, want true (still remembered)`, recentCalls-1)
	}
	if c.again("one-more") || c.again("a") {
		t.Errorf(`after %d others, again("a") = true, want false (forgotten)`, recentCalls)
	}
	if len(c.ids) != recentCalls {
		t.Errorf("remembered %d ids, want %d", len(c.ids), recentCalls)
	}
}
