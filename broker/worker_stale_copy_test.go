package broker_test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// idRevoker fails for the ids in fail, succeeds for every other.
type idRevoker struct{ fail atomic.Pointer[string] }

func (r *idRevoker) Revoke(ctx context.Context, is *broker.Issuance) error {
	if f := r.fail.Load(); f != nil && *f == is.ID {
		return broker.Unavailable("vault_unavailable", time.Second, errors.New("connection refused"))
	}
	return nil
}

// TestWorkerFailedWriteResultReadAfresh: when its progress write fails, a
// worker pass still writes its revoke_result (the write may be applied).
// It built it from the copy of the record it read at the start, so an
// issuance another instance's sweep added meanwhile was missing from it:
// it said 200, nothing pending, while the find was pending (pinned before
// as late, not wrong). Now, after a failed write, the pass reads the record
// once more and settles its outcome on that: its result lists the find
// pending, or (as here, nothing of its own left to report) it writes none,
// and the revocation's last word is not a 200 while something is pending.
// When that read fails too, the pass keeps the copy, as before.
//
// Either way the find is never lost: the sweep's own revoke_result names
// it (swept, pending), the record keeps it pending (no writer settles an
// id it did not handle), and the pass that ends it writes a revoke_result
// listing it revoked, so trace and report, which take an issuance as
// revoked from any revoke_result listing it, see it.
func TestWorkerFailedWriteResultReadAfresh(t *testing.T) {
	for _, tc := range []struct {
		name     string
		readFail bool // the read after A's failed write fails too
	}{
		{"read-afresh", false},
		{"read-fails-copy-kept", true},
	} {
		t.Run(tc.name, func(t *testing.T) { testWorkerFailedWriteResult(t, tc.readFail) })
	}
}

func testWorkerFailedWriteResult(t *testing.T, readFail bool) {
	ctx := context.Background()
	f, ds := newFaultFixture(t, false)
	// Instance B: the same store, its own revoker and audit log.
	bRevoker := &idRevoker{}
	bSink, wA, wB := secondInstance(t, f, f.mem, bRevoker)

	a := f.issue(t, "payments")
	f.rv.setErr(broker.Unavailable("vault_unavailable", time.Second, errors.New("connection refused")))
	rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "INC-70", broker.RevokeOptions{}, "req_1")
	if err != nil || !slices.Equal(rev.Pending, []string{a.ID}) || rev.SweepAt.IsZero() {
		t.Fatalf("Revoke() = %+v, %v; want %s pending, a sweep due", rev, err, a.ID)
	}
	f.rv.setErr(nil)
	b := f.issue(t, "payments") // issued as the revocation selected: the sweep's to find

	// A's pass retries a before the sweep is due; while its progress write
	// is under way, B's pass runs the sweep (finding b, whose backend call
	// fails on B) and ends a; then A's write fails.
	bRevoker.fail.Store(&b.ID)
	during := func() {
		f.mu.Lock()
		f.now = rev.SweepAt
		f.mu.Unlock()
		if err := wB.Tick(ctx); err != nil {
			t.Errorf("B's pass = %v", err)
		}
	}
	ds.during.Store(&during)
	ds.failUpdates(updateRefused, 1) // and then A's write fails
	ds.getFails.Store(readFail)
	aEvents := len(f.sink.Events())
	if err := wA.Tick(ctx); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("A's pass = %v, want its progress write to fail", err)
	}
	ds.getFails.Store(false)

	results := func() []*audit.Event {
		var out []*audit.Event
		for _, ev := range append(f.sink.Events(), bSink.Events()...) {
			if ev.Type == "revoke_result" && ev.RevocationID == rev.ID {
				out = append(out, ev)
			}
		}
		return out
	}
	var byA []*audit.Event
	for _, ev := range f.sink.Events()[aEvents:] {
		if ev.Type == "revoke_result" && ev.RevocationID == rev.ID {
			byA = append(byA, ev)
		}
	}
	if readFail {
		// The copy, as before: it does not know b.
		if len(byA) != 1 || byA[0].Details["by"] != "worker" || !slices.Equal(byA[0].Details["revoked"].([]string), []string{a.ID}) {
			t.Errorf("A's revoke_results with the read failing: %d; want one, the worker's from its copy, %s revoked", len(byA), a.ID)
		}
	} else {
		// From the record read afresh: b is pending there, and what A's
		// pass did is what B's result already says, so A writes none
		// (86d2453); any it did write must keep b pending.
		if len(byA) != 0 {
			t.Errorf("A wrote %d revoke_result(s) after its failed write; want none (B's sweep result is the last word)", len(byA))
		}
		for _, ev := range byA {
			if pending, _ := ev.Details["pending"].([]string); ev.Outcome.Status != 202 || !slices.Contains(pending, b.ID) {
				t.Errorf("A's revoke_result after its failed write: by %v, %d, revoked %v, pending %v; want %s pending (202), as the record has it",
					ev.Details["by"], ev.Outcome.Status, ev.Details["revoked"], ev.Details["pending"], b.ID)
			}
		}
	}
	named := false
	for _, ev := range results() {
		if swept, _ := ev.Details["swept"].([]string); slices.Contains(swept, b.ID) {
			named = true
		}
	}
	if !named {
		t.Errorf("no revoke_result names %s, which the sweep found, under swept", b.ID)
	}
	stored, err := f.mem.GetRevocation(ctx, rev.ID)
	if err != nil || !slices.Equal(stored.Pending, []string{b.ID}) || !stored.CompletedAt.IsZero() {
		t.Fatalf("stored revocation after both passes: %+v, %v; want %s still pending", stored, err, b.ID)
	}

	// b's backend is back: the next pass ends b and its revoke_result says so.
	bRevoker.fail.Store(nil)
	f.advance(time.Minute)
	if err := wB.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	stored, err = f.mem.GetRevocation(ctx, rev.ID)
	if err != nil || !slices.Contains(stored.Revoked, b.ID) || stored.CompletedAt.IsZero() {
		t.Fatalf("stored revocation at the end: %+v, %v; want complete, %s revoked", stored, err, b.ID)
	}
	listed := false
	for _, ev := range results() {
		if revoked, _ := ev.Details["revoked"].([]string); slices.Contains(revoked, b.ID) {
			listed = true
		}
	}
	if !listed {
		t.Errorf("no revoke_result of %s lists %s revoked: trace and report would never see it revoked", rev.ID, b.ID)
	}
}
