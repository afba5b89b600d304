package client

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"weak"
)

// maxStatusText bounds how much of an answer's status line (untrusted text
// of whatever answered) an error repeats.
const maxStatusText = 200

// ProxyError is an answer of an HTTP proxy (HTTPS_PROXY, HTTP_PROXY) in
// place of the broker's: its answer to CONNECT other than 200 (it refused
// the tunnel to an https broker), or, to a plain-http broker, whose request
// the proxy forwards itself, an answer of its own: a 407 (only a proxy
// answers that), or a 3xx, 4xx or 5xx without the X-Request-Id every answer
// of the broker carries (SPEC "HTTP API"). An answer with X-Request-Id is
// the broker's, forwarded, and is an *Error.
type ProxyError struct {
	Proxy      string        // the proxy's host:port, never its URL's user info
	Status     int           // HTTP status of the proxy's answer
	StatusLine string        // its status line ("407 Proxy Authentication Required"), control characters replaced, clipped
	Forwarding bool          // a plain-http request the proxy was to forward, not a CONNECT
	RetryAfter time.Duration // its Retry-After (429, 503), bounded as the broker's; 0 when absent

	// HTTPSPort: the proxy URL says http:// but the proxy's port speaks
	// TLS (an https proxy): it answered the plain-http request it was to
	// forward as net/http does plain HTTP on a TLS port, a bare "HTTP/1.0
	// 400 Bad Request" without any header and "Client sent an HTTP
	// request to an HTTPS server.". The proxy URL's scheme should be
	// https://. Forwarding is then true.
	HTTPSPort bool

	// The refused CONNECT's Retry-After and Date, for Exchange to measure
	// (net/http calls OnProxyConnectResponse without the client's clock).
	retryAfter, date string
}

func (e *ProxyError) Error() string {
	if e.HTTPSPort {
		return fmt.Sprintf("the proxy at %s answered that it speaks https (400 %s): write the proxy URL with https:// (https://%s)", e.Proxy, httpsPortAnswer, e.Proxy)
	}
	refused := "refused the tunnel to"
	if e.Forwarding {
		refused = "refused to forward the request to"
	}
	return fmt.Sprintf("the proxy at %s %s the keytrail broker: it answered %s", e.Proxy, refused, e.StatusLine)
}

// Temporary reports whether retrying later can help, as for the broker's
// own answers: a 5xx (the proxy could not reach the broker), 408 or 429.
// A 407 (the proxy's credentials, in the proxy URL, missing or wrong), a
// 403 (its rules), another 4xx or a 3xx (a redirect, say to a captive
// portal) stays until the configuration changes.
func (e *ProxyError) Temporary() bool {
	return e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout || e.Status >= 500
}

// newProxyError builds the ProxyError of the proxy at proxy for its answer
// res; Exchange sets RetryAfter (setRetryAfter).
func newProxyError(proxy *url.URL, res *http.Response, forwarding bool) *ProxyError {
	status := res.Status
	if status == "" {
		status = fmt.Sprint(res.StatusCode)
	}
	// proxy.Host: host:port, never the user info.
	e := &ProxyError{Proxy: clip(proxy.Host, 100), Status: res.StatusCode, StatusLine: clip(status, maxStatusText), Forwarding: forwarding}
	if res.StatusCode == http.StatusTooManyRequests || res.StatusCode == http.StatusServiceUnavailable {
		e.retryAfter, e.date = res.Header.Get("Retry-After"), res.Header.Get("Date")
	}
	return e
}

// setRetryAfter measures the proxy's Retry-After as the broker's is, for a
// request sent at sent.
func (e *ProxyError) setRetryAfter(sent time.Time) {
	e.RetryAfter = retryAfter(http.Header{"Retry-After": {e.retryAfter}, "Date": {e.date}}, sent)
}

// retryAfter is the Retry-After of an answer with headers h: an HTTP-date
// is a time on the answering server's clock, measured from its Date (so
// that a workload clock off by minutes neither skips the wait nor
// stretches it), else from sent.
func retryAfter(h http.Header, sent time.Time) time.Duration {
	ref := sent
	if d, err := http.ParseTime(h.Get("Date")); err == nil {
		ref = d
	}
	return ParseRetryAfter(h.Get("Retry-After"), ref)
}

