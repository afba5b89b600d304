// Package jwks owns the key list /.well-known/jwks.json serves: the public
// keys of the transit keys the policy in force signs JWTs with (and of keys
// served whatever the policy, such as the audit checkpoint key), and of the
// keys a policy no longer names while JWTs they signed may still be live,
// each such "retiring" key with the time it leaves (docs/SPEC-ADDITIONS.md
// "JWKS: transit keys a reload retires").
//
// Keys serves that list (it is a broker.PublicKeySource), builds it anew for
// each policy (Update), records the retiring keys, and the keys the policy
// signs with, in the store shared by every instance (Store: PutRetiringKey,
// RetiringKeys), and merges those the store records at each refresh
// (Refresh, every RefreshEvery), so that a key stays served on every
// instance, and after a restart, until its JWTs have expired.
//
// It promises: a key is served until its time and not after it (PublicKeys
// hides it at once; the next refresh stops reading it); of two times for one
// key the later wins; only names the policy or the store give are ever
// served; and neither a store nor a key source (Vault) outage takes a key
// out of what is served: the list in force stays until the new one can be
// read. The public keys themselves come from a key source built per key list
// (Options.Source: Vault transit, adapters/vault, behind
// broker.PublicKeySource); this package names no adapter.
package jwks

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/policies"
)

// RetireLeeway is how long past the last possible expiry of its JWTs a
// transit key the policy no longer names stays in the JWKS: verifiers
// commonly accept a JWT up to a minute past exp (clock skew).
const RetireLeeway = time.Minute

// RefreshEvery is how often an instance reads the store's retiring keys
// (Refresh): the broker's JWKS cache time (adapters/vault
// DefaultPublicKeysTTL).
const RefreshEvery = 30 * time.Second

// Store is the part of broker.Store that records retiring keys for every
// instance sharing it (see broker.Store's PutRetiringKey and RetiringKeys).
type Store interface {
	PutRetiringKey(ctx context.Context, name string, until time.Time) error
	RetiringKeys(ctx context.Context, now time.Time) (map[string]time.Time, error)
}

// Signing is what a policy signs JWTs with: each transit key its jwt grants
// sign with, and the longest ttl of those grants (no JWT the key signed
// under the policy outlives it).
type Signing map[string]time.Duration

// SigningKeys is pol's Signing (none for a nil pol).
func SigningKeys(pol *policies.Policy) Signing {
	out := Signing{}
	if pol == nil {
		return out
	}
	for _, g := range pol.Grants() {
		if g.JWT != nil {
			out[g.JWT.TransitKey] = max(out[g.JWT.TransitKey], g.TTLDuration())
		}
	}
	return out
}

// Options configure New.
type Options struct {
	// Source builds the source of the public keys of the transit keys
	// names (sorted, at least one), whose KIDs are "<name>:<version>" and
	// whose PublicKeys returns a list the caller may change: Vault's
	// transit keys. Required.
	Source func(names []string) (broker.PublicKeySource, error)
	// ValidName reports whether a name the store records can be a transit
	// key's; the others are ignored. nil: every name.
	ValidName func(name string) bool
	// Always names keys served whatever the policy (the audit checkpoint
	// transit key, so that verifiers of checkpoints find it).
	Always []string
	// Store records the retiring keys for every instance sharing it; nil:
	// none (SetStore may give it later, at any time).
	Store Store
	// Log gets the store and key source failures; default slog.Default().
	Log *slog.Logger
	// Now is the clock of retirement; default time.Now. It is read once,
	// by New: a clock the caller sets up later is not seen, so wire it
	// before New (cmd/keytrail: brokerRuntime.now before initPolicy).
	Now func() time.Time
}

// Keys is the key list served (see the package doc). Its methods are safe
// for concurrent use.
type Keys struct {
	source func([]string) (broker.PublicKeySource, error)
	valid  func(string) bool
	always []string
	log    *slog.Logger
	now    func() time.Time
	store  atomic.Pointer[storeRef] // nil or a nil s: no store

	cur atomic.Pointer[set]
	// mu is held while Update builds and applies a new set: a Refresh
	// meanwhile merges nothing (the update reads the store itself).
	mu sync.Mutex
}

