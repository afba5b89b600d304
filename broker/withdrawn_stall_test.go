package broker_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// fifoStallSink writes events one at a time, in order, as the audit file
// does, and holds the event of type hold (a disk whose writes hang) until
// release is closed: every event after it waits behind it. It is a
// DeferredAuditSink, as the file is. tried lists each append as it starts
// ("deferred:<type>" for AppendDeferred); added, when not nil, gets the
// type of each event written.
type fifoStallSink struct {
	*brokertest.Sink
	hold    string
	release chan struct{}
	added   chan string
	mu      sync.Mutex // held by the event being written
	triedMu sync.Mutex
	tried   []string
}

func (s *fifoStallSink) try(what string) {
	s.triedMu.Lock()
	s.tried = append(s.tried, what)
	s.triedMu.Unlock()
}

func (s *fifoStallSink) write(ctx context.Context, ev *audit.Event) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ev.Type == s.hold {
		<-s.release
	}
	err := s.Sink.Append(ctx, ev)
	if s.added != nil {
		s.added <- ev.Type
	}
	return err
}

func (s *fifoStallSink) Append(ctx context.Context, ev *audit.Event) error {
	s.try(ev.Type)
	return s.write(ctx, ev)
}

func (s *fifoStallSink) AppendDeferred(ev *audit.Event, done func(error)) {
	s.try("deferred:" + ev.Type)
	go func() { done(s.write(context.Background(), ev)) }()
}

func (s *fifoStallSink) triedTypes() []string {
	s.triedMu.Lock()
	defer s.triedMu.Unlock()
	return slices.Clone(s.tried)
}

var _ broker.DeferredAuditSink = (*fifoStallSink)(nil)

// TestExchangeWithdrawnStallDefersDeny: when the orphan_revoked event that
// follows a durable issue event (store failed, or the caller went away) is
// still pending after AuditTimeout, the request's deny event is deferred
// behind it, not waited for: with the caller gone the deny was appended
// without any bound (Exchange held until the disk answered), and after a
// store failure it was waited for a second AuditTimeout.
func TestExchangeWithdrawnStallDefersDeny(t *testing.T) {
	for _, tc := range []struct {
		name       string
		storeFails bool // else the caller goes away during the mint
	}{
		{name: "store_failed", storeFails: true},
		{name: "client_gone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			sink := &fifoStallSink{Sink: f.sink, hold: audit.TypeOrphanRevoked, release: make(chan struct{})}
			var once sync.Once
			t.Cleanup(func() { once.Do(func() { close(sink.release) }) })
			withdrawnExchange(t, f, sink, tc.storeFails, 50*time.Millisecond, "AuditTimeout 50ms", "the deny deferred behind the pending orphan_revoked")
			once.Do(func() { close(sink.release) })
		})
	}
}

// TestAnswerAuditStallDenyFollows: an introspection or admin call refused
// because its event is still pending after AuditTimeout (503
// audit_unavailable) has a deny event queued behind that event, nobody
// waiting for it: should the pending event land, saying status 200, the
// log goes on to say the call was refused, as for a pending issue or use
// event.
func TestAnswerAuditStallDenyFollows(t *testing.T) {
	f := newFixture(t)
	f.pol = adminPolicy(t)
	for _, tc := range []struct {
		hold string
		call func(*broker.Service) error
	}{
		{audit.TypeIntrospect, func(svc *broker.Service) error {
			_, err := svc.Introspect(context.Background(), broker.IntrospectRequest{CallerToken: "payments", Token: "whatever", RequestID: "req_answer"})
			return err
		}},
		{audit.TypeAdmin, func(svc *broker.Service) error {
			_, err := svc.AuthorizeAdmin(context.Background(), broker.AdminRequest{Token: "payments", Role: broker.RoleRevoke, Action: "test", RequestID: "req_answer"})
			return err
		}},
	} {
		t.Run(tc.hold, func(t *testing.T) {
			sink := &fifoStallSink{Sink: &brokertest.Sink{}, hold: tc.hold, release: make(chan struct{}), added: make(chan string, 16)}
			var once sync.Once
			release := func() { once.Do(func() { close(sink.release) }) }
			t.Cleanup(release)
			svc := f.stallService(t, sink)
			if err := tc.call(svc); broker.AsError(err).Reason != "audit_unavailable" {
				t.Fatalf("answer %v, want audit_unavailable", err)
			}
			release()
			for seen := 0; seen < 2; seen++ {
				select {
				case <-sink.added:
				case <-time.After(10 * time.Second):
					t.Fatalf("events %v: want the %s event and a deny once the sink recovers", sink.Types(), tc.hold)
				}
			}
			evs := sink.Events()
			if len(evs) != 2 || evs[0].Type != tc.hold || evs[1].Type != audit.TypeDeny {
				t.Fatalf("events %v, want %s then deny", sink.Types(), tc.hold)
			}
			d := evs[1]
			if d.RequestID != "req_answer" || d.Outcome == nil || d.Outcome.Status != 503 || d.Outcome.Reason != "audit_unavailable" ||
				d.Identity == nil || d.Workload != "" {
				t.Errorf("deny event = %+v (outcome %+v), want request req_answer, 503 audit_unavailable, the caller, no workload", d, d.Outcome)
			}
		})
	}
}

