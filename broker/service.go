package broker

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// Token types accepted as subject and actor tokens (RFC 8693).
const (
	GrantTypeTokenExchange = "urn:ietf:params:oauth:grant-type:token-exchange"
	TokenTypeJWT           = "urn:ietf:params:oauth:token-type:jwt"
	TokenTypeIDToken       = "urn:ietf:params:oauth:token-type:id_token"
	TokenTypeAccessToken   = "urn:ietf:params:oauth:token-type:access_token"
)

// Deps are the Service's collaborators. Policy and Authn are functions so that
// a policy reload can swap both atomically behind them: both must read one
// state that a reload replaces at once, with a new *policies.Policy each
// time (a request reads them as a pair, see policyAndAuthn).
type Deps struct {
	Policy   func() *policies.Policy
	Authn    func() Authenticator
	Minters  map[string]Minter  // by grant kind
	Revokers map[string]Revoker // by grant kind
	Store    Store
	Audit    AuditSink
	// AuditChain is the chain id of Audit's log, recorded on every
	// issuance (Issuance.AuditChain); empty when the sink has none.
	AuditChain string
	Now        func() time.Time
	Logger     *slog.Logger
	// MintTimeout bounds one backend mint (default DefaultMintTimeout).
	MintTimeout time.Duration
	// StoreTimeout bounds one store call made by the Service (default 2s).
	StoreTimeout time.Duration
	// AuditTimeout bounds an exchange's wait for its issue event to become
	// durable (default 10s). Past it the exchange fails closed: the
	// credential is revoked, never handed out. It must stay well below the
	// reconciliation's grace: a credential whose record landed but whose
	// event is still pending looks unaudited to a run after the grace.
	AuditTimeout time.Duration
	// RefusalLimits bound the audit events of requests refused before
	// their caller authenticated, per source address, and of authenticated
	// callers' 429s, per caller (PerIdentity); nil (or a negative
	// PerSecond) = no limit.
	RefusalLimits *RefusalLimits
	// IntrospectLimits bound the introspections of authenticated callers
	// (allowIntrospect); a zero field is DefaultIntrospectLimits', a
	// negative PerSecond turns the limit off.
	IntrospectLimits IntrospectLimits
	// Issuer is the iss of the JWTs this broker signs (its public URL, as
	// the jwt minter writes it: no trailing slash). A JWT of this iss whose
	// jti is an issuance id but whose issuance the Store does not hold
	// (lost with the store's data) is refused as an identity token
	// (brokerTokenIssuance). Empty: every such JWT passes as another
	// deployment's, unchecked.
	Issuer string
}

// DefaultMintTimeout is Deps.MintTimeout when it is not set.
const DefaultMintTimeout = 5 * time.Second

// DefaultStoreTimeout and DefaultAuditTimeout are Deps.StoreTimeout and
// Deps.AuditTimeout when they are not set.
const (
	DefaultStoreTimeout = 2 * time.Second
	DefaultAuditTimeout = 10 * time.Second
)

// MaxMintTimeout caps the mint timeout vault.timeout sets (TimeoutsFor):
// an exchange (its mint, the store write, the wait for its audit event)
// must end within keytrail server's 90 s WriteTimeout.
const MaxMintTimeout = 60 * time.Second

// TimeoutsFor are the Timeouts keytrail server gives its Service for
// vault.timeout: the mint timeout is the longer of DefaultMintTimeout (a
// mint may make several Vault requests) and vaultTimeout (one request may
// take that long), at most MaxMintTimeout; the store and audit ones the
// defaults.
func TimeoutsFor(vaultTimeout time.Duration) Timeouts {
	return Timeouts{Mint: min(max(DefaultMintTimeout, vaultTimeout), MaxMintTimeout), Store: DefaultStoreTimeout, Audit: DefaultAuditTimeout}
}

// CutOffGrace is the longest an exchange cut off in its mint at shutdown
// may still take to end with its audit trail written: the mint (Mint),
// its store write beside its issue event (Audit), then, its caller gone,
// the credential's revocation (Mint again), its issuance marked revoked
// (Store) and its orphan_revoked and deny events (Audit each). keytrail
// server waits that long after shutdown_timeout for the handlers it cut
// off; a supervisor's stop timeout (and a test harness's) must leave room
// for it.
func (t Timeouts) CutOffGrace() time.Duration { return 2*t.Mint + t.Store + 3*t.Audit }

// Service implements the workload-facing operations of the broker.
type Service struct {
	d Deps
	// cache is the RevocationCache behind d.Store, if any (see KnownRevoked).
	cache *RevocationCache
	// timers holds stopped timers for the bounded audit wait, so an
	// exchange allocates none.
	timers   sync.Pool
	limiters sync.Map // workload name -> *limiterEntry (rate)
	// proxyLimiters are the buckets of workloads whose policy sets
	// proxy_rate: workload name -> *limiterEntry.
	proxyLimiters sync.Map
	// introspectLimiters are the buckets of the introspections of callers
	// that match a workload, its rate sizing them: workload name ->
	// *limiterEntry (allowIntrospect).
	introspectLimiters sync.Map
	// introspectCallers are those of callers that match none.
	introspectCallers callerLimiters
	// introspectTokens are those of caller tokens that may be broker
	// credentials, by iss and jti (allowIntrospectToken).
	introspectTokens callerLimiters
	// exchangeTokens are those of subject and actor tokens that may be
	// broker credentials, by workload, iss and jti (allowBrokerToken).
	exchangeTokens callerLimiters
	// introspectLim is Deps.IntrospectLimits, defaults applied.
	introspectLim IntrospectLimits
	// limitersMu serialises making a limiter (a first use, a rate change).
	limitersMu sync.Mutex
	// grants are the grants of the policy last asked about (Exchange).
	grants grantViews
	// refusals limits unauthenticated refusals per source (nil: off).
	refusals *refusalGuard
	// limited bounds the audited 429s of authenticated callers per caller
	// (refuseLimited; nil: off).
	limited *refusalGuard
	// lateDecisions are the revocations whose revoke events Revoke stopped
	// waiting for (AuditTimeout) and that are not durable yet, or whose
	// record is not told yet (Revocation.Decision): revocation id ->
	// *lateDecision (see broker/revoke.go).
	lateDecisions sync.Map
	// owedResults are the revocations whose request's own revoke_result
	// was not written (its write failed): revocation id -> time.Time, the
	// ResultOwed mark the failure stored in the record (zero: none, or not
	// yet). This instance's RevocationWorker takes them over (its next
	// pass writes a result from the record read afresh); the mark has the
	// worker of any instance write it should this one stop first.
	owedResults sync.Map
}

// grantView holds copies of one policy's grants by name and of its
// workloads in declaration order: Policy.Grant copies the grant it returns
// (3 allocations for a vault_token grant) and Policy.Match the workload (4
// for one with claims), which an exchange only reads (and a minter, given a
// copy of the struct, only reads). A view is built once per policy (a
// reload makes a new Policy value, hence a new view) and never modified
// after; the grants and workloads it hands out must not be modified either.
type grantView struct {
	pol       *policies.Policy
	grants    map[string]*policies.Grant
	workloads []policies.Workload // Policy.Workloads: MatchIndex's order
}

// grantViews keeps the view of the policy last asked about.
type grantViews struct{ cur atomic.Pointer[grantView] }

// of returns the view of pol, building it when pol is not the policy of
// the view kept (after a reload), which it then replaces.
func (vs *grantViews) of(pol *policies.Policy) *grantView {
	if v := vs.cur.Load(); v != nil && v.pol == pol {
		return v
	}
	gs := pol.Grants()
	v := &grantView{pol: pol, grants: make(map[string]*policies.Grant, len(gs))}
	for i := range gs {
		v.grants[gs[i].Name] = &gs[i]
	}
	v.workloads = pol.Workloads()
	vs.cur.Store(v)
	return v
}

// grant is Policy.Grant without the copy.
func (v *grantView) grant(name string) (*policies.Grant, bool) {
	g, ok := v.grants[name]
	return g, ok
}

// match is Policy.Match without the copy: the view's workload.
func (v *grantView) match(issuerName string, claims map[string]any) (*policies.Workload, error) {
	i, err := v.pol.MatchIndex(issuerName, claims)
	if err != nil {
		return nil, err
	}
	return &v.workloads[i], nil
}

