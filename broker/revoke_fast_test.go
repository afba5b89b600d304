package broker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
)

// countingStore counts the reads the fast path must avoid.
type countingStore struct {
	broker.Store
	finds, blocks atomic.Int64
}

func (c *countingStore) FindIssuance(ctx context.Context, k broker.RefKind, v string) (*broker.Issuance, error) {
	c.finds.Add(1)
	return c.Store.FindIssuance(ctx, k, v)
}

func (c *countingStore) GetBlock(ctx context.Context, w string) (*broker.Block, error) {
	c.blocks.Add(1)
	return c.Store.GetBlock(ctx, w)
}

// fastReadsCache puts in inner a proxy issuance, iss_1 of workload w
// (fingerprint sha256:aa, an hour to live), and returns a RevocationCache
// with FastReads (IssuanceTTL a minute) in front of inner, and the issuance.
func fastReadsCache(t *testing.T, inner broker.Store, clock func() time.Time) (*broker.RevocationCache, *broker.Issuance) {
	t.Helper()
	now := clock()
	is := &broker.Issuance{ID: "iss_1", Workload: "w", Owner: "o", Kind: broker.KindProxy, IssuedAt: now,
		ExpiresAt: now.Add(time.Hour), Refs: broker.CredentialRefs{Fingerprint: "sha256:aa", ExpiresAt: now.Add(time.Hour)}}
	if err := inner.PutIssuance(context.Background(), is); err != nil {
		t.Fatal(err)
	}
	c, err := broker.NewRevocationCache(inner, broker.CacheOptions{FastReads: true, Now: clock, IssuanceTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return c, is
}

func TestRevocationCacheFastReads(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	inner := &countingStore{Store: memstore.New(clock)}
	c, is := fastReadsCache(t, inner, clock)
	st := c.Store()

	// Before the first refresh the view is not fresh: Store reads.
	if _, err := st.GetBlock(ctx, "w"); !errors.Is(err, broker.ErrNotFound) || inner.blocks.Load() != 1 {
		t.Fatalf("GetBlock before refresh = %v, store reads %d; want ErrNotFound from the store", err, inner.blocks.Load())
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	// Every exchange and proxied request asks; a fresh view answers
	// "not blocked" without allocating.
	if n := testing.AllocsPerRun(100, func() { _, _ = st.GetBlock(ctx, "w") }); n != 0 {
		t.Errorf("GetBlock from a fresh view: %v allocations, want 0", n)
	}
	steps := []struct {
		name       string
		do         func()
		wantFinds  int64
		wantBlocks int64
		revoked    bool
	}{
		{name: "ok/first-find-reads-store", wantFinds: 1, wantBlocks: 1},
		{name: "ok/second-find-from-cache", wantFinds: 1, wantBlocks: 1},
		{name: "fail/revoked-notice-overlays-cached-record", do: func() {
			// What Revoke does: mark the record durably, then announce.
			r := *is
			r.RevokedAt = now
			_ = inner.PutIssuance(ctx, &r)
			c.Apply(broker.Notice{Revoked: []string{"iss_1"}})
		}, wantFinds: 1, wantBlocks: 1, revoked: true},
		// The record is 59.5 s old at the refresh (its sweep keeps it)
		// and 60.5 s old at the find, with the view fresh: past
		// IssuanceTTL it is read again all the same.
		{name: "ok/past-issuance-ttl-before-its-sweep-store-read-again", do: func() {
			now = now.Add(59500 * time.Millisecond)
			_ = c.Refresh(ctx)
			now = now.Add(time.Second)
		}, wantFinds: 2, wantBlocks: 1, revoked: true},
		{name: "ok/after-issuance-ttl-store-read-again", do: func() { now = now.Add(61 * time.Second); _ = c.Refresh(ctx) }, wantFinds: 3, wantBlocks: 1, revoked: true},
		{name: "ok/stale-view-falls-back-to-store", do: func() { now = now.Add(3 * time.Second) }, wantFinds: 4, wantBlocks: 2, revoked: true},
	}
	for _, s := range steps {
		if s.do != nil {
			s.do()
		}
		got, err := st.FindIssuance(ctx, broker.RefFingerprint, "sha256:aa")
		if err != nil {
			t.Fatalf("%s: FindIssuance = %v", s.name, err)
		}
		if got.RevokedAt.IsZero() == s.revoked {
			t.Errorf("%s: revoked = %v, want %v", s.name, !got.RevokedAt.IsZero(), s.revoked)
		}
		if _, err := st.GetBlock(ctx, "w"); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("%s: GetBlock = %v, want ErrNotFound", s.name, err)
		}
		if f, b := inner.finds.Load(), inner.blocks.Load(); f != s.wantFinds || b != s.wantBlocks {
			t.Errorf("%s: store reads finds=%d blocks=%d, want %d/%d", s.name, f, b, s.wantFinds, s.wantBlocks)
		}
	}
	// A block announced to this instance is seen without a Store read.
	_ = c.Refresh(ctx)
	c.Apply(broker.Notice{Blocked: []string{"w"}})
	before := inner.blocks.Load()
	if b, err := st.GetBlock(ctx, "w"); err != nil || b.Workload != "w" || inner.blocks.Load() != before {
		t.Errorf("GetBlock after a block notice = %+v, %v (store reads +%d); want the block from memory", b, err, inner.blocks.Load()-before)
	}
}

// TestRevocationCacheSweepsIssuances: records older than IssuanceTTL leave
// the FastReads cache at the next refresh, and it never holds more than
// MaxIssuances.
func TestRevocationCacheSweepsIssuances(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	inner := memstore.New(clock)
	c, err := broker.NewRevocationCache(inner, broker.CacheOptions{FastReads: true, Now: clock, IssuanceTTL: time.Minute, MaxIssuances: 4})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	st := c.Store()
	find := func(i int) {
		t.Helper()
		fp := fmt.Sprintf("sha256:%02d", i)
		is := &broker.Issuance{ID: fmt.Sprintf("iss_%d", i), Workload: "w", Owner: "o", Kind: broker.KindProxy, IssuedAt: now,
			ExpiresAt: now.Add(time.Hour), Refs: broker.CredentialRefs{Fingerprint: fp, ExpiresAt: now.Add(time.Hour)}}
		if err := inner.PutIssuance(ctx, is); err != nil {
			t.Fatal(err)
		}
		if _, err := st.FindIssuance(ctx, broker.RefFingerprint, fp); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 3 {
		find(i)
	}
	if n := c.CachedIssuances(); n != 3 {
		t.Fatalf("cached = %d, want 3", n)
	}
	now = now.Add(30 * time.Second)
	find(3)
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if n := c.CachedIssuances(); n != 4 {
		t.Errorf("cached after a refresh within the TTL = %d, want 4", n)
	}
	now = now.Add(31 * time.Second) // the first three are 61 s old, the fourth 31 s
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if n := c.CachedIssuances(); n != 1 {
		t.Errorf("cached after the TTL = %d, want 1 (the fresh one)", n)
	}
	for i := 10; i < 20; i++ {
		find(i)
		if n := c.CachedIssuances(); n > 4 {
			t.Fatalf("cached = %d, want at most MaxIssuances (4)", n)
		}
	}
}

// swapStore lets a test replace the Store's data at once, as a Redis that
// restarted without its data (or failed over to a replica that had not
// seen the last writes) does.
type swapStore struct {
	mu sync.Mutex
	st broker.Store
}

func (s *swapStore) cur() broker.Store    { s.mu.Lock(); defer s.mu.Unlock(); return s.st }
func (s *swapStore) swap(st broker.Store) { s.mu.Lock(); s.st = st; s.mu.Unlock() }
func (s *swapStore) PutIssuance(ctx context.Context, is *broker.Issuance) error {
	return s.cur().PutIssuance(ctx, is)
}
func (s *swapStore) MarkRevoked(ctx context.Context, is *broker.Issuance) (*broker.Issuance, error) {
	return s.cur().MarkRevoked(ctx, is)
}
func (s *swapStore) GetIssuance(ctx context.Context, id string) (*broker.Issuance, error) {
	return s.cur().GetIssuance(ctx, id)
}
func (s *swapStore) FindIssuance(ctx context.Context, k broker.RefKind, v string) (*broker.Issuance, error) {
	return s.cur().FindIssuance(ctx, k, v)
}
func (s *swapStore) FindIssuances(ctx context.Context, k broker.RefKind, v []string) ([]*broker.Issuance, error) {
	return s.cur().FindIssuances(ctx, k, v)
}
func (s *swapStore) ListIssuances(ctx context.Context, f broker.IssuanceFilter) ([]*broker.Issuance, error) {
	return s.cur().ListIssuances(ctx, f)
}
func (s *swapStore) PutRevocation(ctx context.Context, r *broker.Revocation) error {
	return s.cur().PutRevocation(ctx, r)
}
func (s *swapStore) UpdateRevocation(ctx context.Context, id string, fn func(*broker.Revocation) error) (*broker.Revocation, error) {
	return s.cur().UpdateRevocation(ctx, id, fn)
}
func (s *swapStore) GetRevocation(ctx context.Context, id string) (*broker.Revocation, error) {
	return s.cur().GetRevocation(ctx, id)
}
func (s *swapStore) ListRevocations(ctx context.Context, f broker.RevocationFilter) ([]*broker.Revocation, error) {
	return s.cur().ListRevocations(ctx, f)
}
func (s *swapStore) RevocationVersion(ctx context.Context) (uint64, error) {
	return s.cur().RevocationVersion(ctx)
}
func (s *swapStore) PutBlock(ctx context.Context, b broker.Block) error {
	return s.cur().PutBlock(ctx, b)
}
func (s *swapStore) DeleteBlock(ctx context.Context, w, revocationID string) error {
	return s.cur().DeleteBlock(ctx, w, revocationID)
}
func (s *swapStore) GetBlock(ctx context.Context, w string) (*broker.Block, error) {
	return s.cur().GetBlock(ctx, w)
}
func (s *swapStore) ListBlocks(ctx context.Context) ([]broker.Block, error) {
	return s.cur().ListBlocks(ctx)
}
func (s *swapStore) DeploymentID(ctx context.Context) (string, error) {
	return s.cur().DeploymentID(ctx)
}
func (s *swapStore) PutRetiringKey(ctx context.Context, name string, until time.Time) error {
	return s.cur().PutRetiringKey(ctx, name, until)
}
func (s *swapStore) RetiringKeys(ctx context.Context, now time.Time) (map[string]time.Time, error) {
	return s.cur().RetiringKeys(ctx, now)
}
func (s *swapStore) Ping(ctx context.Context) error { return s.cur().Ping(ctx) }

// TestRevocationCacheStoreDataLoss: after the Store's data goes back (its
// RevocationVersion drops), the cache drops the FastReads issuance records
// it read before, and keeps denying the ids it had learned as revoked
// (within the Window), also through later full reads. It used to keep the
// records, so a credential fetched (active) shortly before its revocation
// was answered active for the rest of IssuanceTTL, and to replace the
// revoked set with what the Store still had. Found in review.
func TestRevocationCacheStoreDataLoss(t *testing.T) {
	for _, tt := range []struct {
		name  string
		after time.Duration // from the revocation to the refresh after the loss
	}{
		{"seen-by-a-refresh", time.Second},
		{"seen-first-by-a-due-full-read", 61 * time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			var mu sync.Mutex
			now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
			clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

			st := &swapStore{st: memstore.New(clock)}
			c, err := broker.NewRevocationCache(st, broker.CacheOptions{FastReads: true, Now: clock, IssuanceTTL: 5 * time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			is := &broker.Issuance{ID: "iss_x", Workload: "w", Owner: "o", Kind: broker.KindProxy, IssuedAt: clock(),
				ExpiresAt: clock().Add(time.Hour), Refs: broker.CredentialRefs{Fingerprint: "sha256:x", ExpiresAt: clock().Add(time.Hour)}}
			if err := st.PutIssuance(ctx, is); err != nil {
				t.Fatal(err)
			}
			if err := c.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			cs := c.Store()
			if got, err := cs.FindIssuance(ctx, broker.RefFingerprint, "sha256:x"); err != nil || !got.Active(clock()) {
				t.Fatalf("before revocation: %v, %v", got, err)
			}
			// Revoked (record first, then the mark), and the cache learns it.
			if err := st.PutRevocation(ctx, &broker.Revocation{ID: "rev_1", CreatedAt: clock(), Pending: []string{"iss_x"},
				Revoked: []string{}, Failed: []broker.RevokeFailure{}}); err != nil {
				t.Fatal(err)
			}
			m := *is
			m.RevokedAt, m.RevocationID = clock(), "rev_1"
			if err := st.PutIssuance(ctx, &m); err != nil {
				t.Fatal(err)
			}
			advance(time.Second)
			if err := c.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			if got, _ := cs.FindIssuance(ctx, broker.RefFingerprint, "sha256:x"); got.Active(clock()) {
				t.Fatal("cache does not deny the revoked credential")
			}

			// Redis restarts without its data.
			st.swap(memstore.New(clock))
			advance(tt.after)
			if err := c.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			if !c.Revoked("iss_x") {
				t.Errorf("Revoked(iss_x) = false after the Store lost the revocation; want the cache to keep denying it")
			}
			if got, err := cs.FindIssuance(ctx, broker.RefFingerprint, "sha256:x"); !errors.Is(err, broker.ErrNotFound) {
				t.Errorf("after the Store lost its data: FindIssuance = %+v, %v; want not found, as the Store says (no record read before the loss)", got, err)
			}
			// The issuance comes back unrevoked (restored from an older
			// copy): still denied.
			if err := st.PutIssuance(ctx, is); err != nil {
				t.Fatal(err)
			}
			if got, err := cs.FindIssuance(ctx, broker.RefFingerprint, "sha256:x"); err != nil || got.Active(clock()) {
				t.Errorf("restored unrevoked record: FindIssuance = %+v, %v; want it denied", got, err)
			}
			// A later full read keeps it too.
			advance(2 * time.Minute)
			if err := c.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			if !c.Revoked("iss_x") {
				t.Errorf("Revoked(iss_x) = false after a later full read; want it kept for the Window")
			}
		})
	}
}

// TestFindIssuanceWithinFromMemoryShared: the proxy's credential lookup
// (Service.FindIssuanceWithin) answered from the cache's memory hands back
// the cached record itself, read only, rather than a copy per request
// (the record is some 500 bytes): no allocation. A revocation the cache
// knows still shows in what it returns, on a copy: the cached record,
// which other lookups share, is not changed.
func TestFindIssuanceWithinFromMemoryShared(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	now := f.now
	clock := func() time.Time { return now }
	c, _ := fastReadsCache(t, memstore.New(clock), clock)
	svc, err := broker.NewService(broker.Deps{
		Policy: f.svc.Policy, Authn: func() broker.Authenticator { return f.authn },
		Store: c.Store(), Audit: f.sink, Now: clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	find := func() *broker.Issuance {
		t.Helper()
		got, err := svc.FindIssuanceWithin(ctx, broker.RefFingerprint, "sha256:aa", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	first := find() // fetched from the Store into the cache
	cached := find()
	if n := testing.AllocsPerRun(100, func() { _ = find() }); n != 0 {
		t.Errorf("FindIssuanceWithin from memory: %v allocations, want 0", n)
	}
	if cached.ID != "iss_1" || !cached.RevokedAt.IsZero() || first.ID != "iss_1" {
		t.Fatalf("record from memory = %+v", cached)
	}

	c.Apply(broker.Notice{Revoked: []string{"iss_1"}})
	revoked := find()
	if revoked.RevokedAt.IsZero() || revoked.ID != "iss_1" {
		t.Errorf("after a revocation notice: RevokedAt %v, ID %q; want the revocation shown", revoked.RevokedAt, revoked.ID)
	}
	if !cached.RevokedAt.IsZero() {
		t.Errorf("the record handed out before the notice changed: RevokedAt %v", cached.RevokedAt)
	}
}
