package trace

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// DefaultMaxEvents bounds an Index when Options.MaxEvents is 0: about
// 200,000 kept events, in the order of 200-400 MB at the largest event
// sizes keytrail writes, usually far less (twice that while Live rebuilds
// its index: the old one is kept until the new one is complete).
const DefaultMaxEvents = 200_000

// Options configure an Index.
type Options struct {
	// MaxEvents is the number of kept events past which the oldest are
	// dropped (0: DefaultMaxEvents). Only events that matter to trace and
	// report are kept (see Keeps).
	MaxEvents int
}

// Index resolves query values to issuances, uses and revocations. It is
// safe for concurrent use; events are immutable once added.
type Index struct {
	mu      sync.RWMutex
	max     int
	evs     []*audit.Event // kept events, oldest first; evs[i] has number base+i
	base    int64
	keys    map[string][]ref
	dropped int64 // events dropped by the bound since the index started
	skipped int64 // lines that were not audit events (malformed)

	// compactedAfter is the number of the event after the one whose add
	// last compacted the index (0: none did): dropAfter cannot undo a
	// compaction.
	compactedAfter int64
}

// ref is one event number under a key, and what the key was on that event.
type ref struct {
	n    int64
	kind string
}

// NewIndex returns an empty index.
func NewIndex(o Options) (*Index, error) {
	if o.MaxEvents < 0 {
		return nil, errors.New("trace: MaxEvents must not be negative")
	}
	if o.MaxEvents == 0 {
		o.MaxEvents = DefaultMaxEvents
	}
	return &Index{max: o.MaxEvents, keys: map[string][]ref{}}, nil
}

// Keeps reports whether the index keeps events of this type: every event
// about issuances, uses, revocations and denies, and checkpoints and policy
// loads are not kept.
func Keeps(ev *audit.Event) bool {
	switch ev.Type {
	case audit.TypeCheckpoint, audit.TypePolicyLoad, audit.TypeStart, audit.TypeStop, audit.TypeAdmin:
		return false
	}
	return true
}

// Add indexes one event. Events the index does not keep are ignored.
func (x *Index) Add(ev *audit.Event) {
	if ev == nil || !Keeps(ev) {
		return
	}
	x.mu.Lock()
	defer x.mu.Unlock()
	x.add(ev)
}

func (x *Index) add(ev *audit.Event) {
	n := x.base + int64(len(x.evs))
	x.evs = append(x.evs, ev)
	eventKeys(ev, func(key, kind string) {
		x.keys[key] = append(x.keys[key], ref{n: n, kind: kind})
	})
	if len(x.evs) > x.max {
		x.compact()
	}
}

// eventKeys calls put with each key ev is indexed under (not empty), and
// what the key is on ev.
func eventKeys(ev *audit.Event, put0 func(key, kind string)) {
	put := func(key, kind string) {
		if key != "" {
			put0(key, kind)
		}
	}
	put(ev.IssuanceID, KindIssuanceID)
	put(ev.UseID, KindUseID)
	put(ev.RevocationID, KindRevocationID)
	put(ev.RequestID, KindRequestID)
	if c := ev.Credential; c != nil {
		if fp, ok := NormalizeFingerprint(c.Fingerprint); ok {
			put(fp, KindFingerprint)
		}
		put(c.Accessor, KindAccessor)
		put(c.LeaseID, KindLeaseID)
		put(c.Username, KindUsername)
		put(c.JTI, KindJTI)
		put(c.Serial, KindSerial)
		if s, ok := canonicalSerial(c.Serial); ok {
			put(serialKey(s), KindSerial)
		}
	}
	for _, id := range listedIssuances(ev) {
		if id != ev.IssuanceID {
			put(id, KindIssuanceID)
		}
	}
	for _, id := range upstreamRequestIDs(ev) {
		put(id[1], KindUpstreamRequestID)
	}
}

// addLine indexes one line as AddLine does, and returns the index's
// counters after it: the number its next kept event gets, and the count
// of skipped lines (a lineMark's).
func (x *Index) addLine(line []byte) (next, skipped int64) {
	ev, err := audit.ParseLine(line)
	x.mu.Lock()
	defer x.mu.Unlock()
	switch {
	case err != nil:
		x.skipped++
	case ev != nil && Keeps(ev):
		x.add(ev)
	}
	return x.base + int64(len(x.evs)), x.skipped
}

