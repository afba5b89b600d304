package broker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
)

// hookedListStore calls afterFull after a full read's listing of the
// revocations (no ChangedAfter), and beforeVersion before a
// RevocationVersion, each once when set.
type hookedListStore struct {
	*swapStore
	mu                       sync.Mutex
	afterFull, beforeVersion func()
}

func (s *hookedListStore) take(f *func()) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := *f
	*f = nil
	return h
}

func (s *hookedListStore) ListRevocations(ctx context.Context, f broker.RevocationFilter) ([]*broker.Revocation, error) {
	revs, err := s.swapStore.ListRevocations(ctx, f)
	if f.ChangedAfter == 0 {
		if h := s.take(&s.afterFull); h != nil {
			h()
		}
	}
	return revs, err
}

func (s *hookedListStore) RevocationVersion(ctx context.Context) (uint64, error) {
	if h := s.take(&s.beforeVersion); h != nil {
		h()
	}
	return s.swapStore.RevocationVersion(ctx)
}

// overlapFullReadAndListing advances a second, holds a refresh's listing
// before its version read, advances two minutes (a full read is due) and
// runs that full read. Once the full read has read the revocations, rev_p's
// progress (iss_p revoked) is written to base, duringFull runs, the listing
// resumes and ends, then afterListing runs (each hook when not nil). It
// returns once the full read has ended.
func overlapFullReadAndListing(ctx context.Context, t *testing.T, st *hookedListStore, base *memstore.Store, c *broker.RevocationCache, advance func(time.Duration), duringFull, afterListing func()) {
	t.Helper()
	advance(time.Second)
	resumeA, doneA, doneB := make(chan struct{}), make(chan error, 1), make(chan error, 1)
	started := make(chan struct{})
	st.mu.Lock()
	st.beforeVersion = func() { close(started); <-resumeA }
	st.mu.Unlock()
	go func() { doneA <- c.Refresh(ctx) }() // the listing, held before its version read
	<-started
	advance(2 * time.Minute) // a full read is due
	st.mu.Lock()
	st.afterFull = func() {
		// The full read has read rev_p; its progress is written, then
		// the listing reads it.
		if _, err := base.UpdateRevocation(ctx, "rev_p", func(r *broker.Revocation) error {
			r.Pending, r.Revoked = nil, []string{"iss_p"}
			return nil
		}); err != nil {
			t.Error(err)
		}
		if duringFull != nil {
			duringFull()
		}
		close(resumeA)
		if err := <-doneA; err != nil {
			t.Errorf("listing Refresh() = %v", err)
		}
		if afterListing != nil {
			afterListing()
		}
	}
	st.mu.Unlock()
	go func() { doneB <- c.Refresh(ctx) }()
	if err := <-doneB; err != nil {
		t.Fatal(err)
	}
}

// TestRevocationCacheFullReadDoesNotReplaceANewerListingCopy: a full read
// (in the background, as Run does) began while a refresh's listing was
// under way, read a record, and the record changed (its progress written)
// before that listing read it. The full read's older copy took the place
// of the listing's (same listing, taken for as recent); no later listing
// reads the record again (its change is older than the version they list
// from), so after a loss the old copy was written back, its progress gone.
func TestRevocationCacheFullReadDoesNotReplaceANewerListingCopy(t *testing.T) {
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
	overlapFullReadAndListing(ctx, t, st, base, c, advance, nil, nil)
	advance(time.Second)
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	// Redis restarts without its data.
	lost := memstore.New(clock)
	st.swap(lost)
	for range 3 {
		advance(time.Second)
		if err := c.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	got, err := lost.GetRevocation(ctx, "rev_p")
	if err != nil {
		t.Fatalf("GetRevocation(rev_p) after the write-back = %v", err)
	}
	if len(got.Pending) != 0 || len(got.Revoked) != 1 {
		t.Errorf("written back: pending %v, revoked %v; want the copy the listing read (iss_p revoked)", got.Pending, got.Revoked)
	}
}
