package broker_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

const testPolicy = `
version: 1
issuers:
  - name: k8s
    issuer: https://k8s.example
    jwks_url: https://k8s.example/jwks
    audiences: [keytrail]
    algorithms: [ES256]
    session_claim: kubernetes.io.pod.uid
workloads:
  - name: payments-api
    owner: team-payments
    match:
      issuer: k8s
      subject: system:serviceaccount:payments:api
      claims: {kubernetes.io.namespace: payments}
    grants: [payments-vault]
    rate: {per_second: 1, burst: 2}
  - name: batch
    owner: team-data
    match: {issuer: k8s, subject: system:serviceaccount:data:batch}
    grants: [payments-vault]
grants:
  - name: payments-vault
    kind: vault_token
    ttl: 15m
    vault_token: {policies: [payments-read]}
  - name: orders-jwt
    kind: jwt
    ttl: 5m
    jwt: {audience: orders, transit_key: k}
`

type fixture struct {
	svc    *broker.Service
	minter *brokertest.Minter
	sink   *brokertest.Sink
	store  *memstore.Store
	now    time.Time
	pol    *policies.Policy
	authn  brokertest.Authn
}

func identity(sub string, claims map[string]any) *broker.Identity {
	c := map[string]any{"sub": sub, "iss": "https://k8s.example"}
	for k, v := range claims {
		c[k] = v
	}
	return &broker.Identity{IssuerName: "k8s", Iss: "https://k8s.example", Sub: sub, JTI: "tok-1", Claims: c}
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	pol, err := policies.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	f := &fixture{minter: &brokertest.Minter{}, sink: &brokertest.Sink{}, now: now}
	f.store = memstore.New(func() time.Time { return f.now })
	authn := brokertest.Authn{
		"payments": identity("system:serviceaccount:payments:api", map[string]any{
			"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}},
		}),
		"payments-other-ns": identity("system:serviceaccount:payments:api", map[string]any{
			"kubernetes.io": map[string]any{"namespace": "default"},
		}),
		"batch": identity("system:serviceaccount:data:batch", nil),
	}
	f.pol, f.authn = pol, authn
	f.svc = f.serviceWith(t, f.store, f.sink)
	return f
}

// adminPolicy is testPolicy with the payments workload's account (token
// "payments") an admin with the revoke role.
func adminPolicy(t *testing.T) *policies.Policy {
	t.Helper()
	pol, err := policies.Parse("a.yaml", []byte(testPolicy+`
admins:
  - name: secops
    match: {issuer: k8s, subject: system:serviceaccount:payments:api}
    roles: [revoke]
`))
	if err != nil {
		t.Fatal(err)
	}
	return pol
}

