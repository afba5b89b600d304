package broker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// fakeRevoker records calls, fails while err is set, and snapshots what was
// durable at the moment of each call.
type fakeRevoker struct {
	mu     sync.Mutex
	err    error
	calls  []string
	before func(is *broker.Issuance) // run at each call
}

func (r *fakeRevoker) Revoke(ctx context.Context, is *broker.Issuance) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, is.ID)
	if r.before != nil {
		r.before(is)
	}
	return r.err
}

func (r *fakeRevoker) setErr(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
}

func (r *fakeRevoker) Calls() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

type revFixture struct {
	svc   *broker.Service
	store broker.Store
	mem   *memstore.Store
	sink  *brokertest.Sink
	rv    *fakeRevoker
	mu    sync.Mutex
	now   time.Time
}

func (f *revFixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *revFixture) advance(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = f.now.Add(d)
}

var secops = &broker.Admin{Name: "secops", Identity: broker.IdentityRef{Iss: "https://sso.example", Sub: "alice"}, Roles: []string{"revoke"}}

// newRevFixture is a Service over a memstore whose vault_token revocations
// go to a fakeRevoker. wrap, when set, wraps the store the Service sees.
func newRevFixture(t *testing.T, wrap func(*revFixture, broker.Store) broker.Store) *revFixture {
	t.Helper()
	return newRevFixtureAudit(t, wrap, nil)
}

// newRevFixtureAudit is newRevFixture whose Service writes its audit events
// to auditWrap(f.sink) when auditWrap is set.
func newRevFixtureAudit(t *testing.T, wrap func(*revFixture, broker.Store) broker.Store, auditWrap func(*brokertest.Sink) broker.AuditSink) *revFixture {
	t.Helper()
	return newRevFixtureDeps(t, wrap, auditWrap, nil)
}

// newRevFixtureDeps is newRevFixtureAudit whose Service's Deps deps (when
// set) changes first.
func newRevFixtureDeps(t *testing.T, wrap func(*revFixture, broker.Store) broker.Store, auditWrap func(*brokertest.Sink) broker.AuditSink, deps func(*broker.Deps)) *revFixture {
	t.Helper()
	pol, err := policies.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	f := &revFixture{sink: &brokertest.Sink{}, rv: &fakeRevoker{}, now: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}
	f.mem = memstore.New(f.clock)
	f.store = f.mem
	if wrap != nil {
		f.store = wrap(f, f.mem)
	}
	authn := brokertest.Authn{
		"payments": identity("system:serviceaccount:payments:api", map[string]any{
			"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}},
		}),
		"batch": identity("system:serviceaccount:data:batch", nil),
	}
	var sink broker.AuditSink = f.sink
	if auditWrap != nil {
		sink = auditWrap(f.sink)
	}
	d := broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: &brokertest.Minter{}},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: f.rv},
		Store:    f.store,
		Audit:    sink,
		Now:      f.clock,
	}
	if deps != nil {
		deps(&d)
	}
	svc, err := broker.NewService(d)
	if err != nil {
		t.Fatal(err)
	}
	f.svc = svc
	return f
}

// issue exchanges token and moves the clock past the rate limit.
func (f *revFixture) issue(t *testing.T, token string) *broker.Issuance {
	t.Helper()
	res, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: token, Grant: "payments-vault"})
	if err != nil {
		t.Fatalf("Exchange(%s) = %v", token, err)
	}
	f.advance(time.Second)
	return res.Issuance
}

func (f *revFixture) types(from int) []string { return f.sink.Types()[from:] }

