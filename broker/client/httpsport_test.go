package client

import (
	"bufio"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/brokertest"
)

// tlsPort is the host:port of an https server that no request may reach
// over plain http (net/http answers those itself), closed when the test
// ends.
func tlsPort(t *testing.T) string {
	t.Helper()
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("the handler was reached over plain http")
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv.Listener.Addr().String()
}

// TestPlainHTTPToHTTPSPortIsNamed: an http:// address naming the port of
// a broker with TLS (the default address, http://127.0.0.1:7700, with a
// local broker serving https, say) gets net/http's own answer to a plain
// HTTP request on a TLS port, outside any handler and so without
// X-Request-Id: 'HTTP/1.0 400 Bad Request ... Client sent an HTTP request
// to an HTTPS server.' It read as the broker's refusal of a malformed
// request ('keytrail broker: 400: Bad Request', errors.Is
// broker.ErrInvalidRequest, hint: check the grant name, the ttl and the
// identity token type). It now says that the server there speaks https
// (ErrHTTPSPort), permanent. A 400 of the broker stays the broker's.
func TestPlainHTTPToHTTPSPortIsNamed(t *testing.T) {
	host := tlsPort(t)
	addr := "http://" + host
	err := exchangeErr(t, addr, nil)
	want := "keytrail broker: the server at " + addr + " answered that it speaks https (400 Client sent an HTTP request to an HTTPS server.): use https://" + host
	if !errors.Is(err, ErrHTTPSPort) || !IsPermanent(err) || IsTransient(err) || err.Error() != want {
		t.Errorf("Exchange over plain http to a TLS port = %q (ErrHTTPSPort %v, permanent %v); want %q, permanent", err, errors.Is(err, ErrHTTPSPort), IsPermanent(err), want)
	}
	var be *Error
	if errors.As(err, &be) {
		t.Errorf("Exchange = %#v, want no broker *Error", be)
	}

	// The broker's own 400 (with X-Request-Id) is the broker's.
	fb := newFakeBroker(t, errReply(400, CodeInvalidRequest, ""))
	err = exchangeErr(t, fb.srv.URL, nil)
	if !errors.As(err, &be) || be.Code != CodeInvalidRequest || errors.Is(err, ErrHTTPSPort) || strings.Contains(err.Error(), "speaks https") {
		t.Errorf("the broker's 400 = %v, want the broker's *Error", err)
	}
}

// TestPlainHTTPToHTTPSPortThroughProxyIsNamed: through a forwarding proxy
// (HTTP_PROXY), an http:// address naming a broker's TLS port gets the
// same net/http answer, forwarded by the proxy without X-Request-Id. It
// read as the proxy's own refusal ('the proxy at P refused to forward the
// request to the keytrail broker: it answered 400 Bad Request'), pointing
// at the proxy. It is now ErrHTTPSPort too, naming the address to use. A
// proxy whose own port speaks TLS answers the same text, but as net/http
// writes it, with no header at all: that stays the proxy's.
func TestPlainHTTPToHTTPSPortThroughProxyIsNamed(t *testing.T) {
	host := tlsPort(t)
	err := exchangeErr(t, "http://"+host, through(forwardingProxy(t, host)))
	want := "keytrail broker: the server at http://" + host + " answered that it speaks https (400 Client sent an HTTP request to an HTTPS server.): use https://" + host
	var pe *ProxyError
	if !errors.Is(err, ErrHTTPSPort) || !IsPermanent(err) || errors.As(err, &pe) || err.Error() != want {
		t.Errorf("Exchange over plain http to a TLS port through a proxy = %q (ErrHTTPSPort %v, permanent %v); want %q, permanent", err, errors.Is(err, ErrHTTPSPort), IsPermanent(err), want)
	}

	// HTTP_PROXY naming the TLS port itself: the proxy's answer.
	err = exchangeErrInsecure(t, "http://keytrail.example:7700", through(host))
	if !errors.As(err, &pe) || pe.Proxy != host || errors.Is(err, ErrHTTPSPort) {
		t.Errorf("Exchange through a proxy URL naming a TLS port = %v, want the proxy's *ProxyError, not ErrHTTPSPort", err)
	}
}