// serviceWith is the fixture's Service over another store or sink.
func (f *fixture) serviceWith(t *testing.T, st broker.Store, sink broker.AuditSink) *broker.Service {
	t.Helper()
	svc, err := broker.NewService(broker.Deps{
		Policy:     func() *policies.Policy { return f.pol },
		Authn:      func() broker.Authenticator { return f.authn },
		Minters:    map[string]broker.Minter{broker.KindVaultToken: f.minter},
		Revokers:   map[string]broker.Revoker{broker.KindVaultToken: f.minter},
		Store:      st,
		Audit:      sink,
		AuditChain: "chn_fixture",
		Now:        func() time.Time { return f.now },
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func TestExchange(t *testing.T) {
	tests := []struct {
		name       string
		req        broker.ExchangeRequest
		wantKind   error
		wantReason string
		wantGrant  string // the deny event's grant: only a grant policy knows
	}{
		{name: "ok/vault-token", req: broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"}},
		{name: "ok/shorter-ttl", req: broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", TTL: time.Minute}},
		{name: "fail/missing-token", req: broker.ExchangeRequest{Grant: "payments-vault"}, wantKind: broker.ErrInvalidRequest, wantReason: "missing_subject_token", wantGrant: "payments-vault"},
		{name: "fail/missing-grant", req: broker.ExchangeRequest{SubjectToken: "payments"}, wantKind: broker.ErrInvalidRequest, wantReason: "missing_audience"},
		{name: "fail/bad-token", req: broker.ExchangeRequest{SubjectToken: "forged", Grant: "payments-vault"}, wantKind: broker.ErrUnauthenticated, wantReason: "bad_signature", wantGrant: "payments-vault"},
		// An unauthenticated caller's free text stays out of the audit log.
		{name: "fail/bad-token-unknown-grant", req: broker.ExchangeRequest{SubjectToken: "forged", Grant: strings.Repeat("A", 60000)}, wantKind: broker.ErrUnauthenticated, wantReason: "bad_signature"},
		{name: "fail/no-workload", req: broker.ExchangeRequest{SubjectToken: "payments-other-ns", Grant: "payments-vault"}, wantKind: broker.ErrDenied, wantReason: "no_workload", wantGrant: "payments-vault"},
		{name: "fail/unknown-grant", req: broker.ExchangeRequest{SubjectToken: "payments", Grant: "nope"}, wantKind: broker.ErrInvalidTarget, wantReason: "unknown_grant"},
		{name: "fail/grant-not-allowed", req: broker.ExchangeRequest{SubjectToken: "payments", Grant: "orders-jwt"}, wantKind: broker.ErrDenied, wantReason: "grant_not_allowed", wantGrant: "orders-jwt"},
		{name: "fail/bad-actor", req: broker.ExchangeRequest{SubjectToken: "payments", ActorToken: "forged", Grant: "payments-vault"}, wantKind: broker.ErrUnauthenticated, wantReason: "actor_bad_signature", wantGrant: "payments-vault"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			res, err := f.svc.Exchange(context.Background(), tt.req)
			if tt.wantKind != nil {
				if !errors.Is(err, tt.wantKind) {
					t.Fatalf("Exchange() error = %v, want %v", err, tt.wantKind)
				}
				if got := broker.AsError(err).Reason; got != tt.wantReason {
					t.Errorf("Exchange() reason = %q, want %q", got, tt.wantReason)
				}
				if diff := cmp.Diff([]string{"deny"}, f.sink.Types()); diff != "" {
					t.Errorf("audit events (-want +got):\n%s", diff)
				} else if g := f.sink.Events()[0].Grant; g != tt.wantGrant {
					t.Errorf("deny event grant = %.40q (%d bytes), want %q", g, len(g), tt.wantGrant)
				}
				if len(f.minter.Reqs) != 0 {
					t.Errorf("minter called %d times on a denied request", len(f.minter.Reqs))
				}
				return
			}
			if err != nil {
				t.Fatalf("Exchange() error = %v", err)
			}
			is := res.Issuance
			if !strings.HasPrefix(is.ID, "iss_") || !strings.HasPrefix(is.SessionID, "ses_") {
				t.Errorf("ids = %q, %q; want iss_ and ses_ prefixes", is.ID, is.SessionID)
			}
			wantTTL := 15 * time.Minute
			if tt.req.TTL > 0 {
				wantTTL = tt.req.TTL
			}
			if got := f.minter.Reqs[0].TTL; got != wantTTL {
				t.Errorf("mint TTL = %v, want %v", got, wantTTL)
			}
			if res.ExpiresIn != int64(wantTTL/time.Second) {
				t.Errorf("ExpiresIn = %d, want %d", res.ExpiresIn, int64(wantTTL/time.Second))
			}
			got := map[string]string{"workload": is.Workload, "owner": is.Owner, "grant": is.Grant, "kind": is.Kind, "fp": is.Refs.Fingerprint, "chain": is.AuditChain}
			want := map[string]string{"workload": "payments-api", "owner": "team-payments", "grant": "payments-vault", "kind": "vault_token", "fp": broker.Fingerprint(res.AccessToken), "chain": "chn_fixture"}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("issuance (-want +got):\n%s", diff)
			}
			stored, err := f.store.FindIssuance(context.Background(), broker.RefFingerprint, broker.Fingerprint(res.AccessToken))
			if err != nil || stored.ID != is.ID || stored.AuditChain != "chn_fixture" {
				t.Errorf("FindIssuance(fingerprint) = %+v, %v; want %s recorded with audit chain chn_fixture", stored, err, is.ID)
			}
			if diff := cmp.Diff([]string{"issue"}, f.sink.Types()); diff != "" {
				t.Errorf("audit events (-want +got):\n%s", diff)
			}
			ev := f.sink.Events()[0]
			if ev.IssuanceID != is.ID || ev.Credential.Accessor != is.Refs.Accessor || ev.SessionID != is.SessionID {
				t.Errorf("issue event = %+v, does not match issuance %+v", ev, is)
			}
			claims, _ := ev.Details["claims"].(map[string]any)
			if claims["sub"] != "system:serviceaccount:payments:api" || claims["kubernetes.io.namespace"] != "payments" {
				t.Errorf("issue event claims = %v, want the sub and the matched claim", ev.Details["claims"])
			}
		})
	}
}

func TestExchangeSessionFromClaim(t *testing.T) {
	f := newFixture(t)
	a, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
	if err != nil {
		t.Fatal(err)
	}
	if a.Issuance.SessionID != b.Issuance.SessionID {
		t.Errorf("two exchanges of one pod got sessions %s and %s, want one", a.Issuance.SessionID, b.Issuance.SessionID)
	}
	if want := broker.SessionID("k8s", "claim:pod-1"); a.Issuance.SessionID != want {
		t.Errorf("session = %s, want %s (from kubernetes.io.pod.uid)", a.Issuance.SessionID, want)
	}
	c, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "batch", Grant: "payments-vault"})
	if err != nil {
		t.Fatal(err)
	}
	if want := broker.SessionID("k8s", "jti:tok-1"); c.Issuance.SessionID != want {
		t.Errorf("session without claim = %s, want %s (from jti)", c.Issuance.SessionID, want)
	}
}

// TestExchangeSessionFromClaims: a session claim may join several claims
// with "+", as GitHub Actions needs (run_id+run_attempt, SPEC "Session"):
// every job of one run attempt shares a session, a re-run gets a new one.
func TestExchangeSessionFromClaims(t *testing.T) {
	pol, err := policies.Parse("gh.yaml", []byte(`
version: 1
issuers:
  - {name: gh, issuer: "https://token.actions.githubusercontent.com", jwks_url: "https://token.actions.githubusercontent.com/.well-known/jwks", audiences: [keytrail], algorithms: [RS256], session_claim: "run_id + run_attempt"}
workloads:
  - {name: deploy, owner: team-platform, match: {issuer: gh, subject: "repo:acme/app:ref:refs/heads/main"}, grants: [g]}
grants:
  - {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	gh := func(jti string, claims map[string]any) *broker.Identity {
		c := map[string]any{"sub": "repo:acme/app:ref:refs/heads/main", "jti": jti}
		for k, v := range claims {
			c[k] = v
		}
		return &broker.Identity{IssuerName: "gh", Iss: "https://token.actions.githubusercontent.com", Sub: c["sub"].(string), JTI: jti, Claims: c}
	}
	authn := brokertest.Authn{
		"job1":      gh("j1", map[string]any{"run_id": "42", "run_attempt": "1"}),
		"job2":      gh("j2", map[string]any{"run_id": "42", "run_attempt": "1"}),
		"rerun":     gh("j3", map[string]any{"run_id": "42", "run_attempt": "2"}),
		"noattempt": gh("j4", map[string]any{"run_id": "42"}),
	}
	sink := &brokertest.Sink{}
	svc, err := broker.NewService(broker.Deps{
		Policy: func() *policies.Policy { return pol }, Authn: func() broker.Authenticator { return authn },
		Minters: map[string]broker.Minter{broker.KindVaultToken: &brokertest.Minter{}},
		Store:   memstore.New(time.Now), Audit: sink,
	})
	if err != nil {
		t.Fatal(err)
	}
	session := map[string]string{}
	for _, tok := range []string{"job1", "job2", "rerun", "noattempt"} {
		res, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: tok, Grant: "g"})
		if err != nil {
			t.Fatalf("Exchange(%s) = %v", tok, err)
		}
		session[tok] = res.Issuance.SessionID
	}
	want := map[string]string{
		"job1":      broker.SessionID("gh", "claim:42\x001"),
		"job2":      broker.SessionID("gh", "claim:42\x001"),
		"rerun":     broker.SessionID("gh", "claim:42\x002"),
		"noattempt": broker.SessionID("gh", "jti:j4"), // a session claim missing: the token's jti
	}
	if diff := cmp.Diff(want, session); diff != "" {
		t.Errorf("sessions (-want +got):\n%s", diff)
	}
	claims, _ := sink.Events()[0].Details["claims"].(map[string]any)
	if claims["run_id"] != "42" || claims["run_attempt"] != "1" {
		t.Errorf("issue event claims = %v, want run_id and run_attempt recorded", claims)
	}
}

// TestExchangeSessionWithoutIatOrJTI: SPEC derives a session from the token
// itself when no session claim applies: its jti, else iss+sub+iat. An issuer
// whose tokens carry neither jti nor iat must not put every token of one sub
// into one session (one revocation would take every instance's credentials):
// the token's exp stands in for iat. Tokens with an iat keep their ids.
func TestExchangeSessionWithoutIatOrJTI(t *testing.T) {
	pol, err := policies.Parse("p.yaml", []byte(`
version: 1
issuers:
  - {name: oidc, issuer: "https://idp.example", jwks_url: "https://idp.example/jwks", audiences: [keytrail], algorithms: [ES256]}
workloads:
  - {name: agent, owner: team-ai, match: {issuer: oidc, subject: agent}, grants: [g]}
grants:
  - {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	exp1 := time.Unix(1_900_000_000, 0)
	exp2 := exp1.Add(time.Hour)
	id := func(iat, exp time.Time) *broker.Identity {
		return &broker.Identity{IssuerName: "oidc", Iss: "https://idp.example", Sub: "agent", IssuedAt: iat, Expiry: exp,
			Claims: map[string]any{"sub": "agent"}}
	}
	authn := brokertest.Authn{
		"first":       id(time.Time{}, exp1),
		"first-again": id(time.Time{}, exp1),
		"second":      id(time.Time{}, exp2),
		"with-iat":    id(exp1.Add(-time.Hour), exp1),
	}
	svc, err := broker.NewService(broker.Deps{
		Policy: func() *policies.Policy { return pol }, Authn: func() broker.Authenticator { return authn },
		Minters: map[string]broker.Minter{broker.KindVaultToken: &brokertest.Minter{}},
		Store:   memstore.New(time.Now), Audit: &brokertest.Sink{},
	})
	if err != nil {
		t.Fatal(err)
	}
	session := map[string]string{}
	for tok := range authn {
		res, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: tok, Grant: "g"})
		if err != nil {
			t.Fatalf("Exchange(%s) = %v", tok, err)
		}
		session[tok] = res.Issuance.SessionID
	}
	if session["first"] != session["first-again"] {
		t.Errorf("one token presented twice got sessions %s and %s, want one", session["first"], session["first-again"])
	}
	if session["first"] == session["second"] {
		t.Errorf("two tokens without iat or jti (different exp) share session %s, want one each", session["first"])
	}
	if want := broker.SessionID("oidc", "token:https://idp.example\x00agent\x00"+strconv.FormatInt(exp1.Add(-time.Hour).Unix(), 10)); session["with-iat"] != want {
		t.Errorf("token with iat: session %s, want %s (iss+sub+iat, unchanged)", session["with-iat"], want)
	}
}

// TestPolicyReloadedBetweenReads: an identity verified by the authenticator
// of a reloaded policy that swapped two issuers' names must not be matched
// against the other policy's workloads or admins under the swapped name.
func TestPolicyReloadedBetweenReads(t *testing.T) {
	pol := adminPolicy(t)
	// Verified by an authenticator that calls https://other.example "k8s".
	swapped := identity("system:serviceaccount:payments:api", map[string]any{"kubernetes.io": map[string]any{"namespace": "payments"}})
	swapped.Iss = "https://other.example"
	authn := brokertest.Authn{"swapped": swapped}
	minter := &brokertest.Minter{}
	sink := &brokertest.Sink{}
	svc, err := broker.NewService(broker.Deps{
		Policy: func() *policies.Policy { return pol }, Authn: func() broker.Authenticator { return authn },
		Minters: map[string]broker.Minter{broker.KindVaultToken: minter},
		Store:   memstore.New(time.Now), Audit: sink,
	})
	if err != nil {
		t.Fatal(err)
	}
	_, err = svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "swapped", Grant: "payments-vault"})
	if !errors.Is(err, broker.ErrUnavailable) || broker.AsError(err).Reason != "policy_reloaded" {
		t.Errorf("Exchange() = %v, want unavailable policy_reloaded", err)
	}
	if len(minter.Reqs) != 0 {
		t.Errorf("minter called %d times", len(minter.Reqs))
	}
	_, err = svc.AuthorizeAdmin(context.Background(), broker.AdminRequest{Token: "swapped", Role: broker.RoleRevoke, Action: "test"})
	if !errors.Is(err, broker.ErrUnavailable) || broker.AsError(err).Reason != "policy_reloaded" {
		t.Errorf("AuthorizeAdmin() = %v, want unavailable policy_reloaded", err)
	}
	if diff := cmp.Diff([]string{"deny", "admin"}, sink.Types()); diff != "" {
		t.Errorf("audit events (-want +got):\n%s", diff)
	}
}

