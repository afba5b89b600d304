package trace_test

import (
	"context"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/trace"
)

// Another instance revoked the issuance: its revoke event is in that
// instance's log, the mark in the shared store. The online trace over this
// instance's log must not show the issuance as active.
func TestLiveTraceShowsRevocationFromStore(t *testing.T) {
	dir := t.TempDir()
	evs := fixtureEvents()[:4] // the issue events only
	path := writeLines(t, dir, "audit.jsonl", sealed(t, "chn_a", 0, evs))
	revokedAt := at(time.Hour)
	st := &fakeStore{byID: map[string]*broker.Issuance{
		idB: {ID: idB, Workload: "payments-api", Grant: "stripe", Kind: broker.KindProxy, IssuedAt: at(2 * time.Second),
			ExpiresAt: at(10 * time.Minute), RevokedAt: revokedAt, RevocationID: "rev_OTHER"},
	}}
	live, err := trace.NewLive(trace.LiveOptions{Path: path, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	res, err := live.Trace(context.Background(), "jti-B")
	if err != nil {
		t.Fatal(err)
	}
	if res.From != trace.FromBoth {
		t.Fatalf("From = %q, want %q", res.From, trace.FromBoth)
	}
	if !res.Issuance.RevokedAt.Equal(revokedAt) || res.Issuance.RevocationID != "rev_OTHER" {
		t.Fatalf("Trace(jti-B) revoked_at=%v revocation_id=%q, want %v by rev_OTHER (from the store)", res.Issuance.RevokedAt, res.Issuance.RevocationID, revokedAt)
	}
}
