package broker

import (
	"container/list"
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/keytrail/keytrail/broker/audit"
)

// RefusalLimits bound what requests refused before their caller
// authenticated (a malformed form, a garbage, expired or untrusted identity
// token, a missing Bearer token) cost the audit log, per source address.
// Each such refusal takes a token from its source's bucket and is audited
// as before; once the bucket is empty the source's further refusals of
// that kind are answered 429 slow_down (reason source_rate_limited) with
// Retry-After and no event of their own: one summary deny event per source
// per SummaryEvery counts them (details scope "source", suppressed, first,
// last, and reasons: how many of each reason they would have been refused
// with).
// One more bucket over all sources (GlobalPerSecond, GlobalBurst) bounds
// them however many addresses they come from: a refusal is audited only
// when its source's bucket and the global one both have a token (it takes
// one of each); with the global bucket empty it is answered the same 429
// and counted by one global summary per SummaryEvery (no source, details
// scope "global"), its source's bucket untouched.
// Authenticated callers never take from these buckets, and neither do
// refusals that are the broker's own failures (5xx).
// The 429s of authenticated callers past their own limit (a workload's
// rate on an exchange, IntrospectLimits on an introspection) are bounded
// per caller the same way (refuseLimited): each takes a token from its
// caller's bucket (PerIdentity, refilled at PerIdentity per SummaryEvery)
// and is audited as before; with that bucket empty it is answered the same
// 429 with no event of its own, counted by one summary per caller per
// SummaryEvery (its event's type and reason those of the 429's own event,
// details scope "identity", suppressed, first, last; a workload's counts
// them by grant and endpoint too). Their callers are
// tracked apart from the sources, at most MaxSources of them. The same
// buckets bound the refused admin calls of an authenticated caller that is
// no admin, a revoked broker JWT as introspection caller token, and the
// 4xx refusals of an exchange once its subject authenticated (no
// workload, the grant, the actor token, may_act, a block, a revoked
// broker JWT) (refuseCaller, suppressCaller): past them the same refusal
// (not a 429: a client would retry it) with no event of its own. Those of
// a verified actor token take from the bucket of the caller acting for
// that party (exchangeActor; at most maxActorsPerCaller per caller).
type RefusalLimits struct {
	// PerSecond refills a source's bucket (0 = DefaultRefusalLimits').
	PerSecond float64
	// Burst is a source's bucket size (0 = the default).
	Burst int
	// MaxSources bounds the sources tracked (0 = the default): past it the
	// least recently seen is dropped, its pending summary written first.
	MaxSources int
	// SummaryEvery is the span one summary event covers (0 = the default).
	SummaryEvery time.Duration
	// GlobalPerSecond refills the bucket of all sources together (0 = the
	// default, negative: no global bucket).
	GlobalPerSecond float64
	// GlobalBurst is the global bucket's size (0 = the default).
	GlobalBurst int
	// PerIdentity is the number of an authenticated caller's 429s (and
	// refusals as a non-admin on the admin API, with a revoked broker
	// JWT as introspection caller token, or of an exchange once its
	// subject authenticated) audited on their own per SummaryEvery (0 =
	// the default, negative: every one); the rest are answered as they
	// are, with no event of their own.
	PerIdentity int
}

// DefaultRefusalLimits are the limits where a field is 0.
var DefaultRefusalLimits = RefusalLimits{PerSecond: 1, Burst: 20, MaxSources: 10000, SummaryEvery: time.Minute,
	GlobalPerSecond: 200, GlobalBurst: 1000, PerIdentity: 20}

// The scopes of a suppressed refusal (the bucket that suppressed it): the
// details.scope of a summary event and the scope label of
// keytrail_refusals_suppressed_total (source and global: unauthenticated
// refusals; identity: authenticated callers' 429s). A global summary names
// no source: the refusals it counts came from any.
const (
	RefusalScopeSource = "source"
	RefusalScopeGlobal = "global"
	// RefusalScopeIdentity: the 429s of one authenticated caller past its
	// own limit (answered as before: the same 429, marked only by its
	// cause), and its refusals suppressCaller leaves unaudited (a
	// non-admin's admin calls, a revoked broker JWT, an exchange's 4xx once
	// its subject authenticated: answered as they are, marked only by
	// their cause).
	RefusalScopeIdentity = "identity"
)

// SuppressedRefusalError is the cause of a 429 source_rate_limited: the
// refusal not audited on its own (its text, for the log only) and the
// bucket that suppressed it. It does not wrap the refusal, so errors.Is
// finds the 429's category alone. It is also a cause of an authenticated
// caller's 429 rate_limited, or of its refusal (suppressCaller), that has
// no event of its own (Scope RefusalScopeIdentity, Refusal "": the answer
// is the refusal).
type SuppressedRefusalError struct {
	Scope   string // RefusalScopeSource, RefusalScopeGlobal or RefusalScopeIdentity
	Refusal string
}

