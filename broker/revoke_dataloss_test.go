package broker_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
)

// lossFixture is a RevocationCache over a store the test can swap for an
// empty one (the Store losing its data), with two workloads blocked by
// two revocations.
type lossFixture struct {
	ctx     context.Context
	mu      sync.Mutex
	now     time.Time
	st      *swapStore
	c       *broker.RevocationCache
	logs    *bytes.Buffer
	logsMu  sync.Mutex
	revs    []*broker.Revocation
	blocked []string
}

func (f *lossFixture) clock() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.now }
func (f *lossFixture) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func newLossFixture(t *testing.T) *lossFixture {
	t.Helper()
	f := &lossFixture{ctx: context.Background(), now: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC), logs: &bytes.Buffer{}}
	f.st = &swapStore{st: memstore.New(f.clock)}
	log := slog.New(slog.NewTextHandler(lockedWriter{&f.logsMu, f.logs}, nil))
	c, err := broker.NewRevocationCache(f.st, broker.CacheOptions{FastReads: true, Now: f.clock, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	f.c = c
	for i, w := range []string{"w1", "w2"} {
		id := []string{"rev_1", "rev_2"}[i]
		if err := f.st.PutBlock(f.ctx, broker.Block{Workload: w, Reason: "INC-" + id, RevocationID: id, CreatedAt: f.clock()}); err != nil {
			t.Fatal(err)
		}
		r := &broker.Revocation{ID: id, Selector: broker.RevokeSelector{Workload: w}, Reason: "INC-" + id, Block: true, CreatedAt: f.clock(),
			Matched: 1, Revoked: []string{"iss_" + w}, Failed: []broker.RevokeFailure{}, Blocks: []string{w}, CompletedAt: f.clock()}
		if err := f.st.PutRevocation(f.ctx, r); err != nil {
			t.Fatal(err)
		}
		f.revs = append(f.revs, r)
		f.blocked = append(f.blocked, w)
	}
	if err := c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	for _, w := range f.blocked {
		if !c.Blocked(w) {
			t.Fatalf("before the loss: Blocked(%s) = false", w)
		}
	}
	return f
}

func (f *lossFixture) logged() string {
	f.logsMu.Lock()
	defer f.logsMu.Unlock()
	return f.logs.String()
}

// TestRevocationCacheKeepsBlocksTheStoreLost: the Store loses its data
// (its RevocationVersion goes back). The cache keeps the blocks it knew,
// as it keeps the revoked ids, and writes them back into the Store with
// the Window's revocation records, logging an ERROR and counting the
// loss; also when a due full read is the first to read the emptied
// Store. It used to replace its blocked set with the Store's listing:
// every blocked workload was unblocked on every instance.
func TestRevocationCacheKeepsBlocksTheStoreLost(t *testing.T) {
	for _, tt := range []struct {
		name  string
		after time.Duration
	}{
		{"seen-by-a-refresh", time.Second},
		{"seen-first-by-a-due-full-read", 61 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newLossFixture(t)
			f.st.swap(memstore.New(f.clock)) // Redis restarts without its data
			f.advance(tt.after)
			if err := f.c.Refresh(f.ctx); err != nil {
				t.Fatalf("Refresh() after the loss = %v", err)
			}
			for _, w := range f.blocked {
				if !f.c.Blocked(w) {
					t.Errorf("Blocked(%s) = false after the Store lost its block; want the cache to keep it", w)
				}
				if _, err := f.c.Store().GetBlock(f.ctx, w); err != nil {
					t.Errorf("cache Store GetBlock(%s) = %v, want the block", w, err)
				}
				if b, err := f.st.GetBlock(f.ctx, w); err != nil || b.RevocationID == "" || b.Reason == "" {
					t.Errorf("Store GetBlock(%s) after the refresh = %+v, %v; want the block written back as it was", w, b, err)
				}
			}
			for _, r := range f.revs {
				if got, err := f.st.GetRevocation(f.ctx, r.ID); err != nil || len(got.Revoked) != 1 || got.Revoked[0] != r.Revoked[0] {
					t.Errorf("Store GetRevocation(%s) after the refresh = %+v, %v; want it written back", r.ID, got, err)
				}
			}
			if n := f.c.StoreLosses(); n != 1 {
				t.Errorf("StoreLosses() = %d, want 1", n)
			}
			if l := f.logged(); !strings.Contains(l, "level=ERROR msg=\"revocation store lost data") {
				t.Errorf("logs = %q, want an ERROR saying the store lost data", l)
			}
			// Another refresh: the Store lists them again; nothing more is
			// counted.
			f.advance(time.Second)
			if err := f.c.Refresh(f.ctx); err != nil {
				t.Fatal(err)
			}
			for _, w := range f.blocked {
				if !f.c.Blocked(w) {
					t.Errorf("Blocked(%s) = false at the refresh after the write-back", w)
				}
			}
			if n := f.c.StoreLosses(); n != 1 {
				t.Errorf("StoreLosses() after another refresh = %d, want 1", n)
			}
		})
	}
}

// TestRevocationCacheLostBlockUnblockedAfterWriteBack: a block the cache
// wrote back after a loss is lifted later on another instance, whose
// notice does not arrive: the next listing of the Store, which no longer
// holds it, drops it (the cache does not keep it, nor write it back,
// again). An unblock notice that arrives while the block is still to be
// written back drops it too.
func TestRevocationCacheLostBlockUnblockedAfterWriteBack(t *testing.T) {
	f := newLossFixture(t)
	empty := memstore.New(f.clock)
	f.st.swap(empty)
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	// Lifted on another instance: the Store's block goes, no notice.
	if err := empty.DeleteBlock(f.ctx, "w1", "rev_1"); err != nil {
		t.Fatalf("DeleteBlock(w1) = %v, want the written-back block deleted", err)
	}
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	if f.c.Blocked("w1") {
		t.Errorf("Blocked(w1) = true after the written-back block was lifted; want it dropped")
	}
	if !f.c.Blocked("w2") {
		t.Errorf("Blocked(w2) = false; want it still blocked")
	}
	if _, err := empty.GetBlock(f.ctx, "w1"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Store GetBlock(w1) = %v, want not found: not written back again", err)
	}

	// A second loss; the unblock of w2 is announced before any refresh
	// reads the Store: the block is neither kept nor written back.
	f.st.swap(memstore.New(f.clock))
	f.c.Apply(broker.Notice{RevocationID: "rev_2", Unblocked: []string{"w2"}})
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	if f.c.Blocked("w2") {
		t.Errorf("Blocked(w2) = true after its unblock notice; want it lifted")
	}
	if _, err := f.st.GetBlock(f.ctx, "w2"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Store GetBlock(w2) after the second loss = %v, want not found (unblocked)", err)
	}
	if n := f.c.StoreLosses(); n != 2 {
		t.Errorf("StoreLosses() = %d, want 2", n)
	}
}

