package broker_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// queuingSink is a broker.QueuingAuditSink over a recording sink. Enqueue
// refuses (as a full queue) unless queue is set; an event it takes is
// recorded on another goroutine, as a sink's writer does, and done gets
// result (nil: the recording's) once release is closed (nil: at once).
type queuingSink struct {
	*brokertest.Sink
	queue   bool
	result  error
	release chan struct{}

	mu       sync.Mutex
	enqueued []string // the types of the events Enqueue took
	appended []string // the types of the events Append got
}

var _ broker.QueuingAuditSink = (*queuingSink)(nil)

func (s *queuingSink) Append(ctx context.Context, ev *audit.Event) error {
	s.mu.Lock()
	s.appended = append(s.appended, ev.Type)
	s.mu.Unlock()
	return s.Sink.Append(ctx, ev)
}

func (s *queuingSink) Enqueue(ev *audit.Event, done func(error)) bool {
	if !s.queue {
		return false
	}
	s.mu.Lock()
	s.enqueued = append(s.enqueued, ev.Type)
	s.mu.Unlock()
	go func() {
		if s.release != nil {
			<-s.release
		}
		err := s.result
		if err == nil {
			err = s.Sink.Append(context.Background(), ev)
		}
		done(err)
	}()
	return true
}

func (s *queuingSink) calls() (enqueued, appended []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.enqueued), slices.Clone(s.appended)
}

// queuingService is the fixture's Service over sink, waiting for an event at
// most auditTimeout.
func (f *fixture) queuingService(t *testing.T, sink broker.AuditSink, auditTimeout time.Duration) *broker.Service {
	t.Helper()
	svc, err := broker.NewService(broker.Deps{
		Policy:       func() *policies.Policy { return f.pol },
		Authn:        func() broker.Authenticator { return f.authn },
		Minters:      map[string]broker.Minter{broker.KindVaultToken: f.minter},
		Revokers:     map[string]broker.Revoker{broker.KindVaultToken: f.minter},
		Store:        f.store,
		Audit:        sink,
		Now:          func() time.Time { return f.now },
		AuditTimeout: auditTimeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// TestExchangeQueuesIssueEvent: with a QueuingAuditSink whose queue has
// room, the issue event is queued through Enqueue (no Append on a
// goroutine of its own) and the credential goes out once the sink reports
// it durable; with the queue full (Enqueue refuses) it is appended as
// before.
func TestExchangeQueuesIssueEvent(t *testing.T) {
	for _, queue := range []bool{true, false} {
		f := newFixture(t)
		sink := &queuingSink{Sink: f.sink, queue: queue}
		svc := f.queuingService(t, sink, 10*time.Second)
		res, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", RequestID: "req_queued"})
		if err != nil {
			t.Fatalf("queue %v: Exchange() = %v", queue, err)
		}
		enqueued, appended := sink.calls()
		wantEnq, wantApp := []string{audit.TypeIssue}, []string(nil)
		if !queue {
			wantEnq, wantApp = nil, []string{audit.TypeIssue}
		}
		if !cmp.Equal(wantEnq, enqueued) || !cmp.Equal(wantApp, appended) {
			t.Errorf("queue %v: enqueued %v, appended %v; want %v, %v", queue, enqueued, appended, wantEnq, wantApp)
		}
		evs := f.sink.Events()
		if len(evs) != 1 || evs[0].Type != audit.TypeIssue || evs[0].IssuanceID != res.Issuance.ID || evs[0].RequestID != "req_queued" {
			t.Errorf("queue %v: audit events %v, want the issue event of %s", queue, f.sink.Types(), res.Issuance.ID)
		}
	}
}

// TestExchangeQueuedIssueEventFailsClosed: an issue event queued through
// Enqueue that fails, or is not durable within AuditTimeout, fails the
// exchange as an appended one does (503 audit_unavailable): the credential
// is revoked at its backend and its stored record marked revoked.
func TestExchangeQueuedIssueEventFailsClosed(t *testing.T) {
	for _, c := range []struct {
		name    string
		result  error
		release chan struct{}
	}{
		{"failed", broker.Unavailable("audit_unavailable", time.Second, errors.New("disk full")), nil},
		{"pending", nil, make(chan struct{})},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			sink := &queuingSink{Sink: f.sink, queue: true, result: c.result, release: c.release}
			if c.release != nil {
				t.Cleanup(func() { close(c.release) })
			}
			svc := f.queuingService(t, sink, 200*time.Millisecond)
			res, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", RequestID: "req_queued"})
			if e := broker.AsError(err); res != nil || !errors.Is(err, broker.ErrUnavailable) || e.Reason != "audit_unavailable" {
				t.Fatalf("Exchange() = %+v, %v; want nil, ErrUnavailable (audit_unavailable)", res, err)
			}
			if enqueued, _ := sink.calls(); !cmp.Equal([]string{audit.TypeIssue}, enqueued) {
				t.Errorf("enqueued %v, want the issue event", enqueued)
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
		})
	}
}
