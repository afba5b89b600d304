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

// runLossFixture is a RevocationCache run by Run (Interval 100 ms) over a
// store the test swaps for another (the Store losing its data), with w1
// and w2 blocked by rev_1 and rev_2.
type runLossFixture struct {
	st    *swapStore
	c     *broker.RevocationCache
	n     *memstore.Notifier
	stop  func()
	ended chan struct{}
}

func newRunLossFixture(t *testing.T) *runLossFixture {
	t.Helper()
	ctx := context.Background()
	f := &runLossFixture{st: &swapStore{st: memstore.New(time.Now)}, n: memstore.NewNotifier(), ended: make(chan struct{})}
	now := time.Now().UTC()
	for i, w := range []string{"w1", "w2"} {
		id := []string{"rev_1", "rev_2"}[i]
		if err := f.st.PutBlock(ctx, broker.Block{Workload: w, Reason: "INC", RevocationID: id, CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
		r := &broker.Revocation{ID: id, Selector: broker.RevokeSelector{Workload: w}, Reason: "INC", Block: true, CreatedAt: now,
			Matched: 1, Revoked: []string{"iss_" + w}, Failed: []broker.RevokeFailure{}, Blocks: []string{w}, CompletedAt: now}
		if err := f.st.PutRevocation(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	c, err := broker.NewRevocationCache(f.st, broker.CacheOptions{Notifier: f.n, Interval: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	f.c = c
	if err := c.Refresh(ctx); err != nil { // loaded before Run
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	go func() { defer close(f.ended); _ = c.Run(rctx) }()
	f.stop = func() { cancel(); <-f.ended }
	return f
}

// heldPutStore holds the first PutBlock until release is closed, ignoring
// its context (a write-back of many records that takes long), after
// passing it on when after is set.
type heldPutStore struct {
	broker.Store
	after   bool
	once    sync.Once
	entered chan struct{}
	release chan struct{}
}

func newHeldPutStore(st broker.Store, after bool) *heldPutStore {
	return &heldPutStore{Store: st, after: after, entered: make(chan struct{}), release: make(chan struct{})}
}

func (s *heldPutStore) PutBlock(ctx context.Context, b broker.Block) error {
	var err error
	if s.after {
		err = s.Store.PutBlock(ctx, b)
	}
	first := false
	s.once.Do(func() { first = true })
	if first {
		close(s.entered)
		<-s.release
	}
	if !s.after {
		err = s.Store.PutBlock(ctx, b)
	}
	return err
}

func waitCond(t *testing.T, what string, timeout time.Duration, ok func() bool) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !ok() {
		if time.Now().After(deadline) {
			t.Errorf("not within %v: %s", timeout, what)
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

// While the write-back after a data loss runs (held here; 100,000
// records take some 17 s), Run goes on applying notices: it used to write
// back inside its refresh, and the notices waited.
func TestRevocationCacheRunAppliesNoticesDuringWriteBack(t *testing.T) {
	f := newRunLossFixture(t)
	held := newHeldPutStore(memstore.New(time.Now), false)
	f.st.swap(held) // the Store lost its data
	select {
	case <-held.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("no write-back started")
	}
	if err := f.n.Publish(context.Background(), broker.Notice{RevocationID: "rev_9", Revoked: []string{"iss_new"}}); err != nil {
		t.Fatal(err)
	}
	waitCond(t, "the notice applied during the write-back", 10*time.Second, func() bool { return f.c.Revoked("iss_new") })
	close(held.release)
	f.stop()
}

// A lost block's write-back that lands in the Store, which then loses its
// data again before the write answers, is not taken as written back: the
// block stays in force and is written into the Store as it is now. (With
// the write-back next to the refreshes, the refresh that saw the second
// loss runs while the write is on its way.)
func TestRevocationCacheWriteBackBeforeAnotherLossIsWrittenAgain(t *testing.T) {
	f := newRunLossFixture(t)
	ctx := context.Background()
	// The store after the first loss holds fewer revocation changes than
	// the one before and more than the one after the second, so that each
	// loss is seen (the version went back).
	first := memstore.New(time.Now)
	for _, id := range []string{"rev_a"} {
		if err := first.PutRevocation(ctx, &broker.Revocation{ID: id, CreatedAt: time.Now().UTC(), Failed: []broker.RevokeFailure{}}); err != nil {
			t.Fatal(err)
		}
	}
	held := newHeldPutStore(first, true)
	f.st.swap(held)
	select {
	case <-held.entered:
	case <-time.After(30 * time.Second):
		t.Fatal("no write-back started")
	}
	second := memstore.New(time.Now)
	f.st.swap(second) // lost again, the first write landed in the first
	waitCond(t, "the second loss seen", 30*time.Second, func() bool { return f.c.StoreLosses() >= 2 })
	close(held.release)
	for _, w := range []string{"w1", "w2"} {
		waitCond(t, w+"'s block written back into the store as it is now", 30*time.Second, func() bool {
			_, err := second.GetBlock(ctx, w)
			return err == nil
		})
		if !f.c.Blocked(w) {
			t.Errorf("Blocked(%s) = false after the second loss", w)
		}
	}
	for _, id := range []string{"rev_1", "rev_2"} {
		waitCond(t, id+" written back", 30*time.Second, func() bool {
			_, err := second.GetRevocation(ctx, id)
			return !errors.Is(err, broker.ErrNotFound) && err == nil
		})
	}
	f.stop()
}