// TestProxyURLNamingTLSPortIsNamed: a proxy URL written with http:// that
// names a port speaking TLS (an https proxy, HTTP_PROXY=http://H:P) gets,
// to the plain-http request it was to forward, net/http's raw answer to
// plain HTTP on a TLS port, with no header at all. It read as the proxy's
// refusal ('the proxy at H:P refused to forward the request to the
// keytrail broker: it answered 400 Bad Request'), pointing at the proxy's
// rules. It is still the proxy's *ProxyError, permanent, now with
// HTTPSPort set and saying that the proxy URL's scheme should be
// https://, naming the proxy by host:port (never the URL's user info).
// The broker's address is not blamed (ErrHTTPSPort).
func TestProxyURLNamingTLSPortIsNamed(t *testing.T) {
	host := tlsPort(t)
	want := "the proxy at " + host + " answered that it speaks https (400 Client sent an HTTP request to an HTTPS server.): write the proxy URL with https:// (https://" + host + ")"
	err := exchangeErrInsecure(t, "http://keytrail.example:7700", through(host))
	var pe *ProxyError
	if !errors.As(err, &pe) || pe.Proxy != host || !pe.HTTPSPort || !pe.Forwarding || pe.Status != 400 ||
		!IsPermanent(err) || errors.Is(err, ErrHTTPSPort) || err.Error() != want {
		t.Errorf("Exchange through http:// naming a TLS port = %q (%#v, permanent %v); want the proxy's *ProxyError, HTTPSPort, %q", err, pe, IsPermanent(err), want)
	}
	if strings.Contains(err.Error(), "u:p") || strings.Contains(err.Error(), "p@") {
		t.Errorf("the error shows the proxy URL's user info: %q", err)
	}

	// A proxy's own headerless 400 with other text stays its refusal.
	proxy := brokertest.ServeConns(t, func(conn net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
			return
		}
		io.WriteString(conn, "HTTP/1.0 400 Bad Request\r\n\r\nno.\n")
	})
	err = exchangeErrInsecure(t, "http://keytrail.example:7700", through(proxy))
	if !errors.As(err, &pe) || pe.HTTPSPort || strings.Contains(err.Error(), "speaks https") {
		t.Errorf("a proxy's own bare 400 = %q, want its refusal, not HTTPSPort", err)
	}
}

// TestConnectToTLSPortIsNamed: HTTPS_PROXY=http://H:P naming a port that
// speaks TLS, for an https broker: net/http's TLS server does not answer a
// CONNECT in plain text (it answers only what looks like GET, HEAD, POST,
// PUT or OPTIONS), it closes the connection, and the client read
// 'keytrail broker unreachable: Post https://...: unexpected EOF', the
// broker's failure as far as anyone could tell. It is now named as the
// proxy's (a *net.OpError "proxyconnect" with its host:port, never the
// URL's user info), saying that it closed the connection without
// answering CONNECT and that an https proxy needs https:// in its URL,
// still transient (a proxy that stopped does the same). The broker
// closing the connection in a working tunnel stays the broker's.
func TestConnectToTLSPortIsNamed(t *testing.T) {
	host := tlsPort(t)
	err := exchangeErrInsecure(t, "https://keytrail.example:7700", through(host))
	var op *net.OpError
	want := "proxyconnect tcp " + host + ": the proxy closed the connection without answering CONNECT (unexpected EOF); a proxy that speaks https needs https:// in its URL"
	if !errors.As(err, &op) || op.Op != "proxyconnect" || op.Addr == nil || op.Addr.String() != host || !errors.Is(err, ErrConnectUnanswered) || !strings.HasSuffix(err.Error(), want) || !IsTransient(err) {
		t.Errorf("Exchange through http:// naming a TLS port, CONNECT = %q (%#v, transient %v); want it to end %q, transient", err, op, IsTransient(err), want)
	}
	if strings.Contains(err.Error(), "u:p") || strings.Contains(err.Error(), "p@") {
		t.Errorf("the error shows the proxy URL's user info: %q", err)
	}

	// A working tunnel to a broker port that reads the ClientHello and
	// closes: the broker's EOF (its TLS handshake had begun), not the
	// proxy's.
	closing := brokertest.ServeConns(t, func(conn net.Conn) {
		var hdr [5]byte
		if _, err := io.ReadFull(conn, hdr[:]); err != nil {
			return
		}
		_, _ = io.CopyN(io.Discard, conn, int64(hdr[3])<<8|int64(hdr[4]))
	})
	tunnel := brokertest.ServeConns(t, func(conn net.Conn) {
		if _, err := http.ReadRequest(bufio.NewReader(conn)); err != nil {
			return
		}
		back, err := net.Dial("tcp", closing)
		if err != nil {
			return
		}
		defer back.Close()
		io.WriteString(conn, "HTTP/1.1 200 Connection established\r\n\r\n")
		go func() { _, _ = io.Copy(back, conn) }()
		_, _ = io.Copy(conn, back)
	})
	err = exchangeErrInsecure(t, "https://keytrail.example:7700", through(tunnel))
	if !strings.HasSuffix(err.Error(), "EOF") || errors.Is(err, ErrConnectUnanswered) || errors.As(err, &op) && op.Op == "proxyconnect" || strings.Contains(err.Error(), "CONNECT") {
		t.Errorf("Exchange through a working tunnel to a closing broker port = %q, want the broker's failure, not the proxy's", err)
	}
}
