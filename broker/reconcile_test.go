package broker_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

type fakeTagged struct {
	mu      sync.Mutex
	creds   []broker.TaggedCredential
	listErr error
	revErr  error
	revoked []string
	looked  []string // refs returned (looked up at the backend)
	skipped []string // refs the reconciler explained from its Store
}

func (f *fakeTagged) ListTagged(ctx context.Context, skip func([]string) []bool) ([]broker.TaggedCredential, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.listErr != nil {
		return nil, f.listErr
	}
	refs := make([]string, len(f.creds))
	for i, c := range f.creds {
		refs[i] = c.Ref
	}
	skipped := make([]bool, len(refs))
	if skip != nil {
		skipped = skip(refs)
	}
	var out []broker.TaggedCredential
	for i, c := range f.creds {
		if skipped[i] {
			f.skipped = append(f.skipped, c.Ref)
			continue
		}
		f.looked = append(f.looked, c.Ref)
		out = append(out, c)
	}
	return out, nil
}

func (f *fakeTagged) RevokeTagged(ctx context.Context, c broker.TaggedCredential) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.revErr != nil {
		return f.revErr
	}
	f.revoked = append(f.revoked, c.Ref)
	return nil
}

// issuedSet is an audit index that holds the issue events of the ids set
// true, and reaches back to the Unix epoch.
type issuedSet map[string]bool

func (s issuedSet) Snapshot(ctx context.Context) (broker.IssuedSnapshot, error) {
	return issuedSince{s, time.Unix(1, 0)}.Snapshot(ctx)
}

// issuedSince is an issuedSet whose log reaches back to since only.
type issuedSince struct {
	ids   issuedSet
	since time.Time
}

func (s issuedSince) Snapshot(ctx context.Context) (broker.IssuedSnapshot, error) {
	if s.ids == nil {
		return broker.IssuedSnapshot{}, errors.New("index unreadable")
	}
	return broker.IssuedSnapshot{Issued: func(id string) bool { return s.ids[id] }, Since: s.since}, nil
}

// failingStore fails every GetIssuance as unavailable.
type failingStore struct{ broker.Store }

func (failingStore) GetIssuance(ctx context.Context, id string) (*broker.Issuance, error) {
	return nil, broker.Unavailable("store_unavailable", time.Second, errors.New("redis down"))
}

