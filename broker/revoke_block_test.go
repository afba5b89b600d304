package broker_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// A blocking revocation of a session blocks the session's workload even
// when the session holds no active credential any more: the admin escalates
// an earlier revocation of the session to a block, or its credentials have
// expired. Before, the block took only the workloads of the credentials it
// matched, so it blocked nothing and the workload went on getting
// credentials.
func TestRevokeSessionBlockWithoutActiveCredentials(t *testing.T) {
	for _, tc := range []struct {
		name   string
		before func(t *testing.T, f *revFixture, is *broker.Issuance)
	}{
		{name: "already-revoked", before: func(t *testing.T, f *revFixture, is *broker.Issuance) {
			if _, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{SessionID: is.SessionID}, "pod compromised", broker.RevokeOptions{}, "req_1"); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "expired", before: func(t *testing.T, f *revFixture, is *broker.Issuance) {
			f.advance(is.ExpiresAt.Sub(f.clock()) + time.Second)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newRevFixture(t, nil)
			ctx := context.Background()
			is := f.issue(t, "payments")
			f.issue(t, "batch") // another workload, another session
			tc.before(t, f, is)

			rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{SessionID: is.SessionID}, "block it too", broker.RevokeOptions{Block: true}, "req_2")
			if err != nil {
				t.Fatal(err)
			}
			if rev.Matched != 0 || !slices.Equal(rev.Blocks, []string{"payments-api"}) {
				t.Errorf("Revoke(session, block) = matched %d blocks %v, want matched 0 and payments-api blocked", rev.Matched, rev.Blocks)
			}
			f.advance(time.Second)
			_, err = f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
			if broker.AsError(err).Reason != "workload_blocked" {
				t.Errorf("Exchange() after the session's blocking revocation = %v, want workload_blocked", err)
			}
			if _, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "batch", Grant: "payments-vault"}); err != nil {
				t.Errorf("Exchange() of another workload = %v, want ok", err)
			}
		})
	}
}