func (e *SuppressedRefusalError) Error() string {
	msg := "refusal not audited (" + e.Scope + " bucket empty)"
	if e.Refusal != "" {
		msg += ": " + e.Refusal
	}
	return msg
}

// SuppressedScope is the scope of err's suppressed refusal, "" when err is
// not one.
func SuppressedScope(err error) string {
	var e *SuppressedRefusalError
	if errors.As(err, &e) {
		return e.Scope
	}
	return ""
}

// ReasonSourceRateLimited is the reason of a refusal answered 429 because
// its source refused too many unauthenticated requests.
const ReasonSourceRateLimited = "source_rate_limited"

// ReasonRateLimited is the reason of a 429 of an authenticated caller past
// its own limit, and of the summary of those not audited on their own.
const ReasonRateLimited = "rate_limited"

// ReasonRefusalsSuppressed is the outcome reason of a summary event.
const ReasonRefusalsSuppressed = "refusals_suppressed"

// refusalGuard holds the buckets of the sources, most recently seen first.
type refusalGuard struct {
	limit rate.Limit
	burst int
	max   int
	every time.Duration

	mu    sync.Mutex
	order list.List // of *refusalSource
	m     map[string]*list.Element
	// aside holds the summaries whose write failed while their source was
	// no longer tracked and the guard was full (restore): one summary,
	// naming its source only while they all came from one.
	aside refusalSummary
	// global is the bucket of all sources and its pending summary (nil:
	// no global bucket); it is in neither order nor m.
	global *refusalSource
	// closed: the last summaries were taken (sweep with final); any later
	// refusal is audited on its own, as nothing would write its summary.
	closed bool
	// actors counts the entries acting for a party (refusalSource.base)
	// by their caller's own key, at most maxActors each.
	actors    map[string]int
	maxActors int
}

type refusalSource struct {
	key    string
	ip     string // the last address seen under key
	bucket *rate.Limiter
	// suppressed refusals since first (0: none pending).
	suppressed  int
	first, last time.Time
	// global: the guard's global bucket (ip "").
	global bool
	// who: the authenticated caller whose 429s key counts (an identity
	// guard's).
	who *limitedCaller
	// tags counts the suppressed refusals by what they were (nil: none
	// pending).
	tags map[refusalTag]int
	// base: the key of the caller's own entry when who acts for a party
	// (the guard's actors count), "" otherwise.
	base string
}

// refusalTag is what a suppressed refusal was, as its summary counts it:
// the reason of the refusal an unauthenticated caller would have been
// answered (details.reasons), or the grant and endpoint of a workload's
// 429 (details.grants, details.endpoints). Their values are bounded: the
// broker's reasons, the policy's grants, its endpoints.
type refusalTag struct {
	reason, grant, endpoint string
	// action: the admin action of a non-admin's refused admin call
	// (details.actions).
	action string
	// status: the HTTP status an identity guard's suppressed request was
	// answered with (429, or the refusal's own: suppressCaller), which its
	// summary counts (details.answered); 0 for a source's.
	status int
}

// The endpoints of a workload's 429s that its summary counts apart.
const (
	refusalEndpointToken = "token"
	refusalEndpointProxy = "proxy"
)

// refusalReason is the reason err's deny event would have (its outcome
// reason, else its error code), as keytrail report reads it.
func refusalReason(err error) string {
	e := AsError(err)
	if e.Reason != "" {
		return e.Reason
	}
	return CodeOf(e)
}

// addTags adds the counts of from to *to.
func addTags(to *map[refusalTag]int, from map[refusalTag]int) {
	if len(from) == 0 {
		return
	}
	if *to == nil {
		*to = make(map[refusalTag]int, len(from))
	}
	for k, n := range from {
		(*to)[k] += n
	}
}

// limitedCaller is an authenticated caller whose 429s an identity guard
// counts, and what its summary event says of it: the type of its 429s'
// events, and the workload it matched or else its identity. (Of type
// audit.TypeAdmin: a caller that is no admin, whose refused admin calls
// the guard counts, refuseCaller.)
type limitedCaller struct {
	typ             string // audit.TypeDeny, audit.TypeIntrospect or audit.TypeAdmin
	workload, owner string
	iss, sub        string
	// actIss, actSub: the verified actor token an exchange's refusals
	// were of (exchangeActor): the caller acting for that party, a bucket
	// and summary of its own ("": the caller's own).
	actIss, actSub string
}

