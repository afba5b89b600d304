package proxy

import (
	"fmt"
	"runtime"
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

// TestSharedTrackerSmallEntries: the record holds one entry per proxy
// credential in use, so an entry must stay small: under 150 bytes of live
// heap each for 100,000 credentials seen from one address (a map of
// addresses per entry cost ~300). Their addresses still count.
func TestSharedTrackerSmallEntries(t *testing.T) {
	const n = 100_000
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	ids := make([]*broker.Issuance, n)
	for i := range ids {
		ids[i] = &broker.Issuance{ID: fmt.Sprintf("iss_%026d", i), Source: broker.Source{IP: "10.0.0.1"}, ExpiresAt: now.Add(time.Hour)}
	}
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	tr := newSharedTracker()
	for _, is := range ids {
		tr.observe(is, "10.0.0.1", now)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	t.Logf("%d bytes per tracked issuance", per)
	if per > 150 {
		t.Errorf("%d bytes of live heap per tracked issuance, want at most 150", per)
	}
	if first, seen, suspect := tr.observe(ids[7], "10.0.0.2", now); first != "10.0.0.1" || seen != 2 || !suspect {
		t.Errorf("observe(second address) = %q, %d, %v; want 10.0.0.1, 2, true", first, seen, suspect)
	}
	tr.forget(ids[7].ID, "10.0.0.2")
	if _, seen, suspect := tr.observe(ids[7], "10.0.0.2", now); seen != 2 || !suspect {
		t.Errorf("observe(second address after forget) = %d, %v; want 2, true", seen, suspect)
	}
	if _, seen, suspect := tr.observe(ids[7], "10.0.0.2", now); seen != 2 || suspect {
		t.Errorf("observe(second address again) = %d, %v; want 2, false", seen, suspect)
	}
	runtime.KeepAlive(ids)
}
