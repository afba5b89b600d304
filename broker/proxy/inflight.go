package proxy

import "sync"

// reasonRevokedInFlight is the use_result reason of a proxied request cut
// because its credential was revoked, or its workload blocked, after it
// went upstream.
const reasonRevokedInFlight = "revoked_in_flight"

// Why an in-flight request was cut (call.cut).
const (
	cutIssuance = 1 + iota
	cutBlock
)

// inFlight lists the proxied requests gone upstream and not finished yet,
// so that a revocation this instance learns cuts them (cutRevoked). The
// list is intrusive (the links are fields of call): adding and removing a
// request allocates nothing.
type inFlight struct {
	mu   sync.Mutex
	head *call
}

func (l *inFlight) add(c *call) {
	l.mu.Lock()
	c.prev, c.next = nil, l.head
	if l.head != nil {
		l.head.prev = c
	}
	l.head = c
	l.mu.Unlock()
}

func (l *inFlight) remove(c *call) {
	l.mu.Lock()
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		l.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	}
	c.prev, c.next = nil, nil
	l.mu.Unlock()
}

// cutRevoked is what the Service's revocation cache calls when it learns a
// revocation or block (broker.Service.OnKnownRevoked): every in-flight
// request whose issuance is now known as revoked, or its workload as
// blocked, has its upstream context cancelled, which ends the upstream
// exchange and the body relayed to the caller. A request added after the
// cache learned it is refused by call.RoundTrip, which asks the cache once
// the request is listed.
func (p *Proxy) cutRevoked() {
	svc := p.o.Service
	p.inFlight.mu.Lock()
	defer p.inFlight.mu.Unlock()
	for c := p.inFlight.head; c != nil; c = c.next {
		revoked, blocked := svc.KnownRevoked(c.is.ID, c.is.Workload)
		switch {
		case revoked:
			c.cut.CompareAndSwap(0, cutIssuance)
		case blocked:
			c.cut.CompareAndSwap(0, cutBlock)
		default:
			continue
		}
		c.cancel() // does not block: the transport's goroutines see it
	}
}
