package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/policies"
)

// Defaults of Options.
const (
	DefaultMaxRequestBytes     = 10 << 20
	DefaultMaxResponseBytes    = 50 << 20
	DefaultMaxIdleConnsPerHost = 64
)

// Timeouts bound one proxied request. Zero fields take the defaults.
type Timeouts struct {
	Dial           time.Duration // TCP connect to the upstream (default 5s)
	TLSHandshake   time.Duration // default 5s
	ResponseHeader time.Duration // from request sent to response headers (default 30s)
	Overall        time.Duration // the whole exchange, body included (default 60s)
	IdleConn       time.Duration // idle upstream connections are closed after (default 90s)
}

func (t *Timeouts) defaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&t.Dial, 5*time.Second)
	def(&t.TLSHandshake, 5*time.Second)
	def(&t.ResponseHeader, 30*time.Second)
	def(&t.Overall, 60*time.Second)
	def(&t.IdleConn, 90*time.Second)
}

// Options configure New.
type Options struct {
	Service *broker.Service     // required
	Secrets broker.SecretSource // required (adapters/vault.KVSecrets)
	Logger  *slog.Logger        // default: discard
	Now     func() time.Time    // default: Service.Now
	// PublicURL is the broker's public base URL; its host is a Host header
	// value the proxy answers on.
	PublicURL string
	// Hosts are more Host header values the proxy answers on ("host" matches
	// any port, "host:port" that port only). When PublicURL and Hosts are
	// both empty the Host header is not checked (it never changes the
	// destination either way).
	Hosts               []string
	MaxRequestBytes     int64 // default DefaultMaxRequestBytes
	MaxResponseBytes    int64 // default DefaultMaxResponseBytes
	Timeouts            Timeouts
	MaxIdleConnsPerHost int // default DefaultMaxIdleConnsPerHost
	// Registerer receives the proxy metrics; nil leaves them unregistered.
	Registerer prometheus.Registerer
	// Resolver resolves upstream names (default net.DefaultResolver).
	Resolver *net.Resolver
	// StoreTimeout bounds one store call (default 2s); SecretTimeout one
	// secret read (default 5s). A lookup answered from memory (the
	// RevocationCache with FastReads, a broker.CachedSecretSource) makes
	// no call and needs neither.
	StoreTimeout  time.Duration
	SecretTimeout time.Duration
}

// Proxy is the credential-injecting reverse proxy. See the package
// documentation for what it checks and promises.
type Proxy struct {
	o          Options
	log        *slog.Logger
	now        func() time.Time
	hosts      []string
	metrics    *Metrics
	bufs       *bufferPool
	shared     *sharedTracker
	errLog     *log.Logger // ReverseProxy's own messages (no secrets: they name no request data)
	redactBufs *sync.Pool
	forms      formsCache // the injected secrets' forms, for the response scan
	// cachedSecrets is o.Secrets when it answers from memory too.
	cachedSecrets broker.CachedSecretSource
	decoders      decoderPools
	inFlight      inFlight // requests gone upstream, cut when revoked (cutRevoked)
	views         policyViews
	rp            *httputil.ReverseProxy // shared by every request (see callOf)
	// dropEarlyFlush is a seam for tests (see responseWriter.dropEarlyFlush).
	dropEarlyFlush atomic.Bool

	mu         sync.Mutex
	transports map[string]*grantTransport // by grant name
}

