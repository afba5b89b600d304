package broker_test

// Tests of the revocation sweep against writers that race it, on other
// instances (several Services over one memstore) and within one.

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// sweepClock is a clock the test moves.
type sweepClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *sweepClock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *sweepClock) Set(t time.Time) { c.mu.Lock(); c.now = t; c.mu.Unlock() }
func (c *sweepClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// switchRevoker mints like brokertest.Minter; its Revoke fails while err is
// set, records only successful calls, and runs hook (once) at its first call.
type switchRevoker struct {
	brokertest.Minter
	mu   sync.Mutex
	err  error
	ok   []string
	hook func()
}

func (r *switchRevoker) Revoke(ctx context.Context, is *broker.Issuance) error {
	r.mu.Lock()
	h := r.hook
	r.hook = nil
	r.mu.Unlock()
	if h != nil {
		h()
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil {
		return r.err
	}
	r.ok = append(r.ok, is.ID)
	return nil
}

func (r *switchRevoker) setErr(err error) { r.mu.Lock(); r.err = err; r.mu.Unlock() }
func (r *switchRevoker) setHook(h func()) { r.mu.Lock(); r.hook = h; r.mu.Unlock() }
func (r *switchRevoker) revoked() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.ok)
}

var errVaultDown = broker.Unavailable("vault_unavailable", time.Second, errors.New("connection refused"))

// newSweepSvc is a Service over st; tokens "pod1" and "pod2" are two
// sessions (pods) of payments-api.
// newSweepEnv is the usual set-up: a clock at 2026-11-26 12:00 UTC, a
// memstore on it, a switchable revoker and a Service over them.
func newSweepEnv(t *testing.T) (*sweepClock, *memstore.Store, *switchRevoker, *broker.Service) {
	t.Helper()
	clk := &sweepClock{now: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	mem := memstore.New(clk.Now)
	mr := &switchRevoker{}
	return clk, mem, mr, newSweepSvc(t, clk, mem, mr)
}

func newSweepSvc(t *testing.T, clk *sweepClock, st broker.Store, mr *switchRevoker) *broker.Service {
	t.Helper()
	pol, err := policies.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	pod := func(uid string) *broker.Identity {
		return identity("system:serviceaccount:payments:api", map[string]any{
			"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": uid}},
		})
	}
	authn := brokertest.Authn{"pod1": pod("pod-1"), "pod2": pod("pod-2")}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: mr},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: mr},
		Store:    st,
		Audit:    &brokertest.Sink{},
		Now:      clk.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func exchangeAs(t *testing.T, svc *broker.Service, token string) *broker.Issuance {
	t.Helper()
	res, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: token, Grant: "payments-vault"})
	if err != nil {
		t.Fatalf("Exchange(%s) = %v", token, err)
	}
	return res.Issuance
}