func TestReconcilerRunOnce(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	old := now.Add(-10 * time.Minute)
	cred := func(iss, acc string, created time.Time) broker.TaggedCredential {
		return broker.TaggedCredential{Kind: broker.KindVaultToken, Ref: acc, IssuanceID: iss, Workload: "app", CreatedAt: created}
	}
	issuance := func(id, acc string, revokedAt time.Time, revID string) *broker.Issuance {
		return &broker.Issuance{ID: id, Workload: "app", Owner: "team", Kind: broker.KindVaultToken,
			IssuedAt: old, ExpiresAt: now.Add(time.Hour), Refs: broker.CredentialRefs{Accessor: acc, ExpiresAt: now.Add(time.Hour)},
			RevokedAt: revokedAt, RevocationID: revID}
	}
	// chained is an issuance whose issue event went to audit chain chain.
	chained := func(id, acc, chain string) *broker.Issuance {
		is := issuance(id, acc, time.Time{}, "")
		is.AuditChain = chain
		return is
	}
	type want struct {
		Report  broker.ReconcileReport
		Revoked []string
		Reasons []string // of the orphan_revoked events, in order
		Err     bool
	}
	tests := []struct {
		name      string
		creds     []broker.TaggedCredential
		store     []*broker.Issuance
		issued    issuedSet
		complete  bool
		since     time.Time // when the audit index reaches back only to then
		chain     string    // the reconciler's own audit chain
		noIndex   bool
		failStore bool
		listErr   error
		revErr    error
		want      want
	}{
		{
			name:   "ok/recorded-and-audited-kept",
			creds:  []broker.TaggedCredential{cred("iss_a", "acc_a", old)},
			store:  []*broker.Issuance{issuance("iss_a", "acc_a", time.Time{}, "")},
			issued: issuedSet{"iss_a": true}, complete: true,
			want: want{Report: broker.ReconcileReport{Listed: 1, Kept: 1, Known: 1}},
		},
		{
			// A DynamicMinter reader token whose vault_dynamic issuance
			// the store holds with its accessor is explained by the store
			// alone, like a vault_token's token: no Vault lookup per live
			// database credential on every run.
			name: "ok/recorded-dynamic-reader-token-known",
			creds: func() []broker.TaggedCredential {
				c := cred("iss_dyn", "acc_dyn", old)
				c.Kind = broker.KindVaultDynamic
				return []broker.TaggedCredential{c}
			}(),
			store: func() []*broker.Issuance {
				is := issuance("iss_dyn", "acc_dyn", time.Time{}, "")
				is.Kind = broker.KindVaultDynamic
				is.Refs.LeaseID = "database/creds/rw/abc"
				return []*broker.Issuance{is}
			}(),
			issued: issuedSet{"iss_dyn": true}, complete: true,
			want: want{Report: broker.ReconcileReport{Listed: 1, Kept: 1, Known: 1}},
		},
		{
			name:   "ok/no-record-revoked",
			creds:  []broker.TaggedCredential{cred("iss_b", "acc_b", old)},
			issued: issuedSet{},
			want:   want{Report: broker.ReconcileReport{Listed: 1, Revoked: 1}, Revoked: []string{"acc_b"}, Reasons: []string{broker.OrphanNoRecord}},
		},
		{
			name:   "ok/store-lost-but-audited-kept",
			creds:  []broker.TaggedCredential{cred("iss_c", "acc_c", old)},
			issued: issuedSet{"iss_c": true}, complete: true,
			want: want{Report: broker.ReconcileReport{Listed: 1, Kept: 1}},
		},
		{
			name:   "ok/recorded-not-audited-single-instance-revoked",
			creds:  []broker.TaggedCredential{cred("iss_d", "acc_d", old)},
			store:  []*broker.Issuance{issuance("iss_d", "acc_d", time.Time{}, "")},
			issued: issuedSet{}, complete: true,
			want: want{Report: broker.ReconcileReport{Listed: 1, Revoked: 1}, Revoked: []string{"acc_d"}, Reasons: []string{broker.OrphanNotAudited}},
		},
		{
			name:   "ok/recorded-not-audited-shared-store-kept",
			creds:  []broker.TaggedCredential{cred("iss_e", "acc_e", old)},
			store:  []*broker.Issuance{issuance("iss_e", "acc_e", time.Time{}, "")},
			issued: issuedSet{},
			want:   want{Report: broker.ReconcileReport{Listed: 1, Kept: 1, Known: 1}},
		},
		{
			name:   "ok/recorded-not-audited-own-chain-shared-store-revoked",
			creds:  []broker.TaggedCredential{cred("iss_o", "acc_o", old), cred("iss_p", "acc_p", old)},
			store:  []*broker.Issuance{chained("iss_o", "acc_o", "chn_mine"), chained("iss_p", "acc_p", "chn_mine")},
			issued: issuedSet{"iss_p": true}, chain: "chn_mine",
			want: want{Report: broker.ReconcileReport{Listed: 2, Kept: 1, Known: 1, Revoked: 1}, Revoked: []string{"acc_o"}, Reasons: []string{broker.OrphanNotAudited}},
		},
		{
			name:   "ok/recorded-not-audited-other-chain-shared-store-kept",
			creds:  []broker.TaggedCredential{cred("iss_q", "acc_q", old)},
			store:  []*broker.Issuance{chained("iss_q", "acc_q", "chn_other")},
			issued: issuedSet{}, chain: "chn_mine",
			want: want{Report: broker.ReconcileReport{Listed: 1, Kept: 1, Known: 1}},
		},
		{
			name:   "ok/recorded-own-chain-before-the-log-reaches-kept",
			creds:  []broker.TaggedCredential{cred("iss_r", "acc_r", old)},
			store:  []*broker.Issuance{chained("iss_r", "acc_r", "chn_mine")},
			issued: issuedSet{}, chain: "chn_mine", since: old.Add(time.Second),
			want: want{Report: broker.ReconcileReport{Listed: 1, Kept: 1, Known: 1}},
		},
		{
			name:   "ok/recorded-single-instance-before-the-log-reaches-kept",
			creds:  []broker.TaggedCredential{cred("iss_s", "acc_s", old)},
			store:  []*broker.Issuance{issuance("iss_s", "acc_s", time.Time{}, "")},
			issued: issuedSet{}, complete: true, since: old.Add(time.Second),
			want: want{Report: broker.ReconcileReport{Listed: 1, Kept: 1, Known: 1}},
		},
		{
			name:   "ok/revoked-in-store-revoked",
			creds:  []broker.TaggedCredential{cred("iss_f", "acc_f", old)},
			store:  []*broker.Issuance{issuance("iss_f", "acc_f", old, "")},
			issued: issuedSet{"iss_f": true},
			want:   want{Report: broker.ReconcileReport{Listed: 1, Revoked: 1}, Revoked: []string{"acc_f"}, Reasons: []string{broker.OrphanRevoked}},
		},
		{
			name:   "ok/fresh-admin-revocation-left-to-worker",
			creds:  []broker.TaggedCredential{cred("iss_g", "acc_g", old)},
			store:  []*broker.Issuance{issuance("iss_g", "acc_g", now.Add(-time.Second), "rev_1")},
			issued: issuedSet{"iss_g": true},
			want:   want{Report: broker.ReconcileReport{Listed: 1, Young: 1}},
		},
		{
			name:   "ok/other-accessor-revoked",
			creds:  []broker.TaggedCredential{cred("iss_h", "acc_other", old)},
			store:  []*broker.Issuance{issuance("iss_h", "acc_h", time.Time{}, "")},
			issued: issuedSet{"iss_h": true},
			want:   want{Report: broker.ReconcileReport{Listed: 1, Revoked: 1}, Revoked: []string{"acc_other"}, Reasons: []string{broker.OrphanAccessorChanged}},
		},
		{
			name:   "ok/young-left-alone",
			creds:  []broker.TaggedCredential{cred("iss_i", "acc_i", now.Add(-5*time.Second))},
			issued: issuedSet{},
			want:   want{Report: broker.ReconcileReport{Listed: 1, Young: 1}},
		},
		{
			name:   "ok/untagged-ignored",
			creds:  []broker.TaggedCredential{cred("", "acc_root", old)},
			issued: issuedSet{},
			want:   want{Report: broker.ReconcileReport{Listed: 1}},
		},
		{
			name:    "ok/no-index-store-decides",
			creds:   []broker.TaggedCredential{cred("iss_j", "acc_j", old), cred("iss_k", "acc_k", old)},
			store:   []*broker.Issuance{issuance("iss_j", "acc_j", time.Time{}, "")},
			noIndex: true, complete: true,
			want: want{Report: broker.ReconcileReport{Listed: 2, Kept: 1, Known: 1, Revoked: 1}, Revoked: []string{"acc_k"}, Reasons: []string{broker.OrphanNoRecord}},
		},
		{
			name:      "fail/store-down-revokes-nothing",
			creds:     []broker.TaggedCredential{cred("iss_l", "acc_l", old)},
			issued:    issuedSet{},
			failStore: true,
			want:      want{Report: broker.ReconcileReport{Listed: 1}, Err: true},
		},
		{
			name:    "fail/index-unreadable-revokes-nothing",
			creds:   []broker.TaggedCredential{cred("iss_m", "acc_m", old)},
			issued:  nil,
			want:    want{Err: true},
			noIndex: false,
		},
		{
			name:    "fail/list-error",
			listErr: broker.Unavailable("vault_unavailable", time.Second, errors.New("down")),
			issued:  issuedSet{},
			want:    want{Err: true},
		},
		{
			name:   "fail/revoke-error-counted",
			creds:  []broker.TaggedCredential{cred("iss_n", "acc_n", old)},
			issued: issuedSet{},
			revErr: broker.Unavailable("vault_unavailable", time.Second, errors.New("down")),
			want:   want{Report: broker.ReconcileReport{Listed: 1, Failures: 1}},
		},
		{
			// Expired (or revoked by someone else) between the listing
			// and the revocation: nothing was revoked, nothing recorded.
			name:   "ok/gone-before-revocation-records-nothing",
			creds:  []broker.TaggedCredential{cred("iss_o", "acc_o", old)},
			issued: issuedSet{},
			revErr: broker.Errorf(broker.ErrNotFound, "token_gone", "gone", nil),
			want:   want{Report: broker.ReconcileReport{Listed: 1, Gone: 1}},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			var store broker.Store = memstore.New(func() time.Time { return now })
			for _, is := range tc.store {
				if err := store.PutIssuance(ctx, is); err != nil {
					t.Fatal(err)
				}
			}
			if tc.failStore {
				store = failingStore{store}
			}
			src := &fakeTagged{creds: tc.creds, listErr: tc.listErr, revErr: tc.revErr}
			sink := &brokertest.Sink{}
			o := broker.ReconcilerOptions{Source: src, Store: store, Audit: sink, IssuedComplete: tc.complete, Chain: tc.chain,
				Grace: time.Minute, Now: func() time.Time { return now }}
			switch {
			case tc.noIndex:
			case !tc.since.IsZero():
				o.Issued = issuedSince{tc.issued, tc.since}
			default:
				o.Issued = tc.issued
			}
			r, err := broker.NewReconciler(o)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := r.RunOnce(ctx)
			var reasons []string
			for _, ev := range sink.Events() {
				if ev.Type != "orphan_revoked" {
					t.Errorf("event type %q, want orphan_revoked", ev.Type)
				}
				if ev.Credential == nil || ev.Credential.Accessor == "" || ev.IssuanceID == "" {
					t.Errorf("orphan_revoked event without issuance id or accessor: %+v", ev)
				}
				reasons = append(reasons, ev.Reason)
			}
			got := want{Report: rep, Revoked: src.revoked, Reasons: reasons, Err: err != nil}
			// What the Store explains is not looked up at the backend.
			if len(src.skipped) != rep.Known {
				t.Errorf("skipped at the backend %v, report says %d known", src.skipped, rep.Known)
			}
			if !tc.want.Err && len(src.skipped)+len(src.looked) != len(tc.creds) {
				t.Errorf("skipped %v + looked up %v, want every one of %d credentials once", src.skipped, src.looked, len(tc.creds))
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("RunOnce() = %+v (err %v), want %+v; diff (-want +got):\n%s", got, err, tc.want, diff)
			}
		})
	}
}