// dropAfter removes the events numbered from next on, those of lines a
// sink cut from the file being read (with their keys), and sets the count
// of skipped lines back to skipped: the index is then as it was after the
// last line the file still holds (whose lineMark gives next and skipped).
// It does nothing and returns false unless the index's counters are still
// now (nothing was added since the last line read) and none of the events
// from next on made it compact (the bound dropped older events then, which
// the file still holds). The removal is atomic for readers: they see the
// index before or after it, either one a prefix of what the file held.
func (x *Index) dropAfter(next, skipped int64, now lineMark) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	end := x.base + int64(len(x.evs))
	if end != now.next || x.skipped != now.skipped || next < x.base || next < x.compactedAfter || next > end || skipped > x.skipped {
		return false
	}
	i := int(next - x.base)
	for _, ev := range x.evs[i:] {
		eventKeys(ev, func(key, _ string) {
			rs := x.keys[key]
			j := len(rs)
			for j > 0 && rs[j-1].n >= next { // refs are in event order
				j--
			}
			if j == 0 {
				delete(x.keys, key)
			} else {
				x.keys[key] = rs[:j]
			}
		})
	}
	clear(x.evs[i:])
	x.evs = x.evs[:i]
	x.skipped = skipped
	return true
}

// counters returns the number the next kept event gets and the count of
// skipped lines (a lineMark's counters, now).
func (x *Index) counters() lineMark {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return lineMark{next: x.base + int64(len(x.evs)), skipped: x.skipped}
}

// compact drops the oldest quarter of the bound and rebuilds the key map.
func (x *Index) compact() {
	x.compactedAfter = x.base + int64(len(x.evs))
	drop := len(x.evs) - x.max + x.max/4
	if drop > len(x.evs) {
		drop = len(x.evs)
	}
	kept := slices.Clone(x.evs[drop:])
	x.dropped += int64(drop)
	x.evs, x.base, x.keys = nil, x.base+int64(drop), map[string][]ref{}
	max := x.max
	x.max = len(kept) + 1 // no compaction while re-adding
	for _, ev := range kept {
		x.add(ev)
	}
	x.max = max
}

// AddLine parses one audit line and indexes it. A malformed line is
// counted (Stats.Skipped) and reported as an error wrapping
// audit.ErrMalformed; the caller decides whether to go on.
func (x *Index) AddLine(line []byte) error {
	ev, err := audit.ParseLine(line)
	x.AddParsed(ev, err)
	return err
}

// AddParsed indexes what audit.ParseLine made of a line, as AddLine does:
// ev, or when err is not nil a malformed line, counted (Stats.Skipped).
// For lines decoded already (audit.VerifyOptions.Parsed).
func (x *Index) AddParsed(ev *audit.Event, err error) {
	if err != nil {
		x.mu.Lock()
		x.skipped++
		x.mu.Unlock()
		return
	}
	x.Add(ev)
}

// Consume indexes every complete line of r and returns the number of bytes
// consumed: a last line without its newline (a write in progress) is left
// for the next read. Malformed lines are skipped and counted.
func (x *Index) Consume(r io.Reader) (int64, error) {
	return x.consume(r, nil, nil)
}

// lastRead is the last line consume read (the bytes before what it
// consumed back to the newline before them), kept as it was read: the
// file may no longer hold it by the time the caller looks.
type lastRead struct {
	line []byte    // a copy of it, with its newline, unless long
	long hash.Hash // its hash so far, when longer than audit.MaxLineBytes
	n    int64     // its length (0: nothing was consumed)
}

// sum returns the SHA-256 of the last line read and its length.
func (t *lastRead) sum() ([sha256.Size]byte, int64) {
	if t.long != nil {
		var s [sha256.Size]byte
		t.long.Sum(s[:0])
		return s, t.n
	}
	return sha256.Sum256(t.line), t.n
}

func (t *lastRead) short(line []byte) {
	t.line, t.long, t.n = append(t.line[:0], line...), nil, int64(len(line))
}

// more adds frag to a long line; first: its first bytes are in buf.
func (t *lastRead) more(buf, frag []byte, first bool) {
	if first {
		if t.long == nil {
			t.long = sha256.New()
		}
		t.long.Reset()
		t.long.Write(buf)
		t.n = int64(len(buf))
	}
	t.long.Write(frag)
	t.n += int64(len(frag))
}

