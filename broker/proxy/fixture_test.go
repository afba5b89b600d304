package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/broker/proxy"
	"github.com/keytrail/keytrail/policies"
)

const (
	identityToken = "eyJhbGciOiJFUzI1NiJ9.payments.sig"
	actorToken    = "eyJhbGciOiJFUzI1NiJ9.carol.sig" // a user the workload acts for (ExchangeRequest.ActorToken)
	upstreamKey   = "sk_live_51HxUpstreamSharedSecret/+=&key"
	queryKey      = "qk_upstream_query_secret"
	maxReqBytes   = 1024
	maxRespBytes  = 4096
)

const policyTemplate = `
version: 1
issuers:
  - name: ci
    issuer: https://ci.example
    jwks_url: https://ci.example/jwks
    audiences: [keytrail]
    algorithms: [ES256]
workloads:
  - name: payments
    owner: team-payments
    match: {issuer: ci, subject: repo:acme/payments}
    grants: [stripe, other, closed, query-api]
    rate: {per_second: %g, burst: %d}
%[5]s
grants:
  - name: stripe
    kind: proxy
    ttl: 10m
    proxy:
      upstream: %[3]s
      allow_private: true
      ca_file: %[4]s
      secret: {vault_kv: secret/data/upstreams/stripe, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      methods: [GET, HEAD, POST]
      paths: ["/v1/charges", "/v1/charges/*", "/echo", "/echo/*", "/up/*"]
  - name: other
    kind: proxy
    ttl: 10m
    proxy:
      upstream: %[3]s
      allow_private: true
      ca_file: %[4]s
      secret: {vault_kv: secret/data/upstreams/stripe, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      paths: ["/v1/other"]
  - name: closed
    kind: proxy
    ttl: 10m
    proxy:
      upstream: %[3]s
      ca_file: %[4]s
      secret: {vault_kv: secret/data/upstreams/stripe, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      paths: ["/v1/charges"]
  - name: query-api
    kind: proxy
    ttl: 10m
    proxy:
      upstream: %[3]s/base
      allow_private: true
      ca_file: %[4]s
      secret: {vault_kv: secret/data/upstreams/query, field: key}
      inject: {query: api_key}
      paths: ["/search"]
`

// clock is the injected clock shared by the Service, the store and the
// proxy.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// secrets is a fake SecretSource.
type secrets struct {
	mu     sync.Mutex
	reads  int
	stripe string // the stripe key after a rotation (default upstreamKey)
	onRead func() // called during every read (e.g. a revocation arriving meanwhile)
}

// rotate changes the stripe key the source returns.
func (s *secrets) rotate(key string) {
	s.mu.Lock()
	s.stripe = key
	s.mu.Unlock()
}

func (s *secrets) Secret(ctx context.Context, ref policies.ProxySecret) (string, error) {
	s.mu.Lock()
	s.reads++
	stripe, onRead := s.stripe, s.onRead
	s.mu.Unlock()
	if onRead != nil {
		onRead()
	}
	switch ref {
	case policies.ProxySecret{VaultKV: "secret/data/upstreams/stripe", Field: "api_key"}:
		if stripe != "" {
			return stripe, nil
		}
		return upstreamKey, nil
	case policies.ProxySecret{VaultKV: "secret/data/upstreams/query", Field: "key"}:
		return queryKey, nil
	}
	return "", broker.Errorf(broker.ErrNotFound, "secret_not_found", "not found", nil)
}

// memSecrets answers from memory what src answered once, as KVSecrets
// does within its TTL (benchmarks).
type memSecrets struct {
	src    broker.SecretSource
	mu     sync.Mutex
	values map[policies.ProxySecret]string
	calls  atomic.Int64 // Secret calls (CachedSecret answers are not counted)
}

func (m *memSecrets) Secret(ctx context.Context, ref policies.ProxySecret) (string, error) {
	m.calls.Add(1)
	if v, ok := m.CachedSecret(ref); ok {
		return v, nil
	}
	v, err := m.src.Secret(ctx, ref)
	if err != nil {
		return "", err
	}
	m.mu.Lock()
	if m.values == nil {
		m.values = map[policies.ProxySecret]string{}
	}
	m.values[ref] = v
	m.mu.Unlock()
	return v, nil
}

