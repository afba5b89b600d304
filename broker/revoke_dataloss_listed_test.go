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

// landedPutStore calls during(b) once a PutBlock has landed in the Store,
// before it answers (the write-back's reply on its way).
type landedPutStore struct {
	broker.Store
	mu     sync.Mutex
	during func(b broker.Block)
}

func (s *landedPutStore) PutBlock(ctx context.Context, b broker.Block) error {
	err := s.Store.PutBlock(ctx, b)
	s.mu.Lock()
	f := s.during
	s.during = nil
	s.mu.Unlock()
	if f != nil {
		f(b)
	}
	return err
}

// TestRevocationCacheUnblockOfBlockListedWhileWrittenBackHolds: a lost
// block's write-back lands in the Store after another instance's unblock
// deleted nothing there (the block not yet written back), and a refresh,
// running next to the write-back (Run), lists it before the write
// answers; the unblock's notice arrives once the write has answered, more
// than liftLossGrace after the loss was seen (the write-back was slow, or
// retried). The unblock must hold: the written-back block is deleted
// again, not left standing. (The listing dropped the block from the ones
// being written back, and the notice, arriving after, was taken for one
// that lifts nothing: the block stood, blocked again on every instance.)
func TestRevocationCacheUnblockOfBlockListedWhileWrittenBackHolds(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	var clockMu sync.Mutex
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	advance := func(d time.Duration) { clockMu.Lock(); now = now.Add(d); clockMu.Unlock() }
	sw := &swapStore{st: memstore.New(clock)}
	st := &landedPutStore{Store: sw}
	c, err := broker.NewRevocationCache(st, broker.CacheOptions{FastReads: true, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	if err := sw.PutBlock(ctx, broker.Block{Workload: "w1", Reason: "INC", RevocationID: "rev_1", CreatedAt: clock()}); err != nil {
		t.Fatal(err)
	}
	r := &broker.Revocation{ID: "rev_1", Selector: broker.RevokeSelector{Workload: "w1"}, Reason: "INC", Block: true, CreatedAt: clock(),
		Revoked: []string{}, Failed: []broker.RevokeFailure{}, Blocks: []string{"w1"}, CompletedAt: clock()}
	if err := sw.PutRevocation(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	// The loss, and the write-back's first attempt failing: the block is
	// in force here, written back later.
	down := &failingBlockStore{Store: memstore.New(clock)}
	sw.swap(down)
	advance(time.Second)
	if err := c.Refresh(ctx); err == nil {
		t.Fatal("Refresh() = nil with the block write failing")
	}
	if !c.Blocked("w1") {
		t.Fatal("Blocked(w1) = false after the loss")
	}
	after := down.Store
	sw.swap(after)
	advance(2 * time.Minute)
	st.mu.Lock()
	st.during = func(b broker.Block) {
		// Landed; the refresh next to the write-back lists it.
		if err := c.Refresh(ctx); err != nil {
			t.Errorf("Refresh() during the write-back = %v", err)
		}
	}
	st.mu.Unlock()
	// Another instance's unblock: its delete finds nothing, before the
	// write-back lands (the Store lost the block).
	if err := after.DeleteBlock(ctx, "w1", "rev_1"); !errors.Is(err, broker.ErrNotFound) {
		t.Fatalf("DeleteBlock = %v, want not found", err)
	}
	advance(time.Second)
	if err := c.Refresh(ctx); err != nil { // writes w1 back
		t.Fatal(err)
	}
	if _, err := after.GetBlock(ctx, "w1"); err != nil {
		t.Fatalf("Store GetBlock(w1) = %v, want it written back", err)
	}
	c.Apply(broker.Notice{RevocationID: "rev_1", Unblocked: []string{"w1"}}) // the unblock's notice
	for range 2 {
		advance(time.Second)
		if err := c.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := after.GetBlock(ctx, "w1"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Store GetBlock(w1) = %+v, %v after its unblock; want rev_1's block deleted again", b, err)
	}
	if c.Blocked("w1") {
		t.Errorf("Blocked(w1) = true after its unblock answered done; want it lifted")
	}
}

// failingBlockStore fails every PutBlock.
type failingBlockStore struct{ broker.Store }

func (s *failingBlockStore) PutBlock(context.Context, broker.Block) error {
	return broker.ErrUnavailable
}
