// Package httpapi is keytrail's HTTP surface: every route is listed in
// Routes, handlers are methods on Server, bodies are capped and decoded
// strictly, and one function (writeError) decides what an error looks like on
// the wire: the OAuth error shape with a safe description, the status and
// Retry-After. Internal error text goes only to the log.
package httpapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keytrail/keytrail/broker"
)

// Options configure a Server.
type Options struct {
	Service   *broker.Service
	Keys      broker.PublicKeySource // may be nil: no JWT grants
	PublicURL string
	Logger    *slog.Logger
	// Ready reports whether every backend is usable (Vault, store, audit sink).
	Ready func(ctx context.Context) error
	// Registry receives the HTTP metrics; nil creates a private one.
	Registry *prometheus.Registry
	// MaxBodyBytes caps request bodies of broker endpoints (default 64 KiB).
	MaxBodyBytes int64
	// TrustedProxies are the addresses of the front proxies whose
	// X-Forwarded-For is believed (ParseTrustedProxy reads the config's
	// form). X-Forwarded-For is read only when the request's direct peer is
	// one of them; the source address is then the rightmost entry that is
	// not (see clientIP). Empty: never read, the source is the peer.
	TrustedProxies []netip.Prefix
	// Extra lets other packages (proxy, admin) add routes.
	Extra func(mux *http.ServeMux, s *Server)
}

// Server holds the handlers.
type Server struct {
	o       Options
	log     *slog.Logger
	metrics *Metrics
	reg     *prometheus.Registry
	// draining is set by Drain: the process is shutting down.
	draining atomic.Bool
	// readyMu guards readyLast, /readyz's check in flight or its answer.
	readyMu   sync.Mutex
	readyLast *readyCheck
	// readyNow is the clock of readyCacheFor (tests set it; nil: time.Now).
	readyNow func() time.Time
}

// readyCacheFor is how long /readyz answers from the last check of the
// backends (Options.Ready): /readyz is unauthenticated, and without it a
// flood of probes would be as many Vault, store and audit checks.
const readyCacheFor = time.Second

// readyCheck is one run of Options.Ready, shared by every /readyz that
// comes while it runs and for readyCacheFor after it ended.
type readyCheck struct {
	done chan struct{} // closed when err and ended are set
	err  error
	// ended is when the check finished (zero while it runs).
	ended time.Time
	// cut: the context of the caller that ran it ended first; its answer
	// is that caller's only.
	cut bool
}

// Drain makes /readyz answer 503 (error "shutting down") from now on,
// without asking the backends, while every other route keeps serving: load
// balancers and Kubernetes take the instance out of rotation before its
// listener closes.
func (s *Server) Drain() { s.draining.Store(true) }

// New validates o and returns a Server.
func New(o Options) (*Server, error) {
	if o.Service == nil {
		return nil, errors.New("httpapi: Options.Service is required")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 64 << 10
	}
	// Discovery's issuer and introspection's iss must be the same string.
	o.PublicURL = strings.TrimRight(o.PublicURL, "/")
	if o.Registry == nil {
		o.Registry = prometheus.NewRegistry()
	}
	m, err := NewMetrics(o.Registry)
	if err != nil {
		return nil, err
	}
	return &Server{o: o, log: o.Logger, metrics: m, reg: o.Registry}, nil
}

// Metrics returns the server's metrics (for other components to record).
func (s *Server) Metrics() *Metrics { return s.metrics }

// Logger returns the server's logger.
func (s *Server) Logger() *slog.Logger { return s.log }

