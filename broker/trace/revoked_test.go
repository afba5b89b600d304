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
