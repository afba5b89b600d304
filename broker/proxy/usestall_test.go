package proxy_test

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// stallingSink holds every use event until release is closed (a disk whose
// writes hang: a real sink ignores ctx once the event is queued), then
// records it; added gets the type of every event recorded.
type stallingSink struct {
	*brokertest.Sink
	release chan struct{}
	added   chan string
}

func (s *stallingSink) Append(ctx context.Context, ev *audit.Event) error {
	if ev.Type == audit.TypeUse {
		<-s.release
	}
	err := s.Sink.Append(ctx, ev)
	s.added <- ev.Type
	return err
}

// releaser returns a func closing ch once, which t's cleanup calls too.
// Called after newFixture, that cleanup runs before the fixture's, whose
// server waits for the requests a stalled sink holds.
func releaser(t *testing.T, ch chan struct{}) func() {
	var once sync.Once
	release := func() { once.Do(func() { close(ch) }) }
	t.Cleanup(release)
	return release
}

// TestProxyUseAuditStallFailsClosed: a use event that does not become
// durable within the Service's AuditTimeout fails the call as a failed one
// does (503 temporarily_unavailable, audit_unavailable, with Retry-After)
// instead of holding it for as long as the audit write hangs, and nothing
// goes upstream, then or once the event lands. The deny event naming the
// issuance, with the use event's use_id, follows the stalled use event once
// the sink recovers.
func TestProxyUseAuditStallFailsClosed(t *testing.T) {
	sink := &stallingSink{Sink: &brokertest.Sink{}, release: make(chan struct{}), added: make(chan string, 16)}
	f := newFixture(t, fixtureOpts{audit: sink, auditTimeout: 50 * time.Millisecond})
	release := releaser(t, sink.release) // after newFixture: its server waits for the stalled request
	cred := f.credential(t, "stripe")
	if typ := <-sink.added; typ != audit.TypeIssue {
		t.Fatalf("first event %s, want issue", typ)
	}

	done := make(chan *response, 1)
	go func() { done <- f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(cred.AccessToken), nil) }()
	var res *response
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("proxied request still waiting for its stalled use event after 10s (AuditTimeout 50ms)")
	}
	if res.Status != 503 || !strings.Contains(res.Body, "temporarily_unavailable") || res.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d %q (Retry-After %q), want 503 temporarily_unavailable with Retry-After", res.Status, res.Body, res.Header.Get("Retry-After"))
	}

	release()
	seen := map[string]bool{}
	for !seen[audit.TypeUse] || !seen[audit.TypeDeny] {
		select {
		case typ := <-sink.added:
			seen[typ] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("audit events %v: want the use and a deny event once the sink recovers", sink.Types())
		}
	}
	if n := f.up.Hits(); n != 0 {
		t.Errorf("upstream hit %d times, want 0", n)
	}
	var use, deny *audit.Event
	for _, ev := range sink.Events() {
		switch ev.Type {
		case audit.TypeDeny:
			deny = ev
		case audit.TypeUse:
			use = ev
		}
	}
	if deny.IssuanceID != cred.Issuance.ID || deny.Outcome == nil || deny.Outcome.Status != 503 || deny.Outcome.Reason != "audit_unavailable" {
		t.Errorf("deny event = %+v (outcome %+v), want one for %s with 503 audit_unavailable", deny, deny.Outcome, cred.Issuance.ID)
	}
	// The late use event is answered by the deny: same use id (it had
	// none, and the use that landed later stood alone in the log).
	if use.UseID == "" || deny.UseID != use.UseID {
		t.Errorf("deny event use_id %q, want the stalled use event's %q", deny.UseID, use.UseID)
	}
}
