package broker

import (
	"container/list"
	"context"
	"errors"
	"math"
	"strings"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// IntrospectRequest asks whether a broker credential is active (RFC 7662).
type IntrospectRequest struct {
	CallerToken string // the caller's own identity token
	Token       string // the credential being introspected
	Source      Source
	RequestID   string
}

// IntrospectResult is the RFC 7662 answer. When Active is false every other
// field is empty.
type IntrospectResult struct {
	Active   bool
	Issuance *Issuance
}

// Introspect authenticates the caller, applies the caller's rate limit
// (before anything that reads the store or writes an event of its own:
// allowIntrospectToken, then, once a caller token that is a revoked broker
// credential was refused as checkBrokerToken says, allowIntrospect), looks
// the credential up by its
// fingerprint and answers whether it is active: unexpired, unrevoked, its
// workload not blocked and, for a proxy credential, its grant still one the
// proxy serves it (proxyGrantInForce). Every
// call is recorded as an introspect event naming the caller; the answer is
// not given unless that event is durable.
func (s *Service) Introspect(ctx context.Context, req IntrospectRequest) (*IntrospectResult, error) {
	ev := &audit.Event{Type: audit.TypeIntrospect, RequestID: req.RequestID, Source: auditSource(req.Source)}
	if req.CallerToken == "" {
		// Refusals before the caller authenticated count against the
		// source's RefusalLimits.
		err := missingBearer("missing_caller_token", "introspection requires the caller's identity token as a Bearer token")
		return nil, s.refuseAnonymous(ctx, ev, req.Source, err)
	}
	pol, authn := s.policyAndAuthn()
	caller, err := authn.Authenticate(ctx, req.CallerToken)
	if err != nil {
		return nil, s.refuseAnonymous(ctx, ev, req.Source, bearerError(err))
	}
	// The identity token the introspection was made with (SPEC "Audit
	// log": identity {iss, sub, jti}), as an admin event names its caller's.
	ev.Identity = auditIdentity(caller.Ref())
	ev.Admin = caller.Iss + "#" + caller.Sub
	ev.Details = map[string]any{"caller": map[string]string{"iss": caller.Iss, "sub": caller.Sub}}
	// The limits first: what follows costs store reads (the revoked
	// broker credential check, up to two) or a durable event (every
	// refusal below), so a caller past them gets a 429 whose events are
	// bounded (refuseLimited) and nothing else. A caller token that may
	// be a broker credential takes from a bucket of its own before that
	// check, from the one its identity shares only once it passed it:
	// the holder of a revoked broker JWT is bounded without emptying the
	// bucket of the workload's live credentials (after a revocation, it
	// could 429 their introspections until its exp).
	if who, err := s.allowIntrospectToken(pol, caller); err != nil {
		return nil, s.refuseLimited(ctx, ev, who, refusalTag{}, err)
	}
	if err := s.checkCallerBrokerToken(ctx, req.CallerToken, caller); err != nil {
		// A revoked broker JWT is refused with an event of its own up to
		// its caller's RefusalLimits.PerIdentity, then the same refusal
		// with no event, counted by its summary as its 429s are: even for
		// a caller that
		// allowIntrospect does not limit (a workload without rate).
		if who := introspectCaller(pol, caller); errors.Is(err, ErrUnauthenticated) {
			return nil, s.refuseCaller(ctx, ev, who, refusalTag{reason: refusalReason(err)}, err)
		}
		s.recordDeny(ctx, ev, err)
		return nil, err
	}
	if who, err := s.allowIntrospect(pol, caller); err != nil {
		return nil, s.refuseLimited(ctx, ev, who, refusalTag{}, err)
	}
	if req.Token == "" {
		err := Errorf(ErrInvalidRequest, "missing_token", "token is required", nil)
		s.recordDeny(ctx, ev, err)
		return nil, err
	}
	fp := Fingerprint(req.Token)
	ev.Credential = &audit.Credential{Fingerprint: fp}
	sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
	is, err := s.d.Store.FindIssuance(sctx, RefFingerprint, fp)
	cancel()
	res := &IntrospectResult{}
	switch {
	case errors.Is(err, ErrNotFound):
	case err != nil:
		err = Unavailable("store_unavailable", time.Second, err)
		s.recordDeny(ctx, ev, err)
		return nil, err
	default:
		active, berr := s.credentialActive(ctx, is)
		if berr != nil {
			s.recordDeny(ctx, ev, berr)
			return nil, berr
		}
		active = active && s.proxyGrantInForce(pol, is)
		ev.IssuanceID, ev.Workload, ev.Owner, ev.SessionID, ev.Grant, ev.Kind = is.ID, is.Workload, is.Owner, is.SessionID, is.Grant, is.Kind
		// The introspected credential's delegation, as recorded at its
		// issuance (its, as the fields above; identity stays the caller's).
		ev.Act = auditIdentities(is.Act)
		if active {
			res = &IntrospectResult{Active: true, Issuance: is}
		}
	}
	ev.UseID = NewID(PrefixUse)
	ev.Outcome = &audit.Outcome{Status: 200}
	ev.Details["active"] = res.Active
	if err := s.Audit(ctx, ev); err != nil { // at most AuditTimeout
		e := Unavailable("audit_unavailable", time.Second, err)
		s.denyBehindPending(ctx, ev, e)
		return nil, e
	}
	return res, nil
}

// proxyGrantInForce reports whether the policy in force still lets a proxy
// credential be used: its grant exists, is a proxy grant and is allowed to
// its workload. The proxy refuses it otherwise (grant_removed,
// grant_not_allowed), so introspection answers it inactive. Other kinds are
// not the broker's to refuse once minted: true.
func (s *Service) proxyGrantInForce(pol *policies.Policy, is *Issuance) bool {
	if is.Kind != KindProxy {
		return true
	}
	g, ok := s.grants.of(pol).grant(is.Grant)
	if !ok || g.Kind != KindProxy || g.Proxy == nil {
		return false
	}
	wl, ok := pol.Workload(is.Workload)
	return ok && pol.Allowed(wl, g.Name)
}

// IntrospectLimits bound the introspections of authenticated callers, per
// broker instance. A resource server introspects every request it is sent
// (RFC 7662), so the floor is sized for that, not for credential
// exchanges: a caller that matches no workload nor admin of the policy in
// force takes from a bucket of its identity (iss, sub) that PerSecond and
// Burst size; a caller that matches a workload from its workload's own
// introspection bucket, sized by the larger of these and the workload's
// rate (a rate only raises it; a workload with no rate is not limited, as
// on /v1/token); an admin is not limited.
type IntrospectLimits struct {
	// PerSecond refills a caller's bucket (0 = DefaultIntrospectLimits';
	// negative: introspections are not limited).
	PerSecond float64
	// Burst is a caller's bucket size (0 = the default).
	Burst int
	// MaxCallers bounds the identities matching no workload whose buckets
	// are kept (0 = the default): a trusted issuer may sign tokens for any
	// number of subjects. Past it the least recently seen is dropped (it
	// starts again with a full burst, as a new identity would).
	MaxCallers int
}

// DefaultIntrospectLimits are the limits where a field is 0: a resource
// server introspecting each request it receives, at up to 100 a second
// after a burst of 1000, per broker instance.
var DefaultIntrospectLimits = IntrospectLimits{PerSecond: 100, Burst: 1000, MaxCallers: 10000}

// withDefaults fills l's zero fields from DefaultIntrospectLimits.
func (l IntrospectLimits) withDefaults() IntrospectLimits {
	d := DefaultIntrospectLimits
	if l.PerSecond != 0 {
		d.PerSecond = l.PerSecond
	}
	if l.Burst > 0 {
		d.Burst = l.Burst
	}
	if l.MaxCallers > 0 {
		d.MaxCallers = l.MaxCallers
	}
	return d
}

// allowIntrospect applies the caller's rate limit to an introspection
// (IntrospectLimits): an admin of pol (any role) is not limited, as its
// admin calls are not; a caller that matches a workload of pol takes from
// its workload's introspection bucket (its own: introspecting does not use
// up the workload's exchanges), sized by the larger of the workload's rate
// and the floor (no rate, no limit); one that matches neither, from its
// identity's bucket, the floor. who, with a 429, is the caller whose
// bucket refused it, as its 429s are counted (refuseLimited).
func (s *Service) allowIntrospect(pol *policies.Policy, caller *Identity) (who *limitedCaller, err error) {
	rt, workload, who := s.introspectRate(pol, caller)
	switch {
	case rt == nil:
		return nil, nil
	case workload != "":
		err = s.allowFrom(&s.introspectLimiters, workload, rt)
	default:
		err = s.introspectCallers.allow(caller.Iss+"\x00"+caller.Sub, *rt, s.d.Now())
	}
	if err != nil {
		return who, err
	}
	return nil, nil
}

// introspectRate is the bucket size of caller's introspections, as
// allowIntrospect says (nil: not limited), the workload it matches ("" for
// an identity's bucket) and who its 429s are counted as.
func (s *Service) introspectRate(pol *policies.Policy, caller *Identity) (rt *policies.Rate, workload string, who *limitedCaller) {
	floor := s.introspectLim
	if floor.PerSecond < 0 {
		return nil, "", nil
	}
	if pol.Trusts(caller.IssuerName, caller.Iss) {
		if _, ok := pol.MatchAdmin(caller.IssuerName, caller.Claims, ""); ok {
			return nil, "", nil
		}
		if wl, err := pol.Match(caller.IssuerName, caller.Claims); err == nil {
			if wl.Rate == nil || wl.Rate.PerSecond <= 0 {
				return nil, "", nil
			}
			return &policies.Rate{PerSecond: max(wl.Rate.PerSecond, floor.PerSecond), Burst: max(wl.Rate.Burst, int(math.Ceil(wl.Rate.PerSecond)), floor.Burst)},
				wl.Name, &limitedCaller{typ: audit.TypeIntrospect, workload: wl.Name}
		}
	}
	return &policies.Rate{PerSecond: floor.PerSecond, Burst: floor.Burst}, "", &limitedCaller{typ: audit.TypeIntrospect, iss: caller.Iss, sub: caller.Sub}
}

// allowIntrospectToken bounds the introspections made with one caller
// token that may be a broker credential (its jti a broker issuance id:
// checkBrokerToken reads the store for it, up to twice), by its iss and
// jti (a signature twin is the same token), in a bucket sized as its
// identity's (introspectRate): within it, the store tells whether the
// token is revoked before the bucket its identity shares is taken from,
// so that a revoked broker JWT's holder, refused there, does not empty
// the bucket of the workload's live credentials; past it, 429, no store
// read. Other caller tokens: nothing.
func (s *Service) allowIntrospectToken(pol *policies.Policy, caller *Identity) (who *limitedCaller, err error) {
	if !strings.HasPrefix(caller.JTI, PrefixIssuance) {
		return nil, nil
	}
	rt, _, who := s.introspectRate(pol, caller)
	if rt == nil {
		return nil, nil
	}
	if err := s.introspectTokens.allow(caller.Iss+"\x00"+caller.JTI, *rt, s.d.Now()); err != nil {
		return who, err
	}
	return nil, nil
}

// introspectCaller is the caller whose refused introspections an identity
// guard counts, keyed as allowIntrospect's 429s: the workload it matches,
// else its identity. (Also for an admin of pol, whose introspections are
// never limited: a revoked broker JWT matching an admin entry is no
// admin's credential, and its refusals are counted by its identity.)
func introspectCaller(pol *policies.Policy, caller *Identity) *limitedCaller {
	if pol.Trusts(caller.IssuerName, caller.Iss) {
		if _, ok := pol.MatchAdmin(caller.IssuerName, caller.Claims, ""); ok {
			return &limitedCaller{typ: audit.TypeIntrospect, iss: caller.Iss, sub: caller.Sub}
		}
		if wl, err := pol.Match(caller.IssuerName, caller.Claims); err == nil {
			return &limitedCaller{typ: audit.TypeIntrospect, workload: wl.Name}
		}
	}
	return &limitedCaller{typ: audit.TypeIntrospect, iss: caller.Iss, sub: caller.Sub}
}

// callerLimiters are the introspection buckets of callers that match no
// workload, by identity, most recently seen first, at most max
// (IntrospectLimits.MaxCallers).
type callerLimiters struct {
	max   int
	mu    sync.Mutex
	order list.List // of *callerLimiter
	m     map[string]*list.Element
}

type callerLimiter struct {
	key string
	lim *rate.Limiter
}

// allow takes a token from key's bucket, which rt sizes.
func (c *callerLimiters) allow(key string, rt policies.Rate, now time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = make(map[string]*list.Element)
	}
	var lim *rate.Limiter
	if el, ok := c.m[key]; ok {
		c.order.MoveToFront(el)
		cl := el.Value.(*callerLimiter)
		if cl.lim.Limit() != rate.Limit(rt.PerSecond) || cl.lim.Burst() != rt.Burst {
			// Its size changed (a token's bucket is its
			// workload's rate): a new bucket, as allowFrom makes.
			cl.lim = rate.NewLimiter(rate.Limit(rt.PerSecond), rt.Burst)
		}
		lim = cl.lim
	} else {
		n := c.max
		if n <= 0 {
			n = DefaultIntrospectLimits.MaxCallers
		}
		if c.order.Len() >= n {
			old := c.order.Back()
			c.order.Remove(old)
			delete(c.m, old.Value.(*callerLimiter).key)
		}
		lim = rate.NewLimiter(rate.Limit(rt.PerSecond), rt.Burst)
		c.m[key] = c.order.PushFront(&callerLimiter{key: key, lim: lim})
	}
	if lim.AllowN(now, 1) {
		return nil
	}
	return rateLimited(lim, now, rt.PerSecond)
}

