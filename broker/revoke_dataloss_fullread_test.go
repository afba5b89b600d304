package broker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
)

// TestRevocationCacheRecordBackedBlockSurvivesAFullRead: another
// instance's block whose record a refresh read (the block put after that
// refresh's block listing), announced to this one, then lost with the
// Store's data. A full read that ended in between, having read the same
// record, took the place of the listing's copy: the block no longer
// counted as backed by its record and was kept here only, not written
// back (while the record it read was). The full read's copy is as recent;
// what backs the block (a listing of changed records read it) stays.
func TestRevocationCacheRecordBackedBlockSurvivesAFullRead(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	st := &loseAfterListing{swapStore: &swapStore{st: memstore.New(clock)}}
	c, err := broker.NewRevocationCache(st, broker.CacheOptions{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	// Another instance's Revoke: the record, then (after this instance's
	// next block listing) the block, then its notice.
	rev3 := &broker.Revocation{ID: "rev_3", Selector: broker.RevokeSelector{Workload: "w3"}, Reason: "INC-3", Block: true, CreatedAt: clock(),
		Revoked: []string{}, Pending: []string{"iss_w3"}, Failed: []broker.RevokeFailure{}, Blocks: []string{"w3"}}
	if err := st.PutRevocation(ctx, rev3); err != nil {
		t.Fatal(err)
	}
	advance(time.Second)
	if err := c.Refresh(ctx); err != nil { // reads rev_3
		t.Fatal(err)
	}
	if err := st.PutBlock(ctx, broker.Block{Workload: "w3", Reason: "INC-3", RevocationID: "rev_3", CreatedAt: clock()}); err != nil {
		t.Fatal(err)
	}
	c.Apply(broker.Notice{RevocationID: "rev_3", Blocked: []string{"w3"}})
	// A full read is due: it reads the Store before the loss; the loss
	// lands during the refresh's block listing that follows it.
	advance(2 * time.Minute)
	replica := memstore.New(clock)
	st.mu.Lock()
	st.next = replica
	st.mu.Unlock()
	for range 2 {
		advance(time.Second)
		if err := c.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := c.StoreLosses(); n < 1 {
		t.Fatalf("StoreLosses() = %d, want the loss seen", n)
	}
	if _, err := replica.GetRevocation(ctx, "rev_3"); err != nil {
		t.Errorf("replica GetRevocation(rev_3) = %v; want it written back", err)
	}
	if b, err := replica.GetBlock(ctx, "w3"); err != nil || b.RevocationID != "rev_3" {
		t.Errorf("replica GetBlock(w3) = %+v, %v; want rev_3's block written back", b, err)
	}
}
