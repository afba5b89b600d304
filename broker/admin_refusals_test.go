package broker_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// findCountingStore counts the issuance lookups (checkBrokerToken's reads).
type findCountingStore struct {
	broker.Store
	finds atomic.Int64
}

func (c *findCountingStore) FindIssuance(ctx context.Context, k broker.RefKind, v string) (*broker.Issuance, error) {
	c.finds.Add(1)
	return c.Store.FindIssuance(ctx, k, v)
}

// refusalCalls is what calls refusals made: their audit events (apart from
// the summaries), the summaries' suppressed count, and the calls answered
// with no event of their own (scope identity).
type refusalCalls struct {
	events, suppressed, unaudited int
	summary                       *audit.Event
}

// answerOf is what a caller is answered for the refusal e: its status,
// error code, reason and description.
func answerOf(e *broker.Error) string {
	return fmt.Sprintf("%d %s %s %q", broker.StatusOf(e), broker.CodeOf(e), e.Reason, e.Safe)
}

// countRefusals makes calls refused calls and counts them (refusalCalls).
// A call answered with no event of its own must be answered as the
// audited ones were: the same refusal (answerOf), no Retry-After unless it
// is a 429 (a caller's own 429s past its limit), never a 429 for a refusal
// that was none (a client retries a 429; the refusal is permanent).
func countRefusals(t *testing.T, svc *broker.Service, sink interface{ Events() []*audit.Event }, before, calls int, call func() error) refusalCalls {
	t.Helper()
	return countRefusalsAnswered(t, svc, sink, before, calls, "", call)
}

// countRefusalsAnswered is countRefusals where the calls with no event of
// their own are answered want (answerOf) rather than as the audited ones
// were ("": as they were).
func countRefusalsAnswered(t *testing.T, svc *broker.Service, sink interface{ Events() []*audit.Event }, before, calls int, want string, call func() error) refusalCalls {
	t.Helper()
	var r refusalCalls
	asAudited := want == ""
	for range calls {
		err := call()
		if err == nil {
			t.Fatal("a refused call succeeded")
		}
		e := broker.AsError(err)
		if broker.SuppressedScope(err) != broker.RefusalScopeIdentity {
			if asAudited {
				want = answerOf(e)
			}
			continue
		}
		if got := answerOf(e); got != want || e.RetryAfter > 0 && !errors.Is(err, broker.ErrRateLimited) {
			t.Fatalf("unaudited refusal = %v, answered %s; want %s (the refusal itself, not a 429)", err, got, want)
		}
		r.unaudited++
	}
	svc.FlushRefusalSummaries(context.Background(), true)
	for _, ev := range sink.Events()[before:] {
		if ev.Details["scope"] == broker.RefusalScopeIdentity {
			n, _ := ev.Details["suppressed"].(int)
			r.suppressed += n
			r.summary = ev
			continue
		}
		r.events++
	}
	return r
}

