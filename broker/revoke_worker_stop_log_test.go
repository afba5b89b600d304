package broker_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// ctxHoldSink holds every revoke event until the caller's context ends,
// then refuses it with the context's error (a disk whose write hangs; the
// audit file refuses a write whose context has ended); every other event is
// recorded in rec.
type ctxHoldSink struct {
	rec  *brokertest.Sink
	held chan struct{}
}

func (s *ctxHoldSink) Append(ctx context.Context, ev *audit.Event) error {
	if ev.Type == audit.TypeRevoke {
		select {
		case s.held <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return ctx.Err()
	}
	return s.rec.Append(ctx, ev)
}

// awaitLog polls logs until a record whose message contains want is
// there, failing the test after 10s.
func awaitLog(t *testing.T, logs recordingHandler, want string) recordedLog {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, r := range logs.records() {
			if strings.Contains(r.msg, want) {
				return r
			}
		}
		if time.Now().After(deadline) {
			var got []string
			for _, r := range logs.records() {
				got = append(got, r.level.String()+" "+r.msg)
			}
			t.Fatalf("no log record containing %q after 10s; logged %q", want, got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestWorkerStoppedBeforeDecisionLogsShutdown: a worker result waits for
// the revocation's revoke event (decisionDurable: the request's late write
// still held, or the event written again from the record); the worker
// stops meanwhile (shutdown). Neither is written. The worker used to log
// an ERROR saying the revoke event was "written again first, which failed
// again", which was not what happened: the wait was cut by the shutdown,
// and the record keeps the event for the next start (or another
// instance). Now it logs that, at WARN, as for a result the stop cut
// before its write.
func TestWorkerStoppedBeforeDecisionLogsShutdown(t *testing.T) {
	check := func(t *testing.T, logs recordingHandler, f *revFixture, id string) {
		t.Helper()
		got := awaitLog(t, logs, "revoke_result not written")
		if got.level != slog.LevelWarn || !strings.Contains(got.msg, "worker stopped") || strings.Contains(got.msg, "failed again") {
			t.Errorf("logged %s %q; want a WARN saying the worker stopped before the revoke event was written", got.level, got.msg)
		}
		for _, r := range logs.records() {
			if r.level >= slog.LevelError && strings.Contains(r.msg, "not written") {
				t.Errorf("logged ERROR %q; want none (nothing failed: the worker stopped)", r.msg)
			}
		}
		if r, err := f.store.GetRevocation(context.Background(), id); err != nil || len(r.Decision) == 0 || !r.CompletedAt.IsZero() {
			t.Errorf("stored revocation %+v, %v; want its decision events kept (not complete) for the next start", r, err)
		}
	}

	// The request's late revoke event still held when the worker stops.
	t.Run("request-write-held", func(t *testing.T) {
		logs := newRecordingHandler()
		sink := &holdSink{hold: func(ev *audit.Event) bool { return ev.Type == audit.TypeRevoke },
			release: make(chan struct{}), added: make(chan string, 64)}
		var once sync.Once
		t.Cleanup(func() { once.Do(func() { close(sink.release) }) })
		f := newRevFixtureDeps(t, nil, func(rec *brokertest.Sink) broker.AuditSink {
			sink.rec = rec
			return sink
		}, func(d *broker.Deps) { d.AuditTimeout = stallAuditTimeout; d.Logger = slog.New(logs) })
		is := f.issue(t, "payments")
		awaitTypes(t, sink, audit.TypeIssue)
		f.rv.setErr(errors.New("vault: connection refused"))
		err := within(t, "Revoke()", func() error {
			_, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_late")
			return err
		})
		var made *broker.RevocationMadeError
		if !errors.As(err, &made) {
			t.Fatalf("Revoke() = %v, want 503 audit_unavailable naming the revocation made", err)
		}
		f.rv.setErr(nil)
		w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		f.advance(time.Second)
		// The pass revokes the credential and starts its result, which
		// waits for the held revoke event.
		if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
			t.Fatalf("worker pass = %v", err)
		}
		cancel() // shutdown
		check(t, logs, f, made.ID)
	})

	// Another instance (or this one restarted) writes the record's revoke
	// event again, and its log holds that write until the worker stops.
	t.Run("written-again-held", func(t *testing.T) {
		f, id := revokeWithDecisionHeld(t, true)
		logs := newRecordingHandler()
		sink := &ctxHoldSink{rec: &brokertest.Sink{}, held: make(chan struct{}, 1)}
		svc := restarted(t, f, sink, func(d *broker.Deps) { d.AuditTimeout = stallAuditTimeout; d.Logger = slog.New(logs) })
		w, err := broker.NewRevocationWorker(svc, broker.WorkerOptions{Interval: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		f.advance(time.Minute) // past the grace: the decision is this worker's to write
		if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
			t.Fatalf("worker pass = %v", err)
		}
		select {
		case <-sink.held:
		case <-time.After(10 * time.Second):
			t.Fatal("the worker did not write the revoke event again within 10s")
		}
		cancel() // shutdown
		check(t, logs, f, id)
		if types := sink.rec.Types(); len(types) != 0 {
			t.Errorf("events written %v, want none", types)
		}
	})
}
