package auditfile

import (
	"bytes"
	"errors"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// blockedIn reports whether some goroutine is blocked in a select or a
// channel operation with fn on its stack.
func blockedIn(fn string) bool {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	for _, g := range bytes.Split(buf, []byte("\n\n")) {
		head, _, _ := bytes.Cut(g, []byte("\n"))
		if (bytes.Contains(head, []byte("[select")) || bytes.Contains(head, []byte("[chan send"))) && bytes.Contains(g, []byte(fn)) {
			return true
		}
	}
	return false
}

// TestAppendWithinBehindHeldDeferred: an event AppendWithin waits for does
// not overtake the deferred events held (the queue full, the writer stuck)
// before it was called. The proxy defers a request's shared_use_suspected
// event and then waits for its use event: the log must hold them in that
// order, as when both were waited for. AppendWithin sent its event straight
// to the queue, ahead of every held deferred event the feeder had not
// queued yet: the use event landed before the shared_use_suspected event
// of its own request.
func TestAppendWithinBehindHeldDeferred(t *testing.T) {
	s, path, release, errs := stuckWithFullQueue(t)
	const n = 5
	outcomes := make(chan error, n+1)
	for i := range n {
		s.AppendDeferred(&audit.Event{Type: fmt.Sprintf("d%d", i)}, func(err error) { outcomes <- err })
	}
	s.AppendDeferred(&audit.Event{Type: "shared_use_suspected"}, func(err error) { outcomes <- err })
	within := make(chan error, 1)
	go func() { within <- s.AppendWithin(&audit.Event{Type: "use"}, time.Minute) }()
	for !blockedIn("(*Sink).AppendWithin") { // waiting: queued, held or blocked on the queue
		runtime.Gosched()
	}
	release()
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("Append() = %v", err)
		}
	}
	if err := <-within; err != nil {
		t.Fatalf("AppendWithin(use) = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range n + 1 {
		if err := <-outcomes; err != nil {
			t.Fatalf("deferred outcome = %v", err)
		}
	}
	want := []string{"1:first", "2:queued", "3:queued"}
	for i := range n {
		want = append(want, fmt.Sprintf("%d:d%d", i+4, i))
	}
	want = append(want, fmt.Sprintf("%d:shared_use_suspected", n+4), fmt.Sprintf("%d:use", n+5))
	if diff := cmp.Diff(want, types(t, path)); diff != "" {
		t.Errorf("file (-want +got):\n%s", diff)
	}
}

// TestAppendWithinNotQueuedStillLands: an event AppendWithin gave up on
// before it could even be queued (the writer stuck, the queue full until
// the bound) is reported pending (broker.ErrAuditPending: "may still
// land", broker.BoundedAuditSink) and must then land once the disk
// answers. It was dropped: the exchange, told its orphan_revoked event was
// pending, queued the request's deny behind an event never written.
func TestAppendWithinNotQueuedStillLands(t *testing.T) {
	s, path, release, errs := stuckWithFullQueue(t)
	err := s.AppendWithin(&audit.Event{Type: "orphan_revoked"}, time.Millisecond)
	if !errors.Is(err, broker.ErrAuditPending) {
		t.Fatalf("AppendWithin with the queue full = %v, want ErrAuditPending", err)
	}
	release()
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("Append() = %v", err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	want := []string{"1:first", "2:queued", "3:queued", "4:orphan_revoked"}
	if diff := cmp.Diff(want, types(t, path)); diff != "" {
		t.Errorf("file (-want +got):\n%s", diff)
	}
}
