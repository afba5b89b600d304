package client

import (
	"bufio"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"testing"
	"time"
	"unicode"

	"github.com/keytrail/keytrail/broker/brokertest"
)

// answering is an HTTP server that answers every request (CONNECT
// included) with status and header, and no X-Request-Id unless header has
// one: a proxy's (or an ingress's) own answer.
func answering(t *testing.T, status int, header map[string]string) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range header {
			w.Header().Set(k, v)
		}
		w.WriteHeader(status)
	}))
	t.Cleanup(srv.Close)
	return srv
}

// through is an HTTP client whose transport sends every request through
// the HTTP proxy at proxy (host:port).
func through(proxy string) *http.Client {
	return &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", User: url.UserPassword("u", "p"), Host: proxy})}}
}

// TestProxyAnswersAreTheProxys: the proxy's own answers were told from the
// broker's only in keytrail's CLI (its transport): a Go workload using
// client.New got a forwarding proxy's 502 as 'keytrail broker: 502: Bad
// Gateway', its 302 (a redirect, say to a captive portal) as the broker's
// permanent refusal, and a refused CONNECT as net/http's bare status text
// ('Proxy Authentication Required'), and a proxy's Retry-After was
// ignored. Now New names them (*ProxyError): permanent as the broker's
// 4xx (and a 3xx too), a 5xx, 408 or 429 retried after its Retry-After,
// bounded as the broker's. The broker's own answer through the proxy (with
// X-Request-Id) stays an *Error.
func TestProxyAnswersAreTheProxys(t *testing.T) {
	for _, c := range []struct {
		name       string
		addr       string // the broker
		status     int
		header     map[string]string
		forwarding bool
		statusLine string
		retryAfter time.Duration
		temporary  bool
	}{
		{"forwarding/502", "http://keytrail.example:7700", 502, nil, true, "502 Bad Gateway", 0, true},
		{"forwarding/503-retry-after", "http://keytrail.example:7700", 503, map[string]string{"Retry-After": "7"}, true, "503 Service Unavailable", 7 * time.Second, true},
		{"forwarding/429-retry-after-bounded", "http://keytrail.example:7700", 429, map[string]string{"Retry-After": "86400"}, true, "429 Too Many Requests", MaxRetryAfter, true},
		{"forwarding/302", "http://keytrail.example:7700", 302, map[string]string{"Location": "http://portal.example/"}, true, "302 Found", 0, false},
		{"forwarding/407-with-request-id", "http://keytrail.example:7700", 407, map[string]string{"X-Request-Id": "x"}, true, "407 Proxy Authentication Required", 0, false},
		{"connect/407", "https://keytrail.example:7700", 407, nil, false, "407 Proxy Authentication Required", 0, false},
		{"connect/302", "https://keytrail.example:7700", 302, nil, false, "302 Found", 0, false},
		{"connect/503-retry-after", "https://keytrail.example:7700", 503, map[string]string{"Retry-After": "5"}, false, "503 Service Unavailable", 5 * time.Second, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			proxy := answering(t, c.status, c.header)
			host := proxy.Listener.Addr().String()
			c.header = nil
			err := exchangeErrInsecure(t, c.addr, through(host))
			var pe *ProxyError
			if !errors.As(err, &pe) {
				t.Fatalf("Exchange through a proxy answering %d = %v (%T), want a *ProxyError", c.status, err, err)
			}
			got := ProxyError{Proxy: pe.Proxy, Status: pe.Status, StatusLine: pe.StatusLine, Forwarding: pe.Forwarding, RetryAfter: pe.RetryAfter}
			want := ProxyError{Proxy: host, Status: c.status, StatusLine: c.statusLine, Forwarding: c.forwarding, RetryAfter: c.retryAfter}
			if got != want {
				t.Errorf("ProxyError = %+v, want %+v", got, want)
			}
			if IsTransient(err) != c.temporary || IsPermanent(err) == c.temporary || RetryAfterOf(err) != c.retryAfter {
				t.Errorf("IsTransient, IsPermanent, RetryAfterOf = %v, %v, %v; want %v, %v, %v",
					IsTransient(err), IsPermanent(err), RetryAfterOf(err), c.temporary, !c.temporary, c.retryAfter)
			}
			if strings.Contains(err.Error(), "u:p") || !strings.Contains(err.Error(), "the proxy at "+host) {
				t.Errorf("Error() = %q, want the proxy named by host:port only", err)
			}
		})
	}

	// The broker's own answer, forwarded with its X-Request-Id, is the
	// broker's.
	broker := newFakeBroker(t, errReply(503, CodeTemporarilyUnavailable, "3"))
	err := exchangeErrInsecure(t, "http://keytrail.example:7700", through(forwardingProxy(t, broker.srv.Listener.Addr().String())))
	var be *Error
	if !errors.As(err, &be) || be.Code != CodeTemporarilyUnavailable || RetryAfterOf(err) != 3*time.Second {
		t.Errorf("the broker's 503 through a forwarding proxy = %#v, want the broker's *Error with Retry-After 3s", err)
	}
}

