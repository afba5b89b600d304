package broker_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// A revocation of an owner takes the credentials of the workloads the
// policy in force gives that owner, also those recorded at issue with
// another owner (the workload changed owners since), without a block too,
// in the first selection and in the sweep. Before, it selected by the
// owner recorded at issue only: such a credential was left active, and
// with a block only the sweep took it, 12 s later.
func TestRevokeOwnerCoversItsPolicyWorkloads(t *testing.T) {
	f := newRevFixture(t, nil)
	ctx := context.Background()
	// batch belongs to team-data in the policy in force; these credentials
	// were issued while it belonged to team-platform.
	moved := func(is *broker.Issuance) *broker.Issuance {
		c := *is
		c.Owner = "team-platform"
		if err := f.mem.PutIssuance(ctx, &c); err != nil {
			t.Fatal(err)
		}
		return &c
	}
	before := moved(f.issue(t, "batch"))
	pay := f.issue(t, "payments")

	rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Owner: "team-data"}, "team offboarded", broker.RevokeOptions{}, "req_1")
	if err != nil {
		t.Fatal(err)
	}
	if rev.Matched != 1 || !slices.Equal(rev.Revoked, []string{before.ID}) {
		t.Errorf("Revoke(owner team-data) = matched %d revoked %v; want %s (batch's, recorded under its former owner)", rev.Matched, rev.Revoked, before.ID)
	}

	// One that was minting when the revocation selected: stored later,
	// issued before it, recorded under the former owner. The sweep takes it.
	late := *before
	late.ID, late.RevokedAt, late.RevocationID = broker.NewID(broker.PrefixIssuance), time.Time{}, ""
	late.IssuedAt = rev.CreatedAt.Add(-time.Second)
	if err := f.mem.PutIssuance(ctx, &late); err != nil {
		t.Fatal(err)
	}
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(rev.SweepAt.Sub(f.clock()))
	if err := w.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	stored, err := f.svc.GetRevocation(ctx, rev.ID)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{before.ID, late.ID}
	if got := slices.Sorted(slices.Values(stored.Revoked)); !slices.Equal(got, slices.Sorted(slices.Values(want))) || stored.CompletedAt.IsZero() {
		t.Errorf("after the sweep revoked %v (completed %v); want %v", stored.Revoked, stored.CompletedAt, want)
	}
	if got, _ := f.mem.GetIssuance(ctx, pay.ID); !got.RevokedAt.IsZero() {
		t.Errorf("another owner's credential was revoked")
	}
}
