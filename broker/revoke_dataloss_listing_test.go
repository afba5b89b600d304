package broker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
)

// loseAfterListing is a swapStore that swaps in next (the Store losing its
// data) right after the next ListBlocks has answered: a loss between a
// refresh's block listing and its read of the revocation change number.
type loseAfterListing struct {
	*swapStore
	mu   sync.Mutex
	next broker.Store
}

func (s *loseAfterListing) ListBlocks(ctx context.Context) ([]broker.Block, error) {
	bs, err := s.swapStore.ListBlocks(ctx)
	s.mu.Lock()
	if s.next != nil {
		s.swap(s.next)
		s.next = nil
	}
	s.mu.Unlock()
	return bs, err
}

// A data loss that lands between a refresh's block listing and its read of
// the revocation change number (the version goes back, the listing is the
// data from before the loss) still finds the blocks the Store lost: they
// stay in force and are written back. The refresh used to take the
// listing as the Store after the loss, so the blocks were not lost to it;
// the next listing lacked them with the version not going back, and they
// were dropped (unblocked) and never written back. In Run, with a
// write-back running, it made TestRevocationCacheWriteBackBeforeAnotherLossIsWrittenAgain
// flaky under load.
func TestRevocationCacheLossDuringBlockListing(t *testing.T) {
	ctx := context.Background()
	now := time.Now().UTC()
	st := &loseAfterListing{swapStore: &swapStore{st: memstore.New(time.Now)}}
	if err := st.PutBlock(ctx, broker.Block{Workload: "w1", Reason: "INC", RevocationID: "rev_1", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	if err := st.PutRevocation(ctx, &broker.Revocation{ID: "rev_1", Selector: broker.RevokeSelector{Workload: "w1"}, Reason: "INC",
		Block: true, CreatedAt: now, Matched: 1, Revoked: []string{"iss_w1"}, Failed: []broker.RevokeFailure{},
		Blocks: []string{"w1"}, CompletedAt: now}); err != nil {
		t.Fatal(err)
	}
	c, err := broker.NewRevocationCache(st, broker.CacheOptions{Interval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if !c.Blocked("w1") {
		t.Fatal("Blocked(w1) = false before the loss")
	}
	after := memstore.New(time.Now)
	st.mu.Lock()
	st.next = after
	st.mu.Unlock()
	// Two refreshes: the one the loss lands in, and one after it.
	for range 2 {
		if err := c.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if got := c.StoreLosses(); got != 1 {
		t.Errorf("StoreLosses() = %d, want 1", got)
	}
	if !c.Blocked("w1") {
		t.Error("Blocked(w1) = false after the loss")
	}
	if _, err := after.GetBlock(ctx, "w1"); err != nil {
		t.Errorf("w1's block not written back into the store after the loss: %v", err)
	}
	if _, err := after.GetRevocation(ctx, "rev_1"); err != nil {
		t.Errorf("rev_1 not written back into the store after the loss: %v", err)
	}
}