// CachedSecret returns a value read before, without waiting.
func (m *memSecrets) CachedSecret(ref policies.ProxySecret) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	v, ok := m.values[ref]
	return v, ok
}

// notifySink is a brokertest.Sink that announces every appended event type.
type notifySink struct {
	*brokertest.Sink
	appended chan string
}

func (s *notifySink) Append(ctx context.Context, ev *audit.Event) error {
	err := s.Sink.Append(ctx, ev)
	if err == nil {
		select {
		case s.appended <- ev.Type:
		default:
		}
	}
	return err
}

// discardSink accepts every event and keeps none (benchmarks). Like the
// audit file keytrail server writes to (auditfile.Sink), it is a
// broker.DeferredAuditSink: a proxied call's use_result event takes the
// same path through Service.AuditDeferred as in the server, not the
// goroutine AuditDeferred starts for a sink without AppendDeferred. And it
// is a broker.BoundedAuditSink: the use event's bounded wait takes the
// server's path through Service.Audit, not the goroutine Service.Audit
// starts for a sink without AppendWithin.
type discardSink struct{}

func (discardSink) Append(ctx context.Context, ev *audit.Event) error { return nil }

// AppendWithin reports success at once.
func (discardSink) AppendWithin(ev *audit.Event, d time.Duration) error { return nil }

// AppendDeferred reports success at once (auditfile.Sink reports it from
// its writer goroutine once the event is durable).
func (discardSink) AppendDeferred(ev *audit.Event, done func(error)) {
	if done != nil {
		done(nil)
	}
}

var (
	_ broker.DeferredAuditSink = discardSink{}
	_ broker.BoundedAuditSink  = discardSink{}
)

// seenRequest is what the upstream recorded of one request.
type seenRequest struct {
	Method  string
	Path    string
	RawPath string
	Query   string
	Host    string
	Header  http.Header
	Trailer http.Header // announced names and received values, once the body was read
}

// upstream is the real HTTPS upstream of the tests.
type upstream struct {
	srv  *httptest.Server
	hits atomic.Int64
	mu   sync.Mutex
	last *seenRequest
	hold *hold // of /up/hold (see holdRequest)
}

// hold is what the test controls of a request to /up/hold: it answers
// with holdFirst (or ?first's value; flushed; as a text/plain body of
// length ?length when set; with each ?ce as a Content-Encoding line; with ?headers=late, nothing, not even the status), then waits until the test closes release (and sends
// holdSecond, or ?second's value) or the request ends (and closes gone).
type hold struct {
	arrived chan struct{} // closed when the request arrived
	release chan struct{}
	gone    chan struct{}
	let     sync.Once // closes release
}

// letGo releases the held request.
func (h *hold) letGo() { h.let.Do(func() { close(h.release) }) }

const (
	holdFirst  = "data: first\n\n"
	holdSecond = "data: second\n\n"
)

// holdRequest arms /up/hold for one request. The request is released when
// the test ends.
func (u *upstream) holdRequest(tb testing.TB) *hold {
	h := &hold{arrived: make(chan struct{}), release: make(chan struct{}), gone: make(chan struct{})}
	u.mu.Lock()
	u.hold = h
	u.mu.Unlock()
	tb.Cleanup(h.letGo)
	return h
}

func (u *upstream) Hits() int64 { return u.hits.Load() }

func (u *upstream) Last() *seenRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.last
}

