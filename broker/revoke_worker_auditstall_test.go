package broker_test

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// workerResults are the revoke_result events by the worker in f's log.
func workerResults(f *revFixture) []*audit.Event {
	var out []*audit.Event
	for _, ev := range f.sink.Events() {
		if ev.Type == audit.TypeRevokeResult && ev.Details["by"] == "worker" {
			out = append(out, ev)
		}
	}
	return out
}

// TestWorkerResultAuditStallIsBounded: the worker's revoke_result used to
// be waited for without a bound, so a disk whose writes hang stopped the
// worker's whole pass loop (no backend retries for any revocation, Run's
// shutdown held). Now a pass waits for it at most AuditTimeout and goes on;
// the result may still land, and a later pass that would write the same
// result again (its progress write refused, as this one's was) does not
// write a duplicate of the one still on its way.
func TestWorkerResultAuditStallIsBounded(t *testing.T) {
	var fs *faultStore
	f, sink, release := newHoldRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
		fs = &faultStore{Store: st}
		return fs
	}, func(ev *audit.Event) bool { return ev.Type == audit.TypeRevokeResult && ev.Details["by"] == "worker" })
	ctx := context.Background()
	is := f.issue(t, "payments")
	awaitTypes(t, sink, audit.TypeIssue)
	f.rv.setErr(errors.New("vault: connection refused"))
	rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_1")
	if err != nil || len(rev.Pending) != 1 {
		t.Fatalf("Revoke() = %+v, %v; want %s pending", rev, err, is.ID)
	}
	awaitTypes(t, sink, audit.TypeRevoke, audit.TypeRevokeResult)

	// The backend is back, the store refuses the progress writes: each
	// pass ends the credential and writes the same result (held).
	f.rv.setErr(nil)
	fs.failUpdates(updateRefused, -1)
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for pass := 1; pass <= 2; pass++ {
		f.advance(2 * time.Second) // past the backoff
		within(t, "worker pass", func() error { _ = w.Tick(ctx); return nil })
	}
	if calls := f.rv.Calls(); len(calls) != 3 {
		t.Errorf("backend revocations %v, want 3 (Revoke's, then one per worker pass)", calls)
	}

	// The disk recovers, then the store: the next pass stores the
	// progress and writes its result (in any case: see auditPass).
	release()
	fs.failUpdates(updateOK, 0)
	f.advance(4 * time.Second)
	within(t, "worker pass", func() error { return w.Tick(ctx) })
	awaitTypes(t, sink, audit.TypeRevokeResult, audit.TypeRevokeResult)
	if got, err := f.mem.GetRevocation(ctx, rev.ID); err != nil || got.CompletedAt.IsZero() {
		t.Fatalf("stored revocation %+v, %v; want it complete", got, err)
	}
	// The last pass's result is written after the held one; one held
	// result, not one per refused pass.
	if got := workerResults(f); len(got) != 2 {
		t.Errorf("worker revoke_results %d, want 2 (the refused passes' one, then the stored pass's)", len(got))
	}
}

// TestWorkerResultWaitsForLateDecision: a revocation whose revoke event was
// not durable in time (the request answered 503 and went on) used to get
// its worker revoke_result written at once, before the revoke event (still
// held), or without any when the late write and its retry failed. Now the
// worker's result waits until the request's writes for the revocation have
// ended, and is written only once the revoke event is durable (the worker
// writes it again first when it is not).
func TestWorkerResultWaitsForLateDecision(t *testing.T) {
	for _, tt := range []struct {
		name string
		lost bool // every write of the revoke event fails
	}{{"decision-retried", false}, {"decision-lost", true}} {
		t.Run(tt.name, func(t *testing.T) {
			sink := &failLateSink{release: make(chan struct{}), added: make(chan string, 64), always: tt.lost}
			var once sync.Once
			release := func() { once.Do(func() { close(sink.release) }) }
			t.Cleanup(release)
			logs := msgHandler{want: "revoke_result not written", got: make(chan string, 4)}
			f := newRevFixtureDeps(t, nil, func(rec *brokertest.Sink) broker.AuditSink {
				sink.rec = rec
				return sink
			}, func(d *broker.Deps) { d.AuditTimeout = stallAuditTimeout; d.Logger = slog.New(logs) })
			ctx := context.Background()
			is := f.issue(t, "payments")
			<-sink.added
			f.rv.setErr(errors.New("vault: connection refused"))
			err := within(t, "Revoke()", func() error {
				_, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_late")
				return err
			})
			if e := broker.AsError(err); !errors.Is(err, broker.ErrUnavailable) || e.Reason != "audit_unavailable" {
				t.Fatalf("Revoke() = %v, want 503 audit_unavailable", err)
			}

			// The worker finishes it while the revoke event is still held.
			f.rv.setErr(nil)
			w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			f.advance(time.Second)
			if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
				t.Fatalf("worker pass = %v", err)
			}
			if types := f.types(1); len(types) != 0 {
				t.Fatalf("events after the issue while the revoke event is held: %v, want none", types)
			}
			release()

			if tt.lost {
				select {
				case <-logs.got:
				case <-time.After(10 * time.Second):
					t.Fatalf("no ERROR saying the worker's revoke_result was not written after 10s; events %v", f.types(1))
				}
				if types := f.types(1); len(types) != 0 {
					t.Errorf("events after the issue %v, want none (no revoke_result without its revoke event)", types)
				}
				return
			}
			awaitTypes(t, &holdSink{rec: f.sink, added: sink.added}, audit.TypeRevoke, audit.TypeRevokeResult, audit.TypeRevokeResult)
			var got []string
			for _, ev := range f.sink.Events()[1:] {
				by, _ := ev.Details["by"].(string)
				got = append(got, ev.Type+"/"+by)
			}
			want := []string{audit.TypeRevoke + "/", audit.TypeRevokeResult + "/request", audit.TypeRevokeResult + "/worker"}
			if len(got) != len(want) || got[0] != want[0] || got[1] != want[1] || got[2] != want[2] {
				t.Errorf("events after the issue %v, want %v (the revoke event, the request's result, then the worker's)", got, want)
			}
		})
	}
}

