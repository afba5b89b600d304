package broker_test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// nextUnconfirmedStore applies UpdateRevocation's write and then answers
// store_unreplicated for the next unconfirmed writes (all of them while it
// is negative), as redisstore does with store.min_replicas and a replica
// down.
type nextUnconfirmedStore struct {
	broker.Store
	unconfirmed atomic.Int32
}

func (s *nextUnconfirmedStore) UpdateRevocation(ctx context.Context, id string, fn func(*broker.Revocation) error) (*broker.Revocation, error) {
	r, err := s.Store.UpdateRevocation(ctx, id, fn)
	if err != nil {
		return r, err
	}
	switch n := s.unconfirmed.Load(); {
	case n == 0:
		return r, nil
	case n > 0:
		s.unconfirmed.Add(-1)
	}
	return nil, errUnreplicated()
}

// TestSweepWriteUnconfirmedKeepsSwept: the sweep's own write (adding what
// it found as pending, clearing SweepAt) may be applied on the primary and
// answered store_unreplicated. The pass used to stop there with no
// revoke_result; the record then listed the find as pending with the sweep
// done, so the next pass finished it as a plain pending id (by worker) and
// no revoke_result ever named it under swept. Now the pass goes on from
// the record as written and its revoke_result (by sweep) names it, whether
// its progress write is confirmed (the replica back) or not.
func TestSweepWriteUnconfirmedKeepsSwept(t *testing.T) {
	for _, tc := range []struct {
		name        string
		unconfirmed int32 // UpdateRevocation writes answered store_unreplicated in the sweep's pass
		wantErr     bool  // the pass reports its progress write failed
	}{
		{"sweep-write-only", 1, false},
		{"replica-down", -1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			var us *nextUnconfirmedStore
			f := newRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
				us = &nextUnconfirmedStore{Store: st}
				return us
			})
			a := f.issue(t, "payments")
			rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "INC-50", broker.RevokeOptions{}, "req_1")
			if err != nil || !slices.Equal(rev.Revoked, []string{a.ID}) || rev.SweepAt.IsZero() {
				t.Fatalf("Revoke() = %+v, %v; want %s revoked, a sweep due", rev, err, a.ID)
			}
			// Issued as the revocation selected: the sweep's to find.
			b := f.issue(t, "payments")

			w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			f.mu.Lock()
			f.now = rev.SweepAt
			f.mu.Unlock()
			us.unconfirmed.Store(tc.unconfirmed)
			events := len(f.sink.Events())
			err = w.Tick(ctx)
			if tc.wantErr != (err != nil) || (err != nil && !errors.Is(err, broker.ErrUnavailable)) {
				t.Fatalf("the sweep's pass = %v, want an error: %v", err, tc.wantErr)
			}
			us.unconfirmed.Store(0)

			var swept []string
			for _, ev := range f.sink.Events()[events:] {
				if ev.Type == "revoke_result" && ev.RevocationID == rev.ID && ev.Details["by"] == "sweep" {
					swept = append(swept, ev.Details["swept"].([]string)...)
					if revoked, _ := ev.Details["revoked"].([]string); !slices.Contains(revoked, b.ID) || ev.Outcome.Status != 200 {
						t.Errorf("revoke_result by sweep: %d, revoked %v, pending %v; want 200, %s revoked",
							ev.Outcome.Status, ev.Details["revoked"], ev.Details["pending"], b.ID)
					}
				}
			}
			if !slices.Equal(swept, []string{b.ID}) {
				t.Errorf("revoke_result by sweep after the pass whose sweep write was unconfirmed names %v under swept, want [%s]", swept, b.ID)
			}
			if !slices.Contains(f.rv.Calls(), b.ID) {
				t.Errorf("backend revocations %v, want %s ended by the sweep's pass", f.rv.Calls(), b.ID)
			}
			stored, err := f.mem.GetRevocation(ctx, rev.ID)
			if err != nil || !slices.Contains(stored.Revoked, b.ID) || len(stored.Pending) != 0 || stored.CompletedAt.IsZero() {
				t.Errorf("stored revocation: %+v, %v; want %s revoked, complete", stored, err, b.ID)
			}
		})
	}
}