// name is c's workload, else its iss#sub ("" for several callers'), and
// the party it acted for.
func (c *limitedCaller) name() string {
	n := c.workload
	if c.workload == "" && c.iss != "" {
		n = c.iss + "#" + c.sub
	}
	if c.actIss != "" {
		n += " acting for " + c.actIss + "#" + c.actSub
	}
	return n
}

// key is c's entry in an identity guard.
func (c *limitedCaller) key() string {
	k := c.typ + "\x00id\x00" + c.iss + "\x00" + c.sub
	if c.workload != "" {
		k = c.typ + "\x00wl\x00" + c.workload
	}
	if c.actIss != "" {
		// Apart from every caller's own key (which begins with its type),
		// lengths first: the subject's and the actor's claims are
		// whatever their issuers signed (a sub may hold any byte, \x00
		// included), and no two of them make the same key. Appended to
		// the own key as it is, a sub ending like another caller's actor
		// part would share that caller's bucket and summary.
		k = "act\x00" + strconv.Itoa(len(k)) + ":" + k + strconv.Itoa(len(c.actIss)) + ":" + c.actIss + c.actSub
	}
	return k
}

// base is c's own entry when c acts for a party (nil when it does not):
// the caller the refusals are counted against past maxActorsPerCaller.
func (c *limitedCaller) base() *limitedCaller {
	if c == nil || c.actIss == "" {
		return nil
	}
	b := *c
	b.actIss, b.actSub = "", ""
	return &b
}

// maxActorsPerCaller bounds the parties one caller acting for them has
// entries of its own for in an identity guard (exchangeActor): a bucket
// of PerIdentity each, so an agent's refused exchanges for up to this
// many users are audited up to PerIdentity per user per span; the
// refusals acting for any further party are counted against the
// caller's own bucket and summary (naming no actor) until an entry is
// dropped. One caller holding many parties' tokens cannot take the guard's
// MaxSources entries, and with them the other callers' buckets, alone.
const maxActorsPerCaller = 100

// refusalSummary is one source's suppressed refusals, or the global
// bucket's, to be audited.
type refusalSummary struct {
	ip          string
	n           int
	first, last time.Time
	// mixed: ip is "" because the summary counts several sources' (the
	// guard's aside).
	mixed bool
	// global: the global bucket's (ip "").
	global bool
	// key is the guard's entry it came from ("" for the aside); who its
	// caller for an identity guard's (of several: only the type of their
	// events, when it was the same).
	key string
	who *limitedCaller
	// tags counts the refusals by what they were.
	tags map[refusalTag]int
}

// scope is the details.scope of s's event.
func (s refusalSummary) scope() string {
	if s.who != nil {
		return RefusalScopeIdentity
	}
	if s.global {
		return RefusalScopeGlobal
	}
	return RefusalScopeSource
}

// merge adds o's refusals to s.
func (s *refusalSummary) merge(o refusalSummary) {
	if s.n == 0 {
		*s = o
		s.tags = nil
		addTags(&s.tags, o.tags)
		return
	}
	if o.ip != s.ip || o.key != s.key || o.mixed {
		s.ip, s.key, s.mixed = "", "", true
	}
	if s.who != nil && o.who != nil && *s.who != *o.who {
		typ := s.who.typ
		if o.who.typ != typ {
			typ = audit.TypeDeny
		}
		s.who = &limitedCaller{typ: typ}
	}
	s.n += o.n
	addTags(&s.tags, o.tags)
	if o.first.Before(s.first) {
		s.first = o.first
	}
	if o.last.After(s.last) {
		s.last = o.last
	}
}

func newRefusalGuard(l RefusalLimits) *refusalGuard {
	d := DefaultRefusalLimits
	if l.PerSecond == 0 {
		l.PerSecond = d.PerSecond
	}
	if l.Burst <= 0 {
		l.Burst = d.Burst
	}
	if l.MaxSources <= 0 {
		l.MaxSources = d.MaxSources
	}
	if l.SummaryEvery <= 0 {
		l.SummaryEvery = d.SummaryEvery
	}
	g := &refusalGuard{limit: rate.Limit(l.PerSecond), burst: l.Burst, max: l.MaxSources, every: l.SummaryEvery,
		m: make(map[string]*list.Element), actors: make(map[string]int), maxActors: maxActorsPerCaller}
	if l.GlobalPerSecond >= 0 {
		if l.GlobalPerSecond == 0 {
			l.GlobalPerSecond = d.GlobalPerSecond
		}
		if l.GlobalBurst <= 0 {
			l.GlobalBurst = d.GlobalBurst
		}
		g.global = &refusalSource{global: true, bucket: rate.NewLimiter(rate.Limit(l.GlobalPerSecond), l.GlobalBurst)}
	}
	return g
}