func (u *upstream) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	u.hits.Add(1)
	seen := &seenRequest{Method: r.Method, Path: r.URL.Path, RawPath: r.URL.RawPath, Query: r.URL.RawQuery, Host: r.Host, Header: r.Header.Clone()}
	u.mu.Lock()
	u.last = seen
	u.mu.Unlock()
	_, _ = io.Copy(io.Discard, r.Body)
	u.mu.Lock()
	seen.Trailer = r.Trailer.Clone()
	u.mu.Unlock()
	switch {
	case r.URL.Path == "/echo/ranged":
		// Echo the injected Authorization in a body served with Range
		// support (single ranges and multipart/byteranges), as file and
		// blob servers do.
		http.ServeContent(w, r, "", time.Time{}, strings.NewReader(rangedPrefix+r.Header.Get("Authorization")+"\n"))
	case strings.HasPrefix(r.URL.Path, "/echo"):
		// Echo the request headers, the way debugging endpoints and some
		// error pages do.
		status := http.StatusOK
		if r.URL.Path == "/echo/error" {
			status = http.StatusBadRequest
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(map[string]any{"error": "echo", "headers": r.Header})
	case r.URL.Path == "/up/redirect-away":
		http.Redirect(w, r, r.URL.Query().Get("to"), http.StatusFound)
	case r.URL.Path == "/up/redirect-leak":
		w.Header().Set("Location", r.URL.Query().Get("to")+"?key="+strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
		w.WriteHeader(http.StatusFound)
	case r.URL.Path == "/up/header-leak":
		w.Header().Set("X-Debug-Auth", r.Header.Get("Authorization"))
		w.Header().Set("X-Fine", "kept")
		w.Header().Set("X-Request-Id", "upstream-own-id")
		_, _ = io.WriteString(w, "ok")
	case r.URL.Path == "/up/early-hints":
		// A 103 Early Hints interim response with a header of its own,
		// then the final response without it.
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		w.Header().Del("Link")
		w.Header().Set("X-Fine", "kept")
		_, _ = io.WriteString(w, "ok")
	case r.URL.Path == "/up/trailer-announced", r.URL.Path == "/up/trailer-unannounced":
		// Trailers after a flushed body: one echoing the injected
		// Authorization, one harmless. Announced ones are declared in a
		// Trailer header; unannounced ones use http.TrailerPrefix.
		prefix := http.TrailerPrefix
		if r.URL.Path == "/up/trailer-announced" {
			w.Header().Set("Trailer", "X-Debug-Auth, X-Fine-Trailer")
			prefix = ""
		}
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "body")
		w.(http.Flusher).Flush()
		w.Header().Set(prefix+"X-Debug-Auth", r.Header.Get("Authorization"))
		w.Header().Set(prefix+"X-Fine-Trailer", "harmless")
	case r.URL.Path == "/up/request-ids":
		// Each query parameter is a response header to send (a value
		// "{use}" is the X-Request-Id the broker sent, "{secret}" the
		// injected key), as APIs return their own request ids.
		for name, vs := range r.URL.Query() {
			for _, v := range vs {
				switch v {
				case "{use}":
					v = r.Header.Get("X-Request-Id")
				case "{secret}":
					v = strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ")
				}
				w.Header().Add(name, v)
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"id":"ch_1"}`)
	case r.URL.Path == "/up/echo-as":
		// Echo the injected key as one of the escapings real encoders
		// apply (query parameter enc, see echoEncodings), in a response
		// header and in the body.
		enc := echoEncodings[r.URL.Query().Get("enc")](strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer "))
		w.Header().Set("X-Echo", enc)
		w.Header().Set("Content-Type", "text/html")
		_, _ = io.WriteString(w, "<p>key: "+enc+"</p>")
	case r.URL.Path == "/up/big":
		w.Header().Set("Content-Length", fmt.Sprint(maxRespBytes+1))
		_, _ = w.Write([]byte(strings.Repeat("x", maxRespBytes+1)))
	case r.URL.Path == "/up/stream-big":
		f := w.(http.Flusher)
		for range 8 {
			_, _ = w.Write([]byte(strings.Repeat("y", 1024)))
			f.Flush()
		}
	case r.URL.Path == "/up/events":
		// One server-sent event, then nothing until the caller goes away
		// (a quiet event stream).
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: first\n\n")
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	case r.URL.Path == "/up/encoded":
		// The request headers (the injected Authorization among them; or,
		// with clean set, cleanText), encoded as the query says (as, see
		// encodeAs), labelled with each ce as one Content-Encoding line,
		// each etag as one ETag line, digestHeaders if digests is set,
		// with status (default 200) and with
		// its length unless stream is set (then chunked; with hold set,
		// the body waits for the test, see holdRequest), its first half
		// only if cut is set, followed by pad as it is (trailing bytes
		// after the encoded body: a newline, zero padding): an upstream
		// that compresses whatever it was asked for, as httpbin's /gzip
		// does.
		q := r.URL.Query()
		var plain bytes.Buffer
		_ = json.NewEncoder(&plain).Encode(map[string]any{"headers": r.Header})
		if q.Get("clean") != "" {
			plain.Reset()
			plain.WriteString(cleanText)
		}
		body := encodeAs(q.Get("as"), plain.Bytes())
		if q.Get("cut") != "" {
			body = body[:len(body)/2]
		}
		body = append(body, q.Get("pad")...)
		for _, ce := range q["ce"] {
			w.Header().Add("Content-Encoding", ce)
		}
		for _, et := range q["etag"] {
			w.Header().Add("ETag", et)
		}
		if q.Get("digests") != "" {
			// Integrity fields of the body as sent (made-up values).
			for _, name := range digestHeaders {
				w.Header().Set(name, "sha-256=:AAAA:")
			}
		}
		if q.Get("stream") == "" {
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		}
		status := http.StatusOK
		if s := q.Get("status"); s != "" {
			status, _ = strconv.Atoi(s)
		}
		w.WriteHeader(status)
		if q.Get("stream") != "" {
			w.(http.Flusher).Flush() // chunked, however short the body
		}
		if q.Get("hold") != "" {
			// The body once the test lets it go (see holdRequest).
			u.mu.Lock()
			h := u.hold
			u.mu.Unlock()
			close(h.arrived)
			select {
			case <-h.release:
			case <-r.Context().Done():
				close(h.gone)
				return
			}
		}
		_, _ = w.Write(body)
	case r.URL.Path == "/up/gzipped":
		// A fixed gzipped JSON body (benchmarks: the upstream's own cost
		// stays out of the proxy's allocations).
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Set("Content-Length", strconv.Itoa(len(gzippedBody)))
		_, _ = w.Write(gzippedBody)
	case r.URL.Path == "/up/hold":
		u.mu.Lock()
		h := u.hold
		u.mu.Unlock()
		close(h.arrived)
		late := r.URL.Query().Get("headers") == "late"
		if !late {
			first := holdFirst
			if v := r.URL.Query().Get("first"); v != "" {
				first = v
			}
			w.Header().Set("Content-Type", "text/event-stream")
			for _, ce := range r.URL.Query()["ce"] {
				// Labelled as ?first and ?second are encoded.
				w.Header().Add("Content-Encoding", ce)
			}
			if n := r.URL.Query().Get("length"); n != "" {
				// A body of declared length (not an event stream).
				w.Header().Set("Content-Type", "text/plain")
				w.Header().Set("Content-Length", n)
			}
			_, _ = io.WriteString(w, first)
			w.(http.Flusher).Flush()
		}
		select {
		case <-h.release:
			second := holdSecond
			if v, ok := r.URL.Query()["second"]; ok {
				second = v[0]
			}
			_, _ = io.WriteString(w, second)
		case <-r.Context().Done():
			close(h.gone)
			if late {
				panic(http.ErrAbortHandler) // still no answer, not an empty 200
			}
		}
	case r.URL.Path == "/up/hang":
		<-r.Context().Done() // until the proxy gives up
		// Still no answer: returning would have the server write an empty
		// 200, which a proxy whose cancellation is slow under load could
		// read as the upstream's answer.
		panic(http.ErrAbortHandler)
	case r.URL.Path == "/up/switch":
		w.Header().Set("Upgrade", "h2c")
		w.Header().Set("Connection", "Upgrade")
		w.WriteHeader(http.StatusSwitchingProtocols)
	default:
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"object":"list","data":[]}`)
	}
}

