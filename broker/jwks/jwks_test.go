package jwks_test

import (
	"context"
	"errors"
	"go/parser"
	"go/token"
	"log/slog"
	"maps"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/jwks"
)

// fakeVault builds key sources over a fake transit engine that has every
// key (version 1) and, while down, answers nothing: a source then serves
// the list it last read, as adapters/vault's TransitKeys does, or fails.
type fakeVault struct {
	down   atomic.Bool
	mu     sync.Mutex
	builds [][]string // the names of each source built
}

func (v *fakeVault) source(names []string) (broker.PublicKeySource, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.builds = append(v.builds, slices.Clone(names))
	return &fakeSource{v: v, names: slices.Clone(names)}, nil
}

func (v *fakeVault) built() int { v.mu.Lock(); defer v.mu.Unlock(); return len(v.builds) }

type fakeSource struct {
	v      *fakeVault
	names  []string
	mu     sync.Mutex
	cached []broker.PublicKey
}

func (s *fakeSource) PublicKeys(ctx context.Context) ([]broker.PublicKey, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.v.down.Load() {
		if s.cached == nil {
			return nil, broker.Unavailable("vault_unavailable", time.Second, errors.New("vault sealed"))
		}
		return slices.Clone(s.cached), nil
	}
	s.cached = nil
	for _, n := range s.names {
		s.cached = append(s.cached, broker.PublicKey{KID: n + ":1", Alg: "EdDSA", Key: n})
	}
	return slices.Clone(s.cached), nil
}

// fakeStore keeps retiring keys as the stores do (milliseconds rounded up,
// the later time wins, entries past their time removed when read); while
// down every call fails.
type fakeStore struct {
	down atomic.Bool
	mu   sync.Mutex
	keys map[string]int64
	puts int
}

