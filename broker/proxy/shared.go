package proxy

import (
	"slices"
	"sync"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// Bounds of the shared-use record.
const (
	maxTrackedIssuances = 100_000
	maxAddrsPerIssuance = 64
	// pruneEvery is how often expired issuances are dropped, so the record
	// holds about the credentials still alive instead of growing to
	// maxTrackedIssuances first (a soak showed it growing ~2.6 MB a minute).
	pruneEvery = time.Minute
)

// sharedTracker remembers, per issuance, the source addresses it was used
// from. It lives in memory, per broker instance. It holds one entry per
// proxy credential in use, so an entry is kept small: a value in the map
// (no allocation of its own) with the first address, a slice of the others
// (nil for the usual single address) and the expiry in Unix nanoseconds.
// A map of addresses per issuance cost ~300 bytes each, 46% of the live
// heap in a soak (~85,000 credentials alive).
type sharedTracker struct {
	mu     sync.Mutex
	seen   map[string]seenAddrs
	pruned time.Time // last pass over seen for expired issuances
}

type seenAddrs struct {
	first   string
	others  []string // further addresses, in the order seen
	expires int64    // UnixNano
}

// count is how many addresses the issuance was used from.
func (e *seenAddrs) count() int {
	if e.first == "" {
		return 0
	}
	return 1 + len(e.others)
}

func newSharedTracker() *sharedTracker {
	return &sharedTracker{seen: map[string]seenAddrs{}}
}

// observe records ip for the issuance and reports whether it is a new
// address for an issuance that already has one (the issuance's own source
// address, else its first use). A reported address is recorded at once, so
// concurrent requests report it once; forget undoes that when the event could
// not be written.
func (t *sharedTracker) observe(is *broker.Issuance, ip string, now time.Time) (first string, seen int, suspect bool) {
	if ip == "" {
		return "", 0, false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	e, ok := t.seen[is.ID]
	if !ok {
		t.pruneLocked(now)
		e = seenAddrs{first: is.Source.IP}
		if !is.ExpiresAt.IsZero() { // zero: dropped at the next pass, as expired
			e.expires = is.ExpiresAt.UnixNano()
		}
	}
	switch {
	case e.first == "":
		e.first = ip
	case ip == e.first || slices.Contains(e.others, ip) || e.count() >= maxAddrsPerIssuance:
		if !ok {
			t.seen[is.ID] = e
		}
		return e.first, e.count(), false
	default:
		e.others = append(e.others, ip)
		suspect = true
	}
	t.seen[is.ID] = e
	return e.first, e.count(), suspect
}

// forget undoes observe's record of ip.
func (t *sharedTracker) forget(issuanceID, ip string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e, ok := t.seen[issuanceID]; ok && ip != e.first {
		e.others = slices.DeleteFunc(e.others, func(a string) bool { return a == ip })
		t.seen[issuanceID] = e
	}
}

// pruneLocked drops expired issuances every pruneEvery and when the record
// is full, and everything when that is not enough (the record is a signal,
// not a control: losing it at worst repeats an event).
func (t *sharedTracker) pruneLocked(now time.Time) {
	if len(t.seen) < maxTrackedIssuances && now.Sub(t.pruned) < pruneEvery {
		return
	}
	t.pruned = now
	n := now.UnixNano()
	for id, e := range t.seen {
		if n > e.expires {
			delete(t.seen, id)
		}
	}
	if len(t.seen) >= maxTrackedIssuances {
		clear(t.seen)
	}
}
