package main

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
)

// noticeStore is a memstore whose notice channel the test feeds: subscribed
// is closed once the revocation cache subscribes.
type noticeStore struct {
	*memstore.Store
	notices    chan broker.Notice
	subscribed chan struct{}
}

func (s *noticeStore) Publish(context.Context, broker.Notice) error { return nil }

func (s *noticeStore) Subscribe(context.Context) (<-chan broker.Notice, error) {
	close(s.subscribed) // once: the cache keeps its subscription
	return s.notices, nil
}

// gatheredValue is the value of the unlabelled metric name in reg (found:
// false when reg has no such metric).
func gatheredValue(t *testing.T, reg *prometheus.Registry, name string) (v float64, found bool) {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if c := m.GetCounter(); c != nil {
				return c.GetValue(), true
			}
		}
	}
	return 0, false
}

// TestNoticesRefusedMetric: the revocation cache's count of notice entries
// refused past its cap (RevocationCache.NoticesRefused) is exported as
// keytrail_revocation_notices_refused_total: 0 at start, and it moves when
// a notice names more revoked ids than the cap keeps (forged: no revocation
// in the store holds them). It was only counted and WARNed about.
func TestNoticesRefusedMetric(t *testing.T) {
	const name = "keytrail_revocation_notices_refused_total"
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &noticeStore{Store: memstore.New(time.Now), notices: make(chan broker.Notice, 1), subscribed: make(chan struct{})}
	reg := prometheus.NewRegistry()
	rt := &brokerRuntime{store: st, reg: reg, log: slog.New(slog.DiscardHandler)}
	defer func() {
		cancel()
		for i := len(rt.closers) - 1; i >= 0; i-- {
			_ = rt.closers[i]()
		}
	}()
	if _, err := rt.wireRevocationCache(ctx); err != nil {
		t.Fatal(err)
	}
	if v, ok := gatheredValue(t, reg, name); !ok || v != 0 {
		t.Fatalf("%s = %v (registered: %v) at start; want 0, registered", name, v, ok)
	}
	select {
	case <-st.subscribed:
	case <-time.After(30 * time.Second):
		t.Fatal("the revocation cache did not subscribe to notices")
	}
	// One notice naming 400,000 (the cap) + 3 ids no store read lists.
	const heardCap, over = 400_000, 3
	ids := make([]string, heardCap+over)
	for i := range ids {
		ids[i] = fmt.Sprintf("iss_forged%07d", i)
	}
	st.notices <- broker.Notice{RevocationID: "rev_forged", Revoked: ids}
	deadline := time.Now().Add(60 * time.Second)
	for {
		v, _ := gatheredValue(t, reg, name)
		if v == over {
			break
		}
		if v > over || time.Now().After(deadline) {
			t.Fatalf("%s = %v after a notice of %d forged ids; want %d (past the cap of %d)", name, v, heardCap+over, over, heardCap)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
