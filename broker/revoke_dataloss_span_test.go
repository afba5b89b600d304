package broker_test

import (
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
)

// TestRevocationCacheAnnouncedLossReachesBackPastRecordsMadeAfterFailover:
// as TestRevocationCacheAnnouncedLossReachesBackWhileRecordsAreMissing,
// but the failover took two minutes (no refresh ended meanwhile) and
// another instance made a revocation on the new primary before this one's
// first refresh after it. The write-back's first step, the last minute,
// then held that record only, found in the Store: the walk ended, and the
// records the replica lacked (created before the announced block) were
// never written back.
func TestRevocationCacheAnnouncedLossReachesBackPastRecordsMadeAfterFailover(t *testing.T) {
	f := newLossFixture(t)
	f.advance(10 * time.Minute)
	base := f.st.cur()
	lagged := f.putLagged(t, base, 4*time.Minute, 150*time.Second, 30*time.Second) // not on the replica
	// Another instance's block, announced, then lost with its record.
	f.c.Apply(broker.Notice{RevocationID: "rev_gone", Blocked: []string{"w9"}})
	// The failover: two minutes without a refresh.
	f.advance(2 * time.Minute)
	replica := f.failOverWithARecordMadeAfter(t)
	for _, r := range lagged {
		if _, err := replica.GetRevocation(f.ctx, r.ID); err != nil {
			t.Errorf("replica GetRevocation(%s, created %s ago) = %v; want it written back", r.ID, f.clock().Sub(r.CreatedAt).Round(time.Second), err)
		}
	}
}

// TestRevocationCacheAnnouncedLossWritesBackTheLostBlocksRecord: the lost
// announced block's own revocation record, read by a refresh before the
// failover, was created more than a minute before its notice reached
// this instance (the other instance's Revoke waited on its audit log and
// backends between its decision and its notice, or its clock is behind).
// The write-back's first step, from the minute before the notice, held
// only a record made on the new primary since, found there: the walk
// ended, and the record of the block written back was never written back.
func TestRevocationCacheAnnouncedLossWritesBackTheLostBlocksRecord(t *testing.T) {
	f := newLossFixture(t)
	f.advance(10 * time.Minute)
	if err := f.c.Refresh(f.ctx); err != nil { // the full read due
		t.Fatal(err)
	}
	base := f.st.cur()
	slow := &broker.Revocation{ID: "rev_slow", Selector: broker.RevokeSelector{Workload: "w9"}, Reason: "INC-9", Block: true,
		CreatedAt: f.clock().Add(-3 * time.Minute), Matched: 1, Revoked: []string{}, Pending: []string{"iss_w9"},
		Failed: []broker.RevokeFailure{}, Blocks: []string{"w9"}}
	if err := base.PutRevocation(f.ctx, slow); err != nil {
		t.Fatal(err)
	}
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil { // a listing of changed records reads rev_slow
		t.Fatal(err)
	}
	if err := base.PutBlock(f.ctx, broker.Block{Workload: "w9", Reason: "INC-9", RevocationID: "rev_slow", CreatedAt: slow.CreatedAt}); err != nil {
		t.Fatal(err)
	}
	f.c.Apply(broker.Notice{RevocationID: "rev_slow", Blocked: []string{"w9"}})
	// The failover: thirty seconds without a refresh; the replica lacks
	// rev_slow and its block.
	f.advance(30 * time.Second)
	replica := f.failOverWithARecordMadeAfter(t)
	if b, err := replica.GetBlock(f.ctx, "w9"); err != nil || b.RevocationID != "rev_slow" {
		t.Errorf("replica GetBlock(w9) = %+v, %v; want rev_slow's block written back", b, err)
	}
	if _, err := replica.GetRevocation(f.ctx, "rev_slow"); err != nil {
		t.Errorf("replica GetRevocation(rev_slow) = %v; want the record of the block written back with it", err)
	}
}

// failOverWithARecordMadeAfter swaps the Store for a replica holding the
// fixture's blocks and records (written ten times, so that its version
// does not go back) and rev_after, a revocation made on the new primary
// five seconds before, then refreshes each second for eight seconds and
// checks the loss was seen. It returns the replica.
func (f *lossFixture) failOverWithARecordMadeAfter(t *testing.T) *memstore.Store {
	t.Helper()
	replica := memstore.New(f.clock)
	for i := range f.revs {
		if err := replica.PutBlock(f.ctx, f.revsBlock(i)); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 {
		for _, r := range f.revs {
			if err := replica.PutRevocation(f.ctx, r); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Made on the new primary just before this instance's refresh.
	after := &broker.Revocation{ID: "rev_after", Selector: broker.RevokeSelector{IssuanceID: "iss_after"},
		Reason: "INC", CreatedAt: f.clock().Add(-5 * time.Second), Revoked: []string{"iss_after"}, Failed: []broker.RevokeFailure{}}
	if err := replica.PutRevocation(f.ctx, after); err != nil {
		t.Fatal(err)
	}
	f.st.swap(replica)
	for range 8 {
		f.advance(time.Second)
		if err := f.c.Refresh(f.ctx); err != nil {
			t.Fatal(err)
		}
	}
	if n := f.c.StoreLosses(); n < 1 {
		t.Fatalf("StoreLosses() = %d, want the loss seen", n)
	}
	return replica
}