func newTestWorker(t *testing.T, svc *broker.Service) *broker.RevocationWorker {
	t.Helper()
	w, err := broker.NewRevocationWorker(svc, broker.WorkerOptions{Interval: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// TestRevokeUnblockTimeSurvivesStaleWriter: Unblock records its time on the
// revocation while another writer works from a copy read before it
// (Revoke's step-5 progress write; the worker's retry of a pending backend
// revocation). The unblock time must survive that writer, so that the
// sweep leaves the credential the workload got after the unblock. (Found in
// review: the writer put back its whole copy without Unblocked, and the
// sweep, cut off at sweep_at instead, revoked that credential.)
func TestRevokeUnblockTimeSurvivesStaleWriter(t *testing.T) {
	for _, tc := range []struct {
		name   string
		worker bool // unblock while the worker retries (else: while Revoke calls the backend)
	}{
		{"during-revoke-backend-call", false},
		{"during-worker-retry", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clk, mem, mr, svc := newSweepEnv(t)
			w := newTestWorker(t, svc)
			exchangeAs(t, svc, "pod1")
			clk.Add(time.Second)
			unblock := func() {
				if err := svc.Unblock(ctx, secops, "payments-api", "false alarm", "req_u"); err != nil {
					t.Errorf("Unblock() = %v", err)
				}
			}
			if tc.worker {
				mr.setErr(errVaultDown)
			} else {
				mr.setHook(unblock)
			}
			rev, err := svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_r")
			if err != nil {
				t.Fatal(err)
			}
			if tc.worker {
				mr.setErr(nil)
				mr.setHook(unblock)
				clk.Set(rev.CreatedAt.Add(2 * time.Second))
				if err := w.Tick(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if _, err := mem.GetBlock(ctx, "payments-api"); !errors.Is(err, broker.ErrNotFound) {
				t.Fatalf("GetBlock() = %v; want unblocked", err)
			}
			// After the unblock and past the 2 s of clock skew the scope allows.
			clk.Set(rev.CreatedAt.Add(4 * time.Second))
			later := exchangeAs(t, svc, "pod1")
			clk.Set(rev.SweepAt)
			if err := w.Tick(ctx); err != nil {
				t.Fatal(err)
			}
			stored, _ := mem.GetRevocation(ctx, rev.ID)
			got, _ := mem.GetIssuance(ctx, later.ID)
			if !got.Active(clk.Now()) {
				t.Errorf("credential issued 3 s after the unblock was revoked by the sweep of %s (record's unblocked = %v)",
					got.RevocationID, stored.Unblocked)
			}
		})
	}
}

// hookStore runs a hook (once) right after a ListRevocations or
// GetRevocation read, or right before an UpdateRevocation: another instance
// acting between this one's read of a revocation record and its write of
// it. (An UpdateRevocation that another write races is retried on top of
// that write, which is what the hook before it shows.) It has no unwrap,
// so the Service's records() reads through it.
type hookStore struct {
	broker.Store
	mu           sync.Mutex
	afterList    func()
	afterGetRv   func()
	beforeUpdate func()
}

func (s *hookStore) take(p *func()) func() {
	s.mu.Lock()
	defer s.mu.Unlock()
	h := *p
	*p = nil
	return h
}

func (s *hookStore) ListRevocations(ctx context.Context, f broker.RevocationFilter) ([]*broker.Revocation, error) {
	revs, err := s.Store.ListRevocations(ctx, f)
	if h := s.take(&s.afterList); h != nil {
		h()
	}
	return revs, err
}

func (s *hookStore) UpdateRevocation(ctx context.Context, id string, fn func(*broker.Revocation) error) (*broker.Revocation, error) {
	if h := s.take(&s.beforeUpdate); h != nil {
		h()
	}
	return s.Store.UpdateRevocation(ctx, id, fn)
}

func (s *hookStore) GetRevocation(ctx context.Context, id string) (*broker.Revocation, error) {
	r, err := s.Store.GetRevocation(ctx, id)
	if h := s.take(&s.afterGetRv); h != nil {
		h()
	}
	return r, err
}

// noBlocks is an instance whose (stale) cache has not learned the block.
type noBlocks struct{ broker.Store }

func (noBlocks) GetBlock(ctx context.Context, w string) (*broker.Block, error) {
	return nil, broker.ErrNotFound
}

// TestRevokeSweptCredentialSurvivesStaleWriter: the sweep grows a
// revocation's Pending list after its creation. Instance A's sweep stores
// the late credential as pending, marks it, and its backend call fails
// (Vault down). Then a writer that read the record before the sweep writes
// its change: instance B's worker, whose pass listed the revocation just
// before A swept; an Unblock; Revoke's own progress write when its backend
// calls outlast SweepDelay. The late id must stay pending until it is
// revoked at its backend. (Found in review: each of them wrote back its
// whole older copy, the id left Pending, and no later sweep could find it,
// since it selected only active issuances and the mark made it inactive:
// the revocation completed while the Vault token was never revoked.)
func TestRevokeSweptCredentialSurvivesStaleWriter(t *testing.T) {
	for _, tc := range []string{"second-worker", "unblock", "revoke-past-sweep-delay"} {
		t.Run(tc, func(t *testing.T) {
			ctx := context.Background()
			clk := &sweepClock{now: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
			mem := memstore.New(clk.Now)
			rvA, rvB := &switchRevoker{}, &switchRevoker{}
			svcA := newSweepSvc(t, clk, mem, rvA)
			hs := &hookStore{Store: mem}
			svcB := newSweepSvc(t, clk, hs, rvB)
			stale := newSweepSvc(t, clk, noBlocks{mem}, &switchRevoker{})
			wA, wB := newTestWorker(t, svcA), newTestWorker(t, svcB)
			// finish: Vault is back and the workers go on for a few minutes;
			// the late credential must have been revoked at its backend.
			finish := func(t *testing.T, revID string, late *broker.Issuance) {
				t.Helper()
				rvA.setErr(nil)
				rvB.setErr(nil)
				for range 10 {
					clk.Add(30 * time.Second)
					_ = wA.Tick(ctx)
					_ = wB.Tick(ctx)
				}
				r, _ := mem.GetRevocation(ctx, revID)
				if !slices.Contains(rvA.revoked(), late.ID) && !slices.Contains(rvB.revoked(), late.ID) {
					t.Errorf("swept credential %s never revoked at the backend; revocation: revoked %v pending %v sweep_at %v completed_at %v",
						late.ID, r.Revoked, r.Pending, r.SweepAt, r.CompletedAt)
				}
				if !slices.Contains(r.Revoked, late.ID) || len(r.Pending) != 0 || r.CompletedAt.IsZero() {
					t.Errorf("revocation at the end: revoked %v pending %v completed_at %v; want %s revoked and the revocation complete",
						r.Revoked, r.Pending, r.CompletedAt, late.ID)
				}
			}

			sweepA := func(revID string, late *broker.Issuance) {
				if err := wA.Tick(ctx); err != nil {
					t.Errorf("A's Tick() = %v", err)
				}
				if r, _ := mem.GetRevocation(ctx, revID); !slices.Contains(r.Pending, late.ID) {
					t.Errorf("after A's sweep: pending %v; want %s (setup)", r.Pending, late.ID)
				}
			}
			if tc == "revoke-past-sweep-delay" {
				// B revokes; its backend call outlasts SweepDelay, while a
				// stale instance issues a credential and A's sweep takes it.
				exchangeAs(t, svcB, "pod2")
				var late *broker.Issuance
				rvB.setHook(func() {
					clk.Add(2800 * time.Millisecond)
					late = exchangeAs(t, stale, "pod1")
					rvA.setErr(errVaultDown)
					revs, err := mem.ListRevocations(ctx, broker.RevocationFilter{Pending: true})
					if err != nil || len(revs) != 1 {
						t.Errorf("ListRevocations() = %v, %v; want the one revocation", revs, err)
						return
					}
					clk.Set(revs[0].SweepAt)
					sweepA(revs[0].ID, late)
				})
				rev, err := svcB.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_r")
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Contains(rev.Pending, late.ID) {
					t.Errorf("Revoke() pending = %v, want the swept %s", rev.Pending, late.ID)
				}
				finish(t, rev.ID, late)
				return
			}

			rev, err := svcA.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_r")
			if err != nil {
				t.Fatal(err)
			}
			clk.Add(2800 * time.Millisecond)
			late := exchangeAs(t, stale, "pod1") // issued on an instance that had not learned the block

			rvA.setErr(errVaultDown)
			rvB.setErr(errVaultDown)
			clk.Set(rev.SweepAt)
			switch tc {
			case "second-worker":
				hs.afterList = func() { sweepA(rev.ID, late) }
				if err := wB.Tick(ctx); err != nil {
					t.Fatal(err)
				}
			case "unblock":
				// After Unblock's read of the record, or before its update.
				var once sync.Once
				hs.afterGetRv = func() { once.Do(func() { sweepA(rev.ID, late) }) }
				hs.afterList, hs.beforeUpdate = hs.afterGetRv, hs.afterGetRv
				if err := svcB.Unblock(ctx, secops, "payments-api", "resolved", "req_u"); err != nil {
					t.Fatal(err)
				}
			}
			finish(t, rev.ID, late)
		})
	}
}

// TestRevokeSweepFindsMarkedIssuanceTheRecordLost: an issuance stored as
// revoked by a revocation that the record lists neither as revoked nor as
// pending (a record write lost, as every record write was before
// UpdateRevocation) is found again by the sweep and ended at its backend,
// though it is no longer active.
func TestRevokeSweepFindsMarkedIssuanceTheRecordLost(t *testing.T) {
	ctx := context.Background()
	clk, mem, mr, svc := newSweepEnv(t)
	a := exchangeAs(t, svc, "pod1")
	clk.Add(time.Minute)
	mr.setErr(errVaultDown)
	rev, err := svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_r")
	if err != nil || !slices.Contains(rev.Pending, a.ID) {
		t.Fatalf("Revoke() = %+v, %v; want %s pending", rev, err, a.ID)
	}
	// The record loses the id; the issuance stays marked.
	lost, err := mem.GetRevocation(ctx, rev.ID)
	if err != nil {
		t.Fatal(err)
	}
	lost.Pending, lost.Failed = nil, []broker.RevokeFailure{}
	if err := mem.PutRevocation(ctx, lost); err != nil {
		t.Fatal(err)
	}
	if got, _ := mem.GetIssuance(ctx, a.ID); got.RevocationID != rev.ID {
		t.Fatalf("issuance %s marked by %q, want %s (setup)", a.ID, got.RevocationID, rev.ID)
	}
	mr.setErr(nil)
	clk.Set(rev.SweepAt)
	if err := newTestWorker(t, svc).Tick(ctx); err != nil {
		t.Fatal(err)
	}
	r, _ := mem.GetRevocation(ctx, rev.ID)
	if !slices.Contains(mr.revoked(), a.ID) || !slices.Contains(r.Revoked, a.ID) || r.CompletedAt.IsZero() {
		t.Errorf("after the sweep: backend revoked %v, record revoked %v pending %v completed_at %v; want %s revoked and the revocation complete",
			mr.revoked(), r.Revoked, r.Pending, r.CompletedAt, a.ID)
	}
}

// TestRevokeSweepLeavesOtherSessionsOfABlockedWorkload: a revocation of one
// session (or one issuance) with block ends that session's credentials and
// blocks new issuance; the workload's other credentials, issued well before
// the revocation, are not selected (Revoke leaves them active), and the
// sweep leaves them too, while it still takes what an instance that had not
// learned the block issued to the workload after the revocation. (Found in
// review: the sweep took every active credential of the blocked workload,
// which is not "the credentials minted while it ran".)
func TestRevokeSweepLeavesOtherSessionsOfABlockedWorkload(t *testing.T) {
	for _, tc := range []struct {
		name string
		sel  func(a *broker.Issuance) broker.RevokeSelector
	}{
		{"session-with-block", func(a *broker.Issuance) broker.RevokeSelector { return broker.RevokeSelector{SessionID: a.SessionID} }},
		{"issuance-with-block", func(a *broker.Issuance) broker.RevokeSelector { return broker.RevokeSelector{IssuanceID: a.ID} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			clk, mem, mr, svc := newSweepEnv(t)
			stale := newSweepSvc(t, clk, noBlocks{mem}, &switchRevoker{})
			a := exchangeAs(t, svc, "pod1")
			clk.Add(time.Minute)
			b := exchangeAs(t, svc, "pod2") // another session, a minute before the revocation
			if a.SessionID == b.SessionID {
				t.Fatal("want two sessions")
			}
			clk.Add(time.Minute)
			rev, err := svc.Revoke(ctx, secops, tc.sel(a), "pod-1 compromised", broker.RevokeOptions{Block: true}, "req_r")
			if err != nil || rev.Matched != 1 {
				t.Fatalf("Revoke() = %+v, %v; want only pod-1's credential matched", rev, err)
			}
			if got, _ := mem.GetIssuance(ctx, b.ID); !got.Active(clk.Now()) {
				t.Fatalf("Revoke took %s", b.ID)
			}
			clk.Add(2 * time.Second)
			late := exchangeAs(t, stale, "pod2") // on an instance that had not learned the block
			clk.Set(rev.SweepAt)
			if err := newTestWorker(t, svc).Tick(ctx); err != nil {
				t.Fatal(err)
			}
			got, _ := mem.GetIssuance(ctx, b.ID)
			if !got.Active(clk.Now()) || slices.Contains(mr.revoked(), b.ID) {
				t.Errorf("pod-2's credential, issued 1 min before the revocation of %v and not matched by it, "+
					"was revoked by the sweep (revoked_at %v by %q; backend revoked %v)", tc.sel(a), got.RevokedAt, got.RevocationID, mr.revoked())
			}
			if got, _ := mem.GetIssuance(ctx, late.ID); got.RevocationID != rev.ID || !slices.Contains(mr.revoked(), late.ID) {
				t.Errorf("credential issued to the blocked workload 2 s after the revocation: revoked by %q (backend revoked %v); want swept by %s",
					got.RevocationID, mr.revoked(), rev.ID)
			}
		})
	}
}

// TestUnblockNotedOnEveryBlockingRevocation: after a second blocking
// revocation of the same workload the block record names only the second
// (PutBlock overwrites it). Unblock must still note its time on the first,
// whose sweep is due too, so that neither sweep takes what the workload got
// after the unblock. (Found in review: Unblock noted it on the revocation
// the block named alone, and the first revocation's sweep, block gone and
// no unblock time, took everything up to its sweep_at.)
func TestUnblockNotedOnEveryBlockingRevocation(t *testing.T) {
	ctx := context.Background()
	clk, mem, _, svc := newSweepEnv(t)
	w := newTestWorker(t, svc)
	r1, err := svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_1")
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Second)
	r2, err := svc.Revoke(ctx, secops, broker.RevokeSelector{Owner: "team-payments"}, "incident, whole team", broker.RevokeOptions{Block: true}, "req_2")
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Second)
	if err := svc.Unblock(ctx, secops, "payments-api", "resolved", "req_u"); err != nil {
		t.Fatal(err)
	}
	clk.Set(r2.CreatedAt.Add(4 * time.Second)) // 3 s after the unblock, past both scopes' skew
	later := exchangeAs(t, svc, "pod1")
	for _, at := range []time.Time{r1.SweepAt, r2.SweepAt} {
		clk.Set(at)
		if err := w.Tick(ctx); err != nil {
			t.Fatal(err)
		}
	}
	got, _ := mem.GetIssuance(ctx, later.ID)
	if !got.Active(clk.Now()) {
		s1, _ := mem.GetRevocation(ctx, r1.ID)
		s2, _ := mem.GetRevocation(ctx, r2.ID)
		t.Errorf("credential issued 3 s after the unblock revoked by %s (r1 %s unblocked=%v, r2 %s unblocked=%v)",
			got.RevocationID, r1.ID, s1.Unblocked, r2.ID, s2.Unblocked)
	}
}

// TestUnblockKeepsFirstUnblockTime: a workload blocked by r1, unblocked,
// blocked again by r2 and unblocked again: r1 keeps the first unblock time,
// so r1's sweep leaves the credential the workload got while it was
// unblocked in between.
func TestUnblockKeepsFirstUnblockTime(t *testing.T) {
	ctx := context.Background()
	clk, mem, _, svc := newSweepEnv(t)
	r1, err := svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_1")
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Second)
	first := clk.Now()
	if err := svc.Unblock(ctx, secops, "payments-api", "false alarm", "req_u1"); err != nil {
		t.Fatal(err)
	}
	clk.Add(2 * time.Second)
	between := exchangeAs(t, svc, "pod1") // unblocked, past r1's 2 s of skew
	clk.Add(time.Second)
	pod2 := exchangeAs(t, svc, "pod2")
	if _, err := svc.Revoke(ctx, secops, broker.RevokeSelector{SessionID: pod2.SessionID}, "pod-2 this time", broker.RevokeOptions{Block: true}, "req_2"); err != nil {
		t.Fatal(err)
	}
	clk.Add(time.Second)
	if err := svc.Unblock(ctx, secops, "payments-api", "resolved", "req_u2"); err != nil {
		t.Fatal(err)
	}
	stored, _ := mem.GetRevocation(ctx, r1.ID)
	if got := stored.Unblocked["payments-api"]; !got.Equal(first) {
		t.Errorf("%s unblocked = %v, want the first unblock %v", r1.ID, got, first)
	}
	clk.Set(r1.SweepAt)
	if err := newTestWorker(t, svc).Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := mem.GetIssuance(ctx, between.ID); got.RevocationID == r1.ID {
		t.Errorf("credential issued while the workload was unblocked was swept by %s", r1.ID)
	}
}

// TestSweepKeepsUnblockBeforeReblock: r1 blocks payments-api, is
// unblocked, and the workload gets a credential; then r2, a revocation of
// another session, blocks it again before r1's sweep runs. r1's sweep
// finds a block standing, but it is r2's, made after the recorded unblock:
// the credential the workload got while unblocked is neither r1's (issued
// after its unblock) nor r2's (issued long before r2, by another session).
// (The sweep took it: a standing block made it ignore r1's recorded
// unblock, whoever's block it was.)
func TestSweepKeepsUnblockBeforeReblock(t *testing.T) {
	ctx := context.Background()
	clk, mem, _, svc := newSweepEnv(t)
	w := newTestWorker(t, svc)
	start := clk.Now()
	r1, err := svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_1")
	if err != nil {
		t.Fatal(err)
	}
	clk.Set(start.Add(time.Second))
	if err := svc.Unblock(ctx, secops, "payments-api", "false alarm", "req_u"); err != nil {
		t.Fatal(err)
	}
	clk.Set(start.Add(3 * time.Second)) // past r1's 2 s of skew
	between := exchangeAs(t, svc, "pod1")
	clk.Set(start.Add(12 * time.Second))
	pod2 := exchangeAs(t, svc, "pod2")
	clk.Set(start.Add(12500 * time.Millisecond)) // more than inFlight after between
	r2, err := svc.Revoke(ctx, secops, broker.RevokeSelector{SessionID: pod2.SessionID}, "pod-2 this time", broker.RevokeOptions{Block: true}, "req_2")
	if err != nil || len(r2.Blocks) != 1 {
		t.Fatalf("Revoke(session of pod2, block) = %+v, %v; want payments-api blocked", r2, err)
	}
	for _, at := range []time.Time{r1.SweepAt.Add(time.Second), r2.SweepAt} {
		clk.Set(at)
		if err := w.Tick(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, id := range []string{r1.ID, r2.ID} {
		if got, _ := mem.GetRevocation(ctx, id); got.CompletedAt.IsZero() {
			t.Fatalf("%s not complete after its sweep", id)
		}
	}
	if got, _ := mem.GetIssuance(ctx, between.ID); !got.Active(clk.Now()) {
		t.Errorf("credential issued while payments-api was unblocked (%v, unblock at %v, re-block at %v) revoked by %s (r1 %s, r2 %s); want it left alone",
			between.IssuedAt, start.Add(time.Second), r2.CreatedAt, got.RevocationID, r1.ID, r2.ID)
	}
}

// failDeleteBlockStore fails every DeleteBlock (a Redis blip during an
// unblock, after it recorded its time on the revocations).
type failDeleteBlockStore struct{ broker.Store }

func (failDeleteBlockStore) DeleteBlock(context.Context, string, string) error {
	return broker.Unavailable("store_unavailable", time.Second, errors.New("connection reset"))
}

// TestSweepFailedUnblockStillTakes: an unblock that recorded its time and
// then failed to delete the block leaves the revocation's own block
// standing; the sweep must not read the recorded time as an unblock that
// held: what the workload got meanwhile (here a record an instance stored
// without having learned the block) is still the revocation's.
func TestSweepFailedUnblockStillTakes(t *testing.T) {
	ctx := context.Background()
	clk, mem, mr, _ := newSweepEnv(t)
	svc := newSweepSvc(t, clk, failDeleteBlockStore{mem}, mr)
	start := clk.Now()
	r1, err := svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_1")
	if err != nil {
		t.Fatal(err)
	}
	clk.Set(start.Add(time.Second))
	if err := svc.Unblock(ctx, secops, "payments-api", "false alarm", "req_u"); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Unblock() with DeleteBlock failing = %v, want ErrUnavailable", err)
	}
	if stored, _ := mem.GetRevocation(ctx, r1.ID); stored.Unblocked["payments-api"].IsZero() {
		t.Fatalf("%s records no unblock time; the test needs one", r1.ID)
	}
	late := &broker.Issuance{ID: "iss_late", Workload: "payments-api", Owner: "team-payments", SessionID: "pod-9",
		Grant: "payments-vault", Kind: broker.KindVaultToken, IssuedAt: start.Add(4 * time.Second), ExpiresAt: start.Add(time.Hour),
		Refs: broker.CredentialRefs{Fingerprint: "sha256:late", Accessor: "acc-late"}}
	if err := mem.PutIssuance(ctx, late); err != nil {
		t.Fatal(err)
	}
	clk.Set(r1.SweepAt.Add(time.Second))
	if err := newTestWorker(t, newSweepSvc(t, clk, mem, mr)).Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := mem.GetIssuance(ctx, late.ID); got.RevocationID != r1.ID {
		t.Errorf("credential issued while %s's block stood (its unblock failed): revocation %q, want swept by %s", r1.ID, got.RevocationID, r1.ID)
	}
}