func TestExchangeAuditFailureRevokes(t *testing.T) {
	f := newFixture(t)
	f.sink.Fail = func(ev *audit.Event) bool { return ev.Type == audit.TypeIssue }
	res, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
	if !errors.Is(err, broker.ErrUnavailable) || res != nil {
		t.Fatalf("Exchange() = %v, %v; want nil, ErrUnavailable", res, err)
	}
	if len(f.minter.Reqs) != 1 {
		t.Fatalf("minted %d, want 1", len(f.minter.Reqs))
	}
	if diff := cmp.Diff([]string{f.minter.Reqs[0].IssuanceID}, f.minter.Revoked); diff != "" {
		t.Errorf("revoked (-want +got):\n%s", diff)
	}
	is, err := f.store.GetIssuance(context.Background(), f.minter.Reqs[0].IssuanceID)
	if err != nil || is.RevokedAt.IsZero() {
		t.Errorf("stored issuance = %+v, %v; want it marked revoked", is, err)
	}
	if e := broker.AsError(err); e.RetryAfter <= 0 {
		t.Errorf("RetryAfter = %v, want > 0", e.RetryAfter)
	}
}

func TestExchangeMintFailureIsUnavailable(t *testing.T) {
	f := newFixture(t)
	f.minter.Err = broker.Unavailable("vault_unavailable", 2*time.Second, errors.New("connection refused"))
	_, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Exchange() error = %v, want ErrUnavailable", err)
	}
	if diff := cmp.Diff([]string{"deny"}, f.sink.Types()); diff != "" {
		t.Errorf("audit events (-want +got):\n%s", diff)
	}
	if got := f.sink.Events()[0].Outcome; got.Status != 503 || got.Reason != "vault_unavailable" {
		t.Errorf("deny outcome = %+v, want 503 vault_unavailable", got)
	}
}