// proxyAware is what New makes of the caller's transport: for an
// *http.Transport (net/http's default one when none is given) with a Proxy
// function, a copy whose refused CONNECT is a *ProxyError (net/http's own
// error is the bare status text, "Proxy Authentication Required", which
// reads as the broker's), and its Proxy function, to tell a forwarding
// proxy's own answer from the broker's. Clients over the same transport
// share one copy (sharedCopy), and with it its idle connections, as they
// would share the transport. A transport without a Proxy function never
// meets a proxy and is used as it is, as is one with its own
// OnProxyConnectResponse, or another RoundTripper (the latter with no
// proxy known).
func proxyAware(rt http.RoundTripper) (http.RoundTripper, func(*http.Request) (*url.URL, error)) {
	if rt == nil {
		rt = http.DefaultTransport
	}
	t, ok := rt.(*http.Transport)
	if !ok {
		return rt, nil
	}
	if t.Proxy != nil && t.OnProxyConnectResponse == nil {
		t = sharedCopy(t)
	}
	return t, t.Proxy
}

// copies maps a caller's transport to the copy (withConnectRefusal) that
// Clients over it share. Both are held weakly: a Client holds its copy,
// and the copy's idle connections hold it too (their goroutines refer to
// it), so that a copy is shared for as long as it is in use, and the map
// keeps neither alive, even when the caller's Proxy function refers to its
// transport. An entry goes when the caller's transport is collected.
var copies struct {
	sync.Mutex
	m map[weak.Pointer[http.Transport]]weak.Pointer[http.Transport]
}

// sharedCopy is the copy of t that Clients over t share, made when none is
// in use.
func sharedCopy(t *http.Transport) *http.Transport {
	key := weak.Make(t)
	copies.Lock()
	defer copies.Unlock()
	cp, known := copies.m[key]
	if c := cp.Value(); c != nil {
		return c
	}
	if !known {
		if copies.m == nil {
			copies.m = make(map[weak.Pointer[http.Transport]]weak.Pointer[http.Transport])
		}
		runtime.AddCleanup(t, forgetCopy, key)
	}
	c := withConnectRefusal(t)
	copies.m[key] = weak.Make(c)
	return c
}

func forgetCopy(key weak.Pointer[http.Transport]) {
	copies.Lock()
	defer copies.Unlock()
	delete(copies.m, key)
}

// withConnectRefusal is a copy of t whose refused CONNECT is a *ProxyError.
func withConnectRefusal(t *http.Transport) *http.Transport {
	t = t.Clone()
	t.OnProxyConnectResponse = func(_ context.Context, proxy *url.URL, _ *http.Request, res *http.Response) error {
		if res.StatusCode == http.StatusOK {
			return nil
		}
		return newProxyError(proxy, res, false)
	}
	return t
}

// proxyFor is the proxy the transport sends req through (its Proxy
// function's answer), or nil: none, or unknown (not an *http.Transport).
func (c *Client) proxyFor(req *http.Request) *url.URL {
	if c.proxy == nil {
		return nil
	}
	p, err := c.proxy(req)
	if err != nil {
		return nil
	}
	return p
}

// proxyAnswer is the error for resp, the answer to req sent through the
// proxy via (nil: none, or unknown), when it is not the broker's, else
// nil. Only a plain-http request through an HTTP proxy (http:// or
// https://) can get the proxy's own answer, the proxy forwarding the
// request itself (through a SOCKS proxy, or tunnelled by CONNECT, the
// answer is the broker's; a refused CONNECT is Do's error). Of those
// answers:
//
//	answer                                                 is
//	2xx; or with X-Request-Id, other than 407              the broker's (nil)
//	400 "Client sent an HTTP request to an HTTPS server.",
//	  with headers                                         the broker's port speaking TLS, forwarded: ErrHTTPSPort
//	  without any header                                   the proxy's own port speaking TLS: *ProxyError, HTTPSPort
//	any other 3xx, 4xx or 5xx                              the proxy's: *ProxyError
//
// net/http writes its answer to plain HTTP on a TLS port with no header at
// all; a proxy's framing adds headers to what it forwards, and to its own
// answers. (net/http's TLS port answers no CONNECT so: it closes the
// connection, see transportError.)
func (c *Client) proxyAnswer(req *http.Request, via *url.URL, resp *http.Response, sent time.Time) error {
	forwarded := via != nil && req.URL.Scheme == "http" && (via.Scheme == "http" || via.Scheme == "https")
	if !forwarded || resp.StatusCode < 300 || (resp.StatusCode != http.StatusProxyAuthRequired && resp.Header.Get("X-Request-Id") != "") {
		return nil
	}
	tlsPort := resp.StatusCode == http.StatusBadRequest && bytes.HasPrefix(readPrefix(resp.Body, len(httpsPortAnswer)), []byte(httpsPortAnswer))
	if tlsPort && len(resp.Header) > 0 {
		return c.httpsPortError()
	}
	pe := newProxyError(via, resp, true)
	pe.HTTPSPort = tlsPort
	pe.setRetryAfter(sent)
	return pe
}

