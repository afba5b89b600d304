package broker_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// holdSink holds every event hold picks until release is closed (a disk
// whose writes hang: a real sink ignores ctx once the event is queued),
// then records it in the fixture's sink; added gets each recorded event's
// type. Batches go through Append one by one (no AppendBatch), so a held
// event in a batch holds it.
type holdSink struct {
	rec     *brokertest.Sink
	hold    func(ev *audit.Event) bool
	release chan struct{}
	added   chan string
}

func (s *holdSink) Append(ctx context.Context, ev *audit.Event) error {
	if s.hold(ev) {
		<-s.release
	}
	err := s.rec.Append(ctx, ev)
	s.added <- ev.Type
	return err
}

// newHoldRevFixture is a revFixture whose Service waits for an audit event
// at most stallAuditTimeout and whose sink holds the events hold picks
// until release (which the test's cleanup calls too).
func newHoldRevFixture(t *testing.T, wrap func(*revFixture, broker.Store) broker.Store, hold func(ev *audit.Event) bool) (f *revFixture, sink *holdSink, release func()) {
	t.Helper()
	sink = &holdSink{hold: hold, release: make(chan struct{}), added: make(chan string, 64)}
	var once sync.Once
	release = func() { once.Do(func() { close(sink.release) }) }
	t.Cleanup(release)
	f = newRevFixtureDeps(t, wrap, func(rec *brokertest.Sink) broker.AuditSink {
		sink.rec = rec
		return sink
	}, func(d *broker.Deps) { d.AuditTimeout = stallAuditTimeout })
	return f, sink, release
}

// within runs call and returns its error, failing the test when it is
// still running after 10s (the audit wait it makes is bounded by stallAuditTimeout).
func within(t *testing.T, what string, call func() error) error {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- call() }()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatalf("%s still waiting for its stalled audit event after 10s (AuditTimeout %v)", what, stallAuditTimeout)
		return nil
	}
}

