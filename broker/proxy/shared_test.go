package proxy

import (
	"fmt"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// TestSharedTrackerPrunesExpired: issuances whose credentials expired are
// dropped within pruneEvery, not only once the record is full; live ones
// keep their addresses.
func TestSharedTrackerPrunesExpired(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	tr := newSharedTracker()
	for i := range 100 {
		is := &broker.Issuance{ID: fmt.Sprintf("iss_short_%d", i), ExpiresAt: now.Add(time.Minute)}
		tr.observe(is, "10.0.0.1", now)
	}
	live := &broker.Issuance{ID: "iss_live", ExpiresAt: now.Add(time.Hour)}
	tr.observe(live, "10.0.0.1", now)
	if n := len(tr.seen); n != 101 {
		t.Fatalf("tracked %d issuances, want 101", n)
	}
	// Two minutes on, the next new issuance triggers a pass.
	later := now.Add(2 * time.Minute)
	tr.observe(&broker.Issuance{ID: "iss_new", ExpiresAt: later.Add(time.Hour)}, "10.0.0.2", later)
	if n := len(tr.seen); n != 2 {
		t.Errorf("tracked %d issuances after the short ones expired, want 2 (iss_live, iss_new)", n)
	}
	if _, _, suspect := tr.observe(live, "10.0.0.9", later); !suspect {
		t.Errorf("a second address for iss_live was not reported: its record was lost")
	}
}
