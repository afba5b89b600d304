package broker

import (
	"container/list"
	"context"
	"errors"
	"log/slog"
	"math"
	"net/netip"
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
// last).
// One more bucket over all sources (GlobalPerSecond, GlobalBurst) bounds
// them however many addresses they come from: a refusal is audited only
// when its source's bucket and the global one both have a token (it takes
// one of each); with the global bucket empty it is answered the same 429
// and counted by one global summary per SummaryEvery (no source, details
// scope "global"), its source's bucket untouched.
// Authenticated callers never take from these buckets, and neither do
// refusals that are the broker's own failures (5xx).
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
}

// DefaultRefusalLimits are the limits where a field is 0.
var DefaultRefusalLimits = RefusalLimits{PerSecond: 1, Burst: 20, MaxSources: 10000, SummaryEvery: time.Minute,
	GlobalPerSecond: 200, GlobalBurst: 1000}

// The scopes of a suppressed refusal (the bucket that suppressed it): the
// details.scope of a summary event and the scope label of
// keytrail_refusals_suppressed_total. A global summary names no source:
// the refusals it counts came from any.
const (
	RefusalScopeSource = "source"
	RefusalScopeGlobal = "global"
)

// SuppressedRefusalError is the cause of a 429 source_rate_limited: the
// refusal not audited on its own (its text, for the log only) and the
// bucket that suppressed it. It does not wrap the refusal, so errors.Is
// finds the 429's category alone.
type SuppressedRefusalError struct {
	Scope   string // RefusalScopeSource or RefusalScopeGlobal
	Refusal string
}

func (e *SuppressedRefusalError) Error() string {
	return "refusal not audited (" + e.Scope + " bucket empty): " + e.Refusal
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
}

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
}

// scope is the details.scope of s's event.
func (s refusalSummary) scope() string {
	if s.global {
		return RefusalScopeGlobal
	}
	return RefusalScopeSource
}

// merge adds o's refusals to s.
func (s *refusalSummary) merge(o refusalSummary) {
	if s.n == 0 {
		*s = o
		return
	}
	if o.ip != s.ip || o.mixed {
		s.ip, s.mixed = "", true
	}
	s.n += o.n
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
		m: make(map[string]*list.Element)}
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
func (g *refusalGuard) take(ip string, now time.Time) (by string, retry time.Duration, out []refusalSummary) {
	key := sourceKey(ip)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return "", 0, nil
	}
	var src *refusalSource
	if el, found := g.m[key]; found {
		g.order.MoveToFront(el)
		src = el.Value.(*refusalSource)
	} else {
		src = &refusalSource{key: key, bucket: rate.NewLimiter(g.limit, g.burst)}
		g.m[key] = g.order.PushFront(src)
		for len(g.m) > g.max {
			old := g.order.Remove(g.order.Back()).(*refusalSource)
			delete(g.m, old.key)
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
	retry = time.Second
	if lack, lim := 1-src.bucket.TokensAt(now), float64(src.bucket.Limit()); lack > 0 && lim > 0 {
		retry = time.Duration(math.Ceil(lack / lim * float64(time.Second)))
	}
	return by, retry, out
}

// summary takes src's pending summary.
func (src *refusalSource) summary() (refusalSummary, bool) {
	if src.suppressed == 0 {
		return refusalSummary{}, false
	}
	s := refusalSummary{ip: src.ip, n: src.suppressed, first: src.first, last: src.last, global: src.global}
	src.suppressed, src.first, src.last = 0, time.Time{}, time.Time{}
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
		key := sourceKey(sum.ip)
		if el, found := g.m[key]; found {
			el.Value.(*refusalSource).restore(sum)
			return true
		}
		if len(g.m) < g.max {
			src := &refusalSource{key: key, bucket: rate.NewLimiter(g.limit, g.burst)}
			src.restore(sum)
			g.m[key] = g.order.PushBack(src)
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
			g.order.Remove(el)
			delete(g.m, src.key)
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
	var src *audit.Source
	if s.ip != "" {
		src = &audit.Source{IP: s.ip}
	}
	return &audit.Event{
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
	by, retry, out := s.refusals.take(src.IP, s.d.Now())
	s.writeSummaries(ctx, out, nil)
	if by == "" {
		s.recordDeny(ctx, ev, err)
		return err
	}
	return &Error{Kind: ErrRateLimited, Reason: ReasonSourceRateLimited, Safe: "too many refused requests; slow down", RetryAfter: retry,
		Err: &SuppressedRefusalError{Scope: by, Refusal: err.Error()}}
}

// writeSummaries audits summaries, deferred: nobody waits for them here.
// A summary whose write failed, and so will not land (not ErrAuditPending:
// that one may still), is put back to be written by a later sweep, unless
// the last flush is done (kept false: the log line is all that is left
// of it). after (not nil) is called once per summary with its outcome
// known.
func (s *Service) writeSummaries(ctx context.Context, out []refusalSummary, after func()) {
	for _, sum := range out {
		s.AuditDeferred(ctx, sum.event(), func(aerr error) {
			if aerr != nil {
				kept := !errors.Is(aerr, ErrAuditPending) && s.refusals.restore(sum)
				s.d.Logger.LogAttrs(context.Background(), slog.LevelError, "audit refusal summary failed",
					slog.String("source", sum.ip), slog.String("scope", sum.scope()), slog.Int("suppressed", sum.n), slog.Bool("kept", kept), slog.String("error", aerr.Error()))
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
	out := s.refusals.sweep(s.d.Now(), all, final)
	if len(out) == 0 {
		return
	}
	// Buffered: an outcome that comes after the wait ended never blocks.
	written := make(chan struct{}, len(out))
	s.writeSummaries(ctx, out, func() { written <- struct{}{} })
	t := time.NewTimer(s.d.AuditTimeout)
	defer t.Stop()
	for range out {
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
