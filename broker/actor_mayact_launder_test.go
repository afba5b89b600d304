package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// TestBrokerJWTCarriesSubjectMayAct: a subject token's may_act (the
// actors its workload may be exchanged with) is not laundered through a
// broker JWT: a broker JWT minted from a subject token that carried
// may_act stands for that token, as if it carried the same may_act (iss
// filled in from the subject token when may_act has none), also when
// minted from a broker JWT that did, and also in the actor slot (where a
// token's may_act names the subjects that may act for it). Presented as
// subject with an actor its may_act does not name: 401 invalid_grant,
// actor_not_permitted, nothing minted; as actor with a subject it does not
// name: subject_not_permitted. A broker JWT minted from a subject token
// without may_act restricts nothing. (The broker JWT carried no may_act:
// exchanging the restricted token for one, then presenting that as the
// subject, took any actor.)
func TestBrokerJWTCarriesSubjectMayAct(t *testing.T) {
	policy := strings.Replace(chainPolicy, "match: {issuer: keytrail, subject: payments-api}\n    grants: [payments-vault]",
		"match: {issuer: keytrail, subject: payments-api}\n    grants: [payments-vault, handoff-jwt]\n"+
			"  - name: orders-api\n    owner: team-orders\n    match: {issuer: k8s, subject: system:serviceaccount:orders:api}\n    grants: [payments-vault]", 1)
	pol, err := policies.Parse("chain.yaml", []byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	exp := time.Date(2026, 11, 26, 13, 0, 0, 0, time.UTC)
	now := exp.Add(-time.Hour)
	clock := func() time.Time { return now }
	minter := &brokertest.Minter{}
	k8s := func(mayAct any) *broker.Identity {
		c := map[string]any{}
		if mayAct != nil {
			c["may_act"] = mayAct
		}
		return identity("system:serviceaccount:payments:api", c)
	}
	authn := brokertest.Authn{
		// may_act without iss: a subject of the subject token's issuer.
		"restricted":     k8s(map[string]any{"sub": "user:carol"}),
		"restricted-sso": k8s(map[string]any{"iss": "https://sso.example", "sub": "user:carol"}),
		"unrestricted":   k8s(nil),
		"orders":         identity("system:serviceaccount:orders:api", nil), // another workload
		"carol":          {IssuerName: "k8s", Iss: "https://k8s.example", Sub: "user:carol", JTI: "k8s-carol", Expiry: exp, Claims: map[string]any{"iss": "https://k8s.example", "sub": "user:carol"}},
		"mallory":        {IssuerName: "k8s", Iss: "https://k8s.example", Sub: "user:mallory", JTI: "k8s-mallory", Expiry: exp, Claims: map[string]any{"iss": "https://k8s.example", "sub": "user:mallory"}},
		"sso-carol":      ssoUser("user:carol", exp),
		"sso-mallory":    ssoUser("user:mallory", exp),
	}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Store:    memstore.New(clock),
		Audit:    &brokertest.Sink{},
		Now:      clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// handoff exchanges subject (and actor, if any) for a broker JWT and
	// makes the authenticator take it as an identity of the keytrail issuer.
	handoff := func(t *testing.T, subject, actor string) string {
		t.Helper()
		res, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: subject, ActorToken: actor, Grant: "handoff-jwt"})
		if err != nil {
			t.Fatalf("handoff of %s (actor %q) = %v", subject, actor, err)
		}
		authn[res.AccessToken] = &broker.Identity{IssuerName: "keytrail", Iss: "https://keytrail.example", Sub: "payments-api",
			JTI: res.Issuance.ID, Expiry: res.Issuance.ExpiresAt, Claims: map[string]any{"iss": "https://keytrail.example", "sub": "payments-api", "jti": res.Issuance.ID}}
		return res.AccessToken
	}
	exchange := func(subject, actor string) error {
		_, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: subject, ActorToken: actor, Grant: "payments-vault"})
		return err
	}
	want := func(t *testing.T, what string, err error, reason string) {
		t.Helper()
		if reason == "" {
			if err != nil {
				t.Errorf("%s = %v, want a credential", what, err)
			}
			return
		}
		if !errors.Is(err, broker.ErrUnauthenticated) || broker.AsError(err).Reason != reason {
			t.Errorf("%s = %v, want invalid_grant (%s)", what, err, reason)
		}
	}

	t.Run("subject/no-actor-at-mint", func(t *testing.T) {
		jwt := handoff(t, "restricted", "")
		want(t, "broker JWT as subject, an actor its token's may_act does not name", exchange(jwt, "mallory"), "actor_not_permitted")
		want(t, "broker JWT as subject, the actor may_act names", exchange(jwt, "carol"), "")
		want(t, "broker JWT as subject, no actor", exchange(jwt, ""), "")
		// One more hop: a broker JWT minted from that broker JWT.
		jwt2 := handoff(t, jwt, "")
		want(t, "second broker JWT as subject, another actor", exchange(jwt2, "mallory"), "actor_not_permitted")
		want(t, "second broker JWT as subject, the named actor", exchange(jwt2, "carol"), "")
	})
	t.Run("subject/actor-at-mint", func(t *testing.T) {
		jwt := handoff(t, "restricted-sso", "sso-carol")
		want(t, "broker JWT as subject, another actor", exchange(jwt, "sso-mallory"), "actor_not_permitted")
		// The may_act named iss: a user:carol of another issuer is not named.
		want(t, "broker JWT as subject, the named sub at another issuer", exchange(jwt, "carol"), "actor_not_permitted")
		want(t, "broker JWT as subject, the named actor", exchange(jwt, "sso-carol"), "")
	})
	t.Run("actor", func(t *testing.T) {
		jwt := handoff(t, "restricted", "")
		want(t, "broker JWT as actor, a subject its token's may_act does not name", exchange("unrestricted", jwt), "subject_not_permitted")
	})
	// The other direction: the actor token's may_act (the parties that
	// may act for its user) is not laundered through the broker JWT
	// minted with it, which a third party would present as its actor.
	t.Run("actor/acted-for-at-mint", func(t *testing.T) {
		user := ssoUser("user:carol", exp)
		user.Claims["may_act"] = map[string]any{"iss": "https://k8s.example", "sub": "system:serviceaccount:payments:api"}
		authn["carol-for-payments"] = user
		jwt := handoff(t, "unrestricted", "carol-for-payments")
		want(t, "broker JWT acting for carol as actor, a subject carol's may_act does not name", exchange("orders", jwt), "subject_not_permitted")
		want(t, "broker JWT acting for carol as actor, the subject carol's may_act names", exchange("unrestricted", jwt), "")
		// Presented as subject it acts itself: carol's may_act names no actor.
		want(t, "broker JWT acting for carol as subject, another actor", exchange(jwt, "mallory"), "")
		// One more hop: the credential of a subject acting for that JWT.
		jwt2 := handoff(t, "unrestricted", jwt)
		want(t, "broker JWT acting for it as actor, a subject carol's may_act does not name", exchange("orders", jwt2), "subject_not_permitted")
	})
	t.Run("unrestricted", func(t *testing.T) {
		jwt := handoff(t, "unrestricted", "")
		want(t, "unrestricted broker JWT as subject, any actor", exchange(jwt, "mallory"), "")
		want(t, "unrestricted broker JWT as actor, any subject", exchange("orders", jwt), "")
	})
}
