package broker_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestExchangeActorRefusalsPerActor: in delegation the subject token is
// the agent's workload and the actor token the user it acts for
// (SPEC-ADDITIONS "Delegation"). The refusals of an actor token were
// counted against the agent workload's one bucket of audited refusals
// (refusal_limit.per_identity): one user's expired tokens used it up and
// the next user's refusal (its may_act naming another agent) went
// unaudited, counted by a summary naming no actor. The refusals of a
// verified actor token now take from a bucket of the workload and that
// actor (iss, sub), whose summary names it as act; those of an actor
// token that does not verify (no identity to trust) and the workload's
// own refusals share the workload's bucket, as before. keytrail report
// counts the summaries as before.
func TestExchangeActorRefusalsPerActor(t *testing.T) {
	const perIdentity, lateCalls = 20, 25
	svc, sink := refusedService(t, &broker.RefusalLimits{PerIdentity: perIdentity})
	ctx := context.Background()
	exchange := func(actor string) error {
		_, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", ActorToken: actor, Grant: "handoff-jwt"})
		if err == nil {
			t.Fatalf("exchange acting for %s succeeded", actor)
		}
		return err
	}
	// User A (user-3): 25 refused, 20 audited, 5 not.
	for i := range lateCalls {
		err := exchange("late-user")
		if got, want := broker.SuppressedScope(err) != "", i >= perIdentity; got != want || broker.AsError(err).Reason != "actor_token_expired" {
			t.Fatalf("user-3's refusal %d = %v (unaudited %v), want actor_token_expired, unaudited %v", i+1, err, got, want)
		}
	}
	// User B (user-2): its first refusal is audited.
	before := len(sink.Events())
	err := exchange("choosy-user")
	if broker.AsError(err).Reason != "subject_not_permitted" || broker.SuppressedScope(err) != "" {
		t.Fatalf("user-2's first refusal = %v (suppressed by %q), want subject_not_permitted audited on its own", err, broker.SuppressedScope(err))
	}
	evs := sink.Events()[before:]
	if len(evs) != 1 || evs[0].Outcome == nil || evs[0].Outcome.Reason != "subject_not_permitted" || len(evs[0].Act) != 1 || evs[0].Act[0].Sub != "user-2" {
		t.Fatalf("user-2's first refusal wrote %+v, want its deny subject_not_permitted acting for user-2", evs)
	}
	// An actor token that does not verify, and the workload's own
	// refusals, share the workload's bucket, untouched by user A's.
	for i := range perIdentity + 3 {
		err := exchange("garbage")
		if got, want := broker.SuppressedScope(err) != "", i >= perIdentity; got != want {
			t.Fatalf("unverified actor token's refusal %d = %v (unaudited %v), want unaudited %v", i+1, err, got, want)
		}
	}
	if _, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "nope"}); broker.SuppressedScope(err) == "" {
		t.Errorf("unknown_grant past the workload's bucket = %v, want it unaudited", err)
	}

	svc.FlushRefusalSummaries(ctx, true)
	summaries := map[string]*audit.Event{}
	for _, ev := range sink.Events() {
		if ev.Details["scope"] != broker.RefusalScopeIdentity {
			continue
		}
		actor := ""
		for _, a := range ev.Act {
			actor += a.Iss + "#" + a.Sub + ";"
		}
		if summaries[actor] != nil {
			t.Fatalf("two summaries acting for %q: %+v, %+v", actor, summaries[actor], ev)
		}
		summaries[actor] = ev
	}
	if len(summaries) != 2 {
		t.Fatalf("summaries = %v, want one of user-3's refusals and one of the workload's", summaries)
	}
	for actor, want := range map[string]string{
		"https://k8s.example#user-3;": "map[actor_token_expired:5]",
		"":                            "map[actor_bad_signature:3 unknown_grant:1]",
	} {
		s := summaries[actor]
		if s == nil || s.Type != audit.TypeDeny || s.Workload != "payments-api" || s.Owner != "team-payments" || s.Outcome == nil ||
			s.Outcome.Reason != broker.ReasonRateLimited || fmt.Sprint(s.Details["reasons"]) != want {
			t.Errorf("summary acting for %q = %+v, want a deny 429 rate_limited of payments-api counting %s", actor, s, want)
			continue
		}
		if len(s.Act) > 0 && s.Act[0].JTI != "" {
			t.Errorf("summary acting for %q names jti %q: it counts any of the actor's tokens", actor, s.Act[0].JTI)
		}
	}

	// keytrail report (offline, from JSON) counts them by reason.
	rep := reportOf(t, svc, sink)
	denies := map[string]int{}
	for _, d := range rep.Denies {
		denies[d.Reason] = d.Count
	}
	if want := map[string]int{"actor_token_expired": lateCalls, "subject_not_permitted": 1, "actor_bad_signature": perIdentity + 3, "unknown_grant": 1}; fmt.Sprint(denies) != fmt.Sprint(want) {
		t.Errorf("report denies = %v, want %v", denies, want)
	}
}
