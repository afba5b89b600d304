package broker_test

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// The issue and deny events of an exchange carry the request's source, the
// verified identity (once known) and what the checks learned; a refusal
// before authentication names no identity, and a request without a source
// records none.
func TestExchangeEventFields(t *testing.T) {
	src := broker.Source{IP: "10.1.2.3", UserAgent: "ci/1"}
	ident := &audit.Identity{Iss: "https://k8s.example", Sub: "system:serviceaccount:payments:api", JTI: "tok-1"}
	for _, c := range []struct {
		name string
		req  broker.ExchangeRequest
		want audit.Event // the one event's fields compared below
	}{
		{"issue", broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", Source: src, RequestID: "req_1"},
			audit.Event{Type: audit.TypeIssue, RequestID: "req_1", Workload: "payments-api", Owner: "team-payments",
				Grant: "payments-vault", Kind: broker.KindVaultToken, Identity: ident, Source: &audit.Source{IP: "10.1.2.3", UserAgent: "ci/1"},
				Outcome: &audit.Outcome{Status: 200}}},
		{"issue without source", broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", RequestID: "req_2"},
			audit.Event{Type: audit.TypeIssue, RequestID: "req_2", Workload: "payments-api", Owner: "team-payments",
				Grant: "payments-vault", Kind: broker.KindVaultToken, Identity: ident, Outcome: &audit.Outcome{Status: 200}}},
		{"deny before authentication", broker.ExchangeRequest{SubjectToken: "forged", Grant: "payments-vault", Source: src, RequestID: "req_3"},
			audit.Event{Type: audit.TypeDeny, RequestID: "req_3", Grant: "payments-vault", Source: &audit.Source{IP: "10.1.2.3", UserAgent: "ci/1"},
				Outcome: &audit.Outcome{Status: 401, Error: "invalid_grant", Reason: "bad_signature"}}},
		{"deny after the checks", broker.ExchangeRequest{SubjectToken: "payments", Grant: "orders-jwt", Source: src, RequestID: "req_4"},
			audit.Event{Type: audit.TypeDeny, RequestID: "req_4", Workload: "payments-api", Owner: "team-payments",
				Grant: "orders-jwt", Kind: broker.KindJWT, Identity: ident, Source: &audit.Source{IP: "10.1.2.3", UserAgent: "ci/1"},
				Outcome: &audit.Outcome{Status: 403, Error: "access_denied", Reason: "grant_not_allowed"}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t)
			_, _ = f.svc.Exchange(context.Background(), c.req)
			evs := f.sink.Events()
			if len(evs) != 1 {
				t.Fatalf("events %v, want one", f.sink.Types())
			}
			ev := evs[0]
			got := audit.Event{Type: ev.Type, RequestID: ev.RequestID, Workload: ev.Workload, Owner: ev.Owner,
				Grant: ev.Grant, Kind: ev.Kind, Identity: ev.Identity, Source: ev.Source, Outcome: ev.Outcome}
			if diff := cmp.Diff(c.want, got); diff != "" {
				t.Errorf("event (-want +got):\n%s", diff)
			}
			if ev.Type == audit.TypeIssue {
				if ev.Credential == nil || ev.Credential.Fingerprint == "" || ev.Credential.ExpiresAt == "" ||
					ev.SessionID == "" || ev.IssuanceID == "" || ev.Details["claims"] == nil {
					t.Errorf("issue event incomplete: %+v, credential %+v", ev, ev.Credential)
				}
			}
		})
	}
}
