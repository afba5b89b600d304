package broker_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// TestFoundMarkNoReplicaAcks: a mark found stored (another revocation's, or
// the revocation's own written by Revoke and found by the worker) is held
// pending until a later acknowledged write confirms it only when the
// store's writes wait for replicas (store.min_replicas). A store that waits
// for none (memstore, redisstore with min_replicas 0) confirms nothing
// later than it applies it: the found mark counts as revoked at once, in
// one progress write, and an unapplied progress write no longer turns the
// answer into 202 pending for a worker pass to finish. (It did, at the
// cost of a second UpdateRevocation per pass that found a mark.) With
// replica acknowledgement the behaviour is unchanged.
func TestFoundMarkNoReplicaAcks(t *testing.T) {
	for _, acks := range []bool{false, true} {
		name := "no-replica-acks"
		if acks {
			name = "min-replicas"
		}
		t.Run(name, func(t *testing.T) {
			wantWrites := int32(1)
			if acks {
				wantWrites = 2 // the second settles the found mark, once the first is acknowledged
			}

			t.Run("revoke-found-mark", func(t *testing.T) {
				ctx := context.Background()
				f, fs := newFaultFixture(t, acks)
				is := f.issue(t, "payments")
				markByOther(t, f, is.ID)
				rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "INC-40", broker.RevokeOptions{}, "req_1")
				if err != nil {
					t.Fatalf("Revoke() = %v", err)
				}
				if !slices.Equal(rev.Revoked, []string{is.ID}) || len(rev.Pending) != 0 {
					t.Errorf("Revoke() answer: revoked %v, pending %v; want %s revoked", rev.Revoked, rev.Pending, is.ID)
				}
				if n := fs.updates.Load(); n != wantWrites {
					t.Errorf("Revoke() made %d UpdateRevocation calls, want %d", n, wantWrites)
				}
			})

			t.Run("revoke-found-mark-progress-refused", func(t *testing.T) {
				ctx := context.Background()
				f, fs := newFaultFixture(t, acks)
				is := f.issue(t, "payments")
				markByOther(t, f, is.ID)
				fs.failUpdates(updateRefused, -1)
				rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "INC-41", broker.RevokeOptions{}, "req_1")
				if err != nil {
					t.Fatalf("Revoke() = %v", err)
				}
				last := lastResult(t, f, rev.ID)
				if acks {
					// Nothing acknowledged covers the found mark.
					if !slices.Equal(rev.Pending, []string{is.ID}) || last.Outcome.Status != 202 {
						t.Errorf("Revoke() answer: revoked %v, pending %v, revoke_result %d; want %s pending, 202", rev.Revoked, rev.Pending, last.Outcome.Status, is.ID)
					}
					return
				}
				// The found mark is as confirmed as the store makes any
				// write: revoked, as an own mark is when the progress
				// write fails (the record is left to the worker).
				if !slices.Equal(rev.Revoked, []string{is.ID}) || len(rev.Pending) != 0 || last.Outcome.Status != 200 {
					t.Errorf("Revoke() answer: revoked %v, pending %v, revoke_result %d; want %s revoked, 200", rev.Revoked, rev.Pending, last.Outcome.Status, is.ID)
				}
			})

			t.Run("worker-finds-revoke-mark", func(t *testing.T) {
				ctx := context.Background()
				f, fs := newFaultFixture(t, acks)
				is := f.issue(t, "payments")
				f.rv.setErr(broker.Unavailable("vault_unavailable", time.Second, errors.New("connection refused")))
				rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "INC-42", broker.RevokeOptions{}, "req_1")
				if err != nil || !slices.Equal(rev.Pending, []string{is.ID}) {
					t.Fatalf("Revoke() = %+v, %v; want %s pending", rev, err, is.ID)
				}
				f.rv.setErr(nil)
				w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
				if err != nil {
					t.Fatal(err)
				}
				f.advance(time.Second)
				before := fs.updates.Load()
				if err := w.Tick(ctx); err != nil {
					t.Fatal(err)
				}
				if n := fs.updates.Load() - before; n != wantWrites {
					t.Errorf("the worker's pass made %d UpdateRevocation calls, want %d", n, wantWrites)
				}
				stored, err := f.mem.GetRevocation(ctx, rev.ID)
				if err != nil || !slices.Equal(stored.Revoked, []string{is.ID}) || stored.CompletedAt.IsZero() {
					t.Errorf("stored revocation after the worker's pass: %+v, %v; want complete, %s revoked", stored, err, is.ID)
				}
				last := lastResult(t, f, rev.ID)
				if last.Details["by"] != "worker" || last.Outcome.Status != 200 {
					t.Errorf("last revoke_result: by %v, %d; want the worker's, 200", last.Details["by"], last.Outcome.Status)
				}
			})
		})
	}
}
