package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// The exchange's block check (and introspection's, through
// credentialActive) answered by a fresh revocation cache (FastReads) makes
// no deadline context: it allocated 4 times and started a timer per
// exchange for a Store call that is not made. A check that goes to the
// Store still has StoreTimeout, and a block the cache knows still denies.
func TestCheckBlockedFromMemory(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	inner := &brokertest.DeadlineStore{Store: memstore.New(clock)}
	cache, err := broker.NewRevocationCache(inner, broker.CacheOptions{FastReads: true, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policies.Parse("p.yaml", []byte(brokertest.PaymentsPolicy))
	if err != nil {
		t.Fatal(err)
	}
	svc, err := broker.NewService(broker.Deps{
		Policy:       func() *policies.Policy { return pol },
		Authn:        func() broker.Authenticator { return brokertest.Authn{} },
		Store:        cache.Store(),
		Audit:        brokertest.DiscardSink{},
		Now:          clock,
		StoreTimeout: 3 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}

	t.Run("ok/view-not-fresh-store-call-has-store-timeout", func(t *testing.T) {
		if err := broker.CheckBlocked(svc, ctx, "payments"); err != nil {
			t.Fatal(err)
		}
		calls := inner.Calls()
		if len(calls) != 1 || calls[0] <= 2*time.Second || calls[0] > 3*time.Second {
			t.Fatalf("GetBlock calls (time left) = %v, want one with StoreTimeout (3s)", calls)
		}
	})
	if err := cache.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	t.Run("ok/fresh-view-no-store-call-no-allocation", func(t *testing.T) {
		before := len(inner.Calls())
		n := testing.AllocsPerRun(100, func() {
			if err := broker.CheckBlocked(svc, ctx, "payments"); err != nil {
				t.Fatal(err)
			}
		})
		if got := len(inner.Calls()) - before; got != 0 {
			t.Errorf("block check from a fresh view made %d Store calls, want 0", got)
		}
		if n != 0 {
			t.Errorf("block check from a fresh view: %v allocations, want 0 (no deadline context)", n)
		}
	})
	t.Run("fail/blocked-workload-from-memory", func(t *testing.T) {
		if err := inner.Store.PutBlock(ctx, broker.Block{Workload: "payments", RevocationID: "rev_1", CreatedAt: now}); err != nil {
			t.Fatal(err)
		}
		cache.Apply(broker.Notice{Blocked: []string{"payments"}})
		err := broker.CheckBlocked(svc, ctx, "payments")
		if !errors.Is(err, broker.ErrDenied) || broker.AsError(err).Reason != "workload_blocked" {
			t.Fatalf("CheckBlocked(blocked) = %v, want ErrDenied workload_blocked", err)
		}
	})
}
