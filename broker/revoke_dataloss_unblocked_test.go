package broker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
)

// TestRevocationCacheUnblockedRecordBacksNoReplayedBlock: another
// instance's block of w (rev_u), read here from the Store, then its
// unblock (the notice missed here): the next listing reads the record,
// Unblocked[w] set, and no block. A block notice for (w, rev_u), replayed
// or late, arrives just after; then the Store loses its data. The record
// still names w among its blocks, read by the last listing, so the
// notice's block counted as backed and was written back: w blocked again
// on every instance. A record that says w was unblocked backs no block of
// w: kept here only (fail closed), not written back.
func TestRevocationCacheUnblockedRecordBacksNoReplayedBlock(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	base := memstore.New(clock)
	st := &swapStore{st: base}
	c, err := broker.NewRevocationCache(st, broker.CacheOptions{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	rev := &broker.Revocation{ID: "rev_u", Selector: broker.RevokeSelector{Workload: "wu"}, Reason: "INC-U", Block: true, CreatedAt: clock(),
		Revoked: []string{}, Failed: []broker.RevokeFailure{}, Blocks: []string{"wu"}, CompletedAt: clock()}
	if err := st.PutRevocation(ctx, rev); err != nil {
		t.Fatal(err)
	}
	if err := st.PutBlock(ctx, broker.Block{Workload: "wu", Reason: "INC-U", RevocationID: "rev_u", CreatedAt: clock()}); err != nil {
		t.Fatal(err)
	}
	advance(time.Second)
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if !c.Blocked("wu") {
		t.Fatal("Blocked(wu) = false after a refresh listed its block")
	}
	// Another instance's unblock; its notice is missed here.
	advance(time.Second)
	at := clock()
	if _, err := base.UpdateRevocation(ctx, "rev_u", func(r *broker.Revocation) error {
		r.Unblocked = map[string]time.Time{"wu": at}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := base.DeleteBlock(ctx, "wu", "rev_u"); err != nil {
		t.Fatal(err)
	}
	advance(time.Second)
	if err := c.Refresh(ctx); err != nil { // reads the record, Unblocked set
		t.Fatal(err)
	}
	if c.Blocked("wu") {
		t.Fatal("Blocked(wu) = true after a refresh listed it unblocked")
	}
	// The block's notice, replayed, just after; then the loss.
	c.Apply(broker.Notice{RevocationID: "rev_u", Blocked: []string{"wu"}})
	lost := memstore.New(clock)
	st.swap(lost)
	for range 3 {
		advance(time.Second)
		if err := c.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.StoreLosses(); n < 1 {
		t.Fatalf("StoreLosses() = %d, want the loss seen", n)
	}
	if _, err := lost.GetRevocation(ctx, "rev_u"); err != nil {
		t.Errorf("GetRevocation(rev_u) after the write-back = %v; want the record written back", err)
	}
	if b, err := lost.GetBlock(ctx, "wu"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("GetBlock(wu) after the write-back = %+v, %v; want no block (the record says wu was unblocked)", b, err)
	}
}
