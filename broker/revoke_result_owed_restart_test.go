package broker_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// revokeResultRefused revokes a credential of payments with f's sink
// refusing revoke_results while the flag it returns is set (it is): the
// request's own result fails, and is marked owed in the record.
func revokeResultRefused(t *testing.T, f *revFixture, incident string) (*broker.Issuance, *broker.Revocation, *atomic.Bool) {
	t.Helper()
	is := f.issue(t, "payments")
	failing := new(atomic.Bool)
	failing.Store(true)
	f.sink.Fail = func(ev *audit.Event) bool { return failing.Load() && ev.Type == audit.TypeRevokeResult }
	rev, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, incident, broker.RevokeOptions{}, "req_r")
	if err != nil {
		t.Fatal(err)
	}
	return is, rev, failing
}

// workerEvery is a RevocationWorker of svc making passes every interval
// (the tests make them with Tick).
func workerEvery(t *testing.T, svc *broker.Service, interval time.Duration) *broker.RevocationWorker {
	t.Helper()
	w, err := broker.NewRevocationWorker(svc, broker.WorkerOptions{Interval: interval})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// tickUntilResult makes passes of w, a minute apart on f's clock, until
// sink holds a revoke_result for revocation id (at most 5), then 3 more:
// it returns that revocation's revoke_results.
func tickUntilResult(t *testing.T, f *revFixture, w *broker.RevocationWorker, events func() []*audit.Event, id string) []*audit.Event {
	t.Helper()
	ctx := context.Background()
	for i := 0; i < 5 && len(revokeResults(events(), id)) == 0; i++ {
		f.advance(time.Minute)
		_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	}
	for range 3 {
		f.advance(time.Minute)
		_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	}
	return revokeResults(events(), id)
}

// TestRequestResultFailedSurvivesRestart: the request's own revoke_result
// of a revocation its progress write completed fails, and the instance
// stops before its worker writes one in its place (that retry was in its
// memory only). The instance started next over the same store and audit
// log writes the result, once.
func TestRequestResultFailedSurvivesRestart(t *testing.T) {
	f := newRevFixture(t, nil)
	ctx := context.Background()
	is, rev, failing := revokeResultRefused(t, f, "incident 45")
	if got, err := f.store.GetRevocation(ctx, rev.ID); err != nil || got.CompletedAt.IsZero() {
		t.Fatalf("record after Revoke: %+v, %v; want it complete", got, err)
	}
	if res := revokeResults(f.sink.Events(), rev.ID); len(res) != 0 {
		t.Fatalf("revoke_result events %v with results refused", res)
	}
	if got, err := f.store.GetRevocation(ctx, rev.ID); err != nil || got.ResultOwed.IsZero() {
		t.Fatalf("record after the failed result: %+v, %v; want its result marked owed", got, err)
	}

	// The restart: the old instance's worker never ran.
	failing.Store(false)
	w := workerEvery(t, restarted(t, f, f.sink), time.Second)
	res := tickUntilResult(t, f, w, f.sink.Events, rev.ID)
	if len(res) != 1 || !cmp.Equal(res[0].Details["revoked"], []string{is.ID}) || res[0].Outcome.Status != 200 {
		t.Fatalf("revoke_result events after the restart %v (events %v), want one listing %s revoked, status 200", res, f.sink.Types(), is.ID)
	}
	assertOwedCleared(t, f, rev.ID)
}

// TestWorkerResultFailedSurvivesRestart: the same for the worker's own
// result: its pass finishes the issuance the request left pending (its
// backend was down), completing the record, and that pass's
// revoke_result fails; the instance stops. The next one writes it, once.
func TestWorkerResultFailedSurvivesRestart(t *testing.T) {
	f := newRevFixture(t, nil)
	is := f.issue(t, "payments")
	ctx := context.Background()
	f.rv.setErr(errors.New("vault down"))
	rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "incident 46", broker.RevokeOptions{}, "req_r")
	if err != nil {
		t.Fatal(err)
	}
	if len(rev.Pending) != 1 {
		t.Fatalf("Revoke() = %+v, want the issuance pending", rev)
	}
	f.rv.setErr(nil)
	var failing atomic.Bool
	failing.Store(true)
	f.sink.Fail = func(ev *audit.Event) bool { return failing.Load() && ev.Type == audit.TypeRevokeResult }
	w := workerEvery(t, f.svc, time.Second)
	f.advance(time.Minute)
	_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	awaitRevocation(t, f, rev.ID, "complete", func(r *broker.Revocation, err error) bool {
		return err == nil && !r.CompletedAt.IsZero()
	})
	n := len(revokeResults(f.sink.Events(), rev.ID)) // the request's 202

	failing.Store(false)
	w2 := workerEvery(t, restarted(t, f, f.sink), time.Second)
	res := tickUntilResult(t, f, w2, f.sink.Events, rev.ID)[n:]
	if len(res) != 1 || !cmp.Equal(res[0].Details["revoked"], []string{is.ID}) || res[0].Outcome.Status != 200 {
		t.Fatalf("revoke_result events after the restart %v (events %v), want one listing %s revoked, status 200", res, f.sink.Types(), is.ID)
	}
	assertOwedCleared(t, f, rev.ID)
}

