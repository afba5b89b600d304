package broker_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// restarted is a second Service over f's store, revokers and clock, with an
// audit log of its own (sink): the broker after a restart, or another
// instance sharing the store.
func restarted(t *testing.T, f *revFixture, sink broker.AuditSink, opts ...func(*broker.Deps)) *broker.Service {
	t.Helper()
	pol, err := policies.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	d := broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return brokertest.Authn{} },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: &brokertest.Minter{}},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: f.rv},
		Store:    f.store,
		Audit:    sink,
		Now:      f.clock,
	}
	for _, o := range opts {
		o(&d)
	}
	svc, err := broker.NewService(d)
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// revokeWithDecisionHeld revokes one issuance of f while its revoke event
// hangs (the sink holds it past the test's end: the instance dies with it
// queued), and returns the revocation id the 503 names.
func revokeWithDecisionHeld(t *testing.T, backendFails bool) (*revFixture, string) {
	t.Helper()
	f, sink, _ := newHoldRevFixture(t, nil, func(ev *audit.Event) bool { return ev.Type == audit.TypeRevoke })
	is := f.issue(t, "payments")
	awaitTypes(t, sink, audit.TypeIssue)
	if backendFails {
		f.rv.setErr(errors.New("vault: connection refused"))
	}
	err := within(t, "Revoke()", func() error {
		_, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_late")
		return err
	})
	var made *broker.RevocationMadeError
	if e := broker.AsError(err); !errors.Is(err, broker.ErrUnavailable) || e.Reason != "audit_unavailable" || !errors.As(err, &made) {
		t.Fatalf("Revoke() = %v, want 503 audit_unavailable naming the revocation made", err)
	}
	f.rv.setErr(nil)
	return f, made.ID
}

// TestRestartWritesNoResultWithoutDecision: a revocation whose revoke
// event was not durable in time is made all the same; its instance then
// stops (restart, crash) with the event still queued. The worker of the
// next instance over the same store (the restarted one, or another) knew
// nothing of it (the late decision was held in memory only): it wrote
// revoke_result events for the revocation whose revoke event is in no log
// (pending), or, the request having completed the record, nothing at all,
// the decision lost for good (completed). Now the record keeps the
// decision events until they are durable and stays incomplete meanwhile:
// that worker writes them to its log first, then its result.
func TestRestartWritesNoResultWithoutDecision(t *testing.T) {
	for _, tt := range []struct {
		name         string
		backendFails bool // the request leaves the issuance pending
	}{{"pending", true}, {"completed", false}} {
		t.Run(tt.name, func(t *testing.T) {
			f, id := revokeWithDecisionHeld(t, tt.backendFails)
			if got, err := f.store.GetRevocation(context.Background(), id); err != nil || len(got.Decision) == 0 || !got.CompletedAt.IsZero() {
				t.Errorf("stored revocation before the restart: %+v, %v; want its decision events kept, not complete", got, err)
			}

			// The restart: a new Service and worker over the same store,
			// its own (healthy) audit log.
			log := &brokertest.Sink{}
			svc := restarted(t, f, log)
			w, err := broker.NewRevocationWorker(svc, broker.WorkerOptions{Interval: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			// Within the grace (3 AuditTimeouts, 30 s) the decision is
			// left to the instance that made it: nothing written, no
			// result either.
			f.advance(2 * time.Second)
			if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
				t.Fatalf("worker pass = %v", err)
			}
			if types := log.Types(); len(types) != 0 {
				t.Fatalf("restarted instance's events within the grace: %v, want none", types)
			}
			f.advance(time.Minute)
			if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
				t.Fatalf("worker pass = %v", err)
			}
			evs := log.Events()
			var got []string
			for _, ev := range evs {
				by, _ := ev.Details["by"].(string)
				got = append(got, ev.Type+"/"+by)
			}
			if len(evs) != 2 || evs[0].Type != audit.TypeRevoke || evs[1].Type != audit.TypeRevokeResult {
				t.Fatalf("restarted instance's events %v, want [revoke/ revoke_result/worker] (no result without its revoke event before it)", got)
			}
			for _, ev := range evs {
				if ev.RevocationID != id {
					t.Errorf("%s event names revocation %q, want %q", ev.Type, ev.RevocationID, id)
				}
			}
			if evs[0].Reason != "leaked" || evs[0].Admin == "" || evs[0].RequestID != "req_late" {
				t.Errorf("revoke event written again: reason %q admin %q request %q; want the decision as made", evs[0].Reason, evs[0].Admin, evs[0].RequestID)
			}
			if s, _ := evs[1].Details["revoked"].([]string); len(s) != 1 {
				t.Errorf("revoke_result details %v, want the issuance revoked", evs[1].Details)
			}
			r, err := f.store.GetRevocation(ctx, id)
			if err != nil || len(r.Decision) != 0 || r.CompletedAt.IsZero() {
				t.Fatalf("stored revocation after the pass: %+v, %v; want its decision cleared, complete", r, err)
			}

			// Nothing more: the next pass finds nothing to do.
			f.advance(time.Minute)
			if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
				t.Fatalf("worker pass = %v", err)
			}
			if n := len(log.Events()); n != 2 {
				t.Errorf("restarted instance's events %v after another pass, want the 2 only", log.Types())
			}
		})
	}
}

