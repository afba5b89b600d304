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
	// acks is AcksReplicas: the store's writes wait for replicas
	// (store.min_replicas).
	acks bool
}

func (s *lostReplyStore) AcksReplicas() bool { return s.acks }

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

// With store.min_replicas, a record read back after its write's reply was
// lost is on the primary, but nothing confirmed that a replica has it: the
// write may have timed out before its WAIT, or in it. The revocation is
// then what a record the replicas did not confirm is (store_unreplicated,
// revoke_result unconfirmed, everything pending for the worker), not made
// and confirmed: it used to answer 200 with the record as exposed to a
// failover as an unconfirmed one. A block read back is confirmed by the
// record's acknowledged write after it (the store replicates in order).
func TestRevokeWriteWithLostReplyUnconfirmed(t *testing.T) {
	t.Run("record", func(t *testing.T) {
		f := newRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
			return &lostReplyStore{Store: st, rec: true, acks: true}
		})
		ctx := context.Background()
		is := f.issue(t, "payments")
		rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "INC-9", broker.RevokeOptions{Block: true}, "req_1")
		var be *broker.Error
		if !errors.As(err, &be) || rev != nil || be.Reason != broker.ReasonStoreUnreplicated {
			t.Fatalf("Revoke() with the record's reply lost, replicas required = %v, %v; want 503 %s", rev, err, broker.ReasonStoreUnreplicated)
		}
		evs := f.sink.Events()
		last := evs[len(evs)-1]
		if last.Type != "revoke_result" || last.Outcome.Status != 503 || last.Details["not_made"] != nil || last.Details["unconfirmed"] != true {
			t.Errorf("last event = %s %+v %v, want revoke_result 503, unconfirmed", last.Type, last.Outcome, last.Details)
		}
		if pending, _ := last.Details["pending"].([]string); len(pending) != 1 || pending[0] != is.ID {
			t.Errorf("revoke_result pending = %v, want [%s]: the worker finishes it", last.Details["pending"], is.ID)
		}
		if b, err := f.mem.GetBlock(ctx, "payments-api"); err != nil || b.RevocationID == "" {
			t.Errorf("block = %+v, %v; want it in force", b, err)
		}
	})
	t.Run("block", func(t *testing.T) {
		f := newRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
			return &lostReplyStore{Store: st, blocks: true, acks: true}
		})
		ctx := context.Background()
		is := f.issue(t, "payments")
		rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "INC-9", broker.RevokeOptions{Block: true}, "req_1")
		if err != nil || len(rev.Revoked) != 1 || rev.Revoked[0] != is.ID {
			t.Fatalf("Revoke() with a block's reply lost, replicas required = %+v, %v; want it made", rev, err)
		}
	})
}