// TestRevocationCacheKeepsAnnouncedBlockTheStoreLost: a failover loses the
// last writes, a blocking revocation made here a moment before (its block,
// its record), before any refresh read them: the Store's version does not
// go back below what the cache read. The cache knows the block from the
// revocation's notice; the listing lacks it and the Store does not hold
// its revocation either (stored before the notice, never deleted): lost,
// not lifted. It keeps the block and writes it back. (It replaced its
// blocked set with the listing: the workload was unblocked.) A block
// announced and lifted since (its revocation stored) is dropped, no loss
// counted.
func TestRevocationCacheKeepsAnnouncedBlockTheStoreLost(t *testing.T) {
	f := newLossFixture(t)
	// The failover's replica: the state the cache read (rev_1, rev_2).
	replica := memstore.New(f.clock)
	for i, r := range f.revs {
		if err := replica.PutBlock(f.ctx, broker.Block{Workload: f.blocked[i], Reason: r.Reason, RevocationID: r.ID, CreatedAt: r.CreatedAt}); err != nil {
			t.Fatal(err)
		}
		if err := replica.PutRevocation(f.ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	// rev_3 blocks w3 on the primary and is announced; rev_4 blocks w4,
	// announced, then w4 is unblocked (its notice lost).
	for _, x := range []struct{ w, id string }{{"w3", "rev_3"}, {"w4", "rev_4"}} {
		if err := f.st.PutBlock(f.ctx, broker.Block{Workload: x.w, Reason: "INC", RevocationID: x.id, CreatedAt: f.clock()}); err != nil {
			t.Fatal(err)
		}
		r := &broker.Revocation{ID: x.id, Selector: broker.RevokeSelector{Workload: x.w}, Reason: "INC", Block: true, CreatedAt: f.clock(),
			Revoked: []string{}, Failed: []broker.RevokeFailure{}, Blocks: []string{x.w}}
		if err := f.st.PutRevocation(f.ctx, r); err != nil {
			t.Fatal(err)
		}
		if x.w == "w4" {
			if err := replica.PutRevocation(f.ctx, r); err != nil { // replicated, then unblocked
				t.Fatal(err)
			}
		}
		// Announced by this instance (its Revoke stored them): a block
		// another instance announced, whose record this one has not read,
		// is kept here but not written back (see
		// TestRevocationCacheForgedBlockNoticeWritesNoBlock).
		if err := f.c.Store().(broker.Notifier).Publish(f.ctx, broker.Notice{RevocationID: x.id, Blocked: []string{x.w}}); err != nil {
			t.Fatal(err)
		}
	}
	f.st.swap(replica) // the failover
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	if !f.c.Blocked("w3") {
		t.Errorf("Blocked(w3) = false after the failover lost its block; want it kept")
	}
	if b, err := replica.GetBlock(f.ctx, "w3"); err != nil || b.RevocationID != "rev_3" {
		t.Errorf("Store GetBlock(w3) = %+v, %v; want rev_3's block written back", b, err)
	}
	if f.c.Blocked("w4") {
		t.Errorf("Blocked(w4) = true, its revocation stored and its block gone; want it taken as lifted")
	}
	if n := f.c.StoreLosses(); n != 1 {
		t.Errorf("StoreLosses() = %d, want 1", n)
	}
	if l := f.logged(); !strings.Contains(l, "announced block and its revocation missing") {
		t.Errorf("logs = %q, want the ERROR to say how the loss was seen", l)
	}
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	if !f.c.Blocked("w3") || f.c.StoreLosses() != 1 {
		t.Errorf("next refresh: Blocked(w3) = %v, StoreLosses() = %d; want true, 1", f.c.Blocked("w3"), f.c.StoreLosses())
	}
}

// putHookStore calls onPut before each PutBlock reaches the Store.
type putHookStore struct {
	broker.Store
	mu    sync.Mutex
	onPut func(b broker.Block)
}

func (s *putHookStore) PutBlock(ctx context.Context, b broker.Block) error {
	s.mu.Lock()
	f := s.onPut
	s.mu.Unlock()
	if f != nil {
		f(b)
	}
	return s.Store.PutBlock(ctx, b)
}

// TestRevocationCacheUnblockDuringWriteBackHolds: after a loss the cache
// writes back the lost blocks of w1, w2 and w3; an operator unblocks them
// through this instance: w2's unblock lands while w1's block is being
// written, w1's own unblock deletes nothing (its block not yet written
// back) just before the write lands; w3's delete, as w1's, came before
// its write landed, but its notice arrives after the write-back. The
// unblocks answered done must hold: no block may be left in the Store,
// nor come back at the next refresh. (The write-back wrote w2's block all
// the same, from the list it took before, and put w1's and w3's back
// after their unblock: the workloads were blocked again.)
func TestRevocationCacheUnblockDuringWriteBackHolds(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	var clockMu sync.Mutex
	clock := func() time.Time { clockMu.Lock(); defer clockMu.Unlock(); return now }
	advance := func() { clockMu.Lock(); now = now.Add(time.Second); clockMu.Unlock() }
	sw := &swapStore{st: memstore.New(clock)}
	st := &putHookStore{Store: sw}
	c, err := broker.NewRevocationCache(st, broker.CacheOptions{FastReads: true, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range []struct{ w, id string }{{"w1", "rev_1"}, {"w2", "rev_2"}, {"w3", "rev_3"}} {
		if err := sw.PutBlock(ctx, broker.Block{Workload: x.w, Reason: "INC", RevocationID: x.id, CreatedAt: clock()}); err != nil {
			t.Fatal(err)
		}
		r := &broker.Revocation{ID: x.id, Selector: broker.RevokeSelector{Workload: x.w}, Reason: "INC", Block: true, CreatedAt: clock(),
			Revoked: []string{}, Failed: []broker.RevokeFailure{}, Blocks: []string{x.w}, CompletedAt: clock()}
		if err := sw.PutRevocation(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	empty := memstore.New(clock)
	sw.swap(empty) // the loss
	cs := c.Store()
	unblock := func(w, rid string) {
		// What Service.Unblock does once its event is written: the
		// conditional delete, then the notice.
		if err := cs.DeleteBlock(ctx, w, rid); err != nil && !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("DeleteBlock(%s) = %v", w, err)
		}
		if err := cs.(broker.Notifier).Publish(ctx, broker.Notice{RevocationID: rid, Unblocked: []string{w}}); err != nil {
			t.Errorf("Publish = %v", err)
		}
	}
	var once sync.Once
	st.onPut = func(b broker.Block) {
		once.Do(func() {
			// The first block being written back: w2 is unblocked, then
			// this one, before the write lands.
			other := map[string]string{"w1": "w2", "w2": "w1"}[b.Workload]
			unblock(other, map[string]string{"w1": "rev_1", "w2": "rev_2"}[other])
			unblock(b.Workload, b.RevocationID)
		})
	}
	advance()
	if err := c.Refresh(ctx); err != nil {
		t.Fatalf("Refresh() after the loss = %v", err)
	}
	if _, err := empty.GetBlock(ctx, "w3"); err != nil {
		t.Fatalf("Store GetBlock(w3) = %v, want it written back", err)
	}
	c.Apply(broker.Notice{RevocationID: "rev_3", Unblocked: []string{"w3"}}) // its delete found nothing
	for i := 0; i < 2; i++ {
		advance()
		if err := c.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, w := range []string{"w1", "w2", "w3"} {
		if b, err := empty.GetBlock(ctx, w); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("Store GetBlock(%s) = %+v, %v after its unblock; want not found", w, b, err)
		}
		if c.Blocked(w) {
			t.Errorf("Blocked(%s) = true after its unblock answered done; want it lifted", w)
		}
	}
}

// TestRevocationCacheLiftedBlockWrittenBackElsewhereIsDeleted: w1 is
// unblocked (through this instance, or another whose notice arrives);
// another instance, which missed the unblock's notice, writes w1's block
// back after Redis lost its data (a revocation's block, rev_1, is never
// put again once lifted: a new block is a new revocation's). The next
// listing holding it must not block w1 again here, and this instance
// deletes it again, so the instances that learned it from the Store drop
// it too; a new revocation's block of w1 stands. (The listing blocked w1
// again on every instance.) The write-back comes in the listing that
// first sees the loss, in a later one, or after an unblock made once
// this instance had seen the loss.
func TestRevocationCacheLiftedBlockWrittenBackElsewhereIsDeleted(t *testing.T) {
	for _, tt := range []struct {
		name string
		run  func(t *testing.T, f *lossFixture) broker.Store // returns the Store after the loss
	}{
		{"write-back-in-the-listing-seeing-the-loss", func(t *testing.T, f *lossFixture) broker.Store {
			unblockHere(t, f, "w1", "rev_1")
			after := memstore.New(f.clock)
			writeBack(t, f, after, "w1", "rev_1") // the other instance's
			writeBack(t, f, after, "w2", "rev_2")
			f.st.swap(after)
			return after
		}},
		{"write-back-after-the-loss-was-seen", func(t *testing.T, f *lossFixture) broker.Store {
			unblockHere(t, f, "w1", "rev_1")
			after := memstore.New(f.clock)
			f.st.swap(after)
			f.advance(time.Second)
			if err := f.c.Refresh(f.ctx); err != nil {
				t.Fatal(err)
			}
			writeBack(t, f, after, "w1", "rev_1")
			return after
		}},
		{"unblocked-elsewhere-after-the-loss-was-seen", func(t *testing.T, f *lossFixture) broker.Store {
			after := memstore.New(f.clock)
			f.st.swap(after)
			f.advance(time.Second)
			if err := f.c.Refresh(f.ctx); err != nil { // writes back w1, w2
				t.Fatal(err)
			}
			if err := after.DeleteBlock(f.ctx, "w1", "rev_1"); err != nil { // the unblock, on another instance
				t.Fatal(err)
			}
			f.c.Apply(broker.Notice{RevocationID: "rev_1", Unblocked: []string{"w1"}})
			f.advance(time.Second)
			if err := f.c.Refresh(f.ctx); err != nil {
				t.Fatal(err)
			}
			if f.c.Blocked("w1") {
				t.Fatalf("Blocked(w1) = true after its unblock")
			}
			writeBack(t, f, after, "w1", "rev_1") // a third instance's
			return after
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newLossFixture(t)
			st := tt.run(t, f)
			f.advance(time.Second)
			if err := f.c.Refresh(f.ctx); err != nil {
				t.Fatal(err)
			}
			if f.c.Blocked("w1") {
				t.Errorf("Blocked(w1) = true: rev_1's block, lifted here, came back from the Store; want it ignored")
			}
			if b, err := st.GetBlock(f.ctx, "w1"); !errors.Is(err, broker.ErrNotFound) {
				t.Errorf("Store GetBlock(w1) = %+v, %v; want rev_1's block deleted again", b, err)
			}
			if l := f.logged(); !strings.Contains(l, "level=WARN") || !strings.Contains(l, "came back") {
				t.Errorf("logs = %q, want a WARN saying the lifted block came back", l)
			}
			if !f.c.Blocked("w2") {
				t.Errorf("Blocked(w2) = false; want it still blocked")
			}
			// A new revocation blocks w1 again: in force.
			if err := st.PutBlock(f.ctx, broker.Block{Workload: "w1", Reason: "INC-3", RevocationID: "rev_3", CreatedAt: f.clock()}); err != nil {
				t.Fatal(err)
			}
			f.advance(time.Second)
			if err := f.c.Refresh(f.ctx); err != nil {
				t.Fatal(err)
			}
			if !f.c.Blocked("w1") {
				t.Errorf("Blocked(w1) = false after rev_3 blocked it; want it blocked")
			}
			if b, err := st.GetBlock(f.ctx, "w1"); err != nil || b.RevocationID != "rev_3" {
				t.Errorf("Store GetBlock(w1) = %+v, %v; want rev_3's block", b, err)
			}
		})
	}
}

// unblockHere unblocks w through f's cache (its delete, then its notice)
// and refreshes.
func unblockHere(t *testing.T, f *lossFixture, w, rid string) {
	t.Helper()
	cs := f.c.Store()
	if err := cs.DeleteBlock(f.ctx, w, rid); err != nil {
		t.Fatalf("DeleteBlock(%s) = %v", w, err)
	}
	if err := cs.(broker.Notifier).Publish(f.ctx, broker.Notice{RevocationID: rid, Unblocked: []string{w}}); err != nil {
		t.Fatal(err)
	}
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	if f.c.Blocked(w) {
		t.Fatalf("Blocked(%s) = true after its unblock", w)
	}
}

// writeBack puts rid's block of w into st, as another instance's
// write-back after a loss does.
func writeBack(t *testing.T, f *lossFixture, st broker.Store, w, rid string) {
	t.Helper()
	if err := st.PutBlock(f.ctx, broker.Block{Workload: w, Reason: "INC-" + rid, RevocationID: rid, CreatedAt: f.clock()}); err != nil {
		t.Fatal(err)
	}
}

// TestRevocationCacheUnblockNoticeAloneDeletesNoBlock: an unblock notice
// naming a block the Store still holds, with no data loss seen (a notice
// forged or replayed by whoever can PUBLISH on the notice channel, which
// also carries every block's revocation id; no unblock was made), must
// not lift it: notices only speed the cache up, the Store decides. The
// block stands in the Store and here, and a later loss keeps and writes
// it back as any other. (Since 98ede25 the next listing ignored the
// block, took it for a lifted block come back and deleted it from the
// Store: the workload got credentials again on every instance, with no
// unblock event in the audit log.)
func TestRevocationCacheUnblockNoticeAloneDeletesNoBlock(t *testing.T) {
	f := newLossFixture(t)
	f.c.Apply(broker.Notice{RevocationID: "rev_1", Unblocked: []string{"w1"}}) // no delete in the Store
	for i := 0; i < 2; i++ {
		f.advance(time.Second)
		if err := f.c.Refresh(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := f.st.GetBlock(f.ctx, "w1"); err != nil || b.RevocationID != "rev_1" {
		t.Fatalf("Store GetBlock(w1) = %+v, %v after a notice alone; want rev_1's block to stand", b, err)
	}
	if !f.c.Blocked("w1") {
		t.Errorf("Blocked(w1) = false; want the Store's block in force")
	}
	if l := f.logged(); !strings.Contains(l, "unblock notices said were lifted") {
		t.Errorf("logs = %q, want a WARN naming the block the notice did not lift", l)
	}
	// A loss later (past the grace): w1's block is kept and written back,
	// not deleted as lifted.
	f.advance(2 * time.Minute)
	f.st.swap(memstore.New(f.clock))
	for i := 0; i < 2; i++ {
		f.advance(time.Second)
		if err := f.c.Refresh(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := f.st.GetBlock(f.ctx, "w1"); err != nil || b.RevocationID != "rev_1" {
		t.Errorf("Store GetBlock(w1) after the loss = %+v, %v; want rev_1's block written back", b, err)
	}
	if !f.c.Blocked("w1") {
		t.Errorf("Blocked(w1) = false after the loss; want it kept")
	}
}

// lossUnconfirmedStore writes blocks, unblocks and revocation records, then
// answers store_unreplicated, as the Redis store does with
// store.min_replicas while fewer replicas acknowledge (after a failover,
// until the old primary rejoins): the write is on the primary, in force.
type lossUnconfirmedStore struct{ broker.Store }

func lossUnconfirmed(err error) error {
	if err != nil {
		return err
	}
	return broker.Unavailable(broker.ReasonStoreUnreplicated, time.Second, errors.New("WAIT: 0 of 1 replicas"))
}

func (s lossUnconfirmedStore) PutBlock(ctx context.Context, b broker.Block) error {
	return lossUnconfirmed(s.Store.PutBlock(ctx, b))
}

func (s lossUnconfirmedStore) DeleteBlock(ctx context.Context, w, rid string) error {
	return lossUnconfirmed(s.Store.DeleteBlock(ctx, w, rid))
}

func (s lossUnconfirmedStore) PutRevocation(ctx context.Context, r *broker.Revocation) error {
	return lossUnconfirmed(s.Store.PutRevocation(ctx, r))
}

// TestRevocationCacheWriteBackGoesOnWhenUnreplicated: after a loss the
// Store's writes are on its primary but not confirmed by enough replicas
// (store_unreplicated). Each is in force, as Revoke takes an unconfirmed
// block: the write-back goes on to the next, and a block to delete again
// does not hold it up. (It stopped at the first block, w1, written again
// at every refresh: w2's block and every revocation record were never
// written back while the replicas lagged; after an unblock of w1 its
// delete failed first, and nothing at all was written back.)
func TestRevocationCacheWriteBackGoesOnWhenUnreplicated(t *testing.T) {
	f := newLossFixture(t)
	after := memstore.New(f.clock)
	f.st.swap(lossUnconfirmedStore{after})
	f.advance(time.Second)
	_ = f.c.Refresh(f.ctx) // sees the loss and writes back; may report an unconfirmed write
	for i, w := range f.blocked {
		if b, err := after.GetBlock(f.ctx, w); err != nil || b.RevocationID != f.revs[i].ID {
			t.Errorf("Store GetBlock(%s) = %+v, %v; want it written back", w, b, err)
		}
	}
	for _, r := range f.revs {
		if _, err := after.GetRevocation(f.ctx, r.ID); err != nil {
			t.Errorf("Store GetRevocation(%s) = %v; want it written back", r.ID, err)
		}
	}
	// A refresh; w1 unblocked; then a restore from a snapshot taken
	// before the unblock, without w2's block: w1's block is deleted again
	// (lifted here) and w2's written back.
	f.advance(time.Second)
	_ = f.c.Refresh(f.ctx)
	if err := after.DeleteBlock(f.ctx, "w1", "rev_1"); err != nil {
		t.Fatal(err)
	}
	f.c.Apply(broker.Notice{RevocationID: "rev_1", Unblocked: []string{"w1"}})
	again := memstore.New(f.clock)
	writeBack(t, f, again, "w1", "rev_1")
	f.st.swap(lossUnconfirmedStore{again})
	f.advance(time.Second)
	_ = f.c.Refresh(f.ctx)
	if b, err := again.GetBlock(f.ctx, "w2"); err != nil || b.RevocationID != "rev_2" {
		t.Errorf("after the restore: Store GetBlock(w2) = %+v, %v; want it written back", b, err)
	}
	if b, err := again.GetBlock(f.ctx, "w1"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("after the restore: Store GetBlock(w1) = %+v, %v; want it deleted again", b, err)
	}
	if !f.c.Blocked("w2") || f.c.Blocked("w1") {
		t.Errorf("Blocked(w1, w2) = %v, %v; want false, true", f.c.Blocked("w1"), f.c.Blocked("w2"))
	}
}

// TestRevocationCacheRemembersOnlyUnblocksOfKnownBlocks: the unblocks a
// cache remembers (to delete a lifted block another instance's write-back
// brings back) are those that lifted a block it knew; notices naming
// blocks nobody made (anyone who may PUBLISH on the channel can send them)
// do not grow the set it scans at every refresh.
func TestRevocationCacheRemembersOnlyUnblocksOfKnownBlocks(t *testing.T) {
	f := newLossFixture(t)
	for i := range 1000 {
		f.c.Apply(broker.Notice{RevocationID: fmt.Sprintf("rev_forged%d", i), Unblocked: []string{fmt.Sprintf("wx%d", i)}})
	}
	f.c.Apply(broker.Notice{RevocationID: "rev_other", Unblocked: []string{"w1"}}) // not w1's block
	if n := broker.LiftedUnblocks(f.c); n != 0 {
		t.Errorf("after 1,001 unblock notices of blocks the cache did not know: %d remembered, want 0", n)
	}
	f.c.Apply(broker.Notice{RevocationID: "rev_1", Unblocked: []string{"w1"}})
	if n := broker.LiftedUnblocks(f.c); n != 1 {
		t.Errorf("after the unblock of w1's known block: %d remembered, want 1", n)
	}
}

// TestRevocationCacheWritesBackRecordsWhenAnnouncedBlockLost: a failover
// to a replica that lacked the last writes, seen as an announced block
// missing with its revocation (the Store's version did not go back: more
// revocations landed on the new primary than it lacked). The cache had
// read rev_3's record (the blocking revocation; a refresh whose listing
// came before its block) and rev_5's (a revocation that blocks nothing),
// both lost with the replica. It writes back the block and both records,
// as it does when the version goes back, so that `keytrail trace`, the
// reports and an instance started after it see them. (It wrote back the
// block only: the records were queued only when the version went back.)
func TestRevocationCacheWritesBackRecordsWhenAnnouncedBlockLost(t *testing.T) {
	f := newLossFixture(t)
	replica := memstore.New(f.clock)
	for i, r := range f.revs {
		if err := replica.PutBlock(f.ctx, broker.Block{Workload: f.blocked[i], Reason: r.Reason, RevocationID: r.ID, CreatedAt: r.CreatedAt}); err != nil {
			t.Fatal(err)
		}
		if err := replica.PutRevocation(f.ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	rev5 := &broker.Revocation{ID: "rev_5", Selector: broker.RevokeSelector{IssuanceID: "iss_5"}, Reason: "INC-5", CreatedAt: f.clock(),
		Matched: 1, Revoked: []string{"iss_5"}, Failed: []broker.RevokeFailure{}, CompletedAt: f.clock()}
	rev3 := &broker.Revocation{ID: "rev_3", Selector: broker.RevokeSelector{Workload: "w3"}, Reason: "INC-3", Block: true, CreatedAt: f.clock(),
		Revoked: []string{}, Pending: []string{"iss_w3"}, Failed: []broker.RevokeFailure{}, Blocks: []string{"w3"}}
	for _, r := range []*broker.Revocation{rev5, rev3} {
		if err := f.st.PutRevocation(f.ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil { // reads rev_5 and rev_3
		t.Fatal(err)
	}
	if err := f.st.PutBlock(f.ctx, broker.Block{Workload: "w3", Reason: "INC-3", RevocationID: "rev_3", CreatedAt: f.clock()}); err != nil {
		t.Fatal(err)
	}
	f.c.Apply(broker.Notice{RevocationID: "rev_3", Blocked: []string{"w3"}})
	// The failover; two revocations land on the new primary before the
	// next refresh, so its version is as high as the one the cache read.
	f.st.swap(replica)
	for _, id := range []string{"rev_6", "rev_7"} {
		r := &broker.Revocation{ID: id, Selector: broker.RevokeSelector{IssuanceID: "iss_" + id}, Reason: "INC", CreatedAt: f.clock(),
			Revoked: []string{}, Pending: []string{"iss_" + id}, Failed: []broker.RevokeFailure{}}
		if err := replica.PutRevocation(f.ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.c.StoreLosses(); n != 1 {
		t.Fatalf("StoreLosses() = %d, want 1 (the announced block's loss)", n)
	}
	if !strings.Contains(f.logged(), "announced block and its revocation missing") {
		t.Fatalf("logs = %q, want the loss seen by the announced block", f.logged())
	}
	if b, err := replica.GetBlock(f.ctx, "w3"); err != nil || b.RevocationID != "rev_3" {
		t.Errorf("Store GetBlock(w3) = %+v, %v; want rev_3's block written back", b, err)
	}
	for _, want := range []*broker.Revocation{rev3, rev5} {
		got, err := replica.GetRevocation(f.ctx, want.ID)
		if err != nil {
			t.Errorf("Store GetRevocation(%s) = %v; want the kept record written back", want.ID, err)
			continue
		}
		gj, _ := json.Marshal(got)
		wj, _ := json.Marshal(want)
		if string(gj) != string(wj) {
			t.Errorf("Store GetRevocation(%s) =\n %s\nwant %s", want.ID, gj, wj)
		}
	}
	if l := f.logged(); !strings.Contains(l, "wrote back what this instance knew") || !strings.Contains(l, "revocations=2") {
		t.Errorf("logs = %q, want the write-back WARN naming 2 revocations", l)
	}
}

// TestRevocationCacheCountsKeptRecordsThatDoNotDecode: a kept record that
// does not decode (not to happen) is dropped from the write-back with an
// ERROR naming it, and counted (WriteBackDropped,
// keytrail_store_data_loss_records_dropped_total), so that monitoring
// sees a revocation record lost for good; the other records are written
// back. (It was logged only.)
func TestRevocationCacheCountsKeptRecordsThatDoNotDecode(t *testing.T) {
	f := newLossFixture(t)
	if !broker.DamageKeptRecord(f.c, "rev_1") {
		t.Fatal("the cache keeps no record of rev_1 to damage")
	}
	f.st.swap(memstore.New(f.clock)) // Redis restarts without its data
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatalf("Refresh() after the loss = %v", err)
	}
	if n := f.c.WriteBackDropped(); n != 1 {
		t.Errorf("WriteBackDropped() = %d, want 1", n)
	}
	l := f.logged()
	if !strings.Contains(l, "level=ERROR msg=\"revocation cache: cannot write back a revocation the store lost\" revocation_id=rev_1") {
		t.Errorf("logs = %q, want an ERROR naming rev_1", l)
	}
	if _, err := f.st.GetRevocation(f.ctx, "rev_1"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Store GetRevocation(rev_1) = %v, want not found (nothing to write back)", err)
	}
	if _, err := f.st.GetRevocation(f.ctx, "rev_2"); err != nil {
		t.Errorf("Store GetRevocation(rev_2) = %v, want it written back", err)
	}
	// Dropped once, not counted again at the next refreshes.
	for range 2 {
		f.advance(time.Second)
		if err := f.c.Refresh(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.c.WriteBackDropped(); n != 1 {
		t.Errorf("WriteBackDropped() after more refreshes = %d, want 1", n)
	}
}

// getCountStore counts GetRevocation calls.
type getCountStore struct {
	broker.Store
	gets *atomic.Int64
}

func (s getCountStore) GetRevocation(ctx context.Context, id string) (*broker.Revocation, error) {
	s.gets.Add(1)
	return s.Store.GetRevocation(ctx, id)
}

// TestRevocationCacheForgedBlockNoticeReadsNoWindow: a block notice naming
// a revocation the Store never held (anyone who can PUBLISH on the
// channel can send one) looks like an announced block lost with its
// revocation. A loss seen that way (the version not going back) is a
// failover to a replica that lacked the last writes: only records created
// that recently can be missing, so only those are looked up for the
// write-back, not the Window's every record (which a stream of forged
// notices would have every instance read again and again).
func TestRevocationCacheForgedBlockNoticeReadsNoWindow(t *testing.T) {
	f := newLossFixture(t)
	for i := range 50 {
		r := &broker.Revocation{ID: fmt.Sprintf("rev_old_%d", i), Selector: broker.RevokeSelector{IssuanceID: fmt.Sprintf("iss_old_%d", i)},
			Reason: "INC", CreatedAt: f.clock().Add(-10 * time.Minute), Revoked: []string{fmt.Sprintf("iss_old_%d", i)}, Failed: []broker.RevokeFailure{}}
		if err := f.st.PutRevocation(f.ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	gets := &atomic.Int64{}
	f.st.swap(getCountStore{Store: f.st.cur(), gets: gets})
	f.c.Apply(broker.Notice{RevocationID: "rev_forged", Blocked: []string{"wx"}})
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	if n := gets.Load(); n > 10 {
		t.Errorf("GetRevocation calls after one forged block notice = %d, want a few (not the Window's 52 records)", n)
	}
}

// TestRevocationCacheForgedBlockNoticeWritesNoBlock: a block notice naming
// a revocation that never was (anyone who can PUBLISH on the channel can
// send one) looks like an announced block lost with its revocation. The
// cache keeps refusing the workload here (fail closed), but writes no
// block into the Store: a notice alone proves none, and a written block
// would refuse the workload on every instance for good. Nor when the
// Store then really loses its data (its version going back): the blocks
// it had read from the Store (w1, w2) are written back, the notice's
// (wy) is not. A block another instance announced, whose record this one
// never read (wz, rev_z, really made: then lost), is kept here only too;
// the instance that made it writes it back (see
// TestRevocationCacheKeepsAnnouncedBlockTheStoreLost). (It wrote the
// forged blocks back.)
func TestRevocationCacheForgedBlockNoticeWritesNoBlock(t *testing.T) {
	f := newLossFixture(t)
	f.c.Apply(broker.Notice{RevocationID: "rev_forged", Blocked: []string{"wx"}})
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		f.advance(time.Second)
		if err := f.c.Refresh(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := f.st.GetBlock(f.ctx, "wx"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Store GetBlock(wx) = %+v, %v after a forged block notice; want not found (nothing written)", b, err)
	}
	if !f.c.Blocked("wx") {
		t.Errorf("Blocked(wx) = false; want it refused here (fail closed)")
	}
	// An unblock (its notice) lifts it here.
	f.c.Apply(broker.Notice{RevocationID: "rev_forged", Unblocked: []string{"wx"}})
	if f.c.Blocked("wx") {
		t.Errorf("Blocked(wx) = true after its unblock notice; want lifted")
	}

	// Then the Store loses its data, a forged notice and another
	// instance's (of a block then lost with its record) applied just
	// before the refresh that sees it.
	rz := &broker.Revocation{ID: "rev_z", Selector: broker.RevokeSelector{Workload: "wz"}, Reason: "INC", Block: true, CreatedAt: f.clock(),
		Revoked: []string{}, Failed: []broker.RevokeFailure{}, Blocks: []string{"wz"}}
	if err := f.st.PutRevocation(f.ctx, rz); err != nil {
		t.Fatal(err)
	}
	if err := f.st.PutBlock(f.ctx, broker.Block{Workload: "wz", Reason: "INC", RevocationID: "rev_z", CreatedAt: f.clock()}); err != nil {
		t.Fatal(err)
	}
	f.c.Apply(broker.Notice{RevocationID: "rev_z", Blocked: []string{"wz"}})
	f.c.Apply(broker.Notice{RevocationID: "rev_forged2", Blocked: []string{"wy"}})
	empty := memstore.New(f.clock)
	f.st.swap(empty)
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	if n := f.c.StoreLosses(); n < 1 {
		t.Errorf("StoreLosses() = %d, want the loss seen", n)
	}
	for _, w := range []string{"w1", "w2"} {
		if _, err := empty.GetBlock(f.ctx, w); err != nil {
			t.Errorf("Store GetBlock(%s) = %v; want the block read from the store written back", w, err)
		}
	}
	for _, w := range []string{"wy", "wz"} {
		if b, err := empty.GetBlock(f.ctx, w); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("Store GetBlock(%s) = %+v, %v; want not found (learned from a notice alone)", w, b, err)
		}
		if !f.c.Blocked(w) {
			t.Errorf("Blocked(%s) = false; want it refused here", w)
		}
	}
	if l := f.logged(); !strings.Contains(l, "blocks_kept_here_only=2") {
		t.Errorf("logs = %q, want the loss's ERROR to count the blocks kept here only", l)
	}
	// Kept here for the Window (as the revoked ids notices name), then
	// dropped: forged notices do not grow the set for good.
	f.advance(25 * time.Hour)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"wy", "wz"} {
		if f.c.Blocked(w) {
			t.Errorf("Blocked(%s) = true a Window after its notice; want dropped", w)
		}
	}
	for _, w := range []string{"w1", "w2"} {
		if !f.c.Blocked(w) {
			t.Errorf("Blocked(%s) = false; want the written-back block standing", w)
		}
	}
}

// TestRevocationCacheLossesWrittenBack: LossesWrittenBack, what puts the
// store's deployment id back after a loss, counts a loss only once its
// write-back has ended: not while a write fails (retried at each
// refresh), and a loss seen by a forged block notice alone, whose block
// is kept here and written nowhere, is not held back by it.
func TestRevocationCacheLossesWrittenBack(t *testing.T) {
	f := newLossFixture(t)
	f.c.Apply(broker.Notice{RevocationID: "rev_forged", Blocked: []string{"wx"}})
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	if l, w := f.c.StoreLosses(), f.c.LossesWrittenBack(); l != 1 || w != 1 {
		t.Fatalf("after a forged notice's loss: StoreLosses() = %d, LossesWrittenBack() = %d; want 1, 1", l, w)
	}
	empty := memstore.New(f.clock)
	f.st.swap(&failingBlockStore{Store: empty})
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err == nil {
		t.Fatal("Refresh() = nil with every PutBlock failing; want the write-back's error")
	}
	if l, w := f.c.StoreLosses(), f.c.LossesWrittenBack(); l != 2 || w != 1 {
		t.Fatalf("write-back failing: StoreLosses() = %d, LossesWrittenBack() = %d; want 2, 1", l, w)
	}
	f.st.swap(empty)
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	if l, w := f.c.StoreLosses(), f.c.LossesWrittenBack(); l != 2 || w != 2 {
		t.Errorf("written back: StoreLosses() = %d, LossesWrittenBack() = %d; want 2, 2", l, w)
	}
}

// TestRevocationCacheForgedNoticeDisplacesNoLostBlock: a forged block
// notice naming a workload whose block the cache read from the Store (or
// announced itself), with another revocation id, replaces that block in
// the blocked set until the next listing. The Store losing its data
// meanwhile must still write back the real block: it used to be taken
// for the notice's (kept here only, written nowhere), so anyone who can
// PUBLISH could, sending such notices, leave the real blocks unwritten
// after a loss, every instance's alike.
func TestRevocationCacheForgedNoticeDisplacesNoLostBlock(t *testing.T) {
	for _, back := range []bool{true, false} {
		t.Run(fmt.Sprintf("version-back=%v", back), func(t *testing.T) {
			f := newLossFixture(t)
			// w3: blocked by this instance (its Revoke stored the block,
			// then announced it) just before.
			b3 := broker.Block{Workload: "w3", Reason: "INC-3", RevocationID: "rev_3", CreatedAt: f.clock()}
			if err := f.st.PutBlock(f.ctx, b3); err != nil {
				t.Fatal(err)
			}
			if err := f.c.Store().(broker.Notifier).Publish(f.ctx, broker.Notice{RevocationID: "rev_3", Blocked: []string{"w3"}}); err != nil {
				t.Fatal(err)
			}
			f.c.Apply(broker.Notice{RevocationID: "rev_forged", Blocked: []string{"w1", "w3"}})
			empty := memstore.New(f.clock)
			if !back {
				// A failover to a replica that lacked the last writes:
				// the version does not go back (w1's block, an older
				// write, is there; w3's is not).
				if err := empty.PutBlock(f.ctx, f.revsBlock(0)); err != nil {
					t.Fatal(err)
				}
				for range 5 {
					if err := empty.PutRevocation(f.ctx, f.revs[0]); err != nil {
						t.Fatal(err)
					}
				}
			}
			f.st.swap(empty)
			f.advance(time.Second)
			if err := f.c.Refresh(f.ctx); err != nil {
				t.Fatal(err)
			}
			if err := f.c.Refresh(f.ctx); err != nil {
				t.Fatal(err)
			}
			if n := f.c.StoreLosses(); n < 1 {
				t.Fatalf("StoreLosses() = %d, want the loss seen", n)
			}
			want := map[string]string{"w3": "rev_3"}
			if back {
				want["w1"] = "rev_1"
			}
			for w, rid := range want {
				if b, err := empty.GetBlock(f.ctx, w); err != nil || b.RevocationID != rid {
					t.Errorf("Store GetBlock(%s) = %+v, %v after a forged notice naming it; want %s's block written back", w, b, err, rid)
				}
				if !f.c.Blocked(w) {
					t.Errorf("Blocked(%s) = false; want it refused", w)
				}
			}
			if got := f.c.LossesWrittenBack(); got != f.c.StoreLosses() {
				t.Errorf("LossesWrittenBack() = %d, StoreLosses() = %d; want all written back", got, f.c.StoreLosses())
			}
		})
	}
}

func (f *lossFixture) revsBlock(i int) broker.Block {
	r := f.revs[i]
	return broker.Block{Workload: r.Blocks[0], Reason: r.Reason, RevocationID: r.ID, CreatedAt: r.CreatedAt}
}

// putLagged puts into base one revocation record (rev_lag_<i>, revoking
// iss_lag_<i>) created each ago before now, then advances a second and
// refreshes, so that the cache has read them.
func (f *lossFixture) putLagged(t *testing.T, base broker.Store, agos ...time.Duration) []*broker.Revocation {
	t.Helper()
	var lagged []*broker.Revocation
	for i, ago := range agos {
		r := &broker.Revocation{ID: fmt.Sprintf("rev_lag_%d", i), Selector: broker.RevokeSelector{IssuanceID: fmt.Sprintf("iss_lag_%d", i)},
			Reason: "INC", CreatedAt: f.clock().Add(-ago), Revoked: []string{fmt.Sprintf("iss_lag_%d", i)}, Failed: []broker.RevokeFailure{}}
		if err := base.PutRevocation(f.ctx, r); err != nil {
			t.Fatal(err)
		}
		lagged = append(lagged, r)
	}
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	return lagged
}

// TestRevocationCacheDisplacedBlockUnblockedIsNotWrittenBack: the block a
// forged notice displaced (see TestRevocationCacheForgedNoticeDisplacesNoLostBlock)
// is then really unblocked (its delete, its notice): the listing after,
// which sees the forged notice's block gone with its revocation (counted
// as a loss, as any forged notice), must not write the lifted block back.
func TestRevocationCacheDisplacedBlockUnblockedIsNotWrittenBack(t *testing.T) {
	f := newLossFixture(t)
	f.c.Apply(broker.Notice{RevocationID: "rev_forged", Blocked: []string{"w1"}})
	if err := f.c.Store().DeleteBlock(f.ctx, "w1", "rev_1"); err != nil {
		t.Fatal(err)
	}
	f.c.Apply(broker.Notice{RevocationID: "rev_1", Unblocked: []string{"w1"}})
	for range 2 {
		f.advance(time.Second)
		if err := f.c.Refresh(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := f.st.GetBlock(f.ctx, "w1"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Store GetBlock(w1) = %+v, %v after its unblock; want not found (lifted, not written back)", b, err)
	}
}

// TestRevocationCacheAnnouncedLossReachesBackWhileRecordsAreMissing: a
// failover to a replica that lagged more than a minute (the version not
// going back; seen by an announced block gone with its revocation). The
// write-back starts with the records created in the last minute
// (announcedLossSpan); while the earliest of what it looked at was
// missing too, it reaches back further, a step at a time, and stops once
// a step finds them all in the Store. It used to stop at the minute: the
// records of the minutes before were lost for good.
func TestRevocationCacheAnnouncedLossReachesBackWhileRecordsAreMissing(t *testing.T) {
	f := newLossFixture(t)
	f.advance(10 * time.Minute)
	gets := &atomic.Int64{}
	base := f.st.cur()
	f.st.swap(getCountStore{Store: base, gets: gets})
	lagged := f.putLagged(t, base, 4*time.Minute, 3*time.Minute, 150*time.Second, 90*time.Second, 30*time.Second) // not on the replica
	// The replica: the fixture's blocks and records (10 minutes old), and
	// as many writes since, so that its version does not go back.
	replica := memstore.New(f.clock)
	for i := range f.revs {
		if err := replica.PutBlock(f.ctx, f.revsBlock(i)); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 {
		for _, r := range f.revs {
			if err := replica.PutRevocation(f.ctx, r); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Another instance's block, announced, then lost with its record.
	f.c.Apply(broker.Notice{RevocationID: "rev_gone", Blocked: []string{"w9"}})
	f.st.swap(getCountStore{Store: replica, gets: gets})
	for range 8 {
		f.advance(time.Second)
		if err := f.c.Refresh(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if l := f.logged(); !strings.Contains(l, "announced block and its revocation missing") {
		t.Fatalf("logs = %q, want the loss seen by the announced block (the version not going back)", l)
	}
	for _, r := range lagged {
		if _, err := replica.GetRevocation(f.ctx, r.ID); err != nil {
			t.Errorf("replica GetRevocation(%s, created %s ago) = %v; want it written back", r.ID, f.clock().Sub(r.CreatedAt).Round(time.Second), err)
		}
	}
	if got, n := f.c.LossesWrittenBack(), f.c.StoreLosses(); got != n {
		t.Errorf("LossesWrittenBack() = %d, StoreLosses() = %d; want the write-back ended", got, n)
	}
	// Ended: the fixture's records, 10 minutes old, were there; more
	// refreshes read nothing more.
	was := gets.Load()
	for range 3 {
		f.advance(time.Second)
		if err := f.c.Refresh(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := gets.Load() - was; n != 0 {
		t.Errorf("GetRevocation calls after the write-back ended = %d, want 0", n)
	}
}

// TestRevocationCacheReplayedBlockNoticeOfLiftedBlockWritesNoBlock: a
// block notice replayed (anyone who can PUBLISH, and read the channel,
// can send one) naming a revocation of the Window whose block was lifted
// since, by another instance (this one missed its notice). Its record,
// read long ago, names the workload among its blocks, but that proves no
// block now: a loss seen while the notice's block is in the blocked set
// must not write it back (it did: the workload blocked again on every
// instance, for good, by a notice).
func TestRevocationCacheReplayedBlockNoticeOfLiftedBlockWritesNoBlock(t *testing.T) {
	f := newLossFixture(t)
	if err := f.st.DeleteBlock(f.ctx, "w1", "rev_1"); err != nil { // another instance's unblock
		t.Fatal(err)
	}
	for range 3 {
		f.advance(time.Second)
		if err := f.c.Refresh(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if f.c.Blocked("w1") {
		t.Fatalf("Blocked(w1) = true after its unblock")
	}
	f.c.Apply(broker.Notice{RevocationID: "rev_1", Blocked: []string{"w1"}}) // replayed
	empty := memstore.New(f.clock)
	f.st.swap(empty)
	for range 2 {
		f.advance(time.Second)
		if err := f.c.Refresh(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.c.StoreLosses(); n < 1 {
		t.Fatalf("StoreLosses() = %d, want the loss seen", n)
	}
	if b, err := empty.GetBlock(f.ctx, "w1"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Store GetBlock(w1) = %+v, %v after a replayed notice of its lifted block; want not found", b, err)
	}
	if b, err := empty.GetBlock(f.ctx, "w2"); err != nil || b.RevocationID != "rev_2" {
		t.Errorf("Store GetBlock(w2) = %+v, %v; want rev_2's block written back", b, err)
	}
}

// downListStore fails ListBlocks while down (Redis unreachable during a
// failover).
type downListStore struct {
	broker.Store
	down atomic.Bool
}

func (s *downListStore) ListBlocks(ctx context.Context) ([]broker.Block, error) {
	if s.down.Load() {
		return nil, errors.New("store unreachable")
	}
	return s.Store.ListBlocks(ctx)
}

// TestRevocationCacheRecordBackedBlockSurvivesFailingRefreshes: a block
// another instance made (its notice) whose record the last refresh read
// but whose block it did not list is written back after a failover, also
// when refreshes fail while Redis is unreachable before the replica
// answers (what backs it is the record read by the last refresh that
// ended, not a count of refreshes).
func TestRevocationCacheRecordBackedBlockSurvivesFailingRefreshes(t *testing.T) {
	f := newLossFixture(t)
	rev3 := &broker.Revocation{ID: "rev_3", Selector: broker.RevokeSelector{Workload: "w3"}, Reason: "INC-3", Block: true, CreatedAt: f.clock(),
		Revoked: []string{}, Pending: []string{"iss_w3"}, Failed: []broker.RevokeFailure{}, Blocks: []string{"w3"}}
	if err := f.st.PutRevocation(f.ctx, rev3); err != nil {
		t.Fatal(err)
	}
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil { // reads rev_3
		t.Fatal(err)
	}
	if err := f.st.PutBlock(f.ctx, broker.Block{Workload: "w3", Reason: "INC-3", RevocationID: "rev_3", CreatedAt: f.clock()}); err != nil {
		t.Fatal(err)
	}
	f.c.Apply(broker.Notice{RevocationID: "rev_3", Blocked: []string{"w3"}})
	replica := memstore.New(f.clock)
	for i := range f.revs {
		if err := replica.PutBlock(f.ctx, f.revsBlock(i)); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 {
		for _, r := range f.revs {
			if err := replica.PutRevocation(f.ctx, r); err != nil {
				t.Fatal(err)
			}
		}
	}
	down := &downListStore{Store: replica}
	down.down.Store(true)
	f.st.swap(down)
	for range 3 {
		f.advance(time.Second)
		if err := f.c.Refresh(f.ctx); err == nil {
			t.Fatal("Refresh() = nil while the store is down")
		}
	}
	down.down.Store(false)
	for range 2 {
		f.advance(time.Second)
		if err := f.c.Refresh(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if b, err := replica.GetBlock(f.ctx, "w3"); err != nil || b.RevocationID != "rev_3" {
		t.Errorf("Store GetBlock(w3) = %+v, %v; want rev_3's block written back", b, err)
	}
}
