package broker

import (
	"errors"
	"testing"
	"time"

	"github.com/keytrail/keytrail/policies"
)

func spiffePolicy(t *testing.T, rate string) *policies.Policy {
	t.Helper()
	pol, err := policies.Parse("spiffe.yaml", []byte(`
version: 1
issuers:
  - name: spire-a
    issuer: spiffe://a.example
    jwks_url: https://spire-a.example/keys
    audiences: [keytrail]
    algorithms: [ES256]
  - name: spire-b
    issuer: spiffe://b.example
    jwks_url: https://spire-b.example/keys
    audiences: [keytrail]
    algorithms: [ES256]
admins:
  - name: secops
    match: {issuer: spire-a, subject: spiffe://a.example/secops}
    roles: [trace]
workloads:
  - name: api
    owner: team
    match: {issuer: spire-a, subject: spiffe://a.example/api}
`+rate+`
    grants: [g]
grants:
  - name: g
    kind: vault_token
    ttl: 15m
    vault_token: {policies: [p]}
`))
	if err != nil {
		t.Fatal(err)
	}
	return pol
}

// svid is the identity authn makes of a JWT-SVID without iss: Iss is its
// trust domain issuer's, the claims have no iss.
func svid(name, td, sub string) *Identity {
	return &Identity{IssuerName: name, Iss: "spiffe://" + td, Sub: sub, Claims: map[string]any{"sub": sub}}
}

func TestIntrospectLimitSPIFFEWithoutIss(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	s := &Service{d: Deps{Now: func() time.Time { return now }}}
	s.introspectLim = IntrospectLimits{PerSecond: 0.25, Burst: 1, MaxCallers: 10}.withDefaults()
	s.introspectCallers.max = 10
	pol := spiffePolicy(t, "    rate: {per_second: 0.5, burst: 2}")
	lim := func(pol *policies.Policy, id *Identity) bool {
		_, err := s.allowIntrospect(pol, id)
		return errors.Is(err, ErrRateLimited)
	}

	// Same path in two trust domains: two identities, two buckets.
	a, b := svid("spire-a", "a.example", "spiffe://a.example/rs"), svid("spire-b", "b.example", "spiffe://b.example/rs")
	if lim(pol, a) || !lim(pol, a) {
		t.Fatal("a's burst of 1 not applied")
	}
	if lim(pol, b) {
		t.Error("b limited by a's bucket")
	}
	// The admin is not limited; the workload takes from its rate's bucket.
	for i := 0; i < 50; i++ {
		if lim(pol, svid("spire-a", "a.example", "spiffe://a.example/secops")) {
			t.Fatal("admin limited")
		}
	}
	wl := svid("spire-a", "a.example", "spiffe://a.example/api")
	if lim(pol, wl) || lim(pol, wl) || !lim(pol, wl) {
		t.Fatal("workload's burst of 2 not applied")
	}
	// A reload raising the workload's rate applies to its bucket.
	pol2 := spiffePolicy(t, "    rate: {per_second: 1, burst: 5}")
	for i := 0; i < 5; i++ {
		if lim(pol2, wl) {
			t.Fatalf("introspection %d after the reload to burst 5 limited", i+1)
		}
	}
	if !lim(pol2, wl) {
		t.Error("6th after reload to burst 5 not limited")
	}
	// ...and one removing it lifts the limit.
	pol3 := spiffePolicy(t, "")
	for i := 0; i < 20; i++ {
		if lim(pol3, wl) {
			t.Fatal("limited with no rate")
		}
	}
	if n := len(s.introspectCallers.m); n != 2 {
		t.Errorf("identities tracked = %d, want 2 (the workload and admin take none)", n)
	}
}
