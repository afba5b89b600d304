package main

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
)

// ackStore is a Store (and Notifier, as redisstore is) that says whether
// its writes wait for replicas.
type ackStore struct {
	*memstore.Store
	broker.Notifier
	acks bool
}

func (s ackStore) AcksReplicas() bool { return s.acks }

// plainStore hides memstore's ReplicaAcker: a Store that does not say.
type plainStore struct{ broker.Store }

// The server wraps its store in the metrics wrapper before the revocation
// flow sees it; the flow cannot unwrap that one, so the wrapper must pass
// on whether the store's writes wait for replicas (broker.ReplicaAcker),
// or a found mark is never revoked at once without store.min_replicas.
func TestWrapStoreKeepsReplicaAcker(t *testing.T) {
	m, err := newOpsMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name string
		st   broker.Store
		want bool
	}{
		{"memstore", memstore.New(time.Now), false},
		{"notifier without replica acks", ackStore{Store: memstore.New(time.Now), Notifier: memstore.NewNotifier(), acks: false}, false},
		{"notifier with replica acks", ackStore{Store: memstore.New(time.Now), Notifier: memstore.NewNotifier(), acks: true}, true},
		{"store that does not say", plainStore{memstore.New(time.Now)}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a, ok := m.wrapStore(c.st).(broker.ReplicaAcker)
			if !ok {
				t.Fatalf("wrapStore(%T) hides broker.ReplicaAcker", c.st)
			}
			if got := a.AcksReplicas(); got != c.want {
				t.Fatalf("AcksReplicas() = %v, want %v", got, c.want)
			}
		})
	}
}

// pagerStore lists revocations a page (of one) at a time, as redisstore
// does a page of the index at a time.
type pagerStore struct {
	*memstore.Store
	broker.Notifier
	pages *int
}

func (s pagerStore) ListRevocationPages(ctx context.Context, f broker.RevocationFilter, fn func([]*broker.Revocation) error) error {
	revs, err := s.ListRevocations(ctx, f)
	for _, r := range revs {
		if err == nil {
			*s.pages++
			err = fn([]*broker.Revocation{r})
		}
	}
	return err
}

// The revocation cache reads the wrapped store: the wrapper must pass on
// the store's paged listing (broker.RevocationPager), or the cache's full
// read holds the Window's decoded records all at once again; a store
// without one is listed as one page.
func TestWrapStoreKeepsRevocationPager(t *testing.T) {
	m, err := newOpsMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, paged := range []bool{true, false} {
		ms := memstore.New(time.Now)
		for _, id := range []string{"rev_1", "rev_2", "rev_3"} {
			if err := ms.PutRevocation(ctx, &broker.Revocation{ID: id, CreatedAt: time.Now().UTC()}); err != nil {
				t.Fatal(err)
			}
		}
		pages := 0
		var st broker.Store = ms
		if paged {
			st = pagerStore{Store: ms, Notifier: memstore.NewNotifier(), pages: &pages}
		}
		p, ok := m.wrapStore(st).(broker.RevocationPager)
		if !ok {
			t.Fatalf("wrapStore(%T) hides broker.RevocationPager", st)
		}
		var got, calls int
		if err := p.ListRevocationPages(ctx, broker.RevocationFilter{}, func(page []*broker.Revocation) error {
			got, calls = got+len(page), calls+1
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		wantCalls := 1
		if paged {
			wantCalls = 3
		}
		if got != 3 || calls != wantCalls || (paged && pages != 3) {
			t.Errorf("paged store %v: %d revocations in %d pages (the store's pages: %d), want 3 in %d", paged, got, calls, pages, wantCalls)
		}
	}
}