func TestRevoke(t *testing.T) {
	type want struct {
		matched  int
		revoked  []string // by fixture name: p1, p2, b1
		events   []string
		blocks   []string
		kind     error
		reason   string
		unmarked []string // issuances that must stay active
	}
	tests := []struct {
		name   string
		sel    func(m map[string]*broker.Issuance) broker.RevokeSelector
		reason string
		block  bool
		want   want
	}{
		{name: "ok/issuance", sel: func(m map[string]*broker.Issuance) broker.RevokeSelector {
			return broker.RevokeSelector{IssuanceID: m["p1"].ID}
		}, reason: "leaked in a log", want: want{matched: 1, revoked: []string{"p1"}, events: []string{"revoke", "revoke_result"}, unmarked: []string{"p2", "b1"}}},
		{name: "ok/session", sel: func(m map[string]*broker.Issuance) broker.RevokeSelector {
			return broker.RevokeSelector{SessionID: m["p1"].SessionID}
		}, reason: "pod compromised", want: want{matched: 2, revoked: []string{"p1", "p2"}, events: []string{"revoke", "revoke_result"}, unmarked: []string{"b1"}}},
		{name: "ok/workload-with-block", sel: func(m map[string]*broker.Issuance) broker.RevokeSelector {
			return broker.RevokeSelector{Workload: "payments-api"}
		}, reason: "incident 42", block: true, want: want{matched: 2, revoked: []string{"p1", "p2"}, events: []string{"revoke", "block", "revoke_result"}, blocks: []string{"payments-api"}, unmarked: []string{"b1"}}},
		{name: "ok/owner-blocks-its-workloads", sel: func(m map[string]*broker.Issuance) broker.RevokeSelector {
			return broker.RevokeSelector{Owner: "team-data"}
		}, reason: "team offboarded", block: true, want: want{matched: 1, revoked: []string{"b1"}, events: []string{"revoke", "block", "revoke_result"}, blocks: []string{"batch"}, unmarked: []string{"p1", "p2"}}},
		{name: "fail/unknown-workload", sel: func(m map[string]*broker.Issuance) broker.RevokeSelector {
			return broker.RevokeSelector{Workload: "ghost"}
		}, reason: "precaution", block: true, want: want{kind: broker.ErrNotFound, reason: "unknown_workload", unmarked: []string{"p1", "p2", "b1"}}},
		{name: "fail/no-selector", sel: func(m map[string]*broker.Issuance) broker.RevokeSelector {
			return broker.RevokeSelector{}
		}, reason: "x", want: want{kind: broker.ErrInvalidRequest, reason: "bad_selector", unmarked: []string{"p1", "p2", "b1"}}},
		{name: "fail/two-selectors", sel: func(m map[string]*broker.Issuance) broker.RevokeSelector {
			return broker.RevokeSelector{Workload: "payments-api", Owner: "team-payments"}
		}, reason: "x", want: want{kind: broker.ErrInvalidRequest, reason: "bad_selector", unmarked: []string{"p1", "p2", "b1"}}},
		{name: "fail/missing-reason", sel: func(m map[string]*broker.Issuance) broker.RevokeSelector {
			return broker.RevokeSelector{Workload: "payments-api"}
		}, reason: "  ", want: want{kind: broker.ErrInvalidRequest, reason: "missing_reason", unmarked: []string{"p1", "p2", "b1"}}},
		{name: "fail/control-chars-in-reason", sel: func(m map[string]*broker.Issuance) broker.RevokeSelector {
			return broker.RevokeSelector{Workload: "payments-api"}
		}, reason: "a\nb", want: want{kind: broker.ErrInvalidRequest, reason: "bad_reason", unmarked: []string{"p1", "p2", "b1"}}},
		{name: "fail/bad-issuance-prefix", sel: func(m map[string]*broker.Issuance) broker.RevokeSelector {
			return broker.RevokeSelector{IssuanceID: "use_123"}
		}, reason: "x", want: want{kind: broker.ErrInvalidRequest, reason: "bad_selector", unmarked: []string{"p1", "p2", "b1"}}},
		{name: "fail/unknown-issuance", sel: func(m map[string]*broker.Issuance) broker.RevokeSelector {
			return broker.RevokeSelector{IssuanceID: "iss_01NOPE"}
		}, reason: "x", want: want{kind: broker.ErrNotFound, reason: "unknown_issuance", unmarked: []string{"p1", "p2", "b1"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newRevFixture(t, nil)
			m := map[string]*broker.Issuance{"p1": f.issue(t, "payments"), "p2": f.issue(t, "payments"), "b1": f.issue(t, "batch")}
			names := map[string]string{}
			for k, v := range m {
				names[v.ID] = k
			}
			n := len(f.sink.Events())
			rev, err := f.svc.Revoke(context.Background(), secops, tt.sel(m), tt.reason, broker.RevokeOptions{Block: tt.block}, "req_1")
			if tt.want.kind != nil {
				if !errors.Is(err, tt.want.kind) || broker.AsError(err).Reason != tt.want.reason {
					t.Fatalf("Revoke() = %v, %v; want %v (%s)", rev, err, tt.want.kind, tt.want.reason)
				}
				if got := f.types(n); len(got) != 0 {
					t.Errorf("events after a refused revoke = %v, want none", got)
				}
			} else {
				if err != nil {
					t.Fatalf("Revoke() error = %v", err)
				}
				var got []string
				for _, id := range rev.Revoked {
					got = append(got, names[id])
				}
				slices.Sort(got)
				if diff := cmp.Diff(tt.want.revoked, got); diff != "" {
					t.Errorf("Revoke().Revoked (-want +got):\n%s", diff)
				}
				if rev.Matched != tt.want.matched || len(rev.Pending) != 0 || len(rev.Failed) != 0 {
					t.Errorf("Revoke() = matched %d pending %v failed %v; want matched %d, all done",
						rev.Matched, rev.Pending, rev.Failed, tt.want.matched)
				}
				// A revocation of one issuance is complete at once; one of
				// a session, workload or owner (or with a block) once its
				// sweep has run.
				sweep := tt.sel(m).IssuanceID == "" || tt.block
				if wantSweep := rev.CreatedAt.Add(f.svc.SweepDelay()); sweep != !rev.SweepAt.IsZero() || sweep == !rev.CompletedAt.IsZero() ||
					(sweep && !rev.SweepAt.Equal(wantSweep)) {
					t.Errorf("Revoke() = sweep_at %v completed %v; want sweep %v (at %v)", rev.SweepAt, rev.CompletedAt, sweep, wantSweep)
				}
				if diff := cmp.Diff(tt.want.events, f.types(n)); diff != "" {
					t.Errorf("audit events (-want +got):\n%s", diff)
				}
				ev := f.sink.Events()[n]
				if ev.Admin != "secops:alice" || ev.RevocationID != rev.ID || ev.Reason != tt.reason || ev.RequestID != "req_1" {
					t.Errorf("revoke event = %+v, want admin secops:alice, revocation %s, reason %q", ev, rev.ID, tt.reason)
				}
				if sweep {
					// The sweep finds nothing more (and must not take the
					// credentials the revocation did not select), completes
					// the revocation and writes no event.
					w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: 2 * time.Second})
					if err != nil {
						t.Fatal(err)
					}
					f.advance(rev.SweepAt.Sub(f.clock()))
					events := len(f.sink.Events())
					if err := w.Tick(context.Background()); err != nil {
						t.Fatal(err)
					}
					if got := f.sink.Types()[events:]; len(got) != 0 {
						t.Errorf("events of a sweep that found nothing = %v, want none", got)
					}
				}
				stored, err := f.mem.GetRevocation(context.Background(), rev.ID)
				if err != nil || !cmp.Equal(stored.Revoked, rev.Revoked) || stored.CompletedAt.IsZero() || !stored.SweepAt.IsZero() || stored.Matched != tt.want.matched {
					t.Errorf("stored revocation = %+v, %v; want it complete", stored, err)
				}
				for _, name := range tt.want.revoked {
					is, _ := f.mem.GetIssuance(context.Background(), m[name].ID)
					if is.RevokedAt.IsZero() || is.RevocationID != rev.ID {
						t.Errorf("issuance %s: revoked_at %v by %q, want marked by %s", name, is.RevokedAt, is.RevocationID, rev.ID)
					}
				}
			}
			for _, name := range tt.want.unmarked {
				is, _ := f.mem.GetIssuance(context.Background(), m[name].ID)
				if !is.RevokedAt.IsZero() {
					t.Errorf("issuance %s revoked, want untouched", name)
				}
			}
			blocks, _ := f.mem.ListBlocks(context.Background())
			var got []string
			for _, b := range blocks {
				got = append(got, b.Workload)
			}
			if diff := cmp.Diff(tt.want.blocks, got); diff != "" {
				t.Errorf("blocks (-want +got):\n%s", diff)
			}
		})
	}
}

// The revoke event, the stored revocation and the issuance mark all exist
// before any backend call is made.
func TestRevokeDurableFirst(t *testing.T) {
	f := newRevFixture(t, nil)
	is := f.issue(t, "payments")
	type seen struct {
		events  []string
		marked  bool
		pending []string
	}
	var at []seen
	f.rv.before = func(x *broker.Issuance) {
		got, _ := f.mem.GetIssuance(context.Background(), x.ID)
		revs, _ := f.mem.ListRevocations(context.Background(), broker.RevocationFilter{})
		var pending []string
		for _, r := range revs {
			pending = append(pending, r.Pending...)
		}
		at = append(at, seen{events: f.sink.Types(), marked: !got.RevokedAt.IsZero(), pending: pending})
	}
	if _, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "leak", broker.RevokeOptions{}, "req_1"); err != nil {
		t.Fatal(err)
	}
	want := []seen{{events: []string{"issue", "revoke"}, marked: true, pending: []string{is.ID}}}
	if diff := cmp.Diff(want, at, cmp.AllowUnexported(seen{})); diff != "" {
		t.Errorf("state at the backend call (-want +got):\n%s", diff)
	}
}

// An audit log that cannot take the revoke event refuses the revocation:
// nothing is stored, nothing revoked at the backend.
func TestRevokeAuditFailureRefuses(t *testing.T) {
	f := newRevFixture(t, nil)
	is := f.issue(t, "payments")
	f.sink.Fail = func(ev *audit.Event) bool { return ev.Type == audit.TypeRevoke }
	rev, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{Workload: "payments-api"}, "leak", broker.RevokeOptions{Block: true}, "req_1")
	if !errors.Is(err, broker.ErrUnavailable) || rev != nil {
		t.Fatalf("Revoke() = %v, %v; want nil, ErrUnavailable", rev, err)
	}
	if calls := f.rv.Calls(); len(calls) != 0 {
		t.Errorf("backend revoked %v with the audit log down, want nothing", calls)
	}
	revs, _ := f.mem.ListRevocations(context.Background(), broker.RevocationFilter{})
	blocks, _ := f.mem.ListBlocks(context.Background())
	got, _ := f.mem.GetIssuance(context.Background(), is.ID)
	if len(revs) != 0 || len(blocks) != 0 || !got.RevokedAt.IsZero() {
		t.Errorf("store changed by a refused revoke: revocations %v, blocks %v, revoked_at %v", revs, blocks, got.RevokedAt)
	}
}

