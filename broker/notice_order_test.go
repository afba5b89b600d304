package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
)

// TestRevocationCacheStaleUnblockNotice: an instance learns a workload's
// block (r1's), then the workload is unblocked and blocked again by r2, and
// the two notices reach it in either order. The unblock notice names r1,
// so it must not lift r2's block: the instance answers "blocked" (from
// memory, FastReads) whatever the order. It used to drop the workload's
// block on any unblock notice, and so answered "not blocked" until its next
// refresh when the re-block's notice came first. An unblock notice without
// a revocation id (an instance of the old format) still lifts the block.
func TestRevocationCacheStaleUnblockNotice(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	reblock := broker.Notice{RevocationID: "rev_2", Blocked: []string{"w"}}
	unblock1 := broker.Notice{RevocationID: "rev_1", Unblocked: []string{"w"}}
	tests := []struct {
		name    string
		notices []broker.Notice
		want    string // revocation id of the block answered; "" = not blocked
	}{
		{name: "ok/reblock-then-stale-unblock", notices: []broker.Notice{reblock, unblock1}, want: "rev_2"},
		{name: "ok/unblock-then-reblock", notices: []broker.Notice{unblock1, reblock}, want: "rev_2"},
		{name: "ok/stale-unblock-after-refresh-saw-reblock", notices: []broker.Notice{unblock1}, want: "rev_2"},
		{name: "ok/unblock-of-the-standing-block", notices: []broker.Notice{reblock, {RevocationID: "rev_2", Unblocked: []string{"w"}}}},
		{name: "compat/unblock-without-revocation-id", notices: []broker.Notice{reblock, {Unblocked: []string{"w"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := memstore.New(clock)
			if err := st.PutBlock(ctx, broker.Block{Workload: "w", RevocationID: "rev_1", CreatedAt: now}); err != nil {
				t.Fatal(err)
			}
			c, err := broker.NewRevocationCache(st, broker.CacheOptions{Now: clock, FastReads: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := c.Refresh(ctx); err != nil {
				t.Fatal(err)
			}
			// Elsewhere: r1's block lifted, r2 blocks again.
			if err := st.DeleteBlock(ctx, "w", "rev_1"); err != nil {
				t.Fatal(err)
			}
			if err := st.PutBlock(ctx, broker.Block{Workload: "w", RevocationID: "rev_2", CreatedAt: now}); err != nil {
				t.Fatal(err)
			}
			if tt.name == "ok/stale-unblock-after-refresh-saw-reblock" {
				if err := c.Refresh(ctx); err != nil {
					t.Fatal(err)
				}
			}
			for _, n := range tt.notices {
				c.Apply(n)
			}
			b, err := c.Store().GetBlock(ctx, "w")
			got := ""
			switch {
			case err == nil:
				got = b.RevocationID
			case !errors.Is(err, broker.ErrNotFound):
				t.Fatalf("GetBlock() = %v", err)
			}
			if got != tt.want {
				t.Errorf("GetBlock() after %+v: blocked by %q, want %q (\"\": not blocked)", tt.notices, got, tt.want)
			}
		})
	}
}

// TestUnblockNoticeNamesRevocation: Unblock announces the revocation whose
// block it lifted, which the receivers' caches compare with the block they
// know (TestRevocationCacheStaleUnblockNotice).
func TestUnblockNoticeNamesRevocation(t *testing.T) {
	ctx := context.Background()
	nf := memstore.NewNotifier()
	f := newRevFixture(t, func(f *revFixture, st broker.Store) broker.Store { return broker.WithNotifier(st, nf) })
	rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_1")
	if err != nil {
		t.Fatal(err)
	}
	notices, err := nf.Subscribe(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Unblock(ctx, secops, "payments-api", "false alarm", "req_2"); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-notices:
		if diff := cmp.Diff(broker.Notice{RevocationID: rev.ID, Unblocked: []string{"payments-api"}}, n); diff != "" {
			t.Errorf("unblock notice (-want +got):\n%s", diff)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("no unblock notice")
	}
}