// Routes lists every route of the broker.
func (s *Server) Routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/token", s.handleToken)
	mux.HandleFunc("POST /v1/introspect", s.handleIntrospect)
	mux.HandleFunc("GET /.well-known/openid-configuration", s.handleDiscovery)
	mux.HandleFunc("GET /.well-known/jwks.json", s.handleJWKS)
	mux.HandleFunc("GET /healthz", s.handleHealthz)
	mux.HandleFunc("GET /readyz", s.handleReadyz)
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.reg, promhttp.HandlerOpts{Registry: s.reg}))
	if s.o.Extra != nil {
		s.o.Extra(mux, s)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		// The catch-all matches every method, so the mux never answers 405
		// itself: a path another method serves gets 405 with Allow here.
		var miss error = &broker.Error{Kind: broker.ErrNotFound, Reason: "no_route", Safe: "no such endpoint"}
		allow := allowedMethods(mux, r)
		if len(allow) > 0 {
			miss = &broker.Error{Kind: broker.ErrMethodNotAllowed, Reason: "method_not_allowed", Safe: "method not allowed; see the Allow header"}
		}
		if r.URL.Path == "/v1/admin" || strings.HasPrefix(r.URL.Path, "/v1/admin/") {
			// SPEC: every admin call is audited, denied ones too. A path
			// or method under /v1/admin/ that no route serves is answered
			// like the admin routes: 401/403 unless the caller is an
			// admin, then 404/405, each recorded as an admin event.
			miss = s.adminMiss(r, miss)
		}
		if errors.Is(miss, broker.ErrMethodNotAllowed) {
			w.Header().Set("Allow", strings.Join(allow, ", "))
		}
		s.WriteError(w, r, miss)
	})
	return s.middleware(mux)
}

// allowedMethods lists the methods some route serves r's path with (HEAD
// where GET is served); none when only the catch-all matches it.
func allowedMethods(mux *http.ServeMux, r *http.Request) []string {
	if r.Method == http.MethodConnect {
		return nil
	}
	var allow []string
	for _, m := range []string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete} {
		probe := r.WithContext(r.Context())
		probe.Method = m
		_, pattern := mux.Handler(probe)
		if strings.HasPrefix(pattern, m+" ") || (m == http.MethodHead && strings.HasPrefix(pattern, http.MethodGet+" ")) {
			allow = append(allow, m)
		}
	}
	return allow
}

type ctxKey struct{}

// RequestID returns the request id the middleware assigned.
func RequestID(r *http.Request) string {
	if sw, _ := r.Context().Value(ctxKey{}).(*statusWriter); sw != nil {
		return sw.id[0]
	}
	return ""
}

// statusWriter records the status for logs and metrics.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
	// id holds the request id: the value of the response's X-Request-Id
	// header (id[:1:1]) and, the statusWriter being the request context's
	// ctxKey value, RequestID's answer. Held here, neither is an
	// allocation of its own (a string stored in a context is one).
	id [1]string
	// remote is clientIP's answer for the request, found once for its
	// log line and every Source (the handler's own, audit records).
	remote string
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = 200
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Flush() {
	if f, ok := w.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// middleware assigns the request id, recovers panics into a generic 500 (no
// stack trace on the wire), and logs one line per request.
func (s *Server) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		id := broker.NewID(broker.PrefixRequest)
		sw := &statusWriter{ResponseWriter: w, id: [1]string{id}, remote: clientIP(r, s.o.TrustedProxies)}
		w.Header()["X-Request-Id"] = sw.id[:1:1] // as Header.Set; an append copies it out
		r = r.WithContext(context.WithValue(r.Context(), ctxKey{}, sw))
		defer func() {
			p := recover()
			// http.ErrAbortHandler (the proxy cutting off a response after
			// its status went out) is the server's to handle, once the
			// request is logged like any other.
			aborted := p == http.ErrAbortHandler
			if p != nil && !aborted {
				s.log.LogAttrs(r.Context(), slog.LevelError, "handler panic", slog.String("request_id", id), slog.Any("panic", p))
				if sw.status == 0 {
					s.WriteError(sw, r, &broker.Error{Kind: broker.ErrUnavailable, Reason: "internal", Safe: "internal error", RetryAfter: time.Second})
				} else {
					// The status went out: the response cannot be
					// replaced. Cut it off as the server does for
					// http.ErrAbortHandler (no stack in its log),
					// rather than end it cleanly: a chunked body cut
					// short would read as complete.
					p, aborted = http.ErrAbortHandler, true
				}
			}
			if aborted {
				s.log.LogAttrs(r.Context(), slog.LevelInfo, "http",
					slog.String("request_id", id), slog.String("method", r.Method),
					slog.String("path", r.URL.Path), slog.Int("status", sw.status),
					slog.Int64("bytes", sw.bytes), slog.Duration("duration", time.Since(start)),
					slog.String("remote", sw.remote), slog.Bool("aborted", true))
				panic(p)
			}
			s.log.LogAttrs(r.Context(), slog.LevelInfo, "http",
				slog.String("request_id", id), slog.String("method", r.Method),
				slog.String("path", r.URL.Path), slog.Int("status", sw.status),
				slog.Int64("bytes", sw.bytes), slog.Duration("duration", time.Since(start)),
				slog.String("remote", sw.remote))
		}()
		next.ServeHTTP(sw, r)
	})
}

