package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// TestBrokerJWTKeptMayActDoesNotGrow: the may_act restrictions a broker
// JWT's issuance keeps (Issuance.MayAct, ActMayAct) hold each restriction
// once. A chain of broker JWTs, each minted from the one before as subject
// and as actor token, keeps the one may_act it started from, not one more
// copy per hop: every record of the chain, and every exchange's decoding
// of it, grew by the claim (up to a token's size) at each hop, without
// bound while the chain lived. The restriction still holds at the end.
// (The old code kept ActMayAct with hops+1 copies of the same claim.)
func TestBrokerJWTKeptMayActDoesNotGrow(t *testing.T) {
	policy := strings.Replace(chainPolicy, "match: {issuer: keytrail, subject: payments-api}\n    grants: [payments-vault]",
		"match: {issuer: keytrail, subject: payments-api}\n    grants: [payments-vault, handoff-jwt]", 1)
	pol, err := policies.Parse("chain.yaml", []byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Date(2026, 11, 26, 13, 0, 0, 0, time.UTC)
	now := exp.Add(-time.Hour)
	clock := func() time.Time { return now }
	minter := &brokertest.Minter{}
	// may_act naming the broker JWTs of the payments-api workload: they
	// may act for this token's workload.
	self := identity("system:serviceaccount:payments:api", map[string]any{
		"may_act": map[string]any{"iss": "https://keytrail.example", "sub": "payments-api"}})
	authn := brokertest.Authn{
		"self":    self,
		"mallory": {IssuerName: "k8s", Iss: "https://k8s.example", Sub: "user:mallory", JTI: "k8s-mallory", Expiry: exp, Claims: map[string]any{"iss": "https://k8s.example", "sub": "user:mallory"}},
	}
	store := memstore.New(clock)
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Store:    store,
		Audit:    &brokertest.Sink{},
		Now:      clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	handoff := func(subject, actor string) (string, *broker.Issuance) {
		t.Helper()
		res, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: subject, ActorToken: actor, Grant: "handoff-jwt"})
		if err != nil {
			t.Fatalf("handoff of %s (actor %q) = %v", subject, actor, err)
		}
		authn[res.AccessToken] = &broker.Identity{IssuerName: "keytrail", Iss: "https://keytrail.example", Sub: "payments-api",
			JTI: res.Issuance.ID, Expiry: res.Issuance.ExpiresAt, Claims: map[string]any{"iss": "https://keytrail.example", "sub": "payments-api", "jti": res.Issuance.ID}}
		return res.AccessToken, res.Issuance
	}
	jwt, _ := handoff("self", "")
	const hops = 20
	for range hops {
		jwt, _ = handoff(jwt, jwt)
	}
	is, err := store.FindIssuance(ctx, broker.RefFingerprint, broker.Fingerprint(jwt))
	if err != nil {
		t.Fatal(err)
	}
	if len(is.MayAct) != 1 || len(is.ActMayAct) != 1 {
		t.Errorf("after %d hops the record keeps %d may_act and %d act_may_act, want 1 and 1 (the one claim, once each)",
			hops, len(is.MayAct), len(is.ActMayAct))
	}
	// Still held to it: as subject, and as actor token.
	if _, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: jwt, ActorToken: "mallory", Grant: "payments-vault"}); broker.AsError(err).Reason != "actor_not_permitted" {
		t.Errorf("last broker JWT as subject, mallory as actor = %v, want actor_not_permitted", err)
	}
	if _, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "mallory", ActorToken: jwt, Grant: "payments-vault"}); broker.AsError(err).Reason != "subject_not_permitted" {
		t.Errorf("mallory as subject, last broker JWT as actor = %v, want subject_not_permitted", err)
	}
}