// maxRetryAfter bounds the Retry-After of a 429 from a token bucket (a
// workload's rate or proxy_rate, an introspection caller's, a refusal
// source's or the global refusal bucket): a rate so small that one token
// takes longer (below 1/3600 per second) is told to come back in an hour,
// and is refused again then if its token is not back yet.
const maxRetryAfter = time.Hour

// tokenWait is the time a bucket refilled at perSecond (> 0) takes to get
// lack tokens back, rounded up to a nanosecond and at most maxRetryAfter
// (a wait that does not fit a time.Duration, even +Inf, included).
func tokenWait(lack, perSecond float64) time.Duration {
	ns := math.Ceil(lack / perSecond * float64(time.Second))
	if !(ns < float64(maxRetryAfter)) {
		return maxRetryAfter
	}
	return time.Duration(ns)
}

// rateLimited is the 429 of a request lim refused at now: Retry-After until
// one token is back (rounded up to whole seconds when rendered).
func rateLimited(lim *rate.Limiter, now time.Time, perSecond float64) error {
	d := time.Second
	if lack := 1 - lim.TokensAt(now); lack > 0 {
		d = tokenWait(lack, perSecond)
	}
	return &Error{Kind: ErrRateLimited, Reason: ReasonRateLimited, Safe: "rate limit exceeded; slow down", RetryAfter: d}
}
