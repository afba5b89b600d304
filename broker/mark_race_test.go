package broker_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// revokeGateSink holds the first revoke event at its gate: that revocation
// has selected its issuances and marked none yet.
type revokeGateSink struct {
	*brokertest.Sink
	held    atomic.Bool
	arrived chan struct{}
	open    chan struct{}
}

func (s *revokeGateSink) Append(ctx context.Context, ev *audit.Event) error {
	if ev.Type == audit.TypeRevoke && s.held.CompareAndSwap(false, true) {
		close(s.arrived)
		<-s.open
	}
	return s.Sink.Append(ctx, ev)
}

// TestRacingRevocationsFirstMarkWins: two revocations select the same
// active issuance; the one that selected first ("late") is held before it
// marks anything while the other ("early") marks and revokes it. When
// "late" goes on, the issuance must stay revoked by "early", at "early"'s
// time: the first mark stands. (mark read the issuance and then rewrote
// it whole, so the last revocation to write took the issuance over: which
// revocation the record, trace and the sweep named depended on timing.)
func TestRacingRevocationsFirstMarkWins(t *testing.T) {
	ctx := context.Background()
	gs := &revokeGateSink{arrived: make(chan struct{}), open: make(chan struct{})}
	f := newRevFixtureAudit(t, nil, func(s *brokertest.Sink) broker.AuditSink { gs.Sink = s; return gs })
	is := f.issue(t, "payments")

	type result struct {
		rev *broker.Revocation
		err error
	}
	lateDone := make(chan result, 1)
	go func() {
		rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "late", broker.RevokeOptions{}, "req_late")
		lateDone <- result{rev, err}
	}()
	select {
	case <-gs.arrived:
	case <-time.After(30 * time.Second):
		t.Fatal("the late revocation never reached its audit write")
	}
	f.advance(time.Second)
	early, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "early", broker.RevokeOptions{}, "req_early")
	if err != nil {
		t.Fatalf("Revoke(early) = %v", err)
	}
	marked, err := f.mem.GetIssuance(ctx, is.ID)
	if err != nil || marked.RevocationID != early.ID {
		t.Fatalf("issuance after the early revocation = %+v, %v; want revoked by %s", marked, err, early.ID)
	}
	f.advance(time.Second)
	close(gs.open)
	late := <-lateDone
	if late.err != nil {
		t.Fatalf("Revoke(late) = %v", late.err)
	}

	got, err := f.mem.GetIssuance(ctx, is.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.RevocationID != early.ID || !got.RevokedAt.Equal(marked.RevokedAt) {
		t.Errorf("issuance after both revocations: revoked by %s at %v; want the first mark, %s at %v (the late one is %s)",
			got.RevocationID, got.RevokedAt, early.ID, marked.RevokedAt, late.rev.ID)
	}
	if got.Active(f.clock()) {
		t.Errorf("issuance after both revocations is active")
	}
}
