package broker_test

import (
	"context"
	"errors"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// idRevoker fails for the ids in fail, succeeds for every other.
type idRevoker struct{ fail atomic.Pointer[string] }

func (r *idRevoker) Revoke(ctx context.Context, is *broker.Issuance) error {
	if f := r.fail.Load(); f != nil && *f == is.ID {
		return broker.Unavailable("vault_unavailable", time.Second, errors.New("connection refused"))
	}
	return nil
}

// TestWorkerStaleCopyResultOnlyLate: when its progress write fails, a
// worker pass writes its revoke_result from the copy of the record it read
// at the start, so an issuance another instance's sweep added meanwhile is
// missing from that event (it may even say 200, nothing pending, while the
// find is still pending). Checked here that this only makes the report
// late, never loses the issuance: the sweep's own revoke_result names it
// (swept, pending), the record keeps it pending (no writer settles an id
// it did not handle), and the pass that ends it writes a revoke_result
// listing it revoked, so trace and report, which take an issuance as
// revoked from any revoke_result listing it, see it.
func TestWorkerStaleCopyResultOnlyLate(t *testing.T) {
	ctx := context.Background()
	f, ds := newFaultFixture(t, false)
	// Instance B: the same store, its own revoker and audit log.
	pol, err := policies.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	bRevoker := &idRevoker{}
	bSink := &brokertest.Sink{}
	svcB, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return brokertest.Authn{} },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: &brokertest.Minter{}},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: bRevoker},
		Store:    f.mem,
		Audit:    bSink,
		Now:      f.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	wA, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	wB, err := broker.NewRevocationWorker(svcB, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}

	a := f.issue(t, "payments")
	f.rv.setErr(broker.Unavailable("vault_unavailable", time.Second, errors.New("connection refused")))
	rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "INC-70", broker.RevokeOptions{}, "req_1")
	if err != nil || !slices.Equal(rev.Pending, []string{a.ID}) || rev.SweepAt.IsZero() {
		t.Fatalf("Revoke() = %+v, %v; want %s pending, a sweep due", rev, err, a.ID)
	}
	f.rv.setErr(nil)
	b := f.issue(t, "payments") // issued as the revocation selected: the sweep's to find

	// A's pass retries a before the sweep is due; while its progress write
	// is under way, B's pass runs the sweep (finding b, whose backend call
	// fails on B) and ends a; then A's write fails.
	bRevoker.fail.Store(&b.ID)
	during := func() {
		f.mu.Lock()
		f.now = rev.SweepAt
		f.mu.Unlock()
		if err := wB.Tick(ctx); err != nil {
			t.Errorf("B's pass = %v", err)
		}
	}
	ds.during.Store(&during)
	ds.failUpdates(updateRefused, 1) // and then A's write fails
	if err := wA.Tick(ctx); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("A's pass = %v, want its progress write to fail", err)
	}

	results := func() []*audit.Event {
		var out []*audit.Event
		for _, ev := range append(f.sink.Events(), bSink.Events()...) {
			if ev.Type == "revoke_result" && ev.RevocationID == rev.ID {
				out = append(out, ev)
			}
		}
		return out
	}
	// A's event, from its copy, does not know b; B's sweep names it.
	last := lastResult(t, f, rev.ID)
	if revoked, _ := last.Details["revoked"].([]string); last.Details["by"] != "worker" || !slices.Equal(revoked, []string{a.ID}) {
		t.Fatalf("A's revoke_result: by %v, revoked %v; want the worker's from its copy, %s revoked (setup)", last.Details["by"], last.Details["revoked"], a.ID)
	}
	named := false
	for _, ev := range results() {
		if swept, _ := ev.Details["swept"].([]string); slices.Contains(swept, b.ID) {
			named = true
		}
	}
	if !named {
		t.Errorf("no revoke_result names %s, which the sweep found, under swept", b.ID)
	}
	stored, err := f.mem.GetRevocation(ctx, rev.ID)
	if err != nil || !slices.Equal(stored.Pending, []string{b.ID}) || !stored.CompletedAt.IsZero() {
		t.Fatalf("stored revocation after both passes: %+v, %v; want %s still pending", stored, err, b.ID)
	}

	// b's backend is back: the next pass ends b and its revoke_result says so.
	bRevoker.fail.Store(nil)
	f.advance(time.Minute)
	if err := wB.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	stored, err = f.mem.GetRevocation(ctx, rev.ID)
	if err != nil || !slices.Contains(stored.Revoked, b.ID) || stored.CompletedAt.IsZero() {
		t.Fatalf("stored revocation at the end: %+v, %v; want complete, %s revoked", stored, err, b.ID)
	}
	listed := false
	for _, ev := range results() {
		if revoked, _ := ev.Details["revoked"].([]string); slices.Contains(revoked, b.ID) {
			listed = true
		}
	}
	if !listed {
		t.Errorf("no revoke_result of %s lists %s revoked: trace and report would never see it revoked", rev.ID, b.ID)
	}
}