// consume is Consume, keeping in last, when not nil, the last line it
// consumed, and in recent, when not nil, the last lines.
func (x *Index) consume(r io.Reader, last *lastRead, recent *recentLines) (int64, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	var consumed int64
	var long bool
	var buf []byte
	for {
		frag, err := br.ReadSlice('\n')
		switch {
		case err == nil:
			consumed += int64(len(frag))
			if !long {
				line := frag
				if len(buf) > 0 {
					line = append(buf, frag...)
				}
				if last != nil {
					last.short(line)
				}
				next, skipped := x.addLine(line[:len(line)-1])
				if recent != nil {
					recent.add(line, next, skipped)
				}
			} else {
				if last != nil {
					last.more(nil, frag, false)
				}
				x.mu.Lock()
				x.skipped++
				x.mu.Unlock()
			}
			buf, long = buf[:0], false
		case errors.Is(err, bufio.ErrBufferFull):
			consumed += int64(len(frag))
			switch {
			case long:
				if last != nil {
					last.more(nil, frag, false)
				}
			case len(buf)+len(frag) > audit.MaxLineBytes:
				if last != nil {
					last.more(buf, frag, true)
				}
				if recent != nil {
					// Its bytes are consumed and not kept: recent
					// starts again after it.
					recent.reset()
				}
				long, buf = true, buf[:0]
			default:
				buf = append(buf, frag...)
			}
		case errors.Is(err, io.EOF):
			// frag (and buf) is an incomplete line: not consumed.
			consumed -= int64(len(buf))
			if long {
				// An oversized incomplete line is skipped when its newline comes.
				return consumed, nil
			}
			return consumed, nil
		default:
			return consumed - int64(len(buf)), fmt.Errorf("trace: read audit log: %w", err)
		}
	}
}

// Stats describe what the index holds.
type Stats struct {
	Events  int   `json:"events"`            // kept events
	Dropped int64 `json:"dropped,omitempty"` // oldest events dropped by the bound
	Skipped int64 `json:"skipped,omitempty"` // malformed lines
	Max     int   `json:"max_events"`
}

// Stats returns the index's counters.
func (x *Index) Stats() Stats {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return Stats{Events: len(x.evs), Dropped: x.dropped, Skipped: x.skipped, Max: x.max}
}

// Events returns the kept events, oldest first. The events must not be
// modified.
func (x *Index) Events() []*audit.Event {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return slices.Clone(x.evs)
}

// Match says how a query was read.
type Match struct {
	Kind  string `json:"kind"`  // one of the Kind constants
	Value string `json:"value"` // the non-secret form of the value (a raw credential shows as its fingerprint)
}

// Result is the answer of a trace: one issuance, every use and every
// revocation of it, oldest first (SPEC: {"issuance", "uses", "revocations"}).
type Result struct {
	Query    Match            `json:"query"`
	Issuance *broker.Issuance `json:"issuance"`
	Uses     []*audit.Event   `json:"uses"`
	// Revocations are ordered by when each took effect: a revoke or block
	// event at its details.decided_at (a late one was written after it),
	// any other at its time (sortRevocations).
	Revocations []*audit.Event `json:"revocations"`
	// AlsoMatched lists other issuances the value points to (a request or
	// revocation that concerned several), oldest first.
	AlsoMatched []string `json:"also_matched,omitempty"`
	// From says where the issuance record came from: "audit_log", "store"
	// (made by another instance, or older than the index), or both.
	From string `json:"from"`
	// Vault lists entries of Vault's audit log made with this credential,
	// when a Vault audit log was given.
	Vault []VaultEntry `json:"vault,omitempty"`
	// VaultTotal counts the requests of Vault's audit log made with this
	// credential: set (0 when none) whenever a Vault audit log was
	// searched, nil (absent from the JSON) when none was given.
	// VaultDropped counts those of them Vault does not list (past
	// MaxVaultEntries).
	VaultTotal   *int `json:"vault_total,omitempty"`
	VaultDropped int  `json:"vault_dropped,omitempty"`
	// Conflicts lists, one sentence each, records of this issuance that
	// disagree with the one shown about what was issued (workload, owner,
	// session, grant, kind, identity, a credential reference): another
	// issue event for the same issuance id, or the store's record. One
	// issuance id names one issuance, so any entry means that a record
	// does not say what was issued.
	Conflicts []string `json:"conflicts,omitempty"`
}

