// Package memstore is the embedded, single-instance broker.Store: maps behind
// one RWMutex, gone when the process ends. It is what `keytrail dev` and a
// server without KEYTRAIL_REDIS_URL use; several broker instances cannot share
// it.
//
// It keeps the same contract as the Redis store (see package storetest):
// records are stored as their JSON encoding, so a caller can never mutate what
// is stored and gets back exactly what the Redis store would return (times in
// UTC, claim numbers as float64). Expired issuances are kept, because trace
// needs them, until Prune removes them.
package memstore

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/keytrail/keytrail/broker"
)

var (
	_ broker.Store        = (*Store)(nil)
	_ broker.ReplicaAcker = (*Store)(nil)
)

// Store is an in-memory broker.Store. The zero value is not usable; call New.
type Store struct {
	now func() time.Time

	mu          sync.RWMutex
	issuances   map[string]*entry
	refs        map[broker.RefKind]map[string]string // kind -> value -> issuance id
	byWorkload  map[string]map[string]struct{}
	byOwner     map[string]map[string]struct{}
	bySession   map[string]map[string]struct{}
	revocations map[string]*revEntry
	revVersion  uint64            // revocation writes so far (RevocationVersion)
	blocks      map[string][]byte // workload -> JSON
	deployment  string            // DeploymentID, once created
	retiring    map[string]int64  // PutRetiringKey: key name -> until (unix ms)
}

// entry is a stored issuance: its JSON encoding, which every read decodes
// into a fresh value, and the decoded fields the indexes and filters use.
type entry struct {
	raw  []byte
	meta broker.Issuance // decoded from raw; never handed out
}

type revEntry struct {
	raw       []byte
	createdAt time.Time
	version   uint64 // revVersion after its last write
}

// New returns an empty store. now is the store's clock (time.Now when nil);
// RunPrune measures retention from it; Prune takes its cut-off explicitly.
func New(now func() time.Time) *Store {
	if now == nil {
		now = time.Now
	}
	return &Store{
		now:         now,
		issuances:   map[string]*entry{},
		refs:        map[broker.RefKind]map[string]string{},
		byWorkload:  map[string]map[string]struct{}{},
		byOwner:     map[string]map[string]struct{}{},
		bySession:   map[string]map[string]struct{}{},
		revocations: map[string]*revEntry{},
		blocks:      map[string][]byte{},
		retiring:    map[string]int64{},
	}
}

func invalid(what string) error {
	return fmt.Errorf("memstore: %s: %w", what, broker.ErrInvalidRequest)
}

func notFound(what string) error {
	return fmt.Errorf("memstore: %s: %w", what, broker.ErrNotFound)
}

// checkCtx honours a cancelled or expired context as a Redis call would.
func checkCtx(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return broker.Unavailable("store_unavailable", time.Second, fmt.Errorf("memstore: %w", err))
	}
	return nil
}

// utcIssuance returns a shallow copy of is with every time in UTC, so that the
// JSON encoding reads back the same as from Redis.
func utcIssuance(is *broker.Issuance) *broker.Issuance {
	c := *is
	c.IssuedAt = c.IssuedAt.UTC()
	c.ExpiresAt = c.ExpiresAt.UTC()
	c.Refs.ExpiresAt = c.Refs.ExpiresAt.UTC()
	c.RevokedAt = c.RevokedAt.UTC()
	return &c
}

// PutIssuance stores is, replacing any record with the same id and moving
// every index to its new values, unless the stored record is revoked: then
// it writes nothing, as redisstore's (whose client may send a put again
// after a revocation marked the record).
func (s *Store) PutIssuance(ctx context.Context, is *broker.Issuance) error {
	if err := checkCtx(ctx); err != nil {
		return err
	}
	if is == nil || is.ID == "" {
		return invalid("issuance without id")
	}
	e, err := newEntry(is)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.issuances[is.ID]; !ok || cur.meta.RevokedAt.IsZero() {
		s.putLocked(e)
	}
	return nil
}

// newEntry encodes is for storing.
func newEntry(is *broker.Issuance) (*entry, error) {
	raw, err := json.Marshal(utcIssuance(is))
	if err != nil {
		return nil, invalid(fmt.Sprintf("issuance %s cannot be encoded: %v", is.ID, err))
	}
	e := &entry{raw: raw}
	if err := json.Unmarshal(raw, &e.meta); err != nil {
		return nil, fmt.Errorf("memstore: issuance %s: decode: %w", is.ID, err)
	}
	return e, nil
}

