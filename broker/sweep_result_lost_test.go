package broker_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// sweptResults returns the revoke_result events of sink by sweep.
func sweptResults(sink *brokertest.Sink) []*audit.Event {
	var out []*audit.Event
	for _, ev := range sink.Events() {
		if ev.Type == audit.TypeRevokeResult && ev.Details["by"] == "sweep" {
			out = append(out, ev)
		}
	}
	return out
}

// putLate stores, for revocation rev, an issuance of is's workload issued at
// its creation and stored after its selection: the sweep's to find.
func putLate(t *testing.T, f *revFixture, is *broker.Issuance, rev *broker.Revocation) *broker.Issuance {
	t.Helper()
	late, err := f.store.GetIssuance(context.Background(), is.ID)
	if err != nil {
		t.Fatal(err)
	}
	late.ID, late.IssuedAt, late.RevokedAt, late.RevocationID = broker.NewID(broker.PrefixIssuance), rev.CreatedAt, time.Time{}, ""
	late.Refs = broker.CredentialRefs{}
	if err := f.store.PutIssuance(context.Background(), late); err != nil {
		t.Fatal(err)
	}
	return late
}

// TestHeldSweepResultFailedAfterDecisionWritten: another instance's worker
// sweeps a revocation whose decision is left to the instance that made it
// (held: TestHeldSweepResultKeepsSwept); its next pass, past the grace,
// writes the decision again from the record, which the record is told
// (complete: nothing else left), then its revoke_result by sweep, which
// fails. The record being complete, no pass listed the revocation again
// and the sweep's find was never named in a revoke_result. The worker
// keeps a revocation whose last result failed until a pass writes it.
func TestHeldSweepResultFailedAfterDecisionWritten(t *testing.T) {
	f, rev, late := heldSweepDue(t)
	ctx := context.Background()

	// Instance B, whose log refuses revoke_result events while failing is set.
	var failing atomic.Bool
	log := &brokertest.Sink{Fail: func(ev *audit.Event) bool { return failing.Load() && ev.Type == audit.TypeRevokeResult }}
	w, err := broker.NewRevocationWorker(restarted(t, f, log), broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(rev.SweepAt.Sub(f.clock()))
	if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
		t.Fatalf("B's sweep pass = %v", err)
	}
	if types := log.Types(); len(types) != 0 {
		t.Fatalf("B's events %v after its sweep within the grace, want none", types)
	}
	failing.Store(true)
	f.advance(time.Minute)
	_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	got, err := f.store.GetRevocation(ctx, rev.ID)
	if err != nil || got.CompletedAt.IsZero() || len(got.Decision) > 0 {
		t.Fatalf("record after the pass past the grace: %+v, %v; want it complete, its decision written", got, err)
	}
	if types := log.Types(); len(types) != 1 || types[0] != audit.TypeRevoke {
		t.Fatalf("B's events %v, want the revoke event alone (its result refused)", types)
	}

	failing.Store(false)
	for i := 0; i < 5 && len(sweptResults(log)) == 0; i++ {
		f.advance(time.Minute)
		_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	}
	res := sweptResults(log)
	if len(res) != 1 || !cmp.Equal(res[0].Details["swept"], []string{late.ID}) {
		t.Fatalf("B's revoke_result events by sweep %v (events %v), want one naming swept [%s]", res, log.Types(), late.ID)
	}
	if n := len(log.Events()); n != 2 {
		t.Errorf("B wrote %d events (%v), want the revoke event and one result", n, log.Types())
	}
}

// TestSweepResultFailedOnCompletedRecord: the plain case of the same: a
// sweep pass finds an issuance, ends it and stores the record complete,
// and its revoke_result fails. The worker dropped the revocation with the
// record complete, so no result ever named the find under swept.
func TestSweepResultFailedOnCompletedRecord(t *testing.T) {
	f := newRevFixture(t, nil)
	is := f.issue(t, "payments")
	ctx := context.Background()
	rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: is.Workload}, "incident 43", broker.RevokeOptions{}, "req_r")
	if err != nil {
		t.Fatal(err)
	}
	late := putLate(t, f, is, rev)

	var failing atomic.Bool
	failing.Store(true)
	log := &brokertest.Sink{Fail: func(ev *audit.Event) bool { return failing.Load() && ev.Type == audit.TypeRevokeResult }}
	w, err := broker.NewRevocationWorker(restarted(t, f, log), broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(rev.SweepAt.Sub(f.clock()))
	_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	got, err := f.store.GetRevocation(ctx, rev.ID)
	if err != nil || got.CompletedAt.IsZero() {
		t.Fatalf("record after the sweep pass: %+v, %v; want it complete", got, err)
	}
	if li, _ := f.store.GetIssuance(ctx, late.ID); li == nil || li.RevocationID != rev.ID {
		t.Fatalf("late issuance %+v, want it revoked by %s", li, rev.ID)
	}

	failing.Store(false)
	for i := 0; i < 5 && len(sweptResults(log)) == 0; i++ {
		f.advance(time.Minute)
		_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	}
	res := sweptResults(log)
	if len(res) != 1 || !cmp.Equal(res[0].Details["swept"], []string{late.ID}) {
		t.Fatalf("revoke_result events by sweep %v (events %v), want one naming swept [%s]", res, log.Types(), late.ID)
	}
	// Written once: later passes write nothing more for it.
	f.advance(time.Minute)
	_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	if n := len(log.Events()); n != 1 {
		t.Errorf("worker wrote %d events (%v), want the one result", n, log.Types())
	}
}
