package broker_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/trace"
	"github.com/keytrail/keytrail/policies"
)

// refusedPolicy is chainPolicy's issuers and grants, payments-api allowed
// only handoff-jwt.
const refusedPolicy = `
version: 1
issuers:
  - name: k8s
    issuer: https://k8s.example
    jwks_url: https://k8s.example/jwks
    audiences: [keytrail]
    algorithms: [ES256]
workloads:
  - name: payments-api
    owner: team-payments
    match: {issuer: k8s, subject: system:serviceaccount:payments:api}
    grants: [handoff-jwt]
` + chainGrants

// TestExchangeAuthenticatedRefusalsBounded: a refusal of /v1/token after
// the subject authenticated (no workload, an unknown grant, a grant the
// workload is not allowed, a bad actor token, a may_act refusal, a blocked
// workload) wrote one durable deny event per request whatever the rate:
// any holder of a valid identity token made the broker write events as
// fast as it could send. They are now audited up to
// refusal_limit.per_identity per span per caller (its workload, else its
// identity), then answered the same refusal (not a 429: a client retries a 429) with
// no event, counted by the caller's summary by reason.
func TestExchangeAuthenticatedRefusalsBounded(t *testing.T) {
	const calls, perIdentity = 200, 20
	for _, tc := range []struct {
		name     string
		req      broker.ExchangeRequest
		reason   string
		workload string // the summary's ("": it names the identity)
		sub      string
		block    bool
	}{
		{name: "no_workload", req: broker.ExchangeRequest{SubjectToken: "stranger", Grant: "handoff-jwt"},
			reason: "no_workload", sub: "system:serviceaccount:other:x"},
		{name: "unknown_grant", req: broker.ExchangeRequest{SubjectToken: "payments", Grant: "nope"},
			reason: "unknown_grant", workload: "payments-api"},
		{name: "grant_not_allowed", req: broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"},
			reason: "grant_not_allowed", workload: "payments-api"},
		{name: "bad_actor", req: broker.ExchangeRequest{SubjectToken: "payments", ActorToken: "garbage", Grant: "handoff-jwt"},
			reason: "actor_bad_signature", workload: "payments-api"},
		{name: "actor_not_permitted", req: broker.ExchangeRequest{SubjectToken: "picky", ActorToken: "user", Grant: "handoff-jwt"},
			reason: "actor_not_permitted", workload: "payments-api"},
		{name: "subject_not_permitted", req: broker.ExchangeRequest{SubjectToken: "payments", ActorToken: "choosy-user", Grant: "handoff-jwt"},
			reason: "subject_not_permitted", workload: "payments-api"},
		{name: "workload_blocked", req: broker.ExchangeRequest{SubjectToken: "payments", Grant: "handoff-jwt"},
			reason: "workload_blocked", workload: "payments-api", block: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc, sink := refusedService(t, &broker.RefusalLimits{PerIdentity: perIdentity})
			ctx := context.Background()
			if tc.block {
				if _, err := svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "compromised", broker.RevokeOptions{Block: true}, "req_b"); err != nil {
					t.Fatal(err)
				}
			}
			before := len(sink.Events())
			got := countRefusals(t, svc, sink, before, calls, func() error {
				_, err := svc.Exchange(ctx, tc.req)
				return err
			})
			if got.events != perIdentity || got.unaudited != calls-perIdentity || got.suppressed != calls-perIdentity {
				t.Fatalf("%d exchanges refused %s: %d events, %d answered unaudited, %d in summaries; want %d, %d, %d",
					calls, tc.reason, got.events, got.unaudited, got.suppressed, perIdentity, calls-perIdentity, calls-perIdentity)
			}
			for _, ev := range sink.Events()[before : before+perIdentity] {
				if ev.Type != audit.TypeDeny || ev.Outcome == nil || ev.Outcome.Reason != tc.reason {
					t.Fatalf("audited refusal = %+v, want a deny %s", ev, tc.reason)
				}
			}
			s := got.summary
			if s == nil || s.Type != audit.TypeDeny || s.Outcome == nil || s.Outcome.Status != 429 || s.Outcome.Reason != broker.ReasonRateLimited ||
				s.Workload != tc.workload || fmt.Sprint(s.Details["reasons"]) != fmt.Sprintf("map[%s:%d]", tc.reason, calls-perIdentity) {
				t.Fatalf("summary = %+v, want a deny 429 rate_limited of workload %q counting %d %s", s, tc.workload, calls-perIdentity, tc.reason)
			}
			if tc.workload == "" && (s.Identity == nil || s.Identity.Sub != tc.sub || s.Identity.JTI != "") {
				t.Errorf("summary identity = %+v, want sub %s, no jti", s.Identity, tc.sub)
			}
			if tc.block {
				return
			}
			// The caller's live exchanges are untouched (no rate: never
			// limited), each audited.
			before = len(sink.Events())
			if _, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "handoff-jwt"}); err != nil {
				t.Fatalf("live exchange after the refusals = %v", err)
			}
			if evs := sink.Events()[before:]; len(evs) != 1 || evs[0].Type != audit.TypeIssue {
				t.Errorf("live exchange wrote %d events, want its issue event", len(evs))
			}
		})
	}

	// Without an identity guard (per_identity -1) every refusal is
	// audited, as before.
	svc, sink := refusedService(t, &broker.RefusalLimits{PerIdentity: -1})
	got := countRefusals(t, svc, sink, len(sink.Events()), calls, func() error {
		_, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "nope"})
		return err
	})
	if got.events != calls || got.unaudited != 0 {
		t.Errorf("per_identity -1: %d events, %d unaudited of %d refusals; want every one audited", got.events, got.unaudited, calls)
	}
}

