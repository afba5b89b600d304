package broker_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// probeMinter is brokertest.Minter recording whether each Mint's context
// had a deadline, and running during (when set) inside Mint.
type probeMinter struct {
	brokertest.Minter
	during func()

	mu        sync.Mutex
	deadlines []bool
}

func (m *probeMinter) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	_, has := ctx.Deadline()
	m.mu.Lock()
	m.deadlines = append(m.deadlines, has)
	m.mu.Unlock()
	if m.during != nil {
		m.during()
	}
	return m.Minter.Mint(ctx, req)
}

func (m *probeMinter) hadDeadline() []bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]bool(nil), m.deadlines...)
}

// inProcessProbe is a probeMinter that says whether it mints in process.
type inProcessProbe struct {
	*probeMinter
	inProcess bool
}

func (m inProcessProbe) MintsInProcess() bool { return m.inProcess }

// mintClock is a fake clock safe to read and move from any goroutine.
type mintClock struct{ ns atomic.Int64 }

func (c *mintClock) now() time.Time      { return time.Unix(0, c.ns.Load()).UTC() }
func (c *mintClock) add(d time.Duration) { c.ns.Add(int64(d)) }

// mintService is the fixture's policy and identities with minter for the
// payments-vault grant, a memstore and sink of its own, and clk's time.
func mintService(t *testing.T, minter broker.Minter, clk *mintClock) (*broker.Service, *memstore.Store, *brokertest.Sink) {
	t.Helper()
	f := newFixture(t)
	clk.ns.Store(f.now.UnixNano())
	st := memstore.New(clk.now)
	sink := &brokertest.Sink{}
	svc, err := broker.NewService(broker.Deps{
		Policy:      func() *policies.Policy { return f.pol },
		Authn:       func() broker.Authenticator { return f.authn },
		Minters:     map[string]broker.Minter{broker.KindVaultToken: minter},
		Store:       st,
		Audit:       sink,
		AuditChain:  "chn_fixture",
		Now:         clk.now,
		MintTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc, st, sink
}

// A minter that mints in process (the proxy minter) gets no deadline
// context of its own; every other minter, and one that says it does not
// mint in process, still does.
func TestExchangeInProcessMintWithoutDeadline(t *testing.T) {
	for _, c := range []struct {
		name   string
		minter func(*probeMinter) broker.Minter
		want   []bool
	}{
		{"in-process", func(p *probeMinter) broker.Minter { return inProcessProbe{p, true} }, []bool{false}},
		{"not-in-process", func(p *probeMinter) broker.Minter { return inProcessProbe{p, false} }, []bool{true}},
		{"plain", func(p *probeMinter) broker.Minter { return p }, []bool{true}},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := &probeMinter{}
			svc, _, _ := mintService(t, c.minter(p), &mintClock{})
			if _, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"}); err != nil {
				t.Fatalf("Exchange() = %v", err)
			}
			if diff := cmp.Diff(c.want, p.hadDeadline()); diff != "" {
				t.Errorf("mint context had a deadline (-want +got):\n%s", diff)
			}
		})
	}
}

// MintTimeout still bounds an in-process mint: one that returns
// MintTimeout or more after issued_at is refused as backend_timeout, its
// credential neither stored nor handed out; one just under it passes.
func TestExchangeInProcessMintBoundedByMintTimeout(t *testing.T) {
	for _, c := range []struct {
		name    string
		took    time.Duration
		refused bool
	}{
		{"at-the-timeout", 5 * time.Second, true},
		{"past-the-timeout", time.Minute, true},
		{"under-the-timeout", 5*time.Second - time.Millisecond, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			clk := &mintClock{}
			p := &probeMinter{during: func() { clk.add(c.took) }}
			svc, st, sink := mintService(t, inProcessProbe{p, true}, clk)
			res, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
			if !c.refused {
				if err != nil {
					t.Fatalf("Exchange() = %v, want a credential", err)
				}
				return
			}
			if !errors.Is(err, broker.ErrUnavailable) || res != nil {
				t.Fatalf("Exchange() = %v, %v; want nil, ErrUnavailable", res, err)
			}
			if e := broker.AsError(err); e.Reason != "backend_timeout" {
				t.Errorf("reason = %q, want backend_timeout", e.Reason)
			}
			if len(p.Reqs) != 1 {
				t.Fatalf("minted %d, want 1", len(p.Reqs))
			}
			if is, gerr := st.GetIssuance(context.Background(), p.Reqs[0].IssuanceID); gerr == nil {
				t.Errorf("issuance stored: %+v", is)
			}
			if diff := cmp.Diff([]string{"deny"}, sink.Types()); diff != "" {
				t.Fatalf("audit events (-want +got):\n%s", diff)
			}
			if got := sink.Events()[0].Outcome; got.Status != 503 || got.Reason != "backend_timeout" {
				t.Errorf("deny outcome = %+v, want 503 backend_timeout", got)
			}
		})
	}
}