// newIdentityGuard is the guard of authenticated callers' 429s that l
// sets (nil: PerIdentity negative, every one audited): a bucket of
// PerIdentity per caller, refilled at PerIdentity per SummaryEvery, no
// global bucket.
func newIdentityGuard(l RefusalLimits) *refusalGuard {
	n := l.PerIdentity
	if n < 0 {
		return nil
	}
	if n == 0 {
		n = DefaultRefusalLimits.PerIdentity
	}
	g := newRefusalGuard(RefusalLimits{PerSecond: 1, Burst: n, MaxSources: l.MaxSources, SummaryEvery: l.SummaryEvery, GlobalPerSecond: -1})
	g.limit = rate.Limit(float64(n) / g.every.Seconds())
	return g
}

// sourceKey is the bucket of an address: an IPv6 address's /64 (one host
// commonly holds a whole /64), any other address as it is.
func sourceKey(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil || !a.Is6() || a.Is4In6() {
		return ip
	}
	p, _ := a.Prefix(64)
	return p.String()
}

// take charges one refusal to ip's bucket and the global one at now. by
// "": audit it as usual; otherwise it is suppressed, counted by its
// source's summary (by RefusalScopeSource: its bucket empty) or the global
// one (RefusalScopeGlobal: the global bucket empty), and retry says when a
// token is back. out are summaries to write now (a source dropped to make
// room, or a source whose summary span ended).
// reason is the refusal's (refusalReason), which its summary counts.
func (g *refusalGuard) take(ip, reason string, now time.Time) (by string, retry time.Duration, out []refusalSummary) {
	return g.takeKey(sourceKey(ip), ip, nil, refusalTag{reason: reason}, now)
}

// takeKey is take for the entry key, ip its address ("" for an identity
// guard's), who its caller (nil for a source) and tag what the refusal
// was.
func (g *refusalGuard) takeKey(key, ip string, who *limitedCaller, tag refusalTag, now time.Time) (by string, retry time.Duration, out []refusalSummary) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return "", 0, nil
	}
	var src *refusalSource
	el, found := g.m[key]
	if b := who.base(); !found && b != nil && g.actors[b.key()] >= g.maxActors {
		// Acting for one party more than it may have entries for:
		// counted as the caller's own.
		who = b
		key = b.key()
		el, found = g.m[key]
	}
	if found {
		g.order.MoveToFront(el)
		src = el.Value.(*refusalSource)
	} else {
		src = &refusalSource{key: key, who: who, bucket: rate.NewLimiter(g.limit, g.burst)}
		g.add(src, false)
		for len(g.m) > g.max {
			old := g.order.Back().Value.(*refusalSource)
			g.remove(g.order.Back())
			if s, pending := old.summary(); pending {
				out = append(out, s)
			}
		}
	}
	src.ip = ip
	// A token of each, or none taken: a refusal the global bucket
	// suppresses leaves its source's burst for later.
	if src.bucket.TokensAt(now) >= 1 {
		if g.global == nil || g.global.bucket.AllowN(now, 1) {
			src.bucket.AllowN(now, 1)
			return "", 0, out
		}
		src = g.global
	}
	by = RefusalScopeSource
	if src.global {
		by = RefusalScopeGlobal
	} else if src.who != nil {
		by = RefusalScopeIdentity
	}
	if src.suppressed > 0 && now.Sub(src.first) >= g.every {
		s, _ := src.summary()
		out = append(out, s)
	}
	if src.suppressed == 0 {
		src.first = now
	}
	src.suppressed++
	src.last = now
	if src.tags == nil {
		src.tags = make(map[refusalTag]int)
	}
	src.tags[tag]++
	retry = time.Second
	if lack, lim := 1-src.bucket.TokensAt(now), float64(src.bucket.Limit()); lack > 0 && lim > 0 {
		retry = tokenWait(lack, lim)
	}
	return by, retry, out
}

// add tracks src (its key, who and bucket set), most recently seen
// first, else (back) least.
func (g *refusalGuard) add(src *refusalSource, back bool) {
	if b := src.who.base(); b != nil {
		src.base = b.key()
		g.actors[src.base]++
	}
	if back {
		g.m[src.key] = g.order.PushBack(src)
	} else {
		g.m[src.key] = g.order.PushFront(src)
	}
}

// remove stops tracking el's source.
func (g *refusalGuard) remove(el *list.Element) {
	src := g.order.Remove(el).(*refusalSource)
	delete(g.m, src.key)
	if src.base != "" {
		if g.actors[src.base]--; g.actors[src.base] <= 0 {
			delete(g.actors, src.base)
		}
	}
}

