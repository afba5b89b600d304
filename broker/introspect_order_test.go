package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// TestIntrospectLimitBeforeStoreAndDenies: the caller's introspection limit
// is applied right after it authenticated, before the store reads that
// check whether its identity token is a revoked broker credential (up to
// two FindIssuance per request for a token whose jti looks like a broker
// issuance id) and before the missing_token refusal, a durable event
// each. Otherwise a caller past its limit (a holder of a revoked broker
// JWT among them) made two store reads, or wrote one deny event, per
// request however fast it sent them.
func TestIntrospectLimitBeforeStoreAndDenies(t *testing.T) {
	f := newFixture(t)
	// Trusted, no workload matches it: its identity's bucket. Its jti has
	// the broker's issuance prefix, found in no issuance.
	id := identity("system:serviceaccount:edge:verifier", nil)
	id.JTI = broker.PrefixIssuance + "01JNOTINTHESTORE"
	store := &countingStore{Store: f.store}
	svc, req := introspectorAtLimit(t, f, id, store)
	ctx := context.Background()
	first := store.finds.Load() // the caller token's two lookups, the credential's
	const n = 200
	not429 := 0
	for i := range n {
		r := req
		if i%2 == 0 {
			r.Token = "" // missing_token
		}
		if _, err := svc.Introspect(ctx, r); !errors.Is(err, broker.ErrRateLimited) {
			if not429 == 0 {
				t.Errorf("introspection %d past the limit (token %q): %v, want 429", i+1, r.Token, err)
			}
			not429++
		}
	}
	if not429 > 0 {
		t.Errorf("%d of %d introspections past the limit not answered 429", not429, n)
	}
	if got := store.finds.Load() - first; got != 0 {
		t.Errorf("%d introspections past the caller's limit made %d store reads, want none", n, got)
	}
	missing := 0
	for _, ev := range f.sink.Events() {
		if ev.Type == audit.TypeIntrospect && ev.Outcome != nil && ev.Outcome.Reason == "missing_token" {
			missing++
		}
	}
	if missing != 0 {
		t.Errorf("%d missing_token events past the caller's limit, want none (its 429s are bounded by refusal_limit.per_identity)", missing)
	}
}

// TestIntrospectMissingTokenWithinLimit: within its limit, a caller that
// sends no token is still refused 400 missing_token with an event.
func TestIntrospectMissingTokenWithinLimit(t *testing.T) {
	f := newFixture(t)
	f.authn["verifier"] = identity("system:serviceaccount:edge:verifier", nil)
	svc := introspectionService(t, f, f.store, nil)
	_, err := svc.Introspect(context.Background(), broker.IntrospectRequest{CallerToken: "verifier", RequestID: "req"})
	if !errors.Is(err, broker.ErrInvalidRequest) || broker.AsError(err).Reason != "missing_token" {
		t.Fatalf("Introspect without token = %v, want invalid_request (missing_token)", err)
	}
	evs := f.sink.Events()
	if len(evs) != 1 || evs[0].Type != audit.TypeIntrospect || evs[0].Outcome == nil || evs[0].Outcome.Reason != "missing_token" {
		t.Fatalf("events %+v, want one introspect event, reason missing_token", evs)
	}
}

// TestIntrospectRevokedCallerKeepsWorkloadBucket: the holder of a revoked
// broker JWT, refused 401 credential_revoked and then 429, does not empty
// the introspection bucket that the workload's live broker JWTs share
// (they match the same workload): its requests take from a bucket of the
// token's own before the store says it is revoked. Otherwise, after the
// revocation of a leaked JWT, its holder could get every introspection of
// the workload's live credentials refused 429 until the JWT expired.
func TestIntrospectRevokedCallerKeepsWorkloadBucket(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now } // fixed: no bucket refills
	self, policy := selfSigned(t)
	// payments-agent, the workload broker JWTs of payments-api match,
	// introspects from a bucket of one.
	const agent = "    match: {issuer: keytrail, subject: payments-api}\n"
	if !strings.Contains(policy, agent) {
		t.Fatal("chainPolicy has no payments-agent match")
	}
	policy = strings.Replace(policy, agent, agent+"    rate: {per_second: 1, burst: 1}\n", 1)
	pol, err := policies.Parse("revoked.yaml", []byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	svc := twinService(t, self, pol, clock, func(d *broker.Deps) {
		d.RefusalLimits = &broker.RefusalLimits{}
		d.IntrospectLimits = broker.IntrospectLimits{PerSecond: 1, Burst: 1}
	})
	ctx := context.Background()
	leaked, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "handoff-jwt"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: leaked.Issuance.ID}, "jwt leaked", broker.RevokeOptions{}, "req_r"); err != nil {
		t.Fatal(err)
	}
	live, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "handoff-jwt"})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		_, err := svc.Introspect(ctx, broker.IntrospectRequest{CallerToken: leaked.AccessToken, Token: "whatever", RequestID: "req_leaked"})
		switch reason := broker.AsError(err).Reason; {
		case i == 0 && reason != "credential_revoked":
			t.Fatalf("Introspect(caller: the revoked JWT) = %v, want invalid_token (credential_revoked)", err)
		case i > 0 && !errors.Is(err, broker.ErrRateLimited):
			t.Fatalf("Introspect(caller: the revoked JWT) again (%d) = %v, want 429 (its own bucket empty)", i, err)
		}
	}
	if _, err := svc.Introspect(ctx, broker.IntrospectRequest{CallerToken: live.AccessToken, Token: "whatever", RequestID: "req_live"}); err != nil {
		t.Errorf("Introspect(caller: a live JWT of the same workload) after the revoked JWT's requests = %v, want an answer (the revoked JWT's holder emptied its workload's bucket)", err)
	}
	// The live JWT's bucket is its workload's: one, taken.
	if _, err := svc.Introspect(ctx, broker.IntrospectRequest{CallerToken: live.AccessToken, Token: "whatever", RequestID: "req_live"}); !errors.Is(err, broker.ErrRateLimited) {
		t.Errorf("Introspect(caller: the live JWT) again = %v, want 429 (its workload's bucket of one)", err)
	}
}