// From values.
const (
	FromAuditLog = "audit_log"
	FromStore    = "store"
	FromBoth     = "audit_log+store"
)

// ErrNoMatch is wrapped (with broker.ErrNotFound) when no issuance matches.
var ErrNoMatch = errors.New("trace: no issuance matches")

func notFound() error {
	return &broker.Error{Kind: broker.ErrNotFound, Reason: "no_match", Safe: "no issuance matches this value", Err: ErrNoMatch}
}

// Lookup resolves q. It returns an error wrapping broker.ErrInvalidRequest
// for an empty or oversized q and broker.ErrNotFound when nothing matches.
func (x *Index) Lookup(q string) (*Result, error) {
	cands, err := candidates(q)
	if err != nil {
		return nil, &broker.Error{Kind: broker.ErrInvalidRequest, Reason: "bad_query", Safe: "q must be a non-empty value of at most 64 KiB", Err: err}
	}
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, c := range cands {
		var ids []string
		kind := c.kind
		for _, key := range c.keys() {
			refs := x.live(x.keys[key])
			if len(refs) == 0 {
				continue
			}
			found := x.issuancesOf(refs, key)
			if len(found) == 0 {
				continue
			}
			if kind == "" || kind == KindFingerprint && refs[0].kind != KindFingerprint {
				kind = refs[0].kind
			}
			for _, id := range found {
				if !slices.Contains(ids, id) {
					ids = append(ids, id)
				}
			}
		}
		if len(ids) == 0 {
			continue
		}
		if len(c.serials) > 1 {
			// The value reads as two serials (hex and decimal): every
			// issuance either names is an answer, oldest first.
			x.sortByIssuedAt(ids)
		}
		res := x.resultFor(ids[0])
		res.Query = Match{Kind: kind, Value: c.shown}
		if len(ids) > 1 {
			res.AlsoMatched = ids[1:]
		}
		return res, nil
	}
	return nil, notFound()
}

// Issuance returns the trace of one issuance id, or nil when the index has
// no event about it.
func (x *Index) Issuance(id string) *Result {
	x.mu.RLock()
	defer x.mu.RUnlock()
	if len(x.live(x.keys[id])) == 0 {
		return nil
	}
	return x.resultFor(id)
}

// live drops refs to events compacted away (they are rebuilt on compaction,
// so this only guards the window during one).
func (x *Index) live(rs []ref) []ref {
	out := rs[:0:0]
	for _, r := range rs {
		if r.n >= x.base {
			out = append(out, r)
		}
	}
	return out
}

func (x *Index) ev(r ref) *audit.Event { return x.evs[r.n-x.base] }

// issuancesOf lists the issuance ids the events under key point to, in
// order of first appearance. An issuance-id key points to itself.
func (x *Index) issuancesOf(rs []ref, key string) []string {
	var ids []string
	seen := map[string]bool{}
	addID := func(id string) {
		if id != "" && !seen[id] {
			seen[id] = true
			ids = append(ids, id)
		}
	}
	for _, r := range rs {
		if r.kind == KindIssuanceID {
			addID(key)
			continue
		}
		ev := x.ev(r)
		addID(ev.IssuanceID)
		for _, id := range listedIssuances(ev) {
			addID(id)
		}
	}
	// Only issuances the index or a revocation names are answers; order
	// them by issuance time where the issue event is known.
	x.sortByIssuedAt(ids)
	return ids
}

// sortByIssuedAt orders ids by the time of their issue event, oldest
// first; ids whose issue event the index does not hold (another
// instance's, or dropped by the bound) come last, in their given order:
// the answer is one whose record the index has.
func (x *Index) sortByIssuedAt(ids []string) {
	at := make(map[string]time.Time, len(ids))
	for _, id := range ids {
		at[id] = x.issuedAt(id)
	}
	sort.SliceStable(ids, func(i, j int) bool { return issuedBefore(at[ids[i]], at[ids[j]]) })
}

// issuedBefore orders issuance times oldest first, unknown (zero) last.
func issuedBefore(ti, tj time.Time) bool {
	if ti.IsZero() || tj.IsZero() {
		return !ti.IsZero() && tj.IsZero()
	}
	return ti.Before(tj)
}