// summary takes src's pending summary.
func (src *refusalSource) summary() (refusalSummary, bool) {
	if src.suppressed == 0 {
		return refusalSummary{}, false
	}
	s := refusalSummary{ip: src.ip, n: src.suppressed, first: src.first, last: src.last, global: src.global, key: src.key, who: src.who, tags: src.tags}
	src.suppressed, src.first, src.last, src.tags = 0, time.Time{}, time.Time{}, nil
	return s, true
}

// restore puts back a summary whose write failed (it will not land): into
// its source's pending summary, into a new source's when its source is no
// longer tracked and there is room, else into the guard's aside, so that
// a later sweep writes it again. No source is dropped for it: a write
// that keeps failing cannot make the guard hand out ever more summaries.
// kept is false once the guard is closed (the last flush is done): no
// sweep would write it, and the caller's log line is its only record.
func (g *refusalGuard) restore(sum refusalSummary) (kept bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	if sum.global {
		if g.global == nil {
			return false // no global bucket made it
		}
		g.global.restore(sum)
		return true
	}
	if !sum.mixed {
		key, who := sum.key, sum.who
		if key == "" {
			key = sourceKey(sum.ip)
		}
		el, found := g.m[key]
		if b := who.base(); !found && b != nil && g.actors[b.key()] >= g.maxActors {
			// No room for another party the caller acted for: its
			// refusals go to the caller's own summary, naming no actor.
			key, who = b.key(), b
			sum.key, sum.who = key, who
			el, found = g.m[key]
		}
		if found {
			el.Value.(*refusalSource).restore(sum)
			return true
		}
		if len(g.m) < g.max {
			src := &refusalSource{key: key, who: who, bucket: rate.NewLimiter(g.limit, g.burst)}
			src.restore(sum)
			g.add(src, true)
			return true
		}
	}
	g.aside.merge(sum)
	return true
}

// restore adds the refusals of sum, a summary of src's key whose write
// failed, to src's pending summary.
func (src *refusalSource) restore(sum refusalSummary) {
	if src.ip == "" {
		src.ip = sum.ip
	}
	if src.suppressed == 0 || sum.first.Before(src.first) {
		src.first = sum.first
	}
	if src.suppressed == 0 || sum.last.After(src.last) {
		src.last = sum.last
	}
	src.suppressed += sum.n
	addTags(&src.tags, sum.tags)
}

// sweep takes the summaries whose span ended by now (all of them with all)
// and drops the sources with nothing pending whose bucket is full again.
// final (with all): they are the last ones; later refusals are audited
// on their own (take).
func (g *refusalGuard) sweep(now time.Time, all, final bool) []refusalSummary {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = g.closed || final
	var out []refusalSummary
	if src := g.global; src != nil && src.suppressed > 0 && (all || now.Sub(src.first) >= g.every) {
		s, _ := src.summary()
		out = append(out, s)
	}
	for el := g.order.Front(); el != nil; {
		next := el.Next()
		src := el.Value.(*refusalSource)
		if src.suppressed > 0 && (all || now.Sub(src.first) >= g.every) {
			s, _ := src.summary()
			out = append(out, s)
		}
		if src.suppressed == 0 && src.bucket.TokensAt(now) >= float64(g.burst) {
			g.remove(el)
		}
		el = next
	}
	if g.aside.n > 0 && (all || now.Sub(g.aside.first) >= g.every) {
		out = append(out, g.aside)
		g.aside = refusalSummary{}
	}
	return out
}

// len is the number of sources tracked.
func (g *refusalGuard) len() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.m)
}

func (s refusalSummary) event() *audit.Event {
	if s.who != nil {
		return s.identityEvent()
	}
	var src *audit.Source
	if s.ip != "" {
		src = &audit.Source{IP: s.ip}
	}
	ev := &audit.Event{
		Type:    audit.TypeDeny,
		Source:  src,
		Outcome: &audit.Outcome{Status: 429, Error: "slow_down", Reason: ReasonRefusalsSuppressed},
		Details: map[string]any{
			"scope":      s.scope(),
			"suppressed": s.n,
			"first":      s.first.UTC().Format(audit.TimeFormat),
			"last":       s.last.UTC().Format(audit.TimeFormat),
		},
	}
	s.countBy(ev.Details, "reasons", func(t refusalTag) string { return t.reason })
	return ev
}

