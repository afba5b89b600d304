package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestOwedResultNotWrittenTwice: a revocation whose revoke event is late (a
// log that hung) and whose issuance is left pending (its backend down).
// The worker finishes the issuance and starts its revoke_result, which
// waits for the revoke event; once the log takes writes, the revoke event
// lands, the request's own revoke_result fails (noted as owed), and the
// worker's lands after it, naming the issuance revoked. That result is the
// one the request owed: no later pass writes another.
func TestOwedResultNotWrittenTwice(t *testing.T) {
	f, sink, release := newHoldRevFixture(t, nil, func(ev *audit.Event) bool { return ev.Type == audit.TypeRevoke })
	f.sink.Fail = func(ev *audit.Event) bool {
		return ev.Type == audit.TypeRevokeResult && ev.Details["by"] == "request"
	}
	is := f.issue(t, "payments")
	awaitTypes(t, sink, audit.TypeIssue)
	ctx := context.Background()
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.rv.setErr(errors.New("vault down"))
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
	f.rv.setErr(nil)
	f.advance(time.Minute)
	// Finishes the issuance; its result waits for the revoke event.
	_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	awaitRevocation(t, f, revID, "nothing pending", func(r *broker.Revocation, err error) bool {
		return err == nil && len(r.Pending) == 0
	})

	release()
	// The revoke event, the request's result (refused), the worker's.
	awaitTypes(t, sink, audit.TypeRevoke, audit.TypeRevokeResult, audit.TypeRevokeResult)
	awaitRevocation(t, f, revID, "complete, its decision cleared", func(r *broker.Revocation, err error) bool {
		return err == nil && !r.CompletedAt.IsZero() && len(r.Decision) == 0
	})
	res := revokeResults(f.sink.Events(), revID)
	if len(res) != 1 || res[0].Details["by"] != "worker" {
		t.Fatalf("revoke_result events %v, want the worker's", res)
	}
	for range 4 {
		f.advance(time.Minute)
		_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	}
	if res := revokeResults(f.sink.Events(), revID); len(res) != 1 {
		for _, ev := range res {
			t.Logf("revoke_result %v", ev.Details)
		}
		t.Fatalf("%d revoke_result events (events %v), want the worker's only: it said the issuance revoked after the request's failed", len(res), f.sink.Types())
	}
}
