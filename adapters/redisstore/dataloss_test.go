package redisstore_test

// Redis losing its data (FLUSHALL, a restart without persistence) after a
// revocation and a block, on the real store.

import (
	"context"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/redisstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// lossInstance is one broker instance over a shared Redis: its store, its
// revocation cache (as the server wires it: FastReads) and a Service over
// the cache's Store.
type lossInstance struct {
	st    *redisstore.Store
	cache *broker.RevocationCache
	svc   *broker.Service
}

func newLossInstance(t *testing.T, r *harness.Redis, clk *raceClock, authn brokertest.Authn) *lossInstance {
	t.Helper()
	st := newStore(t, r, redisstore.Options{Prefix: "{loss}:", Now: clk.Now})
	cache, err := broker.NewRevocationCache(st, broker.CacheOptions{FastReads: true, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policies.Parse("loss.yaml", []byte(brokertest.PaymentsPolicy))
	if err != nil {
		t.Fatal(err)
	}
	m := &brokertest.Minter{}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: m},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: m},
		Store:    cache.Store(),
		Audit:    &brokertest.Sink{},
		Now:      clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return &lossInstance{st: st, cache: cache, svc: svc}
}

// refresh refreshes the cache until it succeeds (the client reconnecting
// after a restart), at most 15 s.
func (in *lossInstance) refresh(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for {
		err := in.cache.Refresh(context.Background())
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("Refresh() = %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// refusal is the reason an exchange of subject is refused for ("" when it
// succeeds).
func (in *lossInstance) refusal(t *testing.T, subject string) string {
	t.Helper()
	_, err := in.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: subject, Grant: "payments-vault"})
	if err == nil {
		return ""
	}
	be := broker.AsError(err)
	if be == nil {
		t.Fatalf("Exchange(%s) = %v, want a broker error", subject, err)
	}
	return be.Reason
}

// TestStoreDataLossKeepsRevocationsAndBlocks: a credential revoked (its
// broker JWT handed on as an identity token, jti the issuance id) and its
// workload blocked, then Redis loses every key. The running instance must
// go on refusing both: it knows them (its cache), and it writes them back
// into the store, so that an instance started after the loss refuses them
// too. The running instance used to replace its blocked set with what the
// store listed (nothing), and a broker JWT whose issuance the store no
// longer had passed as "not a credential of this broker": the blocked
// workload got credentials again, on every instance, and the revoked JWT
// was accepted.
func TestStoreDataLossKeepsRevocationsAndBlocks(t *testing.T) {
	for _, loss := range []string{"flushall", "restart-without-persistence"} {
		t.Run(loss, func(t *testing.T) {
			ctx := context.Background()
			r := harness.StartRedis(t)
			start := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
			clk := &raceClock{now: start}
			pod := &broker.Identity{IssuerName: "k8s", Iss: "https://k8s.example", Sub: "system:serviceaccount:payments:api", JTI: "tok-1",
				Claims: map[string]any{"iss": "https://k8s.example", "sub": "system:serviceaccount:payments:api",
					"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}}}}
			authn := brokertest.Authn{"pod1": pod}
			a := newLossInstance(t, r, clk, authn)
			a.refresh(t)

			first, err := a.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "pod1", Grant: "payments-vault"})
			if err != nil {
				t.Fatalf("Exchange() = %v", err)
			}
			// The credential, as a broker JWT would carry it: its jti is the
			// issuance id (the policy trusting the broker as an issuer).
			jwt := *pod
			jwt.JTI = first.Issuance.ID
			authn[first.AccessToken] = &jwt
			jwt1 := first.AccessToken

			clk.Set(start.Add(time.Second))
			r1, err := a.svc.Revoke(ctx, raceAdmin, broker.RevokeSelector{IssuanceID: first.Issuance.ID}, "INC-1", broker.RevokeOptions{}, "req_r1")
			if err != nil {
				t.Fatalf("Revoke(issuance) = %v", err)
			}
			clk.Set(start.Add(2 * time.Second))
			if _, err := a.svc.Revoke(ctx, raceAdmin, broker.RevokeSelector{Workload: "payments-api"}, "INC-2", broker.RevokeOptions{Block: true}, "req_r2"); err != nil {
				t.Fatalf("Revoke(workload, block) = %v", err)
			}
			clk.Set(start.Add(3 * time.Second))
			a.refresh(t)
			if got := a.refusal(t, jwt1); got != "credential_revoked" {
				t.Fatalf("before the loss: exchange with the revoked JWT refused for %q, want credential_revoked", got)
			}
			if got := a.refusal(t, "pod1"); got != "workload_blocked" {
				t.Fatalf("before the loss: exchange of the blocked workload refused for %q, want workload_blocked", got)
			}

			switch loss {
			case "flushall":
				if err := a.st.Client().FlushAll(ctx).Err(); err != nil {
					t.Fatal(err)
				}
			default:
				r.Restart() // --save "" --appendonly no: empty
			}
			if n, err := a.st.Client().DBSize(ctx).Result(); err != nil || n != 0 {
				t.Fatalf("after the loss: DBSIZE = %d, %v; want an empty Redis", n, err)
			}

			// (a) The running instance, at its next refresh.
			clk.Set(start.Add(4 * time.Second))
			a.refresh(t)
			if got := a.refusal(t, "pod1"); got != "workload_blocked" {
				t.Errorf("running instance after the loss: exchange of the blocked workload refused for %q, want workload_blocked", got)
			}
			if got := a.refusal(t, jwt1); got != "credential_revoked" {
				t.Errorf("running instance after the loss: exchange with the revoked JWT refused for %q, want credential_revoked", got)
			}
			// What it knew is in the store again.
			if b, err := a.st.GetBlock(ctx, "payments-api"); err != nil {
				t.Errorf("store after the loss and a refresh: GetBlock(payments-api) = %+v, %v; want the block written back", b, err)
			}
			if got, err := a.st.GetRevocation(ctx, r1.ID); err != nil || !containsID(got, first.Issuance.ID) {
				t.Errorf("store after the loss and a refresh: GetRevocation(%s) = %+v, %v; want it written back, naming %s", r1.ID, got, err, first.Issuance.ID)
			}

			// (b) An instance started after the loss.
			b := newLossInstance(t, r, clk, authn)
			b.refresh(t)
			if got := b.refusal(t, "pod1"); got != "workload_blocked" {
				t.Errorf("instance started after the loss: exchange of the blocked workload refused for %q, want workload_blocked", got)
			}
			if got := b.refusal(t, jwt1); got != "credential_revoked" {
				t.Errorf("instance started after the loss: exchange with the revoked JWT refused for %q, want credential_revoked", got)
			}
		})
	}
}

func containsID(r *broker.Revocation, id string) bool {
	if r == nil {
		return false
	}
	for _, l := range [][]string{r.Revoked, r.Pending} {
		for _, x := range l {
			if x == id {
				return true
			}
		}
	}
	return false
}

// TestStoreDataLossRunWritesBack: the cache as the server runs it (Run,
// refreshing every second) writes a block and its revocation back into a
// Redis that lost them (FLUSHALL), and counts the loss once.
func TestStoreDataLossRunWritesBack(t *testing.T) {
	ctx := context.Background()
	r := harness.StartRedis(t)
	st := newStore(t, r, redisstore.Options{Prefix: "{lossrun}:"})
	cache, err := broker.NewRevocationCache(st, broker.CacheOptions{FastReads: true})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	b := broker.Block{Workload: "payments-api", Reason: "INC-9", RevocationID: "rev_9", Admin: "secops", CreatedAt: now}
	if err := st.PutBlock(ctx, b); err != nil {
		t.Fatal(err)
	}
	rev := &broker.Revocation{ID: "rev_9", Selector: broker.RevokeSelector{Workload: "payments-api"}, Reason: "INC-9", Block: true,
		CreatedAt: now, Matched: 1, Revoked: []string{"iss_9"}, Failed: []broker.RevokeFailure{}, Blocks: []string{"payments-api"}, CompletedAt: now}
	if err := st.PutRevocation(ctx, rev); err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); _ = cache.Run(rctx) }()
	t.Cleanup(func() { stop(); <-done })

	waitFor(t, 20*time.Second, "the cache learning the block and the revocation", func() bool { return cache.Blocked("payments-api") && cache.Revoked("iss_9") })

	if err := st.Client().FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "the block written back", func() bool {
		got, err := st.GetBlock(ctx, "payments-api")
		return err == nil && *got == b
	})
	waitFor(t, 20*time.Second, "the revocation written back", func() bool {
		got, err := st.GetRevocation(ctx, "rev_9")
		return err == nil && containsID(got, "iss_9")
	})
	if !cache.Blocked("payments-api") || !cache.Revoked("iss_9") {
		t.Errorf("after the loss: Blocked = %v, Revoked = %v; want both kept", cache.Blocked("payments-api"), cache.Revoked("iss_9"))
	}
	if n := cache.StoreLosses(); n != 1 {
		t.Errorf("StoreLosses() = %d, want 1", n)
	}
}
