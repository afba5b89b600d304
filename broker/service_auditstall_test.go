package broker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// stallingSink holds every issue event (every event of type hold, when
// set) until release is closed, ignoring ctx as a real sink does once the
// event is queued (a disk whose writes hang), then records it.
type stallingSink struct {
	*brokertest.Sink
	release chan struct{}
	added   chan string // the type of each event recorded
	hold    string
}

func (s *stallingSink) Append(ctx context.Context, ev *audit.Event) error {
	if hold := s.hold; ev.Type == hold || (hold == "" && ev.Type == audit.TypeIssue) {
		<-s.release
	}
	err := s.Sink.Append(ctx, ev)
	s.added <- ev.Type
	return err
}

// newStallingSink is a stallingSink over rec holding events of type hold
// (issue events when ""); release, which the test's cleanup calls too, lets
// them through.
func newStallingSink(t *testing.T, rec *brokertest.Sink, hold string) (sink *stallingSink, release func()) {
	sink = &stallingSink{Sink: rec, release: make(chan struct{}), added: make(chan string, 16), hold: hold}
	var once sync.Once
	release = func() { once.Do(func() { close(sink.release) }) }
	t.Cleanup(release)
	return sink, release
}

// stallService is the fixture's Service over sink, waiting for an event at
// most 50ms (AuditTimeout).
func (f *fixture) stallService(t *testing.T, sink broker.AuditSink) *broker.Service {
	t.Helper()
	svc, err := broker.NewService(broker.Deps{
		Policy:       func() *policies.Policy { return f.pol },
		Authn:        func() broker.Authenticator { return f.authn },
		Minters:      map[string]broker.Minter{broker.KindVaultToken: f.minter},
		Revokers:     map[string]broker.Revoker{broker.KindVaultToken: f.minter},
		Store:        f.store,
		Audit:        sink,
		Now:          func() time.Time { return f.now },
		AuditTimeout: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// TestExchangeAuditStallFailsClosed: an issue event that does not become
// durable within AuditTimeout fails the exchange (503 audit_unavailable)
// instead of holding it indefinitely: the credential is revoked at its
// backend and marked revoked in the store (its record has landed), so a
// reconciliation after the grace never finds a recorded, unaudited
// credential that the caller is about to receive. Once the stalled event
// lands, a deny event for the issuance follows it.
func TestExchangeAuditStallFailsClosed(t *testing.T) {
	f := newFixture(t)
	sink, release := newStallingSink(t, f.sink, "")
	svc := f.stallService(t, sink)
	type result struct {
		res *broker.ExchangeResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", RequestID: "req_stall"})
		done <- result{res, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Exchange() still waiting for its stalled issue event after 10s (AuditTimeout 50ms)")
	}
	if e := broker.AsError(r.err); r.res != nil || !errors.Is(r.err, broker.ErrUnavailable) || e.Reason != "audit_unavailable" || e.RetryAfter <= 0 {
		t.Fatalf("Exchange() = %+v, %v; want nil, ErrUnavailable (audit_unavailable) with Retry-After", r.res, r.err)
	}
	calls := f.minter.Calls()
	if len(calls) != 1 {
		t.Fatalf("minted %d, want 1", len(calls))
	}
	id := calls[0].IssuanceID
	if diff := cmp.Diff([]string{id}, f.minter.RevokedIDs()); diff != "" {
		t.Errorf("revoked at the backend (-want +got):\n%s", diff)
	}
	if is, err := f.store.GetIssuance(context.Background(), id); err != nil || is.RevokedAt.IsZero() {
		t.Errorf("stored issuance = %+v, %v; want it marked revoked", is, err)
	}

	release()
	// A fake sink, unlike a real one, need not keep the stalled issue event
	// ahead of the deny: wait for both.
	seen := map[string]bool{}
	for !seen[audit.TypeIssue] || !seen[audit.TypeDeny] {
		select {
		case typ := <-sink.added:
			seen[typ] = true
		case <-time.After(10 * time.Second):
			t.Fatalf("audit events %v: want an issue and a deny event once the sink recovers", f.sink.Types())
		}
	}
	evs := f.sink.Events()
	if len(evs) != 2 {
		t.Fatalf("audit events %v, want issue and deny", f.sink.Types())
	}
	deny := evs[0]
	if deny.Type != audit.TypeDeny {
		deny = evs[1]
	}
	want := &audit.Outcome{Status: 503, Error: "temporarily_unavailable", Reason: "audit_unavailable"}
	if deny.IssuanceID != id || deny.RequestID != "req_stall" || !cmp.Equal(want, deny.Outcome) {
		t.Errorf("deny event = %+v (outcome %+v); want issuance %s, request req_stall, outcome %+v", deny, deny.Outcome, id, want)
	}
}

// TestExchangeDenyAuditStallIsBounded: a refused exchange waits for its
// deny event at most AuditTimeout, then gets its refusal (here 401
// invalid_grant), instead of waiting for as long as the audit write hangs.
// The deny event lands once the sink recovers.
func TestExchangeDenyAuditStallIsBounded(t *testing.T) {
	f := newFixture(t)
	sink, release := newStallingSink(t, f.sink, audit.TypeDeny)
	svc := f.stallService(t, sink)
	done := make(chan error, 1)
	go func() {
		_, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "not-a-known-token", Grant: "payments-vault", RequestID: "req_deny_stall"})
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Exchange() still waiting for its stalled deny event after 10s (AuditTimeout 50ms)")
	}
	if !errors.Is(err, broker.ErrUnauthenticated) {
		t.Fatalf("Exchange() = %v, want the refusal (ErrUnauthenticated)", err)
	}
	select { // the deny is still held: Exchange returned without it
	case typ := <-sink.added:
		t.Fatalf("event %s recorded before the sink recovered: the deny was not held, so this test cannot tell a bounded wait", typ)
	default:
	}
	release()
	select {
	case typ := <-sink.added:
		if typ != audit.TypeDeny {
			t.Errorf("event %s recorded, want the deny", typ)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no deny event 10s after the sink recovered")
	}
}

// TestAnswerAuditStallIsBounded: an introspection's and an admin call's own
// event, which must be durable before the answer, is waited for at most
// AuditTimeout: then 503 audit_unavailable, no answer, instead of waiting
// for as long as the audit write hangs.
func TestAnswerAuditStallIsBounded(t *testing.T) {
	f := newFixture(t)
	f.pol = adminPolicy(t)
	for _, tc := range []struct {
		hold string
		call func(*broker.Service) (any, error)
	}{
		{audit.TypeIntrospect, func(svc *broker.Service) (any, error) {
			return svc.Introspect(context.Background(), broker.IntrospectRequest{CallerToken: "payments", Token: "whatever"})
		}},
		{audit.TypeAdmin, func(svc *broker.Service) (any, error) {
			return svc.AuthorizeAdmin(context.Background(), broker.AdminRequest{Token: "payments", Role: broker.RoleRevoke, Action: "test"})
		}},
	} {
		t.Run(tc.hold, func(t *testing.T) {
			sink, _ := newStallingSink(t, &brokertest.Sink{}, tc.hold)
			svc := f.stallService(t, sink)
			type result struct {
				v   any
				err error
			}
			done := make(chan result, 1)
			go func() { v, err := tc.call(svc); done <- result{v, err} }()
			var r result
			select {
			case r = <-done:
			case <-time.After(10 * time.Second):
				t.Fatalf("still waiting for the stalled %s event after 10s (AuditTimeout 50ms)", tc.hold)
			}
			if e := broker.AsError(r.err); !errors.Is(r.err, broker.ErrUnavailable) || e.Reason != "audit_unavailable" || e.RetryAfter <= 0 {
				t.Fatalf("answer %v, %v; want ErrUnavailable (audit_unavailable) with Retry-After", r.v, r.err)
			}
		})
	}
}
