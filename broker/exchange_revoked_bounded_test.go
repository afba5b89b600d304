package broker_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// ratedChainPolicy is chainPolicy with a rate for both workloads: bursts
// of 5, and the tests' clock is fixed (no refill).
func ratedChainPolicy(t *testing.T) string {
	t.Helper()
	p := chainPolicy
	for _, m := range []string{
		"    match: {issuer: k8s, subject: system:serviceaccount:payments:api}\n",
		"    match: {issuer: keytrail, subject: payments-api}\n",
	} {
		if !strings.Contains(p, m) {
			t.Fatalf("chainPolicy has no %q", m)
		}
		p = strings.Replace(p, m, m+"    rate: {per_second: 1, burst: 5}\n", 1)
	}
	return p
}

// TestExchangeRevokedBrokerJWTBounded: a revoked broker JWT presented to
// /v1/token as subject or actor token was refused (credential_revoked)
// after up to two store reads and with a durable deny event, for every
// request, before any limit: its holder could grow the audit log and load
// the store without bound. Its refusals are now audited up to
// refusal_limit.per_identity per span (then the same refusal with no
// event, counted by its caller's summary), and, for a workload with a rate, its store reads
// bounded by a bucket of the token's own (sized as the workload's rate):
// the workload's own bucket is left to its live credentials.
func TestExchangeRevokedBrokerJWTBounded(t *testing.T) {
	const calls, perIdentity, burst = 1000, 20, 5
	for _, tc := range []struct {
		name             string
		rated            bool
		req              func(jwt string) broker.ExchangeRequest
		reason           string
		caller, workload string // the summary's workload, the live exchange's subject
		reads            int64
		live             int  // exchanges of the live token until its workload's 429
		noWorkload       bool // the JWT's identity matches no workload (policy without payments-agent)
	}{
		{name: "subject", rated: true, req: func(jwt string) broker.ExchangeRequest {
			return broker.ExchangeRequest{SubjectToken: jwt, Grant: "payments-vault"}
		}, reason: "credential_revoked", caller: "payments-agent", workload: "lookalike", reads: burst, live: burst},
		{name: "actor", rated: true, req: func(jwt string) broker.ExchangeRequest {
			return broker.ExchangeRequest{SubjectToken: "payments", ActorToken: jwt, Grant: "payments-vault"}
		}, reason: "actor_credential_revoked", caller: "payments-api", workload: "payments", reads: burst, live: burst - 1}, // one taken by the handoff
		// A workload without a rate: its exchanges are not limited, nor
		// the store reads of a revoked JWT's, but its events are.
		{name: "subject-unrated", req: func(jwt string) broker.ExchangeRequest {
			return broker.ExchangeRequest{SubjectToken: jwt, Grant: "payments-vault"}
		}, reason: "credential_revoked", caller: "payments-agent", workload: "lookalike", reads: calls},
		// A JWT whose identity matches no workload: its summary names
		// its identity (no jti).
		{name: "subject-no-workload", noWorkload: true, req: func(jwt string) broker.ExchangeRequest {
			return broker.ExchangeRequest{SubjectToken: jwt, Grant: "payments-vault"}
		}, reason: "credential_revoked", reads: calls},
	} {
		t.Run(tc.name, func(t *testing.T) {
			policy := chainPolicy
			if tc.rated {
				policy = ratedChainPolicy(t)
			}
			if tc.noWorkload {
				const agent = `  - name: payments-agent
    owner: team-payments
    match: {issuer: keytrail, subject: payments-api}
    grants: [payments-vault]
`
				if !strings.Contains(policy, agent) {
					t.Fatal("chainPolicy has no payments-agent")
				}
				policy = strings.Replace(policy, agent, "", 1)
			}
			store := &findCountingStore{}
			svc, sink, handoff := chainServiceWith(t, policy, &broker.RefusalLimits{PerIdentity: perIdentity},
				func(s broker.Store) broker.Store { store.Store = s; return store })
			ctx := context.Background()
			if _, err := svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: handoff.Issuance.ID}, "jwt leaked", broker.RevokeOptions{}, "req_r"); err != nil {
				t.Fatal(err)
			}
			before, finds := len(sink.Events()), store.finds.Load()
			got := countRefusals(t, svc, sink, before, calls, func() error {
				_, err := svc.Exchange(ctx, tc.req(handoff.AccessToken))
				return err
			})
			reads := store.finds.Load() - finds
			if got.events != perIdentity || got.unaudited != calls-perIdentity || got.suppressed != calls-perIdentity || reads > tc.reads {
				t.Errorf("%d exchanges with a revoked broker JWT as %s: %d events, %d answered unaudited, %d in summaries, %d store reads; want %d, %d, %d, at most %d",
					calls, tc.name, got.events, got.unaudited, got.suppressed, reads, perIdentity, calls-perIdentity, calls-perIdentity, tc.reads)
			}
			revoked, limited := 0, 0
			for _, ev := range sink.Events()[before:] {
				switch {
				case ev.Type != audit.TypeDeny || ev.Outcome == nil || ev.Details["scope"] != nil:
				case ev.Outcome.Reason == tc.reason:
					revoked++
				case ev.Outcome.Reason == broker.ReasonRateLimited && ev.Workload == tc.caller && ev.Grant == "payments-vault":
					limited++ // a 429 of its bucket, as its workload's
				}
			}
			if revoked+limited != perIdentity {
				t.Errorf("%d deny events %s and %d rate_limited of %s, want %d in all", revoked, tc.reason, limited, tc.caller, perIdentity)
			}
			if want := perIdentity; tc.rated {
				want = burst
				if revoked != want {
					t.Errorf("%d deny events %s, want %d (one per store read)", revoked, tc.reason, want)
				}
			} else if revoked != want {
				t.Errorf("%d deny events %s, want %d", revoked, tc.reason, want)
			}
			if s := got.summary; tc.noWorkload {
				if s == nil || s.Type != audit.TypeDeny || s.Workload != "" || s.Identity == nil || s.Identity.Sub != "payments-api" || s.Identity.JTI != "" {
					t.Errorf("summary = %+v, want a deny summary naming the identity payments-api (no workload, no jti)", s)
				}
				return
			} else if s == nil || s.Type != audit.TypeDeny || s.Workload != tc.caller || s.Outcome == nil || s.Outcome.Reason != broker.ReasonRateLimited {
				t.Errorf("summary = %+v, want a deny summary 429 rate_limited of %s", s, tc.caller)
			} else if r, _ := s.Details["reasons"].(map[string]int); !tc.rated && r[tc.reason] != calls-perIdentity {
				// (Rated: past its bucket's burst, the JWT's requests
				// are 429s of the rate, no store read, no reason.)
				t.Errorf("summary details = %v, want reasons counting %d %s", s.Details, calls-perIdentity, tc.reason)
			}
			// The workload's live credentials still exchange: the revoked
			// JWT's holder did not empty its bucket (burst 5, of which
			// the handoff took one of payments-api's).
			live := 0
			for range 10 {
				_, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: tc.workload, Grant: "payments-vault"})
				if err != nil {
					if !errors.Is(err, broker.ErrRateLimited) {
						t.Fatalf("exchange of %s's live token = %v, want it accepted or 429", tc.caller, err)
					}
					break
				}
				live++
			}
			if want := tc.live; (tc.rated && live != want) || (!tc.rated && live != 10) {
				t.Errorf("%d exchanges of %s's live token accepted after the revoked JWT's, want %d (its workload's bucket untouched)", live, tc.caller, want)
			}
		})
	}
}
