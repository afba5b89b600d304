package redisstore_test

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/redisstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
)

// heapStore notes the live heap (after a GC) as a listing of the Window's
// revocations ends, before the revocation cache goes on with what it read:
// the full read's peak is then, with all the records it holds.
type heapStore struct {
	broker.Store
	s      *redisstore.Store
	atList uint64
}

func liveHeap() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

func (h *heapStore) ListRevocations(ctx context.Context, f broker.RevocationFilter) ([]*broker.Revocation, error) {
	revs, err := h.s.ListRevocations(ctx, f)
	if f.ChangedAfter == 0 {
		h.atList = liveHeap()
	}
	runtime.KeepAlive(revs)
	return revs, err
}

// pagedHeapStore is heapStore with the store's page-at-a-time listing.
type pagedHeapStore struct{ *heapStore }

func (h pagedHeapStore) ListRevocationPages(ctx context.Context, f broker.RevocationFilter, fn func([]*broker.Revocation) error) error {
	err := h.s.ListRevocationPages(ctx, f, fn)
	if f.ChangedAfter == 0 {
		h.atList = liveHeap()
	}
	return err
}

// fullReadHeap is the heap a revocation cache's first full read of n
// revocations takes per revocation: at the listing's end (its peak) and
// once it is done (what it keeps: the revoked set and the records kept for
// a write-back).
func fullReadHeap(t *testing.T, s *redisstore.Store, now time.Time, n int, probe []string, paged bool) (peak, kept float64) {
	t.Helper()
	h := &heapStore{Store: s, s: s}
	var st broker.Store = h
	if paged {
		st = pagedHeapStore{h}
	}
	c, err := broker.NewRevocationCache(st, broker.CacheOptions{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	before := liveHeap()
	if err := c.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	after := liveHeap()
	runtime.KeepAlive(c)
	for _, id := range probe {
		if !c.Revoked(id) {
			t.Fatalf("Revoked(%s) = false after the full read", id)
		}
	}
	return (float64(h.atList) - float64(before)) / float64(n), (float64(after) - float64(before)) / float64(n)
}

// TestRevocationCacheFullReadPeakHeap: the revocation cache's full read
// of a Redis store decodes one page of records at a time
// (ListRevocationPages), keeping each encoded, so that its peak stays
// near what it keeps, not the Window's decoded records on top (some
// 590 B each: 400,000 revocations took some 240 MB more at each full
// read). The gate is wide (heap counts move under -race with every
// package running): the least of three readings, at most 480 B per
// revocation at the listing's end (some 365 measured; the whole listing,
// as before, some 590 and more).
func TestRevocationCacheFullReadPeakHeap(t *testing.T) {
	const n = 20_000
	r := harness.StartRedis(t)
	s := newStore(t, r, redisstore.Options{Prefix: "{fullread}:", Timeout: time.Minute})
	now := time.Now().UTC()
	ctx := context.Background()
	var probe []string // revoked issuances the full read must find
	for i := range n {
		r := &broker.Revocation{ID: broker.NewID(broker.PrefixRevocation), Reason: fmt.Sprintf("INC-%d leaked in a build log", 10000+i),
			Admin: "alice@example.com", CreatedAt: now.Add(-time.Duration(i) * time.Millisecond), Matched: 1,
			Failed: []broker.RevokeFailure{}, CompletedAt: now}
		r.Selector.IssuanceID = broker.NewID(broker.PrefixIssuance)
		r.Revoked = []string{r.Selector.IssuanceID}
		if i == 0 || i == n-1 {
			probe = append(probe, r.Selector.IssuanceID)
		}
		if err := s.PutRevocation(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	least := func(paged bool) (peak, kept float64) {
		peak, kept = fullReadHeap(t, s, now, n, probe, paged)
		for range 2 {
			p, k := fullReadHeap(t, s, now, n, probe, paged)
			peak, kept = min(peak, p), min(kept, k)
		}
		return peak, kept
	}
	wholePeak, wholeKept := least(false)
	peak, kept := least(true)
	t.Logf("full read of %d revocations, B per revocation (least of three): paged: peak %.0f, kept %.0f; whole listing: peak %.0f, kept %.0f",
		n, peak, kept, wholePeak, wholeKept)
	if peak > 480 {
		t.Errorf("the full read's peak takes %.0f B per revocation, want at most 480 (some 365 measured; the whole listing's: %.0f)", peak, wholePeak)
	}
}

// ListRevocationPages lists what ListRevocations does, through each index
// (the creation-time index, the change index, the set of all, the pending
// set), a page (1,024 ids) at a time, each revocation once; an error from
// fn stops it and comes back as is.
func TestListRevocationPages(t *testing.T) {
	r := harness.StartRedis(t)
	s := newStore(t, r, redisstore.Options{Prefix: "{pages}:", Timeout: time.Minute})
	ctx := context.Background()
	now := time.Now().UTC()
	const n = 2_500
	for i := range n {
		rev := &broker.Revocation{ID: fmt.Sprintf("rev_%05d", i), CreatedAt: now.Add(-time.Duration(i) * time.Second), Revoked: []string{}}
		if i%2 == 0 {
			rev.CompletedAt = now
		}
		if err := s.PutRevocation(ctx, rev); err != nil {
			t.Fatal(err)
		}
	}
	for _, f := range []broker.RevocationFilter{
		{Since: now.Add(-2000 * time.Second)}, {ChangedAfter: 100}, {}, {Pending: true},
	} {
		want, err := s.ListRevocations(ctx, f)
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		pages := 0
		if err := s.ListRevocationPages(ctx, f, func(page []*broker.Revocation) error {
			pages++
			if len(page) > 1024 {
				t.Errorf("%+v: a page of %d", f, len(page))
			}
			for _, r := range page {
				seen[r.ID]++
			}
			return nil
		}); err != nil {
			t.Fatalf("%+v: %v", f, err)
		}
		if len(seen) != len(want) || pages < 2 {
			t.Errorf("%+v: %d revocations in %d pages, want %d in 2 or more", f, len(seen), pages, len(want))
		}
		for _, r := range want {
			if seen[r.ID] != 1 {
				t.Errorf("%+v: %s listed %d times, want once", f, r.ID, seen[r.ID])
			}
		}
	}
	stop := fmt.Errorf("stop here")
	calls := 0
	err := s.ListRevocationPages(ctx, broker.RevocationFilter{}, func([]*broker.Revocation) error { calls++; return stop })
	if err != stop || calls != 1 {
		t.Errorf("fn failing: %v after %d calls, want its error after 1", err, calls)
	}
}
