package trace_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// An all-digit serial reads as hex and as decimal. When this instance's
// log holds the issuance of one reading and only the store (another
// instance) holds the other's, both are answers online, oldest first, as
// when both are in one place.
func TestLiveSerialReadingsSplitBetweenLogAndStore(t *testing.T) {
	const idH, idD = "iss_01JXH0000000000000000000HH", "iss_01JXD0000000000000000000DD"
	logged := []*audit.Event{{Type: audit.TypeIssue, RequestID: "req_H", IssuanceID: idH, Workload: "payments-api", Owner: "team-payments",
		Grant: "payments-cert", Kind: broker.KindPKI, Credential: &audit.Credential{Serial: "12:34", ExpiresAt: rfc(at(time.Hour))},
		Outcome: &audit.Outcome{Status: 200}}} // issued at t0
	cases := []struct {
		name     string
		storedAt time.Duration // when the store-only issuance (serial 1234 = 0x04d2) was issued
		want     []any
	}{
		{"ok/store-one-newer", time.Minute, []any{idH, trace.FromAuditLog, []string{idD}}},
		{"ok/store-one-older", -time.Minute, []any{idD, trace.FromStore, []string{idH}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := writeLines(t, t.TempDir(), "audit.jsonl", sealed(t, "chn_split", 0, logged))
			st := &fakeStore{byID: map[string]*broker.Issuance{idD: {ID: idD, Workload: "orders", Kind: broker.KindPKI,
				IssuedAt: at(tc.storedAt), ExpiresAt: at(time.Hour), Refs: broker.CredentialRefs{Serial: "04:d2"}}}}
			live, err := trace.NewLive(trace.LiveOptions{Path: path, Store: st})
			if err != nil {
				t.Fatal(err)
			}
			res, err := live.Trace(context.Background(), "1234")
			if err != nil {
				t.Fatalf("Trace(1234) = %v", err)
			}
			got := []any{res.Issuance.ID, res.From, res.AlsoMatched}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Trace(1234) = got, want want (-want +got):\n%s", diff)
			}
			if res.Query != (trace.Match{Kind: trace.KindSerial, Value: "1234"}) {
				t.Errorf("Trace(1234).Query = %+v, want serial 1234", res.Query)
			}
		})
	}
}