// TestNonAdminAdminCallsBounded: an authenticated caller that is no admin
// is refused every admin call (not_admin, or credential_revoked for a
// revoked broker JWT), each with a durable admin event; unbounded, any
// holder of a valid identity token grew the audit log by one event per
// request (and, for a broker JWT, paid store reads per request). Its
// refusals are audited up to refusal_limit.per_identity per span, then
// answered the same refusal (not_admin) with no event and no store read,
// counted by one admin summary per caller (details scope identity,
// suppressed, caller, actions). An admin is never limited, refused or not.
func TestNonAdminAdminCallsBounded(t *testing.T) {
	const calls, perIdentity = 1000, 20
	store := &findCountingStore{}
	svc, sink, handoff := chainServiceWith(t, chainPolicy+`
admins:
  - name: payments-oncall
    match: {issuer: k8s, subject: system:serviceaccount:payments:api}
    roles: [trace]
`, &broker.RefusalLimits{PerIdentity: perIdentity}, func(s broker.Store) broker.Store { store.Store = s; return store })
	ctx, jwtTok := context.Background(), handoff.AccessToken
	if _, err := svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: handoff.Issuance.ID}, "jwt leaked", broker.RevokeOptions{}, "req_r"); err != nil {
		t.Fatal(err)
	}
	admin := func(tok, role string) func() error {
		return func() error {
			_, err := svc.AuthorizeAdmin(ctx, broker.AdminRequest{Token: tok, Role: role, Action: "list_blocks"})
			return err
		}
	}

	// The revoked broker JWT of payments-agent, no admin.
	before, finds := len(sink.Events()), store.finds.Load()
	// Past its limit it is answered 403 not_admin, with no store read: a
	// refusal it would get as well with a live token (it is no admin),
	// not the credential_revoked that reading the store tells.
	got := countRefusalsAnswered(t, svc, sink, before, calls, `403 access_denied not_admin "this identity is not an admin"`, admin(jwtTok, broker.RoleRevoke))
	reads := store.finds.Load() - finds
	if got.events != perIdentity || got.unaudited != calls-perIdentity || got.suppressed != calls-perIdentity || reads != perIdentity {
		t.Errorf("%d admin calls with a revoked broker JWT: %d events, %d answered unaudited, %d in summaries, %d store reads; want %d, %d, %d, %d",
			calls, got.events, got.unaudited, got.suppressed, reads, perIdentity, calls-perIdentity, calls-perIdentity, perIdentity)
	}
	for _, ev := range sink.Events()[before : before+perIdentity] {
		if ev.Type != audit.TypeAdmin || ev.Outcome == nil || ev.Outcome.Reason != "credential_revoked" {
			t.Fatalf("audited refusal = %+v, want an admin event credential_revoked", ev)
		}
	}
	if s := got.summary; s == nil || s.Type != audit.TypeAdmin || s.Outcome == nil || s.Outcome.Status != 429 || s.Outcome.Reason != broker.ReasonRateLimited ||
		s.Identity == nil || s.Identity.Sub != "payments-api" || s.Identity.JTI != "" || s.Admin != "" ||
		fmt.Sprint(s.Details["actions"]) != fmt.Sprintf("map[list_blocks:%d]", calls-perIdentity) {
		t.Errorf("summary = %+v, want an admin event 429 rate_limited naming iss and sub (no jti, no admin) and its actions", s)
	}

	// An admin (payments-oncall, trace only) asking for revoke: refused
	// missing_role each time, every one audited.
	before = len(sink.Events())
	got = countRefusals(t, svc, sink, before, calls, admin("payments", broker.RoleRevoke))
	if got.events != calls || got.unaudited != 0 || got.suppressed != 0 {
		t.Errorf("%d admin calls of an admin lacking the role: %d events, %d unaudited; want every one audited", calls, got.events, got.unaudited)
	}
	if _, err := svc.AuthorizeAdmin(ctx, broker.AdminRequest{Token: "payments", Role: broker.RoleTrace, Action: "trace"}); err != nil {
		t.Errorf("admin call of the admin with its role = %v, want ok", err)
	}
}

// TestNonAdminNotAdminBounded: a workload's valid identity token on the
// admin API, refused not_admin, is audited up to per_identity, then
// answered the same with no event; the call after the last flush is
// audited on its own.
func TestNonAdminNotAdminBounded(t *testing.T) {
	const calls, perIdentity = 1000, 20
	svc, sink, _ := chainServiceWith(t, chainPolicy+`
admins:
  - name: secops
    match: {issuer: k8s, subject: system:serviceaccount:secops:cli}
    roles: [revoke]
`, &broker.RefusalLimits{PerIdentity: perIdentity}, nil)
	ctx := context.Background()
	call := func() error {
		_, err := svc.AuthorizeAdmin(ctx, broker.AdminRequest{Token: "payments", Role: broker.RoleRevoke, Action: "revoke"})
		return err
	}
	before := len(sink.Events())
	got := countRefusals(t, svc, sink, before, calls, call)
	if got.events != perIdentity || got.unaudited != calls-perIdentity || got.suppressed != calls-perIdentity {
		t.Errorf("%d not_admin calls: %d events, %d answered unaudited, %d in summaries; want %d, %d, %d",
			calls, got.events, got.unaudited, got.suppressed, perIdentity, calls-perIdentity, calls-perIdentity)
	}
	for _, ev := range sink.Events()[before : before+perIdentity] {
		if ev.Type != audit.TypeAdmin || ev.Outcome == nil || ev.Outcome.Status != 403 || ev.Outcome.Reason != "not_admin" {
			t.Fatalf("audited refusal = %+v, want an admin event 403 not_admin", ev)
		}
	}
}

