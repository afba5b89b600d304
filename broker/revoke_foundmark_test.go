package broker_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

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
	tests := []struct {
		name        string
		setup       func(t *testing.T, f *revFixture, fs *faultStore, id string)
		unconfirmed bool // the progress write is not confirmed
		wantPending bool
	}{
		{"found-by-mark/progress-unconfirmed", func(t *testing.T, f *revFixture, fs *faultStore, id string) {
			mark := func() { markByOther(t, f, id) }
			fs.markFirst.Store(&mark)
		}, true, true},
		{"read-marked/progress-unconfirmed", func(t *testing.T, f *revFixture, fs *faultStore, id string) {
			markByOther(t, f, id)
		}, true, true},
		{"found-by-mark/progress-confirmed", func(t *testing.T, f *revFixture, fs *faultStore, id string) {
			mark := func() { markByOther(t, f, id) }
			fs.markFirst.Store(&mark)
		}, false, false},
		{"own-mark/progress-unconfirmed", func(t *testing.T, f *revFixture, fs *faultStore, id string) {}, true, false},
		// A mark carrying the revocation's own id that another of its
		// writers (the worker, while Revoke still runs) stored first is
		// found too, not Revoke's own write.
		{"found-same-revocation-mark/progress-unconfirmed", func(t *testing.T, f *revFixture, fs *faultStore, id string) {
			fs.mark.Store(markRaced)
		}, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			f, fs := newFaultFixture(t, true)
			is := f.issue(t, "payments")
			tt.setup(t, f, fs, is.ID)
			if tt.unconfirmed {
				fs.failUpdates(updateUnreplicated, -1)
			}

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
			fs.failUpdates(updateOK, 0)
			fs.mark.Store(markOK)
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
	f, fs := newFaultFixture(t, true)
	is := f.issue(t, "payments")
	mark := func() { markByOther(t, f, is.ID) }
	fs.markFirst.Store(&mark)
	fs.failUpdates(updateUnreplicated, -1)

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

	fs.failUpdates(updateOK, 0)
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
