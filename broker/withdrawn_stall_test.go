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
// does, and holds the orphan_revoked event (a disk whose writes hang) until
// release is closed: every event after it waits behind it. It is a
// DeferredAuditSink, as the file is. tried lists each append as it starts
// ("deferred:<type>" for AppendDeferred).
type fifoStallSink struct {
	*brokertest.Sink
	release chan struct{}
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
	if ev.Type == audit.TypeOrphanRevoked {
		<-s.release
	}
	return s.Sink.Append(ctx, ev)
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
			sink := &fifoStallSink{Sink: f.sink, release: make(chan struct{})}
			var once sync.Once
			t.Cleanup(func() { once.Do(func() { close(sink.release) }) })
			var store broker.Store = f.store
			var minter broker.Minter = f.minter
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var m *slowBackendMinter
			if tc.storeFails {
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
				AuditTimeout: 50 * time.Millisecond,
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
				t.Fatalf("Exchange() still waiting after 10s (AuditTimeout 50ms); appends: %v", sink.triedTypes())
			}
			if !errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("Exchange() = %v, want ErrUnavailable", err)
			}
			want := []string{audit.TypeIssue, audit.TypeOrphanRevoked, "deferred:" + audit.TypeDeny}
			if got := sink.triedTypes(); !slices.Equal(got, want) {
				t.Errorf("appends = %v, want %v (the deny deferred behind the pending orphan_revoked)", got, want)
			}
			once.Do(func() { close(sink.release) })
		})
	}
}