// set is one key list, never changed once served.
type set struct {
	signing Signing
	// names lists the keys read from src, sorted: Always, signing's keys
	// and retiring's.
	names []string
	// src serves names' public keys (nil when names is empty); a set
	// with the same names keeps it, and so its cache.
	src broker.PublicKeySource
	// retiring are the keys among names that signing and Always do not
	// name, each with the time it leaves the JWKS. They are those an
	// Update dropped and those the store records (keys any instance
	// sharing it, before this one started too, signed with or dropped;
	// Record), the later time winning.
	retiring map[string]time.Time
	// badKID is set once PublicKeys left out a key whose KID is not
	// "<name>:<version>", unknownKID once it left out one whose name is
	// not among names (each logged once per set, not per request).
	badKID, unknownKID atomic.Bool
}

var _ broker.PublicKeySource = (*Keys)(nil)

// New validates o and returns the Keys of a policy that signs with signing.
func New(o Options, signing Signing) (*Keys, error) {
	if o.Source == nil {
		return nil, errors.New("jwks: a key source is required")
	}
	k := &Keys{source: o.Source, valid: o.ValidName, always: slices.Clone(o.Always), log: o.Log, now: o.Now}
	k.SetStore(o.Store)
	if k.log == nil {
		k.log = slog.Default()
	}
	if k.now == nil {
		k.now = time.Now
	}
	st, err := k.build(signing, nil, nil)
	if err != nil {
		return nil, err
	}
	k.cur.Store(st)
	return k, nil
}

// storeRef holds the Store of a Keys (an interface value, so that it can
// be swapped atomically).
type storeRef struct{ s Store }

// SetStore makes k record and read retiring keys in s (nil: none). It may
// be called while k is in use: a Refresh, Stored or Record running then
// uses the store it found when it started.
func (k *Keys) SetStore(s Store) { k.store.Store(&storeRef{s}) }

// storeOf is the store k records in, nil when none.
func (k *Keys) storeOf() Store {
	if r := k.store.Load(); r != nil {
		return r.s
	}
	return nil
}

// build is the set of a policy that signs with signing. It adds keys, and
// keeps those of prev that signing no longer names while JWTs they signed
// may be live: until the longest ttl of prev's grants that signed with the
// key, plus RetireLeeway, after the update that dropped it (a later update
// does not extend that). stored are the retiring keys the store records
// (Stored): those signing does not name are kept until their time too, the
// later one winning, so a restart or another instance does not forget them.
// When the names do not change, prev's key source (and its cache) is kept.
func (k *Keys) build(signing Signing, prev *set, stored map[string]time.Time) (*set, error) {
	names := slices.Collect(maps.Keys(signing))
	names = append(names, k.always...)
	st := &set{signing: signing}
	now := k.now()
	retire := func(name string, until time.Time) {
		if slices.Contains(names, name) || !now.Before(until) {
			return
		}
		if st.retiring == nil {
			st.retiring = map[string]time.Time{}
		}
		if until.After(st.retiring[name]) {
			st.retiring[name] = until
		}
	}
	if prev != nil {
		for _, name := range prev.names {
			until, ok := prev.retiring[name]
			if !ok {
				until = now.Add(prev.signing[name] + RetireLeeway)
			}
			retire(name, until)
		}
	}
	for name, until := range stored {
		if k.valid == nil || k.valid(name) {
			retire(name, until)
		}
	}
	for name := range st.retiring {
		names = append(names, name)
	}
	slices.Sort(names)
	st.names = slices.Compact(names)
	switch {
	case len(st.names) == 0:
	case prev != nil && slices.Equal(prev.names, st.names):
		st.src = prev.src
	default:
		src, err := k.source(st.names)
		if err != nil {
			return nil, fmt.Errorf("jwks: %w", err)
		}
		st.src = src
	}
	return st, nil
}

