package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
)

// TestResultOwedTakenOverByOneOfTwoInstances: the instance whose request
// result failed (its mark stored) is gone; two other instances share the
// store, their workers' passes interleaved as they run. Past the grace,
// one of them writes the result, once (docs/RELIABILITY.md: "writes one
// ... once, and clears the mark"). Both used to write it: each saw the
// mark past its grace, and the one that wrote first cleared it only at its
// next pass, after the other's had written it too.
func TestResultOwedTakenOverByOneOfTwoInstances(t *testing.T) {
	f := newRevFixture(t, nil)
	ctx := context.Background()
	_, rev, _ := revokeResultRefused(t, f, "incident 51")
	if got, err := f.store.GetRevocation(ctx, rev.ID); err != nil || got.ResultOwed.IsZero() {
		t.Fatalf("record after the failed result: %+v, %v; want its result marked owed", got, err)
	}
	// The instance is gone (its worker never runs). B and C remain.
	sinkB, sinkC := &brokertest.Sink{}, &brokertest.Sink{}
	wb := workerEvery(t, restarted(t, f, sinkB), 2*time.Second)
	wc := workerEvery(t, restarted(t, f, sinkC), 2*time.Second)
	f.advance(time.Minute) // past the grace
	for range 4 {
		_ = within(t, "B's pass", func() error { return wb.Tick(ctx) })
		f.advance(time.Second)
		_ = within(t, "C's pass", func() error { return wc.Tick(ctx) })
		f.advance(time.Second)
	}
	for range 3 {
		f.advance(time.Minute)
		_ = within(t, "B's pass", func() error { return wb.Tick(ctx) })
		_ = within(t, "C's pass", func() error { return wc.Tick(ctx) })
	}
	b, c := revokeResults(sinkB.Events(), rev.ID), revokeResults(sinkC.Events(), rev.ID)
	if len(b)+len(c) != 1 {
		t.Errorf("revoke_results: %d in B's log, %d in C's; want one in all", len(b), len(c))
	}
	assertOwedCleared(t, f, rev.ID)
}
