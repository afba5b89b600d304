package broker_test

import (
	"context"
	"slices"
	"testing"

	"github.com/keytrail/keytrail/broker"
)

// TestSweepWriteSupersededKeepsSwept: instance A's sweep write (it found
// b) is applied but its answer lost to the store timeout; before A reads
// the record back, instance B's sweep write lands on it: B read the
// record while the sweep was still due, found b and c (issued since A
// looked), and its write added c and put its own id in swept_by. A's read
// then showed another sweep's id: A took its own write for unapplied and
// stopped, the sweep done in the record, so no pass swept again. B's
// revoke_result named only c under swept (b was listed already when its
// write ran), later passes ended b as a plain pending id, and no
// revoke_result ever named b under swept: trace and report lost the
// sweep's label on it. A sweep write that replaces another's id now keeps
// it (swept_earlier), and A's read finds its write there.
func TestSweepWriteSupersededKeepsSwept(t *testing.T) {
	ctx := context.Background()
	f, fs := newFaultFixture(t, true)
	// Instance B: the same store, its own revoker and audit log.
	bStore := &faultStore{Store: f.mem, acks: true}
	bSink, wA, wB := secondInstance(t, f, bStore, &idRevoker{})

	rev := revokeSweepDue(t, f, "INC-53")
	issuedAt := f.clock()
	b := f.issue(t, "payments") // A's sweep finds it
	f.mu.Lock()
	f.now = rev.SweepAt
	f.mu.Unlock()

	var c *broker.Issuance
	bErr := make(chan error, 1)
	bHeld := make(chan struct{})
	bGo := make(chan struct{})
	holdB := func() {
		close(bHeld)
		<-bGo
	}
	// Inside A's sweep write, before it is applied: c is stored (issued
	// as b was, its exchange slower to store it), and B's pass reads the
	// record (the sweep still due), finds b and c, and is held just
	// before its own sweep write.
	during := func() {
		f.mu.Lock()
		f.now = issuedAt
		f.mu.Unlock()
		c = f.issue(t, "payments")
		f.mu.Lock()
		f.now = rev.SweepAt
		f.mu.Unlock()
		bStore.during.Store(&holdB)
		go func() { bErr <- wB.Tick(ctx) }()
		<-bHeld
	}
	// A's write applied, its answer not back yet: B's write lands, and
	// B's pass ends.
	between := func() {
		close(bGo)
		if err := <-bErr; err != nil {
			t.Errorf("B's pass = %v", err)
		}
	}
	fs.during.Store(&during)
	fs.between.Store(&between)
	fs.failUpdates(updateTimedOut, 1)
	errA := wA.Tick(ctx)
	fs.failUpdates(updateOK, 0)
	if c == nil {
		t.Fatal("fixture: A's sweep write did not run the hooks")
	}
	if errA != nil {
		t.Errorf("A's pass = %v, want nil: its sweep write is applied (B's replaced its id afterwards)", errA)
	}
	// Later passes of both, as the workers would run them.
	for _, w := range []*broker.RevocationWorker{wA, wB} {
		if err := w.Tick(ctx); err != nil {
			t.Errorf("a later pass = %v", err)
		}
	}

	swept := map[string]int{}
	for _, ev := range append(f.sink.Events(), bSink.Events()...) {
		if ev.Type == "revoke_result" && ev.RevocationID == rev.ID && ev.Details["by"] == "sweep" {
			ids, _ := ev.Details["swept"].([]string)
			for _, id := range ids {
				swept[id]++
			}
		}
	}
	if swept[b.ID] != 1 || swept[c.ID] != 1 || len(swept) != 2 {
		t.Errorf("revoke_results by sweep name under swept %v, want %s (A's find) and %s (B's) once each", swept, b.ID, c.ID)
	}
	stored, err := f.mem.GetRevocation(ctx, rev.ID)
	if err != nil || !slices.Contains(stored.Revoked, b.ID) || !slices.Contains(stored.Revoked, c.ID) || len(stored.Pending) != 0 || stored.CompletedAt.IsZero() {
		t.Errorf("stored revocation: %+v, %v; want %s and %s revoked, complete", stored, err, b.ID, c.ID)
	}
}
