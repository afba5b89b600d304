package redisstore_test

// Revocations racing exchanges of the same workload, on the real store.

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/redisstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// raceClock is a clock the test moves.
type raceClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *raceClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *raceClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

// gate holds a call until the test opens it, and says when one arrived.
type gate struct {
	arrived chan struct{}
	open    chan struct{}
}

func newGate() *gate { return &gate{arrived: make(chan struct{}, 1), open: make(chan struct{})} }

func (g *gate) hold() {
	select {
	case g.arrived <- struct{}{}:
	default:
	}
	<-g.open
}

// await waits for a call to arrive at g, at most 10 s.
func (g *gate) await(t *testing.T, what string) {
	t.Helper()
	select {
	case <-g.arrived:
	case <-time.After(10 * time.Second):
		t.Fatalf("%s never arrived", what)
	}
}

// stallingSink holds the append of the first event of type typ at its
// gate; later ones go through meanwhile.
type stallingSink struct {
	brokertest.Sink
	typ  string
	held atomic.Bool
	g    *gate
}

func (s *stallingSink) stall() {
	if s.held.CompareAndSwap(false, true) {
		s.g.hold()
	}
}

func (s *stallingSink) Append(ctx context.Context, ev *audit.Event) error {
	if ev.Type == s.typ {
		s.stall()
	}
	return s.Sink.Append(ctx, ev)
}

// AppendBatch holds a batch (the revocation's decision, made durable
// together) that carries an event of type typ, like Append.
func (s *stallingSink) AppendBatch(ctx context.Context, evs []*audit.Event) error {
	for _, ev := range evs {
		if ev.Type == s.typ {
			s.stall()
			break
		}
	}
	return s.Sink.AppendBatch(ctx, evs)
}

// holdingMinter holds the first mint after arm at its gate.
type holdingMinter struct {
	brokertest.Minter
	armed atomic.Bool
	g     *gate
}

func (m *holdingMinter) arm() { m.armed.Store(true) }

func (m *holdingMinter) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	if m.armed.CompareAndSwap(true, false) {
		m.g.hold()
	}
	return m.Minter.Mint(ctx, req)
}

// raceEnv is a Service over a real Redis whose clock, audit sink and
// minter the test drives.
type raceEnv struct {
	start  time.Time
	clk    *raceClock
	st     *redisstore.Store
	svc    *broker.Service
	w      *broker.RevocationWorker
	sink   *stallingSink
	minter *holdingMinter
}

var raceAdmin = &broker.Admin{Name: "secops", Identity: broker.IdentityRef{Iss: "https://sso.example", Sub: "alice"}, Roles: []string{"revoke"}}

func newRaceEnv(t *testing.T, prefix string) *raceEnv {
	t.Helper()
	r := harness.StartRedis(t)
	e := &raceEnv{start: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	e.clk = &raceClock{now: e.start}
	e.st = newStore(t, r, redisstore.Options{Prefix: prefix, Now: e.clk.Now})
	pol, err := policies.Parse("race.yaml", []byte(brokertest.PaymentsPolicy))
	if err != nil {
		t.Fatal(err)
	}
	pod := &broker.Identity{IssuerName: "k8s", Iss: "https://k8s.example", Sub: "system:serviceaccount:payments:api", JTI: "tok-1",
		Claims: map[string]any{"iss": "https://k8s.example", "sub": "system:serviceaccount:payments:api",
			"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}}}}
	e.sink = &stallingSink{typ: audit.TypeBlock, g: newGate()}
	e.minter = &holdingMinter{g: newGate()}
	e.svc, err = broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return brokertest.Authn{"pod1": pod} },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: e.minter},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: e.minter},
		Store:    e.st,
		Audit:    e.sink,
		Now:      e.clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	if e.w, err = broker.NewRevocationWorker(e.svc, broker.WorkerOptions{Interval: time.Second}); err != nil {
		t.Fatal(err)
	}
	return e
}

type exchanged struct {
	res *broker.ExchangeResult
	err error
}

// exchange starts an exchange of pod1 and returns where its result comes.
func (e *raceEnv) exchange(ctx context.Context) <-chan exchanged {
	done := make(chan exchanged, 1)
	go func() {
		res, err := e.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "pod1", Grant: "payments-vault"})
		done <- exchanged{res, err}
	}()
	return done
}