func TestReconcilerEventFailureCounted(t *testing.T) {
	now := time.Now()
	src := &fakeTagged{creds: []broker.TaggedCredential{{Kind: broker.KindVaultToken, Ref: "acc", IssuanceID: "iss_x", CreatedAt: now.Add(-time.Hour)}}}
	sink := &brokertest.Sink{Fail: func(*audit.Event) bool { return true }}
	r, err := broker.NewReconciler(broker.ReconcilerOptions{Source: src, Store: memstore.New(time.Now), Audit: sink})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := r.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := (broker.ReconcileReport{Listed: 1, Failures: 1}); rep != want {
		t.Errorf("RunOnce() = %+v, want %+v", rep, want)
	}
}

func TestNewReconcilerValidates(t *testing.T) {
	tests := []struct {
		name string
		o    broker.ReconcilerOptions
		ok   bool
	}{
		{"fail/empty", broker.ReconcilerOptions{}, false},
		{"fail/negative-grace", broker.ReconcilerOptions{Source: &fakeTagged{}, Store: memstore.New(time.Now), Audit: &brokertest.Sink{}, Grace: -1}, false},
		{"ok/defaults", broker.ReconcilerOptions{Source: &fakeTagged{}, Store: memstore.New(time.Now), Audit: &brokertest.Sink{}}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := broker.NewReconciler(tc.o)
			if got := err == nil; got != tc.ok {
				t.Errorf("NewReconciler() error = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}

func TestReconcilerRunStops(t *testing.T) {
	src := &fakeTagged{}
	r, err := broker.NewReconciler(broker.ReconcilerOptions{Source: src, Store: memstore.New(time.Now), Audit: &brokertest.Sink{}, Interval: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run() = %v, want nil", err)
	}
}

// lookupCountingStore counts the Store's reference lookups.
type lookupCountingStore struct {
	broker.Store
	mu           sync.Mutex
	single, many int
}

func (s *lookupCountingStore) FindIssuance(ctx context.Context, k broker.RefKind, v string) (*broker.Issuance, error) {
	s.mu.Lock()
	s.single++
	s.mu.Unlock()
	return s.Store.FindIssuance(ctx, k, v)
}

func (s *lookupCountingStore) FindIssuances(ctx context.Context, k broker.RefKind, vs []string) ([]*broker.Issuance, error) {
	s.mu.Lock()
	s.many++
	s.mu.Unlock()
	return s.Store.FindIssuances(ctx, k, vs)
}

// TestReconcilerBatchesStoreLookups: the references the source asks about
// in one call cost one Store call, not one each.
func TestReconcilerBatchesStoreLookups(t *testing.T) {
	now := time.Now()
	old := now.Add(-time.Hour)
	store := &lookupCountingStore{Store: memstore.New(func() time.Time { return now })}
	src := &fakeTagged{}
	for i := range 50 {
		id, acc := fmt.Sprintf("iss_%02d", i), fmt.Sprintf("acc_%02d", i)
		src.creds = append(src.creds, broker.TaggedCredential{Kind: broker.KindVaultToken, Ref: acc, IssuanceID: id, CreatedAt: old})
		if err := store.PutIssuance(context.Background(), &broker.Issuance{ID: id, Kind: broker.KindVaultToken, IssuedAt: old,
			ExpiresAt: now.Add(time.Hour), Refs: broker.CredentialRefs{Accessor: acc, ExpiresAt: now.Add(time.Hour)}}); err != nil {
			t.Fatal(err)
		}
	}
	r, err := broker.NewReconciler(broker.ReconcilerOptions{Source: src, Store: store, Audit: &brokertest.Sink{}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := r.RunOnce(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if want := (broker.ReconcileReport{Listed: 50, Kept: 50, Known: 50}); rep != want {
		t.Errorf("RunOnce() = %+v, want %+v", rep, want)
	}
	if store.single != 0 || store.many != 1 {
		t.Errorf("Store lookups: %d FindIssuance, %d FindIssuances; want 0 and 1", store.single, store.many)
	}
}

// blockingTagged's listing waits until its ctx ends, as a Vault call cut
// short by shutdown does, and then fails with the ctx's error.
type blockingTagged struct{ listing chan struct{} }

func (b *blockingTagged) ListTagged(ctx context.Context, _ func([]string) []bool) ([]broker.TaggedCredential, error) {
	close(b.listing)
	<-ctx.Done()
	return nil, broker.Unavailable("vault_unavailable", time.Second, fmt.Errorf("vault lookup accessor: %w", ctx.Err()))
}

func (b *blockingTagged) RevokeTagged(context.Context, broker.TaggedCredential) error { return nil }

// TestReconcilerRunShutdownIsNotAWarning: a run cut short because the
// broker is shutting down (Run's ctx ended) is not a failed reconciliation:
// it must not log a warning every operator then looks into (keytrail dev
// printed one at every exit).
func TestReconcilerRunShutdownIsNotAWarning(t *testing.T) {
	var logs bytes.Buffer
	src := &blockingTagged{listing: make(chan struct{})}
	r, err := broker.NewReconciler(broker.ReconcilerOptions{Source: src, Store: memstore.New(time.Now), Audit: &brokertest.Sink{},
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	<-src.listing
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run() = %v, want nil", err)
	}
	if strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("a run cut short by shutdown logged a warning:\n%s", logs.String())
	}
}

// revokeDuringShutdown is a source whose one revocation is under way at the
// backend when the broker starts shutting down: the backend revokes the
// credential, and the answer arrives after the shutdown began. A call whose
// ctx has ended by then reports the ctx's error, as an HTTP client does.
type revokeDuringShutdown struct {
	fakeTagged
	revoking chan struct{} // closed when the backend has revoked
	answer   chan struct{} // closed to let the backend's answer arrive
}

func (s *revokeDuringShutdown) RevokeTagged(ctx context.Context, c broker.TaggedCredential) error {
	if err := s.fakeTagged.RevokeTagged(ctx, c); err != nil {
		return err
	}
	close(s.revoking)
	<-s.answer
	if err := ctx.Err(); err != nil {
		return broker.Unavailable("vault_unavailable", time.Second, fmt.Errorf("vault revoke accessor: %w", err))
	}
	return nil
}

// TestReconcilerRevocationFinishesOnShutdown: a revocation the reconciler
// started is finished and audited even when the broker shuts down while it
// is under way. Cancelling it would leave a credential revoked at the
// backend without its orphan_revoked event, and the next run no longer
// finds it to write one.
func TestReconcilerRevocationFinishesOnShutdown(t *testing.T) {
	now := time.Now()
	src := &revokeDuringShutdown{revoking: make(chan struct{}), answer: make(chan struct{})}
	src.creds = []broker.TaggedCredential{{Kind: broker.KindVaultToken, Ref: "acc_orphan", IssuanceID: "iss_orphan", Workload: "app",
		CreatedAt: now.Add(-time.Hour)}}
	sink := &brokertest.Sink{}
	r, err := broker.NewReconciler(broker.ReconcilerOptions{Source: src, Store: memstore.New(time.Now), Audit: sink})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type result struct {
		rep broker.ReconcileReport
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := r.RunOnce(ctx)
		done <- result{rep, err}
	}()
	<-src.revoking
	cancel() // shutdown while the backend's answer is on its way
	close(src.answer)
	res := <-done
	if want := (broker.ReconcileReport{Listed: 1, Revoked: 1}); res.rep != want {
		t.Errorf("RunOnce() = %+v (err %v), want %+v", res.rep, res.err, want)
	}
	if diff := cmp.Diff([]string{"acc_orphan"}, src.revoked); diff != "" {
		t.Errorf("revoked at the backend (-want +got):\n%s", diff)
	}
	evs := sink.Events()
	if len(evs) != 1 || evs[0].Type != audit.TypeOrphanRevoked || evs[0].Reason != broker.OrphanNoRecord ||
		evs[0].IssuanceID != "iss_orphan" || evs[0].Credential == nil || evs[0].Credential.Accessor != "acc_orphan" {
		t.Errorf("events = %+v, want one orphan_revoked (no_record) for iss_orphan / acc_orphan", evs)
	}
}

// TestReconcilerStats: the totals behind the keytrail_reconcile_* metrics.
func TestReconcilerStats(t *testing.T) {
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	old := now.Add(-10 * time.Minute)
	ctx := context.Background()
	store := memstore.New(func() time.Time { return now })
	for _, is := range []*broker.Issuance{
		{ID: "iss_kept", Workload: "app", Kind: broker.KindVaultToken, IssuedAt: old, ExpiresAt: now.Add(time.Hour),
			Refs: broker.CredentialRefs{Accessor: "acc_kept"}},
		{ID: "iss_rev", Workload: "app", Kind: broker.KindVaultToken, IssuedAt: old, ExpiresAt: now.Add(time.Hour),
			Refs: broker.CredentialRefs{Accessor: "acc_rev"}, RevokedAt: old},
	} {
		if err := store.PutIssuance(ctx, is); err != nil {
			t.Fatal(err)
		}
	}
	cred := func(iss, acc string) broker.TaggedCredential {
		return broker.TaggedCredential{Kind: broker.KindVaultToken, Ref: acc, IssuanceID: iss, Workload: "app", CreatedAt: old}
	}
	src := &fakeTagged{creds: []broker.TaggedCredential{cred("iss_kept", "acc_kept"), cred("iss_rev", "acc_rev"), cred("iss_none", "acc_none")}}
	r, err := broker.NewReconciler(broker.ReconcilerOptions{Source: src, Store: store, Audit: &brokertest.Sink{}, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	want := broker.ReconcileStats{Revoked: map[string]uint64{}}
	if diff := cmp.Diff(want, r.Stats()); diff != "" {
		t.Errorf("Stats() before any run (-want +got):\n%s", diff)
	}

	// A completed run: 3 looked at, 2 revoked for their reasons.
	if _, err := r.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	want = broker.ReconcileStats{Runs: 1, Listed: 3, Revoked: map[string]uint64{broker.OrphanRevoked: 1, broker.OrphanNoRecord: 1}, LastSuccess: now}
	if diff := cmp.Diff(want, r.Stats()); diff != "" {
		t.Errorf("Stats() after a run (-want +got):\n%s", diff)
	}

	// A failed run (the listing failed): counted, the last success stays.
	src.listErr = broker.Unavailable("vault_unavailable", time.Second, errors.New("down"))
	if _, err := r.RunOnce(ctx); err == nil {
		t.Fatal("RunOnce() with a failing listing = nil error")
	}
	want.FailedRuns = 1
	if diff := cmp.Diff(want, r.Stats()); diff != "" {
		t.Errorf("Stats() after a failed run (-want +got):\n%s", diff)
	}

	// Revocations that fail, or find the token gone, are counted apart.
	src.listErr = nil
	src.revErr = broker.Unavailable("vault_unavailable", time.Second, errors.New("down"))
	now = now.Add(time.Minute)
	if _, err := r.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	src.revErr = broker.Errorf(broker.ErrNotFound, "token_gone", "gone", nil)
	if _, err := r.RunOnce(ctx); err != nil {
		t.Fatal(err)
	}
	want.Runs, want.Listed, want.Failures, want.Gone, want.LastSuccess = 3, 9, 2, 2, now
	if diff := cmp.Diff(want, r.Stats()); diff != "" {
		t.Errorf("Stats() after failed and gone revocations (-want +got):\n%s", diff)
	}

	// A run cut short by shutdown is neither completed nor failed.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, _ = r.RunOnce(cctx)
	got := r.Stats()
	if got.Runs != want.Runs || got.FailedRuns != want.FailedRuns {
		t.Errorf("Stats() after a run cut short = runs %d, failed %d; want %d, %d", got.Runs, got.FailedRuns, want.Runs, want.FailedRuns)
	}
}

// TestReconcilerEventStallIsBounded: an orphan_revoked event whose write
// hangs (a real sink ignores ctx once the event is queued) holds the run at
// most CallTimeout, as every call of it: then it is counted as a failure,
// and the event lands once the sink recovers.
func TestReconcilerEventStallIsBounded(t *testing.T) {
	now := time.Now()
	src := &fakeTagged{creds: []broker.TaggedCredential{{Kind: broker.KindVaultToken, Ref: "acc", IssuanceID: "iss_x", CreatedAt: now.Add(-time.Hour)}}}
	rec := &brokertest.Sink{}
	sink, release := newStallingSink(t, rec, audit.TypeOrphanRevoked)
	r, err := broker.NewReconciler(broker.ReconcilerOptions{Source: src, Store: memstore.New(time.Now), Audit: sink, CallTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	type result struct {
		rep broker.ReconcileReport
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := r.RunOnce(context.Background())
		done <- result{rep, err}
	}()
	var res result
	select {
	case res = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("RunOnce() still waiting for its stalled orphan_revoked event after 10s (CallTimeout 50ms)")
	}
	if want := (broker.ReconcileReport{Listed: 1, Failures: 1}); res.err != nil || res.rep != want {
		t.Errorf("RunOnce() = %+v, %v; want %+v", res.rep, res.err, want)
	}
	release()
	select {
	case typ := <-sink.added:
		if typ != audit.TypeOrphanRevoked {
			t.Errorf("event %s, want orphan_revoked", typ)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no orphan_revoked event within 10s of the sink's recovery")
	}
}
