package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// heldSweepDue is a revFixture whose log refuses revoke events, the
// revocation of workload payments made there (a 503 naming it: its
// decision left to this instance), stored with a sweep due, and an
// issuance an exchange in flight during the revocation stored (putLate):
// the sweep's to find.
func heldSweepDue(t *testing.T) (*revFixture, *broker.Revocation, *broker.Issuance) {
	t.Helper()
	f, sink, _ := newHoldRevFixture(t, nil, func(ev *audit.Event) bool { return ev.Type == audit.TypeRevoke })
	is := f.issue(t, "payments")
	awaitTypes(t, sink, audit.TypeIssue)
	ctx := context.Background()
	err := within(t, "Revoke()", func() error {
		_, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: is.Workload}, "incident 42", broker.RevokeOptions{}, "req_late")
		return err
	})
	var made *broker.RevocationMadeError
	if !errors.As(err, &made) {
		t.Fatalf("Revoke() = %v, want 503 audit_unavailable naming the revocation made", err)
	}
	rev, err := f.store.GetRevocation(ctx, made.ID)
	if err != nil || rev.SweepAt.IsZero() {
		t.Fatalf("stored revocation %+v, %v; want a sweep due", rev, err)
	}
	return f, rev, putLate(t, f, is, rev)
}

// TestHeldSweepResultKeepsSwept: another instance's worker sweeps a
// revocation whose decision is still left to the instance that made it
// (within decisionGrace: the sweep, 12 s after the creation by default,
// always is). Its revoke_result by sweep is held, and the next pass, past
// the grace, has nothing to sweep: it wrote the decision then a result by
// worker, and no result ever named the sweep's find under swept. The held
// finds are kept for the next result.
func TestHeldSweepResultKeepsSwept(t *testing.T) {
	f, rev, late := heldSweepDue(t)
	ctx := context.Background()

	// Instance B: AuditTimeout 10 s (the default), grace 30 s.
	log := &brokertest.Sink{}
	w, err := broker.NewRevocationWorker(restarted(t, f, log), broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(rev.SweepAt.Sub(f.clock()))
	if !f.clock().Before(rev.CreatedAt.Add(30 * time.Second)) {
		t.Fatalf("sweep due at %v, not within the grace (creation %v)", rev.SweepAt, rev.CreatedAt)
	}
	if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
		t.Fatalf("B's sweep pass = %v", err)
	}
	if got, _ := f.store.GetIssuance(ctx, late.ID); got == nil || got.RevocationID != rev.ID {
		t.Fatalf("late issuance after the sweep: %+v; want it revoked by %s", got, rev.ID)
	}
	if types := log.Types(); len(types) != 0 {
		t.Fatalf("B's events %v after its sweep within the grace, want none", types)
	}
	f.advance(time.Minute)
	if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
		t.Fatalf("B's pass past the grace = %v", err)
	}
	var results []*audit.Event
	for _, ev := range log.Events() {
		if ev.Type == audit.TypeRevokeResult {
			results = append(results, ev)
		}
	}
	if types := log.Types(); len(types) == 0 || types[0] != audit.TypeRevoke || len(results) != 1 {
		t.Fatalf("B's events past the grace %v, want the revoke event then one revoke_result", types)
	}
	if d := results[0].Details; d["by"] != "sweep" || !cmp.Equal(d["swept"], []string{late.ID}) {
		t.Errorf("B's revoke_result by %v, swept %v; want by sweep, swept [%s] (the held sweep's find)", d["by"], d["swept"], late.ID)
	}
}