// Update builds the set of a policy that signs with signing from the set
// served (see build) and stored (what Stored read), calls apply (when not
// nil) with its retiring keys, and serves it once apply returns nil. A set
// that cannot be built (its key source) is returned as an error before
// apply runs; apply's error is returned as is, and nothing changes. While
// it runs, Refresh merges nothing.
func (k *Keys) Update(signing Signing, stored map[string]time.Time, apply func(retiring map[string]time.Time) error) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	st, err := k.build(signing, k.cur.Load(), stored)
	if err != nil {
		return err
	}
	if apply != nil {
		if err := apply(maps.Clone(st.retiring)); err != nil {
			return err
		}
	}
	k.cur.Store(st)
	return nil
}

// Retiring returns the retiring keys served, each with its time (nil when
// there are none).
func (k *Keys) Retiring() map[string]time.Time { return maps.Clone(k.cur.Load().retiring) }

// Names returns the transit keys whose public keys are read, sorted.
func (k *Keys) Names() []string { return slices.Clone(k.cur.Load().names) }

// PublicKeys serves the public keys of the set in force, less the retiring
// keys past their time.
func (k *Keys) PublicKeys(ctx context.Context) ([]broker.PublicKey, error) {
	st := k.cur.Load()
	if st == nil || st.src == nil {
		return nil, nil
	}
	keys, err := st.src.PublicKeys(ctx)
	if err != nil {
		return keys, err
	}
	// A retiring key past its time leaves now, not at the next refresh
	// (which stops reading it). keys is the caller's own copy.
	//
	// Every KID is one broker.KeyID made: adapters/vault's TransitKeys
	// writes KeyID(name, version) for the names the set gives it (never
	// empty) and versions from 1 (it reads min_decryption_version as at
	// least 1). A KID ParseKeyID refuses cannot come from it; were a
	// source to serve one, its key name would be unknown, so it could
	// never be hidden when retiring (and the minter, which reads KIDs by
	// the same rule, never signs with it): it is left out and logged,
	// not served under the name "". Likewise a KID naming a key the set
	// does not (the source is built for names and serves nothing else):
	// the package promises that only names the policy or the store give
	// are served, and no retiring time would ever hide such a key.
	now := k.now()
	return slices.DeleteFunc(keys, func(pk broker.PublicKey) bool {
		name, _, ok := broker.ParseKeyID(pk.KID)
		if !ok {
			if st.badKID.CompareAndSwap(false, true) {
				k.log.Warn("the key source served a key whose kid is not <name>:<version>; it is left out of the JWKS",
					slog.String("kid", pk.KID))
			}
			return true
		}
		if _, known := slices.BinarySearch(st.names, name); !known {
			if st.unknownKID.CompareAndSwap(false, true) {
				k.log.Warn("the key source served a key of a transit key the key list does not name; it is left out of the JWKS",
					slog.String("kid", pk.KID))
			}
			return true
		}
		until, retiring := st.retiring[name]
		return retiring && !now.Before(until)
	}), nil
}

// Stored reads the retiring keys the store records, unexpired now. A
// failure is logged and returned: callers keep what they know.
func (k *Keys) Stored(ctx context.Context) (map[string]time.Time, error) {
	return k.storedIn(ctx, k.storeOf())
}

func (k *Keys) storedIn(ctx context.Context, s Store) (map[string]time.Time, error) {
	if s == nil {
		return nil, nil
	}
	stored, err := s.RetiringKeys(ctx, k.now())
	if err != nil {
		k.log.Warn("cannot read the retiring transit keys from the store; the JWKS keeps the keys known here",
			slog.String("error", err.Error()))
		return nil, err
	}
	return stored, nil
}

