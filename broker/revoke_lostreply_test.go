package broker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// lostReplyStore applies PutBlock and PutRevocation, then answers
// store_unavailable while its flag for them is set: the reply to a write
// the store made was lost (a timeout after Redis wrote it).
type lostReplyStore struct {
	broker.Store
	mu          sync.Mutex
	blocks, rec bool
}

func lostReply() error {
	return broker.Unavailable("store_unavailable", time.Second, errors.New("i/o timeout"))
}

func (s *lostReplyStore) PutBlock(ctx context.Context, b broker.Block) error {
	if err := s.Store.PutBlock(ctx, b); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.blocks {
		return lostReply()
	}
	return nil
}

func (s *lostReplyStore) PutRevocation(ctx context.Context, r *broker.Revocation) error {
	if err := s.Store.PutRevocation(ctx, r); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.rec {
		return lostReply()
	}
	return nil
}

// A block or revocation record that the store wrote but whose reply was
// lost is taken as written: the revocation goes on and answers made. It
// used to answer 503 "not made, nothing was revoked" (revoke_result
// not_made, which trace and report read as nothing revoked) while the
// block stood and the worker carried out the stored record.
func TestRevokeWriteWithLostReply(t *testing.T) {
	for _, tt := range []struct {
		name        string
		blocks, rec bool
	}{{"block", true, false}, {"record", false, true}} {
		t.Run(tt.name, func(t *testing.T) {
			var ls *lostReplyStore
			f := newRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
				ls = &lostReplyStore{Store: st, blocks: tt.blocks, rec: tt.rec}
				return ls
			})
			ctx := context.Background()
			is := f.issue(t, "payments")
			rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "INC-9", broker.RevokeOptions{Block: true}, "req_1")
			if err != nil {
				t.Fatalf("Revoke() with the reply lost = %v; want it made", err)
			}
			if len(rev.Revoked) != 1 || rev.Revoked[0] != is.ID {
				t.Errorf("revoked %v, want [%s]", rev.Revoked, is.ID)
			}
			if b, err := f.mem.GetBlock(ctx, "payments-api"); err != nil || b.RevocationID != rev.ID {
				t.Errorf("block = %+v, %v; want it in force, by %s", b, err, rev.ID)
			}
			for _, e := range f.sink.Events() {
				if e.Type == "revoke_result" && (e.Details["not_made"] == true || e.Outcome.Status != 200) {
					t.Errorf("revoke_result %+v %v; want 200, made", e.Outcome, e.Details)
				}
			}
		})
	}
}