// traceHandshakes is req with a trace (added to any of the caller's)
// counting its TLS handshakes, for transportError to tell a failure at the
// proxy via from the broker's, and h to read the count from; or req as it
// is and a nil h, when the count would not tell: without a proxy, through
// a SOCKS proxy, through an http proxy to a plain-http broker (no TLS at
// all), or through an https proxy whose handshake net/http does not trace
// (proxyTLSTraced).
// Through an http proxy to an https broker, the broker's handshake begins
// once the proxy has answered CONNECT (net/http uses no TLS dialer of the
// transport's there): traced whatever the transport.
func (c *Client) traceHandshakes(req *http.Request, via *url.URL) (*http.Request, *handshakes) {
	if via == nil || !(via.Scheme == "https" && c.proxyTLSTraced || via.Scheme == "http" && req.URL.Scheme == "https") {
		return req, nil
	}
	h := new(handshakes)
	ctx := httptrace.WithClientTrace(req.Context(), &httptrace.ClientTrace{
		TLSHandshakeStart: func() { h.started.Add(1) },
		GotConn:           func(httptrace.GotConnInfo) { h.gotConn.Store(true) },
	})
	return req.WithContext(ctx), h
}

// handshakes is what traceHandshakes learns of a request's connections:
// through an https proxy, the proxy's TLS handshake, then, for an https
// broker, the broker's in the tunnel. With none, the connection was one
// already open.
type handshakes struct {
	// started counts the TLS handshakes begun by the dials made for the
	// request. net/http goes on with a dial when the request takes
	// another connection (one a dial for another request made), and
	// the dial's handshakes count for the request all the same.
	started atomic.Int32
	// gotConn: the request got a connection (the broker's TLS, for an
	// https broker, is then in place, whatever dial made it).
	gotConn atomic.Bool
}

// transportError is Exchange's error for err, net/http's failure of req
// (sent at sent) through the proxy via (nil: none, or unknown), whose TLS
// handshakes h counted (nil: not counted, traceHandshakes). net/http wraps
// a failure at the proxy in a *net.OpError "proxyconnect" without the
// proxy's address, and some in nothing that says they were the proxy's.
// Those are made a "proxyconnect" naming the proxy by host:port, P (never
// its URL's user info):
//
//	proxy  broker  h                       err                               is
//	any    any     -                       a refused CONNECT: *ProxyError    that *ProxyError, its Retry-After measured
//	https  http    1 begun                 a TLS alert received              proxyconnect tcp P: the https proxy refused the TLS connection: <alert>
//	https  https   1 begun, no connection  a TLS alert received              the same
//	http   https   none, no connection     EOF, and no *net.OpError          proxyconnect tcp P: ErrConnectUnanswered (<EOF>); ...
//	any    any     -                       proxyconnect without an address   proxyconnect tcp P: <its cause>
//	anything else (the broker's failures; a failed dial names its address)   as it is
//
// all after "keytrail broker unreachable: ", as *url.Error shows it.
//
// A TLS alert the https proxy sent during the handshake (TLS 1.2) net/http
// wraps as "proxyconnect" itself; a TLS 1.3 server refusing the client's
// certificate sends its alert after the client's side of the handshake,
// read as the answer to CONNECT (or to the forwarded request). With one
// handshake begun, only the proxy's can have sent it: for an https broker,
// the broker's handshake ends the dial that gets the request a connection.
//
// An http proxy that closed the connection without answering CONNECT left
// net/http's bare io.ErrUnexpectedEOF, which read as the broker's: with no
// connection got and no handshake begun (the broker's begins in the
// tunnel), the failure was at the proxy. An https proxy named with http://
// in its URL does this (a Go TLS server answers a CONNECT in plain text by
// closing the connection), as does a proxy that stopped: it stays
// transient.
func transportError(req *http.Request, via *url.URL, h *handshakes, err error, sent time.Time) error {
	var pe *ProxyError
	if errors.As(err, &pe) {
		pe.setRetryAfter(sent)
		return pe
	}
	// *url.Error names the URL, never the body; still, say only what
	// happened at the transport.
	return fmt.Errorf("keytrail broker unreachable: %w", scrubURLError(atProxy(req, via, h, err)))
}