// A backend that fails leaves the issuance pending (but revoked in the
// store); the worker finishes it with backoff once the backend recovers.
func TestRevokePendingThenWorkerCompletes(t *testing.T) {
	f := newRevFixture(t, nil)
	is := f.issue(t, "payments")
	f.rv.setErr(broker.Unavailable("vault_unavailable", time.Second, errors.New("dial tcp 127.0.0.1:8200: connection refused")))
	rev, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "leak", broker.RevokeOptions{}, "req_1")
	if err != nil {
		t.Fatal(err)
	}
	wantFailed := []broker.RevokeFailure{{IssuanceID: is.ID, Error: "backend revocation failed (vault_unavailable); retrying"}}
	if diff := cmp.Diff(wantFailed, rev.Failed); diff != "" || !cmp.Equal(rev.Pending, []string{is.ID}) || len(rev.Revoked) != 0 {
		t.Fatalf("receipt = revoked %v pending %v failed %v; want %s pending (-want +got failed):\n%s", rev.Revoked, rev.Pending, rev.Failed, is.ID, diff)
	}
	if got, _ := f.mem.GetIssuance(context.Background(), is.ID); got.RevokedAt.IsZero() {
		t.Errorf("issuance not marked revoked while the backend is down; introspection would call it active")
	}

	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: 2 * time.Second, MaxBackoff: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	steps := []struct {
		name      string
		advance   time.Duration
		fixed     bool
		wantCalls int
		pending   int
	}{
		{name: "grace-for-the-request", advance: 0, wantCalls: 1, pending: 1},
		{name: "first-retry-fails", advance: 2 * time.Second, wantCalls: 2, pending: 1},
		{name: "backoff-not-over", advance: time.Second, fixed: true, wantCalls: 2, pending: 1},
		{name: "retry-succeeds", advance: time.Second, fixed: true, wantCalls: 3, pending: 0},
		{name: "nothing-left", advance: 10 * time.Second, fixed: true, wantCalls: 3, pending: 0},
	}
	for _, st := range steps {
		f.advance(st.advance)
		if st.fixed {
			f.rv.setErr(nil)
		}
		_ = w.Tick(ctx)
		if got := len(f.rv.Calls()); got != st.wantCalls || w.PendingCount() != st.pending {
			t.Fatalf("%s: backend calls %d, pending %d; want %d, %d", st.name, got, w.PendingCount(), st.wantCalls, st.pending)
		}
	}
	stored, err := f.svc.GetRevocation(ctx, rev.ID)
	if err != nil {
		t.Fatal(err)
	}
	if !cmp.Equal(stored.Revoked, []string{is.ID}) || len(stored.Pending) != 0 || len(stored.Failed) != 0 || stored.CompletedAt.IsZero() {
		t.Errorf("GetRevocation() = %+v; want revoked, complete", stored)
	}
	types := f.sink.Types()
	if types[len(types)-1] != "revoke_result" || f.sink.Events()[len(types)-1].Details["by"] != "worker" {
		t.Errorf("last event = %s %v, want revoke_result by worker", types[len(types)-1], f.sink.Events()[len(types)-1].Details)
	}
}

func TestUnblock(t *testing.T) {
	f := newRevFixture(t, nil)
	ctx := context.Background()
	if _, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_1"); err != nil {
		t.Fatal(err)
	}
	_, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
	if broker.AsError(err).Reason != "workload_blocked" {
		t.Fatalf("Exchange() while blocked = %v, want workload_blocked", err)
	}
	blocks, err := f.svc.Blocks(ctx)
	if err != nil || len(blocks) != 1 || blocks[0].Admin != "secops:alice" || blocks[0].Reason != "incident" || !strings.HasPrefix(blocks[0].RevocationID, "rev_") {
		t.Fatalf("Blocks() = %+v, %v", blocks, err)
	}
	tests := []struct {
		name     string
		workload string
		want     error
	}{
		{"ok/blocked", "payments-api", nil},
		{"fail/not-blocked-any-more", "payments-api", broker.ErrNotFound},
		{"fail/empty", "", broker.ErrInvalidRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := len(f.sink.Events())
			err := f.svc.Unblock(ctx, secops, tt.workload, "resolved", "req_2")
			if !errors.Is(err, tt.want) || (tt.want == nil && err != nil) {
				t.Fatalf("Unblock(%q) = %v, want %v", tt.workload, err, tt.want)
			}
			wantEvents := []string{}
			if tt.want == nil {
				wantEvents = []string{"unblock"}
			}
			if diff := cmp.Diff(wantEvents, f.types(n)); diff != "" {
				t.Errorf("events (-want +got):\n%s", diff)
			}
		})
	}
	f.advance(time.Second)
	if _, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"}); err != nil {
		t.Errorf("Exchange() after unblock = %v, want ok", err)
	}
}