// putLocked stores e in place of any record with its id, moving every
// index. s.mu is held.
func (s *Store) putLocked(e *entry) {
	if old, ok := s.issuances[e.meta.ID]; ok {
		s.unindex(&old.meta)
	}
	s.issuances[e.meta.ID] = e
	s.index(&e.meta)
}

// MarkRevoked stores is, a revocation's mark or a withdrawal's (no
// RevocationID), unless the stored record is revoked already, under the
// store's lock, and returns the record as stored.
func (s *Store) MarkRevoked(ctx context.Context, is *broker.Issuance) (*broker.Issuance, error) {
	if err := checkCtx(ctx); err != nil {
		return nil, err
	}
	if is == nil || is.ID == "" || is.RevokedAt.IsZero() {
		return nil, invalid("revoked mark without issuance id or revocation time")
	}
	e, err := newEntry(is)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.issuances[is.ID]; ok && !cur.meta.RevokedAt.IsZero() {
		e = cur
	} else {
		s.putLocked(e)
	}
	return decodeIssuance(e)
}

func (s *Store) index(is *broker.Issuance) {
	for _, kind := range broker.RefKinds() {
		v, _ := is.RefValue(kind)
		if v == "" {
			continue
		}
		m := s.refs[kind]
		if m == nil {
			m = map[string]string{}
			s.refs[kind] = m
		}
		m[v] = is.ID
	}
	addTo(s.byWorkload, is.Workload, is.ID)
	addTo(s.byOwner, is.Owner, is.ID)
	addTo(s.bySession, is.SessionID, is.ID)
}

func (s *Store) unindex(is *broker.Issuance) {
	for _, kind := range broker.RefKinds() {
		v, _ := is.RefValue(kind)
		// Another issuance may have taken the value over since.
		if m := s.refs[kind]; m != nil && m[v] == is.ID {
			delete(m, v)
		}
	}
	removeFrom(s.byWorkload, is.Workload, is.ID)
	removeFrom(s.byOwner, is.Owner, is.ID)
	removeFrom(s.bySession, is.SessionID, is.ID)
}

func addTo(idx map[string]map[string]struct{}, key, id string) {
	set := idx[key]
	if set == nil {
		set = map[string]struct{}{}
		idx[key] = set
	}
	set[id] = struct{}{}
}

func removeFrom(idx map[string]map[string]struct{}, key, id string) {
	set := idx[key]
	delete(set, id)
	if len(set) == 0 {
		delete(idx, key)
	}
}

func decodeIssuance(e *entry) (*broker.Issuance, error) {
	var is broker.Issuance
	if err := json.Unmarshal(e.raw, &is); err != nil {
		return nil, fmt.Errorf("memstore: decode issuance: %w", err)
	}
	return &is, nil
}

// GetIssuance returns a copy of the issuance with that id.
func (s *Store) GetIssuance(ctx context.Context, id string) (*broker.Issuance, error) {
	if err := checkCtx(ctx); err != nil {
		return nil, err
	}
	if id == "" {
		return nil, invalid("empty issuance id")
	}
	s.mu.RLock()
	e, ok := s.issuances[id]
	s.mu.RUnlock()
	if !ok {
		return nil, notFound("issuance " + id)
	}
	return decodeIssuance(e)
}

// FindIssuance returns a copy of the issuance last stored with value under kind.
func (s *Store) FindIssuance(ctx context.Context, kind broker.RefKind, value string) (*broker.Issuance, error) {
	if err := checkCtx(ctx); err != nil {
		return nil, err
	}
	if _, ok := (&broker.Issuance{}).RefValue(kind); !ok {
		return nil, invalid(fmt.Sprintf("unknown ref kind %q", kind))
	}
	if value == "" {
		return nil, invalid(fmt.Sprintf("empty %s", kind))
	}
	s.mu.RLock()
	e, ok := s.issuances[s.refs[kind][value]]
	s.mu.RUnlock()
	if !ok {
		// Not the value: it may be a raw credential (a trace query).
		return nil, notFound("issuance by " + string(kind))
	}
	return decodeIssuance(e)
}