// TestRevokeBlockRacingExchange: a blocking revocation of a workload and
// an exchange of it, interleaved on a real Redis. The revocation selects,
// then writes its audit events (here the block event takes 8 s, a slow
// disk), and only then stores the block. An exchange that passed its
// block check while the block was not stored yet, and mints for 4.5 s
// (under the 5 s mint timeout), stores its credential after the sweep
// the receipt promised was due. The sweep must not run before that
// credential can be stored: the credential, issued to a workload blocked
// by the revocation before the block was in force, is the revocation's.
// (It escaped both selections when sweep_at counted from the revocation's
// creation, before its audit writes, instead of from when its blocks were
// stored.)
func TestRevokeBlockRacingExchange(t *testing.T) {
	ctx := context.Background()
	e := newRaceEnv(t, "{race}:")
	start, clk, st, svc, w, admin := e.start, e.clk, e.st, e.svc, e.w, raceAdmin
	auditGate, mintGate := e.sink.g, e.minter.g
	e.minter.arm()

	// 1. The revocation selects (nothing yet) and writes its block event.
	type revoked struct {
		rev *broker.Revocation
		err error
	}
	revDone := make(chan revoked, 1)
	go func() {
		rev, err := svc.Revoke(ctx, admin, broker.RevokeSelector{Workload: "payments-api"}, "INC-7", broker.RevokeOptions{Block: true}, "req_r")
		revDone <- revoked{rev, err}
	}()
	auditGate.await(t, "the revocation's block event")

	// 2. 8 s later, the block still not stored, an exchange passes its
	// block check and starts minting.
	clk.Set(start.Add(8 * time.Second))
	exDone := e.exchange(ctx)
	mintGate.await(t, "the exchange's mint")

	// 3. The audit write completes: the block and the record are stored.
	close(auditGate.open)
	rd := <-revDone
	if rd.err != nil {
		t.Fatalf("Revoke() = %v", rd.err)
	}
	rev := rd.rev

	// 4. 4.5 s into the mint, the worker runs: is the sweep due?
	clk.Set(start.Add(12500 * time.Millisecond))
	if err := w.Tick(ctx); err != nil {
		t.Fatalf("Tick() = %v", err)
	}

	// 5. The mint completes and the credential is stored.
	close(mintGate.open)
	xd := <-exDone
	if xd.err != nil {
		t.Fatalf("Exchange() = %v", xd.err)
	}
	is := xd.res.Issuance

	// 6. The worker runs again, past any sweep_at the revocation stored.
	stored, err := st.GetRevocation(ctx, rev.ID)
	if err != nil {
		t.Fatal(err)
	}
	clk.Set(start.Add(time.Minute))
	if err := w.Tick(ctx); err != nil {
		t.Fatalf("Tick() = %v", err)
	}
	got, err := st.GetIssuance(ctx, is.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.RevocationID != rev.ID || got.Active(clk.Now()) {
		t.Errorf("credential issued at %v to payments-api, blocked by %s (created %v, block stored at %v; sweep_at %v, completed %v): revocation %q, active %v; want it swept by %s",
			is.IssuedAt, rev.ID, rev.CreatedAt, start.Add(8*time.Second), stored.SweepAt, stored.CompletedAt, got.RevocationID, got.Active(clk.Now()), rev.ID)
	}
	if want := start.Add(8 * time.Second).Add(svc.SweepDelay()); rev.SweepAt.Before(want) {
		t.Errorf("receipt sweep_at = %v, want at least %v (SweepDelay after the block was stored)", rev.SweepAt, want)
	}
}

// TestRevokeScopeRacingExchange: a revocation of the session, the
// workload or the owner made while an exchange of that session is minting
// (past its checks, its issuance not stored yet, so the revocation's
// selection cannot see it), on a real Redis. The credential stored after
// the selection must not escape: the sweep takes it under the revocation.
func TestRevokeScopeRacingExchange(t *testing.T) {
	for i, tc := range []struct {
		name  string
		sel   func(session string) broker.RevokeSelector
		block bool
	}{
		{"session", func(s string) broker.RevokeSelector { return broker.RevokeSelector{SessionID: s} }, false},
		{"session-block", func(s string) broker.RevokeSelector { return broker.RevokeSelector{SessionID: s} }, true},
		{"workload", func(string) broker.RevokeSelector { return broker.RevokeSelector{Workload: "payments-api"} }, false},
		{"owner-block", func(string) broker.RevokeSelector { return broker.RevokeSelector{Owner: "team-payments"} }, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			e := newRaceEnv(t, fmt.Sprintf("{scope-%d}:", i))
			close(e.sink.g.open) // no audit stall here
			first := <-e.exchange(ctx)
			if first.err != nil {
				t.Fatalf("Exchange() = %v", first.err)
			}
			e.clk.Set(e.start.Add(time.Second))
			e.minter.arm()
			exDone := e.exchange(ctx)
			e.minter.g.await(t, "the exchange's mint")

			e.clk.Set(e.start.Add(2 * time.Second))
			rev, err := e.svc.Revoke(ctx, raceAdmin, tc.sel(first.res.Issuance.SessionID), "INC-8", broker.RevokeOptions{Block: tc.block}, "req_r")
			if err != nil || rev.Matched != 1 {
				t.Fatalf("Revoke() = %+v, %v; want the first credential matched", rev, err)
			}
			e.clk.Set(e.start.Add(5 * time.Second)) // the mint took 4 s
			close(e.minter.g.open)
			xd := <-exDone
			if xd.err != nil {
				t.Fatalf("Exchange() = %v", xd.err)
			}
			e.clk.Set(rev.SweepAt)
			if err := e.w.Tick(ctx); err != nil {
				t.Fatalf("Tick() = %v", err)
			}
			late, err := e.st.GetIssuance(ctx, xd.res.Issuance.ID)
			if err != nil {
				t.Fatal(err)
			}
			if late.RevocationID != rev.ID {
				t.Errorf("credential minted while %s ran (issued %v, revocation created %v): revocation %q, want swept by it", rev.ID, late.IssuedAt, rev.CreatedAt, late.RevocationID)
			}
			if stored, _ := e.st.GetRevocation(ctx, rev.ID); stored.CompletedAt.IsZero() || !slices.Contains(stored.Revoked, late.ID) {
				t.Errorf("after the sweep: completed %v, revoked %v; want complete, listing %s", stored.CompletedAt, stored.Revoked, late.ID)
			}
		})
	}
}

