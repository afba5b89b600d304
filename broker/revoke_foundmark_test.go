package broker_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// progressUnconfirmedStore applies UpdateRevocation's write and then, while
// progressUnreplicated is set, answers store_unreplicated, as redisstore
// does when fewer replicas than store.min_replicas acknowledged it: the
// revocation's progress write applied on the primary, not confirmed. The
// found-mark tests' store wrappers embed it.
type progressUnconfirmedStore struct {
	broker.Store
	progressUnreplicated atomic.Bool
}

func (s *progressUnconfirmedStore) UpdateRevocation(ctx context.Context, id string, fn func(*broker.Revocation) error) (*broker.Revocation, error) {
	r, err := s.Store.UpdateRevocation(ctx, id, fn)
	if err != nil || !s.progressUnreplicated.Load() {
		return r, err
	}
	return nil, errUnreplicated()
}

// markSameRevocationFirst stores in st, just before is's own mark, a mark
// of the same revocation a moment earlier: another writer of it (the worker
// of another instance, or the worker while Revoke still marks), whose write
// the caller's MarkRevoked then finds.
func markSameRevocationFirst(ctx context.Context, st broker.Store, is *broker.Issuance) error {
	other := *is
	other.RevokedAt = is.RevokedAt.Add(-time.Millisecond)
	_, err := st.MarkRevoked(ctx, &other)
	return err
}

// foundMarkStore lets a test put another revocation's mark in first and
// report the revocation's progress writes unreplicated.
type foundMarkStore struct {
	progressUnconfirmedStore
	// markFirst, when set, is run once before the next MarkRevoked.
	markFirst atomic.Pointer[func()]
	// sameIDFirst, when set, stores before the next MarkRevoked a mark of
	// the same revocation a moment earlier: the worker's, marking while
	// Revoke still runs, its write not confirmed.
	sameIDFirst atomic.Bool
}

func (s *foundMarkStore) MarkRevoked(ctx context.Context, is *broker.Issuance) (*broker.Issuance, error) {
	if f := s.markFirst.Swap(nil); f != nil {
		(*f)()
	}
	if s.sameIDFirst.Swap(false) {
		if err := markSameRevocationFirst(ctx, s.Store, is); err != nil {
			return nil, err
		}
	}
	return s.Store.MarkRevoked(ctx, is)
}

// TestRevokeFoundMarkUnconfirmed: a revocation that finds its issuance
// marked by another revocation (its MarkRevoked finds the mark, or it
// reads the issuance marked) wrote no mark of its own, and the store waits
// for no replica then: the other revocation's mark may be one its own
// write could not confirm (store.min_replicas). Only this revocation's
// progress write, confirmed, confirms it too (a replica that has it has
// every earlier write). When that write is not confirmed, the answer and
// the revoke_result must list the issuance pending, as the stored record
// does, not revoked: a failover may lose the mark. (It was reported
// revoked without any replica check.) The worker then finishes it. A
// mark the revocation wrote itself, confirmed by its own write, stays
// reported revoked.
func TestRevokeFoundMarkUnconfirmed(t *testing.T) {
	otherMark := func(f *revFixture, id string) {
		t.Helper()
		is, err := f.mem.GetIssuance(context.Background(), id)
		if err != nil {
			t.Fatal(err)
		}
		is.RevokedAt, is.RevocationID = f.clock(), "rev_other"
		if _, err := f.mem.MarkRevoked(context.Background(), is); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name        string
		setup       func(t *testing.T, f *revFixture, fs *foundMarkStore, id string)
		unconfirmed bool // the progress write is not confirmed
		wantPending bool
	}{
		{"found-by-mark/progress-unconfirmed", func(t *testing.T, f *revFixture, fs *foundMarkStore, id string) {
			mark := func() { otherMark(f, id) }
			fs.markFirst.Store(&mark)
		}, true, true},
		{"read-marked/progress-unconfirmed", func(t *testing.T, f *revFixture, fs *foundMarkStore, id string) {
			otherMark(f, id)
		}, true, true},
		{"found-by-mark/progress-confirmed", func(t *testing.T, f *revFixture, fs *foundMarkStore, id string) {
			mark := func() { otherMark(f, id) }
			fs.markFirst.Store(&mark)
		}, false, false},
		{"own-mark/progress-unconfirmed", func(t *testing.T, f *revFixture, fs *foundMarkStore, id string) {}, true, false},
		// A mark carrying the revocation's own id that another of its
		// writers (the worker, while Revoke still runs) stored first is
		// found too, not Revoke's own write.
		{"found-same-revocation-mark/progress-unconfirmed", func(t *testing.T, f *revFixture, fs *foundMarkStore, id string) {
			fs.sameIDFirst.Store(true)
		}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			var fs *foundMarkStore
			f := newRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
				fs = &foundMarkStore{progressUnconfirmedStore: progressUnconfirmedStore{Store: st}}
				return fs
			})
			is := f.issue(t, "payments")
			tt.setup(t, f, fs, is.ID)
			fs.progressUnreplicated.Store(tt.unconfirmed)

			rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "INC-20", broker.RevokeOptions{}, "req_1")
			if err != nil {
				t.Fatalf("Revoke() = %v", err)
			}
			evs := f.sink.Events()
			last := evs[len(evs)-1]
			pending, _ := last.Details["pending"].([]string)
			if tt.wantPending {
				if !slices.Equal(rev.Pending, []string{is.ID}) || len(rev.Revoked) != 0 {
					t.Errorf("Revoke() answer: revoked %v, pending %v; want %s pending (its mark found, unconfirmed)", rev.Revoked, rev.Pending, is.ID)
				}
				if last.Type != "revoke_result" || last.Outcome.Status != 202 || !slices.Equal(pending, []string{is.ID}) {
					t.Errorf("last event = %s %+v pending %v; want revoke_result 202, %s pending", last.Type, last.Outcome, last.Details["pending"], is.ID)
				}
			} else {
				if !slices.Equal(rev.Revoked, []string{is.ID}) || len(rev.Pending) != 0 {
					t.Errorf("Revoke() answer: revoked %v, pending %v; want %s revoked", rev.Revoked, rev.Pending, is.ID)
				}
				if last.Type != "revoke_result" || last.Outcome.Status != 200 || len(pending) != 0 {
					t.Errorf("last event = %s %+v pending %v; want revoke_result 200, nothing pending", last.Type, last.Outcome, last.Details["pending"])
				}
			}
			if !tt.wantPending {
				return
			}

			// What the answer says is what happens: the worker finishes it.
			fs.progressUnreplicated.Store(false)
			w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			f.advance(time.Second)
			if err := w.Tick(ctx); err != nil {
				t.Fatal(err)
			}
			stored, err := f.mem.GetRevocation(ctx, rev.ID)
			if err != nil || !slices.Equal(stored.Revoked, []string{is.ID}) || len(stored.Pending) != 0 {
				t.Errorf("after the worker: revocation %+v, %v; want %s revoked, nothing pending", stored, err, is.ID)
			}
		})
	}
}