// failHeldSink holds the first event fail picks until release is closed,
// then refuses it (a disk whose write hangs, then fails); every other event
// is recorded in the fixture's sink, and its type sent on added.
type failHeldSink struct {
	rec     *brokertest.Sink
	fail    func(ev *audit.Event) bool
	release chan struct{}
	added   chan string
	once    sync.Once
}

func (s *failHeldSink) Append(ctx context.Context, ev *audit.Event) error {
	first := false
	if s.fail(ev) {
		s.once.Do(func() { first = true })
	}
	if first {
		<-s.release
		return errors.New("write /var/log/keytrail/audit.jsonl: input/output error")
	}
	err := s.rec.Append(ctx, ev)
	s.added <- ev.Type
	return err
}

// TestWorkerResultHeldThenFailedIsWrittenAgain: a worker revoke_result
// the pass stopped waiting for counts as written (the next pass, making
// the same one, does not write it again) only until its write fails: then
// the next pass writes it.
func TestWorkerResultHeldThenFailedIsWrittenAgain(t *testing.T) {
	sink := &failHeldSink{release: make(chan struct{}), added: make(chan string, 64),
		fail: func(ev *audit.Event) bool { return ev.Type == audit.TypeRevokeResult && ev.Details["by"] == "worker" }}
	var once sync.Once
	release := func() { once.Do(func() { close(sink.release) }) }
	t.Cleanup(release)
	logs := msgHandler{want: "audit revoke_result failed", got: make(chan string, 4)}
	var fs *faultStore
	f := newRevFixtureDeps(t, func(_ *revFixture, st broker.Store) broker.Store {
		fs = &faultStore{Store: st}
		return fs
	}, func(rec *brokertest.Sink) broker.AuditSink {
		sink.rec = rec
		return sink
	}, func(d *broker.Deps) { d.AuditTimeout = stallAuditTimeout; d.Logger = slog.New(logs) })
	ctx := context.Background()
	is := f.issue(t, "payments")
	f.rv.setErr(errors.New("vault: connection refused"))
	if _, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_1"); err != nil {
		t.Fatal(err)
	}
	f.rv.setErr(nil)
	fs.failUpdates(updateRefused, -1) // every pass makes the same result
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(2 * time.Second)
	within(t, "worker pass", func() error { _ = w.Tick(ctx); return nil })
	release() // the held result's write fails
	select {
	case <-logs.got:
	case <-time.After(10 * time.Second):
		t.Fatal("no ERROR saying the held revoke_result failed after 10s")
	}
	f.advance(2 * time.Second)
	within(t, "worker pass", func() error { _ = w.Tick(ctx); return nil })
	for n := 0; n < 1; {
		select {
		case typ := <-sink.added:
			if typ == audit.TypeRevokeResult && len(workerResults(f)) > 0 {
				n++
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("the failed worker revoke_result not written again after 10s; events %v", f.types(1))
		}
	}
	if got := workerResults(f); len(got) != 1 {
		t.Errorf("worker revoke_results %d, want 1", len(got))
	}
}

// TestWorkerRunStopsDuringResultAuditStall: Run returns once its context
// ends even while a pass waits for a revoke_result that hangs (AuditTimeout
// long here, so only the shutdown can end the wait).
func TestWorkerRunStopsDuringResultAuditStall(t *testing.T) {
	held := make(chan struct{}, 8)
	sink := &holdSink{release: make(chan struct{}), added: make(chan string, 64), hold: func(ev *audit.Event) bool {
		if ev.Type == audit.TypeRevokeResult && ev.Details["by"] == "worker" {
			held <- struct{}{}
			return true
		}
		return false
	}}
	var once sync.Once
	t.Cleanup(func() { once.Do(func() { close(sink.release) }) })
	f := newRevFixtureDeps(t, nil, func(rec *brokertest.Sink) broker.AuditSink {
		sink.rec = rec
		return sink
	}, func(d *broker.Deps) { d.AuditTimeout = time.Hour })
	is := f.issue(t, "payments")
	f.rv.setErr(errors.New("vault: connection refused"))
	if _, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_1"); err != nil {
		t.Fatal(err)
	}
	f.rv.setErr(nil)
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(2 * time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran := make(chan error, 1)
	go func() { ran <- w.Run(ctx) }()
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatalf("the worker's first pass wrote no revoke_result after 10s; events %v", f.types(1))
	}
	cancel()
	select {
	case <-ran:
	case <-time.After(10 * time.Second):
		t.Fatal("Run still running 10s after its context ended, waiting for its stalled revoke_result")
	}
}
