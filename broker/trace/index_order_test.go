package trace_test

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// When a value names several issuances, the answer is the oldest whose
// issue event the index holds; one without (issued by another instance,
// or dropped by the bound) comes after those, not first as if issued at
// the zero time.
func TestLookupSeveralIssuancesOneWithoutIssueEvent(t *testing.T) {
	const (
		idOld = "iss_01JXQ0000000000000000000QQ" // no issue event in the index
		idH   = "iss_01JXH0000000000000000000HH" // serial 0x1234
		idD   = "iss_01JXD0000000000000000000DD" // serial 1234 = 0x04d2, no issue event
	)
	issue := func(id string, d time.Duration, cred *audit.Credential) *audit.Event {
		return &audit.Event{Type: audit.TypeIssue, IssuanceID: id, RequestID: "req_" + id[len(id)-2:], Workload: "payments-api",
			Owner: "team-payments", Grant: "payments-vault", Kind: broker.KindVaultToken, Time: rfc(at(d)), Credential: cred}
	}
	evs := []*audit.Event{
		issue(idA, time.Second, nil),
		issue(idB, 2*time.Second, nil),
		{Type: audit.TypeRevoke, RequestID: "req_M", RevocationID: "rev_M1", Workload: "payments-api", Time: rfc(at(3 * time.Second)),
			Details: map[string]any{"matched": 3, "issuance_ids": []any{idOld, idB, idA}}},
		issue(idH, 4*time.Second, &audit.Credential{Serial: "12:34"}),
		{Type: audit.TypeUse, IssuanceID: idD, UseID: "use_D", RequestID: "req_D", Workload: "payments-api", Time: rfc(at(5 * time.Second)),
			Credential: &audit.Credential{Serial: "04:d2"}},
	}
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i, ev := range evs {
		ev.Chain, ev.Seq = "chn_order", uint64(i+1)
		x.Add(ev)
	}
	type answer struct {
		ID   string
		Also []string
	}
	cases := []struct {
		name, q string
		want    answer
	}{
		{"ok/revocation-lists-one-without-issue-event", "rev_M1", answer{idA, []string{idB, idOld}}},
		{"ok/serial-reading-without-issue-event", "1234", answer{idH, []string{idD}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := x.Lookup(tc.q)
			if err != nil {
				t.Fatalf("Lookup(%s) = %v", tc.q, err)
			}
			if diff := cmp.Diff(tc.want, answer{res.Issuance.ID, res.AlsoMatched}); diff != "" {
				t.Errorf("Lookup(%s) = got, want want (-want +got):\n%s", tc.q, diff)
			}
		})
	}
}
