package broker_test

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// What faultStore.UpdateRevocation does with the writes failUpdates names.
const (
	updateOK = iota
	// updateRefused: not applied, store_unavailable (Redis READONLY, or
	// out of memory with noeviction, still serving reads).
	updateRefused
	// updateUnreplicated: applied, then store_unreplicated (redisstore
	// with store.min_replicas and a replica down).
	updateUnreplicated
	// updateTimedOut: applied, then context.DeadlineExceeded (the answer
	// lost to the store timeout).
	updateTimedOut
	// updateLost: fn runs on the record as stored, then between runs
	// (another writer's write lands), and the write is not applied:
	// context.DeadlineExceeded (redisstore: the compare-and-set lost to
	// that write, and the store timeout ran out before its retry).
	updateLost
)

// What faultStore.MarkRevoked does (its mark field).
const (
	markOK           = iota
	markFails        // not applied: store_unavailable
	markUnreplicated // applied on the primary, then store_unreplicated
	// markRaced: another writer of the same revocation (the worker of
	// another instance, or the worker while Revoke still marks) stores its
	// mark a moment earlier, applied but not confirmed, and this call finds
	// it: a mark carrying the revocation's own id that this call did not
	// write.
	markRaced
)

// faultStore fronts the fixture's memstore for the revocation tests and
// fails or interposes on the calls they name: UpdateRevocation (counted)
// fails as failUpdates last said, with a hook run inside the next one;
// MarkRevoked as mark says, with a hook run before the next one;
// GetIssuance answers ErrNotFound for gone (an issuance past retention);
// GetRevocation fails while getFails is set.
// AcksReplicas says true with acks set (redisstore with
// store.min_replicas), the fronted store's answer otherwise (memstore:
// false).
type faultStore struct {
	broker.Store
	acks bool

	updates atomic.Int32 // UpdateRevocation calls
	mu      sync.Mutex
	update  int // what the next UpdateRevocation calls do (updateOK: nothing)
	left    int // how many calls update is for; negative: every one
	// during, when set, runs once inside the next UpdateRevocation, before
	// its write (another instance's pass while this one's write is under
	// way).
	during atomic.Pointer[func()]
	// between, when set, runs once inside the next updateLost write,
	// after fn ran, before the answer, or the next updateTimedOut write,
	// after it was applied, before the answer.
	between atomic.Pointer[func()]

	mark atomic.Int32 // markOK, markFails, markUnreplicated or markRaced
	// markFirst, when set, runs once before the next MarkRevoked.
	markFirst atomic.Pointer[func()]

	gone atomic.Pointer[string]
	// getFails makes GetRevocation fail (store_unavailable).
	getFails atomic.Bool
}

// newFaultFixture is newRevFixture over a faultStore; acks as in it.
func newFaultFixture(t *testing.T, acks bool) (*revFixture, *faultStore) {
	t.Helper()
	var fs *faultStore
	f := newRevFixture(t, func(_ *revFixture, st broker.Store) broker.Store {
		fs = &faultStore{Store: st, acks: acks}
		return fs
	})
	return f, fs
}

// secondInstance is instance B beside the fixture's service (A): a
// Service over store (the fixture's memstore, or a store fronting it) with
// the same policy and clock, and rv as its vault_token revoker. It returns
// B's audit log and a revocation worker for each instance.
func secondInstance(t *testing.T, f *revFixture, store broker.Store, rv broker.Revoker) (bSink *brokertest.Sink, wA, wB *broker.RevocationWorker) {
	t.Helper()
	pol, err := policies.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	bSink = &brokertest.Sink{}
	svcB, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return brokertest.Authn{} },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: &brokertest.Minter{}},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: rv},
		Store:    store,
		Audit:    bSink,
		Now:      f.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	wA, err = broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	wB, err = broker.NewRevocationWorker(svcB, broker.WorkerOptions{Interval: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return bSink, wA, wB
}

// revokeSweepDue issues once to payments-api and revokes the workload for
// incident: the revocation ends that issuance and leaves a sweep due.
func revokeSweepDue(t *testing.T, f *revFixture, incident string) *broker.Revocation {
	t.Helper()
	a := f.issue(t, "payments")
	rev, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{Workload: "payments-api"}, incident, broker.RevokeOptions{}, "req_1")
	if err != nil || !slices.Equal(rev.Revoked, []string{a.ID}) || rev.SweepAt.IsZero() {
		t.Fatalf("Revoke() = %+v, %v; want %s revoked, a sweep due", rev, err, a.ID)
	}
	return rev
}