// errorBody is the OAuth error shape (SPEC "HTTP API").
type errorBody struct {
	Error            string `json:"error"`
	ErrorDescription string `json:"error_description,omitempty"`
	RequestID        string `json:"request_id"`
	// RevocationID names a revocation that was made although the request
	// failed (503 audit_unavailable: its revoke event was late).
	RevocationID string `json:"revocation_id,omitempty"`
}

// WriteError is the one place that decides what an error looks like on the
// wire. The full error goes to the log only.
func (s *Server) WriteError(w http.ResponseWriter, r *http.Request, err error) {
	s.WriteErrorStatus(w, r, err, 0)
}

// WriteErrorStatus is WriteError with an HTTP status the caller chose where
// the error's category has none of its own (the proxy's 413, 502 and 504);
// 0 is the category's. The body, the error code and Retry-After still
// follow the category (no Retry-After when the error's RetryAfter is
// negative); the log names the status sent.
func (s *Server) WriteErrorStatus(w http.ResponseWriter, r *http.Request, err error, status int) {
	s.writeError(w, r, err, status, false)
}

// writeError is WriteErrorStatus; expected logs a 5xx at INFO, not WARN:
// an answer every start-up gives (Starting's 503 "starting"), no fault.
func (s *Server) writeError(w http.ResponseWriter, r *http.Request, err error, status int, expected bool) {
	e := broker.AsError(err)
	catStatus := broker.StatusOf(e)
	if status == 0 {
		status = catStatus
	}
	code := broker.CodeOf(e)
	level := slog.LevelInfo
	if status >= 500 && !expected {
		level = slog.LevelWarn
	}
	s.log.LogAttrs(r.Context(), level, "request failed",
		slog.String("request_id", RequestID(r)), slog.Int("status", status),
		slog.String("error", code), slog.String("reason", e.Reason), slog.String("detail", e.Error()))
	if (catStatus == http.StatusTooManyRequests || catStatus == http.StatusServiceUnavailable) && e.RetryAfter >= 0 {
		ra := e.RetryAfter
		if ra <= 0 {
			ra = time.Second
		}
		w.Header().Set("Retry-After", strconv.Itoa(int((ra+time.Second-1)/time.Second)))
	}
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", challenge(e, code))
	}
	desc := e.Safe
	if desc == "" {
		desc = e.Kind.Error()
	}
	body := errorBody{Error: code, ErrorDescription: desc, RequestID: RequestID(r)}
	if made := (*broker.RevocationMadeError)(nil); errors.As(e, &made) {
		body.RevocationID = made.ID
	}
	writeJSON(w, status, body)
}