// Record writes to the store each of the served set's retiring keys that
// stored (what it held when last read) lacks or holds with an earlier time,
// so every instance sharing it, and this one after a restart, keeps serving
// the key. It also records the keys the set's policy signs with, until two
// refreshes past the longest life of their JWTs (ttl plus RetireLeeway),
// when the record would not cover the JWTs signed until the next refresh:
// an instance stopped and started with a policy that no longer names a key
// (changed while it was stopped), and the instances of a rolling update
// that never named it, serve it as long as JWTs this instance signed with
// it may live. A failure is logged; the next Refresh writes it again.
func (k *Keys) Record(ctx context.Context, stored map[string]time.Time) {
	k.recordIn(ctx, k.storeOf(), stored)
}

func (k *Keys) recordIn(ctx context.Context, s Store, stored map[string]time.Time) {
	if s == nil {
		return
	}
	st := k.cur.Load()
	now := k.now()
	want := maps.Clone(st.retiring)
	for _, name := range slices.Sorted(maps.Keys(st.signing)) {
		life := st.signing[name] + RetireLeeway
		if stored[name].Before(now.Add(RefreshEvery + life)) {
			if want == nil {
				want = map[string]time.Time{}
			}
			want[name] = now.Add(2*RefreshEvery + life)
		}
	}
	for name, until := range want {
		if !now.Before(until) || !stored[name].Before(until.Truncate(time.Millisecond)) {
			continue
		}
		if err := s.PutRetiringKey(ctx, name, until); err != nil {
			k.log.Warn("cannot record a JWT signing transit key in the store; other instances, and this one after a restart, may not serve it once it is retired",
				slog.String("transit_key", name), slog.Time("until", until), slog.String("error", err.Error()))
		}
	}
}

// Refresh writes to the store what Record finds missing, and merges the
// retiring keys the store records into the set served (keys the policy
// names no more: another instance's reload, or an instance's run before
// this one started, signed with them). A store that cannot be read, or a
// new key list whose keys cannot be read from the key source yet, changes
// nothing: the JWKS keeps serving what it serves. Keys past their time
// leave the key list here, so the source is no longer asked for them
// (PublicKeys hides them until then). While an Update runs (which reads
// the store itself) it merges nothing.
func (k *Keys) Refresh(ctx context.Context) {
	s := k.storeOf()
	if s == nil {
		return
	}
	stored, err := k.storedIn(ctx, s)
	if err != nil {
		return
	}
	k.recordIn(ctx, s, stored)
	if !k.mu.TryLock() {
		return
	}
	defer k.mu.Unlock()
	cur := k.cur.Load()
	st, err := k.build(cur.signing, cur, stored)
	if err != nil {
		k.log.Warn("cannot serve the retiring transit keys the store records", slog.String("error", err.Error()))
		return
	}
	changed, added := false, false
	for name, until := range st.retiring {
		old, ok := cur.retiring[name]
		changed = changed || !ok || until.After(old)
		added = added || !ok
	}
	if !changed && slices.Equal(st.names, cur.names) {
		return
	}
	if st.src != nil && !slices.Equal(st.names, cur.names) {
		// A new key list (build keeps the source of the same names)
		// starts with an empty cache: read it first, so
		// that a Vault outage now does not take the JWKS down.
		if _, err := st.src.PublicKeys(ctx); err != nil {
			k.log.Warn("cannot read the JWKS key list with the retiring transit keys changed from Vault; serving the current one, trying again at the next refresh",
				slog.String("error", err.Error()))
			return
		}
	}
	k.cur.Store(st)
	if added {
		names := slices.Sorted(maps.Keys(st.retiring))
		k.log.Info("serving retiring transit keys recorded in the store", slog.Any("transit_keys", names))
	}
}

// Run calls Refresh at each tick until ctx ends (the server ticks every
// RefreshEvery).
func (k *Keys) Run(ctx context.Context, tick <-chan time.Time) error {
	for {
		select {
		case <-tick:
			k.Refresh(ctx)
		case <-ctx.Done():
			return nil
		}
	}
}
