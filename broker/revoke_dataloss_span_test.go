package broker_test

import (
	"fmt"
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
	var lagged []*broker.Revocation // not on the replica
	for i, ago := range []time.Duration{4 * time.Minute, 150 * time.Second, 30 * time.Second} {
		r := &broker.Revocation{ID: fmt.Sprintf("rev_lag_%d", i), Selector: broker.RevokeSelector{IssuanceID: fmt.Sprintf("iss_lag_%d", i)},
			Reason: "INC", CreatedAt: f.clock().Add(-ago), Revoked: []string{fmt.Sprintf("iss_lag_%d", i)}, Failed: []broker.RevokeFailure{}}
		if err := base.PutRevocation(f.ctx, r); err != nil {
			t.Fatal(err)
		}
		lagged = append(lagged, r)
	}
	f.advance(time.Second)
	if err := f.c.Refresh(f.ctx); err != nil {
		t.Fatal(err)
	}
	// Another instance's block, announced, then lost with its record.
	f.c.Apply(broker.Notice{RevocationID: "rev_gone", Blocked: []string{"w9"}})
	// The failover: two minutes without a refresh.
	f.advance(2 * time.Minute)
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
	for _, r := range lagged {
		if _, err := replica.GetRevocation(f.ctx, r.ID); err != nil {
			t.Errorf("replica GetRevocation(%s, created %s ago) = %v; want it written back", r.ID, f.clock().Sub(r.CreatedAt).Round(time.Second), err)
		}
	}
}