// TestRestartDecisionFailingWritesNoResult: the restarted instance's log
// refuses the decision too: no revoke_result is written, the record keeps
// the events (and stays incomplete), and a later pass, once the log takes
// writes, writes both, in order.
func TestRestartDecisionFailingWritesNoResult(t *testing.T) {
	f, id := revokeWithDecisionHeld(t, true)
	var down atomic.Bool
	down.Store(true)
	log := &brokertest.Sink{}
	svc := restarted(t, f, &refusingSink{rec: log, down: &down})
	w, err := broker.NewRevocationWorker(svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	f.advance(2 * time.Second)
	_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	if types := log.Types(); len(types) != 0 {
		t.Fatalf("events while the log refuses the revoke event: %v, want none", types)
	}
	if r, err := f.store.GetRevocation(ctx, id); err != nil || len(r.Decision) == 0 || !r.CompletedAt.IsZero() {
		t.Fatalf("stored revocation: %+v, %v; want its decision events kept, not complete", r, err)
	}
	down.Store(false)
	f.advance(time.Minute)
	if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
		t.Fatalf("worker pass = %v", err)
	}
	if types := log.Types(); len(types) != 2 || types[0] != audit.TypeRevoke || types[1] != audit.TypeRevokeResult {
		t.Fatalf("events once the log takes writes: %v, want [revoke revoke_result]", types)
	}
	if r, err := f.store.GetRevocation(ctx, id); err != nil || len(r.Decision) != 0 || r.CompletedAt.IsZero() {
		t.Fatalf("stored revocation: %+v, %v; want its decision cleared, complete", r, err)
	}
}

// refusingSink refuses every revoke event while down is set (a disk that
// fails them) and records the rest in rec.
type refusingSink struct {
	rec  *brokertest.Sink
	down *atomic.Bool
}

func (s *refusingSink) Append(ctx context.Context, ev *audit.Event) error {
	if ev.Type == audit.TypeRevoke && s.down.Load() {
		return errors.New("write /var/log/keytrail/audit.jsonl: input/output error")
	}
	return s.rec.Append(ctx, ev)
}

