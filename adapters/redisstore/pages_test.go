package redisstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
)

// newInternalStore opens a Store on a Redis of its own, for the tests that
// reach inside it.
func newInternalStore(t *testing.T, prefix string) *Store {
	t.Helper()
	r := harness.StartRedis(t)
	s, err := New(t.Context(), Options{URL: r.URL(), Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// TestPagesByScoreShifted: members added before the cursor while the pages
// are read (a revocation created earlier than the ones being listed) are
// not passed; every member present from the start is passed once, none
// twice.
func TestPagesByScoreShifted(t *testing.T) {
	s := newInternalStore(t, "{pages}:")
	ctx := context.Background()
	const key, n = "{pages}:z", 3*indexPage + 10
	for i := range n {
		if err := s.client.ZAdd(ctx, key, redis.Z{Score: float64(1000 + i), Member: fmt.Sprintf("m%05d", i)}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	seen := map[string]int{}
	page := 0
	err := s.pagesByScore(ctx, key, "1000", func(ids []string) (bool, error) {
		for _, id := range ids {
			seen[id]++
		}
		page++
		// After each page, members that sort before everything listed
		// so far: 3, then 5, then 1.
		for j := range []int{3, 5, 1, 0}[min(page-1, 3)] {
			if err := s.client.ZAdd(ctx, key, redis.Z{Score: float64(1000), Member: fmt.Sprintf("early%d_%d", page, j)}).Err(); err != nil {
				return false, err
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("pagesByScore() = %v", err)
	}
	for i := range n {
		if id := fmt.Sprintf("m%05d", i); seen[id] != 1 {
			t.Errorf("member %s passed %d times, want once", id, seen[id])
		}
	}
	for id, k := range seen {
		if k > 1 {
			t.Errorf("member %s passed %d times, want at most once", id, k)
		}
	}
}

// TestListRevocationsChangedWhileListing: an update moves a revocation to
// a higher change number. A listing of the change index that paged by rank
// skipped a member for each one that moved from before its cursor to after
// it; paging by score skips none and lists the moved one once.
func TestListRevocationsChangedWhileListing(t *testing.T) {
	s := newInternalStore(t, "{moved}:")
	ctx := context.Background()
	at := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	const n = 3*indexPage + 10
	var revs []*broker.Revocation
	for i := range n {
		r := &broker.Revocation{ID: fmt.Sprintf("rev_%05d", i), CreatedAt: at, Revoked: []string{fmt.Sprintf("iss_%05d", i)}}
		if err := s.PutRevocation(ctx, r); err != nil {
			t.Fatal(err)
		}
		revs = append(revs, r)
	}
	pages := 0
	s.afterPage = func() {
		pages++
		if pages == 1 { // the revocation worker updates ten already listed
			for _, r := range revs[:10] {
				r.CompletedAt = at.Add(time.Second)
				if err := s.PutRevocation(ctx, r); err != nil {
					t.Error(err)
				}
			}
		}
	}
	list, err := s.ListRevocations(ctx, broker.RevocationFilter{ChangedAfter: 0 + 1})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for _, r := range list {
		got[r.ID]++
	}
	for _, r := range revs[1:] { // change numbers start at 1; ChangedAfter 1 leaves the first out
		if got[r.ID] != 1 {
			t.Errorf("%s listed %d times, want once", r.ID, got[r.ID])
		}
	}
	if pages < 3 {
		t.Errorf("the listing took %d page boundaries, want at least 3", pages)
	}
}

// TestListRevocationsCorruptRecord: a revocation record that does not decode
// is reported as such (reason store_corrupt) from every listing path, not
// as Redis being unavailable.
func TestListRevocationsCorruptRecord(t *testing.T) {
	s := newInternalStore(t, "{corrupt}:")
	ctx := context.Background()
	at := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	if err := s.PutRevocation(ctx, &broker.Revocation{ID: "rev_good", CreatedAt: at, Revoked: []string{"iss_0"}}); err != nil {
		t.Fatal(err)
	}
	v, err := s.RevocationVersion(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutRevocation(ctx, &broker.Revocation{ID: "rev_bad", CreatedAt: at, Revoked: []string{"iss_1"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.client.Set(ctx, s.revKey("rev_bad"), "{not json", 0).Err(); err != nil {
		t.Fatal(err)
	}
	for _, f := range []broker.RevocationFilter{{}, {Pending: true}, {Since: at.Add(-time.Hour)}, {ChangedAfter: v}} {
		_, err := s.ListRevocations(ctx, f)
		if e := broker.AsError(err); err == nil || e.Reason != "store_corrupt" {
			t.Errorf("ListRevocations(%+v) = %v, want reason store_corrupt", f, err)
		}
	}
}

// TestListIssuancesPrunedWhileListing: every put prunes the oldest index
// members. A listing that pages by offset skipped as many members as a
// prune between two of its pages removed; paging by score skips none. The
// last page boundary also falls inside a run of equal scores.
func TestListIssuancesPrunedWhileListing(t *testing.T) {
	s := newInternalStore(t, "{prune}:")
	ctx := context.Background()
	exp := time.Now().Add(time.Hour).Truncate(time.Millisecond)
	const n = 3*indexPage + 5
	want := map[string]bool{}
	for i := range n {
		// Runs of three issuances share an expiry (and so a score).
		at := exp.Add(time.Duration(i/3) * time.Millisecond)
		is := &broker.Issuance{ID: fmt.Sprintf("iss_%05d", i), Workload: "app", IssuedAt: at.Add(-time.Hour), ExpiresAt: at,
			Refs: broker.CredentialRefs{Fingerprint: fmt.Sprintf("sha256:%05d", i), ExpiresAt: at}}
		if err := s.PutIssuance(ctx, is); err != nil {
			t.Fatal(err)
		}
		want[is.ID] = true
	}
	// Ten members old enough to be pruned by the next put.
	for i := range 10 {
		if err := s.client.ZAdd(ctx, s.allKey(), redis.Z{Score: float64(1000 + i), Member: fmt.Sprintf("iss_old%d", i)}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	pages := 0
	s.afterPage = func() {
		pages++
		if pages == 1 { // as a concurrent put's prune would
			if err := s.client.ZRemRangeByScore(ctx, s.allKey(), "-inf", "2000").Err(); err != nil {
				t.Error(err)
			}
		}
	}
	list, err := s.ListIssuances(ctx, broker.IssuanceFilter{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, is := range list {
		if got[is.ID] {
			t.Errorf("%s listed twice", is.ID)
		}
		got[is.ID] = true
	}
	for id := range want {
		if !got[id] {
			t.Errorf("%s not listed", id)
		}
	}
	if pages < 3 {
		t.Errorf("the listing took %d page boundaries, want at least 3 (the test must span pages)", pages)
	}
}
