package client

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"sync"
	"testing"
	"time"
	"weak"
)

// connCounter counts the TCP connections a test server accepted and
// signals each one it closed.
type connCounter struct {
	mu       sync.Mutex
	accepted int
	closed   chan struct{}
}

func countConns(srv *httptest.Server) *connCounter {
	c := &connCounter{closed: make(chan struct{}, 1000)}
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			c.mu.Lock()
			c.accepted++
			c.mu.Unlock()
		case http.StateClosed, http.StateHijacked:
			c.closed <- struct{}{}
		}
	}
	return c
}

func (c *connCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.accepted
}

// waitClosed waits for n connections to be closed (the bound fails the
// test, it does not time anything).
func (c *connCounter) waitClosed(t *testing.T, n int, what string) {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case <-c.closed:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: %d of %d connections still open after 10s", what, n-i, n)
		}
	}
}

// exchangeOver makes n Clients over hc's transport, one after the other,
// each doing one exchange with the broker at addr.
func exchangeOver(t *testing.T, n int, addr string, hc func() *http.Client) []*Client {
	t.Helper()
	var cls []*Client
	for i := 0; i < n; i++ {
		c, err := New(Options{Addr: addr, HTTPClient: hc(), AllowInsecureHTTP: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Exchange(t.Context(), "g", ExchangeOptions{Identity: staticIdentity("identity.jwt")}); err != nil {
			t.Fatalf("Exchange %d: %v", i, err)
		}
		cls = append(cls, c)
	}
	return cls
}

// TestClientsOverOneTransportShareItsConnections: New copied the caller's
// *http.Transport on every call (to set OnProxyConnectResponse), so each
// Client had a connection pool of its own: 50 Clients over one transport
// opened 50 connections where keep-alive needs one, kept every idle one
// (two goroutines each) for as long as the transport's IdleConnTimeout
// (forever with a zero &http.Transport{}), and the caller's
// CloseIdleConnections on its transport did not reach them. A transport
// without a Proxy function, which never meets a proxy, is now used as it
// is; one with a Proxy function is copied once, and Clients over it share
// that copy.
func TestClientsOverOneTransportShareItsConnections(t *testing.T) {
	t.Run("no-proxy", func(t *testing.T) {
		fb := newFakeBroker(t, okReply("iss_1", 900))
		fb.srv.Close()
		fb.srv = httptest.NewUnstartedServer(fb.srv.Config.Handler)
		conns := countConns(fb.srv)
		fb.srv.Start()
		defer fb.srv.Close()
		tr := &http.Transport{}
		exchangeOver(t, 50, fb.srv.URL, func() *http.Client { return &http.Client{Transport: tr} })
		if n := conns.count(); n != 1 {
			t.Errorf("50 Clients over one transport opened %d connections, want 1 (kept alive)", n)
		}
		tr.CloseIdleConnections()
		conns.waitClosed(t, conns.count(), "after the caller's CloseIdleConnections")
	})

	t.Run("proxy", func(t *testing.T) {
		fb := newFakeBroker(t, okReply("iss_1", 900))
		target, _ := url.Parse(fb.srv.URL)
		proxy := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			r.URL.Scheme, r.URL.Host, r.RequestURI = target.Scheme, target.Host, ""
			res, err := http.DefaultTransport.RoundTrip(r)
			if err != nil {
				w.WriteHeader(http.StatusBadGateway)
				return
			}
			defer res.Body.Close()
			for k, v := range res.Header {
				w.Header()[k] = v
			}
			w.WriteHeader(res.StatusCode)
			_, _ = io.Copy(w, res.Body)
		}))
		conns := countConns(proxy)
		proxy.Start()
		defer proxy.Close()
		tr := &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "http", Host: proxy.Listener.Addr().String()})}
		cls := exchangeOver(t, 50, "http://keytrail.example:7700", func() *http.Client { return &http.Client{Transport: tr} })
		if n := conns.count(); n != 1 {
			t.Errorf("50 Clients over one transport with a proxy opened %d connections to it, want 1 (kept alive)", n)
		}
		if tr.OnProxyConnectResponse != nil {
			t.Error("the caller's transport was changed")
		}
		// The copy's idle connections are closed through any Client over it.
		cls[0].CloseIdleConnections()
		conns.waitClosed(t, conns.count(), "after Client.CloseIdleConnections")
	})
}

// TestSharedTransportCopyKeepsNothingAlive: the copies shared by Clients
// over one caller transport are kept for as long as a Client (or an idle
// connection) uses them, and keep neither the caller's transport nor
// themselves alive after that, even when the caller's Proxy function
// refers to its transport.
func TestSharedTransportCopyKeepsNothingAlive(t *testing.T) {
	orig, cp := clientsOverDroppedTransport(t)
	runtime.GC()
	runtime.GC()
	if orig.Value() != nil || cp.Value() != nil {
		t.Errorf("after its Clients are gone, caller's transport alive %v, its copy alive %v; want both collected", orig.Value() != nil, cp.Value() != nil)
	}
	// Its entry goes too (runtime.AddCleanup, run after a collection).
	deadline := time.Now().Add(10 * time.Second)
	for {
		copies.Lock()
		_, known := copies.m[orig]
		copies.Unlock()
		if !known {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the collected transport's entry is still in the map of copies after 10s")
		}
		runtime.GC()
		runtime.Gosched()
	}
}

func clientsOverDroppedTransport(t *testing.T) (weak.Pointer[http.Transport], weak.Pointer[http.Transport]) {
	tr := &http.Transport{}
	tr.Proxy = func(*http.Request) (*url.URL, error) {
		_ = tr.MaxIdleConns // refers to its transport
		return nil, nil
	}
	a, err := New(Options{Addr: "https://keytrail.example", HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := New(Options{Addr: "https://keytrail.example", HTTPClient: &http.Client{Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	cp, ok := a.hc.Transport.(*http.Transport)
	if !ok || cp != b.hc.Transport || cp == tr {
		t.Fatalf("transports %p, %p over %p: want one shared copy", a.hc.Transport, b.hc.Transport, tr)
	}
	return weak.Make(tr), weak.Make(cp)
}
