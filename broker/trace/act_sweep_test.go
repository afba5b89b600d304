package trace_test

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// TestTraceActOfAnotherIssuancesRevocation: a revocation by issuance id
// with a block (of delegated credential Y, acting for carol) whose sweep
// later finds X, another credential of the workload (minted without an
// actor token), is shown whole in X's trace, its first revoke_result
// included: that result names Y alone and so carries Y's act. It is not
// about X: X's trace does not warn that it names another act than X's
// record, nor (without a record) show X "acting for" carol. The sweep's
// result, which names X, carries none. (trace compared every
// revoke_result's act with the traced issuance's: a false WARNING.)
func TestTraceActOfAnotherIssuancesRevocation(t *testing.T) {
	const idX, idY = "iss_01JXX0000000000000000000XX", "iss_01JXY0000000000000000000YY"
	carol := audit.Identity{Iss: "https://sso.example", Sub: "user:carol", JTI: "j1"}
	issueX := &audit.Event{Type: audit.TypeIssue, RequestID: "req_X", IssuanceID: idX, Workload: "payments-api", Owner: "team-payments",
		Grant: "payments-vault", Kind: broker.KindVaultToken,
		Credential: &audit.Credential{Accessor: "accX", ExpiresAt: rfc(at(time.Hour))},
		Outcome:    &audit.Outcome{Status: 200}}
	rest := []*audit.Event{
		{Type: audit.TypeRevoke, RequestID: "req_R", RevocationID: "rev_B1", IssuanceID: idY, Admin: "secops:alice", Act: []audit.Identity{carol},
			Reason: "INC-3", Details: map[string]any{"selector": map[string]any{"issuance_id": idY}, "matched": 1, "issuance_ids": []any{idY}},
			Outcome: &audit.Outcome{Status: 200}},
		{Type: audit.TypeBlock, RequestID: "req_R", RevocationID: "rev_B1", Workload: "payments-api", Admin: "secops:alice",
			Outcome: &audit.Outcome{Status: 200}},
		{Type: audit.TypeRevokeResult, RequestID: "req_R", RevocationID: "rev_B1", Admin: "secops:alice", Act: []audit.Identity{carol},
			Details: map[string]any{"matched": 1, "revoked": []any{idY}, "pending": []any{}, "failed": []any{}},
			Outcome: &audit.Outcome{Status: 200}},
		{Type: audit.TypeRevokeResult, RevocationID: "rev_B1", Admin: "secops:alice",
			Details: map[string]any{"matched": 1, "revoked": []any{idX}, "pending": []any{}, "failed": []any{}, "by": "sweep", "swept": []any{idX}},
			Outcome: &audit.Outcome{Status: 200}},
	}
	for _, tc := range []struct {
		name string
		evs  []*audit.Event
	}{
		{"record", append([]*audit.Event{issueX}, rest...)},
		{"no-record", rest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, err := trace.NewIndex(trace.Options{})
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range sealed(t, "chn_actsweep", 0, tc.evs) {
				if err := x.AddLine(l); err != nil {
					t.Fatal(err)
				}
			}
			res := x.Issuance(idX)
			if res == nil {
				t.Fatal("no trace of X")
			}
			var first bool
			for _, ev := range res.Revocations {
				first = first || ev.Type == audit.TypeRevokeResult && len(ev.Act) > 0
			}
			if !first {
				t.Fatalf("X's trace does not show the revocation's first result (the case under test): %+v", res.Revocations)
			}
			var b bytes.Buffer
			if err := res.WriteText(&b); err != nil {
				t.Fatal(err)
			}
			txt := b.String()
			if strings.Contains(txt, "WARNING: events about this credential name another act") {
				t.Errorf("X's trace warns of the act of a result about Y alone:\n%s", txt)
			}
			if strings.Contains(txt, "user:carol") {
				t.Errorf("X's trace names carol, whom only Y acted for:\n%s", txt)
			}
		})
	}
}