// forwardingProxy is a forwarding HTTP proxy (httputil.ReverseProxy)
// that sends every request, whatever host it names, to the server at
// target (host:port) over plain HTTP, and its answer back as it came. It
// returns the proxy's host:port.
func forwardingProxy(t *testing.T, target string) string {
	t.Helper()
	srv := httptest.NewServer(&httputil.ReverseProxy{
		Rewrite:   func(r *httputil.ProxyRequest) { r.Out.URL.Scheme, r.Out.URL.Host = "http", target },
		Transport: &http.Transport{},
		ErrorLog:  log.New(io.Discard, "", 0),
	})
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// exchangeErrInsecure is exchangeErr for a plain-http broker on any host.
func exchangeErrInsecure(t *testing.T, addr string, hc *http.Client) error {
	t.Helper()
	c, err := New(Options{Addr: addr, HTTPClient: hc, AllowInsecureHTTP: true})
	if err != nil {
		t.Fatal(err)
	}
	_, xerr := c.Exchange(t.Context(), "g", ExchangeOptions{Identity: EnvIdentity{Name: "T", Getenv: func(string) string { return "identity.jwt" }}})
	if xerr == nil {
		t.Fatal("Exchange succeeded, want it to fail")
	}
	return xerr
}

// TestProxyStatusLineIsClippedAndPrintable: a proxy's status line is its
// own text, and was repeated as it came: any length, escape sequences
// included, into the workload's logs and terminal. It is clipped to 200
// characters with control characters replaced, for a refused CONNECT and a
// forwarding proxy's answer alike.
func TestProxyStatusLineIsClippedAndPrintable(t *testing.T) {
	reason := "Bad\x1b[2J\x9b31m Gateway " + strings.Repeat("A", 500)
	proxy := brokertest.ServeConns(t, func(conn net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
			return
		}
		_, _ = io.WriteString(conn, "HTTP/1.1 502 "+reason+"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
	})
	for _, addr := range []string{"https://keytrail.example:7700", "http://keytrail.example:7700"} {
		err := exchangeErrInsecure(t, addr, through(proxy))
		var pe *ProxyError
		if !errors.As(err, &pe) || pe.Status != 502 {
			t.Fatalf("Exchange of %s through the proxy = %v, want its 502 as a *ProxyError", addr, err)
		}
		if n := len([]rune(pe.StatusLine)); n > maxStatusText+3 || !strings.HasPrefix(pe.StatusLine, "502 Bad") || !strings.HasSuffix(pe.StatusLine, "A...") {
			t.Errorf("StatusLine = %q (%d runes), want it clipped to %d and marked", pe.StatusLine, n, maxStatusText)
		}
		for _, r := range err.Error() {
			if unicode.IsControl(r) {
				t.Errorf("Error() = %q holds control character %U", err, r)
			}
		}
	}
}

// TestClientsWithoutTransportShareOne: New copies net/http's default
// transport to name a proxy refusing CONNECT; clients without a transport
// of their own share that copy (and its idle connections), as they shared
// the default transport. A caller's transport with a Proxy function is
// copied, not changed, and clients over it share the copy; one without a
// Proxy function (it never meets a proxy) is used as it is.
func TestClientsWithoutTransportShareOne(t *testing.T) {
	a, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Options{HTTPClient: &http.Client{}})
	if err != nil {
		t.Fatal(err)
	}
	if a.hc.Transport != b.hc.Transport || a.hc.Transport == http.DefaultTransport {
		t.Errorf("transports %p, %p (default %p): want one shared copy of the default", a.hc.Transport, b.hc.Transport, http.DefaultTransport)
	}
	own := &http.Transport{Proxy: http.ProxyFromEnvironment}
	c, err := New(Options{HTTPClient: &http.Client{Transport: own}})
	if err != nil {
		t.Fatal(err)
	}
	d, err := New(Options{HTTPClient: &http.Client{Transport: own}})
	if err != nil {
		t.Fatal(err)
	}
	if c.hc.Transport == own || own.OnProxyConnectResponse != nil || c.hc.Transport != d.hc.Transport {
		t.Error("the caller's transport was used or changed, or its copy not shared; want one shared copy")
	}
	direct := &http.Transport{}
	e, err := New(Options{HTTPClient: &http.Client{Transport: direct}})
	if err != nil {
		t.Fatal(err)
	}
	if e.hc.Transport != direct {
		t.Error("a transport without a Proxy function was copied, want it used as it is")
	}
}
