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

// TestRevocationCacheReblockNoticeReplacesBlock: an instance knows a
// workload's block (r1's: its reason, admin and time, read from the
// Store), then another revocation r2 blocks the workload again (its block
// record replaces r1's) and announces it. The block the instance answers
// from memory (FastReads: what Unblock reads and audits as blocked_by,
// block_reason, blocked_at) must be r2's, not r2's id with r1's reason,
// admin and time: the notice does not carry those, so they are left empty
// and the time is when the notice came, as for any block learned from a
// notice. It used to keep r1's fields under r2's id.
func TestRevocationCacheReblockNoticeReplacesBlock(t *testing.T) {
	ctx := context.Background()
	blockedAt := time.Date(2026, 11, 26, 11, 0, 0, 0, time.UTC)
	now := blockedAt.Add(time.Hour)
	clock := func() time.Time { return now }
	st := memstore.New(clock)
	if err := st.PutBlock(ctx, broker.Block{Workload: "w", Reason: "first incident", RevocationID: "rev_1", Admin: "alice", CreatedAt: blockedAt}); err != nil {
		t.Fatal(err)
	}
	c, err := broker.NewRevocationCache(st, broker.CacheOptions{Now: clock, FastReads: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	// Elsewhere: r2 blocks the workload again.
	if err := st.PutBlock(ctx, broker.Block{Workload: "w", Reason: "second incident", RevocationID: "rev_2", Admin: "bob", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	c.Apply(broker.Notice{RevocationID: "rev_2", Blocked: []string{"w"}})
	b, err := c.Store().GetBlock(ctx, "w")
	if err != nil {
		t.Fatalf("GetBlock() = %v", err)
	}
	want := broker.Block{Workload: "w", RevocationID: "rev_2", CreatedAt: now}
	if diff := cmp.Diff(want, *b); diff != "" {
		t.Errorf("block answered after r2's notice (-want +got):\n%s", diff)
	}
	// A notice of the block already known changes nothing.
	c.Apply(broker.Notice{RevocationID: "rev_2", Blocked: []string{"w"}})
	if err := c.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	c.Apply(broker.Notice{RevocationID: "rev_2", Blocked: []string{"w"}})
	if b, err := c.Store().GetBlock(ctx, "w"); err != nil || b.Reason != "second incident" || b.Admin != "bob" {
		t.Errorf("GetBlock() after a repeated notice of the stored block = %+v, %v; want r2's record", b, err)
	}
}
