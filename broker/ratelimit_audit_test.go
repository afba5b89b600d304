package broker_test

import (
	"context"
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// perIdentity is DefaultRefusalLimits.PerIdentity: the 429s of one caller
// audited on their own per summary span.
const perIdentity = 20

// rateLimitedEvents splits the events of type typ with outcome 429
// rate_limited into those of one request each and the summaries (details
// scope "identity").
func rateLimitedEvents(evs []*audit.Event, typ string) (single, summaries []*audit.Event) {
	for _, ev := range evs {
		if ev.Type != typ || ev.Outcome == nil || ev.Outcome.Status != 429 || ev.Outcome.Reason != "rate_limited" {
			continue
		}
		if ev.Details["scope"] == "identity" {
			summaries = append(summaries, ev)
		} else {
			single = append(single, ev)
		}
	}
	return single, summaries
}

// checkIdentitySummary checks that the 429s of one caller past its rate are
// audited as at most a bounded number of events of their own and one
// summary that counts the rest, all of them accounted for.
func checkIdentitySummary(t *testing.T, evs []*audit.Event, typ string, refused int, now time.Time) *audit.Event {
	t.Helper()
	single, sums := rateLimitedEvents(evs, typ)
	if len(single) > perIdentity {
		t.Fatalf("%d refused requests wrote %d %s events of their own, want at most %d", refused, len(single), typ, perIdentity)
	}
	if len(sums) != 1 {
		t.Fatalf("%d summaries of the suppressed 429s, want 1", len(sums))
	}
	sum := sums[0]
	n, _ := sum.Details["suppressed"].(int)
	if len(single)+n != refused {
		t.Errorf("%d events of their own + %d suppressed = %d, want the %d refused requests", len(single), n, len(single)+n, refused)
	}
	ts := now.UTC().Format(audit.TimeFormat)
	if sum.Outcome.Error != "slow_down" || sum.Details["first"] != ts || sum.Details["last"] != ts {
		t.Errorf("summary outcome %+v details %v; want slow_down, first and last %s", sum.Outcome, sum.Details, ts)
	}
	if a, ok := sum.Details["answered"]; ok {
		t.Errorf("summary of 429s alone has details.answered %v, want none (as before)", a)
	}
	return sum
}

// workloadAtRate is f's Service with refusal limits (RefusalLimits
// defaults) and an exchange request of workload payments that has taken
// its burst: the next one is past its rate.
func workloadAtRate(t *testing.T, f *fixture) (*broker.Service, broker.ExchangeRequest) {
	t.Helper()
	svc, err := broker.NewService(broker.Deps{
		Policy:        func() *policies.Policy { return f.pol },
		Authn:         func() broker.Authenticator { return f.authn },
		Minters:       map[string]broker.Minter{broker.KindVaultToken: f.minter},
		Revokers:      map[string]broker.Revoker{broker.KindVaultToken: f.minter},
		Store:         f.store,
		Audit:         f.sink,
		Now:           func() time.Time { return f.now },
		RefusalLimits: &broker.RefusalLimits{},
	})
	if err != nil {
		t.Fatal(err)
	}
	req := broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", RequestID: "req", Source: broker.Source{IP: "192.0.2.9"}}
	for range 2 { // rate: {per_second: 1, burst: 2}
		if _, err := svc.Exchange(context.Background(), req); err != nil {
			t.Fatal(err)
		}
	}
	return svc, req
}

// introspectionService is f's Service with an introspection limit of one
// (per_second 1, burst 1), store as its Store and refusal as its refusal
// limits.
func introspectionService(t *testing.T, f *fixture, store broker.Store, refusal *broker.RefusalLimits) *broker.Service {
	t.Helper()
	svc, err := broker.NewService(broker.Deps{
		Policy:           func() *policies.Policy { return f.pol },
		Authn:            func() broker.Authenticator { return f.authn },
		Store:            store,
		Audit:            f.sink,
		Now:              func() time.Time { return f.now },
		RefusalLimits:    refusal,
		IntrospectLimits: broker.IntrospectLimits{PerSecond: 1, Burst: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// introspectorAtLimit is introspectionService (refusal limits at their
// defaults) and an introspection request of caller id (token "verifier")
// that has taken its burst of one: the next one is past its limit.
func introspectorAtLimit(t *testing.T, f *fixture, id *broker.Identity, store broker.Store) (*broker.Service, broker.IntrospectRequest) {
	t.Helper()
	f.authn["verifier"] = id
	svc := introspectionService(t, f, store, &broker.RefusalLimits{})
	req := broker.IntrospectRequest{CallerToken: "verifier", Token: "hvs.whatever", RequestID: "req", Source: broker.Source{IP: "192.0.2.9"}}
	if _, err := svc.Introspect(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	return svc, req
}

// TestRateLimitedWorkloadAuditBounded: a workload that keeps asking past
// its rate is answered 429 each time, but only the first of those 429s are
// audited on their own; one summary deny event names the workload and
// counts the rest, so a holder of a valid identity token cannot grow the
// audit log without bound. (Each 429 wrote a deny event of its own.)
func TestRateLimitedWorkloadAuditBounded(t *testing.T) {
	f := newFixture(t)
	svc, req := workloadAtRate(t, f)
	ctx := context.Background()
	const refused = 1000
	for i := range refused {
		if _, err := svc.Exchange(ctx, req); !errors.Is(err, broker.ErrRateLimited) || broker.AsError(err).RetryAfter <= 0 {
			t.Fatalf("request %d past the rate: %v, want 429 with Retry-After", i+1, err)
		}
	}
	svc.FlushRefusalSummaries(ctx, true)
	sum := checkIdentitySummary(t, f.sink.Events(), audit.TypeDeny, refused, f.now)
	if sum.Workload != "payments-api" || sum.Owner != "team-payments" || sum.Grant != "" {
		t.Errorf("summary names workload %q owner %q grant %q; want payments-api, team-payments, none", sum.Workload, sum.Owner, sum.Grant)
	}
}

// TestRateLimitedIntrospectionAuditBounded: the same for an introspection
// caller past its introspection limit: its 429s get an introspect event
// each up to a bound, then one summary introspect event naming the
// caller (iss, sub) counts the rest.
func TestRateLimitedIntrospectionAuditBounded(t *testing.T) {
	f := newFixture(t)
	// Trusted, but no workload matches it: its identity's bucket.
	svc, req := introspectorAtLimit(t, f, identity("system:serviceaccount:edge:verifier", nil), f.store)
	ctx := context.Background()
	const refused = 1000
	for i := range refused {
		if _, err := svc.Introspect(ctx, req); !errors.Is(err, broker.ErrRateLimited) {
			t.Fatalf("introspection %d past the limit: %v, want 429", i+1, err)
		}
	}
	svc.FlushRefusalSummaries(ctx, true)
	sum := checkIdentitySummary(t, f.sink.Events(), audit.TypeIntrospect, refused, f.now)
	if sum.Identity == nil || sum.Identity.Iss != "https://k8s.example" || sum.Identity.Sub != "system:serviceaccount:edge:verifier" || sum.Identity.JTI != "" {
		t.Errorf("summary identity %+v; want the caller's iss and sub, no jti", sum.Identity)
	}
}

// TestRateLimitedWorkloadSummaryCountsGrants: the summary of a workload's
// 429s, which stands for those of all its grants, exchanges and proxied
// requests alike, counts them by grant (details.grants) and by endpoint
// (details.endpoints: token, proxy).
func TestRateLimitedWorkloadSummaryCountsGrants(t *testing.T) {
	f := newFixture(t)
	svc, req := workloadAtRate(t, f)
	ctx := context.Background()
	const exchanges, proxied = 50, 30
	for i := range exchanges {
		if _, err := svc.Exchange(ctx, req); !errors.Is(err, broker.ErrRateLimited) {
			t.Fatalf("request %d past the rate: %v, want 429", i+1, err)
		}
	}
	wl, _ := f.pol.Workload("payments-api")
	for i := range proxied {
		err := svc.AllowProxy(wl)
		if !errors.Is(err, broker.ErrRateLimited) {
			t.Fatalf("proxied request %d past the rate: %v, want 429", i+1, err)
		}
		if write, _ := svc.AuditProxyRateLimited(ctx, wl, "payments-upstream", err); write {
			t.Fatalf("proxied request %d past the rate audited on its own; want it counted by the summary", i+1)
		}
	}
	svc.FlushRefusalSummaries(ctx, true)
	sum := checkIdentitySummary(t, f.sink.Events(), audit.TypeDeny, exchanges+proxied, f.now)
	wantGrants := map[string]int{"payments-vault": exchanges - perIdentity, "payments-upstream": proxied}
	wantEndpoints := map[string]int{"token": exchanges - perIdentity, "proxy": proxied}
	if g, _ := sum.Details["grants"].(map[string]int); !maps.Equal(g, wantGrants) {
		t.Errorf("summary details.grants %v, want %v", sum.Details["grants"], wantGrants)
	}
	if e, _ := sum.Details["endpoints"].(map[string]int); !maps.Equal(e, wantEndpoints) {
		t.Errorf("summary details.endpoints %v, want %v", sum.Details["endpoints"], wantEndpoints)
	}
}