// awaitTypes waits until the sink has recorded every type of want (as many
// times as listed).
func awaitTypes(t *testing.T, sink *holdSink, want ...string) {
	t.Helper()
	left := map[string]int{}
	for _, typ := range want {
		left[typ]++
	}
	for n := len(want); n > 0; {
		select {
		case typ := <-sink.added:
			if left[typ] > 0 {
				left[typ]--
				n--
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("audit events %v: still missing %v after 10s", sink.rec.Types(), left)
		}
	}
}

// awaitRevocation polls the store (the record's clear is written after the
// late event lands, with nothing to wait on) until done holds for the
// revocation, failing the test with what as the wait after 10s.
func awaitRevocation(t *testing.T, f *revFixture, id, what string, done func(r *broker.Revocation, err error) bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		r, err := f.store.GetRevocation(context.Background(), id)
		if done(r, err) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("10s after the late revoke event landed: stored revocation %+v, %v; want %s", r, err, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRevokeDecisionAuditStallIsBounded: a revocation whose revoke event is
// not durable within AuditTimeout (a disk whose writes hang) is made all the
// same (it takes access away), but not reported done: 503
// audit_unavailable naming the revocation, within the bound. Once the sink
// recovers the revoke event lands, then the revoke_result, in that order.
func TestRevokeDecisionAuditStallIsBounded(t *testing.T) {
	f, sink, release := newHoldRevFixture(t, nil, func(ev *audit.Event) bool { return ev.Type == audit.TypeRevoke })
	is := f.issue(t, "payments")
	awaitTypes(t, sink, audit.TypeIssue)
	err := within(t, "Revoke()", func() error {
		rev, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_stall")
		if err == nil {
			return errors.New("revocation reported done: " + rev.ID)
		}
		return err
	})
	e := broker.AsError(err)
	if !errors.Is(err, broker.ErrUnavailable) || e.Reason != "audit_unavailable" || !strings.Contains(e.Safe, "rev_") || !strings.Contains(e.Safe, "was made") {
		t.Fatalf("Revoke() = %v (safe %q); want ErrUnavailable, audit_unavailable, naming the revocation made", err, e.Safe)
	}
	// Made: marked revoked in the store and ended at its backend.
	if got, err := f.store.GetIssuance(context.Background(), is.ID); err != nil || got.RevokedAt.IsZero() || got.RevocationID == "" {
		t.Errorf("issuance = %+v, %v; want it marked revoked", got, err)
	}
	if calls := f.rv.Calls(); len(calls) != 1 || calls[0] != is.ID {
		t.Errorf("backend revocations %v, want [%s]", calls, is.ID)
	}
	if types := f.types(1); len(types) != 0 {
		t.Errorf("events before the sink recovers %v, want none (the result waits for the revoke event)", types)
	}

	release()
	awaitTypes(t, sink, audit.TypeRevoke, audit.TypeRevokeResult)
	evs := f.sink.Events()[1:]
	if len(evs) != 2 || evs[0].Type != audit.TypeRevoke || evs[1].Type != audit.TypeRevokeResult {
		t.Fatalf("events %v, want revoke then revoke_result", f.types(1))
	}
	if evs[0].RevocationID == "" || evs[1].RevocationID != evs[0].RevocationID || !strings.Contains(e.Safe, evs[0].RevocationID) {
		t.Errorf("revocation ids %q, %q; answer %q: want the same, named in the answer", evs[0].RevocationID, evs[1].RevocationID, e.Safe)
	}
}

// TestRevokeResultAuditStallIsBounded: a revocation whose revoke event is
// durable but whose revoke_result hangs is answered (its receipt) within
// AuditTimeout, as when the result fails; the result lands later.
func TestRevokeResultAuditStallIsBounded(t *testing.T) {
	f, sink, release := newHoldRevFixture(t, nil, func(ev *audit.Event) bool { return ev.Type == audit.TypeRevokeResult })
	is := f.issue(t, "payments")
	var rev *broker.Revocation
	err := within(t, "Revoke()", func() (err error) {
		rev, err = f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_stall")
		return err
	})
	if err != nil || len(rev.Revoked) != 1 || rev.Revoked[0] != is.ID {
		t.Fatalf("Revoke() = %+v, %v; want %s revoked", rev, err, is.ID)
	}
	release()
	awaitTypes(t, sink, audit.TypeIssue, audit.TypeRevoke, audit.TypeRevokeResult)
}

// TestUnblockAuditStallIsBounded: an unblock whose unblock event is not
// durable within AuditTimeout lifts nothing (it gives access back) and
// answers 503 audit_unavailable within the bound; once the sink recovers,
// the late unblock event (200) is followed by a second one saying it did
// not happen (503 audit_unavailable).
func TestUnblockAuditStallIsBounded(t *testing.T) {
	f, sink, release := newHoldRevFixture(t, nil, func(ev *audit.Event) bool { return ev.Type == audit.TypeUnblock })
	ctx := context.Background()
	if _, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_1"); err != nil {
		t.Fatal(err)
	}
	err := within(t, "Unblock()", func() error { return f.svc.Unblock(ctx, secops, "payments-api", "resolved", "req_2") })
	if e := broker.AsError(err); !errors.Is(err, broker.ErrUnavailable) || e.Reason != "audit_unavailable" {
		t.Fatalf("Unblock() = %v, want ErrUnavailable (audit_unavailable)", err)
	}
	if blocks, err := f.svc.Blocks(ctx); err != nil || len(blocks) != 1 {
		t.Errorf("blocks %+v, %v; want payments-api still blocked", blocks, err)
	}
	release()
	awaitTypes(t, sink, audit.TypeUnblock, audit.TypeUnblock)
	var outcomes []int
	for _, ev := range f.sink.Events() {
		if ev.Type == audit.TypeUnblock {
			if ev.RequestID != "req_2" {
				t.Errorf("unblock event of request %q, want req_2", ev.RequestID)
			}
			outcomes = append(outcomes, ev.Outcome.Status)
			if ev.Outcome.Status == 503 && ev.Outcome.Reason != "audit_unavailable" {
				t.Errorf("unblock outcome %+v, want reason audit_unavailable", ev.Outcome)
			}
		}
	}
	if len(outcomes) != 2 || outcomes[0]+outcomes[1] != 200+503 {
		t.Errorf("unblock event statuses %v, want 200 and 503", outcomes)
	}
}

// TestUnblockFailureAuditStallIsBounded: an unblock whose delete fails
// writes a second unblock event (503) after its first; that event hanging
// holds the answer at most AuditTimeout.
func TestUnblockFailureAuditStallIsBounded(t *testing.T) {
	f, sink, release := newHoldRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store { return failDeleteBlockStore{st} },
		func(ev *audit.Event) bool {
			return ev.Type == audit.TypeUnblock && ev.Outcome != nil && ev.Outcome.Status != 200
		})
	ctx := context.Background()
	if _, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_1"); err != nil {
		t.Fatal(err)
	}
	err := within(t, "Unblock()", func() error { return f.svc.Unblock(ctx, secops, "payments-api", "resolved", "req_2") })
	if e := broker.AsError(err); !errors.Is(err, broker.ErrUnavailable) || e.Reason != "store_unavailable" {
		t.Fatalf("Unblock() = %v, want ErrUnavailable (store_unavailable)", err)
	}
	release()
	awaitTypes(t, sink, audit.TypeUnblock, audit.TypeUnblock)
}

// stallAuditTimeout is the AuditTimeout of the tests that stall an audit
// event on purpose: long enough that an event nobody holds is never late on
// a loaded machine (50ms was, once), short enough that each stalled one
// costs the test little.
const stallAuditTimeout = 500 * time.Millisecond