// assertOwedCleared fails t unless revocation id's record no longer marks
// a result owed, so that no worker lists it any more.
func assertOwedCleared(t *testing.T, f *revFixture, id string) {
	t.Helper()
	ctx := context.Background()
	got, err := f.store.GetRevocation(ctx, id)
	if err != nil || !got.ResultOwed.IsZero() || got.CompletedAt.IsZero() {
		t.Errorf("record after its result: %+v, %v; want it complete, no result owed", got, err)
	}
	listed, err := f.store.ListRevocations(ctx, broker.RevocationFilter{Pending: true})
	if err != nil || len(listed) != 0 {
		t.Errorf("pending revocations %v, %v; want none", listed, err)
	}
}

// TestResultOwedSameInstanceClearsMark: the request's result fails and the
// same instance's worker writes it once the log takes writes: the record's
// mark is cleared, and no later pass (of this or another instance, past
// the grace) writes another.
func TestResultOwedSameInstanceClearsMark(t *testing.T) {
	f := newRevFixture(t, nil)
	ctx := context.Background()
	_, rev, failing := revokeResultRefused(t, f, "incident 47")
	w := workerEvery(t, f.svc, time.Second)
	// Another instance, its own log, within the grace: the result is
	// left to the instance whose write failed.
	other := &brokertest.Sink{}
	w2 := workerEvery(t, restarted(t, f, other), time.Second)
	_ = within(t, "other worker pass", func() error { return w2.Tick(ctx) })
	if types := other.Types(); len(types) != 0 {
		t.Fatalf("other instance wrote %v within the grace, want nothing", types)
	}
	failing.Store(false)
	if res := tickUntilResult(t, f, w, f.sink.Events, rev.ID); len(res) != 1 {
		t.Fatalf("revoke_result events %v, want one", res)
	}
	assertOwedCleared(t, f, rev.ID)
	for range 3 {
		f.advance(time.Minute)
		_ = within(t, "other worker pass", func() error { return w2.Tick(ctx) })
	}
	if types := other.Types(); len(types) != 0 {
		t.Errorf("other instance wrote %v after the result, want nothing", types)
	}
}

// ctxHoldResultSink holds the worker's revoke_results until the caller's
// context ends, then refuses them with its error (the audit file refuses a
// write whose context has ended); every other event goes to rec.
type ctxHoldResultSink struct {
	rec  *brokertest.Sink
	held chan struct{}
}

func (s *ctxHoldResultSink) Append(ctx context.Context, ev *audit.Event) error {
	if ev.Type == audit.TypeRevokeResult && ev.Details["by"] == "worker" {
		select {
		case s.held <- struct{}{}:
		default:
		}
		<-ctx.Done()
		return ctx.Err()
	}
	return s.rec.Append(ctx, ev)
}

