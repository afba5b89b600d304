package client

import (
	"errors"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
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