// digestHeaders are the integrity fields /up/encoded sends with digests set.
var digestHeaders = []string{"Content-Digest", "Repr-Digest", "Digest", "Content-Md5"}

// cleanText is what /up/encoded encodes when asked for a clean body.
var cleanText = strings.Repeat("a log line without any secret in it\n", 20)

// gzippedBody is what /up/gzipped serves: about 2 KB of JSON, gzipped.
var gzippedBody = encodeAs("gzip", []byte(`{"object":"list","data":[`+strings.Repeat(`{"id":"ch_1","amount":100,"currency":"eur"},`, 47)+`{}]}`))

// rangedPrefix starts the body of /echo/ranged, before the echoed
// Authorization header.
const rangedPrefix = "debug: authorization="

// fixture is a broker with the proxy mounted, a real HTTPS upstream and an
// "evil" server that must never be reached.
type fixture struct {
	clk      *clock
	store    *memstore.Store
	cache    *broker.RevocationCache // in front of store when fixtureOpts.cache is set
	sink     *notifySink
	svc      *broker.Service
	proxy    *proxy.Proxy
	broker   *httptest.Server
	addr     string
	client   *http.Client
	up       *upstream
	evil     *upstream
	secrets  *secrets
	mem      *memSecrets // the proxy's secret source when fixtureOpts.fastReads is set
	registry *prometheus.Registry
	notify   bool // events reach f.sink (false when fixtureOpts.audit is set)
	// The policy in force (the Service's and the proxy's), the text it was
	// parsed from and the upstream's CA bundle its grants name: reload
	// parses the text again, as keytrail server's reload does.
	pol     atomic.Pointer[policies.Policy]
	polText string
	caFile  string
}

