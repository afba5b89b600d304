package broker_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

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
		unconfirmed int  // UpdateRevocation writes answered store_unreplicated in the sweep's pass
		wantErr     bool // the pass reports its progress write failed
	}{
		{"sweep-write-only", 1, false},
		{"replica-down", -1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f, us := newFaultFixture(t, true)
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
			us.failUpdates(updateUnreplicated, tc.unconfirmed)
			events := len(f.sink.Events())
			err = w.Tick(ctx)
			if tc.wantErr != (err != nil) || (err != nil && !errors.Is(err, broker.ErrUnavailable)) {
				t.Fatalf("the sweep's pass = %v, want an error: %v", err, tc.wantErr)
			}
			us.failUpdates(updateOK, 0)

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
