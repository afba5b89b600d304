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

// lossyStore is a Store that, once lost is set, holds no issuance record
// any more (Redis lost its data, or a failover lost the record's write):
// it answers ErrNotFound for every record written before.
type lossyStore struct {
	broker.Store
	lost   atomic.Bool
	before map[string]bool // fingerprints, jtis and ids written before the loss
}

func (s *lossyStore) PutIssuance(ctx context.Context, is *broker.Issuance) error {
	if !s.lost.Load() {
		s.before[is.ID], s.before[is.Refs.Fingerprint], s.before[is.Refs.JTI] = true, true, true
	}
	return s.Store.PutIssuance(ctx, is)
}

func (s *lossyStore) FindIssuance(ctx context.Context, k broker.RefKind, v string) (*broker.Issuance, error) {
	if s.lost.Load() && s.before[v] {
		return nil, broker.ErrNotFound
	}
	return s.Store.FindIssuance(ctx, k, v)
}

func (s *lossyStore) GetIssuance(ctx context.Context, id string) (*broker.Issuance, error) {
	if s.lost.Load() && s.before[id] {
		return nil, broker.ErrNotFound
	}
	return s.Store.GetIssuance(ctx, id)
}

const unknownJWTPolicy = chainPolicy + `
admins:
  - name: agents
    match: {issuer: keytrail, subject: payments-api}
    roles: [trace]
`

// A broker JWT (iss this broker's own, jti an issuance id) whose issuance
// the store no longer holds was accepted as an identity token, held to no
// revocation and no kept may_act ("not this deployment's credential"):
// after a Redis data loss or a failover that lost the record's write, a
// live or revoked broker JWT was exchanged unchecked. It is now refused as
// subject (401 invalid_grant, unknown_credential), as actor
// (actor_unknown_credential) and as the Bearer token of introspection and
// the admin API (401 invalid_token), as introspection calls it inactive. A
// JWT of another issuer whose jti looks like an issuance id is still not
// this broker's to know, and passes.
func TestBrokerJWTWithoutRecordRefusedAsIdentity(t *testing.T) {
	pol, err := policies.Parse("unknown.yaml", []byte(unknownJWTPolicy))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	minter := &brokertest.Minter{}
	authn := brokertest.Authn{"payments": identity("system:serviceaccount:payments:api", nil)}
	sink := &brokertest.Sink{}
	store := &lossyStore{Store: memstore.New(clock), before: map[string]bool{}}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Store:    store,
		Audit:    sink,
		Now:      clock,
		Issuer:   "https://keytrail.example/", // the trailing slash is the minter's to drop
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	handoff, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "handoff-jwt"})
	if err != nil {
		t.Fatal(err)
	}
	jwtTok := handoff.AccessToken
	authn[jwtTok] = &broker.Identity{IssuerName: "keytrail", Iss: "https://keytrail.example", Sub: "payments-api",
		JTI: handoff.Issuance.ID, Claims: map[string]any{"iss": "https://keytrail.example", "sub": "payments-api", "jti": handoff.Issuance.ID}}
	// Its signature twin: another string, the same signed jti.
	authn["twin"] = authn[jwtTok]

	exchange := func(subject, actor string) error {
		_, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: subject, ActorToken: actor, Grant: "payments-vault"})
		return err
	}
	admin := func(tok string) error {
		_, err := svc.AuthorizeAdmin(ctx, broker.AdminRequest{Token: tok, Role: broker.RoleTrace, Action: "trace"})
		return err
	}
	introspectCaller := func(tok string) error {
		_, err := svc.Introspect(ctx, broker.IntrospectRequest{CallerToken: tok, Token: "whatever"})
		return err
	}
	// Before the loss: accepted everywhere.
	if err := exchange(jwtTok, ""); err != nil {
		t.Fatalf("exchange of the live broker JWT = %v", err)
	}
	if err := exchange("payments", jwtTok); err != nil {
		t.Fatalf("exchange with the live broker JWT as actor = %v", err)
	}
	for name, call := range map[string]func(string) error{"AuthorizeAdmin": admin, "Introspect": introspectCaller} {
		if err := call(jwtTok); err != nil {
			t.Fatalf("%s(live broker JWT) = %v", name, err)
		}
	}

	store.lost.Store(true)

	// Introspection (by another caller) calls it inactive...
	res, err := svc.Introspect(ctx, broker.IntrospectRequest{CallerToken: "payments", Token: jwtTok})
	if err != nil || res.Active {
		t.Fatalf("introspection of the broker JWT whose record was lost = %+v, %v; want inactive", res, err)
	}
	// ...and so does every use as an identity token.
	for name, subject := range map[string]string{"as issued": jwtTok, "its signature twin": "twin"} {
		err := exchange(subject, "")
		if e := broker.AsError(err); !errors.Is(err, broker.ErrUnauthenticated) || e.Reason != "unknown_credential" {
			t.Errorf("exchange of the broker JWT whose record was lost (%s) = %v, want unauthenticated (unknown_credential)", name, err)
		}
	}
	err = exchange("payments", jwtTok)
	if e := broker.AsError(err); !errors.Is(err, broker.ErrUnauthenticated) || e.Reason != "actor_unknown_credential" {
		t.Errorf("exchange with the broker JWT whose record was lost as actor = %v, want unauthenticated (actor_unknown_credential)", err)
	}
	for name, call := range map[string]func(string) error{"AuthorizeAdmin": admin, "Introspect": introspectCaller} {
		err := call(jwtTok)
		e := broker.AsError(err)
		if !errors.Is(err, broker.ErrUnauthenticated) || e.Reason != "unknown_credential" || e.Code != broker.CodeInvalidToken {
			t.Errorf("%s(broker JWT whose record was lost) = %v (code %q), want unauthenticated invalid_token (unknown_credential)", name, err, e.Code)
		}
	}
	// The deny events say why.
	var unknown int
	for _, ev := range sink.Events() {
		if ev.Outcome != nil && (ev.Outcome.Reason == "unknown_credential" || ev.Outcome.Reason == "actor_unknown_credential") {
			unknown++
		}
	}
	if unknown != 5 {
		t.Errorf("%d events with reason unknown_credential, want 5 (each refusal recorded)", unknown)
	}
}