func TestExchangeRateLimit(t *testing.T) {
	f := newFixture(t)
	var codes []string
	for range 4 {
		_, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
		if err != nil {
			codes = append(codes, broker.CodeOf(broker.AsError(err)))
		} else {
			codes = append(codes, "ok")
		}
	}
	if diff := cmp.Diff([]string{"ok", "ok", "slow_down", "slow_down"}, codes); diff != "" {
		t.Errorf("outcomes with burst 2 (-want +got):\n%s", diff)
	}
	f.now = f.now.Add(time.Second)
	if _, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"}); err != nil {
		t.Errorf("after one second at 1/s: %v, want ok", err)
	}
}

// TestRateLimitConcurrentFirstUse: a workload's first requests, made at
// once, share one limiter: no more than the burst gets through. (Each
// request used to make its own limiter when none was stored yet, and the
// last one stored won: a burst of concurrent first requests, or of
// requests right after a reload changing the rate, got past the limit. The
// race is narrow, hence many fresh Services; the test cannot fail once
// only one limiter is ever made.)
func TestRateLimitConcurrentFirstUse(t *testing.T) {
	f := newFixture(t)
	wl, ok := f.pol.Workload("payments-api") // rate: {per_second: 1, burst: 2}
	if !ok {
		t.Fatal("no workload payments-api")
	}
	const trials, callers = 3000, 8
	for trial := range trials {
		svc := f.serviceWith(t, f.store, f.sink)
		var allowed atomic.Int32
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if svc.Allow(wl) == nil {
					allowed.Add(1)
				}
			}()
		}
		close(start)
		wg.Wait()
		if n := allowed.Load(); n > 2 {
			t.Fatalf("trial %d: %d of %d concurrent first requests allowed, want at most the burst 2", trial, n, callers)
		}
	}
}

