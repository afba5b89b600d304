package broker_test

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// mayActSubject is the payments workload's identity token carrying
// mayAct (RFC 8693 §4.4) as its may_act claim, as authn decodes claims
// (JSON numbers as json.Number).
func mayActSubject(mayAct any) *broker.Identity {
	return identity("system:serviceaccount:payments:api", map[string]any{
		"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}},
		"may_act":       mayAct,
	})
}

// ssoUser is a verified actor token of another issuer than the subject's.
func ssoUser(sub string, exp time.Time) *broker.Identity {
	return &broker.Identity{IssuerName: "sso", Iss: "https://sso.example", Sub: sub, JTI: "sso-" + sub, Expiry: exp,
		Claims: map[string]any{"iss": "https://sso.example", "sub": sub, "jti": "sso-" + sub, "email": sub + "@corp.example", "level": json.Number("2")}}
}

// TestExchangeHonoursMayAct: a subject token with a may_act claim (RFC
// 8693 §4.4) names the parties it may be exchanged with as actor: an actor
// token whose (iss, sub), and any other claim may_act names, does not
// match is refused 401 invalid_grant, reason actor_not_permitted, nothing
// is minted, and the deny event names the verified actor as act. A may_act
// without iss names a subject of the subject token's own issuer; one that
// is no JSON object, or names nothing, permits no actor. A subject token
// without may_act takes any verified actor, as before. (may_act was
// ignored: every verified actor was taken.)
func TestExchangeHonoursMayAct(t *testing.T) {
	exp := time.Date(2026, 11, 26, 13, 0, 0, 0, time.UTC) // an hour after the fixture's clock
	k8sUser := &broker.Identity{IssuerName: "k8s", Iss: "https://k8s.example", Sub: "user:carol", JTI: "k8s-carol", Expiry: exp,
		Claims: map[string]any{"iss": "https://k8s.example", "sub": "user:carol"}}
	for _, tc := range []struct {
		name   string
		mayAct any // absent when nil
		actor  *broker.Identity
		ok     bool
	}{
		{name: "none/any-actor", actor: ssoUser("user:mallory", exp), ok: true},
		{name: "iss-sub/match", mayAct: map[string]any{"iss": "https://sso.example", "sub": "user:carol"}, actor: ssoUser("user:carol", exp), ok: true},
		{name: "iss-sub/other-sub", mayAct: map[string]any{"iss": "https://sso.example", "sub": "user:carol"}, actor: ssoUser("user:mallory", exp)},
		{name: "iss-sub/other-iss", mayAct: map[string]any{"iss": "https://sso.example", "sub": "user:carol"}, actor: k8sUser},
		{name: "sub-only/subject-issuer", mayAct: map[string]any{"sub": "user:carol"}, actor: k8sUser, ok: true},
		{name: "sub-only/other-issuer", mayAct: map[string]any{"sub": "user:carol"}, actor: ssoUser("user:carol", exp)},
		{name: "other-claims/match", mayAct: map[string]any{"iss": "https://sso.example", "sub": "user:carol", "email": "user:carol@corp.example", "level": json.Number("2")}, actor: ssoUser("user:carol", exp), ok: true},
		{name: "other-claims/differ", mayAct: map[string]any{"iss": "https://sso.example", "sub": "user:carol", "level": json.Number("3")}, actor: ssoUser("user:carol", exp)},
		{name: "other-claims/absent", mayAct: map[string]any{"iss": "https://sso.example", "sub": "user:carol", "client_id": "app"}, actor: ssoUser("user:carol", exp)},
		{name: "malformed/string", mayAct: "user:carol", actor: ssoUser("user:carol", exp)},
		{name: "malformed/empty", mayAct: map[string]any{}, actor: ssoUser("user:carol", exp)},
		{name: "malformed/null", mayAct: json.RawMessage("null"), actor: ssoUser("user:carol", exp)},
		{name: "malformed/sub-not-string", mayAct: map[string]any{"iss": "https://sso.example", "sub": json.Number("7")}, actor: ssoUser("user:carol", exp)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			subject := identity("system:serviceaccount:payments:api", map[string]any{
				"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}},
			})
			switch tc.mayAct.(type) {
			case nil:
			case json.RawMessage: // a may_act written as null
				subject = mayActSubject(nil)
			default:
				subject = mayActSubject(tc.mayAct)
			}
			f.authn["subject"], f.authn["actor"] = subject, tc.actor
			wantAct := []audit.Identity{{Iss: tc.actor.Iss, Sub: tc.actor.Sub, JTI: tc.actor.JTI}}

			res, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "subject", ActorToken: "actor", Grant: "payments-vault", RequestID: "req_mayact"})
			if tc.ok {
				if err != nil {
					t.Fatalf("exchange = %v, want a credential", err)
				}
				if want := []broker.IdentityRef{tc.actor.Ref()}; !slices.Equal(res.Issuance.Act, want) {
					t.Errorf("issuance act = %+v, want %+v", res.Issuance.Act, want)
				}
				return
			}
			if !errors.Is(err, broker.ErrUnauthenticated) || broker.AsError(err).Reason != "actor_not_permitted" {
				t.Fatalf("exchange = %v, want invalid_grant (actor_not_permitted)", err)
			}
			if n := len(f.minter.Calls()); n != 0 {
				t.Errorf("%d mints for a refused actor, want none", n)
			}
			var deny *audit.Event
			for _, ev := range f.sink.Events() {
				if ev.RequestID == "req_mayact" {
					if ev.Type != audit.TypeDeny || deny != nil {
						t.Fatalf("event %s of the refused exchange, want one deny", ev.Type)
					}
					deny = ev
				}
			}
			if deny == nil || deny.Outcome == nil || deny.Outcome.Status != 401 || deny.Outcome.Reason != "actor_not_permitted" ||
				!slices.Equal(deny.Act, wantAct) || deny.Identity == nil || deny.Identity.Sub != "system:serviceaccount:payments:api" || deny.Workload != "payments-api" {
				t.Errorf("deny event %+v (outcome %+v), want 401 actor_not_permitted naming the subject, its workload and act %+v", deny, deny.Outcome, wantAct)
			}
		})
	}
}

