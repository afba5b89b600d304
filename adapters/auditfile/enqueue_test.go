package auditfile

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
)

// waitDone waits (generously) for an Enqueue's done.
func waitDone(t *testing.T, done <-chan error) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("no outcome within 10s (Enqueue's done or an Append)")
		return nil
	}
}

// stuckWithQueueFull opens a sink (MaxBatch 1, DeferFor an hour) whose
// writer is stuck in an fsync that hangs, writing an Append ("stuck", its
// outcome on stuck), with its queue full: one event Enqueued ("first", its
// done on first). release lets the fsync go on; it is also called at
// Cleanup, before Close.
func stuckWithQueueFull(t *testing.T) (s *Sink, release func(), stuck, first chan error) {
	t.Helper()
	fl := &faults{}
	gate, syncing := make(chan struct{}), make(chan struct{})
	fl.set(func(f *faults) { f.syncGate = gate; f.onSync = func() { close(syncing) } })
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s = openT(t, Options{Path: path, Now: newClock().Now, MaxBatch: 1, DeferFor: time.Hour}, faultSeams(fl))
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release) // before Close
	stuck = make(chan error, 1)
	go func() { stuck <- s.Append(context.Background(), &audit.Event{Type: "stuck"}) }()
	select { // the writer is in the fsync that hangs
	case <-syncing:
	case <-time.After(10 * time.Second):
		t.Fatal("no fsync within 10s")
	}
	first = make(chan error, 1)
	if !s.Enqueue(&audit.Event{Type: "first"}, func(err error) { first <- err }) {
		t.Fatal("Enqueue() = false with room in the queue (MaxBatch 1)")
	}
	return s, release, stuck, first
}

// TestEnqueueCommitsAtOnce: an event handed over by Enqueue is committed
// at once, as an Append's is (not held for DeferFor as a deferred one is:
// here an hour), taking the deferred events held before it along, and done
// is called once with nil when it is durable. It gets a request id.
func TestEnqueueCommitsAtOnce(t *testing.T) {
	fl := &faults{}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, Now: newClock().Now, DeferFor: time.Hour}, faultSeams(fl))
	s.AppendDeferred(&audit.Event{Type: "deferred"}, nil)
	ev := &audit.Event{Type: "queued"}
	done := make(chan error, 2)
	if !s.Enqueue(ev, func(err error) { done <- err }) {
		t.Fatal("Enqueue() = false on an open sink with room in its queue")
	}
	if err := waitDone(t, done); err != nil {
		t.Fatalf("done(%v), want nil", err)
	}
	if diff := cmp.Diff([]string{"1:deferred", "2:queued"}, types(t, path)); diff != "" {
		t.Errorf("file (-want +got):\n%s", diff)
	}
	if st := s.Stats(); st.Batches != 1 || st.Events != 2 {
		t.Errorf("stats %+v, want 1 batch of 2 events", st)
	}
	if evs := readEvents(t, path); evs[1].RequestID == "" {
		t.Error("the queued event has no request_id")
	}
	select {
	case err := <-done:
		t.Errorf("done called twice (second: %v)", err)
	default:
	}
}

// TestEnqueueRefusesWhenItWouldWait: with the writer stuck (an fsync that
// hangs) and its queue full, Enqueue queues nothing and reports false
// instead of waiting for room; the event it did queue is written once the
// writer goes on. A closed sink, a nil event or a nil
// done are refused the same way, and done is never called.
func TestEnqueueRefusesWhenItWouldWait(t *testing.T) {
	s, release, stuck, first := stuckWithQueueFull(t)
	called := make(chan error, 1)
	if s.Enqueue(&audit.Event{Type: "second"}, func(err error) { called <- err }) {
		t.Fatal("Enqueue() = true with the queue full behind a stuck writer")
	}
	release()
	if err := waitDone(t, stuck); err != nil {
		t.Errorf("Append() = %v once the fsync went on", err)
	}
	if err := waitDone(t, first); err != nil {
		t.Errorf("done(%v) for the queued event, want nil", err)
	}
	if s.Enqueue(nil, func(err error) { called <- err }) || s.Enqueue(&audit.Event{Type: "x"}, nil) {
		t.Error("Enqueue() = true for a nil event or a nil done")
	}
	if err := s.Close(); err != nil {
		t.Logf("Close() = %v", err)
	}
	if s.Enqueue(&audit.Event{Type: "closed"}, func(err error) { called <- err }) {
		t.Error("Enqueue() = true on a closed sink")
	}
	select {
	case err := <-called:
		t.Errorf("done called (%v) for an event Enqueue refused", err)
	default:
	}
}

// TestEnqueueDoesNotWaitForAClosePending: with the writer stuck (an fsync
// that hangs) and its queue full, an Append waits for room holding mu's
// read lock, and a Close (shutdown, after shutdown_timeout and the grace
// for cut-off requests) waits for the write lock behind it. Enqueue must
// not queue up behind that Close (a blocking RLock) but report false at
// once, so that the exchange appends on a goroutine of its own and its
// AuditTimeout still bounds its wait (it then revokes the credential and
// answers 503) instead of hanging with the credential minted.
func TestEnqueueDoesNotWaitForAClosePending(t *testing.T) {
	s, release, stuck, first := stuckWithQueueFull(t)
	waiting := make(chan error, 1)
	go func() { waiting <- s.Append(context.Background(), &audit.Event{Type: "waiting"}) }()
	poll := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10s", what)
			}
		}
	}
	poll("the Append waits for room holding the read lock", func() bool {
		if s.mu.TryLock() {
			s.mu.Unlock()
			return false
		}
		return true
	})
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	poll("Close waits for the write lock", func() bool {
		if s.mu.TryRLock() {
			s.mu.RUnlock()
			return false
		}
		return true
	})
	queued := make(chan bool, 1)
	called := make(chan error, 1)
	go func() { queued <- s.Enqueue(&audit.Event{Type: "late"}, func(err error) { called <- err }) }()
	var ok, returned bool
	select {
	case ok = <-queued:
		returned = true
		if ok {
			t.Error("Enqueue() = true while Close is under way")
		}
	case <-time.After(10 * time.Second):
		t.Error("Enqueue() waited (10s) for a Close under way instead of reporting false")
	}
	release()
	for _, c := range []chan error{stuck, first, waiting} {
		if err := waitDone(t, c); err != nil {
			t.Errorf("an event queued before Close: %v, want nil", err)
		}
	}
	if err := waitDone(t, closed); err != nil {
		t.Logf("Close() = %v", err)
	}
	if !returned {
		ok = <-queued // once Close is done
	}
	if !ok {
		select {
		case err := <-called:
			t.Errorf("done called (%v) for an event Enqueue refused", err)
		default:
		}
	}
}
