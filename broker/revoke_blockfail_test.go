package broker_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// failBlockStore fails PutBlock while fail is set.
type failBlockStore struct {
	broker.Store
	mu   sync.Mutex
	fail bool
}

func (s *failBlockStore) PutBlock(ctx context.Context, b broker.Block) error {
	s.mu.Lock()
	fail := s.fail
	s.mu.Unlock()
	if fail {
		return broker.Unavailable("store_unavailable", time.Second, errors.New("i/o timeout"))
	}
	return s.Store.PutBlock(ctx, b)
}

func (s *failBlockStore) setFail(v bool) { s.mu.Lock(); s.fail = v; s.mu.Unlock() }

// A blocking revocation whose block cannot be stored is not made: the
// caller gets 503 and nothing is revoked, now or later, so a retry makes it
// whole. Before, the revocation record was stored first and the call
// answered 503 anyway: the worker then revoked the credentials of a
// revocation the caller was told had failed (and does not know the id of),
// while the block was never stored and never retried, so the workload went
// on getting credentials and the sweep took the missing block for an
// unblock.
func TestRevokeBlockStoreFailure(t *testing.T) {
	var fs *failBlockStore
	f := newRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
		fs = &failBlockStore{Store: st}
		return fs
	})
	ctx := context.Background()
	is := f.issue(t, "payments")
	fs.setFail(true)

	rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "INC-9", broker.RevokeOptions{Block: true}, "req_1")
	if !errors.Is(err, broker.ErrUnavailable) || rev != nil {
		t.Fatalf("Revoke() with PutBlock failing = %v, %v; want nil, ErrUnavailable", rev, err)
	}
	if e := broker.AsError(err); !strings.Contains(e.Safe, "not made") || !strings.Contains(e.Safe, "retry") {
		t.Errorf("the 503 says %q; want it to say the revocation was not made and to retry", e.Safe)
	}
	evs := f.sink.Events()
	if last := evs[len(evs)-1]; last.Type != "revoke_result" || last.Outcome.Status != 503 || last.Details["not_made"] != true {
		t.Errorf("last event = %s %+v %v, want revoke_result 503, not_made", last.Type, last.Outcome, last.Details)
	}

	// Nothing done, and nothing left for the worker to do later.
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		f.advance(f.svc.SweepDelay())
		if err := w.Tick(ctx); err != nil {
			t.Fatal(err)
		}
	}
	revs, _ := f.mem.ListRevocations(ctx, broker.RevocationFilter{})
	got, _ := f.mem.GetIssuance(ctx, is.ID)
	if len(revs) != 0 || !got.RevokedAt.IsZero() || len(f.rv.Calls()) != 0 {
		t.Fatalf("after a 503: %d revocation(s) stored, issuance revoked_at %v, backend calls %v; want nothing done",
			len(revs), got.RevokedAt, f.rv.Calls())
	}

	// The retry the 503 asked for makes it whole.
	fs.setFail(false)
	rev, err = f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "INC-9", broker.RevokeOptions{Block: true}, "req_2")
	if err != nil || len(rev.Revoked) != 1 || rev.Revoked[0] != is.ID {
		t.Fatalf("retried Revoke() = %+v, %v; want %s revoked", rev, err, is.ID)
	}
	if b, err := f.mem.GetBlock(ctx, "payments-api"); err != nil || b.RevocationID != rev.ID {
		t.Errorf("block after the retry = %+v, %v; want it in force, by %s", b, err, rev.ID)
	}
}
