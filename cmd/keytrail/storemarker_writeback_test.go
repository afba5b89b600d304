package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/keytrail/keytrail/adapters/redisstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
)

// heldRevocationStore holds each PutRevocation (the write-back's) until
// release is closed, telling entered when one starts; it counts the
// completed full-read listings (ListRevocationPages).
type heldRevocationStore struct {
	*redisstore.Store
	mu      sync.Mutex
	hold    bool
	entered chan struct{}
	release chan struct{}
	pages   int
}

func (s *heldRevocationStore) PutRevocation(ctx context.Context, r *broker.Revocation) error {
	s.mu.Lock()
	hold := s.hold
	s.mu.Unlock()
	if hold {
		select {
		case s.entered <- struct{}{}:
		default:
		}
		<-s.release
	}
	return s.Store.PutRevocation(ctx, r)
}

func (s *heldRevocationStore) ListRevocationPages(ctx context.Context, f broker.RevocationFilter, page func([]*broker.Revocation) error) error {
	err := s.Store.ListRevocationPages(ctx, f, page)
	if err == nil {
		s.mu.Lock()
		s.pages++
		s.mu.Unlock()
	}
	return err
}

// TestStoreIDPutBackOnlyAfterWriteBack: after Redis loses its data
// (FLUSHALL) a running instance puts the store's deployment id back only
// once its revocation cache has written back what it knew, not while the
// write-back runs (100,000 records take some 17 s): an instance dying in
// between would leave Redis with the id, taken at every later start for
// the store it knew, and part of its data. (The id went back within a
// second of the loss, with the write-back held.) Real Redis.
func TestStoreIDPutBackOnlyAfterWriteBack(t *testing.T) {
	rd := harness.StartRedis(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rs, err := redisstore.New(ctx, redisstore.Options{URL: "redis://" + rd.Addr()})
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	id, err := rs.DeploymentID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r := &broker.Revocation{ID: "rev_1", Selector: broker.RevokeSelector{IssuanceID: "iss_1"}, Reason: "INC-1", CreatedAt: time.Now().UTC(),
		Matched: 1, Revoked: []string{"iss_1"}, Failed: []broker.RevokeFailure{}, CompletedAt: time.Now().UTC()}
	if err := rs.PutRevocation(ctx, r); err != nil {
		t.Fatal(err)
	}
	st := &heldRevocationStore{Store: rs, entered: make(chan struct{}, 1), release: make(chan struct{})}
	var releaseOnce sync.Once
	release := func() { releaseOnce.Do(func() { close(st.release) }) }
	defer release()
	log := slog.New(slog.DiscardHandler)
	tick := make(chan time.Time)
	rt := &brokerRuntime{store: st, reg: prometheus.NewRegistry(), log: log}
	defer func() {
		release() // a held write-back would hold the cache's Run
		for i := len(rt.closers) - 1; i >= 0; i-- {
			_ = rt.closers[i]()
		}
	}()
	path := filepath.Join(t.TempDir(), ".audit.jsonl.store")
	rt.keepStoreID = func(ctx context.Context, losses func() uint64) {
		rt.goBackground(ctx, func(ctx context.Context) error {
			return keepStoreID(ctx, tick, losses, rs, id, path, log)
		})
	}
	if _, err := rt.wireRevocationCache(ctx); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st.mu.Lock()
		read := st.pages > 0
		st.mu.Unlock()
		if read {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the revocation cache made no full read")
		}
		time.Sleep(10 * time.Millisecond)
	}
	st.mu.Lock()
	st.hold = true
	st.mu.Unlock()
	rdb := redis.NewClient(&redis.Options{Addr: rd.Addr()})
	defer rdb.Close()
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-st.entered: // the loss seen, rev_1's write-back held
	case <-time.After(30 * time.Second):
		t.Fatal("the cache did not start writing back rev_1 after FLUSHALL")
	}
	key := "{keytrail}:deployment"
	// Two ticks: the first one's pass has ended when the second is taken.
	tick <- time.Time{}
	tick <- time.Time{}
	if n, err := rdb.Exists(ctx, key).Result(); err != nil || n != 0 {
		t.Fatalf("Exists(%s) = %d, %v while the write-back is held; want the id not back yet", key, n, err)
	}
	release()
	for {
		tick <- time.Time{}
		n, err := rdb.Exists(ctx, key).Result()
		if err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline.Add(30 * time.Second)) {
			t.Fatalf("Exists(%s) = %d, %v after the write-back; want the id put back", key, n, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if got, err := rdb.Get(ctx, key).Result(); err != nil || got != id {
		t.Errorf("deployment id = %q, %v; want %s put back", got, err, id)
	}
	if _, err := rs.GetRevocation(ctx, "rev_1"); err != nil {
		t.Errorf("GetRevocation(rev_1) = %v; want it written back before the id", err)
	}
}