// FindIssuances returns FindIssuance's answer for each value, nil where
// there is none.
func (s *Store) FindIssuances(ctx context.Context, kind broker.RefKind, values []string) ([]*broker.Issuance, error) {
	if _, ok := (&broker.Issuance{}).RefValue(kind); !ok {
		return nil, invalid(fmt.Sprintf("unknown ref kind %q", kind))
	}
	out := make([]*broker.Issuance, len(values))
	for i, v := range values {
		is, err := s.FindIssuance(ctx, kind, v)
		if err != nil && !errors.Is(err, broker.ErrNotFound) {
			return nil, err
		}
		out[i] = is
	}
	return out, nil
}

// ListIssuances returns copies of the issuances matching f, ordered by expiry
// (millisecond resolution, as the Redis store scores them), then id.
func (s *Store) ListIssuances(ctx context.Context, f broker.IssuanceFilter) ([]*broker.Issuance, error) {
	if err := checkCtx(ctx); err != nil {
		return nil, err
	}
	if f.Limit < 0 {
		return nil, invalid("negative limit")
	}
	s.mu.RLock()
	var matched []*entry
	match := func(e *entry) {
		m := &e.meta
		if (f.Workload == "" || m.Workload == f.Workload) &&
			(f.Owner == "" || m.Owner == f.Owner) &&
			(f.SessionID == "" || m.SessionID == f.SessionID) &&
			(f.ActiveAt.IsZero() || m.Active(f.ActiveAt)) &&
			(f.UnexpiredAt.IsZero() || f.UnexpiredAt.Before(m.ExpiresAt)) {
			matched = append(matched, e)
		}
	}
	// Walk the most selective index that applies.
	var ids map[string]struct{}
	switch {
	case f.SessionID != "":
		ids = s.bySession[f.SessionID]
	case f.Workload != "":
		ids = s.byWorkload[f.Workload]
	case f.Owner != "":
		ids = s.byOwner[f.Owner]
	default:
		for _, e := range s.issuances {
			match(e)
		}
	}
	for id := range ids {
		match(s.issuances[id])
	}
	s.mu.RUnlock()

	slices.SortFunc(matched, func(a, b *entry) int {
		return cmp.Or(
			cmp.Compare(a.meta.ExpiresAt.UnixMilli(), b.meta.ExpiresAt.UnixMilli()),
			cmp.Compare(a.meta.ID, b.meta.ID),
		)
	})
	if f.Limit > 0 && len(matched) > f.Limit {
		matched = matched[:f.Limit]
	}
	out := make([]*broker.Issuance, 0, len(matched))
	for _, e := range matched {
		is, err := decodeIssuance(e)
		if err != nil {
			return nil, err
		}
		out = append(out, is)
	}
	return out, nil
}

// Prune removes the issuances that expired before `before` and returns how
// many it removed. Revocations and blocks are never pruned.
func (s *Store) Prune(before time.Time) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for id, e := range s.issuances {
		if e.meta.ExpiresAt.Before(before) {
			s.unindex(&e.meta)
			delete(s.issuances, id)
			n++
		}
	}
	return n
}

// DefaultRetention is how long RunPrune keeps an issuance after it expired:
// the Redis store's default, so trace answers the same either way.
const DefaultRetention = 30 * 24 * time.Hour

// RunPrune prunes, at every tick until ctx ends, the issuances that expired
// more than retention ago by the store's clock (a long-running single
// instance would otherwise keep every issuance forever). It returns nil when
// ctx ends or tick is closed.
func (s *Store) RunPrune(ctx context.Context, tick <-chan time.Time, retention time.Duration) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-tick:
			if !ok {
				return nil
			}
			s.Prune(s.now().Add(-retention))
		}
	}
}

// PutRevocation stores r, replacing any revocation with the same id.
func (s *Store) PutRevocation(ctx context.Context, r *broker.Revocation) error {
	if err := checkCtx(ctx); err != nil {
		return err
	}
	if r == nil || r.ID == "" {
		return invalid("revocation without id")
	}
	raw, created, err := encodeRevocation(r)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.putRevocationLocked(r.ID, raw, created)
	return nil
}

// encodeRevocation is the stored form of r (times in UTC) and its creation
// time.
func encodeRevocation(r *broker.Revocation) ([]byte, time.Time, error) {
	c := *r
	c.CreatedAt, c.SweepAt, c.CompletedAt, c.ResultOwed = c.CreatedAt.UTC(), c.SweepAt.UTC(), c.CompletedAt.UTC(), c.ResultOwed.UTC()
	raw, err := json.Marshal(&c)
	if err != nil {
		return nil, time.Time{}, invalid(fmt.Sprintf("revocation %s cannot be encoded: %v", r.ID, err))
	}
	return raw, c.CreatedAt, nil
}

