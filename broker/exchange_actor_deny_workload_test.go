package broker_test

import (
	"context"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestExchangeSubjectRefusalsNameWorkload: a refusal of an exchange whose
// subject matched a workload, decided before the workload match is
// checked (an actor token that does not verify, one refused by may_act or
// with no time left), wrote a deny naming no workload, while the summary
// of the same refusals past refusal_limit.per_identity named the
// subject's workload: keytrail report's per-workload denied counted only
// the summarized ones (9 of 50 here). Every deny of such an exchange
// now names the subject's workload and owner, so report's denied for the
// workload is every refusal of its exchanges.
func TestExchangeSubjectRefusalsNameWorkload(t *testing.T) {
	const perIdentity = 20
	svc, sink := refusedService(t, &broker.RefusalLimits{PerIdentity: perIdentity})
	ctx := context.Background()
	calls := 0
	for _, tc := range []struct {
		actor string
		n     int
	}{
		{"late-user", perIdentity + 5}, // actor_token_expired, its own bucket
		{"choosy-user", 1},             // subject_not_permitted
		{"garbage", perIdentity + 3},   // actor_bad_signature, the workload's bucket
	} {
		for range tc.n {
			if _, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", ActorToken: tc.actor, Grant: "handoff-jwt", RequestID: "req_" + tc.actor}); err == nil {
				t.Fatalf("exchange acting for %s succeeded", tc.actor)
			}
			calls++
		}
	}
	svc.FlushRefusalSummaries(ctx, true)

	for _, ev := range sink.Events() {
		if ev.Type != audit.TypeDeny {
			continue
		}
		if ev.Workload != "payments-api" || ev.Owner != "team-payments" {
			t.Errorf("deny %s (outcome %+v, scope %v) names workload %q owner %q, want payments-api of team-payments",
				ev.RequestID, ev.Outcome, ev.Details["scope"], ev.Workload, ev.Owner)
		}
	}

	rep := reportOf(t, svc, sink)
	total := 0
	for _, d := range rep.Denies {
		total += d.Count
	}
	denied := -1
	for _, w := range rep.Workloads {
		if w.Name == "payments-api" {
			denied = w.Denied
		}
	}
	if total != calls || denied != calls {
		t.Errorf("report: %d denies in all, payments-api denied %d; want both %d (every refused exchange of payments-api)", total, denied, calls)
	}
}
