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

// chainPolicy trusts the broker itself as an issuer: a workload hands the
// JWT it got from the broker (grant handoff-jwt, audience keytrail) to an
// agent, which exchanges it as its identity token (subject or actor).
const chainPolicy = `
version: 1
issuers:
  - name: k8s
    issuer: https://k8s.example
    jwks_url: https://k8s.example/jwks
    audiences: [keytrail]
    algorithms: [ES256]
  - name: keytrail
    issuer: https://keytrail.example
    jwks_url: https://keytrail.example/.well-known/jwks.json
    audiences: [keytrail]
    algorithms: [ES256]
workloads:
  - name: payments-api
    owner: team-payments
    match: {issuer: k8s, subject: system:serviceaccount:payments:api}
    grants: [handoff-jwt, payments-vault]
  - name: payments-agent
    owner: team-payments
    match: {issuer: keytrail, subject: payments-api}
    grants: [payments-vault]
` + chainGrants

// chainGrants is the grants of chainPolicy and refusedPolicy.
const chainGrants = `grants:
  - name: handoff-jwt
    kind: jwt
    ttl: 10m
    jwt: {audience: keytrail, transit_key: k}
  - name: payments-vault
    kind: vault_token
    ttl: 15m
    vault_token: {policies: [payments-read]}
`

// A credential the broker issued stays refused once revoked, also where it
// is presented as an identity token: a revoked (or blocked) broker JWT is
// not exchanged for new credentials, as subject or as actor (SPEC /v1/token:
// 403 access_denied, "credential revoked"). Tokens of other issuers are not
// looked up.
func TestExchangeRefusesRevokedBrokerCredentialAsIdentity(t *testing.T) {
	for _, tc := range []struct {
		name       string
		revoke     func(t *testing.T, svc *broker.Service, is *broker.Issuance)
		wantReason string
	}{
		{name: "revoked", wantReason: "credential_revoked", revoke: func(t *testing.T, svc *broker.Service, is *broker.Issuance) {
			if _, err := svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "jwt leaked", broker.RevokeOptions{}, "req_r"); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "workload-blocked", wantReason: "credential_revoked", revoke: func(t *testing.T, svc *broker.Service, is *broker.Issuance) {
			// Its workload blocked (by a revocation of another of its
			// credentials): introspection calls it inactive, and so does
			// the exchange.
			if err := svc.Store().PutBlock(context.Background(), broker.Block{Workload: is.Workload, Reason: "incident", CreatedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc, _, handoff := chainService(t, chainPolicy)
			ctx, jwtTok := context.Background(), handoff.AccessToken

			if _, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: jwtTok, Grant: "payments-vault"}); err != nil {
				t.Fatalf("exchange of the active broker JWT = %v, want it accepted", err)
			}
			tc.revoke(t, svc, handoff.Issuance)

			_, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: jwtTok, Grant: "payments-vault"})
			if !errors.Is(err, broker.ErrDenied) || broker.AsError(err).Reason != tc.wantReason {
				t.Errorf("exchange of the %s broker JWT as subject = %v, want access_denied (%s)", tc.name, err, tc.wantReason)
			}
			_, err = svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "lookalike", ActorToken: jwtTok, Grant: "payments-vault"})
			if !errors.Is(err, broker.ErrDenied) || broker.AsError(err).Reason != "actor_"+tc.wantReason {
				t.Errorf("exchange with the %s broker JWT as actor = %v, want access_denied (actor_%s)", tc.name, err, tc.wantReason)
			}
			if _, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "lookalike", Grant: "payments-vault"}); err != nil {
				t.Errorf("exchange of an outside token = %v, want it accepted", err)
			}
		})
	}
}

