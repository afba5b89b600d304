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

// unreplicatedStore applies PutRevocation and PutBlock and then reports
// them unreplicated, as redisstore does when fewer replicas than
// store.min_replicas acknowledged the write.
type unreplicatedStore struct {
	broker.Store
	revocations, blocks, unblocks bool
}

func (s *unreplicatedStore) DeleteBlock(ctx context.Context, workload, revocationID string) error {
	if err := s.Store.DeleteBlock(ctx, workload, revocationID); err != nil || !s.unblocks {
		return err
	}
	return errUnreplicated()
}

func (s *unreplicatedStore) PutRevocation(ctx context.Context, r *broker.Revocation) error {
	if err := s.Store.PutRevocation(ctx, r); err != nil || !s.revocations {
		return err
	}
	return errUnreplicated()
}

func (s *unreplicatedStore) PutBlock(ctx context.Context, b broker.Block) error {
	if err := s.Store.PutBlock(ctx, b); err != nil || !s.blocks {
		return err
	}
	return errUnreplicated()
}

// TestRevokeRecordUnreplicated: a revocation record the store applied but
// could not confirm on its replicas (store.min_replicas) is made: the
// worker finishes it. The 503 and the revoke_result must say so (stored,
// unconfirmed, everything pending), not "not made, nothing revoked then or
// later" (not_made: true, which trace reads as "this revocation revoked
// nothing"), as they did when every store failure was taken for a write
// that did not happen.
func TestRevokeRecordUnreplicated(t *testing.T) {
	var us *unreplicatedStore
	f := newRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
		us = &unreplicatedStore{Store: st}
		return us
	})
	ctx := context.Background()
	is := f.issue(t, "payments")
	us.revocations = true

	rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "INC-10", broker.RevokeOptions{}, "req_1")
	var be *broker.Error
	if !errors.As(err, &be) || !errors.Is(err, broker.ErrUnavailable) || rev != nil {
		t.Fatalf("Revoke() with the record unreplicated = %v, %v; want nil, ErrUnavailable", rev, err)
	}
	if be.Reason != broker.ReasonStoreUnreplicated {
		t.Errorf("Revoke() with the record unreplicated: reason %q, want %s", be.Reason, broker.ReasonStoreUnreplicated)
	}
	if strings.Contains(be.Safe, "not made") || !strings.Contains(be.Safe, "stored") || !strings.Contains(be.Safe, "retry") {
		t.Errorf("the 503 says %q; want it to say the revocation is stored but unconfirmed, and to retry", be.Safe)
	}
	evs := f.sink.Events()
	last := evs[len(evs)-1]
	if last.Type != "revoke_result" || last.Outcome.Status != 503 || last.Details["not_made"] != nil || last.Details["unconfirmed"] != true {
		t.Errorf("last event = %s %+v %v, want revoke_result 503, unconfirmed, not not_made", last.Type, last.Outcome, last.Details)
	}
	if pending, _ := last.Details["pending"].([]string); !slices.Equal(pending, []string{is.ID}) {
		t.Errorf("revoke_result pending = %v, want [%s]: the worker finishes it", last.Details["pending"], is.ID)
	}

	// What the audit says is what happens: the worker finishes it.
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(time.Second) // the worker leaves a fresh revocation to its request for an interval
	if err := w.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.mem.GetIssuance(ctx, is.ID); got.RevokedAt.IsZero() || len(f.rv.Calls()) != 1 {
		t.Fatalf("after the worker: issuance revoked_at %v, backend calls %v; want it revoked", got.RevokedAt, f.rv.Calls())
	}
}

// TestRevokeBlockUnreplicated: a block the store applied but could not
// confirm is in force on the store: the 503 and blocks_in_force name it.
func TestRevokeBlockUnreplicated(t *testing.T) {
	var us *unreplicatedStore
	f := newRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
		us = &unreplicatedStore{Store: st}
		return us
	})
	ctx := context.Background()
	f.issue(t, "payments")
	us.blocks = true

	_, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "INC-11", broker.RevokeOptions{Block: true}, "req_1")
	if e := broker.AsError(err); !errors.Is(err, broker.ErrUnavailable) || !strings.Contains(e.Safe, "block of payments-api is in force") {
		t.Fatalf("Revoke() with the block unreplicated = %v (%q); want ErrUnavailable naming the block in force", err, e.Safe)
	}
	evs := f.sink.Events()
	last := evs[len(evs)-1]
	if inForce, _ := last.Details["blocks_in_force"].([]string); !slices.Equal(inForce, []string{"payments-api"}) {
		t.Errorf("revoke_result blocks_in_force = %v, want [payments-api]", last.Details["blocks_in_force"])
	}
	if b, err := f.mem.GetBlock(ctx, "payments-api"); err != nil || b == nil {
		t.Errorf("GetBlock(payments-api) = %v, %v; want the block stored", b, err)
	}
}

// TestUnblockUnreplicated: an unblock the store applied but could not
// confirm on its replicas is in force; its 503 must say so (reason
// store_unreplicated, "stored but not confirmed", what a retry answers),
// and its audit event too, not report a store failure; the retry, whose
// first try went through, answers 404 not_blocked saying so. (The 503 was
// a plain store_unavailable, "retry later", and the unblock event said the
// unblock failed while it was in force.)
func TestUnblockUnreplicated(t *testing.T) {
	var us *unreplicatedStore
	f := newRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
		us = &unreplicatedStore{Store: st}
		return us
	})
	ctx := context.Background()
	f.issue(t, "payments")
	if _, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "INC-12", broker.RevokeOptions{Block: true}, "req_1"); err != nil {
		t.Fatal(err)
	}
	us.unblocks = true

	err := f.svc.Unblock(ctx, secops, "payments-api", "resolved", "req_u1")
	e := broker.AsError(err)
	if !errors.Is(err, broker.ErrUnavailable) || e.Reason != broker.ReasonStoreUnreplicated {
		t.Fatalf("Unblock() with the delete unreplicated = %v (reason %q), want ErrUnavailable, reason %s", err, e.Reason, broker.ReasonStoreUnreplicated)
	}
	if !strings.Contains(e.Safe, "not confirmed") || !strings.Contains(e.Safe, "retry") || !strings.Contains(e.Safe, "404") {
		t.Errorf("the 503 says %q; want it to say the unblock is stored but not confirmed, and what a retry answers", e.Safe)
	}
	evs := f.sink.Events()
	last := evs[len(evs)-1]
	if last.Type != "unblock" || last.Outcome.Status != 503 || last.Outcome.Reason != broker.ReasonStoreUnreplicated || last.Details["unconfirmed"] != true {
		t.Errorf("last event = %s %+v %v, want unblock 503 store_unreplicated, unconfirmed", last.Type, last.Outcome, last.Details)
	}
	if _, err := f.mem.GetBlock(ctx, "payments-api"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("GetBlock(payments-api) = %v, want not found: the unblock is in force", err)
	}

	err = f.svc.Unblock(ctx, secops, "payments-api", "resolved", "req_u2")
	e = broker.AsError(err)
	if !errors.Is(err, broker.ErrNotFound) || e.Reason != "not_blocked" || !strings.Contains(e.Safe, "went through") {
		t.Errorf("the retry = %v (%q), want 404 not_blocked saying an earlier unblock went through", err, e.Safe)
	}
}