// TestRevokedCallerTokenIntrospectionBounded: a workload without a rate is
// not limited on /v1/introspect, but its revoked broker JWT as caller
// token is refused: audited up to per_identity per span, then answered
// the same with no event, counted by the summary of its workload's
// introspections (reasons credential_revoked).
func TestRevokedCallerTokenIntrospectionBounded(t *testing.T) {
	const calls, perIdentity = 1000, 20
	svc, sink, handoff := chainServiceWith(t, chainPolicy, &broker.RefusalLimits{PerIdentity: perIdentity}, nil)
	ctx, jwtTok := context.Background(), handoff.AccessToken
	if _, err := svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: handoff.Issuance.ID}, "jwt leaked", broker.RevokeOptions{}, "req_r"); err != nil {
		t.Fatal(err)
	}
	call := func() error {
		_, err := svc.Introspect(ctx, broker.IntrospectRequest{CallerToken: jwtTok, Token: "whatever"})
		return err
	}
	before := len(sink.Events())
	got := countRefusals(t, svc, sink, before, calls, call)
	if got.events != perIdentity || got.unaudited != calls-perIdentity || got.suppressed != calls-perIdentity {
		t.Errorf("%d introspections with a revoked caller token: %d events, %d answered unaudited, %d in summaries; want %d, %d, %d",
			calls, got.events, got.unaudited, got.suppressed, perIdentity, calls-perIdentity, calls-perIdentity)
	}
	if s := got.summary; s == nil || s.Type != audit.TypeIntrospect ||
		fmt.Sprint(s.Details["caller"], s.Details["reasons"]) != fmt.Sprintf("map[workload:payments-agent] map[credential_revoked:%d]", calls-perIdentity) {
		t.Errorf("summary = %+v, want an introspect summary of payments-agent's credential_revoked refusals", s)
	}
	// The outside token of the same workload is still answered.
	if _, err := svc.Introspect(ctx, broker.IntrospectRequest{CallerToken: "lookalike", Token: "whatever"}); err != nil {
		t.Errorf("introspection with an active caller token = %v, want ok", err)
	}
}

// TestRevokedAdminBrokerJWTBounded: where policy makes a broker JWT's
// identity an admin, the JWT once revoked is no admin's credential any
// more, but "admins are never limited" let its holder write one durable
// event (credential_revoked) per admin call and per introspection, without
// bound. Its refusals are now audited up to per_identity per span, then
// answered the same with no event, counted by a summary of its identity; a live
// admin of the same identity is not limited.
func TestRevokedAdminBrokerJWTBounded(t *testing.T) {
	const calls, perIdentity = 1000, 20
	svc, sink, handoff := chainServiceWith(t, chainPolicy+`
admins:
  - name: agents
    match: {issuer: keytrail, subject: payments-api}
    roles: [trace]
`, &broker.RefusalLimits{PerIdentity: perIdentity}, nil)
	ctx, jwtTok := context.Background(), handoff.AccessToken
	if _, err := svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: handoff.Issuance.ID}, "jwt leaked", broker.RevokeOptions{}, "req_r"); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		typ  string
		call func(tok string) error
	}{
		{name: "admin", typ: audit.TypeAdmin, call: func(tok string) error {
			_, err := svc.AuthorizeAdmin(ctx, broker.AdminRequest{Token: tok, Role: broker.RoleTrace, Action: "trace"})
			return err
		}},
		{name: "introspect", typ: audit.TypeIntrospect, call: func(tok string) error {
			_, err := svc.Introspect(ctx, broker.IntrospectRequest{CallerToken: tok, Token: "whatever"})
			return err
		}},
	} {
		before := len(sink.Events())
		got := countRefusals(t, svc, sink, before, calls, func() error { return tc.call(jwtTok) })
		if got.events != perIdentity || got.unaudited != calls-perIdentity || got.suppressed != calls-perIdentity {
			t.Errorf("%s: %d calls with a revoked broker JWT of an admin identity: %d events, %d answered unaudited, %d in summaries; want %d, %d, %d",
				tc.name, calls, got.events, got.unaudited, got.suppressed, perIdentity, calls-perIdentity, calls-perIdentity)
		}
		if s := got.summary; s == nil || s.Type != tc.typ || s.Identity == nil || s.Identity.Sub != "payments-api" || s.Identity.JTI != "" ||
			fmt.Sprint(s.Details["reasons"]) != fmt.Sprintf("map[credential_revoked:%d]", calls-perIdentity) {
			t.Errorf("%s: summary = %+v, want a %s summary of payments-api's credential_revoked refusals (no jti)", tc.name, s, tc.typ)
		}
		// The live admin of the same identity ("lookalike": an outside
		// token of keytrail, sub payments-api) is not limited.
		for i := range 3 {
			if err := tc.call("lookalike"); err != nil {
				t.Fatalf("%s: call %d of the live admin token = %v, want ok", tc.name, i, err)
			}
		}
	}
}
