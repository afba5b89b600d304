package broker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
)

// TestRevocationCacheRewindHidesNoLoss: as in
// TestRevocationCacheFullReadDoesNotReplaceANewerListingCopy, a full read
// and an overlapping listing read different copies of rev_p, so the full
// read lowered the version the listings continue from to the one it began
// at; the listing had also read rev_q, written during the full read. Redis
// then failed over to a replica lacking the writes made since the full
// read began (its version back to that one) before the next listing: that
// listing took the version, equal to the lowered one, for no loss, and
// rev_q was never written back.
func TestRevocationCacheRewindHidesNoLoss(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	base := memstore.New(clock)
	st := &hookedListStore{swapStore: &swapStore{st: base}}
	c, err := broker.NewRevocationCache(st, broker.CacheOptions{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	rev := &broker.Revocation{ID: "rev_p", Selector: broker.RevokeSelector{IssuanceID: "iss_p"}, Reason: "INC", CreatedAt: clock(),
		Matched: 1, Revoked: []string{}, Pending: []string{"iss_p"}, Failed: []broker.RevokeFailure{}}
	if err := st.PutRevocation(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	lost := memstore.New(clock)
	if err := lost.PutRevocation(ctx, rev); err != nil {
		t.Fatal(err)
	}
	overlapFullReadAndListing(ctx, t, st, base, c, advance, func() {
		q := &broker.Revocation{ID: "rev_q", Selector: broker.RevokeSelector{IssuanceID: "iss_q"}, Reason: "INC", CreatedAt: clock(),
			Matched: 1, Revoked: []string{}, Pending: []string{"iss_q"}, Failed: []broker.RevokeFailure{}}
		if err := base.PutRevocation(ctx, q); err != nil {
			t.Error(err)
		}
	}, func() {
		// Redis fails over to a replica that lacks the writes made
		// during the full read (its version is the one the full read
		// began at, below what the listing saw), before the next
		// listing reads the version.
		st.mu.Lock()
		st.beforeVersion = func() { st.swap(lost) }
		st.mu.Unlock()
	})
	for range 3 {
		advance(time.Second)
		if err := c.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := lost.GetRevocation(ctx, "rev_q"); err != nil {
		t.Fatalf("GetRevocation(rev_q), read by a listing then lost in a failover = %v, want written back", err)
	}
}