func (s *fakeStore) PutRetiringKey(ctx context.Context, name string, until time.Time) error {
	if s.down.Load() {
		return broker.Unavailable("store_unavailable", time.Second, errors.New("store down"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.puts++
	if s.keys == nil {
		s.keys = map[string]int64{}
	}
	if ms := broker.RetireMillis(until); ms > s.keys[name] {
		s.keys[name] = ms
	}
	return nil
}

func (s *fakeStore) RetiringKeys(ctx context.Context, now time.Time) (map[string]time.Time, error) {
	if s.down.Load() {
		return nil, broker.Unavailable("store_unavailable", time.Second, errors.New("store down"))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]time.Time{}
	for name, ms := range s.keys {
		if until := time.UnixMilli(ms).UTC(); until.After(now) {
			out[name] = until
		} else {
			delete(s.keys, name)
		}
	}
	return out, nil
}

func (s *fakeStore) get(name string) time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ms, ok := s.keys[name]; ok {
		return time.UnixMilli(ms).UTC()
	}
	return time.Time{}
}

type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time               { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration)          { c.mu.Lock(); c.now = c.now.Add(d); c.mu.Unlock() }
func (c *clock) Set(t time.Time)              { c.mu.Lock(); c.now = t; c.mu.Unlock() }
func (c *clock) At(d time.Duration) time.Time { return c.Now().Add(d) }

type fixture struct {
	keys  *jwks.Keys
	vault *fakeVault
	store *fakeStore
	clock *clock
	logs  *brokertest.SyncBuffer
}

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newFixture(t *testing.T, signing jwks.Signing, o jwks.Options) *fixture {
	t.Helper()
	f := &fixture{vault: &fakeVault{}, store: &fakeStore{}, clock: &clock{now: t0}, logs: &brokertest.SyncBuffer{}}
	o.Source, o.Store, o.Now = f.vault.source, f.store, f.clock.Now
	o.Log = slog.New(slog.NewTextHandler(f.logs, nil))
	k, err := jwks.New(o, signing)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	f.keys = k
	return f
}

func (f *fixture) kids(t *testing.T) []string {
	t.Helper()
	out := servedKIDs(t, f.keys)
	slices.Sort(out)
	return out
}

// servedKIDs are the KIDs k serves, in the order served.
func servedKIDs(t *testing.T, k *jwks.Keys) []string {
	t.Helper()
	keys, err := k.PublicKeys(t.Context())
	if err != nil {
		t.Fatalf("PublicKeys: %v", err)
	}
	var out []string
	for _, pk := range keys {
		out = append(out, pk.KID)
	}
	return out
}

func (f *fixture) update(t *testing.T, signing jwks.Signing, stored map[string]time.Time) {
	t.Helper()
	if err := f.keys.Update(signing, stored, nil); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

const ttl = 5 * time.Minute

// TestKeyNames: the key list has the keys the policy signs with and the
// keys served always, and keeps those the previous policy named (JWTs they
// signed are still live); with no new key the key source, and its cache,
// is kept.
func TestKeyNames(t *testing.T) {
	f := newFixture(t, jwks.Signing{"key-a": ttl}, jwks.Options{Always: []string{"checkpoints"}})
	steps := []struct {
		name    string
		signing jwks.Signing
		want    []string
		builds  int
	}{
		{"ok/start", nil, []string{"checkpoints", "key-a"}, 1},
		{"ok/key-added-new-source", jwks.Signing{"key-a": ttl, "key-b": ttl}, []string{"checkpoints", "key-a", "key-b"}, 2},
		{"ok/key-dropped-kept-same-source", jwks.Signing{"key-a": ttl}, []string{"checkpoints", "key-a", "key-b"}, 2},
		{"ok/always-key-never-retires", jwks.Signing{}, []string{"checkpoints", "key-a", "key-b"}, 2},
	}
	for i, s := range steps {
		if i > 0 {
			f.update(t, s.signing, nil)
		}
		if diff := cmp.Diff(s.want, f.keys.Names()); diff != "" {
			t.Errorf("%s: Names() (-want +got):\n%s", s.name, diff)
		}
		if got := f.vault.built(); got != s.builds {
			t.Errorf("%s: %d key sources built, want %d", s.name, got, s.builds)
		}
	}
	if _, ok := f.keys.Retiring()["checkpoints"]; ok {
		t.Errorf("Retiring() = %v: the key served always is not retiring", f.keys.Retiring())
	}
}

// TestRetireTimes: the rules that decide until when a key the policy no
// longer names is served. A dropped key stays for the longest ttl of the
// grants that signed with it plus RetireLeeway after the update that
// dropped it, and a later update does not extend that; of two times for
// one key (this instance's and the store's) the later wins; the store's
// entries past their time, with names no transit key can have, or naming a
// key the policy signs with, add nothing.
func TestRetireTimes(t *testing.T) {
	dropped := t0.Add(ttl + jwks.RetireLeeway)
	tests := []struct {
		name   string
		stored map[string]time.Time
		want   map[string]time.Time
	}{
		{"ok/dropped-key-until-ttl-plus-leeway", nil, map[string]time.Time{"key-a": dropped}},
		{"ok/later-stored-time-wins", map[string]time.Time{"key-a": dropped.Add(time.Hour)}, map[string]time.Time{"key-a": dropped.Add(time.Hour)}},
		{"ok/earlier-stored-time-loses", map[string]time.Time{"key-a": dropped.Add(-time.Minute)}, map[string]time.Time{"key-a": dropped}},
		{"ok/stored-key-added", map[string]time.Time{"key-c": t0.Add(time.Hour)}, map[string]time.Time{"key-a": dropped, "key-c": t0.Add(time.Hour)}},
		{"ok/stored-key-past-its-time-ignored", map[string]time.Time{"key-c": t0}, map[string]time.Time{"key-a": dropped}},
		{"ok/stored-bad-name-ignored", map[string]time.Time{"bad/name": t0.Add(time.Hour)}, map[string]time.Time{"key-a": dropped}},
		{"ok/stored-key-signed-with-not-retiring", map[string]time.Time{"key-b": t0.Add(time.Hour)}, map[string]time.Time{"key-a": dropped}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, jwks.Signing{"key-a": ttl, "key-b": time.Minute}, jwks.Options{
				ValidName: func(name string) bool { return !strings.Contains(name, "/") }})
			f.update(t, jwks.Signing{"key-b": time.Minute}, tc.stored)
			if diff := cmp.Diff(tc.want, f.keys.Retiring()); diff != "" {
				t.Errorf("Retiring() after the update (-want +got):\n%s", diff)
			}
			f.clock.Add(time.Minute)
			f.update(t, jwks.Signing{"key-b": time.Minute}, nil)
			if diff := cmp.Diff(tc.want, f.keys.Retiring()); diff != "" {
				t.Errorf("Retiring() after a later update (-want +got):\n%s", diff)
			}
		})
	}
}

// TestExpiredKeyHiddenThenDropped: a retiring key leaves the JWKS at its
// time, before any refresh; the next refresh stops reading it, and the
// store's expired entry with it.
func TestExpiredKeyHiddenThenDropped(t *testing.T) {
	f := newFixture(t, jwks.Signing{"key-b": ttl}, jwks.Options{})
	until := t0.Add(10 * time.Minute)
	if err := f.store.PutRetiringKey(t.Context(), "key-a", until); err != nil {
		t.Fatal(err)
	}
	f.keys.Refresh(t.Context())
	if diff := cmp.Diff([]string{"key-a:1", "key-b:1"}, f.kids(t)); diff != "" {
		t.Fatalf("JWKS before %v (-want +got):\n%s", until, diff)
	}
	if !strings.Contains(f.logs.String(), "serving retiring transit keys recorded in the store") {
		t.Errorf("the merged key is not logged:\n%s", f.logs)
	}
	f.clock.Set(until.Add(-time.Millisecond))
	if diff := cmp.Diff([]string{"key-a:1", "key-b:1"}, f.kids(t)); diff != "" {
		t.Errorf("JWKS just before %v (-want +got):\n%s", until, diff)
	}
	f.clock.Set(until)
	if diff := cmp.Diff([]string{"key-b:1"}, f.kids(t)); diff != "" {
		t.Errorf("JWKS at %v, before a refresh (-want +got):\n%s", until, diff)
	}
	if diff := cmp.Diff([]string{"key-a", "key-b"}, f.keys.Names()); diff != "" {
		t.Errorf("Names() at %v, before a refresh (-want +got):\n%s", until, diff)
	}
	f.keys.Refresh(t.Context())
	if diff := cmp.Diff([]string{"key-b"}, f.keys.Names()); diff != "" {
		t.Errorf("Names() after the refresh at %v (-want +got):\n%s", until, diff)
	}
	if got := f.keys.Retiring(); len(got) != 0 {
		t.Errorf("Retiring() after the refresh at %v = %v, want none", until, got)
	}
	if got := f.store.get("key-a"); !got.IsZero() {
		t.Errorf("store's key-a after the refresh at %v = %v, want removed", until, got)
	}
}

// TestRefreshOutagesKeepServedSet: a refresh while the store is down, or
// while the key source cannot read a new key list, changes nothing served;
// each is logged, and the next refresh that can merges the store's keys.
func TestRefreshOutagesKeepServedSet(t *testing.T) {
	f := newFixture(t, jwks.Signing{"key-b": ttl}, jwks.Options{})
	f.keys.Refresh(t.Context())
	b1 := []string{"key-b:1"}
	if diff := cmp.Diff(b1, f.kids(t)); diff != "" { // cached by the source
		t.Fatalf("JWKS at start (-want +got):\n%s", diff)
	}
	if err := f.store.PutRetiringKey(t.Context(), "key-a", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}

	f.store.down.Store(true)
	f.keys.Refresh(t.Context())
	if diff := cmp.Diff(b1, f.kids(t)); diff != "" {
		t.Errorf("JWKS after a refresh with the store down (-want +got):\n%s", diff)
	}
	if !strings.Contains(f.logs.String(), "cannot read the retiring transit keys from the store; the JWKS keeps the keys known here") {
		t.Errorf("the store outage is not logged:\n%s", f.logs)
	}
	f.store.down.Store(false)

	f.vault.down.Store(true)
	f.keys.Refresh(t.Context())
	if diff := cmp.Diff(b1, f.kids(t)); diff != "" {
		t.Errorf("JWKS after a refresh with Vault down (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"key-b"}, f.keys.Names()); diff != "" {
		t.Errorf("Names() after a refresh with Vault down (-want +got):\n%s", diff)
	}
	if !strings.Contains(f.logs.String(), "cannot read the JWKS key list with the retiring transit keys changed from Vault") {
		t.Errorf("the Vault outage is not logged:\n%s", f.logs)
	}
	f.vault.down.Store(false)

	f.keys.Refresh(t.Context())
	if diff := cmp.Diff([]string{"key-a:1", "key-b:1"}, f.kids(t)); diff != "" {
		t.Errorf("JWKS after a refresh with both back (-want +got):\n%s", diff)
	}

	// Learned from the store, the key stays while the store is down,
	// through an update too.
	f.store.down.Store(true)
	f.keys.Refresh(t.Context())
	stored, err := f.keys.Stored(t.Context())
	if err == nil {
		t.Fatal("Stored() with the store down: no error")
	}
	f.update(t, jwks.Signing{"key-b": ttl}, stored)
	if diff := cmp.Diff([]string{"key-a:1", "key-b:1"}, f.kids(t)); diff != "" {
		t.Errorf("JWKS, store down (a refresh and an update) (-want +got):\n%s", diff)
	}
}

// TestRecord: the keys the policy signs with are recorded until two
// refreshes past the longest life of their JWTs, when the store's record
// would not cover the JWTs signed until the next refresh; retiring keys
// the store lacks, or holds with an earlier time, are recorded; a failed
// write is logged and made again at the next refresh.
func TestRecord(t *testing.T) {
	f := newFixture(t, jwks.Signing{"key-a": ttl}, jwks.Options{})
	life := ttl + jwks.RetireLeeway
	f.keys.Record(t.Context(), nil)
	if got, want := f.store.get("key-a"), t0.Add(2*jwks.RefreshEvery+life); !got.Equal(want) {
		t.Fatalf("store's key-a after Record = %v, want %v", got, want)
	}
	puts := f.store.puts
	f.clock.Add(jwks.RefreshEvery)
	f.keys.Refresh(t.Context()) // the record covers the next refresh's JWTs
	if f.store.puts != puts {
		t.Errorf("a refresh whose record still covers the JWTs until the next one wrote %d times", f.store.puts-puts)
	}
	f.clock.Add(time.Millisecond)
	f.keys.Refresh(t.Context())
	if got, want := f.store.get("key-a"), f.clock.At(2*jwks.RefreshEvery+life); !got.Equal(want) {
		t.Errorf("store's key-a after the next refresh = %v, want %v", got, want)
	}

	// key-a retires, until earlier than the store's record: nothing to
	// write for it.
	f.update(t, jwks.Signing{"key-b": ttl}, map[string]time.Time{"key-a": f.store.get("key-a")})
	f.keys.Record(t.Context(), map[string]time.Time{"key-a": f.store.get("key-a"), "key-b": f.clock.At(time.Hour)})
	if f.store.puts != puts+1 {
		t.Errorf("Record with the store's times later than its own wrote %d times, want none", f.store.puts-puts-1)
	}
	f.store.down.Store(true)
	f.update(t, jwks.Signing{"key-c": ttl}, nil) // key-b retires; its record fails
	f.keys.Record(t.Context(), nil)
	if !strings.Contains(f.logs.String(), "cannot record a JWT signing transit key in the store") {
		t.Errorf("the failed write is not logged:\n%s", f.logs)
	}
	f.store.down.Store(false)
	f.keys.Refresh(t.Context())
	if got, want := f.store.get("key-b"), f.keys.Retiring()["key-b"]; want.IsZero() || got.Before(want) {
		t.Errorf("store's key-b after the next refresh = %v, want at least its retiring time %v", got, want)
	}
}

// TestUpdateApply: an update is served only once apply accepts it; while
// it runs a refresh merges nothing, and the next one does.
func TestUpdateApply(t *testing.T) {
	f := newFixture(t, jwks.Signing{"key-a": ttl}, jwks.Options{})
	refused := errors.New("audit log full")
	err := f.keys.Update(jwks.Signing{"key-b": ttl}, nil, func(retiring map[string]time.Time) error {
		if want := map[string]time.Time{"key-a": t0.Add(ttl + jwks.RetireLeeway)}; !maps.Equal(retiring, want) {
			t.Errorf("apply(%v), want %v", retiring, want)
		}
		return refused
	})
	if !errors.Is(err, refused) {
		t.Fatalf("Update with apply failing = %v, want %v", err, refused)
	}
	if diff := cmp.Diff([]string{"key-a"}, f.keys.Names()); diff != "" {
		t.Errorf("Names() after a refused update (-want +got):\n%s", diff)
	}

	if err := f.store.PutRetiringKey(t.Context(), "key-c", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	err = f.keys.Update(jwks.Signing{"key-b": ttl}, nil, func(map[string]time.Time) error {
		f.keys.Refresh(t.Context())
		if _, ok := f.keys.Retiring()["key-c"]; ok {
			t.Error("a refresh during an update merged the store's key-c")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"key-a", "key-b"}, f.keys.Names()); diff != "" {
		t.Errorf("Names() after the update (-want +got):\n%s", diff)
	}
	f.keys.Refresh(t.Context())
	if diff := cmp.Diff([]string{"key-a", "key-b", "key-c"}, f.keys.Names()); diff != "" {
		t.Errorf("Names() after the next refresh (-want +got):\n%s", diff)
	}
}

// staticSource serves the same keys on every call.
type staticSource []broker.PublicKey

func (s staticSource) PublicKeys(ctx context.Context) ([]broker.PublicKey, error) {
	return slices.Clone(s), nil
}

// newStatic is the Keys of a policy that signs with signing, src serving
// every key list, with a clock at t0 and its log.
func newStatic(t *testing.T, src staticSource, always []string, signing jwks.Signing) (*jwks.Keys, *clock, *brokertest.SyncBuffer) {
	t.Helper()
	clk := &clock{now: t0}
	logs := &brokertest.SyncBuffer{}
	k, err := jwks.New(jwks.Options{
		Source: func([]string) (broker.PublicKeySource, error) { return src, nil },
		Always: always,
		Now:    clk.Now, Log: slog.New(slog.NewTextHandler(logs, nil)),
	}, signing)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return k, clk, logs
}

// TestMalformedKIDNotServed: a key whose KID broker.ParseKeyID refuses
// (adapters/vault's TransitKeys never serves one: it writes
// broker.KeyID(name, version), version >= 1) is left out of the JWKS and
// logged once, whether or not the set has retiring keys; the others are
// served, and a retiring one past its time is hidden as before. Before,
// such a key was served under the key name "": never hidden.
func TestMalformedKIDNotServed(t *testing.T) {
	src := staticSource{
		{KID: "key-a:1", Alg: "EdDSA", Key: "a1"},
		{KID: "key-a:01", Alg: "EdDSA", Key: "a01"},
		{KID: "key-a", Alg: "EdDSA", Key: "a"},
		{KID: ":1", Alg: "EdDSA", Key: "1"},
		{KID: "key-b:1", Alg: "EdDSA", Key: "b1"},
		{KID: "key-b:0", Alg: "EdDSA", Key: "b0"},
	}
	k, clk, logs := newStatic(t, src, nil, jwks.Signing{"key-a": ttl})
	kids := func() []string { t.Helper(); return servedKIDs(t, k) }
	// key-b is not named yet: its key is left out (TestUnknownKeyNameNotServed).
	if diff := cmp.Diff([]string{"key-a:1"}, kids()); diff != "" {
		t.Errorf("JWKS without retiring keys (-want +got):\n%s", diff)
	}
	until := t0.Add(10 * time.Minute)
	if err := k.Update(jwks.Signing{"key-a": ttl}, map[string]time.Time{"key-b": until}, nil); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]time.Time{"key-b": until}, k.Retiring()); diff != "" {
		t.Fatalf("Retiring() (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{"key-a:1", "key-b:1"}, kids()); diff != "" {
		t.Errorf("JWKS with key-b retiring (-want +got):\n%s", diff)
	}
	clk.Set(until)
	if diff := cmp.Diff([]string{"key-a:1"}, kids()); diff != "" {
		t.Errorf("JWKS at key-b's time (-want +got):\n%s", diff)
	}
	// Once per set: the first set and the one Update built.
	if n := strings.Count(logs.String(), "is not <name>:<version>"); n != 2 {
		t.Errorf("the malformed KIDs are logged %d times, want 2 (once per set):\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), `kid=key-a:01`) {
		t.Errorf("the log does not name the first malformed kid:\n%s", logs)
	}
}

// TestUnknownKeyNameNotServed: a key whose KID names a transit key the
// key list does not (no key source makes one: adapters/vault reads only
// the names it is built for) is left out of the JWKS and logged once per
// set: only names the policy, Always or the store give are served, and
// such a key could never be hidden at a retiring time. Before, it was
// served as long as its KID parsed.
func TestUnknownKeyNameNotServed(t *testing.T) {
	src := staticSource{
		{KID: "key-a:1", Alg: "EdDSA", Key: "a1"},
		{KID: "key-z:1", Alg: "EdDSA", Key: "z1"},
		{KID: "audit:2", Alg: "EdDSA", Key: "audit2"},
		{KID: "key-b:3", Alg: "EdDSA", Key: "b3"},
		{KID: "key-a:2", Alg: "EdDSA", Key: "a2"},
	}
	k, clk, logs := newStatic(t, src, []string{"audit"}, jwks.Signing{"key-a": ttl})
	kids := func() []string { t.Helper(); return servedKIDs(t, k) }
	for range 2 {
		if diff := cmp.Diff([]string{"key-a:1", "audit:2", "key-a:2"}, kids()); diff != "" {
			t.Errorf("JWKS of key-a and audit (-want +got):\n%s", diff)
		}
	}
	// Named by the store, key-b is served until its time; key-z never.
	until := t0.Add(10 * time.Minute)
	if err := k.Update(jwks.Signing{"key-a": ttl}, map[string]time.Time{"key-b": until}, nil); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"key-a:1", "audit:2", "key-b:3", "key-a:2"}, kids()); diff != "" {
		t.Errorf("JWKS with key-b retiring (-want +got):\n%s", diff)
	}
	clk.Set(until)
	if diff := cmp.Diff([]string{"key-a:1", "audit:2", "key-a:2"}, kids()); diff != "" {
		t.Errorf("JWKS at key-b's time (-want +got):\n%s", diff)
	}
	// Once per set: the first set (key-z, key-b) and the one Update built
	// (key-z).
	if n := strings.Count(logs.String(), "the key list does not name"); n != 2 {
		t.Errorf("the unknown key names are logged %d times, want 2 (once per set):\n%s", n, logs)
	}
	if !strings.Contains(logs.String(), `kid=key-z:1`) {
		t.Errorf("the log does not name the first unknown kid:\n%s", logs)
	}
}

// TestSourceErrors: a key source that cannot be built fails New, and an
// update, which then changes nothing; New requires a source.
func TestSourceErrors(t *testing.T) {
	if _, err := jwks.New(jwks.Options{}, nil); err == nil {
		t.Error("New without a source: no error")
	}
	bad := errors.New("bad transit key name")
	fail := false
	src := func(names []string) (broker.PublicKeySource, error) {
		if fail {
			return nil, bad
		}
		return (&fakeVault{}).source(names)
	}
	k, err := jwks.New(jwks.Options{Source: src}, jwks.Signing{"key-a": ttl})
	if err != nil {
		t.Fatal(err)
	}
	fail = true
	if _, err := jwks.New(jwks.Options{Source: src}, jwks.Signing{"key-a": ttl}); !errors.Is(err, bad) {
		t.Errorf("New with a failing source = %v, want %v", err, bad)
	}
	applied := false
	if err := k.Update(jwks.Signing{"key-b": ttl}, nil, func(map[string]time.Time) error { applied = true; return nil }); !errors.Is(err, bad) {
		t.Errorf("Update with a failing source = %v, want %v", err, bad)
	}
	if applied {
		t.Error("apply ran for a set that could not be built")
	}
	if diff := cmp.Diff([]string{"key-a"}, k.Names()); diff != "" {
		t.Errorf("Names() after the failed update (-want +got):\n%s", diff)
	}
	if keys, err := jwks.New(jwks.Options{Source: src}, nil); err != nil || keys.Names() != nil {
		t.Errorf("New with no key = %v, %v; want no key list and no source built", keys, err)
	}
}

// TestRun: Run refreshes at each tick and returns when ctx ends.
func TestRun(t *testing.T) {
	f := newFixture(t, jwks.Signing{"key-b": ttl}, jwks.Options{})
	if err := f.store.PutRetiringKey(t.Context(), "key-a", t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	tick := make(chan time.Time)
	done := make(chan error, 1)
	go func() { done <- f.keys.Run(ctx, tick) }()
	tick <- t0
	tick <- t0 // the first tick's refresh has finished once this one is taken
	if _, ok := f.keys.Retiring()["key-a"]; !ok {
		t.Errorf("Retiring() after a tick = %v, want key-a", f.keys.Retiring())
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
}

// TestImportsNoAdapter: the package reaches Vault and the store only
// through its Options (ports), never by naming an adapter or cmd.
func TestImportsNoAdapter(t *testing.T) {
	fset := token.NewFileSet()
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, name, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			if strings.HasPrefix(p, "github.com/keytrail/keytrail/adapters") || strings.HasPrefix(p, "github.com/keytrail/keytrail/cmd") {
				t.Errorf("%s imports %s", name, p)
			}
		}
	}
}

// TestSetStoreWhileRefreshing: SetStore may be called while Refresh runs
// (the server's JWKS loop, a test's wiring): under -race this was a data
// race on the store field, and a refresh that started without a store and
// found one must record the keys the policy signs with once it is set.
func TestSetStoreWhileRefreshing(t *testing.T) {
	f := newFixture(t, jwks.Signing{"key-b": ttl}, jwks.Options{})
	f.keys.SetStore(nil)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
				f.keys.Refresh(t.Context())
			}
		}
	}()
	f.keys.SetStore(f.store)
	// Poll, with a deadline, until the refreshing goroutine has seen the
	// store (key-b recorded).
	deadline := time.Now().Add(10 * time.Second)
	for f.store.get("key-b").IsZero() && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	close(stop)
	wg.Wait()
	if f.store.get("key-b").IsZero() {
		t.Errorf("key-b not recorded by the refreshes after SetStore")
	}
}