func TestExchangeBlocked(t *testing.T) {
	f := newFixture(t)
	if err := f.store.PutBlock(context.Background(), broker.Block{Workload: "payments-api", Reason: "incident"}); err != nil {
		t.Fatal(err)
	}
	_, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
	if !errors.Is(err, broker.ErrDenied) || broker.AsError(err).Reason != "workload_blocked" {
		t.Fatalf("Exchange() error = %v, want workload_blocked", err)
	}
}

func TestAuthorizeAdmin(t *testing.T) {
	pol, err := policies.Parse("a.yaml", []byte(testPolicy+`
admins:
  - name: secops
    match: {issuer: k8s, claims: {groups: secops}}
    roles: [revoke]
  - name: oncall
    match: {issuer: k8s, claims: {oncall: "yes"}}
    roles: [trace]
`))
	if err != nil {
		t.Fatal(err)
	}
	sink := &brokertest.Sink{}
	authn := brokertest.Authn{
		"alice": identity("alice", map[string]any{"groups": "secops"}),
		"bob":   identity("bob", map[string]any{"groups": "dev"}),
		// carol is listed under secops (revoke) and, later, oncall (trace):
		// she holds both roles.
		"carol": identity("carol", map[string]any{"groups": "secops", "oncall": "yes"}),
	}
	svc, err := broker.NewService(broker.Deps{
		Policy: func() *policies.Policy { return pol }, Authn: func() broker.Authenticator { return authn },
		Store: memstore.New(time.Now), Audit: sink,
	})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, token, role string
		want              error
		admin             string
	}{
		{"ok/revoke", "alice", broker.RoleRevoke, nil, "secops:alice"},
		{"ok/first-entry-role", "carol", broker.RoleRevoke, nil, "secops:carol"},
		{"ok/later-entry-role", "carol", broker.RoleTrace, nil, "oncall:carol"},
		{"fail/missing-role", "alice", broker.RoleTrace, broker.ErrDenied, ""},
		{"fail/missing-role-in-every-entry", "carol", broker.RoleReport, broker.ErrDenied, ""},
		{"fail/not-admin", "bob", broker.RoleRevoke, broker.ErrDenied, ""},
		{"fail/bad-token", "mallory", broker.RoleRevoke, broker.ErrUnauthenticated, ""},
		{"fail/no-token", "", broker.RoleRevoke, broker.ErrUnauthenticated, ""},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := svc.AuthorizeAdmin(context.Background(), broker.AdminRequest{Token: tt.token, Role: tt.role, Action: "test"})
			if tt.want == nil && (err != nil || a.String() != tt.admin) {
				t.Fatalf("AuthorizeAdmin() = %v, %v; want %s", a, err, tt.admin)
			}
			if tt.want != nil && !errors.Is(err, tt.want) {
				t.Fatalf("AuthorizeAdmin() error = %v, want %v", err, tt.want)
			}
			evs := sink.Events()
			if len(evs) != i+1 {
				t.Fatalf("%d audit events after %d calls; every admin call must be audited", len(evs), i+1)
			}
			if evs[i].Type != "admin" {
				t.Errorf("event type = %s", evs[i].Type)
			}
		})
	}
}

