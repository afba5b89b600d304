package broker_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// lastResult is the last revoke_result event of revocation id.
func lastResult(t *testing.T, f *revFixture, id string) *audit.Event {
	t.Helper()
	evs := f.sink.Events()
	for i := len(evs) - 1; i >= 0; i-- {
		if evs[i].Type == "revoke_result" && evs[i].RevocationID == id {
			return evs[i]
		}
	}
	t.Fatalf("no revoke_result of %s", id)
	return nil
}

// TestWorkerProgressUnconfirmed: the worker's progress write, like
// Revoke's, may be applied on the primary and answered store_unreplicated
// (store.min_replicas, a replica down). It used to return that error and
// write no revoke_result; the write had completed the record, so no pass
// ever looked at the revocation again: its last revoke_result said pending
// for good while GET /v1/admin/revocations/{id} said complete, and a mark
// the worker found stored (another revocation's, or its own whose write
// was not confirmed) was settled revoked with nothing confirming it.
//
// Now a mark found stored stays pending in the record until a progress
// write of the worker is acknowledged (which confirms it), and a mark the
// worker wrote itself, confirmed by its own write, is reported revoked by
// the worker's revoke_result even when the progress write fails. Either
// way the revocation's last revoke_result ends agreeing with the record.
func TestWorkerProgressUnconfirmed(t *testing.T) {
	tests := []struct {
		name string
		// setup runs before Revoke; the issuance is then pending in
		// the record, for the worker.
		setup func(t *testing.T, f *revFixture, us *faultStore, id string)
		// found: the worker finds the mark stored; until an acknowledged
		// progress write it stays pending. Otherwise the worker writes
		// the mark itself, confirmed, and reports it revoked at once.
		found bool
		// workerMark is the MarkRevoked mode of the worker's pass
		// (markOK when zero).
		workerMark int32
	}{
		{"found-other-mark", func(t *testing.T, f *revFixture, us *faultStore, id string) {
			markByOther(t, f, id)
			us.failUpdates(updateUnreplicated, -1) // Revoke's too: pending in the record
		}, true, markOK},
		{"found-own-mark-unconfirmed", func(t *testing.T, f *revFixture, us *faultStore, id string) {
			us.mark.Store(markUnreplicated)
			us.failUpdates(updateUnreplicated, -1)
		}, true, markOK},
		{"own-mark-written-by-worker", func(t *testing.T, f *revFixture, us *faultStore, id string) {
			us.mark.Store(markFails)
		}, false, markOK},
		// The worker finds, stored meanwhile, a mark carrying the
		// revocation's own id that another instance's worker wrote
		// without its write being confirmed: found, not its own write.
		{"own-mark-raced-by-another-instance", func(t *testing.T, f *revFixture, us *faultStore, id string) {
			us.mark.Store(markFails)
		}, true, markRaced},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			f, us := newFaultFixture(t, true)
			is := f.issue(t, "payments")
			tt.setup(t, f, us, is.ID)
			rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "INC-30", broker.RevokeOptions{}, "req_1")
			if err != nil {
				t.Fatalf("Revoke() = %v", err)
			}
			if stored, err := f.mem.GetRevocation(ctx, rev.ID); err != nil || !slices.Equal(stored.Pending, []string{is.ID}) {
				t.Fatalf("stored revocation after Revoke: %+v, %v; want %s pending for the worker", stored, err, is.ID)
			}

			// The worker's pass, the replica still down: its progress
			// write is applied but not confirmed.
			us.mark.Store(tt.workerMark)
			us.failUpdates(updateUnreplicated, -1)
			w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			f.advance(time.Second)
			if err := w.Tick(ctx); !errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("worker pass with its progress write unconfirmed = %v, want ErrUnavailable", err)
			}
			stored, err := f.mem.GetRevocation(ctx, rev.ID)
			if err != nil {
				t.Fatal(err)
			}
			last := lastResult(t, f, rev.ID)
			revoked, _ := last.Details["revoked"].([]string)
			pending, _ := last.Details["pending"].([]string)
			if tt.found {
				// Nothing acknowledged covers the found mark: pending in
				// the record and in the audit, for the next pass.
				if !slices.Equal(stored.Pending, []string{is.ID}) || !stored.CompletedAt.IsZero() {
					t.Errorf("stored revocation after the unconfirmed worker pass: revoked %v, pending %v, completed %v; want %s still pending",
						stored.Revoked, stored.Pending, stored.CompletedAt, is.ID)
				}
				if slices.Contains(revoked, is.ID) {
					t.Errorf("revoke_result after the unconfirmed worker pass lists %s revoked: no acknowledged write covers its mark", is.ID)
				}
			} else {
				// The worker's own mark was confirmed by its own write;
				// the record is complete (the write is on the primary),
				// and the worker's revoke_result must say so.
				if stored.CompletedAt.IsZero() || !slices.Equal(stored.Revoked, []string{is.ID}) {
					t.Errorf("stored revocation after the unconfirmed worker pass: revoked %v, pending %v, completed %v; want the write applied, %s revoked",
						stored.Revoked, stored.Pending, stored.CompletedAt, is.ID)
				}
				if last.Details["by"] != "worker" || !slices.Equal(revoked, []string{is.ID}) || len(pending) != 0 || last.Outcome.Status != 200 {
					t.Errorf("record complete after the unconfirmed worker pass, but the last revoke_result is by %v, %d, revoked %v, pending %v; want the worker's, 200, %s revoked",
						last.Details["by"], last.Outcome.Status, last.Details["revoked"], last.Details["pending"], is.ID)
				}
			}

			// The replica is back: the next pass (after the backoff)
			// confirms what is left.
			us.failUpdates(updateOK, 0)
			f.advance(time.Second)
			if err := w.Tick(ctx); err != nil {
				t.Fatal(err)
			}
			stored, err = f.mem.GetRevocation(ctx, rev.ID)
			if err != nil || !slices.Equal(stored.Revoked, []string{is.ID}) || len(stored.Pending) != 0 || stored.CompletedAt.IsZero() {
				t.Fatalf("stored revocation at the end: %+v, %v; want complete, %s revoked", stored, err, is.ID)
			}
			// The audit ends where the record does.
			last = lastResult(t, f, rev.ID)
			revoked, _ = last.Details["revoked"].([]string)
			pending, _ = last.Details["pending"].([]string)
			if last.Details["by"] != "worker" || last.Outcome.Status != 200 || !slices.Equal(revoked, []string{is.ID}) || len(pending) != 0 {
				t.Errorf("last revoke_result of %s = by %v, %d, revoked %v, pending %v; want the worker's, 200, %s revoked, as the record says",
					rev.ID, last.Details["by"], last.Outcome.Status, last.Details["revoked"], last.Details["pending"], is.ID)
			}
		})
	}
}
