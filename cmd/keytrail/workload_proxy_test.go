package main

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// TestPlainHTTPBrokerThroughAProxyAnsweringItsOwnError: to a plain-http
// broker an HTTP proxy (HTTP_PROXY) forwards the request itself, and an
// error it answers of its own (no X-Request-Id, which every answer of the
// broker carries) came back as the broker's: a 403 of the proxy's rules
// read 'keytrail broker: 403: Forbidden: the broker refused the request',
// a 502 'broker answered 502; retrying'. 4aefd45 did this for 407 only.
// Now the proxy is named as it is for 407: a 4xx other than 408 and 429
// fails at once, a 5xx, 408 or 429 is retried. The broker's own answers
// through the proxy stay the broker's.
func TestPlainHTTPBrokerThroughAProxyAnsweringItsOwnError(t *testing.T) {
	dir := t.TempDir()
	tokenFile := writeTokenFile(t, dir)
	const addr = "http://keytrail.example:7700"
	fetch := func(proxy, grant string) (string, int) {
		_, stderr, code := runKeytrailProcess(t, []string{"HTTP_PROXY=" + proxy},
			"fetch", "--grant", grant, "--identity-token-file", tokenFile, "--addr", addr, "--allow-insecure-http", "--out", filepath.Join(dir, "cred"), "--timeout", "1s")
		return stderr, code
	}
	for _, c := range []struct {
		status int
		text   string
	}{{http.StatusForbidden, "403 Forbidden"}, {http.StatusBadRequest, "400 Bad Request"}, {http.StatusFound, "302 Found"}} {
		proxy := newTestProxy(t, "", c.status)
		stderr, code := fetch(proxy.withUserinfo(), "g")
		want := "keytrail: g: the proxy at " + proxy.Listener.Addr().String() + " (HTTP_PROXY) refused to forward the request to the broker at " + addr +
			": it answered " + c.text + ": check that the proxy allows requests to the broker's host and port, or list the broker's host in NO_PROXY to reach it without the proxy\n"
		if code != 1 || stderr != want {
			t.Errorf("fetch through a proxy answering %d: exit %d, stderr %q; want exit 1 at once with %q", c.status, code, stderr, want)
		}
		if got := proxy.seen(); !slices.Equal(got, []string{"POST keytrail.example:7700"}) {
			t.Errorf("the proxy answering %d saw %q, want the one POST", c.status, got)
		}
	}
	for _, c := range []struct {
		status int
		text   string
	}{{http.StatusBadGateway, "502 Bad Gateway"}, {http.StatusTooManyRequests, "429 Too Many Requests"}} {
		proxy := newTestProxy(t, "", c.status)
		stderr, code := fetch(proxy.withUserinfo(), "g")
		why := "the proxy at " + proxy.Listener.Addr().String() + " (HTTP_PROXY) refused to forward the request to the broker at " + addr + ": it answered " + c.text
		if code != 1 || !strings.HasPrefix(stderr, "keytrail: g: "+why+"; retrying in ") || !strings.HasSuffix(stderr, "keytrail: g: no credential after 1s; last failure: "+why+"\n") {
			t.Errorf("fetch through a proxy answering %d: exit %d, stderr %q; want it retried, then %q", c.status, code, stderr, why)
		}
		if len(proxy.seen()) < 2 {
			t.Errorf("the proxy answering %d saw %q, want the POST retried", c.status, proxy.seen())
		}
		if strings.Contains(stderr, "MARKER") {
			t.Errorf("stderr shows the proxy's user info: %q", stderr)
		}
	}

	// The broker's own refusal, forwarded by the proxy with its
	// X-Request-Id, is the broker's.
	fake, _ := newFakeTokenBroker(t)
	broker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Request-Id", "req_403")
		fake.ServeHTTP(w, r)
	}))
	defer broker.Close()
	target, err := url.Parse(broker.URL)
	if err != nil {
		t.Fatal(err)
	}
	forwarding := httptest.NewServer(&httputil.ReverseProxy{Rewrite: func(pr *httputil.ProxyRequest) { pr.SetURL(target) }})
	defer forwarding.Close()
	stderr, code := fetch(forwarding.URL, "denied")
	if want := "keytrail: denied: keytrail broker: 403 access_denied: "; code != 1 || !strings.HasPrefix(stderr, want) {
		t.Errorf("fetch of a grant the broker refuses, through a forwarding proxy: exit %d, stderr %q; want %q...", code, stderr, want)
	}
}