// TestLateDecisionDurableClearsRecord: on the instance that made it, once
// the late revoke event and the request's result are written, the record
// no longer holds the decision and is complete (its request settled
// everything): no other instance writes the decision again.
func TestLateDecisionDurableClearsRecord(t *testing.T) {
	f, sink, release := newHoldRevFixture(t, nil, func(ev *audit.Event) bool { return ev.Type == audit.TypeRevoke })
	is := f.issue(t, "payments")
	awaitTypes(t, sink, audit.TypeIssue)
	_ = within(t, "Revoke()", func() error {
		_, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_late")
		return err
	})
	revs, err := f.store.ListRevocations(context.Background(), broker.RevocationFilter{})
	if err != nil || len(revs) != 1 {
		t.Fatalf("revocations %v, %v; want 1", revs, err)
	}
	id := revs[0].ID
	release()
	awaitTypes(t, sink, audit.TypeRevoke, audit.TypeRevokeResult)
	awaitRevocation(t, f, id, "its decision cleared, complete", func(r *broker.Revocation, err error) bool {
		return err == nil && len(r.Decision) == 0 && !r.CompletedAt.IsZero()
	})
	// Another instance's worker has nothing to write.
	log := &brokertest.Sink{}
	w, err := broker.NewRevocationWorker(restarted(t, f, log), broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(time.Minute)
	if err := within(t, "worker pass", func() error { return w.Tick(context.Background()) }); err != nil {
		t.Fatalf("worker pass = %v", err)
	}
	if types := log.Types(); len(types) != 0 {
		t.Errorf("other instance's events %v, want none", types)
	}
}

// TestDecisionFailedTwiceIsWrittenByWorker: the request's late revoke
// event and its retry both failed, the request having settled everything.
// The in-memory entry used to stay for the process's life and the
// revocation, complete, was never audited at all. Now the record stays
// incomplete and this instance's worker writes the decision, then a
// result, once the log takes writes, and forgets it.
func TestDecisionFailedTwiceIsWrittenByWorker(t *testing.T) {
	sink := &failLateSink{release: make(chan struct{}), added: make(chan string, 64), always: true}
	var once sync.Once
	release := func() { once.Do(func() { close(sink.release) }) }
	t.Cleanup(release)
	var down atomic.Bool
	down.Store(true)
	logs := msgHandler{want: "revoke event failed again", got: make(chan string, 16)}
	f := newRevFixtureDeps(t, nil, func(rec *brokertest.Sink) broker.AuditSink {
		sink.rec = rec
		return &switchSink{down: &down, failing: sink, healthy: rec}
	}, func(d *broker.Deps) { d.AuditTimeout = stallAuditTimeout; d.Logger = slog.New(logs) })
	ctx := context.Background()
	is := f.issue(t, "payments")
	_ = within(t, "Revoke()", func() error {
		_, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_late")
		return err
	})
	release()
	select {
	case <-logs.got: // the request's writes end with nothing written
	case <-time.After(10 * time.Second):
		t.Fatalf("no ERROR saying the revoke event failed again after 10s; events %v", f.types(1))
	}
	revs, err := f.store.ListRevocations(ctx, broker.RevocationFilter{})
	if err != nil || len(revs) != 1 {
		t.Fatalf("revocations %v, %v; want 1", revs, err)
	}
	id := revs[0].ID
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// While the log refuses revoke events: nothing written, the record
	// keeps the decision and stays incomplete.
	f.advance(time.Minute)
	_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	if types := f.types(1); len(types) != 0 {
		t.Fatalf("events while the log refuses revoke events: %v, want none", types)
	}
	if r, err := f.store.GetRevocation(ctx, id); err != nil || len(r.Decision) == 0 || !r.CompletedAt.IsZero() {
		t.Fatalf("stored revocation: %+v, %v; want its decision events kept, not complete", r, err)
	}
	down.Store(false)
	// Passes until the worker has written them (the request's writes end
	// just after their ERROR).
	deadline := time.Now().Add(10 * time.Second)
	for len(f.types(1)) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("events 10s after the log takes writes again: %v, want [revoke revoke_result]", f.types(1))
		}
		f.advance(time.Minute)
		if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
			t.Fatalf("worker pass = %v", err)
		}
	}
	if types := f.types(1); len(types) != 2 || types[0] != audit.TypeRevoke || types[1] != audit.TypeRevokeResult {
		t.Fatalf("events once the log takes writes: %v, want [revoke revoke_result]", types)
	}
	// Written again a minute or more after the decision: it says when
	// that was.
	for _, ev := range f.sink.Events() {
		if want := revs[0].CreatedAt.UTC().Format(audit.TimeFormat); ev.Type == audit.TypeRevoke && ev.Details["decided_at"] != want {
			t.Errorf("revoke event written again at %s: details.decided_at %v, want %s", ev.Time, ev.Details["decided_at"], want)
		}
	}
	if r, err := f.store.GetRevocation(ctx, id); err != nil || len(r.Decision) != 0 || r.CompletedAt.IsZero() {
		t.Fatalf("stored revocation: %+v, %v; want its decision cleared, complete", r, err)
	}
	f.advance(time.Minute)
	_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	if types := f.types(1); len(types) != 2 {
		t.Errorf("events after another pass %v, want the 2 only", types)
	}
}

