package broker_test

import (
	"context"
	"errors"
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
	f.authn["verifier"] = id
	store := &countingStore{Store: f.store}
	svc, err := broker.NewService(broker.Deps{
		Policy:           func() *policies.Policy { return f.pol },
		Authn:            func() broker.Authenticator { return f.authn },
		Store:            store,
		Audit:            f.sink,
		Now:              func() time.Time { return f.now },
		RefusalLimits:    &broker.RefusalLimits{},
		IntrospectLimits: broker.IntrospectLimits{PerSecond: 1, Burst: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	req := broker.IntrospectRequest{CallerToken: "verifier", Token: "hvs.whatever", RequestID: "req", Source: broker.Source{IP: "192.0.2.9"}}
	if _, err := svc.Introspect(ctx, req); err != nil {
		t.Fatal(err)
	}
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
	svc, err := broker.NewService(broker.Deps{
		Policy:           func() *policies.Policy { return f.pol },
		Authn:            func() broker.Authenticator { return f.authn },
		Store:            f.store,
		Audit:            f.sink,
		Now:              func() time.Time { return f.now },
		IntrospectLimits: broker.IntrospectLimits{PerSecond: 1, Burst: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = svc.Introspect(context.Background(), broker.IntrospectRequest{CallerToken: "verifier", RequestID: "req"})
	if !errors.Is(err, broker.ErrInvalidRequest) || broker.AsError(err).Reason != "missing_token" {
		t.Fatalf("Introspect without token = %v, want invalid_request (missing_token)", err)
	}
	evs := f.sink.Events()
	if len(evs) != 1 || evs[0].Type != audit.TypeIntrospect || evs[0].Outcome == nil || evs[0].Outcome.Reason != "missing_token" {
		t.Fatalf("events %+v, want one introspect event, reason missing_token", evs)
	}
}
