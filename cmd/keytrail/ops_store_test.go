package main

import (
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