// countBy sets details[name] to s's refusals counted by what field says
// of each (those it says nothing of, "", left out); not at all when it
// says nothing of any.
func (s refusalSummary) countBy(details map[string]any, name string, field func(refusalTag) string) {
	var m map[string]int
	for t, n := range s.tags {
		if v := field(t); v != "" {
			if m == nil {
				m = make(map[string]int)
			}
			m[v] += n
		}
	}
	if m != nil {
		details[name] = m
	}
}

// identityEvent is the event of an identity guard's summary: the type and
// outcome of its 429s' own events (429 slow_down rate_limited), naming the
// workload, or the identity (no jti: it counts any of its tokens), of its
// caller; none for an aside that counts several.
func (s refusalSummary) identityEvent() *audit.Event {
	w := s.who
	ev := &audit.Event{
		Type:    w.typ,
		Outcome: &audit.Outcome{Status: 429, Error: "slow_down", Reason: ReasonRateLimited},
		Details: map[string]any{
			"scope":      RefusalScopeIdentity,
			"suppressed": s.n,
			"first":      s.first.UTC().Format(audit.TimeFormat),
			"last":       s.last.UTC().Format(audit.TimeFormat),
		},
	}
	// What the refusals other than 429s were (a revoked broker JWT as
	// introspection caller token: credential_revoked); none for 429s.
	s.countBy(ev.Details, "reasons", func(t refusalTag) string { return t.reason })
	// The outcome above is that of the caller's 429s: once any request it
	// counts was answered otherwise (its own refusal, suppressCaller: 403,
	// 401, 400), how each was answered, by status (details.answered); a
	// summary of 429s alone is as it was.
	for t := range s.tags {
		if t.status != 0 && t.status != 429 {
			s.countBy(ev.Details, "answered", func(t refusalTag) string {
				if t.status == 0 {
					return ""
				}
				return strconv.Itoa(t.status)
			})
			break
		}
	}
	switch {
	case w.typ == audit.TypeAdmin:
		// The refused admin calls of a caller that is no admin: its
		// identity, as their events name it (no jti: any of its
		// tokens), and their actions.
		if w.iss != "" {
			ev.Identity = &audit.Identity{Iss: w.iss, Sub: w.sub}
			ev.Details["caller"] = map[string]string{"iss": w.iss, "sub": w.sub}
		}
		s.countBy(ev.Details, "actions", func(t refusalTag) string { return t.action })
	case w.typ != audit.TypeIntrospect:
		ev.Workload, ev.Owner = w.workload, w.owner
		if w.workload == "" && w.iss != "" {
			// A subject matching no workload whose broker JWT was
			// refused (exchangeCaller): its identity, no jti.
			ev.Identity = &audit.Identity{Iss: w.iss, Sub: w.sub}
		}
		if w.actIss != "" {
			// Refusals of the tokens of one party the caller acted
			// for (exchangeActor): named as their events name it, act,
			// without jti (any of its tokens).
			ev.Act = []audit.Identity{{Iss: w.actIss, Sub: w.actSub}}
		}
		// Its 429s may be of several grants, exchanges and proxied
		// requests alike: the summary names none, and counts them.
		s.countBy(ev.Details, "grants", func(t refusalTag) string { return t.grant })
		s.countBy(ev.Details, "endpoints", func(t refusalTag) string { return t.endpoint })
	case w.workload != "":
		// An introspect event's workload is the introspected
		// credential's: the caller's is said in details.
		ev.Details["caller"] = map[string]string{"workload": w.workload}
	case w.iss != "":
		// As an introspect event names its caller, but no jti.
		ev.Identity = &audit.Identity{Iss: w.iss, Sub: w.sub}
		ev.Admin = w.iss + "#" + w.sub
		ev.Details["caller"] = map[string]string{"iss": w.iss, "sub": w.sub}
	}
	return ev
}

// refuseCaller records the refusal err of authenticated caller who (ev,
// its event: a non-admin's refused admin call, a revoked broker JWT
// presented as caller token, an exchange refused once its subject
// authenticated) unless who's bucket of refusals audited on their own
// (RefusalLimits.PerIdentity, shared with its 429s) is empty
// (suppressCaller): then it answers the same err with no event of its
// own. Any other err (a 5xx: the broker's own failure) is recorded as
// always, and so is every one without an identity guard.
func (s *Service) refuseCaller(ctx context.Context, ev *audit.Event, who *limitedCaller, tag refusalTag, err error) error {
	if StatusOf(AsError(err)) < 500 {
		if answer := s.suppressCaller(ctx, who, tag, err); answer != nil {
			return answer
		}
	}
	s.recordDeny(ctx, ev, err)
	return err
}