// switchSink sends every event to failing while down is set, to healthy
// after.
type switchSink struct {
	down             *atomic.Bool
	failing, healthy broker.AuditSink
}

func (s *switchSink) Append(ctx context.Context, ev *audit.Event) error {
	if s.down.Load() {
		return s.failing.Append(ctx, ev)
	}
	return s.healthy.Append(ctx, ev)
}

// TestOrphanDecisionOneResultInFlightWhileLogHangs: another instance's
// worker takes over a decision whose maker is gone while its own log
// hangs, and the revocation's backend keeps failing (its issuance stays
// pending). Each pass used to start one more result write chained behind
// the hung one (the "one at a time" guard skipped passes that had pending
// issuances): once the log took writes again, every one of them landed, a
// duplicate revoke_result per pass the hang lasted. Now a pass that would
// write only because of the held decision starts none while the last one
// is on its way.
func TestOrphanDecisionOneResultInFlightWhileLogHangs(t *testing.T) {
	f, id := revokeWithDecisionHeld(t, true)
	f.rv.setErr(errors.New("vault: connection refused")) // stays pending
	other := &holdSink{rec: &brokertest.Sink{}, hold: func(ev *audit.Event) bool { return ev.Type == audit.TypeRevoke },
		release: make(chan struct{}), added: make(chan string, 64)}
	var once sync.Once
	release := func() { once.Do(func() { close(other.release) }) }
	t.Cleanup(release)
	svc := restarted(t, f, other, func(d *broker.Deps) { d.AuditTimeout = stallAuditTimeout })
	w, err := broker.NewRevocationWorker(svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for range 4 { // passes while the log hangs
		f.advance(time.Minute)
		_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	}
	release()
	awaitTypes(t, other, audit.TypeRevoke, audit.TypeRevokeResult)
	// The backend recovers: the next pass finishes the issuance and its
	// result is appended after every result started before it.
	f.rv.setErr(nil)
	f.advance(time.Minute)
	if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
		t.Fatalf("worker pass = %v", err)
	}
	awaitTypes(t, other, audit.TypeRevokeResult)
	var revokes, results int
	for _, ev := range other.rec.Events() {
		switch {
		case ev.RevocationID != id:
		case ev.Type == audit.TypeRevoke:
			revokes++
		case ev.Type == audit.TypeRevokeResult:
			results++
		}
	}
	if revokes != 1 || results != 2 {
		t.Errorf("other instance's log: %v (%d revoke, %d revoke_result); want the decision once, "+
			"one result for the passes while the log hung and the final one", other.rec.Types(), revokes, results)
	}
}