// TestDelegatedCredentialCappedAtActorExpiry: a credential minted with an
// actor token expires no later than the actor token (the delegation it was
// granted under), as the grant's ttl and the requested ttl cap it: the
// minter is asked for the shorter TTL (whole seconds, rounded down), and
// expires_in and the issuance's expiry say so. An actor token accepted
// within the verifier's leeway after its exp leaves no time: refused 401
// invalid_grant, reason actor_token_expired, nothing minted. (The
// credential lived the grant's TTL whatever the actor token's exp.)
func TestDelegatedCredentialCappedAtActorExpiry(t *testing.T) {
	for _, tc := range []struct {
		name    string
		actorIn time.Duration // actor token's exp after the clock
		ttl     time.Duration // requested
		wantTTL time.Duration // 0: refused
		noActor bool
	}{
		{name: "actor-later", actorIn: time.Hour, wantTTL: 15 * time.Minute},
		{name: "actor-sooner", actorIn: 2*time.Minute + 700*time.Millisecond, wantTTL: 2 * time.Minute},
		{name: "requested-sooner", actorIn: 2 * time.Minute, ttl: time.Minute, wantTTL: time.Minute},
		{name: "actor-under-a-second", actorIn: 900 * time.Millisecond},
		{name: "actor-in-leeway", actorIn: -10 * time.Second},
		{name: "no-actor", noActor: true, wantTTL: 15 * time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.authn["actor"] = ssoUser("user:carol", f.now.Add(tc.actorIn))
			req := broker.ExchangeRequest{SubjectToken: "payments", ActorToken: "actor", Grant: "payments-vault", TTL: tc.ttl, RequestID: "req_ttl"}
			if tc.noActor {
				req.ActorToken = ""
			}
			res, err := f.svc.Exchange(context.Background(), req)
			if tc.wantTTL == 0 {
				if !errors.Is(err, broker.ErrUnauthenticated) || broker.AsError(err).Reason != "actor_token_expired" {
					t.Fatalf("exchange = %v, want invalid_grant (actor_token_expired)", err)
				}
				if n := len(f.minter.Calls()); n != 0 {
					t.Errorf("%d mints, want none", n)
				}
				evs := f.sink.Events()
				if len(evs) == 0 || evs[len(evs)-1].Type != audit.TypeDeny || len(evs[len(evs)-1].Act) != 1 {
					t.Errorf("last event %+v, want the deny naming the actor", evs)
				}
				return
			}
			if err != nil {
				t.Fatalf("exchange = %v", err)
			}
			calls := f.minter.Calls()
			if len(calls) != 1 || calls[0].TTL != tc.wantTTL {
				t.Fatalf("mint requests %+v, want one with TTL %v", calls, tc.wantTTL)
			}
			if res.ExpiresIn != int64(tc.wantTTL/time.Second) || !res.Issuance.ExpiresAt.Equal(f.now.Add(tc.wantTTL)) {
				t.Errorf("expires_in %d, issuance expiry %v; want %v (%v)", res.ExpiresIn, res.Issuance.ExpiresAt, tc.wantTTL, f.now.Add(tc.wantTTL))
			}
		})
	}
}