// TestExchangeWithdrawnFailureDefersDeny: when the orphan_revoked event that
// follows a durable issue event (store failed, or the caller went away)
// failed outright, after the request waited for it, the request's deny
// event is deferred too, not waited for a second time: here the disk hangs
// from the deny on, and with an AuditTimeout of a minute the old wait
// showed as an Exchange still running after 10s.
func TestExchangeWithdrawnFailureDefersDeny(t *testing.T) {
	for _, tc := range []struct {
		name       string
		storeFails bool // else the caller goes away during the mint
	}{
		{name: "store_failed", storeFails: true},
		{name: "client_gone"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.sink.Fail = func(ev *audit.Event) bool { return ev.Type == audit.TypeOrphanRevoked }
			sink := &fifoStallSink{Sink: f.sink, hold: audit.TypeDeny, release: make(chan struct{}), added: make(chan string, 16)}
			var once sync.Once
			release := func() { once.Do(func() { close(sink.release) }) }
			t.Cleanup(release)
			withdrawnExchange(t, f, sink, tc.storeFails, time.Minute, "its orphan_revoked failed at once", "the deny deferred after the failed orphan_revoked")
			release()
			for typ := ""; typ != audit.TypeDeny; {
				select {
				case typ = <-sink.added:
				case <-time.After(10 * time.Second):
					t.Fatalf("no deny event within 10s of the sink's recovery; events %v", sink.Types())
				}
			}
		})
	}
}

// withdrawnExchange runs an exchange whose credential is withdrawn after a
// durable issue event (the store write fails, or, storeFails false, the
// caller goes away during the mint) against sink, and checks it answers
// ErrUnavailable within 10 s and tried issue, orphan_revoked, then a
// deferred deny (why says what the test waits out, order why the deny comes last).
func withdrawnExchange(t *testing.T, f *fixture, sink *fifoStallSink, storeFails bool, auditTimeout time.Duration, why, order string) {
	t.Helper()
	var store broker.Store = f.store
	var minter broker.Minter = f.minter
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var m *slowBackendMinter
	if storeFails {
		bs := &blockingStore{Store: f.store, entered: make(chan struct{}, 1), release: make(chan struct{}),
			err: broker.Unavailable("store_unavailable", time.Second, errors.New("redis down"))}
		close(bs.release)
		store = bs
	} else {
		m = &slowBackendMinter{Minter: f.minter, entered: make(chan struct{}), release: make(chan struct{})}
		minter = m
	}
	svc, err := broker.NewService(broker.Deps{
		Policy:       func() *policies.Policy { return f.pol },
		Authn:        func() broker.Authenticator { return f.authn },
		Minters:      map[string]broker.Minter{broker.KindVaultToken: minter},
		Revokers:     map[string]broker.Revoker{broker.KindVaultToken: f.minter},
		Store:        store,
		Audit:        sink,
		Now:          func() time.Time { return f.now },
		AuditTimeout: auditTimeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		res, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", RequestID: "req_withdrawn"})
		if res != nil {
			err = errors.New("a credential was returned")
		}
		done <- err
	}()
	if m != nil {
		<-m.entered
		cancel() // the caller goes away while the backend works
		close(m.release)
	}
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatalf("Exchange() still waiting after 10s (%s); appends: %v", why, sink.triedTypes())
	}
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Exchange() = %v, want ErrUnavailable", err)
	}
	want := []string{audit.TypeIssue, audit.TypeOrphanRevoked, "deferred:" + audit.TypeDeny}
	if got := sink.triedTypes(); !slices.Equal(got, want) {
		t.Errorf("appends = %v, want %v (%s)", got, want, order)
	}
}