// TestRevokeFoundMarkUnconfirmedWorkerFinishes: when the progress write of
// a revocation that found its issuance marked by another is applied but
// not confirmed (store_unreplicated: the write is on the primary, the
// replicas did not acknowledge it), the answer lists the issuance pending
// and says the worker finishes it. The stored record must then list it
// pending too, or no worker ever looks at it again: the revocation's last
// revoke_result would say pending for good while the record says
// complete. (The progress write settled it as revoked: the record was
// complete, no worker revoke_result followed.) Once the store confirms
// writes again, the worker's pass confirms the mark and its revoke_result
// (by worker) lists the issuance revoked.
func TestRevokeFoundMarkUnconfirmedWorkerFinishes(t *testing.T) {
	ctx := context.Background()
	var fs *foundMarkStore
	f := newRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
		fs = &foundMarkStore{progressUnconfirmedStore: progressUnconfirmedStore{Store: st}}
		return fs
	})
	is := f.issue(t, "payments")
	mark := func() {
		c, err := f.mem.GetIssuance(ctx, is.ID)
		if err != nil {
			t.Error(err)
			return
		}
		c.RevokedAt, c.RevocationID = f.clock(), "rev_other"
		if _, err := f.mem.MarkRevoked(ctx, c); err != nil {
			t.Error(err)
		}
	}
	fs.markFirst.Store(&mark)
	fs.progressUnreplicated.Store(true)

	rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "INC-21", broker.RevokeOptions{}, "req_1")
	if err != nil {
		t.Fatalf("Revoke() = %v", err)
	}
	if !slices.Equal(rev.Pending, []string{is.ID}) {
		t.Fatalf("Revoke() answer: revoked %v, pending %v; want %s pending", rev.Revoked, rev.Pending, is.ID)
	}
	stored, err := f.mem.GetRevocation(ctx, rev.ID)
	if err != nil || !slices.Equal(stored.Pending, []string{is.ID}) || !stored.CompletedAt.IsZero() {
		t.Errorf("stored revocation after the unconfirmed progress write: %+v, %v; want %s pending, as the answer says", stored, err, is.ID)
	}

	fs.progressUnreplicated.Store(false)
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(time.Second)
	if err := w.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	evs := f.sink.Events()
	last := evs[len(evs)-1]
	revoked, _ := last.Details["revoked"].([]string)
	if last.Type != "revoke_result" || last.RevocationID != rev.ID || last.Details["by"] != "worker" || !slices.Equal(revoked, []string{is.ID}) {
		t.Errorf("last event after the worker's pass = %s %s by %v revoked %v; want the worker's revoke_result of %s, %s revoked",
			last.Type, last.RevocationID, last.Details["by"], last.Details["revoked"], rev.ID, is.ID)
	}
}
