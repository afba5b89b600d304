package broker_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
)

// heardSetBytes is the heap one of the sets notices alone fill takes when
// forged notices fill it with n entries (maxHeard is 400,000): "ids" the
// revoked ids no read of the Store listed (heardIDs, with their entries in
// the revoked set), "lost" the blocks a listing then found missing with
// their revocation (lostBlocks, with their entries in the blocked set),
// "lifted" the blocks an unblock notice lifted (lifted). Ids and names as
// the broker makes them (iss_/rev_ ids, workload names like
// payments-api). The heap is measured before the notices and after,
// with the cache kept.
func heardSetBytes(t testing.TB, kind string, n int) uint64 {
	t.Helper()
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	st := memstore.New(clock)
	c, err := broker.NewRevocationCache(st, broker.CacheOptions{FastReads: true, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	// Made before the first measurement, so that only what the cache
	// keeps of them is counted.
	rids := make([]string, n)
	names := make([]string, n)
	for i := range n {
		rids[i] = broker.NewID(broker.PrefixRevocation)
		if kind == "ids" {
			names[i] = broker.NewID(broker.PrefixIssuance)
		} else {
			names[i] = fmt.Sprintf("payments-api-%07d", i)
		}
	}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	switch kind {
	case "ids":
		for i := range n {
			c.Apply(broker.Notice{RevocationID: rids[i], Revoked: names[i : i+1]})
		}
		if got := broker.HeardIDs(c); got != n {
			t.Fatalf("heardIDs holds %d, want %d", got, n)
		}
	case "lost":
		for i := range n {
			c.Apply(broker.Notice{RevocationID: rids[i], Blocked: names[i : i+1]})
		}
		// Listings that do not hold the blocks nor their revocations:
		// taken for lost with the Store's data (kept here only).
		for range 2 {
			mu.Lock()
			now = now.Add(time.Second)
			mu.Unlock()
			if err := c.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
		}
		if got := broker.LostBlocks(c); got != n {
			t.Fatalf("lostBlocks holds %d, want %d", got, n)
		}
	case "lifted":
		for i := range n {
			c.Apply(broker.Notice{RevocationID: rids[i], Blocked: names[i : i+1]})
			c.Apply(broker.Notice{RevocationID: rids[i], Unblocked: names[i : i+1]})
		}
		if got := broker.LiftedUnblocks(c); got != n {
			t.Fatalf("lifted holds %d, want %d", got, n)
		}
	default:
		t.Fatalf("kind %q", kind)
	}
	after := heap()
	runtime.KeepAlive(c)
	runtime.KeepAlive(st)
	runtime.KeepAlive(rids)
	runtime.KeepAlive(names)
	if after < before {
		return 0
	}
	return after - before
}

// TestRevocationCacheHeardSetsFill: the measurement's fixture fills each
// set notices alone keep to n, and what it measures is of a plausible
// size. The gate is only a sanity bound (heap figures move under -race
// with every package running); BenchmarkHeardSetsAtCap gives the figures
// at the cap (docs/PERFORMANCE.md).
func TestRevocationCacheHeardSetsFill(t *testing.T) {
	const n = 20_000
	for _, kind := range []string{"ids", "lost", "lifted"} {
		per := float64(heardSetBytes(t, kind, n)) / n
		for range 2 {
			per = min(per, float64(heardSetBytes(t, kind, n))/n)
		}
		t.Logf("%s: %.0f B per entry (least of three)", kind, per)
		if per > 4096 {
			t.Errorf("%s: %.0f B per entry; want well under 4 KB", kind, per)
		}
	}
}

// BenchmarkHeardSetsAtCap reports the heap each set notices alone keep
// takes at its cap (maxHeard 400,000 ids and lifted blocks,
// maxHeardBlocks 100,000 blocks kept here only), in MB, least of three
// fillings, and their sum.
func BenchmarkHeardSetsAtCap(b *testing.B) {
	caps := map[string]int{"ids": 400_000, "lost": 100_000, "lifted": 400_000}
	for range b.N {
		var sum float64
		for _, kind := range []string{"ids", "lost", "lifted"} {
			n := caps[kind]
			least := heardSetBytes(b, kind, n)
			for range 2 {
				least = min(least, heardSetBytes(b, kind, n))
			}
			mb := float64(least) / 1e6
			sum += mb
			b.ReportMetric(mb, "MB-"+kind)
		}
		b.ReportMetric(sum, "MB-sum")
	}
}

// TestRevocationCacheLostBlocksCapped: the blocks kept here only have
// their own, lower cap (maxHeardBlocks, 100,000: ~580 B each against an
// id's ~100 B), so forged block notices past it are refused while ids
// are still kept up to maxHeard.
func TestRevocationCacheLostBlocksCapped(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Date(2026, 11, 30, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	c, err := broker.NewRevocationCache(memstore.New(clock), broker.CacheOptions{FastReads: true, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	const n = 100_000 + 10
	for i := range n {
		c.Apply(broker.Notice{RevocationID: broker.NewID(broker.PrefixRevocation), Blocked: []string{fmt.Sprintf("payments-api-%07d", i)}})
	}
	for range 2 {
		mu.Lock()
		now = now.Add(time.Second)
		mu.Unlock()
		if err := c.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := broker.LostBlocks(c); got != 100_000 {
		t.Errorf("lostBlocks holds %d after %d forged block notices, want the cap 100,000", got, n)
	}
	if got := c.NoticesRefused(); got < 10 {
		t.Errorf("NoticesRefused() = %d, want at least the 10 past the cap", got)
	}
}
