package broker_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// failingFindStore fails every issuance lookup once failing is set (Redis
// down), leaving the rest to its Store.
type failingFindStore struct {
	broker.Store
	failing atomic.Bool
}

func (s *failingFindStore) FindIssuance(ctx context.Context, k broker.RefKind, v string) (*broker.Issuance, error) {
	if s.failing.Load() {
		return nil, errors.New("redis: connection refused")
	}
	return s.Store.FindIssuance(ctx, k, v)
}

// TestBrokerJWTWithoutRecordOrder (a review of 260d531): a broker JWT of
// this broker's own iss whose issuance record the store lost is refused
// unknown_credential only where nothing says more. A store that fails the
// lookup answers 503 store_unavailable on every path that checks it (the
// exchange's subject and actor, the introspection and admin caller): it is
// not taken for a lost record, nor passed; and one the revocation cache
// knows revoked is refused credential_revoked (403 on /v1/token, 401
// invalid_token as a Bearer token), as before, not unknown_credential.
// Test only: it passes on the code as it is.
func TestBrokerJWTWithoutRecordOrder(t *testing.T) {
	pol, err := policies.Parse("unknown.yaml", []byte(unknownJWTPolicy))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	minter := &brokertest.Minter{}
	authn := brokertest.Authn{"payments": identity("system:serviceaccount:payments:api", nil)}
	lossy := &lossyStore{Store: memstore.New(clock), before: map[string]bool{}}
	failing := &failingFindStore{Store: lossy}
	cache, err := broker.NewRevocationCache(failing, broker.CacheOptions{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := broker.NewService(broker.Deps{
		Policy:        func() *policies.Policy { return pol },
		Authn:         func() broker.Authenticator { return authn },
		Minters:       map[string]broker.Minter{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Revokers:      map[string]broker.Revoker{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Store:         cache.Store(),
		Audit:         &brokertest.Sink{},
		Now:           clock,
		Issuer:        "https://keytrail.example",
		RefusalLimits: &broker.RefusalLimits{PerIdentity: -1},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	mint := func() (string, string) {
		t.Helper()
		res, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "handoff-jwt"})
		if err != nil {
			t.Fatal(err)
		}
		authn[res.AccessToken] = &broker.Identity{IssuerName: "keytrail", Iss: "https://keytrail.example", Sub: "payments-api",
			JTI: res.Issuance.ID, Claims: map[string]any{"iss": "https://keytrail.example", "sub": "payments-api", "jti": res.Issuance.ID}}
		return res.AccessToken, res.Issuance.ID
	}
	calls := map[string]func(tok string) error{
		"subject": func(tok string) error {
			_, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: tok, Grant: "payments-vault"})
			return err
		},
		"actor": func(tok string) error {
			_, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", ActorToken: tok, Grant: "payments-vault"})
			return err
		},
		"introspect caller": func(tok string) error {
			_, err := svc.Introspect(ctx, broker.IntrospectRequest{CallerToken: tok, Token: "whatever"})
			return err
		},
		"admin caller": func(tok string) error {
			_, err := svc.AuthorizeAdmin(ctx, broker.AdminRequest{Token: tok, Role: broker.RoleTrace, Action: "trace"})
			return err
		},
	}
	lostTok, _ := mint()
	revokedTok, revokedID := mint()
	lossy.lost.Store(true)

	// The store fails: 503, never unknown_credential, never a pass.
	failing.failing.Store(true)
	for name, call := range calls {
		err := call(lostTok)
		// (As actor too: a 503 is the broker's own failure, not prefixed.)
		if e := broker.AsError(err); !errors.Is(err, broker.ErrUnavailable) || e.Reason != "store_unavailable" {
			t.Errorf("%s: broker JWT checked while the store fails = %v, want 503 store_unavailable", name, err)
		}
	}
	failing.failing.Store(false)

	// Known revoked here, its record lost: credential_revoked first.
	cache.Apply(broker.Notice{Revoked: []string{revokedID}})
	for name, call := range calls {
		err := call(revokedTok)
		e := broker.AsError(err)
		want := broker.ErrDenied
		if name == "introspect caller" || name == "admin caller" {
			want = broker.ErrUnauthenticated
		}
		if !errors.Is(err, want) || (e.Reason != "credential_revoked" && e.Reason != "actor_credential_revoked") {
			t.Errorf("%s: revoked broker JWT whose record was lost = %v (reason %q), want %v credential_revoked", name, err, e.Reason, want)
		}
	}
	// And the one nobody revoked: unknown_credential everywhere.
	for name, call := range calls {
		err := call(lostTok)
		if e := broker.AsError(err); !errors.Is(err, broker.ErrUnauthenticated) || (e.Reason != "unknown_credential" && e.Reason != "actor_unknown_credential") {
			t.Errorf("%s: broker JWT whose record was lost = %v, want 401 unknown_credential", name, err)
		}
	}
}
