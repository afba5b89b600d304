package redisstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestRacingRevocationsFirstMarkWins: on a real Redis, two revocations
// select the same active issuance; the one that selected first ("late")
// is held at its audit write, before any mark, while the other ("early")
// marks and revokes it. Once "late" goes on, the issuance stays revoked
// by "early" at "early"'s time: the first mark stands (a conditional
// write). The mark used to be a plain overwrite of the record read at
// selection, so "late" took the issuance over.
func TestRacingRevocationsFirstMarkWins(t *testing.T) {
	ctx := context.Background()
	e := newRaceEnv(t, "{markrace}:")
	e.sink.typ = audit.TypeRevoke // hold the first revocation's decision
	x := <-e.exchange(ctx)
	if x.err != nil {
		t.Fatalf("Exchange() = %v", x.err)
	}
	is := x.res.Issuance

	type result struct {
		rev *broker.Revocation
		err error
	}
	lateDone := make(chan result, 1)
	go func() {
		rev, err := e.svc.Revoke(ctx, raceAdmin, broker.RevokeSelector{IssuanceID: is.ID}, "late", broker.RevokeOptions{}, "req_late")
		lateDone <- result{rev, err}
	}()
	e.sink.g.await(t, "the late revocation's audit write")
	e.clk.Set(e.start.Add(time.Second))
	early, err := e.svc.Revoke(ctx, raceAdmin, broker.RevokeSelector{Workload: "payments-api"}, "early", broker.RevokeOptions{}, "req_early")
	if err != nil {
		t.Fatalf("Revoke(early) = %v", err)
	}
	marked, err := e.st.GetIssuance(ctx, is.ID)
	if err != nil || marked.RevocationID != early.ID {
		t.Fatalf("issuance after the early revocation = %+v, %v; want revoked by %s", marked, err, early.ID)
	}
	e.clk.Set(e.start.Add(2 * time.Second))
	close(e.sink.g.open)
	late := <-lateDone
	if late.err != nil {
		t.Fatalf("Revoke(late) = %v", late.err)
	}

	got, err := e.st.GetIssuance(ctx, is.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.RevocationID != early.ID || !got.RevokedAt.Equal(marked.RevokedAt) {
		t.Errorf("issuance after both revocations: revoked by %s at %v; want the first mark, %s at %v (the late one is %s)",
			got.RevocationID, got.RevokedAt, early.ID, marked.RevokedAt, late.rev.ID)
	}
	for _, kind := range []broker.RefKind{broker.RefFingerprint, broker.RefAccessor} {
		v, _ := is.RefValue(kind)
		if found, err := e.st.FindIssuance(ctx, kind, v); err != nil || found.RevocationID != early.ID {
			t.Errorf("FindIssuance(%s) = %+v, %v; want revoked by %s", kind, found, err, early.ID)
		}
	}
}