// TestExchangeHonoursActorMayAct: RFC 8693 §4.4 puts may_act in the token
// of the party acted for, naming who may act for it. Under keytrail's
// reading that party is the actor token's (a user's token from an IdP), and
// the party acting is the subject (the agent): an actor token with a
// may_act claim is exchanged only with a subject token whose (iss, sub),
// and any other claim may_act names, match; else 401 invalid_grant, reason
// subject_not_permitted, nothing minted, the deny event naming the subject
// and the verified actor as act. A may_act without iss names a subject of
// the actor token's own issuer; one that is no JSON object, or names
// nothing, permits no subject. When both tokens carry may_act, both must
// hold. (The actor token's may_act was ignored: a user's token that named
// one agent was taken with any.)
func TestExchangeHonoursActorMayAct(t *testing.T) {
	exp := time.Date(2026, 11, 26, 13, 0, 0, 0, time.UTC) // an hour after the fixture's clock
	const agent = "system:serviceaccount:payments:api"
	user := func(mayAct any) *broker.Identity {
		u := ssoUser("user:carol", exp)
		u.Claims["may_act"] = mayAct
		return u
	}
	// A user of the subject's own issuer.
	k8sUser := func(mayAct any) *broker.Identity {
		return &broker.Identity{IssuerName: "k8s", Iss: "https://k8s.example", Sub: "user:carol", JTI: "k8s-carol", Expiry: exp,
			Claims: map[string]any{"iss": "https://k8s.example", "sub": "user:carol", "may_act": mayAct}}
	}
	for _, tc := range []struct {
		name          string
		actor         *broker.Identity
		subjectMayAct any // absent when nil
		reason        string
	}{
		{name: "iss-sub/match", actor: user(map[string]any{"iss": "https://k8s.example", "sub": agent})},
		{name: "iss-sub/other-sub", actor: user(map[string]any{"iss": "https://k8s.example", "sub": "system:serviceaccount:orders:api"}), reason: "subject_not_permitted"},
		{name: "iss-sub/other-iss", actor: user(map[string]any{"iss": "https://sso.example", "sub": agent}), reason: "subject_not_permitted"},
		{name: "iss-sub/case", actor: user(map[string]any{"iss": "https://k8s.example", "sub": "System:ServiceAccount:payments:api"}), reason: "subject_not_permitted"},
		{name: "sub-only/actor-issuer", actor: user(map[string]any{"sub": agent}), reason: "subject_not_permitted"},
		{name: "sub-only/same-issuer", actor: k8sUser(map[string]any{"sub": agent})},
		{name: "other-claims/match", actor: user(map[string]any{"iss": "https://k8s.example", "sub": agent, "kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}}})},
		{name: "other-claims/differ", actor: user(map[string]any{"iss": "https://k8s.example", "sub": agent, "kubernetes.io": map[string]any{"namespace": "payments"}}), reason: "subject_not_permitted"},
		{name: "other-claims/absent", actor: user(map[string]any{"iss": "https://k8s.example", "sub": agent, "client_id": "app"}), reason: "subject_not_permitted"},
		{name: "malformed/string", actor: user(agent), reason: "subject_not_permitted"},
		{name: "malformed/array", actor: user([]any{map[string]any{"iss": "https://k8s.example", "sub": agent}}), reason: "subject_not_permitted"},
		{name: "malformed/empty", actor: user(map[string]any{}), reason: "subject_not_permitted"},
		{name: "malformed/null", actor: user(nil), reason: "subject_not_permitted"},
		{name: "malformed/iss-not-string", actor: user(map[string]any{"iss": []any{"https://k8s.example"}, "sub": agent}), reason: "subject_not_permitted"},
		{name: "both/match", actor: user(map[string]any{"iss": "https://k8s.example", "sub": agent}),
			subjectMayAct: map[string]any{"iss": "https://sso.example", "sub": "user:carol"}},
		{name: "both/actor-refuses", actor: user(map[string]any{"iss": "https://k8s.example", "sub": "system:serviceaccount:orders:api"}),
			subjectMayAct: map[string]any{"iss": "https://sso.example", "sub": "user:carol"}, reason: "subject_not_permitted"},
		{name: "both/subject-refuses", actor: user(map[string]any{"iss": "https://k8s.example", "sub": agent}),
			subjectMayAct: map[string]any{"iss": "https://sso.example", "sub": "user:mallory"}, reason: "actor_not_permitted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			subject := identity(agent, map[string]any{
				"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}},
			})
			if tc.subjectMayAct != nil {
				subject = mayActSubject(tc.subjectMayAct)
			}
			f.authn["subject"], f.authn["actor"] = subject, tc.actor
			res, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "subject", ActorToken: "actor", Grant: "payments-vault", RequestID: "req_actor_mayact"})
			if tc.reason == "" {
				if err != nil {
					t.Fatalf("exchange = %v, want a credential", err)
				}
				if want := []broker.IdentityRef{tc.actor.Ref()}; !slices.Equal(res.Issuance.Act, want) {
					t.Errorf("issuance act = %+v, want %+v", res.Issuance.Act, want)
				}
				return
			}
			if !errors.Is(err, broker.ErrUnauthenticated) || broker.AsError(err).Reason != tc.reason {
				t.Fatalf("exchange = %v, want invalid_grant (%s)", err, tc.reason)
			}
			if n := len(f.minter.Calls()); n != 0 {
				t.Errorf("%d mints for a refused delegation, want none", n)
			}
			wantAct := []audit.Identity{{Iss: tc.actor.Iss, Sub: tc.actor.Sub, JTI: tc.actor.JTI}}
			var deny *audit.Event
			for _, ev := range f.sink.Events() {
				if ev.RequestID == "req_actor_mayact" {
					if ev.Type != audit.TypeDeny || deny != nil {
						t.Fatalf("event %s of the refused exchange, want one deny", ev.Type)
					}
					deny = ev
				}
			}
			if deny == nil || deny.Outcome == nil || deny.Outcome.Status != 401 || deny.Outcome.Reason != tc.reason ||
				!slices.Equal(deny.Act, wantAct) || deny.Identity == nil || deny.Identity.Sub != agent || deny.Workload != "payments-api" {
				t.Errorf("deny event %+v, want 401 %s naming the subject, its workload and act %+v", deny, tc.reason, wantAct)
			}
		})
	}
}
