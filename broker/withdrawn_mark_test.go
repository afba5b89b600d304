package broker_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// revokeOnPutStore runs hook once, right after the first unrevoked issuance
// it stores (the exchange's record) is written and before PutIssuance
// returns: an admin revocation that reaches the brand-new issuance between
// the exchange's store write and its withdrawn mark.
type revokeOnPutStore struct {
	broker.Store
	once sync.Once
	hook func(is *broker.Issuance)
}

func (s *revokeOnPutStore) PutIssuance(ctx context.Context, is *broker.Issuance) error {
	if err := s.Store.PutIssuance(ctx, is); err != nil || !is.RevokedAt.IsZero() {
		return err
	}
	s.once.Do(func() { s.hook(is) })
	return nil
}

// TestWithdrawnMarkKeepsAdminRevocation: an exchange whose credential is not
// handed out after its issuance is stored (the issue event failed:
// audit_failed; the caller went away: client_gone) marks the issuance
// revoked. When an admin revocation marked it first, the record must keep
// that revocation's id and time, as its receipts and trace say. (The
// withdrawn mark was an unconditional PutIssuance: it overwrote the
// revocation's mark with one without a revocation id.)
func TestWithdrawnMarkKeepsAdminRevocation(t *testing.T) {
	for _, path := range []string{"audit_failed", "client_gone"} {
		t.Run(path, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var (
				rs     *revokeOnPutStore
				rev    *broker.Revocation
				revErr error
			)
			f := newRevFixtureAudit(t,
				func(f *revFixture, st broker.Store) broker.Store {
					rs = &revokeOnPutStore{Store: st, hook: func(is *broker.Issuance) {
						f.advance(1) // the revocation's mark is not the exchange's instant
						rev, revErr = f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID},
							"leaked", broker.RevokeOptions{}, "req_admin")
						f.advance(1)
						if path == "client_gone" {
							cancel() // the caller goes away while its issuance is recorded
						}
					}}
					return rs
				},
				func(s *brokertest.Sink) broker.AuditSink {
					if path == "audit_failed" {
						s.Fail = func(ev *audit.Event) bool { return ev.Type == audit.TypeIssue }
					}
					return s
				})

			res, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", RequestID: "req_x"})
			if e := broker.AsError(err); res != nil || !errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("Exchange() = %v, %v (reason %q); want no credential, ErrUnavailable", res, err, e.Reason)
			}
			if revErr != nil || rev == nil {
				t.Fatalf("the admin revocation in between = %v, %v", rev, revErr)
			}
			if len(rev.Revoked) != 1 {
				t.Fatalf("the admin revocation revoked %v, want the new issuance", rev.Revoked)
			}
			id := rev.Revoked[0]
			got, err := f.mem.GetIssuance(context.Background(), id)
			if err != nil {
				t.Fatal(err)
			}
			if got.RevocationID != rev.ID || !got.RevokedAt.Equal(rev.CreatedAt) {
				t.Errorf("stored issuance after the withdrawn mark: revoked by %q at %v; want the admin revocation's mark, %s at %v",
					got.RevocationID, got.RevokedAt, rev.ID, rev.CreatedAt)
			}
		})
	}
}
