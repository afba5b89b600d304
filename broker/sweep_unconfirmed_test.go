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
//
// The same for a sweep write applied whose answer is lost to a timeout
// (context.DeadlineExceeded, the store timeout): only store_unreplicated
// counted as applied, so the pass stopped as for a write refused and the
// find lost its swept label. Now one read after the failed write shows
// the sweep done and the find listed, and the pass goes on from it.
func TestSweepWriteUnconfirmedKeepsSwept(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mode    int  // what the failing UpdateRevocation writes of the sweep's pass do
		n       int  // how many fail (negative: all)
		wantErr bool // the pass reports its progress write failed
	}{
		{"sweep-write-only", updateUnreplicated, 1, false},
		{"replica-down", updateUnreplicated, -1, true},
		{"sweep-write-timed-out", updateTimedOut, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f, us := newFaultFixture(t, true)
			rev := revokeSweepDue(t, f, "INC-50")
			// Issued as the revocation selected: the sweep's to find.
			b := f.issue(t, "payments")

			w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			f.mu.Lock()
			f.now = rev.SweepAt
			f.mu.Unlock()
			us.failUpdates(tc.mode, tc.n)
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

// TestSweepWriteRefusedSweepsAgain: a sweep write refused unapplied (the
// store read-only) while reads work is not taken for applied by the read
// that follows a failed sweep write: the pass stops, the record keeps the
// sweep due and lists nothing new, and the next pass sweeps again and
// names the find under swept. (A guard for the read that
// TestSweepWriteUnconfirmedKeepsSwept/sweep-write-timed-out relies on.)
func TestSweepWriteRefusedSweepsAgain(t *testing.T) {
	ctx := context.Background()
	f, fs := newFaultFixture(t, true)
	rev := revokeSweepDue(t, f, "INC-51")
	b := f.issue(t, "payments") // the sweep's to find
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.now = rev.SweepAt
	f.mu.Unlock()
	fs.failUpdates(updateRefused, 1)
	if err := w.Tick(ctx); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("the pass whose sweep write is refused = %v, want ErrUnavailable", err)
	}
	stored, err := f.mem.GetRevocation(ctx, rev.ID)
	if err != nil || stored.SweepAt.IsZero() || slices.Contains(stored.Pending, b.ID) || slices.Contains(f.rv.Calls(), b.ID) {
		t.Fatalf("after the refused sweep write: %+v, %v, backend calls %v; want the sweep still due, %s untouched", stored, err, f.rv.Calls(), b.ID)
	}

	f.advance(time.Minute)
	events := len(f.sink.Events())
	if err := w.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	var swept []string
	for _, ev := range f.sink.Events()[events:] {
		if ev.Type == "revoke_result" && ev.RevocationID == rev.ID && ev.Details["by"] == "sweep" {
			swept = append(swept, ev.Details["swept"].([]string)...)
		}
	}
	if !slices.Equal(swept, []string{b.ID}) {
		t.Errorf("revoke_result by sweep of the pass after the refused one names %v under swept, want [%s]", swept, b.ID)
	}
	stored, err = f.mem.GetRevocation(ctx, rev.ID)
	if err != nil || !slices.Contains(stored.Revoked, b.ID) || stored.CompletedAt.IsZero() {
		t.Errorf("stored revocation at the end: %+v, %v; want %s revoked, complete", stored, err, b.ID)
	}
}

// TestSweepWriteLostNotTakenForAnothers: a sweep write that fails after
// its function ran (the compare-and-set lost to another instance's write,
// then the store timeout) may be unapplied while the record read after it
// shows the sweep done and the find listed: another instance's sweep,
// which found the same issuance, wrote that. The read took it for this
// pass's own write, so this pass went on and its revoke_result (by sweep)
// named the find under swept a second time, next to the other instance's
// (and both passes ended it). Now the read tells the two apart: the sweep
// write carries an id of its own (Revocation.SweptBy), and only a record
// carrying this pass's id is taken for its write; otherwise the pass stops
// as for a refused write, and the other instance's sweep is the one that
// names the find.
//
// other-pass-done: the other instance's whole pass (sweep, end, result)
// lands between this write's read and its failed write. other-pass-in-
// flight: the other instance's sweep write lands and its pass is still
// under way (before its mark) when this pass reads: the record read then
// equals the one this pass would have written.
func TestSweepWriteLostNotTakenForAnothers(t *testing.T) {
	for _, inFlight := range []bool{false, true} {
		name := "other-pass-done"
		if inFlight {
			name = "other-pass-in-flight"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			f, fs := newFaultFixture(t, true)
			// Instance B: the same store, its own revoker and audit log;
			// its MarkRevoked can be held (markFirst).
			bStore := &faultStore{Store: f.mem, acks: true}
			bSink, wA, wB := secondInstance(t, f, bStore, &idRevoker{})

			rev := revokeSweepDue(t, f, "INC-52")
			b := f.issue(t, "payments") // both sweeps find it
			f.mu.Lock()
			f.now = rev.SweepAt
			f.mu.Unlock()

			bErr := make(chan error, 1)
			bSwept := make(chan struct{})
			release := make(chan struct{})
			if inFlight {
				hold := func() {
					close(bSwept)
					<-release
				}
				bStore.markFirst.Store(&hold)
			} else {
				close(release)
			}
			between := func() {
				go func() { bErr <- wB.Tick(ctx) }()
				if inFlight {
					<-bSwept
				} else if err := <-bErr; err != nil {
					t.Errorf("B's pass = %v", err)
				}
			}
			fs.between.Store(&between)
			fs.failUpdates(updateLost, 1)
			errA := wA.Tick(ctx)
			if inFlight {
				close(release)
				if err := <-bErr; err != nil {
					t.Errorf("B's pass = %v", err)
				}
			}
			if errA == nil {
				t.Errorf("A's pass, its sweep write lost, = nil; want its error (the sweep written is B's)")
			}

			named := 0
			for _, ev := range append(f.sink.Events(), bSink.Events()...) {
				if ev.Type == "revoke_result" && ev.RevocationID == rev.ID && ev.Details["by"] == "sweep" {
					if swept, _ := ev.Details["swept"].([]string); slices.Contains(swept, b.ID) {
						named++
					}
				}
			}
			if named != 1 {
				t.Errorf("%d revoke_results by sweep name %s under swept, want 1 (B's: B's sweep write is the one applied)", named, b.ID)
			}
			stored, err := f.mem.GetRevocation(ctx, rev.ID)
			if err != nil || !slices.Contains(stored.Revoked, b.ID) || len(stored.Pending) != 0 || stored.CompletedAt.IsZero() {
				t.Errorf("stored revocation: %+v, %v; want %s revoked, complete", stored, err, b.ID)
			}
		})
	}
}