// Revoke announces through the Store's Notifier; a second instance's cache
// learns it from the notice alone, and its fronting store then denies.
func TestRevokeAnnouncesToCaches(t *testing.T) {
	nf := memstore.NewNotifier()
	f := newRevFixture(t, func(f *revFixture, st broker.Store) broker.Store { return broker.WithNotifier(st, nf) })
	is := f.issue(t, "payments")

	// The "other instance": a cache over a store that never hears of the
	// revocation, so only the notice can tell it.
	other := memstore.New(f.clock)
	if err := other.PutIssuance(context.Background(), is); err != nil {
		t.Fatal(err)
	}
	cache, err := broker.NewRevocationCache(other, broker.CacheOptions{Notifier: nf, Now: f.clock})
	if err != nil {
		t.Fatal(err)
	}
	notices, err := nf.Subscribe(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	rev, err := f.svc.Revoke(context.Background(), secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_1")
	if err != nil {
		t.Fatal(err)
	}
	n := <-notices
	if diff := cmp.Diff(broker.Notice{RevocationID: rev.ID, Revoked: []string{is.ID}, Blocked: []string{"payments-api"}}, n); diff != "" {
		t.Fatalf("notice (-want +got):\n%s", diff)
	}
	cache.Apply(n)
	front := cache.Store()
	got, err := front.FindIssuance(context.Background(), broker.RefFingerprint, is.Refs.Fingerprint)
	if err != nil || got.Active(f.clock()) {
		t.Errorf("front.FindIssuance() = %+v, %v; want revoked by the cache", got, err)
	}
	if b, err := front.GetBlock(context.Background(), "payments-api"); err != nil || b.RevocationID != rev.ID {
		t.Errorf("front.GetBlock() = %+v, %v; want blocked by %s", b, err, rev.ID)
	}
	active, _ := front.ListIssuances(context.Background(), broker.IssuanceFilter{Workload: "payments-api", ActiveAt: f.clock()})
	if len(active) != 0 {
		t.Errorf("front.ListIssuances(active) = %d issuances, want 0", len(active))
	}
}

func TestRevocationCacheRefresh(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	st := memstore.New(func() time.Time { return now })
	ctx := context.Background()
	cache, err := broker.NewRevocationCache(st, broker.CacheOptions{Now: func() time.Time { return now }, Window: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*broker.Revocation{
		{ID: "rev_recent", CreatedAt: now.Add(-time.Minute), Revoked: []string{"iss_a"}, Pending: []string{"iss_b"}},
		{ID: "rev_old", CreatedAt: now.Add(-2 * time.Hour), Revoked: []string{"iss_old"}},
	} {
		if err := st.PutRevocation(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.PutBlock(ctx, broker.Block{Workload: "w1", CreatedAt: now}); err != nil {
		t.Fatal(err)
	}
	cache.Apply(broker.Notice{Blocked: []string{"w-notice-only"}})
	if err := cache.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{
		"iss_a": cache.Revoked("iss_a"), "iss_b": cache.Revoked("iss_b"), "iss_old": cache.Revoked("iss_old"),
		"w1": cache.Blocked("w1"), "w-notice-only": cache.Blocked("w-notice-only"),
	}
	want := map[string]bool{"iss_a": true, "iss_b": true, "iss_old": false, "w1": true, "w-notice-only": false}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("cache after refresh (-want +got):\n%s", diff)
	}
	if _, err := broker.NewRevocationCache(st, broker.CacheOptions{Interval: 2 * time.Second}); err == nil {
		t.Errorf("NewRevocationCache(interval 2s) = nil error, want refused (the contract is at least every second)")
	}
}

// listRecorder records the revocation reads a cache makes, and can make the
// store's version go back (a restored or flushed Redis).
type listRecorder struct {
	broker.Store
	lists    []broker.RevocationFilter
	returned int // revocations returned by the last list
	back     uint64
}

func (l *listRecorder) ListRevocations(ctx context.Context, f broker.RevocationFilter) ([]*broker.Revocation, error) {
	l.lists = append(l.lists, f)
	revs, err := l.Store.ListRevocations(ctx, f)
	l.returned = len(revs)
	return revs, err
}

func (l *listRecorder) RevocationVersion(ctx context.Context) (uint64, error) {
	v, err := l.Store.RevocationVersion(ctx)
	return v - min(v, l.back), err
}

// TestRevocationCacheIncrementalRefresh: between full reads (every
// FullRefresh), a refresh reads only the revocations written since the last
// one, none at all when nothing was written, and reads in full again when
// the store's version goes back.
func TestRevocationCacheIncrementalRefresh(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	ctx := context.Background()
	st := &listRecorder{Store: memstore.New(clock)}
	put := func(id string, created time.Time, issuances ...string) {
		t.Helper()
		if err := st.PutRevocation(ctx, &broker.Revocation{ID: id, CreatedAt: created, Revoked: issuances}); err != nil {
			t.Fatal(err)
		}
	}
	c, err := broker.NewRevocationCache(st, broker.CacheOptions{Now: clock, Window: 30 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	refresh := func() (lists int, last broker.RevocationFilter, returned int) {
		t.Helper()
		before := len(st.lists)
		if err := c.Refresh(ctx); err != nil {
			t.Fatalf("Refresh() = %v", err)
		}
		if len(st.lists) > before {
			last = st.lists[len(st.lists)-1]
		}
		return len(st.lists) - before, last, st.returned
	}
	for i := range 50 {
		put(fmt.Sprintf("rev_%02d", i), now.Add(-time.Minute), fmt.Sprintf("iss_%02d", i))
	}

	// First refresh: a full read of the window.
	if n, f, got := refresh(); n != 1 || f.ChangedAfter != 0 || got != 50 {
		t.Errorf("first refresh: %d lists, last %+v returning %d; want one full read of 50", n, f, got)
	}
	// Nothing written: no list at all.
	if n, _, _ := refresh(); n != 0 {
		t.Errorf("refresh without writes: %d lists, want 0", n)
	}
	// One new revocation (no notice: another instance's): read alone.
	now = now.Add(time.Second)
	put("rev_new", now, "iss_new")
	if n, f, got := refresh(); n != 1 || f.ChangedAfter == 0 || got != 1 {
		t.Errorf("refresh after one write: %d lists, last %+v returning %d; want one changed-after read of 1", n, f, got)
	}
	if !c.Revoked("iss_new") || !c.Revoked("iss_07") {
		t.Errorf("Revoked(iss_new, iss_07) = %v, %v; want both", c.Revoked("iss_new"), c.Revoked("iss_07"))
	}
	// An update of an old revocation is a change too.
	put("rev_07", now.Add(-time.Minute), "iss_07", "iss_07b")
	if _, f, got := refresh(); f.ChangedAfter == 0 || got != 1 || !c.Revoked("iss_07b") {
		t.Errorf("refresh after an update: last %+v returning %d, Revoked(iss_07b) = %v; want one changed-after read, true", f, got, c.Revoked("iss_07b"))
	}
	// The store's version goes back: read in full.
	st.back = 1
	if n, f, got := refresh(); n != 1 || f.ChangedAfter != 0 || got != 51 {
		t.Errorf("refresh after the version went back: %d lists, last %+v returning %d; want a full read of 51", n, f, got)
	}
	st.back = 0
	// Past FullRefresh a full read drops what left the window.
	now = now.Add(time.Hour)
	put("rev_late", now, "iss_late")
	if n, f, _ := refresh(); n != 1 || f.ChangedAfter != 0 {
		t.Errorf("refresh past FullRefresh: %d lists, last %+v; want a full read", n, f)
	}
	if c.Revoked("iss_00") || !c.Revoked("iss_late") {
		t.Errorf("after the window: Revoked(iss_00, iss_late) = %v, %v; want false, true", c.Revoked("iss_00"), c.Revoked("iss_late"))
	}
}

// TestRevocationCacheFullReadSpacing: a full read is spaced at least 100
// times its own duration after the last one, not only FullRefresh, so a
// Window holding many revocations does not have them read every minute.
func TestRevocationCacheFullReadSpacing(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	ctx := context.Background()
	st := &slowList{listRecorder: listRecorder{Store: memstore.New(clock)}, advance: func() { now = now.Add(10 * time.Second) }}
	if err := st.PutRevocation(ctx, &broker.Revocation{ID: "rev_1", CreatedAt: now, Revoked: []string{"iss_1"}}); err != nil {
		t.Fatal(err)
	}
	c, err := broker.NewRevocationCache(st, broker.CacheOptions{Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	fullReads := func() int {
		n := 0
		for _, f := range st.lists {
			if f.ChangedAfter == 0 {
				n++
			}
		}
		return n
	}
	// Every full read "takes" 10s by the cache's clock: the next is due
	// 1000s later, although FullRefresh is 1m.
	for _, step := range []struct {
		after time.Duration
		want  int
	}{{0, 1}, {61 * time.Second, 1}, {500 * time.Second, 1}, {990 * time.Second, 1}, {1001 * time.Second, 2}, {1061 * time.Second, 2}} {
		now = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
		if step.after > 0 { // from the end of the first full read
			now = now.Add(10*time.Second + step.after)
		}
		if err := c.Refresh(ctx); err != nil {
			t.Fatalf("Refresh() = %v", err)
		}
		if got := fullReads(); got != step.want {
			t.Errorf("%s after the first full read ended: %d full reads, want %d", step.after, got, step.want)
		}
	}
	if !c.Revoked("iss_1") {
		t.Error("Revoked(iss_1) = false, want true")
	}
}

// slowList is a listRecorder whose full reads (no ChangedAfter) move the
// cache's clock on by calling advance.
type slowList struct {
	listRecorder
	advance func()
}

func (s *slowList) ListRevocations(ctx context.Context, f broker.RevocationFilter) ([]*broker.Revocation, error) {
	revs, err := s.listRecorder.ListRevocations(ctx, f)
	if f.ChangedAfter == 0 {
		s.advance()
	}
	return revs, err
}

// gatedFullReads is a Store whose full revocation reads (no ChangedAfter),
// while armed, list first and then wait for release (or their context),
// returning what they listed: a long full read of a large Window.
type gatedFullReads struct {
	broker.Store
	mu      sync.Mutex
	gate    chan struct{} // nil: not armed
	entered chan struct{} // receives once per gated read
	ctxErr  chan error    // the gated read's context error when released
	// refreshes receives (without blocking) at the start of every refresh
	// (its ListBlocks): in Run, refreshes are sequential, so by then the
	// one before has been applied.
	refreshes chan struct{}
}

func newGatedFullReads() *gatedFullReads {
	return &gatedFullReads{Store: memstore.New(time.Now), entered: make(chan struct{}, 1),
		ctxErr: make(chan error, 1), refreshes: make(chan struct{}, 1)}
}

func (g *gatedFullReads) ListBlocks(ctx context.Context) ([]broker.Block, error) {
	select {
	case g.refreshes <- struct{}{}:
	default:
	}
	return g.Store.ListBlocks(ctx)
}

func (g *gatedFullReads) ListRevocations(ctx context.Context, f broker.RevocationFilter) ([]*broker.Revocation, error) {
	revs, err := g.Store.ListRevocations(ctx, f)
	g.mu.Lock()
	gate := g.gate
	g.mu.Unlock()
	if f.ChangedAfter != 0 || gate == nil {
		return revs, err
	}
	select {
	case g.entered <- struct{}{}:
	default:
	}
	select {
	case <-gate:
	case <-ctx.Done():
	}
	select {
	case g.ctxErr <- ctx.Err():
	default:
	}
	if err == nil {
		err = ctx.Err()
	}
	return revs, err
}

func (g *gatedFullReads) arm() chan struct{} {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gate = make(chan struct{})
	return g.gate
}

func (g *gatedFullReads) disarm() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.gate = nil
}

// waitFor checks cond again after each event until it holds, or fails the
// test when 5s pass first.
func waitFor(t *testing.T, what string, events <-chan struct{}, cond func() bool) {
	t.Helper()
	timeout := time.NewTimer(5 * time.Second)
	defer timeout.Stop()
	for !cond() {
		select {
		case <-events:
		case <-timeout.C:
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// TestRevocationCacheRunLongFullRead: in Run, a full read that takes far
// longer than the refresh interval (a large Window) runs in the background
// under its own deadline: the refreshes go on meanwhile, so a revocation
// made elsewhere still reaches the cache within an interval and the view
// stays fresh, and the full read completes instead of being cut off at the
// interval and retried forever.
func TestRevocationCacheRunLongFullRead(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := newGatedFullReads()
	put := func(id, iss string) {
		t.Helper()
		if err := st.PutRevocation(ctx, &broker.Revocation{ID: id, CreatedAt: time.Now(), Revoked: []string{iss}}); err != nil {
			t.Fatal(err)
		}
	}
	put("rev_a", "iss_a")
	c, err := broker.NewRevocationCache(st, broker.CacheOptions{Interval: 10 * time.Millisecond, FullRefresh: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	waitFor(t, "the first load", st.refreshes, func() bool { return c.Revoked("iss_a") })

	gate := st.arm()
	<-st.entered // a full read is now held
	put("rev_b", "iss_b")
	waitFor(t, "a revocation written during the full read", st.refreshes, func() bool { return c.Revoked("iss_b") })
	held := c.Refreshed()
	waitFor(t, "a refresh during the full read", st.refreshes, func() bool { return c.Refreshed().After(held) })

	st.disarm()
	close(gate)
	if err := <-st.ctxErr; err != nil {
		t.Errorf("the long full read's context ended: %v; want it alive (its own deadline)", err)
	}
	if !c.Revoked("iss_a") || !c.Revoked("iss_b") {
		t.Errorf("after the full read: Revoked(iss_a, iss_b) = %v, %v; want both", c.Revoked("iss_a"), c.Revoked("iss_b"))
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run() = %v", err)
	}
}

// TestRevocationCacheFullReadKeepsWhatItMissed: what the cache learns while
// a full read is in progress (a notice here) is kept when the read's
// result, listed before it, replaces the revoked set.
func TestRevocationCacheFullReadKeepsWhatItMissed(t *testing.T) {
	ctx := context.Background()
	st := newGatedFullReads()
	if err := st.PutRevocation(ctx, &broker.Revocation{ID: "rev_a", CreatedAt: time.Now(), Revoked: []string{"iss_a"}}); err != nil {
		t.Fatal(err)
	}
	c, err := broker.NewRevocationCache(st, broker.CacheOptions{})
	if err != nil {
		t.Fatal(err)
	}
	gate := st.arm()
	done := make(chan error, 1)
	go func() { done <- c.Refresh(ctx) }()
	<-st.entered
	c.Apply(broker.Notice{RevocationID: "rev_b", Revoked: []string{"iss_b"}})
	close(gate)
	if err := <-done; err != nil {
		t.Fatalf("Refresh() = %v", err)
	}
	if !c.Revoked("iss_a") || !c.Revoked("iss_b") {
		t.Errorf("Revoked(iss_a, iss_b) = %v, %v; want both", c.Revoked("iss_a"), c.Revoked("iss_b"))
	}
}

// gatedMinter mints like brokertest.Minter but, for its first call, signals
// entered and waits for release before answering: an exchange that has
// passed its block check and is in the middle of its Vault call.
type gatedMinter struct {
	brokertest.Minter
	once    sync.Once
	session string // the first call's session, set before entered closes
	entered chan struct{}
	release chan struct{}
}

func (g *gatedMinter) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	first := false
	g.once.Do(func() { first = true })
	if first {
		g.session = req.SessionID
		close(g.entered)
		<-g.release
	}
	return g.Minter.Mint(ctx, req)
}

// sweepFixture is a Service over a memstore (on a clock the test moves)
// whose vault_token credentials come from, and are revoked at, minter.
type sweepFixture struct {
	svc  *broker.Service
	mem  *memstore.Store
	sink *brokertest.Sink
	w    *broker.RevocationWorker
	clk  *sweepClock
}

func (f *sweepFixture) clock() time.Time        { return f.clk.Now() }
func (f *sweepFixture) advance(d time.Duration) { f.clk.Add(d) }

// until moves the clock to t.
func (f *sweepFixture) until(t time.Time) { f.clk.Set(t) }

func newSweepFixture(t *testing.T, minter interface {
	broker.Minter
	broker.Revoker
}) *sweepFixture {
	t.Helper()
	pol, err := policies.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	f := &sweepFixture{sink: &brokertest.Sink{}, clk: &sweepClock{now: time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)}}
	f.mem = memstore.New(f.clock)
	authn := brokertest.Authn{"payments": identity("system:serviceaccount:payments:api", map[string]any{
		"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}},
	})}
	f.svc, err = broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: minter},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: minter},
		Store:    f.mem,
		Audit:    f.sink,
		Now:      f.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.w, err = broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return f
}

// tickAt runs one worker pass at time at.
func (f *sweepFixture) tickAt(t *testing.T, at time.Time) {
	t.Helper()
	f.until(at)
	if err := f.w.Tick(context.Background()); err != nil {
		t.Fatalf("Tick() = %v", err)
	}
}

// TestRevokeSweepsExchangeInFlight: an exchange already past its block
// check when the revocation selects (here: in its Vault call) stores its
// issuance after the selection. The revocation's sweep finds it and revokes
// it under the same revocation: store mark, backend call, record, and a
// revoke_result event naming it. Found in review.
func TestRevokeSweepsExchangeInFlight(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sel   broker.RevokeSelector
		block bool
	}{
		{"workload-with-block", broker.RevokeSelector{Workload: "payments-api"}, true},
		{"owner-with-block", broker.RevokeSelector{Owner: "team-payments"}, true},
		{"session", broker.RevokeSelector{SessionID: "set below"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			gm := &gatedMinter{entered: make(chan struct{}), release: make(chan struct{})}
			f := newSweepFixture(t, gm)
			ctx := context.Background()
			type result struct {
				res *broker.ExchangeResult
				err error
			}
			done := make(chan result, 1)
			go func() {
				res, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
				done <- result{res, err}
			}()
			<-gm.entered // the exchange passed its block check and is minting
			sel := tc.sel
			if sel.SessionID != "" {
				sel.SessionID = gm.session
			}
			rev, err := f.svc.Revoke(ctx, secops, sel, "incident 42", broker.RevokeOptions{Block: tc.block}, "req_r")
			if err != nil {
				t.Fatal(err)
			}
			if rev.Matched != 0 || rev.SweepAt.IsZero() || !rev.CompletedAt.IsZero() {
				t.Fatalf("Revoke() = matched %d sweep_at %v completed_at %v; want 0 matched, a sweep due, not complete",
					rev.Matched, rev.SweepAt, rev.CompletedAt)
			}
			close(gm.release)
			r := <-done
			if r.err != nil {
				t.Fatalf("Exchange() = %v; it passed its block check before the revocation, want it to succeed", r.err)
			}
			id := r.res.Issuance.ID

			// Not before the sweep is due: an exchange still in flight
			// then would be missed.
			f.tickAt(t, rev.SweepAt.Add(-time.Nanosecond))
			if got, _ := f.mem.GetIssuance(ctx, id); !got.RevokedAt.IsZero() {
				t.Fatalf("issuance revoked at %v, before the sweep was due at %v", got.RevokedAt, rev.SweepAt)
			}
			events := len(f.sink.Events())
			f.tickAt(t, rev.SweepAt)

			stored, err := f.mem.GetIssuance(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if stored.Active(f.clock()) || stored.RevocationID != rev.ID || !slices.Contains(gm.RevokedIDs(), id) {
				t.Errorf("after the sweep: issuance %s revoked_at %v by %q, backend revoked %v; want it marked by %s and revoked at the backend",
					id, stored.RevokedAt, stored.RevocationID, gm.RevokedIDs(), rev.ID)
			}
			got, err := f.svc.GetRevocation(ctx, rev.ID)
			if err != nil {
				t.Fatal(err)
			}
			if got.Matched != 1 || !cmp.Equal(got.Revoked, []string{id}) || len(got.Pending) != 0 || !got.SweepAt.IsZero() || got.CompletedAt.IsZero() {
				t.Errorf("GetRevocation() = %+v; want %s matched and revoked, the sweep done, complete", got, id)
			}
			evs := f.sink.Events()[events:]
			if len(evs) != 1 || evs[0].Type != audit.TypeRevokeResult || evs[0].RevocationID != rev.ID ||
				evs[0].Details["by"] != "sweep" || !cmp.Equal(evs[0].Details["swept"], []string{id}) {
				t.Errorf("events of the sweep = %+v; want one revoke_result by sweep naming %s as swept", evs, id)
			}
		})
	}
}

// afterListBlocks runs hook (once) after a ListBlocks read.
type afterListBlocks struct {
	broker.Store
	hook func()
}

func (s *afterListBlocks) ListBlocks(ctx context.Context) ([]broker.Block, error) {
	bs, err := s.Store.ListBlocks(ctx)
	if h := s.hook; h != nil {
		s.hook = nil
		h()
	}
	return bs, err
}

// TestRevokeSweepsStaleCacheIssuance: with FastReads, another instance
// whose cache has not learned a block yet still issues to the workload:
// its view answers alone for two refresh intervals after a refresh that
// read the blocks just before the block was stored and itself took most of
// an interval. The blocking revocation's sweep revokes what it issued,
// although it was issued well after the revocation. Found in review.
func TestRevokeSweepsStaleCacheIssuance(t *testing.T) {
	ctx := context.Background()
	f := newSweepFixture(t, &brokertest.Minter{})
	pol, err := policies.Parse("test.yaml", []byte(testPolicy))
	if err != nil {
		t.Fatal(err)
	}
	// Instance B: same store, its own cache. Its refresh reads the blocks,
	// then the block is stored (instance A's revocation) while the refresh
	// takes 900ms more.
	var rev *broker.Revocation
	slow := &afterListBlocks{Store: f.mem, hook: func() {
		var err error
		rev, err = f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{Block: true}, "req_r")
		if err != nil {
			t.Error(err)
		}
		f.advance(900 * time.Millisecond)
	}}
	cache, err := broker.NewRevocationCache(slow, broker.CacheOptions{FastReads: true, Now: f.clock})
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.Refresh(ctx); err != nil || rev == nil {
		t.Fatalf("Refresh() = %v (revocation %v)", err, rev)
	}
	minterB := &brokertest.Minter{}
	b, err := broker.NewService(broker.Deps{
		Policy: func() *policies.Policy { return pol },
		Authn: func() broker.Authenticator {
			return brokertest.Authn{"payments": identity("system:serviceaccount:payments:api", map[string]any{
				"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-2"}},
			})}
		},
		Minters:  map[string]broker.Minter{broker.KindVaultToken: minterB},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: minterB},
		Store:    cache.Store(),
		Audit:    &brokertest.Sink{},
		Now:      f.clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.advance(1900 * time.Millisecond) // 2.8s after the block, 1.9s after B's refresh
	res, err := b.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
	if err != nil {
		t.Fatalf("instance B's Exchange() = %v; want it to pass on B's stale view (the case under test)", err)
	}
	f.tickAt(t, rev.SweepAt)
	stored, err := f.mem.GetIssuance(ctx, res.Issuance.ID)
	if err != nil {
		t.Fatal(err)
	}
	// The backend call is made by the sweeping instance's Revoker (A's).
	if stored.Active(f.clock()) || stored.RevocationID != rev.ID {
		t.Errorf("credential %s issued 2.8s after the block: revoked_at %v by %q; want revoked by %s", stored.ID, stored.RevokedAt, stored.RevocationID, rev.ID)
	}
}

// TestRevokeSweepLeavesLaterIssuances: the sweep takes only what the
// revocation covers: not a credential a session gets after its (unblocked)
// revocation, nor one issued once a block was lifted.
func TestRevokeSweepLeavesLaterIssuances(t *testing.T) {
	for _, tc := range []struct {
		name  string
		sel   broker.RevokeSelector
		block bool
		early bool // unblock and exchange again before the sweep is due
	}{
		{"session-revoked-then-new-credential", broker.RevokeSelector{SessionID: "set below"}, false, false},
		{"workload-unblocked-after-the-sweep-time", broker.RevokeSelector{Workload: "payments-api"}, true, false},
		{"workload-unblocked-before-the-sweep-time", broker.RevokeSelector{Workload: "payments-api"}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			m := &brokertest.Minter{}
			f := newSweepFixture(t, m)
			first, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
			if err != nil {
				t.Fatal(err)
			}
			sel := tc.sel
			if sel.SessionID != "" {
				sel.SessionID = first.Issuance.SessionID
			}
			f.advance(time.Second)
			rev, err := f.svc.Revoke(ctx, secops, sel, "incident", broker.RevokeOptions{Block: tc.block}, "req_r")
			if err != nil || rev.Matched != 1 {
				t.Fatalf("Revoke() = %+v, %v; want the first credential matched", rev, err)
			}
			if tc.block {
				f.advance(time.Second)
				if err := f.svc.Unblock(ctx, secops, "payments-api", "resolved", "req_u"); err != nil {
					t.Fatal(err)
				}
				if tc.early {
					// The next exchange: after the unblock and past the 2s of
					// clock skew the scope allows, before sweep_at.
					f.advance(2 * time.Second)
				} else {
					f.until(rev.SweepAt.Add(time.Second))
				}
			} else {
				f.advance(3 * time.Second) // past the 2s of clock skew the sweep allows
			}
			later, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
			if err != nil {
				t.Fatal(err)
			}
			at := rev.SweepAt
			if f.clock().After(at) {
				at = f.clock()
			}
			f.tickAt(t, at)
			if got, _ := f.mem.GetIssuance(ctx, later.Issuance.ID); !got.Active(f.clock()) || slices.Contains(m.RevokedIDs(), later.Issuance.ID) {
				t.Errorf("credential issued after the revocation: revoked_at %v by %q; want it left alone", got.RevokedAt, got.RevocationID)
			}
			if got, _ := f.svc.GetRevocation(ctx, rev.ID); got.CompletedAt.IsZero() || got.Matched != 1 {
				t.Errorf("GetRevocation() = %+v; want complete with 1 matched", got)
			}
		})
	}
}

// failMarkStore fails the first MarkRevoked (a Redis blip during the
// revocation's step 3).
type failMarkStore struct {
	broker.Store
	mu     sync.Mutex
	failed bool
}

func (s *failMarkStore) MarkRevoked(ctx context.Context, is *broker.Issuance) (*broker.Issuance, error) {
	s.mu.Lock()
	fail := !s.failed
	s.failed = true
	s.mu.Unlock()
	if fail {
		return nil, broker.Unavailable("store_unavailable", time.Second, errors.New("i/o timeout"))
	}
	return s.Store.MarkRevoked(ctx, is)
}

// TestRevocationWorkerStoresFailedMarkThroughCache: with the server's
// wiring (the Service over RevocationCache.Store()), a mark that failed
// during Revoke is written by the RevocationWorker. It used to read the
// issuance through the cache, whose copy already looked revoked (learned
// from the revocation's pending list), skip the mark and call the
// revocation complete: once the revocation left the cache's Window (24h;
// grant TTLs have no upper bound) the credential was accepted again. Found
// in review.
func TestRevocationWorkerStoresFailedMarkThroughCache(t *testing.T) {
	ctx := context.Background()
	var mu sync.Mutex
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	mem := memstore.New(clock)
	flaky := &failMarkStore{Store: mem}
	cache, err := broker.NewRevocationCache(flaky, broker.CacheOptions{FastReads: true, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	// A 48h grant (policy puts no upper bound on a grant's ttl).
	pol, err := policies.Parse("test.yaml", []byte(strings.Replace(testPolicy, "ttl: 15m", "ttl: 48h", 1)))
	if err != nil {
		t.Fatal(err)
	}
	authn := brokertest.Authn{"payments": identity("system:serviceaccount:payments:api", map[string]any{
		"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}},
	})}
	svc, err := broker.NewService(broker.Deps{
		Policy:  func() *policies.Policy { return pol },
		Authn:   func() broker.Authenticator { return authn },
		Minters: map[string]broker.Minter{broker.KindVaultToken: &brokertest.Minter{}},
		// No backend Revoker for the kind: like proxy and jwt credentials,
		// it is revoked by the store mark alone.
		Revokers: map[string]broker.Revoker{},
		Store:    cache.Store(),
		Audit:    &brokertest.Sink{},
		Now:      clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cache.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	res, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
	if err != nil {
		t.Fatal(err)
	}
	id, fp := res.Issuance.ID, res.Issuance.Refs.Fingerprint

	rev, err := svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: id}, "leaked", broker.RevokeOptions{}, "req_1")
	if err != nil {
		t.Fatal(err)
	}
	if len(rev.Pending) != 1 {
		t.Fatalf("receipt pending = %v, want the issuance whose mark failed", rev.Pending)
	}
	// The cache refreshes (Run does so every second) and learns the id.
	advance(time.Second)
	if err := cache.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	if !cache.Revoked(id) {
		t.Fatalf("cache.Revoked(%s) = false; the case under test is a cache that already denies it", id)
	}
	w, err := broker.NewRevocationWorker(svc, broker.WorkerOptions{Interval: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	advance(2 * time.Second)
	if err := w.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	done, err := mem.GetRevocation(ctx, rev.ID)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := mem.GetIssuance(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if stored.RevokedAt.IsZero() || stored.RevocationID != rev.ID || done.CompletedAt.IsZero() {
		t.Errorf("after the worker's retry: revocation completed_at=%v pending=%v, stored issuance revoked_at=%v revocation_id=%q; "+
			"want it marked revoked by %s, complete", done.CompletedAt, done.Pending, stored.RevokedAt, stored.RevocationID, rev.ID)
	}
	// 25h later the revocation has left the cache's Window: the store's
	// mark alone denies the credential (valid 48h).
	advance(25 * time.Hour)
	if err := cache.Refresh(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := cache.Store().FindIssuance(ctx, broker.RefFingerprint, fp)
	if err != nil {
		t.Fatal(err)
	}
	if got.Active(clock()) {
		t.Errorf("25h after revocation %s, FindIssuance by fingerprint (proxy/introspect path) returns the credential as active", rev.ID)
	}
}

// TestRevokeMarksWhatOnlyTheCacheDenies: a credential the cache denies
// (from a notice) but the Store holds unmarked, e.g. a revocation write a
// Redis failover lost, is marked by a new revocation through the cache:
// Revoke decides on the stored record, not on the cache's copy.
func TestRevokeMarksWhatOnlyTheCacheDenies(t *testing.T) {
	for _, tc := range []struct {
		name string
		sel  func(is *broker.Issuance) broker.RevokeSelector
	}{
		{"issuance", func(is *broker.Issuance) broker.RevokeSelector { return broker.RevokeSelector{IssuanceID: is.ID} }},
		{"workload", func(is *broker.Issuance) broker.RevokeSelector { return broker.RevokeSelector{Workload: is.Workload} }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			var cache *broker.RevocationCache
			f := newRevFixture(t, func(f *revFixture, st broker.Store) broker.Store {
				var err error
				cache, err = broker.NewRevocationCache(st, broker.CacheOptions{FastReads: true, Now: f.clock})
				if err != nil {
					t.Fatal(err)
				}
				return cache.Store()
			})
			is := f.issue(t, "payments")
			cache.Apply(broker.Notice{RevocationID: "rev_lost", Revoked: []string{is.ID}})
			rev, err := f.svc.Revoke(ctx, secops, tc.sel(is), "again", broker.RevokeOptions{}, "req_1")
			if err != nil {
				t.Fatal(err)
			}
			got, _ := f.mem.GetIssuance(ctx, is.ID)
			if got.RevokedAt.IsZero() || got.RevocationID != rev.ID || !slices.Contains(f.rv.Calls(), is.ID) {
				t.Errorf("stored revoked_at %v by %q, backend calls %v; want marked by %s and revoked at the backend",
					got.RevokedAt, got.RevocationID, f.rv.Calls(), rev.ID)
			}
		})
	}
}

// TestCachedListIssuancesLimitCountsActive: an active listing through the
// cache with a Limit returns up to Limit active records although the cache
// drops some the Store still lists as active; it used to apply the Limit
// first and come back short (and the admin API's one-extra-record check
// then said "not truncated"). Found in review.
func TestCachedListIssuancesLimitCountsActive(t *testing.T) {
	ctx := context.Background()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	all := []string{"iss_a", "iss_b", "iss_c", "iss_d", "iss_e"} // the Store lists them in this order (by expiry)
	tests := []struct {
		name    string
		revoked []string // known to the cache only
		limit   int
		want    []string
	}{
		{"ok/one-dropped-limit-2", []string{"iss_a"}, 2, []string{"iss_b", "iss_c"}},
		{"ok/three-dropped-limit-1", []string{"iss_a", "iss_b", "iss_c"}, 1, []string{"iss_d"}},
		{"ok/three-dropped-limit-2", []string{"iss_a", "iss_b", "iss_c"}, 2, []string{"iss_d", "iss_e"}},
		{"ok/three-dropped-limit-3-not-cut", []string{"iss_a", "iss_b", "iss_c"}, 3, []string{"iss_d", "iss_e"}},
		{"ok/dropped-in-the-middle", []string{"iss_b", "iss_d"}, 2, []string{"iss_a", "iss_c"}},
		{"ok/no-limit", []string{"iss_a", "iss_c"}, 0, []string{"iss_b", "iss_d", "iss_e"}},
		{"ok/all-dropped", all, 2, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			mem := memstore.New(clock)
			for i, id := range all {
				exp := now.Add(time.Duration(i+1) * time.Minute)
				if err := mem.PutIssuance(ctx, &broker.Issuance{ID: id, Workload: "w", Owner: "o", Kind: broker.KindProxy,
					IssuedAt: now, ExpiresAt: exp, Refs: broker.CredentialRefs{Fingerprint: "sha256:" + id, ExpiresAt: exp}}); err != nil {
					t.Fatal(err)
				}
			}
			c, err := broker.NewRevocationCache(mem, broker.CacheOptions{Now: clock})
			if err != nil {
				t.Fatal(err)
			}
			c.Apply(broker.Notice{RevocationID: "rev_1", Revoked: tt.revoked})
			list, err := c.Store().ListIssuances(ctx, broker.IssuanceFilter{Workload: "w", ActiveAt: now, Limit: tt.limit})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, is := range list {
				got = append(got, is.ID)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ListIssuances(active, limit %d) (-want +got):\n%s", tt.limit, diff)
			}
		})
	}
}

// TestRevokeSweepNotDelayedByBackoff: when the worker's retries of a
// revocation's failed backend calls finally succeed before its sweep is
// due, the sweep runs at its time, not after the backoff those retries
// built up.
func TestRevokeSweepNotDelayedByBackoff(t *testing.T) {
	ctx := context.Background()
	f := newRevFixture(t, nil)
	f.issue(t, "payments")
	f.rv.setErr(broker.Unavailable("vault_unavailable", time.Second, errors.New("connection refused")))
	rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident", broker.RevokeOptions{}, "req_1")
	if err != nil || len(rev.Pending) != 1 {
		t.Fatalf("Revoke() = %+v, %v; want one pending", rev, err)
	}
	w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: 2 * time.Second, MaxBackoff: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for _, at := range []time.Duration{2 * time.Second, 4 * time.Second} { // two failed retries
		f.advance(rev.CreatedAt.Add(at).Sub(f.clock()))
		_ = w.Tick(ctx)
	}
	f.rv.setErr(nil)
	f.advance(rev.CreatedAt.Add(8 * time.Second).Sub(f.clock())) // the next retry succeeds
	if err := w.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.svc.GetRevocation(ctx, rev.ID); len(got.Pending) != 0 || !got.CompletedAt.IsZero() {
		t.Fatalf("after the successful retry: %+v; want nothing pending, the sweep still due", got)
	}
	f.advance(rev.SweepAt.Sub(f.clock()))
	if err := w.Tick(ctx); err != nil {
		t.Fatal(err)
	}
	if got, _ := f.svc.GetRevocation(ctx, rev.ID); got.CompletedAt.IsZero() || !got.SweepAt.IsZero() {
		t.Errorf("at sweep_at %v: %+v; want the sweep run and the revocation complete", rev.SweepAt, got)
	}
}

// TestRevocationCacheOnLearn: the cache tells its learners each time its
// view gains a revoked issuance or a blocked workload, from a notice or a
// refresh (full or incremental), once, and after releasing its lock (a
// learner asks the view again); not for what it already held nor for an
// unblock.
func TestRevocationCacheOnLearn(t *testing.T) {
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	st := memstore.New(func() time.Time { return now })
	ctx := context.Background()
	cache, err := broker.NewRevocationCache(st, broker.CacheOptions{Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	var seen []string
	cache.OnLearn(func() {
		calls++
		for _, id := range []string{"iss_0", "iss_a", "iss_b"} {
			if cache.Revoked(id) && !slices.Contains(seen, id) {
				seen = append(seen, id)
			}
		}
	})
	put := func(r *broker.Revocation) func() {
		return func() {
			if err := st.PutRevocation(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
	}
	refresh := func() {
		if err := cache.Refresh(ctx); err != nil {
			t.Fatal(err)
		}
	}
	steps := []struct {
		name  string
		do    []func()
		calls int
	}{
		{"full-read-learns", []func(){put(&broker.Revocation{ID: "rev_0", CreatedAt: now, Revoked: []string{"iss_0"}}), refresh}, 1},
		{"notice-revokes", []func(){func() { cache.Apply(broker.Notice{Revoked: []string{"iss_a"}}) }}, 1},
		{"notice-known-again", []func(){func() { cache.Apply(broker.Notice{Revoked: []string{"iss_a", "iss_0"}}) }}, 0},
		{"notice-blocks", []func(){func() { cache.Apply(broker.Notice{Blocked: []string{"w1"}}) }}, 1},
		{"notice-unblocks", []func(){func() { cache.Apply(broker.Notice{Unblocked: []string{"w1"}}) }}, 0},
		{"refresh-reads-revocation", []func(){put(&broker.Revocation{ID: "rev_b", CreatedAt: now, Pending: []string{"iss_b"}}), refresh}, 1},
		{"refresh-nothing-new", []func(){refresh}, 0},
		{"refresh-reads-block", []func(){func() {
			if err := st.PutBlock(ctx, broker.Block{Workload: "w2", CreatedAt: now}); err != nil {
				t.Fatal(err)
			}
		}, refresh}, 1},
	}
	for _, s := range steps {
		calls = 0
		for _, f := range s.do {
			f()
		}
		if calls != s.calls {
			t.Errorf("%s: learners called %d times, want %d", s.name, calls, s.calls)
		}
	}
	if diff := cmp.Diff([]string{"iss_0", "iss_a", "iss_b"}, seen); diff != "" {
		t.Errorf("revocations the learner found in the view (-want +got):\n%s", diff)
	}
}