// TestProxyRetryAfterIsHonoured: a proxy's 503 or 429 with Retry-After (to
// a plain-http broker, forwarding; to an https one, refusing CONNECT) was
// retried on fetch's own backoff from 0.5 s, its Retry-After ignored,
// though the broker's own is honoured. It is honoured the same way now:
// the first retry waits at least Retry-After (30 s here), so within
// --timeout 1s the proxy is asked once.
func TestProxyRetryAfterIsHonoured(t *testing.T) {
	tokenFile := writeTokenFile(t, t.TempDir())
	for _, c := range []struct {
		name, addr, variable, refused string
		status                        int
		text                          string
	}{
		{"forwarding-503", "http://keytrail.example:7700", "HTTP_PROXY", "refused to forward the request to", http.StatusServiceUnavailable, "503 Service Unavailable"},
		{"connect-429", "https://keytrail.example:7700", "HTTPS_PROXY", "refused the tunnel to", http.StatusTooManyRequests, "429 Too Many Requests"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var asked atomic.Int32
			proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				asked.Add(1)
				w.Header().Set("Retry-After", "30")
				w.WriteHeader(c.status)
			}))
			defer proxy.Close()
			_, stderr, code := runKeytrailProcess(t, []string{c.variable + "=" + proxy.URL},
				"fetch", "--grant", "g", "--identity-token-file", tokenFile, "--addr", c.addr, "--allow-insecure-http", "--out", filepath.Join(t.TempDir(), "cred"), "--timeout", "1s")
			line := "keytrail: g: the proxy at " + proxy.Listener.Addr().String() + " (" + c.variable + ") " + c.refused + " the broker at " + c.addr + ": it answered " + c.text + "; retrying in "
			wait, _, _ := strings.Cut(strings.TrimPrefix(stderr, line), "\n")
			d, err := time.ParseDuration(wait)
			if code != 1 || !strings.HasPrefix(stderr, line) || err != nil || d < 30*time.Second || asked.Load() != 1 {
				t.Errorf("fetch through a proxy answering %d with Retry-After 30: exit %d, asked %d times, stderr %q; want %q and a wait of at least 30s, asked once",
					c.status, code, asked.Load(), stderr, line)
			}
		})
	}
}

// tlsPort is the host:port of a TLS server whose handler must not be reached.
func tlsPort(t *testing.T) string {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("the TLS proxy's handler was reached over plain http")
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// TestProxyURLNamingTLSPortIsNamed: HTTP_PROXY=http://H:P naming a port
// that speaks TLS (an https proxy written with http://) gets net/http's
// bare answer to plain HTTP on a TLS port. fetch and exec said 'the proxy
// at H:P (HTTP_PROXY) refused to forward the request to the broker at B:
// it answered 400 Bad Request: check that the proxy allows requests to the
// broker's host and port', which sends the user to the proxy's rules. They
// now say that the proxy speaks https and to write its URL in HTTP_PROXY
// with https://, naming it by host:port (never the URL's user info), at
// once (permanent).
func TestProxyURLNamingTLSPortIsNamed(t *testing.T) {
	dir := t.TempDir()
	tokenFile := writeTokenFile(t, dir)
	host := tlsPort(t)
	const addr = "http://keytrail.example:7700"
	want := "keytrail: g: the proxy at " + host + " (HTTP_PROXY) for the broker at " + addr +
		" answered that it speaks https (400 Client sent an HTTP request to an HTTPS server.): write the proxy URL in HTTP_PROXY with https:// (https://" + host +
		"), as the proxy speaks TLS, or list the broker's host in NO_PROXY to reach it without the proxy\n"
	common := []string{"--grant", "g", "--identity-token-file", tokenFile, "--addr", addr, "--allow-insecure-http", "--timeout", "5s"}
	for _, args := range [][]string{
		append(append([]string{"fetch"}, common...), "--out", filepath.Join(dir, "cred")),
		append(append([]string{"exec"}, common...), "--env", "T", "--", "true"),
	} {
		_, stderr, code := runKeytrailProcess(t, []string{"HTTP_PROXY=http://u:MARKER@" + host}, args...)
		if code != 1 || stderr != want {
			t.Errorf("%s through HTTP_PROXY=http:// naming a TLS port: exit %d, stderr %q; want exit 1 at once with %q", args[0], code, stderr, want)
		}
		if strings.Contains(stderr, "MARKER") {
			t.Errorf("%s: stderr shows the proxy's user info: %q", args[0], stderr)
		}
	}
}

// TestConnectToTLSPortIsNamed: HTTPS_PROXY=http://H:P naming a port that
// speaks TLS, for an https broker: the TLS server closes the connection
// on the plain-text CONNECT, and fetch said 'keytrail broker unreachable:
// Post https://...: unexpected EOF', retried until --timeout, never
// naming the proxy. It now says that the proxy at H:P (HTTPS_PROXY)
// closed the connection without answering CONNECT and to write https://
// in HTTPS_PROXY if it speaks https (host:port only, never the URL's user
// info), still retried: a proxy stopping does the same.
func TestConnectToTLSPortIsNamed(t *testing.T) {
	dir := t.TempDir()
	tokenFile := writeTokenFile(t, dir)
	host := tlsPort(t)
	const addr = "https://keytrail.example:7700"
	why := "the proxy at " + host + " (HTTPS_PROXY) for the broker at " + addr +
		" closed the connection without answering CONNECT: if it speaks https, write https:// in HTTPS_PROXY (https://" + host + ")"
	_, stderr, code := runKeytrailProcess(t, []string{"HTTPS_PROXY=http://u:MARKER@" + host},
		"fetch", "--grant", "g", "--identity-token-file", tokenFile, "--addr", addr, "--out", filepath.Join(dir, "cred"), "--timeout", "1s")
	if code != 1 || !strings.HasPrefix(stderr, "keytrail: g: "+why+"; retrying in ") || !strings.HasSuffix(stderr, "keytrail: g: no credential after 1s; last failure: "+why+"\n") {
		t.Errorf("fetch through HTTPS_PROXY=http:// naming a TLS port: exit %d, stderr %q; want it retried, then %q", code, stderr, why)
	}
	if strings.Contains(stderr, "MARKER") {
		t.Errorf("stderr shows the proxy's user info: %q", stderr)
	}
}