// TestWorkerResultCutByShutdownIsWrittenNextStart: the worker's result
// is in the sink's hands when the worker stops (shutdown), and the sink
// refuses it. That used to log an ERROR ("audit revoke_result failed")
// and lose the result for good (the record complete); now the record
// marks it owed, a WARN says the next start writes it, and it does.
func TestWorkerResultCutByShutdownIsWrittenNextStart(t *testing.T) {
	logs := newRecordingHandler()
	sink := &ctxHoldResultSink{held: make(chan struct{}, 1)}
	f := newRevFixtureDeps(t, nil, func(rec *brokertest.Sink) broker.AuditSink {
		sink.rec = rec
		return sink
	}, func(d *broker.Deps) { d.AuditTimeout = stallAuditTimeout; d.Logger = slog.New(logs) })
	is := f.issue(t, "payments")
	f.rv.setErr(errors.New("vault down"))
	rev, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "incident 48", broker.RevokeOptions{}, "req_r")
	if err != nil {
		t.Fatal(err)
	}
	f.rv.setErr(nil)
	w := workerEvery(t, f.svc, time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	f.advance(time.Minute)
	_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	select {
	case <-sink.held:
	case <-time.After(10 * time.Second):
		t.Fatal("the worker's revoke_result did not reach the sink within 10s")
	}
	cancel() // shutdown
	got := awaitLog(t, logs, "revoke_result not written")
	if got.level != slog.LevelWarn || !strings.Contains(got.msg, "next start") {
		t.Errorf("logged %s %q; want a WARN saying the next start writes it", got.level, got.msg)
	}
	for _, r := range logs.records() {
		// (The pass's wait for it, cut at AuditTimeout, is an ERROR of its own.)
		if r.level >= slog.LevelError && (strings.Contains(r.msg, "not written") || strings.Contains(r.msg, "revoke_result failed")) {
			t.Errorf("logged ERROR %q; want none (nothing failed: the worker stopped)", r.msg)
		}
	}
	n := len(revokeResults(f.sink.Events(), rev.ID)) // the request's 202

	w2 := workerEvery(t, restarted(t, f, f.sink), time.Second)
	res := tickUntilResult(t, f, w2, f.sink.Events, rev.ID)[n:]
	if len(res) != 1 || !cmp.Equal(res[0].Details["revoked"], []string{is.ID}) || res[0].Outcome.Status != 200 {
		t.Fatalf("revoke_result events after the restart %v (events %v), want one listing %s revoked, status 200", res, f.sink.Types(), is.ID)
	}
	assertOwedCleared(t, f, rev.ID)
}

// TestResultOwedWrittenElsewhereNotRepeated: instance A's request result
// fails and A's log keeps failing; instance B (its log working), past the
// grace, writes the result and clears the record's mark. A's worker then
// finds its mark cleared and owes nothing more: it used to write the
// result again, fail, mark the record again, and B wrote it once more
// after every grace for as long as A's log failed.
func TestResultOwedWrittenElsewhereNotRepeated(t *testing.T) {
	f := newRevFixture(t, nil)
	ctx := context.Background()
	_, rev, failing := revokeResultRefused(t, f, "incident 49")
	wa := workerEvery(t, f.svc, time.Second)
	other := &brokertest.Sink{}
	wb := workerEvery(t, restarted(t, f, other), time.Second)
	f.advance(time.Minute) // past the grace
	for range 2 {
		_ = within(t, "B's pass", func() error { return wb.Tick(ctx) })
	}
	if res := revokeResults(other.Events(), rev.ID); len(res) != 1 {
		t.Fatalf("B's revoke_results %v, want one", res)
	}
	assertOwedCleared(t, f, rev.ID)
	for range 4 {
		f.advance(time.Minute)
		_ = within(t, "A's pass", func() error { return wa.Tick(ctx) })
		_ = within(t, "B's pass", func() error { return wb.Tick(ctx) })
	}
	failing.Store(false)
	for range 3 {
		f.advance(time.Minute)
		_ = within(t, "A's pass", func() error { return wa.Tick(ctx) })
		_ = within(t, "B's pass", func() error { return wb.Tick(ctx) })
	}
	if res := revokeResults(other.Events(), rev.ID); len(res) != 1 {
		t.Errorf("B's revoke_results %d, want the one", len(res))
	}
	if res := revokeResults(f.sink.Events(), rev.ID); len(res) != 0 {
		t.Errorf("A's revoke_results %v, want none (B's is written)", res)
	}
}