// blockingStore holds PutIssuance until release is closed.
type blockingStore struct {
	broker.Store
	entered chan struct{}
	release chan struct{}
	err     error
}

func (b *blockingStore) PutIssuance(ctx context.Context, is *broker.Issuance) error {
	select {
	case b.entered <- struct{}{}:
	default:
	}
	<-b.release
	if b.err != nil {
		return b.err
	}
	return b.Store.PutIssuance(ctx, is)
}

// TestExchangeStoreAndAuditAtOnce: the issue event is appended while the
// store write is still in progress (the two are not waited for in turn),
// and the credential is returned only after both.
func TestExchangeStoreAndAuditAtOnce(t *testing.T) {
	f := newFixture(t)
	bs := &blockingStore{Store: f.store, entered: make(chan struct{}, 1), release: make(chan struct{})}
	appended := make(chan struct{})
	f.sink.Fail = func(ev *audit.Event) bool {
		if ev.Type == audit.TypeIssue {
			close(appended)
		}
		return false
	}
	f.svc = f.serviceWith(t, bs, f.sink)
	type result struct {
		res *broker.ExchangeResult
		err error
	}
	done := make(chan result, 1)
	go func() {
		res, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
		done <- result{res, err}
	}()
	<-bs.entered
	// The store write is in progress; the issue event must come now.
	select {
	case <-appended:
	case r := <-done:
		t.Fatalf("Exchange() returned %+v before the store write finished", r)
	case <-time.After(10 * time.Second):
		t.Fatal("the issue event was not appended while the store write was in progress")
	}
	select {
	case r := <-done:
		t.Fatalf("Exchange() returned %+v before the store write finished", r)
	default:
	}
	close(bs.release)
	r := <-done
	if r.err != nil || r.res == nil {
		t.Fatalf("Exchange() = %+v, %v; want a credential", r.res, r.err)
	}
	if _, err := f.store.GetIssuance(context.Background(), r.res.Issuance.ID); err != nil {
		t.Errorf("stored issuance: %v", err)
	}
}

