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
	"github.com/keytrail/keytrail/broker/trace"
)

// clockSink seals events into one chain at the fixture's clock, keeping
// the lines.
type clockSink struct {
	mu    sync.Mutex
	chain *audit.Chain
	now   func() time.Time
	lines [][]byte
}

func (s *clockSink) Append(ctx context.Context, ev *audit.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	line, err := s.chain.Seal(ev, s.now())
	if err != nil {
		return err
	}
	s.lines = append(s.lines, line)
	return nil
}

// TestRewrittenDecisionTracedAtDecision: a held decision written again by
// another instance's worker (the maker died with its write queued) is
// stamped with the time it is written again. Nothing said when the admin
// decided: a trace of a log holding only that copy gave the re-write's
// time as revoked_at. The copy's revoke event now carries
// details.decided_at, the revocation's creation, and trace takes
// revoked_at from it.
func TestRewrittenDecisionTracedAtDecision(t *testing.T) {
	f, id := revokeWithDecisionHeld(t, false)
	ctx := context.Background()
	r, err := f.store.GetRevocation(ctx, id)
	if err != nil || len(r.Decision) == 0 || r.Selector.IssuanceID == "" {
		t.Fatalf("stored revocation %+v, %v; want its decision held", r, err)
	}
	issuance := r.Selector.IssuanceID
	// The issue event, in the maker's log (the revoke event never landed).
	var lines [][]byte
	maker := audit.NewChain("instance-a")
	for _, ev := range f.sink.Events() {
		if ev.Type == audit.TypeIssue {
			cp := *ev
			cp.V, cp.Seq, cp.Time, cp.Chain, cp.Prev = 0, 0, "", "", ""
			line, err := maker.Seal(&cp, r.CreatedAt.Add(-time.Minute))
			if err != nil {
				t.Fatal(err)
			}
			lines = append(lines, line)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("maker's events %v, want its issue event", f.sink.Types())
	}

	log := &clockSink{chain: audit.NewChain("instance-b"), now: f.clock}
	w, err := broker.NewRevocationWorker(restarted(t, f, log), broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(10 * time.Minute)
	if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
		t.Fatalf("worker pass = %v", err)
	}
	log.mu.Lock()
	lines = append(lines, log.lines...)
	log.mu.Unlock()
	if len(lines) != 3 {
		t.Fatalf("other instance's log holds %d lines, want revoke, revoke_result", len(lines)-1)
	}
	rv, err := audit.ParseLine(lines[1])
	if err != nil {
		t.Fatal(err)
	}
	want := r.CreatedAt.UTC().Format(audit.TimeFormat)
	if rv.Type != audit.TypeRevoke || rv.Details["decided_at"] != want || rv.Time == want {
		t.Errorf("revoke event written again: type %s time %s details.decided_at %v; want decided_at %s (the revocation's creation)",
			rv.Type, rv.Time, rv.Details["decided_at"], want)
	}

	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		if err := x.AddLine(l); err != nil {
			t.Fatal(err)
		}
	}
	res, err := x.Lookup(issuance)
	if err != nil {
		t.Fatal(err)
	}
	if res.Issuance.RevocationID != id || !res.Issuance.RevokedAt.Equal(r.CreatedAt) {
		t.Errorf("trace: revoked_at %v by %q, want %v (the decision) by %s; the re-write was at %s",
			res.Issuance.RevokedAt, res.Issuance.RevocationID, r.CreatedAt, id, rv.Time)
	}
}

// TestLateDecisionClearUnreplicatedDropsEntry: the request's late revoke
// event lands and clearDecision stores that it is durable, the store
// applying the write but not confirming its replicas
// (store_unreplicated). The record is then complete, so no worker visits
// it again, and the instance's in-memory entry for the late decision used
// to be kept for the process's life. It is dropped now: the write was
// applied.
func TestLateDecisionClearUnreplicatedDropsEntry(t *testing.T) {
	var fs *faultStore
	f, sink, release := newHoldRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
		fs = &faultStore{Store: st, acks: true}
		return fs
	}, func(ev *audit.Event) bool { return ev.Type == audit.TypeRevoke })
	is := f.issue(t, "payments")
	awaitTypes(t, sink, audit.TypeIssue)
	ctx := context.Background()
	err := within(t, "Revoke()", func() error {
		_, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_late")
		return err
	})
	var made *broker.RevocationMadeError
	if !errors.As(err, &made) {
		t.Fatalf("Revoke() = %v, want 503 audit_unavailable naming the revocation made", err)
	}
	id := made.ID
	if !broker.LateDecisionHeld(f.svc, id) {
		t.Fatalf("no late-decision entry for %s while its revoke event is held", id)
	}
	fs.failUpdates(updateUnreplicated, -1)
	release()
	awaitTypes(t, sink, audit.TypeRevoke, audit.TypeRevokeResult)
	awaitRevocation(t, f, id, "it cleared and complete, and the in-memory entry dropped once the clear is applied (store_unreplicated)", func(r *broker.Revocation, err error) bool {
		return err == nil && len(r.Decision) == 0 && !r.CompletedAt.IsZero() && !broker.LateDecisionHeld(f.svc, id)
	})
}