// suppressCaller takes one refusal (err, what the request is refused for)
// of authenticated caller who from who's bucket (RefusalLimits.PerIdentity)
// and returns nil when it is to be audited on its own. With that bucket
// empty it is counted by who's summary (written here when its span ended)
// and the answer is err itself (its status, code, reason and description;
// no Retry-After), with a SuppressedRefusalError of scope identity among
// its causes, for keytrail_refusals_suppressed_total. Not a 429: the
// refusal is permanent, and a client takes a 429 for a rate limit and
// retries it (broker/client, keytrail fetch and exec) instead of stopping
// with what the request was refused for; only its audit event is left
// out. After the last flush (the guard closed) every refusal is audited on
// its own.
func (s *Service) suppressCaller(ctx context.Context, who *limitedCaller, tag refusalTag, err error) error {
	if s.limited == nil {
		return nil
	}
	tag.status = StatusOf(AsError(err))
	by, _, out := s.limited.takeKey(who.key(), "", who, tag, s.d.Now())
	s.writeSummaries(ctx, s.limited, out, nil)
	if by == "" {
		return nil
	}
	e := *AsError(err)
	e.Err = errors.Join(&SuppressedRefusalError{Scope: by}, e.Err)
	return &e
}

// refuseLimited records the 429 err of an authenticated caller past its own
// limit (ev, its deny or introspect event) unless who's bucket of them
// (RefusalLimits.PerIdentity) is empty: then it is counted by who's
// summary instead (limitRefused). It returns the 429 to answer with either
// way: the caller gets the same 429, which hands out nothing, so no event
// need be durable before it is answered. Any other err is recorded as
// always.
func (s *Service) refuseLimited(ctx context.Context, ev *audit.Event, who *limitedCaller, tag refusalTag, err error) error {
	own, err := s.limitRefused(ctx, who, tag, err)
	if own {
		s.recordDeny(ctx, ev, err)
	}
	return err
}

// limitRefused takes the 429 err (ErrRateLimited) of authenticated caller
// who from who's bucket of 429s audited on their own
// (RefusalLimits.PerIdentity) and reports whether its own event is to be
// written (own). With that bucket empty it is not: the 429 is counted by
// who's summary (written here when its span ended), and answer is the
// same 429 (kind, reason, text, Retry-After) with a SuppressedRefusalError
// of scope identity among its causes, for
// keytrail_refusals_suppressed_total. Any other err, or no identity guard
// (PerIdentity negative): own, err unchanged.
func (s *Service) limitRefused(ctx context.Context, who *limitedCaller, tag refusalTag, err error) (own bool, answer error) {
	if s.limited == nil || !errors.Is(err, ErrRateLimited) {
		return true, err
	}
	tag.status = StatusOf(AsError(err))
	by, _, out := s.limited.takeKey(who.key(), "", who, tag, s.d.Now())
	s.writeSummaries(ctx, s.limited, out, nil)
	if by == "" {
		return true, err
	}
	e := *AsError(err)
	e.Err = errors.Join(&SuppressedRefusalError{Scope: by}, e.Err)
	return false, &e
}

// refuseAnonymous records the refusal err of a request whose caller has not
// authenticated (ev, its deny or admin event) and returns the error to
// answer with: err, or a 429 without an event of its own once src, or all
// sources together, refused too many (RefusalLimits).
func (s *Service) refuseAnonymous(ctx context.Context, ev *audit.Event, src Source, err error) error {
	if s.refusals == nil || StatusOf(AsError(err)) >= 500 {
		s.recordDeny(ctx, ev, err)
		return err
	}
	by, retry, out := s.refusals.take(src.IP, refusalReason(err), s.d.Now())
	s.writeSummaries(ctx, s.refusals, out, nil)
	if by == "" {
		s.recordDeny(ctx, ev, err)
		return err
	}
	return &Error{Kind: ErrRateLimited, Reason: ReasonSourceRateLimited, Safe: suppressedSafe(by, src.IP, err), RetryAfter: retry,
		Err: &SuppressedRefusalError{Scope: by, Refusal: err.Error()}}
}

// suppressedSafe is the description of the 429 answering the refusal err
// of source ip that the bucket by suppressed: whose refusals were too
// many (this address's, its /64's for an IPv6 address (sourceKey), or all
// callers' together: not this caller's rate alone), and what the request
// itself was refused for (err's own description, what it would have been
// answered without the limit), so that a caller whose token expired is
// told so.
func suppressedSafe(by, ip string, err error) string {
	whose := "too many refused requests from this address; slow down"
	switch {
	case by == RefusalScopeGlobal:
		whose = "too many refused requests to the broker from all addresses; slow down"
	case sourceKey(ip) != ip:
		whose = "too many refused requests from this /64 (its IPv6 network); slow down"
	}
	e := AsError(err)
	desc := e.Safe
	if desc == "" {
		desc = e.Kind.Error()
	}
	return whose + " (this request: " + desc + ")"
}