// issueTime is issuedAt for callers that do not hold mu.
func (x *Index) issueTime(id string) time.Time {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.issuedAt(id)
}

// issueEvent returns the issue event of id that resultFor rebuilds the
// issuance from (the first the index holds), or nil.
func (x *Index) issueEvent(id string) *audit.Event {
	x.mu.RLock()
	defer x.mu.RUnlock()
	for _, r := range x.live(x.keys[id]) {
		if ev := x.ev(r); ev.Type == audit.TypeIssue && ev.IssuanceID == id {
			return ev
		}
	}
	return nil
}

func (x *Index) issuedAt(id string) time.Time {
	for _, r := range x.live(x.keys[id]) {
		if ev := x.ev(r); ev.Type == audit.TypeIssue && ev.IssuanceID == id {
			return parseTime(ev.Time)
		}
	}
	return time.Time{}
}

// resultFor gathers everything about one issuance. Callers hold mu.
func (x *Index) resultFor(id string) *Result {
	res := &Result{Uses: []*audit.Event{}, Revocations: []*audit.Event{}}
	revs := map[string]bool{}
	seen := map[int64]bool{}
	for _, r := range x.live(x.keys[id]) {
		if seen[r.n] {
			continue
		}
		seen[r.n] = true
		ev := x.ev(r)
		switch ev.Type {
		case audit.TypeIssue:
			switch {
			case ev.IssuanceID != id:
			case res.Issuance == nil:
				res.Issuance = issuanceOf(ev)
			default:
				if ds := issuanceDiffs(res.Issuance, issuanceOf(ev)); len(ds) > 0 {
					res.Conflicts = append(res.Conflicts, otherIssueEvent(id, ev, ds, "shown"))
				}
			}
		case audit.TypeUse, audit.TypeUseResult, audit.TypeIntrospect, audit.TypeSharedUse, audit.TypeDeny:
			if ev.IssuanceID == id {
				res.Uses = append(res.Uses, ev)
			}
		case audit.TypeRevoke, audit.TypeRevokeResult, audit.TypeBlock, audit.TypeOrphanRevoked:
			res.Revocations = append(res.Revocations, ev)
			if ev.RevocationID != "" {
				revs[ev.RevocationID] = true
			}
		}
	}
	// Blocks and results of the same revocations, which need not list the
	// issuance themselves, and the other revoke events of a revocation
	// split over several (details.part): the revocation is shown whole.
	for rid := range revs {
		for _, r := range x.live(x.keys[rid]) {
			if seen[r.n] {
				continue
			}
			ev := x.ev(r)
			if ev.RevocationID == rid && (ev.Type == audit.TypeBlock || ev.Type == audit.TypeRevokeResult || ev.Type == audit.TypeRevoke) {
				seen[r.n] = true
				res.Revocations = append(res.Revocations, ev)
			}
		}
	}
	sortEvents(res.Uses)
	sortRevocations(res.Revocations)
	if res.Issuance == nil {
		res.Issuance = &broker.Issuance{ID: id}
	} else {
		res.From = FromAuditLog
	}
	unmade := notMadeRevocations(res.Revocations)
	for _, ev := range res.Revocations {
		if revokes(ev, id) && !unmade[ev.RevocationID] {
			// The earliest: a revoke event written again comes later
			// than its decision (revokedTime).
			if t := revokedTime(ev); res.Issuance.RevocationID == "" || t.Before(res.Issuance.RevokedAt) {
				res.Issuance.RevokedAt, res.Issuance.RevocationID = t, ev.RevocationID
			}
		}
	}
	return res
}

// revokedTime is when ev, an event that revokes (or a block event),
// took effect: its time, or for a revoke or block event written late or
// again after its first write (by another instance's revocation worker,
// after a restart, or after the late write failed) the decision's own
// time, which it carries in details.decided_at when earlier (the sink
// stamped it with the time it was written).
func revokedTime(ev *audit.Event) time.Time {
	t := parseTime(ev.Time)
	if ev.Type != audit.TypeRevoke && ev.Type != audit.TypeBlock {
		return t
	}
	if s, ok := ev.Details["decided_at"].(string); ok {
		if d := parseTime(s); !d.IsZero() && (t.IsZero() || d.Before(t)) {
			return d
		}
	}
	return t
}

