package broker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// unblockGateSink holds the first unblock event at its gate: the unblock
// has read the block and not deleted it yet.
type unblockGateSink struct {
	*brokertest.Sink
	once    sync.Once
	arrived chan struct{}
	open    chan struct{}
}

func (s *unblockGateSink) Append(ctx context.Context, ev *audit.Event) error {
	if ev.Type == audit.TypeUnblock {
		s.once.Do(func() { close(s.arrived); <-s.open })
	}
	return s.Sink.Append(ctx, ev)
}

// TestUnblockRacingReblock: an unblock reads the workload's block (r1's),
// and before it deletes it a second revocation blocks the workload again
// (r2). The unblock must not delete r2's block: it answers 404
// block_changed, the workload stays blocked by r2, and the audit log says
// the unblock did not happen. (The delete used to be unconditional: r2's
// fresh block was deleted and the workload unblocked although the newest
// revocation blocked it.)
func TestUnblockRacingReblock(t *testing.T) {
	ctx := context.Background()
	gs := &unblockGateSink{arrived: make(chan struct{}), open: make(chan struct{})}
	f := newRevFixtureAudit(t, nil, func(s *brokertest.Sink) broker.AuditSink { gs.Sink = s; return gs })
	sel := broker.RevokeSelector{Workload: "payments-api"}
	r1, err := f.svc.Revoke(ctx, secops, sel, "incident", broker.RevokeOptions{Block: true}, "req_1")
	if err != nil {
		t.Fatal(err)
	}

	unblocked := make(chan error, 1)
	go func() { unblocked <- f.svc.Unblock(ctx, secops, "payments-api", "false alarm", "req_u") }()
	select {
	case <-gs.arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the unblock never reached its audit write")
	}
	f.advance(time.Second)
	r2, err := f.svc.Revoke(ctx, secops, sel, "incident again", broker.RevokeOptions{Block: true}, "req_2")
	if err != nil {
		t.Fatal(err)
	}
	close(gs.open)
	err = <-unblocked

	if e := broker.AsError(err); !errors.Is(err, broker.ErrNotFound) || e == nil || e.Reason != "block_changed" {
		t.Errorf("Unblock() overtaken by %s's block = %v, want ErrNotFound, reason block_changed", r2.ID, err)
	}
	b, gerr := f.mem.GetBlock(ctx, "payments-api")
	if gerr != nil || b.RevocationID != r2.ID {
		t.Fatalf("block after the unblock of %s's block = %+v, %v; want %s's block standing", r1.ID, b, gerr, r2.ID)
	}
	f.advance(time.Second)
	_, err = f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
	if e := broker.AsError(err); e == nil || e.Reason != "workload_blocked" {
		t.Errorf("Exchange() after the overtaken unblock = %v, want workload_blocked", err)
	}
	var last *audit.Event
	for _, ev := range f.sink.Events() {
		if ev.Type == audit.TypeUnblock {
			last = ev
		}
	}
	if last == nil || last.Outcome == nil || last.Outcome.Status != 404 || last.Outcome.Reason != "block_changed" ||
		last.Details["standing_revocation_id"] != r2.ID {
		t.Errorf("last unblock event = %+v, want status 404 block_changed naming %s", last, r2.ID)
	}
}
