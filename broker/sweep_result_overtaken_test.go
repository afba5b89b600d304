package broker_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// firstResultFailsLate is a sink whose first revoke_result hangs until
// release is closed and then fails (a disk that hangs, then errors); every
// other event is recorded in rec.
type firstResultFailsLate struct {
	rec     *brokertest.Sink
	n       atomic.Int32
	release chan struct{}
}

func (s *firstResultFailsLate) Append(ctx context.Context, ev *audit.Event) error {
	if ev.Type == audit.TypeRevokeResult && s.n.Add(1) == 1 {
		<-s.release
		return errors.New("disk failed")
	}
	return s.rec.Append(ctx, ev)
}

// TestSweepResultFailedAfterLaterResultStarted: a sweep pass's
// revoke_result (naming its find under swept, the find left pending by its
// backend) hangs past AuditTimeout; the next pass ends the find, completes
// the record and starts its own result (by worker), queued behind the
// first. The first then fails, after the second took the retry state's
// swept ids (none yet), and the second is written. The worker's last
// result was written, so the entry was dropped and no revoke_result ever
// named the find under swept. A failed result's swept ids left over keep
// the entry until a result names them.
func TestSweepResultFailedAfterLaterResultStarted(t *testing.T) {
	f := newRevFixture(t, nil)
	is := f.issue(t, "payments")
	ctx := context.Background()
	rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: is.Workload}, "incident 44", broker.RevokeOptions{}, "req_r")
	if err != nil {
		t.Fatal(err)
	}
	late := putLate(t, f, is, rev)

	log := &firstResultFailsLate{rec: &brokertest.Sink{}, release: make(chan struct{})}
	var once sync.Once
	release := func() { once.Do(func() { close(log.release) }) }
	t.Cleanup(release)
	svc := restarted(t, f, log, func(d *broker.Deps) { d.AuditTimeout = time.Second })
	w, err := broker.NewRevocationWorker(svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}

	// Pass 1: the sweep finds late, its backend fails: pending, and the
	// result by sweep hangs.
	f.rv.setErr(errors.New("backend down"))
	f.advance(rev.SweepAt.Sub(f.clock()))
	_ = within(t, "sweep pass", func() error { return w.Tick(ctx) })
	got, err := f.store.GetRevocation(ctx, rev.ID)
	if err != nil || !cmp.Equal(got.Pending, []string{late.ID}) {
		t.Fatalf("record after the sweep pass: %+v, %v; want %s pending", got, err, late.ID)
	}

	// Pass 2: late ended, the record complete, its result queued.
	f.rv.setErr(nil)
	f.advance(time.Minute)
	_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	got, err = f.store.GetRevocation(ctx, rev.ID)
	if err != nil || got.CompletedAt.IsZero() {
		t.Fatalf("record after the retry pass: %+v, %v; want it complete", got, err)
	}

	// The first result fails; the second lands.
	release()
	deadline := time.Now().Add(10 * time.Second)
	for len(log.rec.Events()) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the second revoke_result not written 10s after the first failed")
		}
		time.Sleep(5 * time.Millisecond)
	}

	for i := 0; i < 5 && len(sweptResults(log.rec)) == 0; i++ {
		f.advance(time.Minute)
		_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	}
	res := sweptResults(log.rec)
	if len(res) != 1 || !cmp.Equal(res[0].Details["swept"], []string{late.ID}) {
		t.Fatalf("revoke_result events by sweep %v (events %v), want one naming swept [%s]", res, log.rec.Types(), late.ID)
	}
	// Written once: later passes write nothing more for it.
	n := len(log.rec.Events())
	f.advance(time.Minute)
	_ = within(t, "worker pass", func() error { return w.Tick(ctx) })
	if m := len(log.rec.Events()); m != n {
		t.Errorf("a later pass wrote %d more events (%v), want none", m-n, log.rec.Types())
	}
}