// putRevocationLocked stores one revocation under a new change number;
// s.mu must be held for writing.
func (s *Store) putRevocationLocked(id string, raw []byte, created time.Time) {
	s.revVersion++
	s.revocations[id] = &revEntry{raw: raw, createdAt: created, version: s.revVersion}
}

// UpdateRevocation applies fn to the stored revocation id and stores the
// result, all under the store's lock: no other write can come in between,
// so fn runs once.
func (s *Store) UpdateRevocation(ctx context.Context, id string, fn func(*broker.Revocation) error) (*broker.Revocation, error) {
	if err := checkCtx(ctx); err != nil {
		return nil, err
	}
	if id == "" || fn == nil {
		return nil, invalid("update revocation without id or function")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.revocations[id]
	if !ok {
		return nil, notFound("revocation " + id)
	}
	r, err := decodeRevocation(e.raw)
	if err != nil {
		return nil, err
	}
	if err := fn(r); err != nil {
		return nil, err
	}
	if r.ID != id {
		return nil, invalid(fmt.Sprintf("update of revocation %s changed its id to %q", id, r.ID))
	}
	raw, created, err := encodeRevocation(r)
	if err != nil {
		return nil, err
	}
	s.putRevocationLocked(id, raw, created)
	return decodeRevocation(raw)
}

// RevocationVersion returns the number of revocation writes so far.
func (s *Store) RevocationVersion(ctx context.Context) (uint64, error) {
	if err := checkCtx(ctx); err != nil {
		return 0, err
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.revVersion, nil
}

func decodeRevocation(raw []byte) (*broker.Revocation, error) {
	var r broker.Revocation
	if err := json.Unmarshal(raw, &r); err != nil {
		return nil, fmt.Errorf("memstore: decode revocation: %w", err)
	}
	return &r, nil
}

// GetRevocation returns a copy of the revocation with that id.
func (s *Store) GetRevocation(ctx context.Context, id string) (*broker.Revocation, error) {
	if err := checkCtx(ctx); err != nil {
		return nil, err
	}
	if id == "" {
		return nil, invalid("empty revocation id")
	}
	s.mu.RLock()
	e, ok := s.revocations[id]
	s.mu.RUnlock()
	if !ok {
		return nil, notFound("revocation " + id)
	}
	return decodeRevocation(e.raw)
}

// ListRevocations returns copies of the revocations f keeps, ordered by
// creation time, then id.
func (s *Store) ListRevocations(ctx context.Context, f broker.RevocationFilter) ([]*broker.Revocation, error) {
	if err := checkCtx(ctx); err != nil {
		return nil, err
	}
	type item struct {
		id string
		e  *revEntry
	}
	s.mu.RLock()
	items := make([]item, 0, len(s.revocations))
	for id, e := range s.revocations {
		items = append(items, item{id, e})
	}
	s.mu.RUnlock()
	slices.SortFunc(items, func(a, b item) int {
		return cmp.Or(a.e.createdAt.Compare(b.e.createdAt), cmp.Compare(a.id, b.id))
	})
	out := make([]*broker.Revocation, 0, len(items))
	for _, it := range items {
		if (!f.Since.IsZero() && it.e.createdAt.Before(f.Since)) || it.e.version <= f.ChangedAfter {
			continue
		}
		r, err := decodeRevocation(it.e.raw)
		if err != nil {
			return nil, err
		}
		if f.Match(r) {
			out = append(out, r)
		}
	}
	return out, nil
}

// PutBlock blocks b.Workload, replacing any block it had.
func (s *Store) PutBlock(ctx context.Context, b broker.Block) error {
	if err := checkCtx(ctx); err != nil {
		return err
	}
	if b.Workload == "" {
		return invalid("block without workload")
	}
	b.CreatedAt = b.CreatedAt.UTC()
	raw, err := json.Marshal(b)
	if err != nil {
		return invalid(fmt.Sprintf("block %s cannot be encoded: %v", b.Workload, err))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blocks[b.Workload] = raw
	return nil
}

// DeleteBlock unblocks workload if its block is still revocationID's,
// checked and deleted under the store's lock; ErrNotFound when it is not
// blocked, ErrBlockChanged when another block stands.
func (s *Store) DeleteBlock(ctx context.Context, workload, revocationID string) error {
	if err := checkCtx(ctx); err != nil {
		return err
	}
	if workload == "" {
		return invalid("empty workload")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	raw, ok := s.blocks[workload]
	if !ok {
		return notFound("block of " + workload)
	}
	b, err := decodeBlock(raw)
	if err != nil {
		return err
	}
	if b.RevocationID != revocationID {
		return fmt.Errorf("memstore: block of %s is %q's, not %q's: %w", workload, b.RevocationID, revocationID, broker.ErrBlockChanged)
	}
	delete(s.blocks, workload)
	return nil
}

func decodeBlock(raw []byte) (*broker.Block, error) {
	var b broker.Block
	if err := json.Unmarshal(raw, &b); err != nil {
		return nil, fmt.Errorf("memstore: decode block: %w", err)
	}
	return &b, nil
}

// GetBlock returns the block of workload; ErrNotFound when it is not blocked.
func (s *Store) GetBlock(ctx context.Context, workload string) (*broker.Block, error) {
	if err := checkCtx(ctx); err != nil {
		return nil, err
	}
	if workload == "" {
		return nil, invalid("empty workload")
	}
	s.mu.RLock()
	raw, ok := s.blocks[workload]
	s.mu.RUnlock()
	if !ok {
		return nil, notFound("block of " + workload)
	}
	return decodeBlock(raw)
}

// ListBlocks returns every block, ordered by workload.
func (s *Store) ListBlocks(ctx context.Context) ([]broker.Block, error) {
	if err := checkCtx(ctx); err != nil {
		return nil, err
	}
	s.mu.RLock()
	raws := make([][]byte, 0, len(s.blocks))
	for _, raw := range s.blocks {
		raws = append(raws, raw)
	}
	s.mu.RUnlock()
	out := make([]broker.Block, 0, len(raws))
	for _, raw := range raws {
		b, err := decodeBlock(raw)
		if err != nil {
			return nil, err
		}
		out = append(out, *b)
	}
	slices.SortFunc(out, func(a, b broker.Block) int { return cmp.Compare(a.Workload, b.Workload) })
	return out, nil
}

// DeploymentID creates the store's deployment id on the first call and
// returns it. It lasts as long as the store: one process. (keytrail server
// therefore tags its Vault tokens with its audit chain id instead, which a
// restart on the same audit file keeps: see docs/SPEC-ADDITIONS.md.)
func (s *Store) DeploymentID(ctx context.Context) (string, error) {
	if err := checkCtx(ctx); err != nil {
		return "", err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.deployment == "" {
		s.deployment = broker.NewID(broker.PrefixDeployment)
	}
	return s.deployment, nil
}

// PutRetiringKey records name's until, keeping the later of it and the
// one stored. Like every record here it lasts as long as the process: a
// broker restarted with the in-memory store forgets its retiring keys, as
// it forgets its issuances.
func (s *Store) PutRetiringKey(ctx context.Context, name string, until time.Time) error {
	if err := checkCtx(ctx); err != nil {
		return err
	}
	if name == "" || until.IsZero() {
		return invalid("retiring key without name or until")
	}
	ms := broker.RetireMillis(until)
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.retiring[name]; !ok || ms > cur {
		s.retiring[name] = ms
	}
	return nil
}

// RetiringKeys returns the retiring keys whose until is after now and
// removes the others.
func (s *Store) RetiringKeys(ctx context.Context, now time.Time) (map[string]time.Time, error) {
	if err := checkCtx(ctx); err != nil {
		return nil, err
	}
	out := map[string]time.Time{}
	s.mu.Lock()
	defer s.mu.Unlock()
	for name, ms := range s.retiring {
		until := time.UnixMilli(ms).UTC()
		if !until.After(now) {
			delete(s.retiring, name)
			continue
		}
		out[name] = until
	}
	return out, nil
}

// AcksReplicas is false: the store is in-process and has no replicas
// (broker.ReplicaAcker).
func (s *Store) AcksReplicas() bool { return false }

// Ping always succeeds unless ctx is done: the store is in-process.
func (s *Store) Ping(ctx context.Context) error {
	return checkCtx(ctx)
}
