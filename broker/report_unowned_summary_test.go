package broker_test

import (
	"context"
	"testing"

	"github.com/keytrail/keytrail/broker"
)

// TestReportUnownedIdentityCountsSummarizedRefusals: an identity that
// matches no workload is listed by keytrail report as unowned, with how
// often it was refused no_workload and the grants it asked for. Its
// no_workload refusals past refusal_limit.per_identity are answered 429
// and counted by its deny summary (reason rate_limited, details.reasons
// no_workload), which the report did not read for the identity: 200
// refusals showed as 20 denies (one identity retrying in a loop, what
// the list is there to show, ranked by the audited ones alone). Read
// from the events the broker writes, as an offline report reads them
// (JSON).
func TestReportUnownedIdentityCountsSummarizedRefusals(t *testing.T) {
	const calls, perIdentity = 200, 20
	svc, sink := refusedService(t, &broker.RefusalLimits{PerIdentity: perIdentity})
	ctx := context.Background()
	for range calls {
		if _, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "stranger", Grant: "handoff-jwt"}); err == nil {
			t.Fatal("an exchange of an identity matching no workload succeeded")
		}
	}
	svc.FlushRefusalSummaries(ctx, true)
	rep := reportOf(t, svc, sink)
	if len(rep.UnownedIdentities) != 1 {
		t.Fatalf("unowned identities = %+v, want the stranger", rep.UnownedIdentities)
	}
	u := rep.UnownedIdentities[0]
	if u.Sub != "system:serviceaccount:other:x" || u.Denies != calls || len(u.Grants) != 1 || u.Grants[0] != "handoff-jwt" {
		t.Errorf("unowned identity = %+v, want sub system:serviceaccount:other:x, %d denies (%d audited, %d in its summary), grants [handoff-jwt]",
			u, calls, perIdentity, calls-perIdentity)
	}
	var noWorkload int
	for _, d := range rep.Denies {
		if d.Reason == "no_workload" {
			noWorkload = d.Count
		}
	}
	if noWorkload != calls {
		t.Errorf("report denies no_workload = %d, want %d", noWorkload, calls)
	}
}