// TestHeldDecisionLeftToSlowMakerWithinGrace: another instance's worker
// used to write a held decision (and a result) as soon as it listed the
// record, although the instance that made it may only be slow: its late
// write then landed too, the decision twice. Now that worker leaves it to
// the maker for decisionGrace (3 AuditTimeouts from the revocation's
// creation): the maker's late write lands within it and clears the
// record, and the other instance writes nothing, then or after.
func TestHeldDecisionLeftToSlowMakerWithinGrace(t *testing.T) {
	for _, tt := range []struct {
		name         string
		backendFails bool // the request leaves the issuance pending
	}{{"pending", true}, {"completed", false}} {
		t.Run(tt.name, func(t *testing.T) {
			f, sink, release := newHoldRevFixture(t, nil, func(ev *audit.Event) bool { return ev.Type == audit.TypeRevoke })
			is := f.issue(t, "payments")
			awaitTypes(t, sink, audit.TypeIssue)
			if tt.backendFails {
				f.rv.setErr(errors.New("vault: connection refused"))
			}
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
			// Instance B: AuditTimeout 10 s (the default), grace 30 s.
			log := &brokertest.Sink{}
			w, err := broker.NewRevocationWorker(restarted(t, f, log), broker.WorkerOptions{Interval: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range []time.Duration{2 * time.Second, 10 * time.Second} {
				f.advance(d)
				if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
					t.Fatalf("B's worker pass = %v", err)
				}
				if types := log.Types(); len(types) != 0 {
					t.Fatalf("B's events %v after its pass within the grace, want none (the maker may only be slow)", types)
				}
			}
			// The maker's late write lands, and it tells the record.
			release()
			awaitTypes(t, sink, audit.TypeRevoke, audit.TypeRevokeResult)
			awaitRevocation(t, f, made.ID, "its decision cleared", func(r *broker.Revocation, err error) bool {
				return err == nil && len(r.Decision) == 0
			})
			for range 3 {
				f.advance(time.Minute)
				if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
					t.Fatalf("B's worker pass = %v", err)
				}
			}
			for _, ev := range log.Events() {
				if ev.Type == audit.TypeRevoke {
					t.Errorf("B's events %v: the decision written again though the maker's landed", log.Types())
					break
				}
			}
		})
	}
}

// heldClockSink seals every event into log at the fixture's clock, holding
// revoke events (and so the block events of the batch behind them) until
// release is closed: a disk whose writes hang, then recover. added gets
// each written event's type.
type heldClockSink struct {
	log     *clockSink
	release chan struct{}
	added   chan string
}

func (s *heldClockSink) Append(ctx context.Context, ev *audit.Event) error {
	if ev.Type == audit.TypeRevoke {
		<-s.release
	}
	err := s.log.Append(ctx, ev)
	s.added <- ev.Type
	return err
}

