package broker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// newSweepSvcAudit is newSweepSvc with the audit sink given.
func newSweepSvcAudit(t *testing.T, clk *sweepClock, st broker.Store, mr *switchRevoker, sink broker.AuditSink) *broker.Service {
	t.Helper()
	pol, err := policies.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return brokertest.Authn{} },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: mr},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: mr},
		Store:    st,
		Audit:    sink,
		Now:      clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// racedIssuance stores a payments-api credential issued at at, as an
// instance that had not learned the block yet stores it.
func racedIssuance(t *testing.T, st broker.Store, at time.Time) *broker.Issuance {
	t.Helper()
	is := &broker.Issuance{ID: "iss_raced", Workload: "payments-api", Owner: "team-payments", SessionID: "pod-9",
		Grant: "payments-vault", Kind: broker.KindVaultToken, IssuedAt: at, ExpiresAt: at.Add(time.Hour),
		Refs: broker.CredentialRefs{Fingerprint: "sha256:raced", Accessor: "acc-raced"}}
	if err := st.PutIssuance(context.Background(), is); err != nil {
		t.Fatal(err)
	}
	return is
}

// sweepAll runs the sweeps of revs, each at its SweepAt.
func sweepAll(t *testing.T, clk *sweepClock, w *broker.RevocationWorker, revs ...*broker.Revocation) {
	t.Helper()
	for _, r := range revs {
		if at := r.SweepAt; at.After(clk.Now()) {
			clk.Set(at)
		}
		if err := w.Tick(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// TestUnblockRefusedByAuditLeavesNoUnblockTime: an unblock whose audit
// write fails lifts nothing, yet it had recorded its time on the
// revocation; a later unblock that does lift the block kept that first,
// earlier time, and the sweep, reading it as the unblock, left a credential
// issued while the block still stood (by an instance that had not learned
// it). The time of an unblock that did not happen must not bound the sweep.
func TestUnblockRefusedByAuditLeavesNoUnblockTime(t *testing.T) {
	ctx := context.Background()
	clk, mem, mr, _ := newSweepEnv(t)
	var mu sync.Mutex
	failing := true
	sink := &brokertest.Sink{Fail: func(ev *audit.Event) bool {
		mu.Lock()
		defer mu.Unlock()
		return failing && ev.Type == audit.TypeUnblock
	}}
	svc := newSweepSvcAudit(t, clk, mem, mr, sink)
	start := clk.Now()
	r1, err := svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_1")
	if err != nil {
		t.Fatal(err)
	}
	clk.Set(start.Add(time.Second))
	if err := svc.Unblock(ctx, secops, "payments-api", "false alarm", "req_u1"); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Unblock() with the audit log refusing = %v, want ErrUnavailable", err)
	}
	if b, err := mem.GetBlock(ctx, "payments-api"); err != nil || b.RevocationID != r1.ID {
		t.Fatalf("block after the refused unblock = %+v, %v; want %s's standing", b, err, r1.ID)
	}
	raced := racedIssuance(t, mem, start.Add(4*time.Second)) // past r1's scope (creation + 2 s of skew)
	mu.Lock()
	failing = false
	mu.Unlock()
	clk.Set(start.Add(5 * time.Second))
	if err := svc.Unblock(ctx, secops, "payments-api", "false alarm", "req_u2"); err != nil {
		t.Fatal(err)
	}
	sweepAll(t, clk, newTestWorker(t, svc), r1)
	if got, _ := mem.GetIssuance(ctx, raced.ID); got.Active(clk.Now()) {
		stored, _ := mem.GetRevocation(ctx, r1.ID)
		t.Errorf("credential issued at %v while %s's block stood (lifted at %v) left active by its sweep; unblocked recorded = %v",
			raced.IssuedAt, r1.ID, start.Add(5*time.Second), stored.Unblocked)
	}
}

// getBlockHookStore runs afterGet once, after the first GetBlock.
type getBlockHookStore struct {
	broker.Store
	once     sync.Once
	afterGet func()
}

func (s *getBlockHookStore) GetBlock(ctx context.Context, w string) (*broker.Block, error) {
	b, err := s.Store.GetBlock(ctx, w)
	s.once.Do(s.afterGet)
	return b, err
}

// TestUnblockOvertakenLeavesNoUnblockTime: an unblock reads r1's block,
// and before it records its time r2 blocks the workload again. The
// unblock recorded its time on r2 too, then found the block changed and
// lifted nothing. When r2's block is lifted later, before r2's sweep, that
// first time stood as r2's unblock, and the sweep left a credential issued
// while r2's block stood.
func TestUnblockOvertakenLeavesNoUnblockTime(t *testing.T) {
	ctx := context.Background()
	clk, mem, mr, svc := newSweepEnv(t)
	start := clk.Now()
	r1, err := svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_1")
	if err != nil {
		t.Fatal(err)
	}
	clk.Set(start.Add(time.Second))
	var r2 *broker.Revocation
	hs := &getBlockHookStore{Store: mem}
	hs.afterGet = func() {
		var err error
		r2, err = svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident again", broker.RevokeOptions{Block: true}, "req_2")
		if err != nil {
			t.Error(err)
		}
	}
	racing := newSweepSvcAudit(t, clk, hs, mr, &brokertest.Sink{})
	err = racing.Unblock(ctx, secops, "payments-api", "false alarm", "req_u1")
	if e := broker.AsError(err); e == nil || e.Reason != "block_changed" || r2 == nil {
		t.Fatalf("Unblock() overtaken by a re-block = %v, want block_changed", err)
	}
	raced := racedIssuance(t, mem, start.Add(4*time.Second)) // past r2's scope (creation + 2 s of skew)
	clk.Set(start.Add(5 * time.Second))
	if err := svc.UnblockIf(ctx, secops, "payments-api", r2.ID, "false alarm", "req_u2"); err != nil {
		t.Fatal(err)
	}
	sweepAll(t, clk, newTestWorker(t, svc), r1, r2)
	if got, _ := mem.GetIssuance(ctx, raced.ID); got.Active(clk.Now()) {
		s1, _ := mem.GetRevocation(ctx, r1.ID)
		s2, _ := mem.GetRevocation(ctx, r2.ID)
		t.Errorf("credential issued at %v while %s's block stood (lifted at %v) left active by the sweeps; unblocked recorded: %s %v, %s %v",
			raced.IssuedAt, r2.ID, start.Add(5*time.Second), r1.ID, s1.Unblocked, r2.ID, s2.Unblocked)
	}
}