// TestExchangeStoreFailureRevokes: when the store write fails after the
// issue event became durable, the credential is revoked, the log says so
// (orphan_revoked, store_failed) and the caller gets 503.
func TestExchangeStoreFailureRevokes(t *testing.T) {
	f := newFixture(t)
	bs := &blockingStore{Store: f.store, entered: make(chan struct{}, 1), release: make(chan struct{}),
		err: broker.Unavailable("store_unavailable", time.Second, errors.New("redis down"))}
	close(bs.release)
	f.svc = f.serviceWith(t, bs, f.sink)
	res, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
	if !errors.Is(err, broker.ErrUnavailable) || res != nil {
		t.Fatalf("Exchange() = %v, %v; want nil, ErrUnavailable", res, err)
	}
	if diff := cmp.Diff([]string{f.minter.Reqs[0].IssuanceID}, f.minter.Revoked); diff != "" {
		t.Errorf("revoked (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{audit.TypeIssue, audit.TypeOrphanRevoked, audit.TypeDeny}, f.sink.Types()); diff != "" {
		t.Fatalf("audit events (-want +got):\n%s", diff)
	}
	evs := f.sink.Events()
	if o := evs[1]; o.IssuanceID != evs[0].IssuanceID || o.Reason != broker.OrphanStoreFailed || o.Outcome.Status != 200 {
		t.Errorf("orphan_revoked event = %+v, want issuance %s, reason store_failed, status 200", o, evs[0].IssuanceID)
	}
	if d := evs[2]; d.Outcome.Status != 503 || d.IssuanceID != evs[0].IssuanceID {
		t.Errorf("deny event = %+v, want 503 for the issuance", d)
	}

	// When taking it back fails too, the outcome says so in codes (SPEC-
	// ADDITIONS), and the reconciliation revokes it later.
	f.minter.RevokeErr = errors.New("vault down")
	if _, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Exchange() with a failing revoke = %v, want ErrUnavailable", err)
	}
	evs = f.sink.Events()
	o := evs[len(evs)-2]
	if diff := cmp.Diff(&audit.Outcome{Status: 503, Error: "temporarily_unavailable", Reason: "revoke_failed"}, o.Outcome); o.Type != audit.TypeOrphanRevoked || diff != "" {
		t.Errorf("orphan_revoked event after a failed revoke: type %s, outcome (-want +got):\n%s", o.Type, diff)
	}
}

// TestExchangeDenyNamesUnrevokedCredential: a mint whose credential the
// minter refused and could not revoke (its clean-up failed) leaves it
// valid at the backend; the deny event must name it (its references,
// never a secret) and say it is unrevoked, so that trace finds it by its
// serial. (It named nothing: the serial was only in the server log.)
func TestExchangeDenyNamesUnrevokedCredential(t *testing.T) {
	f := newFixture(t)
	cause := broker.Unavailable("config", 30*time.Second, errors.New("certificate lacks URI SAN; cleanup: revoking serial 1a:2b: 500"))
	f.minter.Err = &broker.UnrevokedError{Refs: broker.CredentialRefs{Serial: "1a:2b", Mount: "pki"}, Err: cause}
	_, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", RequestID: "req_u"})
	if e := broker.AsError(err); !errors.Is(err, broker.ErrUnavailable) || e.Reason != "config" {
		t.Fatalf("Exchange() = %v, want the minter's unavailable (config)", err)
	}
	evs := f.sink.Events()
	deny := evs[len(evs)-1]
	if deny.Type != "deny" || deny.IssuanceID == "" || deny.Credential == nil || deny.Credential.Serial != "1a:2b" || deny.Details["unrevoked"] != true {
		t.Errorf("last event = %s issuance %q credential %+v details %v; want a deny naming serial 1a:2b, unrevoked", deny.Type, deny.IssuanceID, deny.Credential, deny.Details)
	}
}