// TestLateDecisionTracedAtDecision: the maker's own late decision (its
// revoke event queued behind a write that hangs past AuditTimeout, the
// revocation made all the same) is sealed when the log recovers, ten
// minutes on. Its revoke and block events carried no decided_at (only a
// decision written again did): keytrail trace gave the recovery as
// revoked_at, while the store's mark and the record say the decision's
// time. Every revoke and block event now carries details.decided_at, the
// time the record and the marks use.
func TestLateDecisionTracedAtDecision(t *testing.T) {
	var clock func() time.Time
	log := &clockSink{chain: audit.NewChain("instance-a"), now: func() time.Time { return clock() }}
	sink := &heldClockSink{log: log, release: make(chan struct{}), added: make(chan string, 64)}
	var once sync.Once
	release := func() { once.Do(func() { close(sink.release) }) }
	t.Cleanup(release)
	f := newRevFixtureDeps(t, nil, func(*brokertest.Sink) broker.AuditSink { return sink },
		func(d *broker.Deps) { d.AuditTimeout = stallAuditTimeout })
	clock = f.clock
	ctx := context.Background()
	is := f.issue(t, "payments")
	if typ := <-sink.added; typ != audit.TypeIssue {
		t.Fatalf("first event %s, want issue", typ)
	}
	err := within(t, "Revoke()", func() error {
		_, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "leaked", broker.RevokeOptions{Block: true}, "req_late")
		return err
	})
	var made *broker.RevocationMadeError
	if !errors.As(err, &made) {
		t.Fatalf("Revoke() = %v, want 503 audit_unavailable naming the revocation made", err)
	}
	r, err := f.store.GetRevocation(ctx, made.ID)
	if err != nil {
		t.Fatal(err)
	}
	mark, err := f.store.GetIssuance(ctx, is.ID)
	if err != nil || !mark.RevokedAt.Equal(r.CreatedAt) {
		t.Fatalf("issuance mark %v, %v; want revoked at %v (the revocation's creation)", mark.RevokedAt, err, r.CreatedAt)
	}

	// The log recovers ten minutes later.
	f.advance(10 * time.Minute)
	release()
	for left := map[string]bool{audit.TypeRevoke: true, audit.TypeBlock: true, audit.TypeRevokeResult: true}; len(left) > 0; {
		select {
		case typ := <-sink.added:
			delete(left, typ)
		case <-time.After(10 * time.Second):
			t.Fatalf("events still missing after the log recovered: %v", left)
		}
	}

	log.mu.Lock()
	lines := append([][]byte(nil), log.lines...)
	log.mu.Unlock()
	want := r.CreatedAt.UTC().Format(audit.TimeFormat)
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		ev, err := audit.ParseLine(l)
		if err != nil {
			t.Fatal(err)
		}
		if (ev.Type == audit.TypeRevoke || ev.Type == audit.TypeBlock) && ev.Details["decided_at"] != want {
			t.Errorf("late %s event sealed at %s: details.decided_at %v, want %s (the decision)", ev.Type, ev.Time, ev.Details["decided_at"], want)
		}
		if err := x.AddLine(l); err != nil {
			t.Fatal(err)
		}
	}
	res, err := x.Lookup(is.ID)
	if err != nil {
		t.Fatal(err)
	}
	if res.Issuance.RevocationID != made.ID || !res.Issuance.RevokedAt.Equal(r.CreatedAt) {
		t.Errorf("trace: revoked_at %v by %q, want %v (the decision, as the store's mark) by %s",
			res.Issuance.RevokedAt, res.Issuance.RevocationID, r.CreatedAt, made.ID)
	}
}

// TestRewrittenDecisionFromOlderVersionGetsDecidedAt: a record stored by
// a version that did not set details.decided_at holds decision events
// without it. The worker that writes them again (the maker gone, the
// grace past) adds the revocation's creation to each revoke and block
// event: the copy is sealed at the time it is written, and trace and
// report would otherwise take that as the decision's.
func TestRewrittenDecisionFromOlderVersionGetsDecidedAt(t *testing.T) {
	f, sink, _ := newHoldRevFixture(t, nil, func(ev *audit.Event) bool { return ev.Type == audit.TypeRevoke })
	f.issue(t, "payments")
	awaitTypes(t, sink, audit.TypeIssue)
	ctx := context.Background()
	err := within(t, "Revoke()", func() error {
		_, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "leaked", broker.RevokeOptions{Block: true}, "req_late")
		return err
	})
	var made *broker.RevocationMadeError
	if !errors.As(err, &made) {
		t.Fatalf("Revoke() = %v, want 503 audit_unavailable naming the revocation made", err)
	}
	// The record as an older version stored it: no decided_at.
	if _, err := f.store.UpdateRevocation(ctx, made.ID, func(r *broker.Revocation) error {
		for _, ev := range r.Decision {
			delete(ev.Details, "decided_at")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	r, err := f.store.GetRevocation(ctx, made.ID)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]bool{}
	for _, ev := range r.Decision {
		kinds[ev.Type] = true
		if _, ok := ev.Details["decided_at"]; ok {
			t.Fatalf("stored %s event still has details.decided_at %v, want none (an older version's record)", ev.Type, ev.Details["decided_at"])
		}
	}
	if !kinds[audit.TypeRevoke] || !kinds[audit.TypeBlock] {
		t.Fatalf("stored decision holds %v, want revoke and block events", kinds)
	}

	// Another instance, past the grace.
	log := &brokertest.Sink{}
	w, err := broker.NewRevocationWorker(restarted(t, f, log), broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(10 * time.Minute)
	if err := within(t, "worker pass", func() error { return w.Tick(ctx) }); err != nil {
		t.Fatalf("worker pass = %v", err)
	}
	want := r.CreatedAt.UTC().Format(audit.TimeFormat)
	seen := map[string]bool{}
	for _, ev := range log.Events() {
		if ev.Type != audit.TypeRevoke && ev.Type != audit.TypeBlock {
			continue
		}
		seen[ev.Type] = true
		if ev.Details["decided_at"] != want {
			t.Errorf("%s event written again: details.decided_at %v, want %s (the revocation's creation)", ev.Type, ev.Details["decided_at"], want)
		}
	}
	if !seen[audit.TypeRevoke] || !seen[audit.TypeBlock] {
		t.Errorf("events written again %v, want the revoke and block events", log.Types())
	}
}