// A JWT of another issuer whose jti looks like an issuance id is not this
// broker's credential (this one signs as https://keytrail-staging.example):
// with no record of it, it passes as before.
func TestOtherIssuerJWTWithoutRecordPasses(t *testing.T) {
	pol, err := policies.Parse("unknown.yaml", []byte(unknownJWTPolicy))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	minter := &brokertest.Minter{}
	authn := brokertest.Authn{
		"lookalike": &broker.Identity{IssuerName: "keytrail", Iss: "https://keytrail.example", Sub: "payments-api",
			JTI: "iss_01LOOKALIKE", Claims: map[string]any{"iss": "https://keytrail.example", "sub": "payments-api"}},
	}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Store:    memstore.New(clock),
		Audit:    &brokertest.Sink{},
		Now:      clock,
		Issuer:   "https://keytrail-staging.example",
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "lookalike", Grant: "payments-vault"}); err != nil {
		t.Errorf("exchange of another issuer's JWT with an issuance-id jti = %v, want it accepted", err)
	}
	if _, err := svc.Introspect(ctx, broker.IntrospectRequest{CallerToken: "lookalike", Token: "whatever"}); err != nil {
		t.Errorf("introspection with another issuer's JWT as caller = %v, want ok", err)
	}
	if _, err := svc.AuthorizeAdmin(ctx, broker.AdminRequest{Token: "lookalike", Role: broker.RoleTrace, Action: "trace"}); err != nil {
		t.Errorf("admin call with another issuer's JWT as caller = %v, want ok", err)
	}
}