// refusedService is a Service over refusedPolicy with limits, whose
// tokens are payments (payments-api), picky (payments-api, its may_act
// naming only another party), stranger (no workload), user (an actor),
// choosy-user (an actor whose may_act names another workload) and
// late-user (an actor whose token has no time left: actor_token_expired).
func refusedService(t *testing.T, limits *broker.RefusalLimits) (*broker.Service, *brokertest.Sink) {
	t.Helper()
	pol, err := policies.Parse("refused.yaml", []byte(refusedPolicy))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	minter := &brokertest.Minter{}
	user := identity("user-1", nil)
	user.Expiry = now.Add(time.Hour)
	choosy := identity("user-2", map[string]any{"may_act": map[string]any{"sub": "system:serviceaccount:other:agent"}})
	choosy.Expiry = now.Add(time.Hour)
	late := identity("user-3", nil)
	late.Expiry = now // verified, but no time left to grant: actor_token_expired
	authn := brokertest.Authn{
		"payments": identity("system:serviceaccount:payments:api", nil),
		"picky":    identity("system:serviceaccount:payments:api", map[string]any{"may_act": map[string]any{"sub": "someone-else"}}),
		"stranger": identity("system:serviceaccount:other:x", nil),
		"user":     user, "choosy-user": choosy, "late-user": late,
	}
	sink := &brokertest.Sink{}
	svc, err := broker.NewService(broker.Deps{
		Policy:        func() *policies.Policy { return pol },
		Authn:         func() broker.Authenticator { return authn },
		Minters:       map[string]broker.Minter{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Revokers:      map[string]broker.Revoker{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Store:         memstore.New(clock),
		Audit:         sink,
		Now:           clock,
		RefusalLimits: limits,
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc, sink
}

// reportOf is keytrail report over the events sink holds, read back from
// JSON as an offline report reads them, stamped chain chn_a, seq in order
// and svc's time, as of a minute later.
func reportOf(t *testing.T, svc *broker.Service, sink *brokertest.Sink) *trace.Report {
	t.Helper()
	var evs []*audit.Event
	for i, ev := range sink.Events() {
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		var back audit.Event
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		back.Chain, back.Seq = "chn_a", uint64(i+1)
		back.Time = svc.Now().Format(time.RFC3339Nano)
		evs = append(evs, &back)
	}
	rep, err := trace.BuildReport(trace.ReportInput{Now: svc.Now().Add(time.Minute), Events: evs})
	if err != nil {
		t.Fatal(err)
	}
	return rep
}
