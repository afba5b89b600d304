package broker_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// queueSink holds the events hold picks until release is closed, as the
// audit file does with a full queue (its writer stuck on a disk whose
// writes hang): ctx is honoured while an event waits to be queued. held
// gets a value each time an event starts waiting; waiting counts the
// appends still waiting.
type queueSink struct {
	rec     *brokertest.Sink
	hold    func(ev *audit.Event) bool
	release chan struct{}
	held    chan struct{}
	waiting atomic.Int32
}

func (s *queueSink) Append(ctx context.Context, ev *audit.Event) error {
	if s.hold(ev) {
		s.waiting.Add(1)
		defer s.waiting.Add(-1)
		s.held <- struct{}{}
		select {
		case <-s.release:
		case <-ctx.Done():
			return broker.Unavailable("audit_unavailable", time.Second, ctx.Err())
		}
	}
	return s.rec.Append(ctx, ev)
}

// TestWorkerResultsStopWithRun: a worker's revoke_result waiting on a log
// that does not take it (its queue full) when the worker stops (shutdown)
// was appended on a goroutine detached from the worker's context: it
// outlived Run, whose end is what the server waits for before it closes
// the audit log, and was written later (or hung). It now ends with Run's
// context; the result not written is written by a later pass.
func TestWorkerResultsStopWithRun(t *testing.T) {
	var holding atomic.Bool
	holding.Store(true)
	sink := &queueSink{release: make(chan struct{}), held: make(chan struct{}, 16),
		hold: func(ev *audit.Event) bool {
			return holding.Load() && ev.Type == audit.TypeRevokeResult && ev.Details["by"] == "worker"
		}}
	var once sync.Once
	release := func() { once.Do(func() { close(sink.release) }) }
	t.Cleanup(release)
	f := newRevFixtureDeps(t, nil, func(rec *brokertest.Sink) broker.AuditSink {
		sink.rec = rec
		return sink
	}, func(d *broker.Deps) { d.AuditTimeout = stallAuditTimeout })
	is := f.issue(t, "payments")
	f.rv.setErr(errors.New("vault down"))
	rev, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_r")
	if err != nil {
		t.Fatal(err)
	}
	if len(rev.Pending) != 1 {
		t.Fatalf("revocation %+v, want its issuance pending", rev)
	}
	f.rv.setErr(nil)
	f.advance(2 * time.Hour)

	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()
	select {
	case <-sink.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the worker's revoke_result was not written within 10s")
	}
	cancel()
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("Run still running 10s after its context ended")
	}
	// The write waiting on the log ends with Run's context.
	if !waitCond(t, "no revoke_result write waiting on the log after Run returned", 10*time.Second, func() bool { return sink.waiting.Load() == 0 }) {
		t.FailNow()
	}
	if res := revokeResults(f.sink.Events(), rev.ID); len(res) != 1 {
		t.Fatalf("revoke_result events %v, want the request's alone", res)
	}

	// Not written: a later pass writes it (here, the same worker run again).
	holding.Store(false)
	got, err := f.store.GetRevocation(context.Background(), rev.ID)
	if err != nil || got.CompletedAt.IsZero() {
		t.Fatalf("record %+v, %v; want it complete", got, err)
	}
	// The refused write ends (its record marked, a store write) after Run
	// has returned: a pass while it is still on its way writes nothing,
	// so passes are made until one writes it, then one more.
	pass := func() {
		f.advance(2 * time.Hour)
		if err := within(t, "worker pass", func() error { return w.Tick(context.Background()) }); err != nil {
			t.Fatal(err)
		}
	}
	waitCond(t, "a later pass writes the result", 10*time.Second, func() bool {
		pass()
		return len(revokeResults(f.sink.Events(), rev.ID)) > 1
	})
	pass()
	res := revokeResults(f.sink.Events(), rev.ID)
	if len(res) != 2 || res[1].Details["by"] != "worker" {
		t.Fatalf("revoke_result events %v (events %v), want the request's, then one by worker", res, f.sink.Types())
	}
}

// TestTickAuditWaitBounded: a pass over several revocations whose worker
// results a log that hangs holds waited AuditTimeout for each in turn (4
// revocations, 3 s: 12 s, past within's 10 s); it now waits AuditTimeout
// in all, the results still written once the log takes them.
func TestTickAuditWaitBounded(t *testing.T) {
	sink := &holdSink{hold: func(ev *audit.Event) bool { return ev.Type == audit.TypeRevokeResult && ev.Details["by"] == "worker" },
		release: make(chan struct{}), added: make(chan string, 64)}
	var once sync.Once
	release := func() { once.Do(func() { close(sink.release) }) }
	t.Cleanup(release)
	f := newRevFixtureDeps(t, nil, func(rec *brokertest.Sink) broker.AuditSink {
		sink.rec = rec
		return sink
	}, func(d *broker.Deps) { d.AuditTimeout = 3 * time.Second })
	var iss []*broker.Issuance
	for range 4 {
		iss = append(iss, f.issue(t, "payments"))
	}
	f.rv.setErr(errors.New("vault down"))
	for _, is := range iss {
		if _, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_r"); err != nil {
			t.Fatal(err)
		}
	}
	f.rv.setErr(nil)
	f.advance(time.Minute)
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := within(t, "worker pass over 4 revocations on a hung log", func() error { return w.Tick(context.Background()) }); err != nil {
		t.Fatal(err)
	}
	release()
	byWorker := func() (n int) {
		for _, ev := range f.sink.Events() {
			if ev.Type == audit.TypeRevokeResult && ev.Details["by"] == "worker" {
				n++
			}
		}
		return n
	}
	if !waitCond(t, fmt.Sprintf("%d revoke_result events by worker after the log took writes again", len(iss)), 10*time.Second, func() bool { return byWorker() >= len(iss) }) {
		t.Fatalf("%d revoke_result events by worker, want %d", byWorker(), len(iss))
	}
}