// TestUnblockRacingReblock: on a real Redis, an unblock reads the
// workload's block (r1's) and, held at its audit write, has not deleted it
// yet when a second revocation blocks the workload again (r2). The delete
// must leave r2's block standing: the unblock answers 404 block_changed and
// the workload stays blocked. (An unconditional delete lifted r2's fresh
// block: the workload was unblocked although the newest revocation blocked
// it.)
func TestUnblockRacingReblock(t *testing.T) {
	ctx := context.Background()
	e := newRaceEnv(t, "{unblockrace}:")
	e.sink.typ = audit.TypeUnblock // hold the unblock between its read and its delete
	sel := broker.RevokeSelector{Workload: "payments-api"}
	r1, err := e.svc.Revoke(ctx, raceAdmin, sel, "INC-7", broker.RevokeOptions{Block: true}, "req_r1")
	if err != nil {
		t.Fatalf("Revoke() = %v", err)
	}

	unblocked := make(chan error, 1)
	go func() { unblocked <- e.svc.Unblock(ctx, raceAdmin, "payments-api", "false alarm", "req_u") }()
	e.sink.g.await(t, "the unblock's audit write")
	e.clk.Set(e.start.Add(time.Second))
	r2, err := e.svc.Revoke(ctx, raceAdmin, sel, "INC-8", broker.RevokeOptions{Block: true}, "req_r2")
	if err != nil {
		t.Fatalf("Revoke() again = %v", err)
	}
	close(e.sink.g.open)
	err = <-unblocked

	if be := broker.AsError(err); !errors.Is(err, broker.ErrNotFound) || be == nil || be.Reason != "block_changed" {
		t.Errorf("Unblock() overtaken by %s's block = %v, want ErrNotFound, reason block_changed", r2.ID, err)
	}
	b, err := e.st.GetBlock(ctx, "payments-api")
	if err != nil || b.RevocationID != r2.ID {
		t.Fatalf("block after the unblock of %s's block = %+v, %v; want %s's block standing", r1.ID, b, err, r2.ID)
	}
	blocks, err := e.st.ListBlocks(ctx)
	if err != nil || len(blocks) != 1 {
		t.Errorf("ListBlocks() = %+v, %v, want payments-api's block listed", blocks, err)
	}
	e.clk.Set(e.start.Add(2 * time.Second))
	x := <-e.exchange(ctx)
	if be := broker.AsError(x.err); be == nil || be.Reason != "workload_blocked" {
		t.Errorf("Exchange() after the overtaken unblock = %v, want workload_blocked", x.err)
	}
}
