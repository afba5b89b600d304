package broker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// deadlineStore records the time left to each UpdateRevocation call.
type deadlineStore struct {
	broker.Store
	mu   sync.Mutex
	left []time.Duration
}

func (s *deadlineStore) UpdateRevocation(ctx context.Context, id string, fn func(*broker.Revocation) error) (*broker.Revocation, error) {
	if dl, ok := ctx.Deadline(); ok {
		s.mu.Lock()
		s.left = append(s.left, time.Until(dl))
		s.mu.Unlock()
	}
	return s.Store.UpdateRevocation(ctx, id, fn)
}

// TestLargeRecordUpdateTimeSizedByRecord: every update of a revocation
// record reads, decodes, encodes and writes it whole (one compare-and-set:
// the outcome of a pass lands at once or not at all); one naming 100,000
// issuances took 2.35 s on Redis, and was given the 2 s StoreTimeout, so
// the worker's progress write on it failed at every pass. It is now given
// time by the record's size (a smaller record here: the worker's pass over
// 100,000 takes 16 s with -race).
func TestLargeRecordUpdateTimeSizedByRecord(t *testing.T) {
	var ds *deadlineStore
	f := newRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
		ds = &deadlineStore{Store: st}
		return ds
	})
	ctx := context.Background()
	const n = 30_000
	w := largeRecordWorker(t, f, f.store, n)
	if err := w.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if len(ds.left) == 0 {
		t.Fatal("no record update")
	}
	// StoreTimeout is 2 s: the update of a record naming 30,000 issuances
	// gets 2 s more per 25,000 (4 s; 100,000: 10 s).
	if ds.left[0] < 3*time.Second {
		t.Errorf("the progress write of a %d-issuance record was given %v, want about 4 s", n, ds.left[0])
	}
}

// largeRecordWorker puts through put a revocation record naming n issuances,
// all pending and failed once (past retention: gone), moves f's clock a
// minute on, and returns a revocation worker on f.svc.
func largeRecordWorker(t *testing.T, f *revFixture, put broker.Store, n int) *broker.RevocationWorker {
	t.Helper()
	ctx := context.Background()
	pending := make([]string, n)
	failed := make([]broker.RevokeFailure, n)
	for i := range pending {
		pending[i] = broker.NewID(broker.PrefixIssuance) // past retention: gone
		failed[i] = broker.RevokeFailure{IssuanceID: pending[i], Error: "retrying"}
	}
	rev := &broker.Revocation{ID: broker.NewID(broker.PrefixRevocation), CreatedAt: f.clock(), Admin: "secops:alice", Reason: "incident",
		Selector: broker.RevokeSelector{Workload: "payments"}, Matched: n, Revoked: []string{}, Pending: pending, Failed: failed}
	if err := put.PutRevocation(ctx, rev); err != nil {
		t.Fatal(err)
	}
	f.advance(time.Minute)
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return w
}