// A revoked (or blocked) broker JWT is refused also as the Bearer token of
// a protected resource's caller: introspection and the admin API answer 401
// invalid_token (reason credential_revoked), as for any refused Bearer
// token, and record the denial. Before the revocation both accept it.
func TestRevokedBrokerCredentialRefusedAsCaller(t *testing.T) {
	svc, sink, handoff := chainService(t, chainPolicy+`
admins:
  - name: agents
    match: {issuer: keytrail, subject: payments-api}
    roles: [trace]
`)
	ctx, jwtTok := context.Background(), handoff.AccessToken

	admin := func(tok string) error {
		_, err := svc.AuthorizeAdmin(ctx, broker.AdminRequest{Token: tok, Role: broker.RoleTrace, Action: "trace"})
		return err
	}
	introspect := func(tok string) error {
		_, err := svc.Introspect(ctx, broker.IntrospectRequest{CallerToken: tok, Token: "whatever"})
		return err
	}
	for name, call := range map[string]func(string) error{"AuthorizeAdmin": admin, "Introspect": introspect} {
		if err := call(jwtTok); err != nil {
			t.Fatalf("%s(active broker JWT) = %v, want ok", name, err)
		}
	}
	if _, err := svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: handoff.Issuance.ID}, "jwt leaked", broker.RevokeOptions{}, "req_r"); err != nil {
		t.Fatal(err)
	}
	before := len(sink.Events())
	for name, call := range map[string]func(string) error{"AuthorizeAdmin": admin, "Introspect": introspect} {
		err := call(jwtTok)
		e := broker.AsError(err)
		if !errors.Is(err, broker.ErrUnauthenticated) || e.Reason != "credential_revoked" || e.Code != broker.CodeInvalidToken {
			t.Errorf("%s(revoked broker JWT) = %v (code %q), want unauthenticated invalid_token (credential_revoked)", name, err, e.Code)
		}
		if err := call("lookalike"); err != nil {
			t.Errorf("%s(outside token) = %v, want ok", name, err)
		}
	}
	evs := sink.Events()[before:]
	revoked := 0
	for _, ev := range evs {
		if ev.Outcome != nil && ev.Outcome.Reason == "credential_revoked" {
			revoked++
		}
	}
	if len(evs) != 4 || revoked != 2 {
		t.Errorf("audit events = %d, %d of them credential_revoked; want 4 (each call recorded), 2", len(evs), revoked)
	}
}

// chainService is a Service of policy (chainPolicy and more) whose
// authenticator accepts "payments" (payments-api's Kubernetes token), the
// broker JWT payments-api got from the handoff-jwt grant (handoff), as an
// identity of the keytrail issuer, and "lookalike", an outside token of that
// issuer whose jti merely looks like an issuance id.
func chainService(t *testing.T, policy string) (*broker.Service, *brokertest.Sink, *broker.ExchangeResult) {
	t.Helper()
	return chainServiceWith(t, policy, nil, nil)
}

// chainServiceWith is chainService with refusal limits (nil: none) and its
// store wrapped by wrap (nil: as it is).
func chainServiceWith(t *testing.T, policy string, limits *broker.RefusalLimits, wrap func(broker.Store) broker.Store) (*broker.Service, *brokertest.Sink, *broker.ExchangeResult) {
	t.Helper()
	pol, err := policies.Parse("chain.yaml", []byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	minter := &brokertest.Minter{}
	authn := brokertest.Authn{"payments": identity("system:serviceaccount:payments:api", nil)}
	sink := &brokertest.Sink{}
	var store broker.Store = memstore.New(clock)
	if wrap != nil {
		store = wrap(store)
	}
	svc, err := broker.NewService(broker.Deps{
		Policy:        func() *policies.Policy { return pol },
		Authn:         func() broker.Authenticator { return authn },
		Minters:       map[string]broker.Minter{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Revokers:      map[string]broker.Revoker{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Store:         store,
		Audit:         sink,
		Now:           clock,
		RefusalLimits: limits,
	})
	if err != nil {
		t.Fatal(err)
	}
	handoff, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "handoff-jwt"})
	if err != nil {
		t.Fatal(err)
	}
	// The broker's JWKS verifies its own JWT: the authenticator accepts it
	// as an identity of the keytrail issuer.
	authn[handoff.AccessToken] = &broker.Identity{IssuerName: "keytrail", Iss: "https://keytrail.example", Sub: "payments-api",
		JTI: handoff.Issuance.ID, Claims: map[string]any{"iss": "https://keytrail.example", "sub": "payments-api", "jti": handoff.Issuance.ID}}
	authn["lookalike"] = &broker.Identity{IssuerName: "keytrail", Iss: "https://keytrail.example", Sub: "payments-api",
		JTI: "iss_01LOOKALIKE", Claims: map[string]any{"iss": "https://keytrail.example", "sub": "payments-api"}}
	return svc, sink, handoff
}