// revokes reports whether ev (a revocation event gathered for issuance id)
// ended id: a revoke decision naming it (a revocation split over several
// revoke events names it in one of them; a sweep's find in none), a
// revoke_result listing it as revoked (the only event naming an issuance
// the sweep found), or an orphan_revoked event whose backend revocation
// succeeded.
func revokes(ev *audit.Event, id string) bool {
	switch ev.Type {
	case audit.TypeRevoke:
		return ev.IssuanceID == id || slices.Contains(listedIssuances(ev), id)
	case audit.TypeRevokeResult:
		return slices.Contains(stringsOf(ev.Details["revoked"]), id)
	case audit.TypeOrphanRevoked:
		return ev.IssuanceID == id && (ev.Outcome == nil || ev.Outcome.Status < 300)
	}
	return false
}

// notMadeRevocations returns the ids of the revocations that evs say were
// not made: a revoke_result with details.not_made (its record could not be
// stored, nothing was revoked; its revoke event named issuances all the
// same, the decision being audited first).
func notMadeRevocations(evs []*audit.Event) map[string]bool {
	out := map[string]bool{}
	for _, ev := range evs {
		if ev.Type == audit.TypeRevokeResult && ev.RevocationID != "" && ev.Details["not_made"] == true {
			out[ev.RevocationID] = true
		}
	}
	return out
}

// sortEvents orders events by time, then chain and seq (stable for equal
// times from one chain).
func sortEvents(evs []*audit.Event) {
	sort.SliceStable(evs, func(i, j int) bool {
		ti, tj := parseTime(evs[i].Time), parseTime(evs[j].Time)
		if !ti.Equal(tj) {
			return ti.Before(tj)
		}
		if evs[i].Chain != evs[j].Chain {
			return evs[i].Chain < evs[j].Chain
		}
		return evs[i].Seq < evs[j].Seq
	})
}

// sortRevocations orders a result's revocation events as the text timeline
// shows them: by when each took effect (revokedTime: a revoke or block
// event written late or again stands at its details.decided_at), then
// chain and seq. Ordered by write time, a late decision came after events
// that followed it.
func sortRevocations(evs []*audit.Event) {
	sort.SliceStable(evs, func(i, j int) bool {
		ti, tj := revokedTime(evs[i]), revokedTime(evs[j])
		if !ti.Equal(tj) {
			return ti.Before(tj)
		}
		if evs[i].Chain != evs[j].Chain {
			return evs[i].Chain < evs[j].Chain
		}
		return evs[i].Seq < evs[j].Seq
	})
}

// listedIssuances returns the issuance ids a revocation event lists in its
// details (issuance_ids of revoke; revoked, pending and failed of
// revoke_result).
func listedIssuances(ev *audit.Event) []string {
	if ev.Details == nil {
		return nil
	}
	switch ev.Type {
	case audit.TypeRevoke, audit.TypeRevokeResult, audit.TypeOrphanRevoked:
	default:
		return nil
	}
	var out []string
	for _, k := range []string{"issuance_ids", "revoked", "pending", "failed"} {
		out = append(out, stringsOf(ev.Details[k])...)
	}
	return out
}