type fixtureOpts struct {
	ratePerSecond float64
	burst         int
	proxyRate     string           // the workload's proxy_rate line, e.g. "proxy_rate: {per_second: 1, burst: 2}"
	audit         broker.AuditSink // default: the notifying sink
	timeouts      proxy.Timeouts
	logs          *brokertest.SyncBuffer // receives the broker's log lines (default: discarded)
	http2         bool                   // the upstream speaks HTTP/2 (as most HTTPS APIs do) besides HTTP/1.1
	cache         bool                   // the Service's store is a RevocationCache's, as keytrail server wires it
	// fastReads is cache with FastReads, refreshed once, and the secret
	// source answering from memory (memSecrets): the lookups of a proxied
	// request answered as keytrail server answers them (its Redis store
	// behind a RevocationCache with FastReads, Vault KV behind KVSecrets'
	// cache).
	fastReads bool
	// auditTimeout is the Service's AuditTimeout (default: the Service's).
	auditTimeout time.Duration
	// refusalLimits are the Service's RefusalLimits (default: none).
	refusalLimits *broker.RefusalLimits
}

func newFixture(tb testing.TB, fo fixtureOpts) *fixture {
	tb.Helper()
	if fo.ratePerSecond == 0 {
		fo.ratePerSecond, fo.burst = 1e6, 1e6
	}
	f := &fixture{
		clk:      &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)},
		up:       &upstream{},
		evil:     &upstream{},
		secrets:  &secrets{},
		registry: prometheus.NewRegistry(),
		sink:     &notifySink{Sink: &brokertest.Sink{}, appended: make(chan string, 1024)},
	}
	f.up.srv = httptest.NewUnstartedServer(f.up)
	f.up.srv.EnableHTTP2 = fo.http2
	f.up.srv.StartTLS()
	tb.Cleanup(f.up.srv.Close)
	f.evil.srv = httptest.NewTLSServer(f.evil)
	tb.Cleanup(f.evil.srv.Close)

	caFile := filepath.Join(tb.TempDir(), "upstream-ca.pem")
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: f.up.srv.Certificate().Raw})
	if err := os.WriteFile(caFile, caPEM, 0o600); err != nil {
		tb.Fatal(err)
	}
	f.caFile = caFile
	f.polText = fmt.Sprintf(policyTemplate, fo.ratePerSecond, fo.burst, f.up.srv.URL, caFile, "    "+fo.proxyRate)
	f.reload(tb, false)

	f.store = memstore.New(f.clk.Now)
	minter, err := proxy.NewMinter(proxy.MinterOptions{PublicURL: "https://keytrail.example"})
	if err != nil {
		tb.Fatal(err)
	}
	var sink broker.AuditSink = f.sink
	f.notify = fo.audit == nil
	if !f.notify {
		sink = fo.audit
	}
	var svcStore broker.Store = f.store
	if fo.cache || fo.fastReads {
		f.cache, err = broker.NewRevocationCache(f.store, broker.CacheOptions{Now: f.clk.Now, FastReads: fo.fastReads})
		if err != nil {
			tb.Fatal(err)
		}
		if fo.fastReads {
			// The clock stands still: the view stays fresh.
			if err := f.cache.Refresh(context.Background()); err != nil {
				tb.Fatal(err)
			}
		}
		svcStore = f.cache.Store()
	}
	authn := brokertest.Authn{identityToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "repo:acme/payments",
		JTI: "jti-1", Claims: map[string]any{"sub": "repo:acme/payments"}},
		actorToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "user:carol", JTI: "jti-carol",
			Expiry: f.clk.Now().Add(time.Hour), Claims: map[string]any{"sub": "user:carol"}}}
	f.svc, err = broker.NewService(broker.Deps{
		Policy:   f.pol.Load,
		Authn:    func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindProxy: minter},
		Revokers: map[string]broker.Revoker{broker.KindProxy: minter},
		Store:    svcStore,
		Audit:    sink,
		Now:      f.clk.Now,

		AuditTimeout:  fo.auditTimeout,
		RefusalLimits: fo.refusalLimits,
	})
	if err != nil {
		tb.Fatal(err)
	}

	logger := slog.New(slog.DiscardHandler)
	if fo.logs != nil {
		logger = slog.New(slog.NewTextHandler(fo.logs, nil))
	}

	f.broker = httptest.NewUnstartedServer(nil)
	f.addr = f.broker.Listener.Addr().String()
	var secretSrc broker.SecretSource = f.secrets
	if fo.fastReads {
		f.mem = &memSecrets{src: f.secrets}
		secretSrc = f.mem
	}
	f.proxy, err = proxy.New(proxy.Options{
		Service:          f.svc,
		Secrets:          secretSrc,
		Hosts:            []string{f.addr},
		MaxRequestBytes:  maxReqBytes,
		MaxResponseBytes: maxRespBytes,
		Registerer:       f.registry,
		Timeouts:         fo.timeouts,
		Logger:           logger,
	})
	if err != nil {
		tb.Fatal(err)
	}
	api, err := httpapi.New(httpapi.Options{
		Service: f.svc, PublicURL: "https://keytrail.example", Registry: f.registry,
		// The tests' requests come from loopback, as from a front proxy.
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")},
		Extra:          f.proxy.Register, Logger: logger,
	})
	if err != nil {
		tb.Fatal(err)
	}
	f.broker.Config.Handler = api.Routes()
	f.broker.Start()
	tb.Cleanup(f.broker.Close)
	tb.Cleanup(f.proxy.CloseIdleConnections)
	f.client = &http.Client{
		Transport:     &http.Transport{MaxIdleConnsPerHost: 64},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	tb.Cleanup(f.client.CloseIdleConnections)
	return f
}

