package proxy_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// hungSink is a disk whose writes hang once hang is closed, with the bounded
// and deferred appends of the audit file keytrail server writes to
// (auditfile.Sink): AppendWithin gives up after d (noting the event's type
// in waited), AppendDeferred returns at once. Every event held is recorded
// once release is closed; added gets the type of each event recorded.
type hungSink struct {
	*brokertest.Sink
	hang, release chan struct{}
	added         chan string

	mu     sync.Mutex
	waited []string // the events an AppendWithin gave up on
}

func (s *hungSink) hung() bool {
	select {
	case <-s.hang:
		return true
	default:
		return false
	}
}

func (s *hungSink) record(ev *audit.Event) error {
	err := s.Sink.Append(context.Background(), ev)
	s.added <- ev.Type
	return err
}

func (s *hungSink) Append(ctx context.Context, ev *audit.Event) error {
	if s.hung() {
		<-s.release
	}
	return s.record(ev)
}

func (s *hungSink) AppendWithin(ev *audit.Event, d time.Duration) error {
	if !s.hung() {
		return s.record(ev)
	}
	recorded := make(chan error, 1)
	go func() { <-s.release; recorded <- s.record(ev) }() // the event stays queued
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case err := <-recorded:
		return err
	case <-t.C:
		s.mu.Lock()
		s.waited = append(s.waited, ev.Type)
		s.mu.Unlock()
		return broker.Unavailable("audit_unavailable", time.Second, fmt.Errorf("not durable within %s: %w", d, broker.ErrAuditPending))
	}
}

func (s *hungSink) AppendDeferred(ev *audit.Event, done func(error)) {
	if !s.hung() {
		err := s.record(ev)
		if done != nil {
			done(err)
		}
		return
	}
	go func() {
		<-s.release
		err := s.record(ev)
		if done != nil {
			done(err)
		}
	}()
}

func (s *hungSink) Waited() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.waited...)
}

// TestProxySharedUseOnHungDiskWaitsOnce: a request from a new source
// address (a shared_use_suspected event) on a disk whose writes hang waits
// for its audit events at most one AuditTimeout in all, the use event's,
// then gets 503 audit_unavailable with nothing sent upstream. (It waited an
// AuditTimeout for the shared_use_suspected event, then another for the
// use event: 20 s with the default 10 s.) The shared_use_suspected event
// still lands once the disk recovers.
func TestProxySharedUseOnHungDiskWaitsOnce(t *testing.T) {
	sink := &hungSink{Sink: &brokertest.Sink{}, hang: make(chan struct{}), release: make(chan struct{}), added: make(chan string, 64)}
	f := newFixture(t, fixtureOpts{audit: sink, auditTimeout: 50 * time.Millisecond})
	release := releaser(t, sink.release) // after newFixture: its server waits for the held events
	cred := f.credential(t, "stripe")
	close(sink.hang)

	hdr := bearer(cred.AccessToken)
	hdr.Set("X-Forwarded-For", "192.0.2.7") // not the address it was issued to
	done := make(chan *response, 1)
	go func() { done <- f.do(t, http.MethodGet, "/v1/proxy/stripe/v1/charges", hdr, nil) }()
	var res *response
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("proxied request still waiting for its audit events after 10s (AuditTimeout 50ms)")
	}
	if res.Status != 503 || !strings.Contains(res.Body, "temporarily_unavailable") {
		t.Fatalf("status %d %q, want 503 temporarily_unavailable", res.Status, res.Body)
	}
	if diff := cmp.Diff([]string{audit.TypeUse}, sink.Waited()); diff != "" {
		t.Errorf("events the request waited AuditTimeout for (-want +got):\n%s", diff)
	}
	if n := f.up.Hits(); n != 0 {
		t.Errorf("upstream hit %d times, want 0", n)
	}

	release()
	seen := map[string]bool{}
	for !seen[audit.TypeSharedUse] || !seen[audit.TypeUse] || !seen[audit.TypeDeny] {
		select {
		case typ := <-sink.added:
			seen[typ] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("audit events %v: want shared_use_suspected, use and deny once the disk recovers", sink.Types())
		}
	}
	if n := f.up.Hits(); n != 0 {
		t.Errorf("upstream hit %d times after the disk recovered, want 0", n)
	}
}