// failUpdates makes the next n UpdateRevocation calls (every one from now
// on when n is negative) do what mode says; failUpdates(updateOK, 0) stops
// it.
func (s *faultStore) failUpdates(mode, n int) {
	s.mu.Lock()
	s.update, s.left = mode, n
	s.mu.Unlock()
}

// nextUpdate is what this UpdateRevocation call does.
func (s *faultStore) nextUpdate() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.left == 0:
		return updateOK
	case s.left > 0:
		s.left--
	}
	return s.update
}

func errUnreplicated() error {
	return broker.Unavailable(broker.ReasonStoreUnreplicated, time.Second, errors.New("0 of 1 replicas acknowledged"))
}

func errRefused() error {
	return broker.Unavailable("store_unavailable", time.Second, errors.New("READONLY You can't write against a read only replica"))
}

func (s *faultStore) UpdateRevocation(ctx context.Context, id string, fn func(*broker.Revocation) error) (*broker.Revocation, error) {
	s.updates.Add(1)
	if f := s.during.Swap(nil); f != nil {
		(*f)()
	}
	mode := s.nextUpdate()
	switch mode {
	case updateRefused:
		return nil, errRefused()
	case updateLost:
		r, err := s.Store.GetRevocation(ctx, id)
		if err != nil {
			return nil, err
		}
		if err := fn(r); err != nil {
			return nil, err
		}
		if f := s.between.Swap(nil); f != nil {
			(*f)()
		}
		return nil, context.DeadlineExceeded
	}
	r, err := s.Store.UpdateRevocation(ctx, id, fn)
	switch {
	case err != nil:
		return r, err
	case mode == updateUnreplicated:
		return nil, errUnreplicated()
	case mode == updateTimedOut:
		if f := s.between.Swap(nil); f != nil {
			(*f)()
		}
		return nil, context.DeadlineExceeded
	}
	return r, nil
}

func (s *faultStore) AcksReplicas() bool {
	if s.acks {
		return true
	}
	a, ok := s.Store.(broker.ReplicaAcker)
	return !ok || a.AcksReplicas()
}

func (s *faultStore) MarkRevoked(ctx context.Context, is *broker.Issuance) (*broker.Issuance, error) {
	if f := s.markFirst.Swap(nil); f != nil {
		(*f)()
	}
	switch s.mark.Load() {
	case markFails:
		return nil, broker.Unavailable("store_unavailable", time.Second, errors.New("connection refused"))
	case markUnreplicated:
		if _, err := s.Store.MarkRevoked(ctx, is); err != nil {
			return nil, err
		}
		return nil, errUnreplicated()
	case markRaced:
		other := *is
		other.RevokedAt = is.RevokedAt.Add(-time.Millisecond)
		if _, err := s.Store.MarkRevoked(ctx, &other); err != nil {
			return nil, err
		}
	}
	return s.Store.MarkRevoked(ctx, is)
}

func (s *faultStore) GetIssuance(ctx context.Context, id string) (*broker.Issuance, error) {
	if g := s.gone.Load(); g != nil && *g == id {
		return nil, broker.ErrNotFound
	}
	return s.Store.GetIssuance(ctx, id)
}

// markByOther stores issuance id as revoked by another revocation
// (rev_other), straight in the fixture's memstore. It reports with
// t.Error, not t.Fatal: it may run inside a store call on another
// goroutine.
func markByOther(t *testing.T, f *revFixture, id string) {
	t.Helper()
	is, err := f.mem.GetIssuance(context.Background(), id)
	if err != nil {
		t.Error(err)
		return
	}
	is.RevokedAt, is.RevocationID = f.clock(), "rev_other"
	if _, err := f.mem.MarkRevoked(context.Background(), is); err != nil {
		t.Error(err)
	}
}

func (s *faultStore) GetRevocation(ctx context.Context, id string) (*broker.Revocation, error) {
	if s.getFails.Load() {
		return nil, broker.Unavailable("store_unavailable", time.Second, errors.New("i/o timeout"))
	}
	return s.Store.GetRevocation(ctx, id)
}