// upstreamRequestIDs returns the upstream's own request ids a use_result
// event records (details.upstream_request_ids: header name to id), by
// header name, sorted by name.
func upstreamRequestIDs(ev *audit.Event) [][2]string {
	if ev.Type != audit.TypeUseResult || ev.Details == nil {
		return nil
	}
	var out [][2]string
	switch m := ev.Details["upstream_request_ids"].(type) {
	case map[string]any: // as decoded from JSON
		for k, v := range m {
			if s, ok := v.(string); ok && s != "" {
				out = append(out, [2]string{k, s})
			}
		}
	case map[string]string: // as the proxy writes it
		for k, s := range m {
			if s != "" {
				out = append(out, [2]string{k, s})
			}
		}
	}
	slices.SortFunc(out, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return out
}

// stringsOf reads a []string or a []any of strings (or of objects with an
// "issuance_id") as decoded from JSON.
func stringsOf(v any) []string {
	switch t := v.(type) {
	case []string:
		return t
	case []any:
		var out []string
		for _, e := range t {
			switch u := e.(type) {
			case string:
				out = append(out, u)
			case map[string]any:
				if s, ok := u["issuance_id"].(string); ok {
					out = append(out, s)
				}
			}
		}
		return out
	case []broker.RevokeFailure:
		out := make([]string, len(t))
		for i, f := range t {
			out[i] = f.IssuanceID
		}
		return out
	}
	return nil
}

// issuanceOf rebuilds the issuance record from its issue event. The
// identity claims used are taken from details.claims when the event has
// them.
func issuanceOf(ev *audit.Event) *broker.Issuance {
	is := &broker.Issuance{
		ID: ev.IssuanceID, Workload: ev.Workload, Owner: ev.Owner, SessionID: ev.SessionID,
		Grant: ev.Grant, Kind: ev.Kind, IssuedAt: parseTime(ev.Time), RequestID: ev.RequestID,
		AuditChain: ev.Chain,
	}
	if ev.Identity != nil {
		is.Identity = broker.IdentityRef{Iss: ev.Identity.Iss, Sub: ev.Identity.Sub, JTI: ev.Identity.JTI}
	}
	for _, a := range ev.Act {
		is.Act = append(is.Act, broker.IdentityRef{Iss: a.Iss, Sub: a.Sub, JTI: a.JTI})
	}
	if ev.Source != nil {
		is.Source = broker.Source{IP: ev.Source.IP, UserAgent: ev.Source.UserAgent}
	}
	if c := ev.Credential; c != nil {
		is.Refs = broker.CredentialRefs{Fingerprint: c.Fingerprint, Accessor: c.Accessor, LeaseID: c.LeaseID,
			Username: c.Username, JTI: c.JTI, Serial: c.Serial, ExpiresAt: parseTime(c.ExpiresAt)}
		is.ExpiresAt = is.Refs.ExpiresAt
	}
	if m, ok := ev.Details["claims"].(map[string]any); ok {
		is.Claims = m
	}
	return is
}

// fieldDiff is one field on which two records of an issuance disagree.
type fieldDiff struct{ field, shown, other string }

// issuanceDiffs lists the fields on which other disagrees with shown about
// what was issued: the workload, owner, session, grant, kind, identity and
// credential references, set once at issuance. Times (each record has its
// own clock and precision), claims, source and the revocation are left
// out; a request id or audit chain only one of them has is no
// disagreement (records written before the field existed).
func issuanceDiffs(shown, other *broker.Issuance) []fieldDiff {
	var out []fieldDiff
	cmp := func(field, a, b string, both bool) {
		if a != b && (!both || a != "" && b != "") {
			out = append(out, fieldDiff{field, a, b})
		}
	}
	cmp("workload", shown.Workload, other.Workload, false)
	cmp("owner", shown.Owner, other.Owner, false)
	cmp("session_id", shown.SessionID, other.SessionID, false)
	cmp("grant", shown.Grant, other.Grant, false)
	cmp("kind", shown.Kind, other.Kind, false)
	cmp("identity.iss", shown.Identity.Iss, other.Identity.Iss, false)
	cmp("identity.sub", shown.Identity.Sub, other.Identity.Sub, false)
	cmp("identity.jti", shown.Identity.JTI, other.Identity.JTI, false)
	a, b := shown.Refs, other.Refs
	cmp("credential.fingerprint", a.Fingerprint, b.Fingerprint, false)
	cmp("credential.accessor", a.Accessor, b.Accessor, false)
	cmp("credential.lease_id", a.LeaseID, b.LeaseID, false)
	cmp("credential.username", a.Username, b.Username, false)
	cmp("credential.jti", a.JTI, b.JTI, false)
	cmp("credential.serial", a.Serial, b.Serial, false)
	cmp("request_id", shown.RequestID, other.RequestID, true)
	cmp("audit_chain", shown.AuditChain, other.AuditChain, true)
	return out
}

// otherIssueEvent is the sentence that names issue event other of issuance
// id, which disagrees (ds) with the one shownAs ("shown", "counted").
func otherIssueEvent(id string, other *audit.Event, ds []fieldDiff, shownAs string) string {
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%s %q (%s: %q)", d.field, d.other, shownAs, d.shown)
	}
	return fmt.Sprintf("the audit log holds another issue event for %s (chain %s, seq %d) that disagrees: %s",
		id, other.Chain, other.Seq, strings.Join(parts, ", "))
}

// parseTime reads an audit time; a bad one is the zero time.
func parseTime(s string) time.Time {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}
	}
	return t.UTC()
}
