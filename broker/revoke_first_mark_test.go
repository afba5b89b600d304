package broker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/trace"
)

// beforePutRevocation runs before once, ahead of the first PutRevocation.
type beforePutRevocation struct {
	broker.Store
	once   sync.Once
	before func()
}

func (b *beforePutRevocation) PutRevocation(ctx context.Context, r *broker.Revocation) error {
	b.once.Do(b.before)
	return b.Store.PutRevocation(ctx, r)
}

// TestTraceAndStoreNameDifferentFirstRevocation reproduces two revocations
// of one credential a few seconds apart while the first one's decision is
// held: instance A revokes the issuance at t0, its revoke event hangs
// (AuditTimeout), and before A stores its record and marks, instance B
// revokes the workload at t0+2s, its decision written at once and its mark
// stored first. The store's conditional mark keeps B's (the first mark
// written: revocation_id B, revoked_at B's decision); trace, over both
// logs, takes the earliest decided_at naming the issuance: A at t0. They
// name different revocations, as docs/SPEC-ADDITIONS.md says (the
// credential stopped working at B's mark; both revocations are listed).
func TestTraceAndStoreNameDifferentFirstRevocation(t *testing.T) {
	var clock func() time.Time
	now := func() time.Time { return clock() }
	logA := &clockSink{chain: audit.NewChain("instance-a"), now: now}
	sinkA := &heldClockSink{log: logA, release: make(chan struct{}), added: make(chan string, 64)}
	var once sync.Once
	release := func() { once.Do(func() { close(sinkA.release) }) }
	t.Cleanup(release)
	logB := &clockSink{chain: audit.NewChain("instance-b"), now: now}
	ctx := context.Background()
	var svcB *broker.Service
	var revB *broker.Revocation
	var errB error
	f := newRevFixtureDeps(t, func(f *revFixture, s broker.Store) broker.Store {
		return &beforePutRevocation{Store: s, before: func() {
			f.advance(2 * time.Second)
			revB, errB = svcB.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident 44", broker.RevokeOptions{}, "req_B")
		}}
	}, func(*brokertest.Sink) broker.AuditSink { return sinkA }, func(d *broker.Deps) { d.AuditTimeout = time.Second })
	clock = f.clock
	svcB = restarted(t, f, logB, func(d *broker.Deps) { d.Store = f.mem })
	is := f.issue(t, "payments")
	if typ := <-sinkA.added; typ != audit.TypeIssue {
		t.Fatalf("first event %s, want issue", typ)
	}
	err := within(t, "Revoke()", func() error {
		_, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "leaked", broker.RevokeOptions{}, "req_A")
		return err
	})
	var made *broker.RevocationMadeError
	if !errors.As(err, &made) {
		t.Fatalf("A's Revoke() = %v, want 503 audit_unavailable naming the revocation made", err)
	}
	if errB != nil || revB == nil {
		t.Fatalf("B's Revoke() = %+v, %v", revB, errB)
	}
	revA, err := f.store.GetRevocation(ctx, made.ID)
	if err != nil || !revA.CreatedAt.Before(revB.CreatedAt) {
		t.Fatalf("A's record %+v, %v; want it decided before B's (%v)", revA, err, revB.CreatedAt)
	}
	// A's log recovers a minute on: its decision, then its result.
	f.advance(time.Minute)
	release()
	for _, want := range []string{audit.TypeRevoke, audit.TypeRevokeResult} {
		select {
		case typ := <-sinkA.added:
			if typ != want {
				t.Fatalf("A's event %s, want %s", typ, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("A's %s not written 10s after its log recovered", want)
		}
	}

	stored, err := f.store.GetIssuance(ctx, is.ID)
	if err != nil {
		t.Fatal(err)
	}
	if stored.RevocationID != revB.ID || !stored.RevokedAt.Equal(revB.CreatedAt) {
		t.Fatalf("store: revoked by %s at %v, want %s (its mark written first) at %v", stored.RevocationID, stored.RevokedAt, revB.ID, revB.CreatedAt)
	}

	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range append(append([][]byte{}, logA.lines...), logB.lines...) {
		if err := x.AddLine(l); err != nil {
			t.Fatal(err)
		}
	}
	res, err := x.Lookup(is.ID)
	if err != nil {
		t.Fatal(err)
	}
	if res.Issuance.RevocationID != revA.ID || !res.Issuance.RevokedAt.Equal(revA.CreatedAt) {
		t.Errorf("trace: revoked by %s at %v, want %s (the earliest decided_at) at %v", res.Issuance.RevocationID, res.Issuance.RevokedAt, revA.ID, revA.CreatedAt)
	}
	var order []string
	for _, ev := range res.Revocations {
		if ev.Type == audit.TypeRevoke {
			order = append(order, ev.RevocationID)
		}
	}
	if len(order) != 2 || order[0] != revA.ID || order[1] != revB.ID {
		t.Errorf("trace: revoke events of %v, want %s then %s (by decided_at)", order, revA.ID, revB.ID)
	}
}