// writeSummaries audits summaries, deferred: nobody waits for them here.
// A summary whose write failed, and so will not land (not ErrAuditPending:
// that one may still), is put back to be written by a later sweep, unless
// the last flush is done (kept false: the log line is all that is left
// of it). after (not nil) is called once per summary with its outcome
// known. g is the guard they came from.
func (s *Service) writeSummaries(ctx context.Context, g *refusalGuard, out []refusalSummary, after func()) {
	for _, sum := range out {
		s.AuditDeferred(ctx, sum.event(), func(aerr error) {
			if aerr != nil {
				kept := !errors.Is(aerr, ErrAuditPending) && g.restore(sum)
				attrs := []slog.Attr{slog.String("source", sum.ip), slog.String("scope", sum.scope()), slog.Int("suppressed", sum.n), slog.Bool("kept", kept), slog.String("error", aerr.Error())}
				if sum.who != nil {
					attrs = append(attrs, slog.String("caller", sum.who.name()))
				}
				s.d.Logger.LogAttrs(context.Background(), slog.LevelError, "audit refusal summary failed", attrs...)
			}
			if after != nil {
				after()
			}
		})
	}
}

// RefuseUnauthenticated records a deny event for a request refused before
// its caller authenticated (malformed form, unsupported grant type, a bad
// identity token...), the grant name kept only when policy knows it, so
// callers cannot write arbitrary text; it returns the error to answer
// with, err or, past the source's RefusalLimits, a 429 not audited on its
// own.
func (s *Service) RefuseUnauthenticated(ctx context.Context, requestID string, src Source, grant string, err error) error {
	if !s.d.Policy().HasGrant(grant) {
		grant = ""
	}
	return s.refuseAnonymous(ctx, &audit.Event{Type: audit.TypeDeny, RequestID: requestID, Grant: grant, Source: auditSource(src)}, src, err)
}

// FlushRefusalSummaries writes the summary events of suppressed refusals
// whose span (RefusalLimits.SummaryEvery) has ended, every pending one with
// all, and waits for them, at most AuditTimeout in all: they are queued
// together, so that on a disk whose writes hang (each one pending) the
// flush, and the shutdown behind it, does not take AuditTimeout per
// source. One not durable by then stays queued (the sink's Close writes
// it).
func (s *Service) FlushRefusalSummaries(ctx context.Context, all bool) {
	s.flushRefusalSummaries(ctx, all, false)
}

// flushRefusalSummaries is FlushRefusalSummaries; final: the last flush,
// after which every refusal is audited on its own.
func (s *Service) flushRefusalSummaries(ctx context.Context, all, final bool) {
	if s.refusals == nil {
		return
	}
	now := s.d.Now()
	out := s.refusals.sweep(now, all, final)
	var outLimited []refusalSummary
	if s.limited != nil {
		outLimited = s.limited.sweep(now, all, final)
	}
	n := len(out) + len(outLimited)
	if n == 0 {
		return
	}
	// Buffered: an outcome that comes after the wait ended never blocks.
	written := make(chan struct{}, n)
	s.writeSummaries(ctx, s.refusals, out, func() { written <- struct{}{} })
	s.writeSummaries(ctx, s.limited, outLimited, func() { written <- struct{}{} })
	t := time.NewTimer(s.d.AuditTimeout)
	defer t.Stop()
	for range n {
		select {
		case <-written:
		case <-t.C:
			return
		}
	}
}

// RunRefusalSummaries flushes the summaries at each tick and every pending
// one when ctx ends (before the audit sink closes). Nothing would write a
// summary after that last flush: a refusal that comes later (a request
// still running after shutdown_timeout) is audited on its own, or its
// failed write logged, rather than counted by a summary never written.
func (s *Service) RunRefusalSummaries(ctx context.Context, tick <-chan time.Time) error {
	for {
		select {
		case <-ctx.Done():
			s.flushRefusalSummaries(context.WithoutCancel(ctx), true, true)
			return nil
		case <-tick:
			s.FlushRefusalSummaries(ctx, false)
		}
	}
}

// RefusalSummaryEvery is the span of a summary event (0 when refusals are
// not limited): how often RunRefusalSummaries should tick.
func (s *Service) RefusalSummaryEvery() time.Duration {
	if s.refusals == nil {
		return 0
	}
	return s.refusals.every
}

// RefusalSources is the number of sources whose refusals are tracked.
func (s *Service) RefusalSources() int {
	if s.refusals == nil {
		return 0
	}
	return s.refusals.len()
}
