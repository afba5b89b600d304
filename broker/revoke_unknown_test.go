package broker_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// A revocation of a workload or owner that neither the policy in force nor
// the store knows (a typo, a wrong case) is refused unless forced: before,
// it was accepted with matched 0 and, with block, blocked a name no
// workload has, while the admin believed the workload blocked. A name the
// store still knows (a workload removed from the policy, whose credentials
// may still be active) is accepted.
func TestRevokeUnknownWorkloadOrOwner(t *testing.T) {
	type want struct {
		reason  string   // the refusal's reason; "" = accepted
		similar string   // a name the refusal suggests
		blocks  []string // stored blocks when accepted
	}
	tests := []struct {
		name  string
		sel   broker.RevokeSelector
		force bool
		known *broker.Issuance // stored before the revocation
		want  want
	}{
		{name: "fail/unknown-workload", sel: broker.RevokeSelector{Workload: "paymnets-api"},
			want: want{reason: "unknown_workload"}},
		{name: "fail/workload-wrong-case", sel: broker.RevokeSelector{Workload: "Payments-API"},
			want: want{reason: "unknown_workload", similar: `"payments-api"`}},
		{name: "fail/unknown-owner", sel: broker.RevokeSelector{Owner: "team-paymnets"},
			want: want{reason: "unknown_owner"}},
		{name: "fail/owner-wrong-case", sel: broker.RevokeSelector{Owner: "Team-Data"},
			want: want{reason: "unknown_owner", similar: `"team-data"`}},
		{name: "ok/policy-workload-nothing-issued", sel: broker.RevokeSelector{Workload: "batch"},
			want: want{blocks: []string{"batch"}}},
		{name: "ok/policy-owner-nothing-issued", sel: broker.RevokeSelector{Owner: "team-data"},
			want: want{blocks: []string{"batch"}}},
		{name: "ok/unknown-workload-forced", sel: broker.RevokeSelector{Workload: "not-deployed-yet"}, force: true,
			want: want{blocks: []string{"not-deployed-yet"}}},
		{name: "ok/workload-gone-from-policy-known-to-store", sel: broker.RevokeSelector{Workload: "retired"},
			known: &broker.Issuance{Workload: "retired", Owner: "team-old"}, want: want{blocks: []string{"retired"}}},
		{name: "ok/owner-gone-from-policy-known-to-store", sel: broker.RevokeSelector{Owner: "team-old"},
			// No workload of the policy in force to block, none active.
			known: &broker.Issuance{Workload: "retired", Owner: "team-old"}, want: want{blocks: []string{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newRevFixture(t, nil)
			ctx := context.Background()
			if tt.known != nil {
				is := *tt.known
				// Expired: only the record says the name existed.
				is.ID, is.SessionID, is.Kind = broker.NewID(broker.PrefixIssuance), "ses_old", broker.KindVaultToken
				is.IssuedAt, is.ExpiresAt = f.clock().Add(-2*time.Hour), f.clock().Add(-time.Hour)
				if err := f.mem.PutIssuance(ctx, &is); err != nil {
					t.Fatal(err)
				}
			}
			n := len(f.sink.Events())
			rev, err := f.svc.Revoke(ctx, secops, tt.sel, "INC-7", broker.RevokeOptions{Block: true, Force: tt.force}, "req_1")
			blocks, _ := f.mem.ListBlocks(ctx)
			var blocked []string
			for _, b := range blocks {
				blocked = append(blocked, b.Workload)
			}
			revs, _ := f.mem.ListRevocations(ctx, broker.RevocationFilter{})
			if tt.want.reason != "" {
				e := broker.AsError(err)
				if !errors.Is(err, broker.ErrNotFound) || e.Reason != tt.want.reason {
					t.Fatalf("Revoke(%+v) = %v, %v; want ErrNotFound (%s)", tt.sel, rev, err, tt.want.reason)
				}
				if !strings.Contains(e.Safe, "in the policy in force and no issuance recorded") || !strings.Contains(e.Safe, "force") ||
					(tt.want.similar != "" && !strings.Contains(e.Safe, tt.want.similar)) {
					t.Errorf("refusal says %q; want it to name the policy, the store, force and %s", e.Safe, tt.want.similar)
				}
				if got := f.types(n); len(got) != 0 || len(blocked) != 0 || len(revs) != 0 {
					t.Errorf("a refused revocation left events %v, blocks %v, revocations %d; want none", got, blocked, len(revs))
				}
				return
			}
			if err != nil {
				t.Fatalf("Revoke(%+v) = %v, want accepted", tt.sel, err)
			}
			if rev.Matched != 0 || !slices.Equal(rev.Blocks, tt.want.blocks) || !slices.Equal(blocked, tt.want.blocks) {
				t.Errorf("Revoke(%+v) = matched %d blocks %v, stored blocks %v; want matched 0, blocks %v", tt.sel, rev.Matched, rev.Blocks, blocked, tt.want.blocks)
			}
			if ev := f.sink.Events()[n]; ev.Type != "revoke" || (ev.Details["force"] == true) != tt.force {
				t.Errorf("revoke event = %s %v; want force recorded iff forced (%v)", ev.Type, ev.Details, tt.force)
			}
		})
	}
}
