package broker

import (
	"container/list"
	"context"
	"errors"
	"math"
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

// Introspect authenticates the caller (a caller token that is a revoked
// broker credential is refused, as checkBrokerToken says), applies the
// caller's rate limit (allowIntrospect), looks the credential up by its
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
	if err := s.checkCallerBrokerToken(ctx, req.CallerToken, caller); err != nil {
		s.recordDeny(ctx, ev, err)
		return nil, err
	}
	if req.Token == "" {
		err := Errorf(ErrInvalidRequest, "missing_token", "token is required", nil)
		s.recordDeny(ctx, ev, err)
		return nil, err
	}
	if err := s.allowIntrospect(pol, caller); err != nil {
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

// DefaultIntrospectRate limits the introspections of a caller that matches
// no workload nor admin of the policy in force (a service introspecting the
// credentials it is sent), per identity (iss and sub). A caller
// that needs more is declared as a workload (grants may be empty) with the
// rate it needs.
var DefaultIntrospectRate = policies.Rate{PerSecond: 1, Burst: 20}

// maxIntrospectCallers bounds the identities whose introspection buckets
// are kept: a trusted issuer may sign tokens for any number of subjects.
// Past it the least recently seen is dropped (it starts again with a full
// burst, as a new identity would).
const maxIntrospectCallers = 10000

// allowIntrospect applies the caller's rate limit to an introspection
// (SPEC-ADDITIONS "Unauthenticated refusals": once the caller
// authenticated, a workload's own rate applies). An admin of pol (any
// role) is not limited, as its admin calls are not. A caller that matches a
// workload of pol takes from a bucket its workload's rate sizes (its own:
// introspecting does not use up the workload's exchanges; no rate, no
// limit); one that matches neither, from its identity's bucket,
// DefaultIntrospectRate.
func (s *Service) allowIntrospect(pol *policies.Policy, caller *Identity) error {
	if pol.Trusts(caller.IssuerName, caller.Iss) {
		if _, ok := pol.MatchAdmin(caller.IssuerName, caller.Claims, ""); ok {
			return nil
		}
		if wl, err := pol.Match(caller.IssuerName, caller.Claims); err == nil {
			return s.allowFrom(&s.introspectLimiters, wl.Name, wl.Rate)
		}
	}
	return s.introspectCallers.allow(caller.Iss+"\x00"+caller.Sub, DefaultIntrospectRate, s.d.Now())
}

// callerLimiters are the introspection buckets of callers that match no
// workload, by identity, most recently seen first, at most
// maxIntrospectCallers.
type callerLimiters struct {
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
		lim = el.Value.(*callerLimiter).lim
	} else {
		if c.order.Len() >= maxIntrospectCallers {
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

// rateLimited is the 429 of a request lim refused at now: Retry-After until
// one token is back (rounded up to whole seconds when rendered).
func rateLimited(lim *rate.Limiter, now time.Time, perSecond float64) error {
	d := time.Second
	if lack := 1 - lim.TokensAt(now); lack > 0 {
		d = time.Duration(math.Ceil(lack / perSecond * float64(time.Second)))
	}
	return &Error{Kind: ErrRateLimited, Reason: "rate_limited", Safe: "rate limit exceeded; slow down", RetryAfter: d}
}
