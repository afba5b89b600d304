package proxy_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// TestProxyUseAuditFailureDoesNotForward: a `use` event that cannot be made
// durable stops the call before the upstream sees it (fail closed): 503
// temporarily_unavailable with Retry-After, and a deny event naming the
// issuance where the sink still takes one. The deny names no use_id: the
// use event is nowhere in the log (a deny naming it would answer a use that
// does not exist).
func TestProxyUseAuditFailureDoesNotForward(t *testing.T) {
	denied := make(chan *audit.Event, 1)
	sink := &brokertest.Sink{
		Fail: func(ev *audit.Event) bool { return ev.Type == audit.TypeUse },
		Record: func(ev *audit.Event) {
			if ev.Type == audit.TypeDeny {
				denied <- ev
			}
		},
	}
	f := newFixture(t, fixtureOpts{audit: sink})
	cred := f.credential(t, "stripe")
	res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(cred.AccessToken), nil)
	if res.Status != 503 || !strings.Contains(res.Body, "temporarily_unavailable") || res.Header.Get("Retry-After") == "" {
		t.Fatalf("status %d %q (Retry-After %q), want 503 temporarily_unavailable with Retry-After", res.Status, res.Body, res.Header.Get("Retry-After"))
	}
	if n := f.up.Hits(); n != 0 {
		t.Errorf("upstream hit %d times, want 0", n)
	}
	var deny *audit.Event
	select {
	case deny = <-denied: // written without waiting for it: maybe after the answer
	case <-time.After(10 * time.Second):
		t.Fatalf("no deny event within 10s; events %v", sink.Types())
	}
	if deny.IssuanceID != cred.Issuance.ID || deny.Outcome == nil || deny.Outcome.Status != 503 || deny.Outcome.Reason != "audit_unavailable" {
		t.Errorf("deny event = %+v, want one for %s with 503 audit_unavailable", deny, cred.Issuance.ID)
	}
	if deny.UseID != "" {
		t.Errorf("deny event names use %q, whose use event failed (in no log); want no use_id", deny.UseID)
	}
}

// failUseHoldDenySink fails every use event at once (a disk that refuses
// the write) and holds every deny event until release is closed (the disk
// then hangs); added gets the type of every event it was asked for.
type failUseHoldDenySink struct {
	*brokertest.Sink
	release chan struct{}
	added   chan string
}

func (s *failUseHoldDenySink) Append(ctx context.Context, ev *audit.Event) error {
	if ev.Type == audit.TypeDeny {
		<-s.release
	}
	err := s.Sink.Append(ctx, ev)
	s.added <- ev.Type
	return err
}

// TestProxyDenyAfterUseAuditFailureIsNotWaited: a request refused because
// its use event failed does not wait again for its deny event (a second
// AuditTimeout on a disk that fails, then hangs: twice the bound, as when
// the audit file's deferred overflow is full and then takes one more): the
// 503 goes out at once and the deny lands once the sink recovers. The
// Service's AuditTimeout is a minute: the old wait showed as a request
// still running after 10s.
func TestProxyDenyAfterUseAuditFailureIsNotWaited(t *testing.T) {
	sink := &failUseHoldDenySink{
		Sink:    &brokertest.Sink{Fail: func(ev *audit.Event) bool { return ev.Type == audit.TypeUse }},
		release: make(chan struct{}), added: make(chan string, 16),
	}
	f := newFixture(t, fixtureOpts{audit: sink, auditTimeout: time.Minute})
	release := releaser(t, sink.release) // after newFixture: its server waits for the held request
	cred := f.credential(t, "stripe")

	done := make(chan *response, 1)
	go func() { done <- f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(cred.AccessToken), nil) }()
	var res *response
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("proxied request still waiting for its deny event after 10s (its use event failed at once)")
	}
	if res.Status != 503 || !strings.Contains(res.Body, "temporarily_unavailable") {
		t.Fatalf("status %d %q, want 503 temporarily_unavailable", res.Status, res.Body)
	}
	release()
	for {
		select {
		case typ := <-sink.added:
			if typ != audit.TypeDeny {
				continue
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("no deny event within 10s of the sink's recovery; events %v", sink.Types())
		}
		break
	}
	if n := f.up.Hits(); n != 0 {
		t.Errorf("upstream hit %d times, want 0", n)
	}
}
