package memstore_test

import (
	"errors"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/adapters/storetest"
	"github.com/keytrail/keytrail/broker"
)

func TestContract(t *testing.T) {
	storetest.Run(t, func(t *testing.T) broker.Store {
		return memstore.New(storetest.Epoch)
	})
}

func TestNewNilClock(t *testing.T) {
	s := memstore.New(nil)
	if err := s.Ping(t.Context()); err != nil {
		t.Errorf("New(nil).Ping() = %v, want nil", err)
	}
}

func TestPrune(t *testing.T) {
	now := storetest.Epoch()
	for _, c := range []struct {
		name       string
		before     time.Time
		wantPruned int
		wantLeft   []string
	}{
		{"ok/nothing-expired-yet", now.Add(-2 * time.Hour), 0, []string{"iss_old", "iss_mid", "iss_new"}},
		{"ok/prunes-strictly-before", now.Add(-time.Hour), 0, []string{"iss_old", "iss_mid", "iss_new"}},
		{"ok/prunes-old", now.Add(-time.Hour + time.Nanosecond), 1, []string{"iss_mid", "iss_new"}},
		{"ok/prunes-old-and-mid", now.Add(time.Minute), 2, []string{"iss_new"}},
		{"ok/prunes-all", now.Add(24 * time.Hour), 3, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			s := memstore.New(storetest.Epoch)
			for id, exp := range map[string]time.Time{"iss_old": now.Add(-time.Hour), "iss_mid": now, "iss_new": now.Add(time.Hour)} {
				is := storetest.SampleIssuance(id, exp.Add(-15*time.Minute))
				if err := s.PutIssuance(t.Context(), is); err != nil {
					t.Fatalf("PutIssuance(%s) = %v", id, err)
				}
			}
			if got := s.Prune(c.before); got != c.wantPruned {
				t.Errorf("Prune(%v) = %d, want %d", c.before, got, c.wantPruned)
			}
			list, err := s.ListIssuances(t.Context(), broker.IssuanceFilter{Workload: "payments-api"})
			if err != nil {
				t.Fatalf("ListIssuances() = %v", err)
			}
			var left []string
			for _, is := range list {
				left = append(left, is.ID)
			}
			if d := cmp.Diff(c.wantLeft, left); d != "" {
				t.Errorf("ListIssuances() after Prune(%v) (-want +got):\n%s", c.before, d)
			}
			// Pruned issuances are gone from the ref indexes too.
			_, err = s.FindIssuance(t.Context(), broker.RefAccessor, "acc-iss_old")
			if gotFound, wantFound := err == nil, c.wantPruned == 0; gotFound != wantFound {
				t.Errorf("FindIssuance(accessor, acc-iss_old) after Prune(%v) = %v, want found=%v", c.before, err, wantFound)
			}
		})
	}
}

// TestRunPrune: at each tick, issuances that expired more than the
// retention ago (by the store's clock) go; younger ones stay.
func TestRunPrune(t *testing.T) {
	now := storetest.Epoch()
	var clock atomic.Int64 // the prune goroutine reads it
	clock.Store(now.UnixNano())
	s := memstore.New(func() time.Time { return time.Unix(0, clock.Load()) })
	for id, exp := range map[string]time.Time{"iss_old": now.Add(-2 * time.Hour), "iss_recent": now.Add(-30 * time.Minute), "iss_live": now.Add(time.Hour)} {
		if err := s.PutIssuance(t.Context(), storetest.SampleIssuance(id, exp.Add(-15*time.Minute))); err != nil {
			t.Fatalf("PutIssuance(%s) = %v", id, err)
		}
	}
	tick := make(chan time.Time) // unbuffered: a send returns once RunPrune took it
	done := make(chan error, 1)
	go func() { done <- s.RunPrune(t.Context(), tick, time.Hour) }()
	left := func() []string {
		list, err := s.ListIssuances(t.Context(), broker.IssuanceFilter{})
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, is := range list {
			ids = append(ids, is.ID)
		}
		slices.Sort(ids)
		return ids
	}
	tick <- now
	tick <- now // the first tick's prune is done once the second is taken
	if diff := cmp.Diff([]string{"iss_live", "iss_recent"}, left()); diff != "" {
		t.Errorf("after a tick with a 1h retention (-want +got):\n%s", diff)
	}
	clock.Store(now.Add(2 * time.Hour).UnixNano())
	tick <- now
	close(tick)
	if err := <-done; err != nil {
		t.Errorf("RunPrune() = %v, want nil once the tick channel closes", err)
	}
	if diff := cmp.Diff([]string{"iss_live"}, left()); diff != "" {
		t.Errorf("two hours later (-want +got):\n%s", diff)
	}
}

func TestPruneKeepsRevocationsAndBlocks(t *testing.T) {
	s := memstore.New(storetest.Epoch)
	ctx := t.Context()
	if err := s.PutRevocation(ctx, &broker.Revocation{ID: "rev_1", CreatedAt: storetest.Epoch().Add(-1000 * time.Hour)}); err != nil {
		t.Fatalf("PutRevocation = %v", err)
	}
	if err := s.PutBlock(ctx, broker.Block{Workload: "w", CreatedAt: storetest.Epoch().Add(-1000 * time.Hour)}); err != nil {
		t.Fatalf("PutBlock = %v", err)
	}
	s.Prune(storetest.Epoch().Add(1000 * time.Hour))
	if _, err := s.GetRevocation(ctx, "rev_1"); err != nil {
		t.Errorf("GetRevocation(rev_1) after Prune = %v, want nil", err)
	}
	if _, err := s.GetBlock(ctx, "w"); err != nil {
		t.Errorf("GetBlock(w) after Prune = %v, want nil", err)
	}
}

func BenchmarkPutIssuance(b *testing.B) {
	storetest.BenchPutIssuance(b, memstore.New(storetest.Epoch))
}

func BenchmarkGetIssuance(b *testing.B) {
	storetest.BenchGetIssuance(b, memstore.New(storetest.Epoch))
}

// TestFindIssuanceErrorHidesValue: the looked-up value may be a raw
// credential (a trace query); a miss's error does not quote it.
func TestFindIssuanceErrorHidesValue(t *testing.T) {
	const value = "db-password-MARKER-91f3"
	s := memstore.New(nil)
	for _, kind := range []broker.RefKind{broker.RefAccessor, broker.RefUsername, broker.RefLeaseID, broker.RefJTI, broker.RefRequestID} {
		_, err := s.FindIssuance(t.Context(), kind, value)
		if !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("FindIssuance(%s) = %v, want %v", kind, err, broker.ErrNotFound)
			continue
		}
		if strings.Contains(err.Error(), value) {
			t.Errorf("FindIssuance(%s) = %q, quotes the looked-up value", kind, err)
		}
	}
}

// TestAcksReplicas: the in-process store waits for no replica
// (broker.ReplicaAcker): the revocation flow counts a mark it finds stored
// as revoked at once.
func TestAcksReplicas(t *testing.T) {
	var st broker.Store = memstore.New(nil)
	a, ok := st.(broker.ReplicaAcker)
	if !ok {
		t.Fatalf("memstore.Store is not a broker.ReplicaAcker")
	}
	if a.AcksReplicas() {
		t.Errorf("AcksReplicas() = true, want false")
	}
}
