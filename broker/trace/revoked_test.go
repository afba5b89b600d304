package trace_test

import (
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// An issuance minted while a workload revocation ran is found by the sweep:
// only the revoke_result event (by "sweep") names it. The trace must show
// it revoked, like the store does.
func TestLookupSweptIssuanceIsRevoked(t *testing.T) {
	const idS = "iss_01JXS0000000000000000000SS"
	evs := []*audit.Event{
		{Type: audit.TypeRevoke, RequestID: "req_R", RevocationID: "rev_S1", Workload: "payments-api", Admin: "secops:alice",
			Reason: "INC-2", Details: map[string]any{"selector": map[string]any{"workload": "payments-api"}, "matched": 0, "issuance_ids": []any{}},
			Outcome: &audit.Outcome{Status: 200}},
		{Type: audit.TypeIssue, RequestID: "req_S", IssuanceID: idS, Workload: "payments-api", Owner: "team-payments",
			Grant: "payments-vault", Kind: broker.KindVaultToken,
			Credential: &audit.Credential{Fingerprint: broker.Fingerprint("hvs.swept-token-0123456789abcdef"), Accessor: "accS", ExpiresAt: rfc(at(time.Hour))},
			Outcome:    &audit.Outcome{Status: 200}},
		{Type: audit.TypeRevokeResult, RevocationID: "rev_S1", Admin: "secops:alice",
			Details: map[string]any{"matched": 0, "revoked": []any{idS}, "pending": []any{}, "failed": []any{}, "by": "sweep", "swept": []any{idS}},
			Outcome: &audit.Outcome{Status: 200}},
	}
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range sealed(t, "chn_sweep", 0, evs) {
		if err := x.AddLine(l); err != nil {
			t.Fatal(err)
		}
	}
	res, err := x.Lookup("accS")
	if err != nil {
		t.Fatal(err)
	}
	if res.Issuance.RevokedAt.IsZero() || res.Issuance.RevocationID != "rev_S1" {
		t.Fatalf("Lookup(swept issuance) revoked_at=%v revocation_id=%q, want revoked by rev_S1 at %v", res.Issuance.RevokedAt, res.Issuance.RevocationID, at(2*time.Second))
	}
	if !res.Issuance.RevokedAt.Equal(at(2 * time.Second)) {
		t.Errorf("revoked_at = %v, want %v (the revoke_result that revoked it)", res.Issuance.RevokedAt, at(2*time.Second))
	}
}

// An issuance whose revocation failed for it (pending, retried) is not
// revoked by the revoke_result that lists it as pending; an orphan_revoked
// event that succeeded revokes it.
func TestLookupOrphanRevokedIsRevoked(t *testing.T) {
	const idO = "iss_01JXO0000000000000000000OO"
	evs := []*audit.Event{
		{Type: audit.TypeIssue, RequestID: "req_O", IssuanceID: idO, Workload: "payments-api", Owner: "team-payments",
			Grant: "payments-vault", Kind: broker.KindVaultToken,
			Credential: &audit.Credential{Accessor: "accO", ExpiresAt: rfc(at(time.Hour))},
			Outcome:    &audit.Outcome{Status: 200}},
		{Type: audit.TypeOrphanRevoked, RequestID: "req_O", IssuanceID: idO, Workload: "payments-api", Owner: "team-payments",
			Grant: "payments-vault", Kind: broker.KindVaultToken, Reason: "store_failed",
			Credential: &audit.Credential{Accessor: "accO"}, Outcome: &audit.Outcome{Status: 200}},
	}
	x, _ := trace.NewIndex(trace.Options{})
	for _, l := range sealed(t, "chn_orphan", 0, evs) {
		if err := x.AddLine(l); err != nil {
			t.Fatal(err)
		}
	}
	res, err := x.Lookup("accO")
	if err != nil {
		t.Fatal(err)
	}
	if !res.Issuance.RevokedAt.Equal(at(time.Second)) {
		t.Fatalf("Lookup(orphan-revoked issuance) revoked_at = %v, want %v", res.Issuance.RevokedAt, at(time.Second))
	}

	// A failed orphan revocation leaves the credential alive.
	evs[1].Outcome = &audit.Outcome{Status: 503, Error: "temporarily_unavailable", Reason: "revoke_failed"}
	x, _ = trace.NewIndex(trace.Options{})
	for _, l := range sealed(t, "chn_orphan", 0, evs) {
		if err := x.AddLine(l); err != nil {
			t.Fatal(err)
		}
	}
	if res, err := x.Lookup("accO"); err != nil || !res.Issuance.RevokedAt.IsZero() {
		t.Fatalf("Lookup(failed orphan revocation) = revoked_at %v, %v; want not revoked", res.Issuance.RevokedAt, err)
	}
}

// A revocation that was not made (its record could not be stored: the
// revoke_result says not_made, the caller got 503 and nothing was revoked)
// does not revoke the issuances its revoke event named: neither the trace
// nor the report shows them revoked, until the retry revokes them.
func TestNotMadeRevocationRevokesNothing(t *testing.T) {
	const idN = "iss_01JXN0000000000000000000NN"
	issue := &audit.Event{Type: audit.TypeIssue, RequestID: "req_N", IssuanceID: idN, Workload: "payments-api", Owner: "team-payments",
		Grant: "payments-vault", Kind: broker.KindVaultToken,
		Credential: &audit.Credential{Accessor: "accN", ExpiresAt: rfc(at(time.Hour))}, Outcome: &audit.Outcome{Status: 200}}
	revoke := func(rid string) []*audit.Event {
		return []*audit.Event{{Type: audit.TypeRevoke, RequestID: "req_" + rid, RevocationID: rid, Workload: "payments-api", Admin: "secops:alice",
			Reason: "INC-9", Details: map[string]any{"selector": map[string]any{"workload": "payments-api"}, "matched": 1, "issuance_ids": []any{idN}},
			Outcome: &audit.Outcome{Status: 200}}}
	}
	notMade := &audit.Event{Type: audit.TypeRevokeResult, RequestID: "req_rev_A", RevocationID: "rev_A",
		Details: map[string]any{"matched": 1, "revoked": []any{}, "pending": []any{}, "failed": []any{}, "not_made": true, "blocks_in_force": []any{}},
		Outcome: &audit.Outcome{Status: 503, Error: "temporarily_unavailable", Reason: "store_unavailable"}}
	made := &audit.Event{Type: audit.TypeRevokeResult, RequestID: "req_rev_B", RevocationID: "rev_B",
		Details: map[string]any{"matched": 1, "revoked": []any{idN}, "pending": []any{}, "failed": []any{}}, Outcome: &audit.Outcome{Status: 200}}
	for _, tc := range []struct {
		name   string
		evs    []*audit.Event
		wantBy string
	}{
		{name: "not-made", evs: append(append([]*audit.Event{issue}, revoke("rev_A")...), notMade)},
		{name: "retried", evs: append(append(append(append([]*audit.Event{issue}, revoke("rev_A")...), notMade), revoke("rev_B")...), made), wantBy: "rev_B"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, _ := trace.NewIndex(trace.Options{})
			for _, l := range sealed(t, "chn_notmade", 0, tc.evs) {
				if err := x.AddLine(l); err != nil {
					t.Fatal(err)
				}
			}
			res, err := x.Lookup("accN")
			if err != nil {
				t.Fatal(err)
			}
			if res.Issuance.RevocationID != tc.wantBy || res.Issuance.RevokedAt.IsZero() != (tc.wantBy == "") {
				t.Errorf("Lookup() revoked_at=%v by %q, want by %q", res.Issuance.RevokedAt, res.Issuance.RevocationID, tc.wantBy)
			}
			rep, err := trace.BuildReport(trace.ReportInput{Now: at(2 * time.Minute), Events: x.Events()})
			if err != nil {
				t.Fatal(err)
			}
			var revoked, active int
			for _, w := range rep.Workloads {
				revoked, active = revoked+w.Revoked, active+w.Active
			}
			if want := map[bool]int{true: 0, false: 1}[tc.wantBy == ""]; revoked != want || active != 1-want {
				t.Errorf("report: revoked %d active %d, want revoked %d active %d", revoked, active, want, 1-want)
			}
		})
	}
}