type limiterEntry struct {
	perSecond float64
	burst     int
	lim       *rate.Limiter
}

// NewService validates deps and returns a Service.
func NewService(d Deps) (*Service, error) {
	var errs []error
	if d.Policy == nil {
		errs = append(errs, errors.New("broker: Deps.Policy is required"))
	}
	if d.Authn == nil {
		errs = append(errs, errors.New("broker: Deps.Authn is required"))
	}
	if d.Store == nil {
		errs = append(errs, errors.New("broker: Deps.Store is required"))
	}
	if d.Audit == nil {
		errs = append(errs, errors.New("broker: Deps.Audit is required"))
	}
	if l := d.RefusalLimits; l != nil && (math.IsNaN(l.PerSecond) || math.IsInf(l.PerSecond, 0)) {
		// Either would turn the limit off unsaid (rate.Limiter allows
		// every refusal); off is a negative PerSecond or nil.
		errs = append(errs, errors.New("broker: Deps.RefusalLimits.PerSecond must be a finite number"))
	}
	if l := d.RefusalLimits; l != nil && (math.IsNaN(l.GlobalPerSecond) || math.IsInf(l.GlobalPerSecond, 0)) {
		errs = append(errs, errors.New("broker: Deps.RefusalLimits.GlobalPerSecond must be a finite number"))
	}
	if l := d.IntrospectLimits; math.IsNaN(l.PerSecond) || math.IsInf(l.PerSecond, 0) || l.Burst < 0 || l.MaxCallers < 0 {
		errs = append(errs, errors.New("broker: Deps.IntrospectLimits: PerSecond must be a finite number, Burst and MaxCallers not negative"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if d.Now == nil {
		d.Now = time.Now
	}
	// As the jwt minter writes iss.
	d.Issuer = strings.TrimRight(d.Issuer, "/")
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.MintTimeout <= 0 {
		d.MintTimeout = DefaultMintTimeout
	}
	if d.StoreTimeout <= 0 {
		d.StoreTimeout = DefaultStoreTimeout
	}
	if d.AuditTimeout <= 0 {
		d.AuditTimeout = DefaultAuditTimeout
	}
	if d.Minters == nil {
		d.Minters = map[string]Minter{}
	}
	if d.Revokers == nil {
		d.Revokers = map[string]Revoker{}
	}
	svc := &Service{d: d, cache: revocationCacheOf(d.Store)}
	svc.introspectLim = d.IntrospectLimits.withDefaults()
	svc.introspectCallers.max = svc.introspectLim.MaxCallers
	svc.introspectTokens.max = svc.introspectLim.MaxCallers
	svc.exchangeTokens.max = svc.introspectLim.MaxCallers
	if l := d.RefusalLimits; l != nil && l.PerSecond >= 0 {
		svc.refusals = newRefusalGuard(*l)
		svc.limited = newIdentityGuard(*l)
	}
	return svc, nil
}

// Policy returns the policy in force.
func (s *Service) Policy() *policies.Policy { return s.d.Policy() }

// Store returns the Service's store.
func (s *Service) Store() Store { return s.d.Store }

// Now returns the Service's clock reading.
func (s *Service) Now() time.Time { return s.d.Now() }

// Timeouts are the bounds of one exchange's steps (Deps, defaults
// applied).
type Timeouts struct {
	Mint, Store, Audit time.Duration
}

// Timeouts returns the Service's timeouts. An exchange's credential is
// durably recorded (store write and issue event) within their sum of the
// start of its mint, or never: the reconciliation's grace must exceed it.
func (s *Service) Timeouts() Timeouts {
	return Timeouts{Mint: s.d.MintTimeout, Store: s.d.StoreTimeout, Audit: s.d.AuditTimeout}
}

// ExchangeRequest is a validated RFC 8693 token-exchange request.
type ExchangeRequest struct {
	SubjectToken string
	ActorToken   string        // optional
	Grant        string        // the "audience" parameter
	TTL          time.Duration // 0 = the grant's TTL
	Source       Source
	RequestID    string
}

// ExchangeResult is a minted, stored and audited credential.
type ExchangeResult struct {
	AccessToken string
	ExpiresIn   int64
	Issuance    *Issuance
	Fields      map[string]any
}

// Exchange authenticates the subject token, finds the workload, checks the
// grant, block and rate limit, mints the credential, then stores the
// issuance and makes its audit event durable (both at once). Any failure
// after the mint revokes the credential again and returns ErrUnavailable, as
// does the caller going away once the mint has started (reason client_gone);
// a caller gone before the mint gets the same error and nothing is minted.
func (s *Service) Exchange(ctx context.Context, req ExchangeRequest) (*ExchangeResult, error) {
	pol, authn := s.policyAndAuthn()
	// The deny event is gathered here as the checks learn its fields and
	// allocated (denyEvent) only when a refusal writes it: most exchanges
	// write none. Its source and identity are added then.
	deny := audit.Event{Type: audit.TypeDeny, RequestID: req.RequestID}
	var denyIdentity *Identity
	denyEvent := func() *audit.Event {
		d := &denyParts{Event: deny}
		if req.Source.IP != "" || req.Source.UserAgent != "" {
			d.src = audit.Source{IP: req.Source.IP, UserAgent: req.Source.UserAgent}
			d.Source = &d.src
		}
		if denyIdentity != nil {
			r := denyIdentity.Ref()
			d.ident = audit.Identity{Iss: r.Iss, Sub: r.Sub, JTI: r.JTI}
			d.Identity = &d.ident
		}
		return &d.Event
	}
	if pol.HasGrant(req.Grant) {
		// Only a grant policy knows: a caller, authenticated or not,
		// cannot write arbitrary text into the audit log (as RefuseUnauthenticated).
		deny.Grant = req.Grant
	}
	fail := func(err error) (*ExchangeResult, error) {
		s.recordDeny(ctx, denyEvent(), err)
		return nil, err
	}
	// Refusals before the subject authenticated count against the
	// source's RefusalLimits.
	refuse := func(err error) (*ExchangeResult, error) {
		return nil, s.refuseAnonymous(ctx, denyEvent(), req.Source, err)
	}
	if req.SubjectToken == "" {
		return refuse(Errorf(ErrInvalidRequest, "missing_subject_token", "subject_token is required", nil))
	}
	if req.Grant == "" {
		return refuse(Errorf(ErrInvalidRequest, "missing_audience", "audience (the grant name) is required", nil))
	}
	if req.TTL < 0 {
		return refuse(Errorf(ErrInvalidRequest, "bad_ttl", "ttl must be a positive number of seconds", nil))
	}

	id, err := authn.Authenticate(ctx, req.SubjectToken)
	if err != nil {
		return refuse(err)
	}
	denyIdentity = id
	if !pol.Trusts(id.IssuerName, id.Iss) {
		return fail(errPolicyReloaded(id))
	}
	// The workload the subject matches (refused no_workload only after
	// the tokens' checks, as before): a broker JWT presented as subject or
	// actor token takes from a bucket of its own, sized as its rate,
	// before checkBrokerToken reads the store, and its refusals count
	// against its identity guard (RefusalLimits.PerIdentity: past it the
	// same refusal with no event, counted by its summary), so that the holder of a revoked JWT gets
	// neither unbounded store reads nor unbounded deny events, and leaves
	// the workload's own bucket (taken below, past these checks) to its
	// live credentials.
	view := s.grants.of(pol)
	wl, wlErr := view.match(id.IssuerName, id.Claims)
	if wlErr != nil {
		wl = nil
	} else {
		// Every deny from here on names the subject's workload, also
		// those decided before no_workload would be (a broker JWT's, the
		// actor token's), as their summary does (exchangeCaller): keytrail
		// report counts a workload's denied by the events naming it.
		deny.Workload, deny.Owner = wl.Name, wl.Owner
	}
	tokenTag := refusalTag{grant: deny.Grant, endpoint: refusalEndpointToken}
	// Its 429, as the workload's own (its deny event names the workload);
	// that of a verified actor token's own bucket (actor not nil) counted
	// as the caller's acting for that party (exchangeActor).
	limited := func(actor *Identity, err error) (*ExchangeResult, error) {
		return nil, s.refuseLimited(ctx, denyEvent(), exchangeActor(wl, id, actor), tokenTag, err)
	}
	// A refusal of the authenticated subject (err, reason included: a
	// broker JWT's, an actor token that does not verify, no workload, the
	// grant, a block; a verified actor token's: refusedActor), counted as
	// its caller's, the workload wl, else its
	// identity (refuseCaller: its deny events up to
	// RefusalLimits.PerIdentity per span, then the same refusal with no
	// event, counted by its summary). A 5xx (the broker's own failure) is recorded as always.
	refused := func(err error) (*ExchangeResult, error) {
		tag := tokenTag
		tag.reason = refusalReason(err)
		return nil, s.refuseCaller(ctx, denyEvent(), exchangeCaller(wl, id), tag, err)
	}
	// A refusal of the verified actor token actorID (revoked or unknown
	// broker JWT, may_act either way, no time left): counted as the
	// caller's acting for that actor (its iss and sub, exchangeActor), so
	// that each party an agent acts for has its own bucket and summary and
	// one user's refused tokens leave the next user's refusals audited.
	// An actor token that does not verify is refused, and counted,
	// as the caller's own (refused): its claims are not known to be true.
	var actorID *Identity
	refusedActor := func(err error) (*ExchangeResult, error) {
		tag := tokenTag
		tag.reason = refusalReason(err)
		return nil, s.refuseCaller(ctx, denyEvent(), exchangeActor(wl, id, actorID), tag, err)
	}
	if err := s.allowBrokerToken(wl, id); err != nil {
		return limited(nil, err)
	}
	subjectIs, err := s.brokerTokenIssuance(ctx, req.SubjectToken, id)
	if err != nil {
		return refused(err)
	}
	var act []IdentityRef
	var actorExp time.Time           // the actor token's exp: the delegated credential's latest expiry
	var actMayActs []json.RawMessage // Issuance.ActMayAct
	if req.ActorToken != "" {
		// A broker JWT actor's kept may_act restrictions: those of the
		// tokens it was minted from (the subject's and the actor's).
		var actorKept []json.RawMessage
		actor, err := authn.Authenticate(ctx, req.ActorToken)
		if err == nil {
			// Verified: named as act on the deny events from here on,
			// also when the check below refuses it (a revoked broker
			// JWT: the auditor reads who still acted with it). A token
			// that does not verify is not named: its claims are not
			// known to be true.
			act = []IdentityRef{actor.Ref()}
			deny.Act = auditIdentities(act)
			actorID = actor
			actorExp = actor.Expiry
			if lerr := s.allowBrokerToken(wl, actor); lerr != nil {
				return limited(actor, lerr)
			}
			actorIs, aerr := s.brokerTokenIssuance(ctx, req.ActorToken, actor)
			if aerr != nil {
				return refusedActor(actorError(aerr))
			}
			if actorIs != nil {
				actorKept = appendKept(appendKept(nil, actorIs.MayAct), actorIs.ActMayAct)
			}
			actMayActs = appendKept(ownMayAct(nil, actor), actorKept)
		}
		if err != nil {
			return refused(actorError(err))
		}
		// may_act (RFC 8693 §4.4) in either token names the other party
		// (docs/SPEC-ADDITIONS.md "Delegation"): the actor token's, as
		// the RFC means it, the agents that may act for its user; the
		// subject token's, the parties its workload may act for.
		// A broker JWT is held to the may_act claims its issuance kept
		// (Issuance.MayAct, ActMayAct), as if it carried them.
		if !mayAct(id, actor) || (subjectIs != nil && !keptMayActsPermit(subjectIs.MayAct, actor)) {
			return refusedActor(Errorf(ErrUnauthenticated, "actor_not_permitted", "actor token rejected: not an actor the subject token permits (may_act)", nil))
		}
		if !mayAct(actor, id) || !keptMayActsPermit(actorKept, id) {
			return refusedActor(Errorf(ErrUnauthenticated, "subject_not_permitted", "subject token rejected: not a party the actor token permits to act for it (may_act)", nil))
		}
		if !actorExp.IsZero() && actorExp.Sub(s.d.Now()) < time.Second {
			// Accepted within the verifier's leeway past its exp: no time
			// is left to grant (see the cap below).
			return refusedActor(errActorExpired())
		}
	}

	if wlErr != nil {
		return refused(Errorf(ErrDenied, "no_workload", "no workload matches this identity", wlErr))
	}

	grant, ok := view.grant(req.Grant)
	if !ok {
		return refused(&Error{Kind: ErrInvalidTarget, Reason: "unknown_grant", Safe: "unknown grant"})
	}
	deny.Kind = grant.Kind
	if !pol.Allowed(wl, grant.Name) {
		return refused(Errorf(ErrDenied, "grant_not_allowed", "the workload is not allowed this grant", nil))
	}
	sessionID := s.sessionID(pol, id)
	deny.SessionID = sessionID

	if err := s.checkBlocked(ctx, wl.Name); err != nil {
		return refused(err)
	}
	if err := s.allow(wl); err != nil {
		return nil, s.refuseLimited(ctx, denyEvent(), &limitedCaller{typ: audit.TypeDeny, workload: wl.Name, owner: wl.Owner},
			refusalTag{grant: grant.Name, endpoint: refusalEndpointToken}, err)
	}

	ttl := grant.TTLDuration()
	if req.TTL > 0 && req.TTL < ttl {
		ttl = req.TTL
	}
	minter, ok := s.d.Minters[grant.Kind]
	if !ok {
		return fail(Unavailable("kind_not_configured", 30*time.Second, fmt.Errorf("no minter for grant kind %q", grant.Kind)))
	}

	if cerr := ctx.Err(); cerr != nil {
		// The caller is gone before the mint (its block check may have
		// been answered from the revocation cache, which does not look
		// at ctx): nothing is minted, as a credential made now could only
		// be revoked again. The deny's outcome is 499 client_gone.
		return fail(Unavailable(OrphanClientGone, time.Second, fmt.Errorf("the caller went away before the mint: %w", cerr)))
	}
	now := s.d.Now()
	if !actorExp.IsZero() {
		// A delegated credential lives no longer than the actor token it
		// was granted on (whole seconds, rounded down, as backends take
		// TTLs). One accepted within the verifier's leeway past its exp,
		// or with under a second left, leaves nothing to grant.
		left := actorExp.Sub(now).Truncate(time.Second)
		if left < time.Second {
			return refusedActor(errActorExpired())
		}
		ttl = min(ttl, left)
	}
	issID := NewID(PrefixIssuance)
	// From the mint on, the caller leaving cuts nothing short: a Vault call
	// cancelled mid-way may have created the credential all the same, and
	// it must then be recorded, audited and revoked, not lost (see the
	// client_gone case below). MintTimeout still bounds the mint.
	bg := context.WithoutCancel(ctx)
	mreq := MintRequest{
		IssuanceID: issID, Workload: wl.Name, Owner: wl.Owner, SessionID: sessionID,
		Grant: *grant, TTL: ttl, Identity: id, Now: now,
	}
	var cred *Credential
	var timedOut bool
	if ip, ok := minter.(InProcessMinter); ok && ip.MintsInProcess() {
		// No backend call, nothing that waits: no deadline context and
		// timer for it; MintTimeout bounds it from issued_at all the same.
		cred, err = minter.Mint(bg, mreq)
		if timedOut = s.d.Now().Sub(now) >= s.d.MintTimeout; timedOut && err == nil {
			cred, err = nil, Unavailable("backend_timeout", 2*time.Second, fmt.Errorf("the in-process mint returned after the mint timeout (%v)", s.d.MintTimeout))
		}
	} else {
		mctx, cancel := context.WithTimeout(bg, s.d.MintTimeout)
		cred, err = minter.Mint(mctx, mreq)
		cancel()
		timedOut = errors.Is(mctx.Err(), context.DeadlineExceeded)
	}
	if err != nil {
		e := AsError(err)
		if timedOut && !errors.Is(e, ErrUnavailable) {
			e = Unavailable("backend_timeout", 2*time.Second, err)
		}
		deny.IssuanceID = issID
		if ue := (*UnrevokedError)(nil); errors.As(err, &ue) {
			// Left valid at its backend: the deny event names it.
			deny.Credential = auditCredential(ue.Refs)
			deny.Details = map[string]any{"unrevoked": true}
		}
		return fail(e)
	}
	cred.Refs.Fingerprint = Fingerprint(cred.AccessToken)
	if cred.Refs.ExpiresAt.IsZero() || cred.Refs.ExpiresAt.After(now.Add(ttl)) {
		cred.Refs.ExpiresAt = now.Add(ttl)
	}

	is := &Issuance{
		ID: issID, Workload: wl.Name, Owner: wl.Owner, SessionID: sessionID,
		Grant: grant.Name, Kind: grant.Kind, Identity: id.Ref(), Act: act, Audience: jwtAudience(grant),
		Claims: usedClaims(pol, id, wl), MayAct: subjectMayActs(id, subjectIs), ActMayAct: actMayActs, Source: req.Source,
		IssuedAt: now, ExpiresAt: cred.Refs.ExpiresAt, Refs: cred.Refs, RequestID: req.RequestID,
		AuditChain: s.d.AuditChain,
	}

	// The store record and the audit event are written at the same time
	// (the exchange waits for the slower of the two, not for both in turn);
	// the credential is returned only once both are durable. Either failing
	// revokes the credential: it never reaches the caller. The audit append
	// gets the new goroutine: it only queues the event and waits, while the
	// store write encodes JSON and would grow a fresh goroutine's stack
	// (copied each time) on every exchange.
	// One allocation for the event and the parts it points to.
	ip := &issueParts{out: audit.Outcome{Status: 200}}
	ir := id.Ref()
	ip.ident = audit.Identity{Iss: ir.Iss, Sub: ir.Sub, JTI: ir.JTI}
	ip.cred = auditCredentialValue(cred.Refs)
	ip.Event = audit.Event{
		Type: audit.TypeIssue, RequestID: req.RequestID, IssuanceID: issID,
		Workload: wl.Name, Owner: wl.Owner, SessionID: sessionID, Grant: grant.Name, Kind: grant.Kind,
		Identity: &ip.ident, Act: auditIdentities(act),
		Credential: &ip.cred, Outcome: &ip.out,
		// The identity claims the match used, so an offline trace over the
		// audit log alone can show them (never whole tokens).
		Details: map[string]any{"claims": is.Claims},
	}
	if req.Source.IP != "" || req.Source.UserAgent != "" {
		ip.src = audit.Source{IP: req.Source.IP, UserAgent: req.Source.UserAgent}
		ip.Source = &ip.src
	}
	ev, aw := &ip.Event, &ip.audited
	aw.done = make(chan struct{})
	// A sink that can queue the event at once (the server's auditfile
	// sink, its queue not full) tells aw from its writer; otherwise the
	// append runs on a goroutine of its own, which may wait for room.
	if q, ok := s.d.Audit.(QueuingAuditSink); !ok || !q.Enqueue(ev, aw.finish) {
		go func() { aw.finish(s.d.Audit.Append(bg, ev)) }()
	}
	sctx, cancel := context.WithTimeout(bg, s.d.StoreTimeout)
	serr := s.d.Store.PutIssuance(sctx, is)
	cancel()
	aerr := s.awaitAudit(aw)
	switch {
	case aerr != nil:
		// The issue event failed or is still pending (a stalled disk):
		// the credential never goes out. A pending event may land later;
		// the deny event (queued behind it, nobody waits for it) says the
		// issuance was refused, and the store marks it revoked. The issue
		// event may never land: the deny names the credential (its
		// references, never the secret) and, when its revocation failed
		// (undoMint logs why), says it is unrevoked, as for a mint that
		// left one behind, so that trace finds it.
		uerr := s.undoMint(ctx, is, "audit_failed")
		deny.IssuanceID = issID
		deny.Credential = auditCredential(cred.Refs)
		if uerr != nil {
			deny.Details = map[string]any{"unrevoked": true}
		}
		e := Unavailable("audit_unavailable", time.Second, aerr)
		deny.Outcome = &audit.Outcome{Status: StatusOf(e), Error: CodeOf(e), Reason: e.Reason}
		s.AuditDeferred(ctx, denyEvent(), func(err error) {
			if err != nil {
				s.d.Logger.LogAttrs(context.Background(), slog.LevelError, "audit deny event failed",
					slog.String("request_id", req.RequestID), slog.String("issuance_id", issID), slog.String("error", err.Error()))
			}
		})
		if serr == nil {
			s.markWithdrawn(bg, is, "audit_failed")
		}
		return nil, e
	case serr != nil:
		// The issue event is durable but the credential will not be handed
		// out: an orphan_revoked event (reason store_failed) says so in the
		// log, then the deny event of the request. Should the revocation
		// fail, the reconciliation finds the unrecorded credential and
		// revokes it.
		uerr := s.undoMint(ctx, is, "store_failed")
		werr := s.recordWithdrawn(ctx, is, req.RequestID, OrphanStoreFailed, uerr)
		deny.IssuanceID = issID
		e := Unavailable("store_unavailable", time.Second, serr)
		if werr != nil {
			// The orphan_revoked event is pending (a write that hangs):
			// the deny queues behind it, nobody waits for it. Or it
			// failed, after the request waited for it: not a second
			// wait for the deny either.
			s.deferDeny(ctx, denyEvent(), e)
			return nil, e
		}
		return fail(e)
	case ctx.Err() != nil:
		// The caller went away while the credential was minted or
		// recorded: nobody will receive it. Recorded and audited like any
		// other, it is revoked at once: the store marks it revoked, an
		// orphan_revoked event (reason client_gone) follows its issue
		// event, then the request's deny event, outcome 499 client_gone
		// (nginx's "client closed request", as the proxy's use_result).
		uerr := s.undoMint(bg, is, OrphanClientGone)
		s.markWithdrawn(bg, is, OrphanClientGone)
		werr := s.recordWithdrawn(bg, is, req.RequestID, OrphanClientGone, uerr)
		deny.IssuanceID = issID
		e := Unavailable(OrphanClientGone, time.Second, fmt.Errorf("the caller went away before credential %s was handed out: %w", issID, ctx.Err()))
		// The deny's outcome is 499 client_gone (recordDeny); waited for
		// at most AuditTimeout, or not at all behind a pending or failed
		// orphan_revoked event (waited for already).
		if werr != nil {
			s.deferDeny(bg, denyEvent(), e)
		} else {
			s.recordDeny(bg, denyEvent(), e)
		}
		return nil, e
	}
	return &ExchangeResult{
		AccessToken: cred.AccessToken,
		ExpiresIn:   int64(math.Max(0, math.Round(is.ExpiresAt.Sub(now).Seconds()))),
		Issuance:    is,
		Fields:      cred.Fields,
	}, nil
}

// awaitAudit waits for an event's append, at most AuditTimeout: an event
// not durable by then is a failure wrapping ErrAuditPending (the append goes
// on; Exchange revokes the credential of an issue event).
func (s *Service) awaitAudit(audited *auditWait) error {
	select {
	case <-audited.done: // already there: no timer
		return audited.err
	default:
	}
	t, _ := s.timers.Get().(*time.Timer)
	if t == nil {
		t = time.NewTimer(s.d.AuditTimeout)
	} else {
		t.Reset(s.d.AuditTimeout)
	}
	defer func() {
		// Back to the pool only when Stop stopped it before it fired:
		// its channel is then empty with any timer implementation (under
		// GODEBUG=asynctimerchan=1, the timers of Go before 1.23, one
		// that fired as the wait ended keeps its value, which would end
		// the next wait at once). One that fired is left to the collector.
		if t.Stop() {
			s.timers.Put(t)
		}
	}()
	select {
	case <-audited.done:
		return audited.err
	case <-t.C:
		return fmt.Errorf("the event was not durable within %s: %w", s.d.AuditTimeout, ErrAuditPending)
	}
}

// undoMint revokes a credential that will not be handed out (why:
// audit_failed, store_failed, client_gone). A failure is logged with the
// issuance id and accessor so an operator (and the reconciliation) can find
// it, and returned.
func (s *Service) undoMint(ctx context.Context, is *Issuance, why string) error {
	rv, ok := s.d.Revokers[is.Kind]
	if !ok {
		return nil
	}
	// What happened, in the log line's message: a credential whose caller
	// left was recorded (store and audit log) like any other; the others
	// could not be.
	revoked, failed := "revoked credential that could not be recorded", "revoking unrecorded credential failed"
	if why == OrphanClientGone {
		revoked, failed = "revoked recorded credential: its caller went away before it was handed out",
			"revoking recorded credential whose caller went away failed"
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.d.MintTimeout)
	defer cancel()
	if err := rv.Revoke(rctx, is); err != nil {
		// The line names the credential by every reference the issue event
		// carries (and the mount that revokes it), never the secret: with
		// the issue and deny events lost too (a full disk), it is the one
		// place left that names, say, a certificate's serial.
		attrs := append(make([]slog.Attr, 0, 12), slog.String("request_id", is.RequestID), slog.String("issuance_id", is.ID))
		attrs = appendRefAttrs(attrs, is.Refs)
		attrs = append(attrs, slog.String("why", why), slog.String("error", err.Error()))
		s.d.Logger.LogAttrs(ctx, slog.LevelError, failed, attrs...)
		return err
	}
	s.d.Logger.LogAttrs(ctx, slog.LevelWarn, revoked,
		slog.String("request_id", is.RequestID), slog.String("issuance_id", is.ID), slog.String("why", why))
	return nil
}

// appendRefAttrs appends the credential references r holds (none is a
// secret), each under its audit event name, to attrs.
func appendRefAttrs(attrs []slog.Attr, r CredentialRefs) []slog.Attr {
	for _, a := range [...]struct{ k, v string }{
		{"fingerprint", r.Fingerprint}, {"accessor", r.Accessor}, {"lease_id", r.LeaseID},
		{"username", r.Username}, {"jti", r.JTI}, {"serial", r.Serial}, {"mount", r.Mount},
	} {
		if a.v != "" {
			attrs = append(attrs, slog.String(a.k, a.v))
		}
	}
	if !r.ExpiresAt.IsZero() {
		attrs = append(attrs, slog.String("expires_at", r.ExpiresAt.UTC().Format(time.RFC3339)))
	}
	return attrs
}

// StatusClientClosedRequest (nginx's 499, "client closed request") is the
// outcome status of a request whose caller went away before its answer: a
// token exchange's deny event, and a proxied request's use_result event,
// access-log line and keytrail_proxy_requests_total (nothing is sent:
// nobody is there to read it).
const StatusClientClosedRequest = 499

// markWithdrawn marks a stored issuance whose credential was not handed out
// revoked, without a revocation id (a withdrawal); a failure is logged (the
// reconciliation revokes what the store keeps unrevoked without an issue
// event). The mark is Store.MarkRevoked's, first mark wins: the issuance is
// stored by now, so an admin revocation may have marked it already (it
// selected it, or named its id), and its mark, with its revocation id,
// stands. is takes the mark the store keeps.
func (s *Service) markWithdrawn(bg context.Context, is *Issuance, why string) {
	c := *is
	c.RevokedAt, c.RevocationID = s.d.Now(), ""
	sctx, cancel := context.WithTimeout(bg, s.d.StoreTimeout)
	defer cancel()
	stored, err := s.d.Store.MarkRevoked(sctx, &c)
	if err != nil {
		is.RevokedAt = c.RevokedAt
		s.d.Logger.LogAttrs(bg, slog.LevelError, "marking a withdrawn issuance revoked",
			slog.String("request_id", is.RequestID), slog.String("issuance_id", is.ID), slog.String("why", why), slog.String("error", err.Error()))
		return
	}
	is.RevokedAt, is.RevocationID = stored.RevokedAt, stored.RevocationID
}

// recordWithdrawn writes the orphan_revoked event (reason why: store_failed,
// client_gone) that follows an issue event whose credential was not handed
// out; revokeErr is the outcome of revoking it. A failure is logged and
// returned (one wrapping ErrAuditPending: the request's deny need not be
// waited for).
func (s *Service) recordWithdrawn(ctx context.Context, is *Issuance, requestID, why string, revokeErr error) error {
	out := &audit.Outcome{Status: 200}
	if revokeErr != nil {
		// Codes, as in every outcome: the reconciliation takes it from here.
		out = &audit.Outcome{Status: 503, Error: "temporarily_unavailable", Reason: "revoke_failed"}
	}
	ev := orphanRevokedEvent(is, why, out)
	ev.RequestID = requestID
	if err := s.Audit(ctx, ev); err != nil { // at most AuditTimeout, as recordDeny's
		msg := "recording an unrecorded issuance failed"
		if why == OrphanClientGone {
			msg = "recording the revocation of a credential whose caller went away failed"
		}
		s.d.Logger.LogAttrs(ctx, slog.LevelError, msg,
			slog.String("request_id", requestID), slog.String("issuance_id", is.ID), slog.String("why", why), slog.String("error", err.Error()))
		return err
	}
	return nil
}

// checkBrokerToken is brokerTokenIssuance without the issuance.
func (s *Service) checkBrokerToken(ctx context.Context, raw string, id *Identity) error {
	_, err := s.brokerTokenIssuance(ctx, raw, id)
	return err
}

// brokerTokenIssuance refuses an identity token that is a credential this
// broker issued and that is no longer active: a broker JWT, where policy
// trusts the broker as an issuer (its jti is the issuance id), once revoked
// or its workload blocked, as introspection would answer for it (SPEC
// /v1/token: 403, credential revoked). Only a token whose jti looks like an
// issuance id is looked up, by its fingerprint, else by its jti: an ES256
// signature (r, s) has a twin (r, n-s) that verifies as well, so the holder
// of a broker JWT can present a different string than the one issued, with
// the same (signed) jti. Other tokens cost nothing. A token whose issuance
// the Store does not hold is refused when the RevocationCache knows its jti
// revoked (403 credential_revoked: the Store lost its data), else when its
// iss is this broker's own (Deps.Issuer: 401 unknown_credential, the
// record lost, its revocation and kept may_act unknown); one of another
// issuer passes (not this deployment's credential). It returns the
// issuance of an active broker credential, else nil.
func (s *Service) brokerTokenIssuance(ctx context.Context, raw string, id *Identity) (*Issuance, error) {
	if !strings.HasPrefix(id.JTI, PrefixIssuance) {
		return nil, nil
	}
	if s.cache != nil && s.cache.Revoked(id.JTI) {
		// Known revoked here (a revocation is never undone): the Store
		// read could only confirm it (the cache's Store adds this denial
		// to whatever it answers), so none is made, whatever the
		// workload's rate.
		return nil, Errorf(ErrDenied, "credential_revoked", "the identity token is a revoked credential",
			fmt.Errorf("broker credential %s is revoked (this instance's revocation cache)", id.JTI))
	}
	sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
	is, err := s.d.Store.FindIssuance(sctx, RefFingerprint, Fingerprint(raw))
	if errors.Is(err, ErrNotFound) {
		is, err = s.d.Store.FindIssuance(sctx, RefJTI, id.JTI)
	}
	cancel()
	switch {
	case errors.Is(err, ErrNotFound) && s.cache != nil && s.cache.Revoked(id.JTI):
		// A credential this instance knows revoked whose record the Store
		// no longer holds: it lost its data (see RevocationCache).
		return nil, Errorf(ErrDenied, "credential_revoked", "the identity token is a revoked credential",
			fmt.Errorf("broker credential %s is revoked (the store no longer holds its issuance)", id.JTI))
	case errors.Is(err, ErrNotFound) && s.d.Issuer != "" && id.Iss == s.d.Issuer:
		// This broker's own JWT (its iss is the one the broker signs
		// with) with no record: the Store lost it (a data loss, a
		// failover that lost its write), since a record outlives its
		// credential's exp by the store's retention. Its revocation and
		// kept may_act are unknown: refused, as introspection calls it
		// inactive; its holder exchanges again.
		return nil, Errorf(ErrUnauthenticated, "unknown_credential", "the identity token is a broker credential this broker holds no record of",
			fmt.Errorf("broker credential %s of this broker's issuer has no issuance record in the store", id.JTI))
	case errors.Is(err, ErrNotFound):
		return nil, nil // another issuer's token: not a credential of this broker
	case err != nil:
		return nil, Unavailable("store_unavailable", time.Second, err)
	}
	active, err := s.credentialActive(ctx, is)
	if err != nil {
		return nil, err
	}
	if !active {
		return nil, Errorf(ErrDenied, "credential_revoked", "the identity token is a revoked credential",
			fmt.Errorf("broker credential %s is revoked, expired or its workload blocked", is.ID))
	}
	return is, nil
}

// actorError is err, a failure of the actor token's check, as the
// exchange answers it: a refusal of the actor token (a 4xx) has its reason
// prefixed "actor_" (actor_credential_revoked, actor_bad_signature); the
// broker's own failure while checking it (a 5xx: store_unavailable,
// jwks_unavailable) keeps its reason, as the 503s that alerts and
// keytrail_denies_total name are the same whichever token was checked.
// err is copied, never changed.
func actorError(err error) *Error {
	e := AsError(err)
	if StatusOf(e) >= 500 {
		return e
	}
	c := *e
	c.Reason = "actor_" + e.Reason
	return &c
}

// exchangeCaller is the caller whose refused exchanges an identity guard
// counts: the workload wl the subject matches (its 429s' key), else the
// subject's identity.
func exchangeCaller(wl *policies.Workload, id *Identity) *limitedCaller {
	if wl != nil {
		return &limitedCaller{typ: audit.TypeDeny, workload: wl.Name, owner: wl.Owner}
	}
	return &limitedCaller{typ: audit.TypeDeny, iss: id.Iss, sub: id.Sub}
}

// exchangeActor is the caller whose refusals of the verified actor token
// actor (and the 429s of its own bucket, allowBrokerToken) an identity
// guard counts: exchangeCaller's acting for actor (its
// iss and sub: a bucket and summary of their own in the identity guard,
// which keeps at most maxActorsPerCaller of them per caller and counts the
// rest as the caller's own), exchangeCaller's with actor nil.
func exchangeActor(wl *policies.Workload, id, actor *Identity) *limitedCaller {
	c := exchangeCaller(wl, id)
	if actor != nil {
		c.actIss, c.actSub = actor.Iss, actor.Sub
	}
	return c
}

// allowBrokerToken bounds the exchanges made with one subject or actor
// token that may be a broker credential (its jti a broker issuance id:
// checkBrokerToken reads the store for it, up to twice) by a bucket of
// its own, by the workload wl the subject matches and the token's iss and
// jti (a signature twin is the same token), sized as wl's rate: within
// it the store tells whether the token is revoked before wl's own bucket
// is taken from, so a revoked JWT's holder, refused there, does not empty
// it; past it, 429 and no store read. Other tokens, and a subject matching
// no workload or one without a rate (whose exchanges are not limited):
// nothing.
func (s *Service) allowBrokerToken(wl *policies.Workload, id *Identity) error {
	if wl == nil || wl.Rate == nil || wl.Rate.PerSecond <= 0 || !strings.HasPrefix(id.JTI, PrefixIssuance) {
		return nil
	}
	return s.exchangeTokens.allow(wl.Name+"\x00"+id.Iss+"\x00"+id.JTI, policies.Rate{PerSecond: wl.Rate.PerSecond, Burst: burstOf(wl.Rate)}, s.d.Now())
}

// checkCallerBrokerToken is checkBrokerToken for the Bearer token of a
// protected resource's caller (introspection, the admin API): a revoked
// broker credential is an invalid Bearer token there, 401 invalid_token
// (RFC 6750 §3.1 names revoked tokens), with the same reason; so is one
// whose issuance the store lost (unknown_credential).
func (s *Service) checkCallerBrokerToken(ctx context.Context, raw string, id *Identity) error {
	err := s.checkBrokerToken(ctx, raw, id)
	if errors.Is(err, ErrUnauthenticated) {
		return bearerError(err) // unknown_credential
	}
	if err == nil || !errors.Is(err, ErrDenied) {
		return err
	}
	e := *AsError(err)
	e.Kind, e.Code, e.Safe = ErrUnauthenticated, CodeInvalidToken, "the Bearer token is a revoked credential"
	return &e
}

// credentialActive reports whether a broker credential is in force:
// unexpired, unrevoked, and its workload not blocked. An error only when the
// block cannot be read.
func (s *Service) credentialActive(ctx context.Context, is *Issuance) (bool, error) {
	if !is.Active(s.d.Now()) {
		return false, nil
	}
	if err := s.checkBlocked(ctx, is.Workload); err != nil {
		if errors.Is(err, ErrDenied) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}

// checkBlocked denies a blocked workload. A revocation cache answering from
// memory (FastReads, its view fresh) makes no deadline context (4
// allocations and a timer per exchange); a Store call still has
// StoreTimeout (GetBlockWithin).
func (s *Service) checkBlocked(ctx context.Context, workload string) error {
	b, err := s.GetBlockWithin(ctx, workload, s.d.StoreTimeout)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return Unavailable("store_unavailable", time.Second, err)
	default:
		return Errorf(ErrDenied, "workload_blocked", "the workload is blocked", fmt.Errorf("blocked by %s", b.RevocationID))
	}
}

// allow applies the workload's rate limit (its token exchanges, and its
// proxied requests unless it has a proxy_rate).
func (s *Service) allow(wl *policies.Workload) error {
	return s.allowFrom(&s.limiters, wl.Name, wl.Rate)
}

// burstOf is the bucket size of rt: its burst, else (unset) its rate per
// second rounded up.
func burstOf(rt *policies.Rate) int {
	if rt.Burst < 1 {
		return int(math.Ceil(rt.PerSecond))
	}
	return rt.Burst
}

// allowFrom takes a token from the bucket of workload in limiters, which
// rt sizes (nil: no limit). Limiters are per process; a policy change of
// the rate replaces the limiter.
func (s *Service) allowFrom(limiters *sync.Map, workload string, rt *policies.Rate) error {
	if rt == nil || rt.PerSecond <= 0 {
		return nil
	}
	burst := burstOf(rt)
	stale := func(e *limiterEntry) bool {
		return e == nil || e.perSecond != rt.PerSecond || e.burst != burst
	}
	v, _ := limiters.Load(workload)
	e, _ := v.(*limiterEntry)
	if stale(e) {
		// One limiter per rate: concurrent first requests must not each
		// make their own (each would get a full burst).
		s.limitersMu.Lock()
		v, _ = limiters.Load(workload)
		if e, _ = v.(*limiterEntry); stale(e) {
			e = &limiterEntry{perSecond: rt.PerSecond, burst: burst, lim: rate.NewLimiter(rate.Limit(rt.PerSecond), burst)}
			limiters.Store(workload, e)
		}
		s.limitersMu.Unlock()
	}
	// AllowN takes a token only when there is one: a refused request takes
	// nothing. (A reservation cancelled after a refusal gives its token back
	// only when no later reservation was made meanwhile, so concurrent
	// refusals left the bucket in debt, refusing the workload, with growing
	// Retry-After, long after it slowed down.)
	now := s.d.Now()
	if e.lim.AllowN(now, 1) {
		return nil
	}
	return rateLimited(e.lim, now, rt.PerSecond)
}

// Allow applies the workload's rate limit, the bucket of its token
// exchanges.
func (s *Service) Allow(wl *policies.Workload) error { return s.allow(wl) }

// AllowProxy applies the workload's limit to a proxied request: the bucket
// of its proxy_rate when the policy sets one, else the one its token
// exchanges take from (rate).
func (s *Service) AllowProxy(wl *policies.Workload) error {
	if wl.ProxyRate != nil {
		return s.allowFrom(&s.proxyLimiters, wl.Name, wl.ProxyRate)
	}
	return s.allow(wl)
}

// AuditProxyRateLimited reports whether the deny event of a proxied
// request of workload wl that AllowProxy refused with err is to be written
// (write), and the error to answer with. A 429 (ErrRateLimited) takes from
// wl's bucket of audited 429s, the one its exchanges' 429s take from
// (RefusalLimits.PerIdentity, refuseLimited): false once it is empty, the
// 429 counted by wl's summary instead (a deny naming wl, details scope
// "identity"), and answer the same 429 marked so
// (SuppressedScope(answer) is RefusalScopeIdentity). Any other err: true,
// err. The caller answers the same 429 either way; it hands out nothing.
func (s *Service) AuditProxyRateLimited(ctx context.Context, wl *policies.Workload, grant string, err error) (write bool, answer error) {
	return s.limitRefused(ctx, &limitedCaller{typ: audit.TypeDeny, workload: wl.Name, owner: wl.Owner},
		refusalTag{grant: grant, endpoint: refusalEndpointProxy}, err)
}

// sessionID takes the issuer's session_claim when present, else the token's
// jti, else a hash of iss+sub+iat (SPEC "Concepts"), else of iss+sub+exp;
// the last two with the token's TokenDigest when the Authenticator gives
// one, so each token is its own session: tokens with equal iss, sub and iat
// (SPIRE's JWT-SVIDs of one SPIFFE ID issued in one second: no jti) are
// one instance's no more than any two tokens are.
func (s *Service) sessionID(pol *policies.Policy, id *Identity) string {
	if sc := pol.SessionClaim(id.IssuerName); sc != "" {
		if v, ok := sessionClaimValue(&policies.Issuer{SessionClaim: sc}, id.Claims); ok {
			return SessionID(id.IssuerName, "claim:"+v)
		}
	}
	if id.JTI != "" {
		return SessionID(id.IssuerName, "jti:"+id.JTI)
	}
	var v string
	if id.IssuedAt.IsZero() {
		// Neither jti nor iat: the token's exp (always present) stands in
		// for iat, so the tokens of one sub do not all share one session.
		v = "token-exp:" + id.Iss + "\x00" + id.Sub + "\x00" + strconv.FormatInt(id.Expiry.Unix(), 10)
	} else {
		v = "token:" + id.Iss + "\x00" + id.Sub + "\x00" + strconv.FormatInt(id.IssuedAt.Unix(), 10)
	}
	if id.TokenDigest != ([sha256.Size]byte{}) {
		v += "\x00" + string(id.TokenDigest[:])
	}
	return SessionID(id.IssuerName, v)
}

// policyAndAuthn returns the policy in force and the authenticator built
// from it, read as one pair: a reload between the two reads would otherwise
// pair the authenticator of one policy (its issuers, audiences, algorithms)
// with the workloads and admins of the other. Should the policy change
// while they are read, they are read again; reloads are rare, so this
// loops once at most in practice. (A Deps.Policy that returned a new
// pointer at every call would break the contract; the bound keeps it from
// spinning, and Exchange's Trusts check still guards the issuer names.)
func (s *Service) policyAndAuthn() (*policies.Policy, Authenticator) {
	for i := 0; ; i++ {
		pol := s.d.Policy()
		a := s.d.Authn()
		if s.d.Policy() == pol || i == 99 {
			return pol, a
		}
	}
}

// errPolicyReloaded: the identity was verified by the authenticator of
// another policy than the one read for the request (a reload in between),
// and that policy gives the issuer's name to another issuer. Retrying reads
// one policy again.
func errPolicyReloaded(id *Identity) error {
	return Unavailable("policy_reloaded", time.Second, fmt.Errorf("issuer name %q of iss %q differs in the policy in force: reloaded during the request", id.IssuerName, id.Iss))
}

// sessionClaimValue is the value of the issuer's session claims: each must
// be a non-empty scalar; several are joined by NUL (one claim's value is used
// as is, so session ids stay what they were before several were allowed).
func sessionClaimValue(iss *policies.Issuer, claims map[string]any) (string, bool) {
	if !strings.Contains(iss.SessionClaim, "+") { // the common case, without allocating
		v, ok := policies.ClaimString(claims, iss.SessionClaim)
		return v, ok && v != ""
	}
	paths := iss.SessionClaims()
	vals := make([]string, 0, len(paths))
	for _, p := range paths {
		v, ok := policies.ClaimString(claims, p)
		if !ok || v == "" {
			return "", false
		}
		vals = append(vals, v)
	}
	return strings.Join(vals, "\x00"), true
}

// usedClaims records the claims the workload match relied on plus the
// session claim: enough for an auditor, without copying whole tokens.
func usedClaims(pol *policies.Policy, id *Identity, wl *policies.Workload) map[string]any {
	out := map[string]any{"sub": id.Sub}
	for k := range wl.Match.Claims {
		if v, ok := policies.ClaimValue(id.Claims, k); ok {
			out[k] = v
		}
	}
	for k := range wl.Match.ClaimPatterns {
		if v, ok := policies.ClaimValue(id.Claims, k); ok {
			out[k] = v
		}
	}
	if sc := pol.SessionClaim(id.IssuerName); sc != "" {
		iss := &policies.Issuer{SessionClaim: sc}
		record := func(p string) {
			if v, ok := policies.ClaimValue(id.Claims, p); ok {
				out[p] = v
			}
		}
		if !strings.Contains(iss.SessionClaim, "+") {
			record(iss.SessionClaim) // the common case, without allocating
		} else {
			for _, p := range iss.SessionClaims() {
				record(p)
			}
		}
	}
	return out
}

// recordDeny writes a deny event. A deny that cannot be recorded is logged;
// the request fails either way.
func (s *Service) recordDeny(ctx context.Context, ev *audit.Event, err error) {
	setDenyOutcome(ev, err)
	// Waited for at most AuditTimeout (Audit): on a disk whose writes hang
	// the refusal still goes out, and the event may land later.
	if aerr := s.Audit(ctx, ev); aerr != nil {
		s.d.Logger.LogAttrs(ctx, slog.LevelError, "audit deny event failed",
			slog.String("request_id", ev.RequestID), slog.String("error", aerr.Error()))
	}
}

// setDenyOutcome sets a deny event's outcome from the refusal err.
func setDenyOutcome(ev *audit.Event, err error) {
	e := AsError(err)
	ev.Outcome = &audit.Outcome{Status: StatusOf(e), Error: CodeOf(e), Reason: e.Reason}
	if e.Reason == OrphanClientGone {
		// Nobody was answered: nginx's 499, as Exchange's client_gone
		// deny after a mint.
		ev.Outcome = &audit.Outcome{Status: StatusClientClosedRequest, Reason: OrphanClientGone}
	}
}

// deferDeny is recordDeny for a deny event that queues behind an event of
// the same request still pending (ErrAuditPending): nobody waits for it
// (AuditDeferred); a failure is logged.
func (s *Service) deferDeny(ctx context.Context, ev *audit.Event, err error) {
	setDenyOutcome(ev, err)
	log, requestID, issuanceID := s.d.Logger, ev.RequestID, ev.IssuanceID
	s.AuditDeferred(ctx, ev, func(aerr error) {
		if aerr != nil {
			log.LogAttrs(context.Background(), slog.LevelError, "audit deny event failed",
				slog.String("request_id", requestID), slog.String("issuance_id", issuanceID), slog.String("error", aerr.Error()))
		}
	})
}

// denyBehindPending follows an introspect or admin event ev whose append
// failed, the call refused with e (wrapping the failure): when ev is only pending
// (ErrAuditPending, a write that hangs) it may still land, saying status
// 200, so a deny event of the same request (e's outcome, 503
// audit_unavailable; its source, caller and issuance, no workload) is
// queued behind it, nobody waiting for it, as after a pending issue or use
// event. An event that failed outright is not in the log: nothing follows.
func (s *Service) denyBehindPending(ctx context.Context, ev *audit.Event, e error) {
	if !errors.Is(e, ErrAuditPending) {
		return
	}
	s.deferDeny(ctx, &audit.Event{
		Type: audit.TypeDeny, RequestID: ev.RequestID, IssuanceID: ev.IssuanceID,
		Source: ev.Source, Identity: ev.Identity, Admin: ev.Admin, Credential: ev.Credential,
	}, e)
}

// Audit appends an event through the Service's sink (the deny events of
// refused exchanges, the proxy's events of a proxied call) and waits for it
// at most
// AuditTimeout, as an exchange waits for its issue event: an event not
// durable by then (a disk whose writes hang) is an ErrUnavailable error
// (audit_unavailable) wrapping ErrAuditPending, and may still land. The
// caller going away does not cut the wait short. A BoundedAuditSink bounds
// the wait itself; for another sink the append runs on a goroutine of its
// own.
func (s *Service) Audit(ctx context.Context, ev *audit.Event) error {
	if b, ok := s.d.Audit.(BoundedAuditSink); ok {
		return b.AppendWithin(ev, s.d.AuditTimeout)
	}
	bg := context.WithoutCancel(ctx)
	audited := &auditWait{done: make(chan struct{})}
	go func() {
		audited.err = s.d.Audit.Append(bg, ev)
		close(audited.done)
	}()
	err := s.awaitAudit(audited)
	if errors.Is(err, ErrAuditPending) {
		return Unavailable("audit_unavailable", time.Second, err)
	}
	return err
}

// AuditDeferred writes an event nobody waits for: with a
// DeferredAuditSink it shares a later batch's fsync, otherwise it is
// appended on a goroutine of its own. done (not nil) gets the outcome and
// must not block.
func (s *Service) AuditDeferred(ctx context.Context, ev *audit.Event, done func(error)) {
	if d, ok := s.d.Audit.(DeferredAuditSink); ok {
		d.AppendDeferred(ev, done)
		return
	}
	ctx = context.WithoutCancel(ctx)
	go func() { done(s.d.Audit.Append(ctx, ev)) }()
}

// StatusOf returns the HTTP status for a categorised error.
func StatusOf(e *Error) int {
	switch {
	case errors.Is(e.Kind, ErrInvalidRequest), errors.Is(e.Kind, ErrInvalidTarget):
		return 400
	case errors.Is(e.Kind, ErrUnauthenticated):
		return 401
	case errors.Is(e.Kind, ErrDenied):
		return 403
	case errors.Is(e.Kind, ErrNotFound):
		return 404
	case errors.Is(e.Kind, ErrMethodNotAllowed):
		return 405
	case errors.Is(e.Kind, ErrRateLimited):
		return 429
	default:
		return 503
	}
}

// CodeOf returns the OAuth error code for a categorised error.
func CodeOf(e *Error) string {
	if e.Code != "" {
		return e.Code
	}
	switch {
	case errors.Is(e.Kind, ErrInvalidRequest):
		return "invalid_request"
	case errors.Is(e.Kind, ErrInvalidTarget):
		return "invalid_target"
	case errors.Is(e.Kind, ErrUnauthenticated):
		return "invalid_grant"
	case errors.Is(e.Kind, ErrDenied):
		return "access_denied"
	case errors.Is(e.Kind, ErrNotFound):
		return "not_found"
	case errors.Is(e.Kind, ErrMethodNotAllowed):
		return "method_not_allowed"
	case errors.Is(e.Kind, ErrRateLimited):
		return "slow_down"
	default:
		return "temporarily_unavailable"
	}
}

func auditIdentity(r IdentityRef) *audit.Identity {
	return &audit.Identity{Iss: r.Iss, Sub: r.Sub, JTI: r.JTI}
}

func auditIdentities(rs []IdentityRef) []audit.Identity {
	if len(rs) == 0 {
		return nil
	}
	out := make([]audit.Identity, len(rs))
	for i, r := range rs {
		out[i] = audit.Identity{Iss: r.Iss, Sub: r.Sub, JTI: r.JTI}
	}
	return out
}

func auditSource(s Source) *audit.Source {
	if s.IP == "" && s.UserAgent == "" {
		return nil
	}
	return &audit.Source{IP: s.IP, UserAgent: s.UserAgent}
}

func auditCredential(r CredentialRefs) *audit.Credential {
	c := auditCredentialValue(r)
	return &c
}

func auditCredentialValue(r CredentialRefs) audit.Credential {
	c := audit.Credential{
		Fingerprint: r.Fingerprint, Accessor: r.Accessor, LeaseID: r.LeaseID,
		Username: r.Username, JTI: r.JTI, Serial: r.Serial,
	}
	if !r.ExpiresAt.IsZero() {
		c.ExpiresAt = r.ExpiresAt.UTC().Format(time.RFC3339)
	}
	return c
}

// issueParts is an issue event with the parts it points to, allocated
// together (one allocation instead of five on every exchange).
type issueParts struct {
	audit.Event
	ident audit.Identity
	src   audit.Source
	cred  audit.Credential
	out   audit.Outcome
	// audited is the event's append, which runs alongside the store write.
	audited auditWait
}

// auditWait is an append in progress: err is its result once done is
// closed. A channel of error would take two allocations (its buffer holds
// pointers); a closed chan struct{} takes one.
type auditWait struct {
	done chan struct{}
	err  error
}

// finish records the append's result and wakes its waiter; called once.
func (w *auditWait) finish(err error) {
	w.err = err
	close(w.done)
}

// denyParts is a deny event with its source and identity, allocated
// together.
type denyParts struct {
	audit.Event
	src   audit.Source
	ident audit.Identity
}

// errActorExpired refuses an actor token that leaves a delegated
// credential under a second to live.
func errActorExpired() error {
	return Errorf(ErrUnauthenticated, "actor_token_expired", "actor token rejected: expired", nil)
}

// jwtAudience is the aud the minter signs into a broker JWT of grant (the
// grant passed to Mint), "" for other kinds.
func jwtAudience(g *policies.Grant) string {
	if g.Kind != KindJWT || g.JWT == nil {
		return ""
	}
	return g.JWT.Audience
}

// mayAct reports whether holder's token permits other as the other party
// of a delegated exchange (RFC 8693 §4.4; keytrail checks the subject
// token's may_act against the actor, the actor token's against the
// subject): true when it has no may_act claim; else may_act must be a JSON
// object naming at least one claim, every member of which other has: iss
// (when absent, holder's own issuer) and sub compared with other's
// verified iss and sub, which must be strings; any other member equal to
// other's claim of that name (both decoded by the same verifier). A
// may_act of another shape permits no party.
func mayAct(holder, other *Identity) bool {
	v, ok := holder.Claims["may_act"]
	if !ok {
		return true
	}
	return mayActPermits(v, holder.Iss, other)
}

// mayActPermits reports whether the may_act value v, of a token of issuer
// holderIss, permits other (see mayAct).
func mayActPermits(v any, holderIss string, other *Identity) bool {
	m, ok := v.(map[string]any)
	if !ok || len(m) == 0 {
		return false
	}
	iss := holderIss
	for k, want := range m {
		switch k {
		case "iss":
			s, ok := want.(string)
			if !ok {
				return false
			}
			iss = s
		case "sub":
			if s, ok := want.(string); !ok || s != other.Sub {
				return false
			}
		default:
			got, ok := other.Claims[k]
			if !ok || !reflect.DeepEqual(got, want) {
				return false
			}
		}
	}
	return iss == other.Iss
}

// subjectMayActs is the may_act restrictions a credential minted from the
// subject token id inherits (Issuance.MayAct): id's own may_act claim
// (ownMayAct), then those of subjectIs, the issuance of a broker JWT
// subject (nil: none).
func subjectMayActs(id *Identity, subjectIs *Issuance) []json.RawMessage {
	out := ownMayAct(nil, id)
	if subjectIs != nil {
		out = appendKept(out, subjectIs.MayAct)
	}
	return out
}

// appendKept appends to out each may_act of kept that out does not hold
// already (the same JSON: ownMayAct's encoding, kept as written), so that
// a restriction inherited along a chain of broker JWTs is kept once, not
// once more per hop (every one must permit: a copy adds nothing).
func appendKept(out, kept []json.RawMessage) []json.RawMessage {
	for _, raw := range kept {
		if !slices.ContainsFunc(out, func(have json.RawMessage) bool { return bytes.Equal(have, raw) }) {
			out = append(out, raw)
		}
	}
	return out
}

// ownMayAct appends id's may_act claim, if it has one, to out as JSON: an
// object without iss given id's iss (the issuer its sub is of). A claim
// that does not encode (it came from JSON: never) is kept as null, which
// permits no party.
func ownMayAct(out []json.RawMessage, id *Identity) []json.RawMessage {
	v, ok := id.Claims["may_act"]
	if !ok {
		return out
	}
	if m, ok := v.(map[string]any); ok && len(m) > 0 {
		if _, ok := m["iss"]; !ok {
			c := make(map[string]any, len(m)+1)
			for k, x := range m {
				c[k] = x
			}
			c["iss"] = id.Iss
			v = c
		}
	}
	raw, err := json.Marshal(v)
	if err != nil {
		raw = json.RawMessage("null")
	}
	return append(out, raw)
}

// keptMayActsPermit reports whether every may_act kept on a broker JWT's
// issuance (Issuance.MayAct) permits other, as mayAct would had the JWT
// carried it; one that does not decode permits no party.
func keptMayActsPermit(kept []json.RawMessage, other *Identity) bool {
	for _, raw := range kept {
		// As authn decodes claims: numbers as json.Number.
		d := json.NewDecoder(bytes.NewReader(raw))
		d.UseNumber()
		var v any
		if err := d.Decode(&v); err != nil {
			return false
		}
		// iss is filled in when kept: the empty holder issuer matches
		// no verified token's.
		if !mayActPermits(v, "", other) {
			return false
		}
	}
	return true
}