// challenge is the WWW-Authenticate header of a 401 (RFC 6750 §3). It names
// an error only where the body does, invalid_token for a Bearer token that was
// sent and refused. A request that sent none gets a challenge without an
// error (§3.1), and so does POST /v1/token's invalid_grant: the token it
// refused was a form field, not a credential of the request.
func challenge(e *broker.Error, code string) string {
	if code == broker.CodeInvalidToken && !e.NoToken {
		return `Bearer error="invalid_token"`
	}
	return `Bearer realm="keytrail"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	// As Header.Set with each name (already canonical), the four values in
	// one allocation instead of one each; each slice's capacity is its
	// length, so an append copies it out.
	vals := &[4]string{"application/json", "no-store", "no-cache", "nosniff"}
	h := w.Header()
	h["Content-Type"] = vals[0:1:1]
	h["Cache-Control"] = vals[1:2:2]
	h["Pragma"] = vals[2:3:3]
	h["X-Content-Type-Options"] = vals[3:4:4]
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

// WriteJSON writes v as a JSON response with no-store caching.
func WriteJSON(w http.ResponseWriter, status int, v any) { writeJSON(w, status, v) }

// clientIP returns the caller's address: the direct peer's, unless the
// peer is one of the trusted proxies. Then X-Forwarded-For is read right to
// left, its header lines last first (as one comma-joined list): each
// trusted proxy appended the address it saw, so the source is the rightmost
// entry that is not a trusted proxy itself (nginx's real_ip_recursive,
// Vault's x_forwarded_for_authorized_addrs). Entries left of it were
// chosen by the caller and are not read. Were every entry a trusted proxy,
// the leftmost is the source; an empty entry ("a, , b", a trailing comma,
// an empty header line) is skipped, as nginx does; at an entry that is
// not an address the walk stops and the source is the last trusted hop (the peer, or the entry
// right of it); an entry may carry a port (forwardedAddr). A peer that is not a trusted proxy is the source whatever
// X-Forwarded-For it sent: a caller that reaches the broker directly
// cannot name another address for its audit events or its refusal budget.
func clientIP(r *http.Request, trusted []netip.Prefix) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	if len(trusted) == 0 {
		return host
	}
	// Indexed by its canonical name, as Header.Values would after making
	// the name canonical again.
	vals := r.Header["X-Forwarded-For"]
	if len(vals) == 0 {
		return host
	}
	peer, err := netip.ParseAddr(host)
	if err != nil || !trustedAddr(trusted, peer) {
		return host
	}
	var hop netip.Addr // the last trusted entry; invalid: the peer
	for i := len(vals) - 1; i >= 0; i-- {
		v := vals[i]
		for {
			entry := v
			j := lastXFFSeparator(v)
			if j >= 0 {
				entry, v = v[j+1:], v[:j]
			}
			entry = trimSpace(entry)
			if entry == "" {
				// Skipped, as nginx reads a run of commas and
				// spaces as one separator (lastXFFSeparator): a proxy that passed
				// on "a, , b" does not make its callers the last
				// trusted hop.
				if j < 0 {
					break
				}
				continue
			}
			ip, ok := forwardedAddr(entry)
			if !ok {
				return hopString(hop, host)
			}
			ip = ip.WithZone("").Unmap()
			if !trustedAddr(trusted, ip) {
				return ip.String()
			}
			hop = ip
			if j < 0 {
				break
			}
		}
	}
	return hopString(hop, host)
}

// lastXFFSeparator is the index of the last separator of X-Forwarded-For
// entries in v, -1 when there is none: a comma or a space, as nginx's
// real_ip module reads them (back from the end to either; a run of them
// leaves empty entries, skipped).
func lastXFFSeparator(v string) int {
	for i := len(v) - 1; i >= 0; i-- {
		if v[i] == ',' || v[i] == ' ' {
			return i
		}
	}
	return -1
}

// forwardedAddr reads one X-Forwarded-For entry as nginx's real_ip module
// does: an address, the same with the port the proxy saw
// (198.51.100.4:5678, [2001:db8::1]:443; Azure's Application Gateway
// appends one), or an IPv6 address in brackets. Read as "not an address",
// such an entry stopped the walk at the last trusted hop: behind a proxy
// that appends ports, every caller was that proxy.
func forwardedAddr(s string) (netip.Addr, bool) {
	switch {
	case len(s) > 1 && s[0] == '[' && s[len(s)-1] == ']':
		a, err := netip.ParseAddr(s[1 : len(s)-1])
		return a, err == nil && a.Is6()
	case strings.HasPrefix(s, "[") || strings.Count(s, ":") == 1:
		// [v6]:port, or v4:port (an IPv6 address has two colons or more).
		ap, err := netip.ParseAddrPort(s)
		return ap.Addr(), err == nil
	}
	a, err := netip.ParseAddr(s)
	return a, err == nil
}

func hopString(hop netip.Addr, peer string) string {
	if hop.IsValid() {
		return hop.String()
	}
	return peer
}

// trustedAddr reports whether a is in one of the trusted prefixes.
func trustedAddr(trusted []netip.Prefix, a netip.Addr) bool {
	a = a.WithZone("").Unmap()
	for _, p := range trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ParseTrustedProxy reads one entry of a trusted proxy list: an IP address
// (10.0.0.7, ::1) or a CIDR (10.0.0.0/8, fd00::/8). Bits set past a CIDR's
// prefix length are cleared (10.1.2.3/8 is 10.0.0.0/8); an IPv4-mapped
// IPv6 form is its IPv4 address or network, as peers are compared.
func ParseTrustedProxy(s string) (netip.Prefix, error) {
	bad := fmt.Errorf("%q is not an IP address or CIDR (e.g. 10.0.0.0/8, 127.0.0.1)", s)
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, bad
		}
		if a := p.Addr(); a.Is4In6() {
			if p.Bits() < 96 {
				return netip.Prefix{}, fmt.Errorf("%q: an IPv4-mapped CIDR must be /96 or longer", s)
			}
			p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Prefix{}, bad
	}
	a = a.Unmap()
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// Source returns the request's source for audit records.
func (s *Server) Source(r *http.Request) broker.Source {
	ua := headerGet(r.Header, "User-Agent") // r.UserAgent()
	if len(ua) > 256 {
		ua = ua[:256]
	}
	var ip string
	if sw, _ := r.Context().Value(ctxKey{}).(*statusWriter); sw != nil {
		ip = sw.remote // the middleware's clientIP(r)
	} else {
		ip = clientIP(r, s.o.TrustedProxies)
	}
	return broker.Source{IP: ip, UserAgent: ua}
}

// headerGet is h.Get(name) for a name in canonical form
// (http.CanonicalHeaderKey), which Get would make canonical again.
func headerGet(h http.Header, name string) string {
	if vs := h[name]; len(vs) > 0 {
		return vs[0]
	}
	return ""
}

func trimSpace(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

func (s *Server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		w.Header().Set("Retry-After", "1")
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "error": ReadyShuttingDown})
		return
	}
	if s.o.Ready != nil {
		if checked, err := s.ready(r.Context()); err != nil {
			if checked { // an answer kept or shared was logged by its check
				s.log.LogAttrs(r.Context(), slog.LevelWarn, "not ready",
					slog.String("request_id", RequestID(r)), slog.String("error", err.Error()))
			}
			w.Header().Set("Retry-After", "1")
			writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "error": safeReadyError(err)})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// ready answers whether the backends are ready: the answer of a check
// that ended less than readyCacheFor ago, else that of the check in flight,
// else of a check it runs itself (at most 3 s, bounded by its request),
// which callers arriving meanwhile share. A check cut short because its
// caller went away (or the server closed the connection) answers that
// caller only: those waiting for it run another. checked says this caller
// ran the check (its failure is logged once, not per probe it answers).
func (s *Server) ready(ctx context.Context) (checked bool, err error) {
	for {
		s.readyMu.Lock()
		c := s.readyLast
		if c == nil || c.cut || (!c.ended.IsZero() && s.readyClock().Sub(c.ended) >= readyCacheFor) {
			break // with readyMu held: this caller checks
		}
		s.readyMu.Unlock()
		select {
		case <-c.done:
			if !c.cut {
				return false, c.err
			}
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
	c := &readyCheck{done: make(chan struct{}), err: errReadyCheckFailed}
	s.readyLast = c
	s.readyMu.Unlock()
	defer func() {
		// Also when Ready panics (the panic goes on to the recovering
		// middleware): those waiting get errReadyCheckFailed.
		s.readyMu.Lock()
		c.ended, c.cut = s.readyClock(), ctx.Err() != nil
		s.readyMu.Unlock()
		close(c.done)
	}()
	cctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	c.err = s.o.Ready(cctx)
	return true, c.err
}

func (s *Server) readyClock() time.Time {
	if s.readyNow != nil {
		return s.readyNow()
	}
	return time.Now()
}

// errReadyCheckFailed is the answer of a readiness check that did not
// return (it panicked).
var errReadyCheckFailed = errors.New("readiness check failed")

// ReadyShuttingDown is /readyz's error while the server drains (Drain).
const ReadyShuttingDown = "shutting down"

// ReadyError names the failing component without internal detail.
type ReadyError struct{ Component string }

func (e ReadyError) Error() string { return e.Component + " unavailable" }

func safeReadyError(err error) string {
	var re ReadyError
	if errors.As(err, &re) {
		return re.Error()
	}
	return "a backend is unavailable"
}

func jsonEncoder(w http.ResponseWriter) *json.Encoder {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	return enc
}