// atProxy is err named as a failure at the proxy via where it was one (see
// transportError).
func atProxy(req *http.Request, via *url.URL, h *handshakes, err error) error {
	var ue *url.Error
	if via == nil || !errors.As(err, &ue) {
		return err
	}
	var cause error
	switch {
	case h == nil:
	case via.Scheme == "https" && h.started.Load() == 1 && (req.URL.Scheme == "http" || !h.gotConn.Load()):
		if alert := remoteAlert(err); alert != nil {
			cause = &proxyTLSError{alert}
		}
	case via.Scheme == "http" && h.started.Load() == 0 && !h.gotConn.Load():
		var op *net.OpError
		if (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF)) && !errors.As(err, &op) {
			cause = &noConnectAnswer{ue.Err}
		}
	}
	if cause == nil {
		op, ok := ue.Err.(*net.OpError)
		var dial *net.OpError
		if !ok || op.Op != "proxyconnect" || op.Addr != nil || errors.As(op.Err, &dial) && dial.Addr != nil {
			return err
		}
		cause = op.Err
	}
	// As net/http makes it, with the address.
	return &url.Error{Op: ue.Op, URL: ue.URL, Err: &net.OpError{Op: "proxyconnect", Net: "tcp", Addr: proxyAddr(via), Err: cause}}
}

// ErrConnectUnanswered is wrapped by the error of an http proxy
// (HTTPS_PROXY=http://...) that closed the connection without answering
// CONNECT, for an https broker, in a *net.OpError "proxyconnect" with
// the proxy's host:port. An https proxy whose URL says http:// does that
// (net/http's TLS server answers no CONNECT in plain text), as does a
// proxy stopping: it is transient.
var ErrConnectUnanswered = errors.New("the proxy closed the connection without answering CONNECT")

// noConnectAnswer is the EOF of an http proxy that closed the connection
// without answering CONNECT (ErrConnectUnanswered), in the *net.OpError
// "proxyconnect" naming the proxy.
type noConnectAnswer struct{ err error }

func (e *noConnectAnswer) Is(target error) bool { return target == ErrConnectUnanswered }

func (e *noConnectAnswer) Error() string {
	return ErrConnectUnanswered.Error() + " (" + e.err.Error() + "); a proxy that speaks https needs https:// in its URL"
}

func (e *noConnectAnswer) Unwrap() error { return e.err }

// proxyTLSError is a TLS alert of an https proxy, in the *net.OpError
// "proxyconnect" naming it: "proxyconnect tcp 10.0.0.5:3128: the https
// proxy refused the TLS connection: remote error: tls: certificate
// required".
type proxyTLSError struct{ alert error }

func (e *proxyTLSError) Error() string {
	return "the https proxy refused the TLS connection: " + e.alert.Error()
}

func (e *proxyTLSError) Unwrap() error { return e.alert }

// proxyTLSTraced reports whether the transport rt reports its TLS
// handshake with an https proxy to the request's trace, so that
// traceHandshakes counts it: an *http.Transport without a TLS dialer of
// its own (DialTLSContext, DialTLS). net/http dials an https proxy with
// that dialer and traces a handshake only when it returns a *tls.Conn; a
// connection it wraps has its handshake untraced, and the broker's in the
// tunnel would be counted as the only one, the proxy's.
func proxyTLSTraced(rt http.RoundTripper) bool {
	t, ok := rt.(*http.Transport)
	return ok && t.DialTLSContext == nil && t.DialTLS == nil //nolint:staticcheck // DialTLS is a TLS dialer too
}

// proxyAddr is the host:port of the proxy at u (net/http's default port
// for its scheme when it has none).
func proxyAddr(u *url.URL) net.Addr {
	port := u.Port()
	if port == "" {
		port = "443"
		if u.Scheme == "http" {
			port = "80"
		}
	}
	return hostPort(net.JoinHostPort(u.Hostname(), port))
}

type hostPort string

func (hostPort) Network() string  { return "tcp" }
func (a hostPort) String() string { return string(a) }
