package broker_test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// actorStore fails the lookups of a broker credential (FindIssuance) or
// of a block (GetBlock) while its switch is on.
type actorStore struct {
	broker.Store
	findFails, blockFails atomic.Bool
}

var errStoreDown = errors.New("redis: connection refused")

func (s *actorStore) FindIssuance(ctx context.Context, kind broker.RefKind, value string) (*broker.Issuance, error) {
	if s.findFails.Load() {
		return nil, errStoreDown
	}
	return s.Store.FindIssuance(ctx, kind, value)
}

func (s *actorStore) GetBlock(ctx context.Context, workload string) (*broker.Block, error) {
	if s.blockFails.Load() {
		return nil, errStoreDown
	}
	return s.Store.GetBlock(ctx, workload)
}

// TestActorStoreUnavailableNamedAsAct: an actor token that verified but
// whose broker-credential check could not read the store (its issuance
// lookup, or its workload's block) is refused 503 store_unavailable (the
// broker's own failure: no "actor_" prefix, which marks the actor token's
// refusals, so an alert on store_unavailable sees it) and named as act on
// the deny event: its signature is verified, only its standing is
// unknown. The subject, a plain identity token, reads nothing from the
// store.
func TestActorStoreUnavailableNamedAsAct(t *testing.T) {
	for _, tc := range []struct {
		name string
		fail func(*actorStore)
	}{
		{"issuance-lookup", func(s *actorStore) { s.findFails.Store(true) }},
		{"block-read", func(s *actorStore) { s.blockFails.Store(true) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pol, err := policies.Parse("chain.yaml", []byte(chainPolicy))
			if err != nil {
				t.Fatal(err)
			}
			now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
			clock := func() time.Time { return now }
			minter := &brokertest.Minter{}
			authn := brokertest.Authn{"payments": identity("system:serviceaccount:payments:api", nil)}
			sink := &brokertest.Sink{}
			store := &actorStore{Store: memstore.New(clock)}
			svc, err := broker.NewService(broker.Deps{
				Policy:   func() *policies.Policy { return pol },
				Authn:    func() broker.Authenticator { return authn },
				Minters:  map[string]broker.Minter{broker.KindVaultToken: minter, broker.KindJWT: minter},
				Revokers: map[string]broker.Revoker{broker.KindVaultToken: minter, broker.KindJWT: minter},
				Store:    store, Audit: sink, Now: clock,
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			handoff, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "handoff-jwt"})
			if err != nil {
				t.Fatal(err)
			}
			authn[handoff.AccessToken] = &broker.Identity{IssuerName: "keytrail", Iss: "https://keytrail.example", Sub: "payments-api",
				JTI: handoff.Issuance.ID, Claims: map[string]any{"iss": "https://keytrail.example", "sub": "payments-api", "jti": handoff.Issuance.ID}}
			tc.fail(store)

			before := len(sink.Events())
			_, err = svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", ActorToken: handoff.AccessToken, Grant: "payments-vault", RequestID: "req_act"})
			if !errors.Is(err, broker.ErrUnavailable) || broker.AsError(err).Reason != "store_unavailable" {
				t.Fatalf("exchange with the store down for the actor's check = %v, want unavailable (store_unavailable)", err)
			}
			var deny *audit.Event
			for _, ev := range sink.Events()[before:] {
				if ev.RequestID == "req_act" && ev.Type == audit.TypeDeny {
					deny = ev
				}
			}
			if deny == nil {
				t.Fatal("no deny event for the refused exchange")
			}
			wantAct := []audit.Identity{{Iss: "https://keytrail.example", Sub: "payments-api", JTI: handoff.Issuance.ID}}
			if deny.Outcome == nil || deny.Outcome.Status != 503 || deny.Outcome.Reason != "store_unavailable" {
				t.Errorf("deny event outcome %+v, want 503 store_unavailable", deny.Outcome)
			}
			if !slices.Equal(deny.Act, wantAct) || deny.Identity == nil || deny.Identity.Sub != "system:serviceaccount:payments:api" {
				t.Errorf("deny event: identity %+v, act %+v; want the subject as identity and the actor %+v as act", deny.Identity, deny.Act, wantAct)
			}
		})
	}
}

// sharedErrAuthn answers the tokens it knows and otherwise the same
// *broker.Error each time (an Authenticator may return a shared value).
type sharedErrAuthn struct {
	ids map[string]*broker.Identity
	err *broker.Error
}

func (a sharedErrAuthn) Authenticate(ctx context.Context, raw string) (*broker.Identity, error) {
	if id, ok := a.ids[raw]; ok {
		return id, nil
	}
	return nil, a.err
}

// TestActorAuthnFailureReasons: an actor token the authenticator refuses
// (a 4xx) is answered with its reason prefixed "actor_", every time (the
// authenticator's error is not changed in place); one it could not check
// (503 jwks_unavailable: the broker's own failure) keeps its reason.
func TestActorAuthnFailureReasons(t *testing.T) {
	for _, tc := range []struct {
		err        *broker.Error
		kind       error
		wantReason string
	}{
		{broker.Errorf(broker.ErrUnauthenticated, "bad_signature", "identity token rejected", nil), broker.ErrUnauthenticated, "actor_bad_signature"},
		{broker.Unavailable("jwks_unavailable", time.Second, nil), broker.ErrUnavailable, "jwks_unavailable"},
	} {
		t.Run(tc.wantReason, func(t *testing.T) {
			pol, err := policies.Parse("chain.yaml", []byte(chainPolicy))
			if err != nil {
				t.Fatal(err)
			}
			now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
			clock := func() time.Time { return now }
			minter := &brokertest.Minter{}
			authn := sharedErrAuthn{ids: map[string]*broker.Identity{"payments": identity("system:serviceaccount:payments:api", nil)}, err: tc.err}
			sink := &brokertest.Sink{}
			svc, err := broker.NewService(broker.Deps{
				Policy:   func() *policies.Policy { return pol },
				Authn:    func() broker.Authenticator { return authn },
				Minters:  map[string]broker.Minter{broker.KindVaultToken: minter, broker.KindJWT: minter},
				Revokers: map[string]broker.Revoker{broker.KindVaultToken: minter, broker.KindJWT: minter},
				Store:    memstore.New(clock), Audit: sink, Now: clock,
			})
			if err != nil {
				t.Fatal(err)
			}
			for i := range 2 {
				_, err = svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", ActorToken: "unverified", Grant: "payments-vault"})
				if !errors.Is(err, tc.kind) || broker.AsError(err).Reason != tc.wantReason {
					t.Fatalf("exchange %d with the actor token failing %v = %v, want reason %s", i+1, tc.err, err, tc.wantReason)
				}
			}
		})
	}
}