// New validates o and returns a Proxy.
func New(o Options) (*Proxy, error) {
	var errs []error
	if o.Service == nil {
		errs = append(errs, errors.New("proxy: Options.Service is required"))
	}
	if o.Secrets == nil {
		errs = append(errs, errors.New("proxy: Options.Secrets is required"))
	}
	if o.MaxRequestBytes < 0 || o.MaxResponseBytes < 0 || o.MaxIdleConnsPerHost < 0 {
		errs = append(errs, errors.New("proxy: size limits must not be negative"))
	}
	var hosts []string
	if o.PublicURL != "" {
		u, err := url.Parse(o.PublicURL)
		if err != nil || u.Host == "" {
			errs = append(errs, errors.New("proxy: Options.PublicURL must be an absolute URL"))
		} else {
			hosts = append(hosts, strings.ToLower(u.Host))
		}
	}
	for _, h := range o.Hosts {
		if h == "" || strings.ContainsAny(h, "/?#@ ") {
			errs = append(errs, fmt.Errorf("proxy: Options.Hosts: %q is not a host or host:port", h))
			continue
		}
		hosts = append(hosts, strings.ToLower(h))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Now == nil {
		o.Now = o.Service.Now
	}
	if o.MaxRequestBytes == 0 {
		o.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if o.MaxResponseBytes == 0 {
		o.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if o.MaxIdleConnsPerHost == 0 {
		o.MaxIdleConnsPerHost = DefaultMaxIdleConnsPerHost
	}
	if o.Resolver == nil {
		o.Resolver = net.DefaultResolver
	}
	if o.StoreTimeout <= 0 {
		o.StoreTimeout = 2 * time.Second
	}
	if o.SecretTimeout <= 0 {
		o.SecretTimeout = 5 * time.Second
	}
	o.Timeouts.defaults()
	m, err := newMetrics(o.Registerer)
	if err != nil {
		return nil, fmt.Errorf("proxy: metrics: %w", err)
	}
	p := &Proxy{
		o: o, log: o.Logger, now: o.Now, hosts: hosts, metrics: m,
		bufs: newBufferPool(), shared: newSharedTracker(), redactBufs: newRedactBufferPool(),
		errLog:     slog.NewLogLogger(o.Logger.Handler(), slog.LevelWarn),
		transports: map[string]*grantTransport{},
	}
	p.cachedSecrets, _ = o.Secrets.(broker.CachedSecretSource)
	p.rp = p.newReverseProxy()
	o.Service.OnKnownRevoked(p.cutRevoked)
	return p, nil
}

// Metrics returns the proxy's metrics.
func (p *Proxy) Metrics() *Metrics { return p.metrics }

// Register mounts the proxy at ANY /v1/proxy/{grant}/{path...}. Its
// signature is that of httpapi.Options.Extra.
func (p *Proxy) Register(mux *http.ServeMux, api *httpapi.Server) {
	mux.Handle(pathPrefix+"{grant}/{path...}", &handler{p: p, api: api})
}

// handler serves proxy requests with the error renderer and source
// extraction of one httpapi.Server.
type handler struct {
	p   *Proxy
	api *httpapi.Server
}

// call is one proxied request as it is checked and forwarded.
type call struct {
	h     *handler
	r     *http.Request
	start time.Time
	src   broker.Source
	fp    string
	is    *broker.Issuance
	grant *policies.Grant  // shared with other requests (policyView): read only
	pol   *policies.Policy // the policy grant is of
	// injectHeader is the grant's Inject.Header in canonical form (made
	// once per policy: viewGrant).
	injectHeader string
	label        string // metrics grant label
	status       int    // returned to the caller
	// unaudited: a 429 past the workload's rate counted by its summary
	// (Service.AuditProxyRateLimited), no deny event of its own.
	unaudited bool

	tail     string // escaped path after /v1/proxy/{grant}, as sent
	path     string // tail decoded (what the grant's patterns match)
	rawQuery string

	// The response body's readers: rc caps the bytes relayed (decoded
	// ones when the upstream compressed the body), wire the bytes read from
	// the upstream and dec decodes them (both nil when the body is not
	// encoded). Fields rather than variables the ReverseProxy hooks
	// capture, which would each be allocated.
	rc, wire *capReader
	dec      *decoder
	// guard screens a body that is gzip data without Content-Encoding.
	guard gzipGuard

	// rt is the grant's Transport, which RoundTrip sends through unless
	// the credential was revoked meanwhile (notSent).
	rt      http.RoundTripper
	notSent bool

	// While the request is upstream it is listed in Proxy.inFlight (prev,
	// next); cutRevoked sets cut (cutIssuance, cutBlock) and calls cancel,
	// which ends its upstream context.
	prev, next *call
	cancel     context.CancelFunc
	cut        atomic.Uint32

	// res is what forward's hooks learn for the use_result event.
	res struct {
		errCode, errReason string
		upstreamStatus     int // 0 when the upstream did not answer
	}

	// What forward hands the shared ReverseProxy's hooks (see callOf):
	// the request's context, the secret's forms, the upstream target and
	// the use id.
	ctx   callCtx
	forms *formSet
	tgt   upstreamTarget
	useID string

	// upstreamIDs are the upstream's own request ids, by the index of
	// their header in upstreamRequestIDHeaders (see upstreamRequestIDs).
	upstreamIDs [len(upstreamRequestIDHeaders)]string

	// What forward would otherwise allocate one by one: the response
	// writer, the body's readers (rc, the redacting reader) and the
	// values of the headers the broker sets (see headerValue).
	rwv      responseWriter
	rcv      capReader
	redact   redactReader
	hdrSlots [hdrSlotCount]string
	// The use and use_result events (not reused: a sink may keep them).
	useEv, resultEv callEvent
}

// The headers the broker sets on a forwarded request and its response, by
// their value's slot in call.hdrSlots.
const (
	hdrInject = iota
	hdrRequestID
	hdrIssuance
	hdrUse
	hdrSlotCount
)

// headerValue returns a one-value header slice holding v, in the call's
// slot i rather than a new allocation (what Header.Set makes). Its
// capacity is its length: an append to it copies it out first.
func (c *call) headerValue(i int, v string) []string {
	c.hdrSlots[i] = v
	return c.hdrSlots[i : i+1 : i+1]
}

// identity is the Accept-Encoding the broker sends: never modified (see
// headerValue for why an append is safe).
var identity = []string{"identity"}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	c := &call{h: h, r: r, start: time.Now(), src: h.api.Source(r)}
	defer func() { h.p.metrics.observe(c.label, c.status, time.Since(c.start)) }()
	if err := c.check(); err != nil {
		c.fail(w, err)
		return
	}
	c.forward(w)
}

// Stable reasons of refused requests.
func invalidToken(reason, safe string) error {
	return &broker.Error{Kind: broker.ErrUnauthenticated, Code: broker.CodeInvalidToken, Reason: reason, Safe: safe}
}

func badRequest(reason string) error {
	return broker.Errorf(broker.ErrInvalidRequest, reason, "the request cannot be proxied ("+strings.ReplaceAll(reason, "_", " ")+")", nil)
}

func denied(reason, safe string) error {
	return broker.Errorf(broker.ErrDenied, reason, safe, nil)
}

// The refusals of a request whose credential was revoked, or its workload
// blocked, after its checks and before it went upstream: those of the
// checks (see call.RoundTrip).
var (
	errRevokedBeforeSend = denied("credential_revoked", "the credential has been revoked")
	errBlockedBeforeSend = denied("workload_blocked", "the workload is blocked")
)

// tooLarge is rendered with status 413.
type tooLarge struct{ error }

// check runs every check of the package documentation, steps 1 to 7.
func (c *call) check() error {
	p, r := c.h.p, c.r
	if r.Method == http.MethodConnect {
		return badRequest("connect_refused")
	}
	// SPEC: the credential comes as Authorization or Proxy-Authorization.
	// A client whose SDK sets an Authorization of its own (a placeholder
	// API key; the header is dropped and the secret injected anyway) sends
	// the credential as Proxy-Authorization: Authorization's Bearer token
	// is taken only when it is a broker credential or there is no other.
	tok := httpapi.BearerToken(r, "Authorization")
	if !strings.HasPrefix(tok, TokenPrefix) {
		if pa := httpapi.BearerToken(r, "Proxy-Authorization"); pa != "" {
			tok = pa
		}
	}
	if tok == "" {
		// No credential at all: the challenge names no error (RFC 6750 §3.1).
		return &broker.Error{Kind: broker.ErrUnauthenticated, Code: broker.CodeInvalidToken, NoToken: true,
			Reason: "missing_credential", Safe: "a proxy credential is required as a Bearer token"}
	}
	if !strings.HasPrefix(tok, TokenPrefix) {
		return invalidToken("unknown_credential", "the proxy credential is not valid")
	}
	c.fp = broker.Fingerprint(tok)
	svc := p.o.Service
	// The lookup and the block check below are answered from memory by
	// the revocation cache (FastReads) on the hot path; only a Store call
	// gets the StoreTimeout deadline (Service.FindIssuanceWithin).
	is, err := svc.FindIssuanceWithin(r.Context(), broker.RefFingerprint, c.fp, p.o.StoreTimeout)
	switch {
	case errors.Is(err, broker.ErrNotFound):
		return invalidToken("unknown_credential", "the proxy credential is not valid")
	case err != nil:
		return broker.Unavailable("store_unavailable", time.Second, err)
	}
	c.is = is

	if is.Kind != broker.KindProxy || is.Grant != r.PathValue("grant") {
		return denied("wrong_grant", "the credential is not for this grant")
	}
	if !p.now().Before(is.ExpiresAt) {
		return invalidToken("credential_expired", "the proxy credential has expired")
	}
	if !is.RevokedAt.IsZero() {
		return denied("credential_revoked", "the credential has been revoked")
	}
	_, err = svc.GetBlockWithin(r.Context(), is.Workload, p.o.StoreTimeout)
	switch {
	case err == nil:
		return denied("workload_blocked", "the workload is blocked")
	case !errors.Is(err, broker.ErrNotFound):
		return broker.Unavailable("store_unavailable", time.Second, err)
	}
	pol := svc.Policy()
	view := p.viewOf(pol) // the policy's grants and workloads, not copied per request
	vg, ok := view.grant(is.Grant)
	if !ok || vg.Kind != broker.KindProxy || vg.Proxy == nil {
		return denied("grant_removed", "the grant no longer exists")
	}
	g := &vg.Grant
	c.grant, c.pol, c.injectHeader, c.label = g, pol, vg.injectHeader, g.Name
	wl, ok := view.workload(is.Workload)
	if !ok || !pol.Allowed(wl, g.Name) {
		return denied("grant_not_allowed", "the workload is no longer allowed this grant")
	}

	// The request must be exactly what a well-behaved client sends.
	if r.URL.IsAbs() || !strings.HasPrefix(r.RequestURI, "/") {
		return badRequest("absolute_target")
	}
	if !p.hostAllowed(r.Host) {
		return badRequest("bad_host")
	}
	// The names as net/http keys them (HTTP2-Settings as Http2-Settings),
	// looked up as they are: Header.Get would make each canonical again on
	// every request.
	if headerGet(r.Header, "Upgrade") != "" || headerGet(r.Header, "Http2-Settings") != "" || headerHasToken(r.Header, "Connection", "upgrade") {
		return badRequest("upgrade_refused")
	}
	grantSeg, tail, rawQuery, why := splitTarget(r.RequestURI)
	if why != "" {
		return badRequest(why)
	}
	if gs, err := url.PathUnescape(grantSeg); err != nil || gs != is.Grant {
		return badRequest("bad_path")
	}
	path, why := normalizePath(tail)
	if why != "" {
		return badRequest(why)
	}
	c.tail, c.path, c.rawQuery = tail, path, rawQuery
	if !g.Proxy.AllowsMethod(r.Method) {
		return denied("method_not_allowed", "the grant does not allow this method")
	}
	if !g.Proxy.AllowsPath(path) {
		return denied("path_not_allowed", "the grant does not allow this path")
	}
	if r.ContentLength > p.o.MaxRequestBytes {
		return tooLarge{badRequest("body_too_large")}
	}
	// Last, as for a token exchange (after the grant and block checks): the
	// rate meters what goes on to the secret read, the use event and the
	// upstream; a request refused above takes nothing from it. Its 429s
	// are audited as the workload's exchanges' are: past
	// RefusalLimits.PerIdentity per span, counted by the workload's
	// summary instead of a deny each (AuditProxyRateLimited).
	if err := svc.AllowProxy(wl); err != nil {
		write, answer := svc.AuditProxyRateLimited(r.Context(), wl, is.Grant, err)
		c.unaudited = !write
		return answer
	}
	return nil
}

// hostAllowed reports whether the Host header names the broker.
func (p *Proxy) hostAllowed(host string) bool {
	if len(p.hosts) == 0 {
		return true
	}
	host = strings.ToLower(host)
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	for _, a := range p.hosts {
		if host == a {
			return true
		}
		if _, _, err := net.SplitHostPort(a); err != nil && name == strings.Trim(a, "[]") {
			return true
		}
	}
	return false
}

// headerGet is h.Get(name) for a name in canonical form
// (http.CanonicalHeaderKey), which it does not make canonical again.
func headerGet(h http.Header, name string) string {
	if vs := h[name]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

// headerHasToken reports whether a comma-separated header lists token;
// name is in canonical form (as for headerGet).
func headerHasToken(h http.Header, name, token string) bool {
	for _, v := range h[name] {
		for more := true; more; {
			var t string
			t, v, more = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

// reasonAuditUnavailable is the reason of a request refused because its use
// event failed or was not durable in time (the only refusal for an audit
// write: a deny's own failure is logged).
const reasonAuditUnavailable = "audit_unavailable"

// fail renders a refused request and, when the credential was identified,
// records a deny event naming its issuance (and its use, once forward has
// given it a use id), unless it is a 429 counted by its workload's summary
// (unaudited).
func (c *call) fail(w http.ResponseWriter, err error) {
	if c.is == nil {
		// Missing or unknown credentials are refusals too: a deny event
		// (source and grant, never the presented value) lets the security
		// team see credential spraying against the proxy. They come before
		// the caller authenticated: past its source's RefusalLimits one
		// is answered 429 without an event of its own, counted by the
		// source's summary event.
		err = c.h.p.o.Service.RefuseUnauthenticated(c.r.Context(), httpapi.RequestID(c.r), c.src, c.r.PathValue("grant"), err)
	}
	var tl tooLarge
	status := broker.StatusOf(broker.AsError(err))
	if errors.As(err, &tl) {
		err, status = tl.error, http.StatusRequestEntityTooLarge
	}
	c.status = status
	c.h.api.Metrics().ObserveRefusal("proxy", err)
	if c.is != nil && !c.unaudited {
		e := broker.AsError(err)
		ev := c.event(audit.TypeDeny)
		// A refusal after the use event (pending, or the request revoked
		// before it was sent) names the use it answers: nothing was
		// forwarded for it, whenever a late use event lands. A use event
		// that failed outright is in no log: forward clears c.useID, and
		// the deny names no use.
		ev.UseID = c.useID
		ev.setOutcome(audit.Outcome{Status: status, Error: broker.CodeOf(e), Reason: e.Reason})
		if errors.Is(err, broker.ErrAuditPending) || e.Reason == reasonAuditUnavailable {
			// Refused because the use event is still pending (a write
			// that hangs) or failed: the deny is queued behind it, nobody
			// waits for it, as Exchange's after a pending or failed issue
			// event. The request waited for its use event already, at
			// most AuditTimeout: not a second time for its deny.
			log, ctx, requestID, issuanceID := c.h.p.log, context.WithoutCancel(c.r.Context()), ev.RequestID, c.is.ID
			c.h.p.o.Service.AuditDeferred(ctx, &ev.Event, func(aerr error) {
				if aerr != nil {
					log.LogAttrs(ctx, slog.LevelError, "audit proxy deny event failed",
						slog.String("request_id", requestID), slog.String("issuance_id", issuanceID), slog.String("error", aerr.Error()))
				}
			})
		} else if aerr := c.h.p.o.Service.Audit(c.r.Context(), &ev.Event); aerr != nil {
			c.h.p.log.LogAttrs(c.r.Context(), slog.LevelError, "audit proxy deny event failed",
				slog.String("request_id", ev.RequestID), slog.String("issuance_id", c.is.ID), slog.String("error", aerr.Error()))
		}
	}
	c.h.api.WriteErrorStatus(w, c.r, err, status)
}

// callEvent is an audit event about a call with the parts it may point to,
// allocated together: two events per proxied request (use, use_result)
// would otherwise take five allocations each.
type callEvent struct {
	audit.Event
	cred audit.Credential
	src  audit.Source
	up   audit.Upstream
	out  audit.Outcome
}

// setUpstream sets the event's Upstream to u.
func (e *callEvent) setUpstream(u audit.Upstream) {
	e.up = u
	e.Upstream = &e.up
}

// setOutcome sets the event's Outcome to o.
func (e *callEvent) setOutcome(o audit.Outcome) {
	e.out = o
	e.Outcome = &e.out
}

// event returns an audit event about this call's issuance.
func (c *call) event(typ string) *callEvent {
	e := new(callEvent)
	c.setEvent(e, typ)
	return e
}

// setEvent makes *e, zero, an audit event about this call's issuance (for
// the events held in the call: use and use_result).
func (c *call) setEvent(e *callEvent, typ string) {
	is := c.is
	e.cred = audit.Credential{Fingerprint: c.fp}
	e.Event = audit.Event{
		Type: typ, RequestID: httpapi.RequestID(c.r),
		IssuanceID: is.ID, Workload: is.Workload, Owner: is.Owner, SessionID: is.SessionID,
		Grant: is.Grant, Kind: is.Kind, Credential: &e.cred,
	}
	if len(is.Act) > 0 {
		// A delegated credential: the party it was issued to act for, as
		// its issuance recorded it (docs/SPEC-ADDITIONS.md "Delegation").
		// Only these allocate.
		e.Act = make([]audit.Identity, len(is.Act))
		for i, a := range is.Act {
			e.Act[i] = audit.Identity{Iss: a.Iss, Sub: a.Sub, JTI: a.JTI}
		}
	}
	if c.src.IP != "" || c.src.UserAgent != "" {
		e.src = audit.Source{IP: c.src.IP, UserAgent: c.src.UserAgent}
		e.Source = &e.src
	}
}

// sharedUse records a shared_use_suspected event when the credential comes
// from a new source address. Best effort: the request goes on either way.
// Nobody waits for it: the use event written next is the one the request
// waits for (at most AuditTimeout), so a disk whose writes hang holds the
// request one AuditTimeout, not one per event. The audit file seals a
// deferred event with the next append's batch: it is durable by the time
// the use event is, in the same fsync.
func (c *call) sharedUse() {
	p := c.h.p
	first, n, suspect := p.shared.observe(c.is, c.src.IP, p.now())
	if !suspect {
		return
	}
	ev := c.event(audit.TypeSharedUse)
	ev.Reason = "new_source_address"
	ev.Details = map[string]any{"first_address": first, "address": c.src.IP, "addresses_seen": n}
	ctx := context.WithoutCancel(c.r.Context())
	is, ip, label, requestID := c.is, c.src.IP, c.label, ev.RequestID
	p.o.Service.AuditDeferred(ctx, &ev.Event, func(err error) {
		if err != nil {
			p.shared.forget(is.ID, ip)
			p.log.LogAttrs(ctx, slog.LevelError, "audit shared_use_suspected event failed",
				slog.String("request_id", requestID), slog.String("issuance_id", is.ID), slog.String("error", err.Error()))
			return
		}
		p.metrics.SharedUse.WithLabelValues(label).Inc()
		p.log.LogAttrs(ctx, slog.LevelWarn, "proxy credential used from a new address",
			slog.String("request_id", requestID), slog.String("issuance_id", is.ID), slog.String("workload", is.Workload),
			slog.String("first_address", first), slog.String("address", ip))
	})
}

// upstreamTarget is where one request goes.
type upstreamTarget struct {
	u        *url.URL // scheme and host of the upstream
	path     string   // decoded upstream path (base + tail)
	rawPath  string   // escaped upstream path, as the caller escaped the tail
	rawQuery string   // the query to send (injected parameter included)
	audit    string   // path with parameter names only
}

// target joins the upstream base URL and the checked tail.
func (c *call) target(up *url.URL, inject policies.ProxyInject, secret string) upstreamTarget {
	base := strings.TrimSuffix(up.Path, "/")
	baseRaw := strings.TrimSuffix(up.EscapedPath(), "/")
	t := upstreamTarget{u: up, path: base + c.path, rawPath: baseRaw + c.tail}
	t.audit = auditPath(t.rawPath, c.rawQuery, inject.Query)
	t.rawQuery = c.rawQuery
	if inject.Query != "" {
		t.rawQuery = injectQuery(c.rawQuery, inject.Query, secret)
	}
	return t
}

// injectQuery drops every caller-sent value of param and appends the secret.
func injectQuery(rawQuery, param, secret string) string {
	var parts []string
	for _, kv := range strings.Split(rawQuery, "&") {
		if kv == "" {
			continue
		}
		k, _, _ := strings.Cut(kv, "=")
		if queryKeyIs(k, param) {
			continue
		}
		parts = append(parts, kv)
	}
	parts = append(parts, url.QueryEscape(param)+"="+url.QueryEscape(secret))
	return strings.Join(parts, "&")
}

// queryKeyIs reports whether the escaped key k names param (case-insensitive;
// an undecodable key counts as a match and is dropped).
func queryKeyIs(k, param string) bool {
	u, err := url.QueryUnescape(k)
	return err != nil || strings.EqualFold(u, param)
}

// strippedRequestHeaders are caller headers that never go upstream (besides
// the hop-by-hop headers, X-Forwarded-* and Forwarded, which ReverseProxy
// removes itself, X-Keytrail-*, and every header whose name contains an
// underscore: see dropRequestHeader). The method and URL overrides make
// common upstream frameworks (Express method-override, Rails, Laravel,
// Symfony, ASP.NET, IIS URL Rewrite, Zend) serve another method or path than
// the one the grant allowed. Range, If-Range and the legacy Request-Range
// (still honoured by Apache httpd) would let a caller fetch an echoed secret
// in pieces (over several requests, or in the parts of one
// multipart/byteranges response) that the response scan cannot recognise.
// Written in canonical form (http.CanonicalHeaderKey), as net/http keys a
// request's headers: a header is stripped when its key is one of these
// names as it is (TestStrippedRequestHeadersAreCanonical).
var strippedRequestHeaders = []string{"Authorization", "Proxy-Authorization", "Cookie", "X-Request-Id", "Forwarded", "X-Real-Ip",
	"X-Http-Method-Override", "X-Http-Method", "X-Method-Override", "X-Original-Url", "X-Rewrite-Url",
	"Range", "If-Range", "Request-Range"}

// strippedRequestHeader is strippedRequestHeaders as a set, for rewrite's
// pass over the headers sent.
var strippedRequestHeader = func() map[string]bool {
	m := make(map[string]bool, len(strippedRequestHeaders))
	for _, name := range strippedRequestHeaders {
		m[name] = true
	}
	return m
}()

// dropRequestHeader reports whether a caller header never goes upstream
// because of its name: X-Keytrail-* and X-Forwarded-*, and any name with an
// underscore. CGI, WSGI and Rack upstreams map "-" and "_" both to "_"
// (X_Request_Id reads as X-Request-Id), so a look-alike could spoof the
// correlation headers the broker sets or stand in for one it strips; like
// nginx (underscores_in_headers off) the broker drops them all rather than
// keep a list of look-alikes in step with every header it strips or injects.
func dropRequestHeader(name string) bool {
	return strings.HasPrefix(name, "X-Keytrail-") || strings.HasPrefix(name, "X-Forwarded-") || strings.Contains(name, "_")
}

// forward reads the secret, makes the use durable and proxies the request
// (steps 8 to 11 of the package documentation).
func (c *call) forward(w http.ResponseWriter) {
	p, r, g := c.h.p, c.r, c.grant
	gt, err := p.transport(c.pol, g) // the grant's policy's, not one a reload since put in force
	if err != nil {
		c.fail(w, broker.Unavailable("upstream_config", 30*time.Second, err))
		return
	}
	secret, err := p.secret(r.Context(), g.Proxy.Secret)
	if err != nil {
		c.fail(w, broker.Unavailable("secret_unavailable", 5*time.Second, err))
		return
	}
	if !sendableSecret(secret) {
		// Checked before the use event: the Transport would refuse the
		// request (a 502 after a use event claiming it went upstream).
		c.fail(w, broker.Unavailable("secret_unusable", 30*time.Second, fmt.Errorf(
			"grant %s: the secret at %s field %q contains a control character (other than a tab), which no HTTP header can carry",
			g.Name, g.Proxy.Secret.VaultKV, g.Proxy.Secret.Field)))
		return
	}
	forms := p.forms.get(g.Proxy.Secret, secret)
	tgt := c.target(gt.upstream, g.Proxy.Inject, secret)

	c.sharedUse()

	useID := broker.NewID(broker.PrefixUse)
	c.useID = useID // from here a refusal's deny names the use (fail)
	use := &c.useEv
	c.setEvent(use, audit.TypeUse)
	use.UseID = useID
	use.setUpstream(audit.Upstream{Method: r.Method, Host: gt.upstream.Host, Path: tgt.audit})
	if err := p.o.Service.Audit(r.Context(), &use.Event); err != nil {
		if !errors.Is(err, broker.ErrAuditPending) {
			// Failed outright: not written, and never will be. Its deny
			// names no use (fail).
			c.useID = ""
		}
		c.fail(w, broker.Unavailable(reasonAuditUnavailable, time.Second, err))
		return
	}

	ctx, cancelAll := context.WithTimeout(r.Context(), p.o.Timeouts.Overall)
	defer cancelAll()
	// Listed before RoundTrip asks the revocation state: a revocation
	// learned after that question cuts the request (cutRevoked), through
	// ctx, which every context of the upstream exchange derives from.
	c.cancel = cancelAll
	p.inFlight.add(c)
	defer p.inFlight.remove(c)
	// The shared ReverseProxy's hooks find the call through the request's
	// context (callOf).
	c.ctx = callCtx{Context: ctx, c: c}
	out := r.WithContext(&c.ctx)
	if r.Body != nil && r.Body != http.NoBody {
		out.Body = http.MaxBytesReader(w, r.Body, p.o.MaxRequestBytes)
	}
	rw := &c.rwv
	rw.init(w)
	rw.dropEarlyFlush = p.dropEarlyFlush.Load()
	// What the hooks learn, for the use_result event.
	st := &c.res
	c.rt = gt.rt
	c.forms, c.tgt, c.useID = forms, tgt, useID

	defer func() {
		// ReverseProxy aborts the connection (panic http.ErrAbortHandler)
		// when the body copy fails after the status went out, e.g. a
		// streamed response over the cap: record the result, then let the
		// server abort.
		rec := recover()
		if rec == nil && st.errReason == "" && c.cut.Load() != 0 {
			// Cut (cutRevoked), yet the body ended without an error: the
			// TLS close_notify the cut sends can make the upstream end its
			// response cleanly. The caller must not take it as complete.
			rec = http.ErrAbortHandler
		}
		if rec == http.ErrAbortHandler && rw.reset() {
			// The body failed at its first read, before anything of the
			// response was sent (ReverseProxy flushes a streamed
			// response's headers from a timer, which can come later): the
			// caller gets the error answer of a failure before the body.
			// A connection cut with nothing sent is what an HTTP client
			// on a reused keep-alive connection takes for one the server
			// closed while idle: it would send a GET again, upstream too.
			c.errorHandler(c.bodyError())
			rec = nil
		}
		status := rw.status
		if rec != nil {
			st.errCode = "aborted"
			switch {
			case (c.rc != nil && c.rc.hit) || (c.wire != nil && c.wire.hit):
				st.errReason = "response_too_large"
			case c.guard.refused != "":
				st.errReason = c.guard.refused
			case c.dec != nil && c.dec.bad:
				st.errReason = "response_undecodable"
			case c.cut.Load() != 0:
				st.errReason = reasonRevokedInFlight
			case st.errReason == "":
				st.errReason = "copy_failed"
			}
		}
		c.status = status
		if status == 0 && rec != nil {
			c.status = http.StatusBadGateway
		}
		if st.errReason == reasonRevokedInFlight {
			p.log.LogAttrs(r.Context(), slog.LevelInfo, "proxied request cut: its credential was revoked or its workload blocked",
				slog.String("request_id", httpapi.RequestID(r)), slog.String("use_id", useID), slog.String("issuance_id", c.is.ID))
		}
		if rec == nil && status != 0 {
			// Send the response before the use_result event is made
			// durable: net/http would otherwise hold a small body in its
			// buffer until the handler returns, and every proxied call
			// would wait for a second fsync.
			rw.flush()
		}
		c.result(use, rw, st.upstreamStatus, st.errCode, st.errReason)
		if rec != nil {
			panic(rec)
		}
	}()
	p.rp.ServeHTTP(rw, out)
}

// callKey is the context key under which a request forward hands to the
// shared ReverseProxy holds its call.
type callKey struct{}

// callCtx is the context of a request forward hands to the shared
// ReverseProxy: the forward's context (which cutRevoked cancels) that also
// holds the call under callKey, as context.WithValue would make it. It is
// held in the call, which saves WithValue's allocation; every other
// question goes to the forward's context (Done, Err, Deadline and the
// context package's own look-up of its parent's cancellation, so contexts
// derived from it are cancelled with it, as from a WithValue context).
type callCtx struct {
	context.Context
	c *call
}

func (x *callCtx) Value(key any) any {
	if key == (callKey{}) {
		return x.c
	}
	return x.Context.Value(key)
}

// callOf returns the call of a request forward handed to the shared
// ReverseProxy (its inbound or outbound request, or their context).
func callOf(ctx context.Context) *call {
	return ctx.Value(callKey{}).(*call)
}

// newReverseProxy returns the one ReverseProxy every proxied request goes
// through: its hooks and Transport find the request's call through its
// context (callOf), so no ReverseProxy or hook closure is made per
// request.
func (p *Proxy) newReverseProxy() *httputil.ReverseProxy {
	return &httputil.ReverseProxy{
		Transport:  callTransport{}, // the call's grant Transport, after the revocation state is asked again
		BufferPool: p.bufs,
		ErrorLog:   p.errLog,
		Rewrite:    func(pr *httputil.ProxyRequest) { callOf(pr.In.Context()).rewrite(pr) },
		ModifyResponse: func(res *http.Response) error {
			return callOf(res.Request.Context()).modifyResponse(res)
		},
		ErrorHandler: func(_ http.ResponseWriter, r *http.Request, err error) {
			callOf(r.Context()).errorHandler(err)
		},
	}
}

// callTransport is the shared ReverseProxy's Transport: the call's
// RoundTrip.
type callTransport struct{}

func (callTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	return callOf(req.Context()).RoundTrip(req)
}

// errorHandler answers a request whose upstream exchange failed before
// anything of the response was sent (ReverseProxy's ErrorHandler).
func (c *call) errorHandler(err error) {
	p, r, rw, st, forms, useID := c.h.p, c.r, &c.rwv, &c.res, c.forms, c.useID
	rw.own = true // nothing of the upstream's body is relayed
	if errors.Is(err, errRevokedBeforeSend) || errors.Is(err, errBlockedBeforeSend) {
		// Refused as the checks refuse it, deny event included:
		// nothing went upstream.
		e := broker.AsError(err)
		st.errCode, st.errReason = broker.CodeOf(e), e.Reason
		c.fail(rw, err)
		return
	}
	if why := c.cut.Load(); why != 0 && r.Context().Err() == nil {
		// Cut (cutRevoked) before the upstream answered (or before
		// anything of its response was sent): the checks' 403,
		// though the request went upstream (its use_result, not a
		// deny, records it).
		e := errRevokedBeforeSend
		if why == cutBlock {
			e = errBlockedBeforeSend
		}
		st.errCode, st.errReason = broker.CodeOf(broker.AsError(e)), reasonRevokedInFlight
		c.h.api.WriteErrorStatus(rw, r, e, 0)
		return
	}
	status, reason := http.StatusBadGateway, "upstream_error"
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		status, reason = http.StatusRequestEntityTooLarge, "body_too_large"
	case errors.Is(err, errResponseTooLarge):
		reason = "response_too_large"
	case errors.Is(err, errEncodingUnsupported):
		reason = "response_encoding_unsupported"
	case errors.Is(err, errUndecodable):
		reason = "response_undecodable"
	case errors.Is(err, errSecretInBody):
		reason = "response_contains_secret"
	case errors.Is(err, errAddressRefused):
		reason = "upstream_address_refused"
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		status, reason = http.StatusGatewayTimeout, "upstream_timeout"
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The caller went away before the upstream answered: not
		// an upstream failure. Nobody reads the answer; its 499
		// (nginx's "client closed request") is for the access log,
		// the metrics and the use_result event.
		st.errCode, st.errReason = "", "client_gone"
		p.log.LogAttrs(r.Context(), slog.LevelInfo, "client went away before the upstream answered",
			slog.String("request_id", httpapi.RequestID(r)), slog.String("use_id", useID))
		rw.WriteHeader(broker.StatusClientClosedRequest)
		return
	}
	// The transport's error text is sanitised before it is logged
	// and never reaches the caller.
	cause := errors.New(forms.redact(err.Error()))
	var e error
	if status == http.StatusRequestEntityTooLarge {
		e = broker.Errorf(broker.ErrInvalidRequest, reason, "request body too large", cause)
	} else {
		safe := "the upstream could not be reached or did not answer properly"
		switch reason {
		case "response_encoding_unsupported", "response_undecodable":
			safe = "the upstream's response is encoded in a way the broker cannot scan"
		case "response_contains_secret":
			safe = "the upstream's response carries the injected secret in a form the broker cannot redact"
		}
		retry := time.Second
		switch reason {
		case "response_contains_secret", "response_too_large", "response_encoding_unsupported",
			"response_undecodable", "upstream_address_refused":
			// A retry gets the same answer (the upstream echoes the
			// secret again, sends as much, encodes as it did though
			// asked for identity, sends bytes that arrived whole and
			// do not decode; the grant's upstream is an address it
			// does not allow until the policy or the upstream's DNS
			// changes): no Retry-After, which invites a retry that
			// goes upstream, and into the audit log, again. Only
			// upstream_error and upstream_timeout (504) carry one.
			retry = -1
		}
		e = &broker.Error{Kind: broker.ErrUnavailable, Reason: reason, Safe: safe, RetryAfter: retry, Err: cause}
	}
	st.errCode, st.errReason = broker.CodeOf(broker.AsError(e)), reason
	c.h.api.WriteErrorStatus(rw, r, e, status)
}

// rewrite makes the upstream request (ReverseProxy's Rewrite).
func (c *call) rewrite(pr *httputil.ProxyRequest) {
	tgt, inject, forms, useID := &c.tgt, c.grant.Proxy.Inject, c.forms, c.useID
	o := pr.Out
	// Out's URL is ReverseProxy's clone of the caller's: set in place.
	*o.URL = url.URL{Scheme: tgt.u.Scheme, Host: tgt.u.Host, Path: tgt.path, RawPath: tgt.rawPath, RawQuery: tgt.rawQuery}
	o.Host = tgt.u.Host
	// The caller's announced trailer names would be announced
	// upstream (their values never are): send none.
	o.Trailer = nil
	// One pass over the headers the caller sent (a handful), rather than
	// a delete for each of the 14 stripped names whether sent or not.
	for name := range o.Header {
		if strippedRequestHeader[name] || dropRequestHeader(name) {
			delete(o.Header, name)
		}
	}
	// As Header.Set, the values held in the call (headerValue).
	if c.injectHeader != "" {
		o.Header[c.injectHeader] = c.headerValue(hdrInject, forms.injected(inject.Format))
	}
	o.Header["X-Request-Id"] = c.headerValue(hdrRequestID, useID)
	o.Header["X-Keytrail-Issuance"] = c.headerValue(hdrIssuance, c.is.ID)
	o.Header["Accept-Encoding"] = identity // so the response scan sees plain bytes
}

// modifyResponse checks and prepares the upstream's response before its
// status goes to the caller (ReverseProxy's ModifyResponse).
func (c *call) modifyResponse(res *http.Response) error {
	p, r, rw, st, forms, useID := c.h.p, c.r, &c.rwv, &c.res, c.forms, c.useID
	st.upstreamStatus = res.StatusCode
	if res.StatusCode == http.StatusSwitchingProtocols {
		return errors.New("upstream switched protocols")
	}
	c.upstreamRequestIDs(res.Header, forms, useID)
	// A HEAD response declares the length of a body it does not have.
	if res.ContentLength > p.o.MaxResponseBytes && r.Method != http.MethodHead {
		return errResponseTooLarge
	}
	// The scan must see plain bytes: a gzip or deflate body is
	// decoded here and relayed decoded (no Content-Encoding, no
	// Content-Length: the decoded length is not known before the
	// end), any other coding is refused. HEAD, 204 and 304 have no
	// body: their headers are what a GET's decoded response has.
	coding := responseCoding(res.Header)
	if coding == codingUnsupported {
		return fmt.Errorf("%w: Content-Encoding %q", errEncodingUnsupported, res.Header.Values("Content-Encoding"))
	}
	if _, ok := res.Header["Content-Encoding"]; ok {
		delete(res.Header, "Content-Encoding")
		if coding != codingIdentity {
			delete(res.Header, "Content-Length")
			res.ContentLength = -1
			res.Uncompressed = true
			weakenETags(res.Header)
			dropDigests(res.Header)
		}
	}
	if res.StatusCode == http.StatusNotModified && coding == codingIdentity {
		// The caller's If-None-Match says whether the body it
		// stored was relayed altered (its tag made weak).
		if inm := r.Header["If-None-Match"]; len(inm) > 0 && weakenRevalidatedETags(res.Header, inm) {
			dropDigests(res.Header)
		}
	}
	bodyless := r.Method == http.MethodHead || res.StatusCode == http.StatusNoContent || res.StatusCode == http.StatusNotModified
	for name, vs := range res.Header {
		// A name without a value (which no transport parses) is
		// dropped, as ReverseProxy's copy of the headers drops it
		// (responseWriter.adopt hands them on without that copy).
		if len(vs) == 0 || strings.HasPrefix(name, "X-Keytrail-") || name == "X-Request-Id" {
			delete(res.Header, name)
			continue
		}
		for _, v := range vs {
			if forms.containsAny(v) {
				delete(res.Header, name)
				p.log.LogAttrs(r.Context(), slog.LevelWarn, "dropped upstream response header carrying the injected secret",
					slog.String("request_id", httpapi.RequestID(r)), slog.String("use_id", useID), slog.String("header", name))
				break
			}
		}
	}
	// Trailers arrive after the body and are never relayed: with no
	// names here ReverseProxy announces none, and the responseWriter
	// drops those it copies after the body (see responseWriter).
	res.Trailer = nil
	keepOutOfSharedCaches(res.Header)
	res.Header["X-Keytrail-Use"] = c.headerValue(hdrUse, useID) // as Header.Set
	body := res.Body
	if coding != codingIdentity && !bodyless {
		// Both caps: the bytes read from the upstream and,
		// above the decoder, the decoded bytes relayed.
		c.wire = &capReader{src: res.Body, limit: p.o.MaxResponseBytes}
		d, err := newDecoder(c.wire, coding, &p.decoders)
		if err != nil {
			return err
		}
		c.dec, body = d, d
	}
	c.rcv = capReader{src: body, limit: p.o.MaxResponseBytes}
	c.rc = &c.rcv
	c.guard = gzipGuard{src: c.rc, forms: forms, pools: &p.decoders, limit: p.o.MaxResponseBytes, screened: bodyless}
	if res.ContentLength > 0 && !bodyless {
		// Declared length: screened before the status goes out,
		// so that a refusal is a 502.
		if err := c.guard.screen(); err != nil {
			return err
		}
	}
	rr := &c.redact
	rr.init(&c.guard, forms, p.redactBufs)
	rr.altered = &rw.altered // a masked body loses its validators, if its headers are not sent yet
	if res.ContentLength > 0 && !bodyless {
		// Declared length: the headers wait for the body's
		// first 16 KiB (all of an ordinary API answer), and
		// for the end of a secret that starts in them, so a
		// secret masked in them strips the headers' validators.
		rr.fill = int(min(res.ContentLength, redactChunk/2))
	}
	res.Body = rr
	rw.adopt(res) // last: a refused response's headers are never staged
	return nil
}

// secret reads a grant's secret: from the source's memory when it keeps
// one (broker.CachedSecretSource), else by a Secret call bounded by
// SecretTimeout, the only case that needs a deadline.
func (p *Proxy) secret(ctx context.Context, ref policies.ProxySecret) (string, error) {
	if p.cachedSecrets != nil {
		if v, ok := p.cachedSecrets.CachedSecret(ref); ok {
			return v, nil
		}
	}
	sctx, cancel := context.WithTimeout(ctx, p.o.SecretTimeout)
	defer cancel()
	return p.o.Secrets.Secret(sctx, ref)
}

// bodyError returns why the response body failed at its first read (which
// goes through the gzip guard): the guard's refusal or the error it read
// (in screening or after: the response scan may have held back every byte
// before it);
// context.Canceled for a body that ended cleanly although the request was
// cut (cutRevoked).
func (c *call) bodyError() error {
	err := c.guard.fail
	if err == nil {
		err = c.guard.err
	}
	switch {
	case err == nil || err == io.EOF:
		return context.Canceled
	case c.dec != nil && c.dec.bad && !errors.Is(err, errUndecodable):
		return fmt.Errorf("%w: %v", errUndecodable, err)
	}
	return err
}

// RoundTrip sends the request through the grant's Transport unless this
// instance learned, since the checks, that the credential was revoked or its
// workload blocked: the secret read (up to SecretTimeout when Vault is slow)
// and the durable use event take time, and a revocation made meanwhile must
// stop the request. It runs after Rewrite, right before the Transport
// dials or reuses a connection, and asks the in-memory revocation state only
// (Service.KnownRevoked: no Store round trip, no allocation).
func (c *call) RoundTrip(req *http.Request) (*http.Response, error) {
	revoked, blocked := c.h.p.o.Service.KnownRevoked(c.is.ID, c.is.Workload)
	if !revoked && !blocked {
		return c.rt.RoundTrip(req)
	}
	c.notSent = true
	if req.Body != nil {
		_ = req.Body.Close() // a RoundTripper closes the body, even on error
	}
	if revoked {
		return nil, errRevokedBeforeSend
	}
	return nil, errBlockedBeforeSend
}

// isTimeout reports whether err says a timeout ran out. The HTTP/2
// transport's response header timeout and the TLS handshake timeout are not
// context.DeadlineExceeded, only net.Error timeouts.
func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}

// upstreamRequestIDHeaders are the response headers in which well-known
// APIs return the id they log a request under (their own, which is what
// their dashboards and logs show; many do not log the X-Request-Id the
// broker sends), lower-case as the use_result event names them: Stripe,
// generic (Heroku, Rails, OpenAI...), AWS (JSON APIs, API Gateway; S3 and
// other REST APIs), GitHub, Azure, Cloudflare. canonicalRequestIDHeaders
// holds the same names as http.Header keys them.
var upstreamRequestIDHeaders = [...]string{"request-id", "x-request-id", "x-amzn-requestid", "x-amz-request-id",
	"x-github-request-id", "x-ms-request-id", "cf-ray"}

var canonicalRequestIDHeaders = func() (out [len(upstreamRequestIDHeaders)]string) {
	for i, h := range upstreamRequestIDHeaders {
		out[i] = http.CanonicalHeaderKey(h)
	}
	return out
}()

// maxUpstreamRequestID bounds a recorded upstream request id.
const maxUpstreamRequestID = 128

// upstreamRequestIDs keeps the upstream's request ids of a response for the
// use_result event: a header of upstreamRequestIDHeaders sent once, whose
// value is 1 to maxUpstreamRequestID printable ASCII characters (no space),
// does not carry the injected secret in any of the forms the response scan
// drops headers for, and is not the use id the broker sent (an upstream
// echoing X-Request-Id). It allocates nothing.
func (c *call) upstreamRequestIDs(h http.Header, forms *formSet, useID string) {
	for i, name := range canonicalRequestIDHeaders {
		vs := h[name]
		if len(vs) != 1 {
			continue
		}
		if v := vs[0]; v != useID && recordableRequestID(v) && !forms.containsAny(v) {
			c.upstreamIDs[i] = v
		}
	}
}

// recordableRequestID reports whether v is 1 to maxUpstreamRequestID
// printable ASCII characters other than space.
func recordableRequestID(v string) bool {
	if v == "" || len(v) > maxUpstreamRequestID {
		return false
	}
	for i := 0; i < len(v); i++ {
		if v[i] <= ' ' || v[i] > '~' {
			return false
		}
	}
	return true
}

// sendableSecret reports whether a secret can be sent: it holds no control
// character other than HTAB (NUL, CR, LF, the other C0 controls and DEL),
// which net/http refuses in a header value (and the broker refuses in a
// query too: such a value is a mistake, e.g. a trailing newline from a file).
func sendableSecret(secret string) bool {
	for i := 0; i < len(secret); i++ {
		if c := secret[i]; (c < 0x20 && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// result writes the use_result event (best effort: the response is gone).
func (c *call) result(use *callEvent, rw *responseWriter, upstreamStatus int, errCode, errReason string) {
	ev := &c.resultEv
	c.setEvent(ev, audit.TypeUseResult)
	ev.UseID = use.UseID
	ev.setUpstream(audit.Upstream{
		Method: use.Upstream.Method, Host: use.Upstream.Host, Path: use.Upstream.Path,
		Status:     upstreamStatus,
		DurationMS: float64(time.Since(c.start).Microseconds()) / 1000,
	})
	if upstreamStatus != 0 {
		// The upstream answered: the bytes of its body relayed, 0
		// included. rw is done with: nothing writes to it any more.
		ev.Upstream.Bytes = &rw.bytes
	}
	ev.setOutcome(audit.Outcome{Status: c.status, Error: errCode, Reason: errReason})
	var ids map[string]string
	for i, v := range c.upstreamIDs {
		if v != "" {
			if ids == nil {
				ids = map[string]string{}
			}
			ids[upstreamRequestIDHeaders[i]] = v
		}
	}
	if ids != nil {
		ev.Details = map[string]any{"upstream_request_ids": ids}
	}
	if c.notSent {
		// Refused after the use event: the request never went upstream.
		ev.Details = map[string]any{"not_sent": true}
	}
	// Nobody waits for it: the response is gone. It shares the fsync of a
	// later event (the sink bounds the wait), and the handler returns at
	// once, freeing the keep-alive connection for the caller's next request.
	// AuditDeferred detaches the context from the request's cancellation
	// itself where it uses it; the log line, on a failure only, does here.
	log, requestID, useID, issuanceID, rctx := c.h.p.log, ev.RequestID, use.UseID, c.is.ID, c.r.Context()
	c.h.p.o.Service.AuditDeferred(rctx, &ev.Event, func(err error) {
		if err != nil {
			ctx := context.WithoutCancel(rctx)
			log.LogAttrs(ctx, slog.LevelError, "audit use_result event failed",
				slog.String("request_id", requestID), slog.String("use_id", useID), slog.String("issuance_id", issuanceID), slog.String("error", err.Error()))
		}
	})
}
