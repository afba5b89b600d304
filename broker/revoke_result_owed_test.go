package broker_test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// revokeResults returns the revoke_result events of events for revocation id.
func revokeResults(events []*audit.Event, id string) []*audit.Event {
	var out []*audit.Event
	for _, ev := range events {
		if ev.Type == audit.TypeRevokeResult && ev.RevocationID == id {
			out = append(out, ev)
		}
	}
	return out
}

// TestRequestResultFailedOnCompletedRecord: a revocation of one issuance
// (no block, so no sweep) ends it at once and its progress write stores the
// record complete; the request's own revoke_result then fails. No pass
// lists a complete record, so no revoke_result ever said the issuance
// revoked (trace and report take it as revoked from one). The worker of
// the same instance writes it from the record read afresh.
func TestRequestResultFailedOnCompletedRecord(t *testing.T) {
	f := newRevFixture(t, nil)
	is := f.issue(t, "payments")
	ctx := context.Background()
	var failing atomic.Bool
	failing.Store(true)
	f.sink.Fail = func(ev *audit.Event) bool { return failing.Load() && ev.Type == audit.TypeRevokeResult }
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "incident 44", broker.RevokeOptions{}, "req_r")
	if err != nil {
		t.Fatal(err)
	}
	got, err := f.store.GetRevocation(ctx, rev.ID)
	if err != nil || got.CompletedAt.IsZero() {
		t.Fatalf("record after Revoke: %+v, %v; want it complete", got, err)
	}
	if res := revokeResults(f.sink.Events(), rev.ID); len(res) != 0 {
		t.Fatalf("revoke_result events %v with results refused", res)
	}

	failing.Store(false)
	for i := 0; i < 5 && len(revokeResults(f.sink.Events(), rev.ID)) == 0; i++ {
		f.advance(time.Minute)
		_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	}
	res := revokeResults(f.sink.Events(), rev.ID)
	if len(res) != 1 || !cmp.Equal(res[0].Details["revoked"], []string{is.ID}) || res[0].Outcome.Status != 200 {
		t.Fatalf("revoke_result events %v (events %v), want one listing %s revoked, status 200", res, f.sink.Types(), is.ID)
	}
	// Written once: later passes write nothing more for it.
	n := len(f.sink.Events())
	for range 3 {
		f.advance(time.Minute)
		_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	}
	if more := f.sink.Types()[n:]; len(more) != 0 {
		t.Errorf("later passes wrote %v, want nothing", more)
	}
	if i := slices.Index(f.sink.Types(), audit.TypeRevoke); i < 0 {
		t.Errorf("no revoke event: %v", f.sink.Types())
	}
}

// TestLateRequestResultFailedOnCompletedRecord: the same after a revoke
// event the request stopped waiting for (a log that hung): it lands late,
// the record is told (complete: nothing else left), and the request's
// revoke_result, written after it, fails. The worker writes one.
func TestLateRequestResultFailedOnCompletedRecord(t *testing.T) {
	f, sink, release := newHoldRevFixture(t, nil, func(ev *audit.Event) bool { return ev.Type == audit.TypeRevoke })
	var failing atomic.Bool
	failing.Store(true)
	f.sink.Fail = func(ev *audit.Event) bool { return failing.Load() && ev.Type == audit.TypeRevokeResult }
	is := f.issue(t, "payments")
	awaitTypes(t, sink, audit.TypeIssue)
	ctx := context.Background()
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var revID string
	_ = within(t, "Revoke()", func() error {
		_, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_stall")
		if made := (*broker.RevocationMadeError)(nil); errors.As(err, &made) {
			revID = made.ID
		}
		return err
	})
	if revID == "" {
		t.Fatal("Revoke() did not name the revocation made")
	}
	release()
	awaitTypes(t, sink, audit.TypeRevoke, audit.TypeRevokeResult) // the result refused
	awaitRevocation(t, f, revID, "complete, its decision cleared", func(r *broker.Revocation, err error) bool {
		return err == nil && !r.CompletedAt.IsZero() && len(r.Decision) == 0
	})
	if res := revokeResults(f.sink.Events(), revID); len(res) != 0 {
		t.Fatalf("revoke_result events %v with results refused", res)
	}

	failing.Store(false)
	for i := 0; i < 5 && len(revokeResults(f.sink.Events(), revID)) == 0; i++ {
		f.advance(time.Minute)
		_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	}
	res := revokeResults(f.sink.Events(), revID)
	if len(res) != 1 || !cmp.Equal(res[0].Details["revoked"], []string{is.ID}) {
		t.Fatalf("revoke_result events %v (events %v), want one listing %s revoked", res, f.sink.Types(), is.ID)
	}
}
