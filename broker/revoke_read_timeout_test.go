package broker_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// readDeadlineStore records the time left to each GetRevocation call and
// refuses every UpdateRevocation (a store that serves reads but refuses
// writes).
type readDeadlineStore struct {
	broker.Store
	mu   sync.Mutex
	left []time.Duration
}

func (s *readDeadlineStore) GetRevocation(ctx context.Context, id string) (*broker.Revocation, error) {
	if dl, ok := ctx.Deadline(); ok {
		s.mu.Lock()
		s.left = append(s.left, time.Until(dl))
		s.mu.Unlock()
	}
	return s.Store.GetRevocation(ctx, id)
}

func (s *readDeadlineStore) UpdateRevocation(context.Context, string, func(*broker.Revocation) error) (*broker.Revocation, error) {
	return nil, broker.Unavailable("store_unavailable", time.Second, nil)
}

// TestLargeRecordReadTimeSizedByRecord: the worker reads a revocation
// record whole after its progress write failed (to build its result from
// the record as stored), after a sweep write failed (was it applied?),
// and for a result owed on a complete record. Those reads were given the
// 2 s StoreTimeout whatever the record's size, while its updates get time
// by its size (a record naming 100,000 issuances took 2.35 s to update on
// Redis under load): on such a record every one of them timed out. They
// are now given the same time as an update of the record.
func TestLargeRecordReadTimeSizedByRecord(t *testing.T) {
	var ds *readDeadlineStore
	f := newRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
		ds = &readDeadlineStore{Store: st}
		return ds
	})
	ctx := context.Background()
	const n = 30_000
	w := largeRecordWorker(t, f, f.mem, n)
	_ = w.Tick(ctx) // its progress write refused
	ds.mu.Lock()
	defer ds.mu.Unlock()
	if len(ds.left) == 0 {
		t.Fatal("no record read after the failed progress write")
	}
	// StoreTimeout is 2 s: a record naming 30,000 issuances gets 2 s more
	// per 25,000 (4 s), as its update does.
	if ds.left[0] < 3*time.Second {
		t.Errorf("the read of a %d-issuance record was given %v, want about 4 s", n, ds.left[0])
	}
}