// reload puts in force a new policy parsed from the fixture's policy text,
// whose CheckFiles has run when check is set (keytrail server runs it at
// every load), and returns it.
func (f *fixture) reload(tb testing.TB, check bool) *policies.Policy {
	tb.Helper()
	pol, err := policies.Parse("p.yaml", []byte(f.polText))
	if err != nil {
		tb.Fatalf("policy: %v", err)
	}
	if check {
		if _, err := pol.CheckFiles(f.clk.Now()); err != nil {
			tb.Fatalf("policy CheckFiles: %v", err)
		}
	}
	f.pol.Store(pol)
	return pol
}

// credential exchanges the identity token for a proxy credential of grant.
func (f *fixture) credential(tb testing.TB, grant string) *broker.ExchangeResult {
	tb.Helper()
	res, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{
		SubjectToken: identityToken, Grant: grant,
		Source: broker.Source{IP: "127.0.0.1"}, RequestID: "req_exchange",
	})
	if err != nil {
		tb.Fatalf("Exchange(%s) = %v", grant, err)
	}
	if f.notify { // drain the issue event's notification
		f.waitEvent(tb, audit.TypeIssue)
	}
	return res
}

// waitEvent waits until an event of type typ was appended.
func (f *fixture) waitEvent(tb testing.TB, typ string) {
	tb.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case got := <-f.sink.appended:
			if got == typ {
				return
			}
		case <-timeout:
			tb.Fatalf("no %s audit event within 10s; events: %v", typ, f.sink.Types())
		}
	}
}