// TestDecisionOnlyNotCountedPending: a revocation whose backend part is
// done and whose only work left is its held decision (the audit log hangs)
// is not counted by keytrail_revocations_pending (PendingCount: backend
// work being retried, or a sweep past its time): that gauge used to read 1
// for as long as the audit log hung, an alert pointing at Vault.
func TestDecisionOnlyNotCountedPending(t *testing.T) {
	f, id := revokeWithDecisionHeld(t, false)
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(time.Minute)
	_ = within(t, "worker pass", func() error { return w.Tick(context.Background()) })
	r, err := f.store.GetRevocation(context.Background(), id)
	if err != nil || len(r.Pending) != 0 || len(r.Decision) == 0 || !r.CompletedAt.IsZero() {
		t.Fatalf("stored revocation %+v, %v; want nothing pending, its decision held, not complete", r, err)
	}
	if n := w.PendingCount(); n != 0 {
		t.Errorf("PendingCount() = %d with only the decision held, want 0 (no backend work, no sweep)", n)
	}
}

// chainSink seals every event into its own chain (audit.Chain), as the
// file sink does, and keeps the lines.
type chainSink struct {
	mu    sync.Mutex
	chain *audit.Chain
	lines [][]byte
	evs   []audit.Event
}

func (s *chainSink) Append(ctx context.Context, ev *audit.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	line, err := s.chain.Seal(ev, time.Now())
	if err != nil {
		return err
	}
	s.lines, s.evs = append(s.lines, line), append(s.evs, *ev)
	return nil
}

// TestOrphanDecisionSealedIntoWritersChain guards how the held decision
// is written by another instance: the record keeps the events without
// chain fields, and the writer's log seals them into its own chain
// (its chain id, the next seq, prev its last line's hash), which audit
// verify accepts.
func TestOrphanDecisionSealedIntoWritersChain(t *testing.T) {
	f, id := revokeWithDecisionHeld(t, false)
	r, err := f.store.GetRevocation(context.Background(), id)
	if err != nil || len(r.Decision) == 0 {
		t.Fatalf("stored revocation %+v, %v; want its decision held", r, err)
	}
	for _, ev := range r.Decision {
		if ev.V != 0 || ev.Seq != 0 || ev.Time != "" || ev.Chain != "" || ev.Prev != "" {
			t.Errorf("stored decision event has chain fields: v %d seq %d time %q chain %q prev %q", ev.V, ev.Seq, ev.Time, ev.Chain, ev.Prev)
		}
	}
	log := &chainSink{chain: audit.NewChain("instance-b")}
	for range 3 { // the other instance's log has lines already
		if err := log.Append(context.Background(), &audit.Event{Type: audit.TypeStart}); err != nil {
			t.Fatal(err)
		}
	}
	w, err := broker.NewRevocationWorker(restarted(t, f, log), broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(time.Minute)
	if err := within(t, "worker pass", func() error { return w.Tick(context.Background()) }); err != nil {
		t.Fatalf("worker pass = %v", err)
	}
	log.mu.Lock()
	defer log.mu.Unlock()
	if len(log.evs) != 5 || log.evs[3].Type != audit.TypeRevoke || log.evs[4].Type != audit.TypeRevokeResult {
		t.Fatalf("other instance's log holds %d events, want start x3, revoke, revoke_result", len(log.evs))
	}
	rv := log.evs[3]
	if rv.Chain != "instance-b" || rv.Seq != 4 || rv.Prev != audit.HashLine(log.lines[2]) || rv.RevocationID != id {
		t.Errorf("revoke event written again: chain %q seq %d prev %q revocation %q; want instance-b, 4, the hash of line 3, %s",
			rv.Chain, rv.Seq, rv.Prev, rv.RevocationID, id)
	}
	var all []byte
	for _, l := range log.lines {
		all = append(append(all, l...), '\n')
	}
	rep, err := audit.Verify([]audit.Input{{Name: "b.jsonl", R: bytes.NewReader(all)}}, audit.VerifyOptions{})
	if err != nil || len(rep.Problems) != 0 || rep.Lines != 5 {
		t.Errorf("audit verify of the other instance's log: %+v, %v; want 5 lines, no problem", rep, err)
	}
}
