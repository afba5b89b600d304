package proxy

import (
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
// from. It lives in memory, per broker instance.
type sharedTracker struct {
	mu     sync.Mutex
	seen   map[string]*seenAddrs
	pruned time.Time // last pass over seen for expired issuances
}

type seenAddrs struct {
	first   string
	addrs   map[string]bool
	expires time.Time
}

func newSharedTracker() *sharedTracker {
	return &sharedTracker{seen: map[string]*seenAddrs{}}
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
	e := t.seen[is.ID]
	if e == nil {
		t.pruneLocked(now)
		e = &seenAddrs{first: is.Source.IP, addrs: map[string]bool{}, expires: is.ExpiresAt}
		if e.first != "" {
			e.addrs[e.first] = true
		}
		t.seen[is.ID] = e
	}
	if e.first == "" {
		e.first = ip
		e.addrs[ip] = true
		return ip, 1, false
	}
	if e.addrs[ip] || len(e.addrs) >= maxAddrsPerIssuance {
		return e.first, len(e.addrs), false
	}
	e.addrs[ip] = true
	return e.first, len(e.addrs), true
}

// forget undoes observe's record of ip.
func (t *sharedTracker) forget(issuanceID, ip string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.seen[issuanceID]; e != nil && ip != e.first {
		delete(e.addrs, ip)
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
	for id, e := range t.seen {
		if now.After(e.expires) {
			delete(t.seen, id)
		}
	}
	if len(t.seen) >= maxTrackedIssuances {
		clear(t.seen)
	}
}