// response is a response read in full.
type response struct {
	Status  int
	Header  http.Header
	Body    string
	Trailer http.Header // announced trailer names and every trailer received
	Err     error       // error reading the body
}

// raw returns the whole response as text, trailers included, for secret
// scans.
func (r *response) raw() string {
	var b strings.Builder
	_ = r.Header.Write(&b)
	b.WriteString(r.Body)
	if len(r.Trailer) != 0 {
		b.WriteString("\n")
		_ = r.Trailer.Write(&b)
	}
	return b.String()
}

// do sends a request through the broker.
func (f *fixture) do(tb testing.TB, method, path string, hdr http.Header, body io.Reader) *response {
	tb.Helper()
	req, err := http.NewRequest(method, "http://"+f.addr+path, body)
	if err != nil {
		tb.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	res, err := f.client.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, rerr := io.ReadAll(res.Body)
	return &response{Status: res.StatusCode, Header: res.Header, Body: string(b), Trailer: res.Trailer, Err: rerr}
}

// rawRequest writes a request exactly as given (header lines joined with
// CRLF, then the body) on a new connection and reads the response.
func (f *fixture) rawRequest(tb testing.TB, lines []string, body string) *response {
	tb.Helper()
	conn, err := net.Dial("tcp", f.addr)
	if err != nil {
		tb.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(conn, strings.Join(lines, "\r\n")+"\r\n\r\n"+body); err != nil {
		tb.Fatal(err)
	}
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		tb.Fatalf("reading response to %q: %v", lines[0], err)
	}
	defer res.Body.Close()
	b, rerr := io.ReadAll(res.Body)
	return &response{Status: res.StatusCode, Header: res.Header, Body: string(b), Trailer: res.Trailer, Err: rerr}
}

func bearer(tok string) http.Header {
	return http.Header{"Authorization": {"Bearer " + tok}}
}

// eventsOf returns the recorded events of one type.
func (f *fixture) eventsOf(typ string) []*audit.Event {
	var out []*audit.Event
	for _, ev := range f.sink.Events() {
		if ev.Type == typ {
			out = append(out, ev)
		}
	}
	return out
}

// oauthError decodes an OAuth error body.
func oauthError(tb testing.TB, body string) (code string) {
	tb.Helper()
	var e struct {
		Error     string `json:"error"`
		RequestID string `json:"request_id"`
	}
	if err := json.Unmarshal([]byte(body), &e); err != nil {
		tb.Fatalf("error body %q is not JSON: %v", body, err)
	}
	if e.RequestID == "" {
		tb.Errorf("error body %q has no request_id", body)
	}
	return e.Error
}

func eventJSON(tb testing.TB, v any) string {
	tb.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// leaks reports whether s carries the upstream secret raw, URL-encoded or
// JSON-escaped.
func leaks(s string) bool {
	for _, form := range []string{upstreamKey, url.QueryEscape(upstreamKey), url.PathEscape(upstreamKey), `sk_live_51HxUpstreamSharedSecret/+\u0026key`} {
		if strings.Contains(s, form) {
			return true
		}
	}
	return false
}
