package broker_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// TestHeldDecisionGraceHoldsOnlyAudit pins that decisionGrace holds only
// the audit results: another instance's worker, within the grace of a
// revocation whose decision the maker's hung disk holds, still ends the
// pending issuance at its backend and stores it revoked at its first pass;
// only its revoke_result (and the decision written again) wait.
func TestHeldDecisionGraceHoldsOnlyAudit(t *testing.T) {
	f, sink, _ := newHoldRevFixture(t, nil, func(ev *audit.Event) bool { return ev.Type == audit.TypeRevoke })
	is := f.issue(t, "payments")
	awaitTypes(t, sink, audit.TypeIssue)
	f.rv.setErr(errors.New("vault: connection refused"))
	ctx := context.Background()
	err := within(t, "Revoke()", func() error {
		_, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_late")
		return err
	})
	var made *broker.RevocationMadeError
	if !errors.As(err, &made) {
		t.Fatalf("Revoke() = %v, want 503 audit_unavailable naming the revocation made", err)
	}
	f.rv.setErr(nil)
	calls := len(f.rv.Calls())
	log := &brokertest.Sink{}
	w, err := broker.NewRevocationWorker(restarted(t, f, log), broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(2 * time.Second) // one interval after the creation: well within the grace
	if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
		t.Fatalf("B's worker pass = %v", err)
	}
	if got := f.rv.Calls()[calls:]; !slices.Contains(got, is.ID) {
		t.Errorf("backend revocations at B's pass within the grace %v, want %s (only audit results wait)", got, is.ID)
	}
	r, err := f.store.GetRevocation(ctx, made.ID)
	if err != nil || len(r.Pending) != 0 || !slices.Contains(r.Revoked, is.ID) {
		t.Errorf("stored revocation after B's pass %+v, %v; want %s revoked, nothing pending", r, err, is.ID)
	}
	if types := log.Types(); len(types) != 0 {
		t.Errorf("B's events %v within the grace, want none", types)
	}
}
