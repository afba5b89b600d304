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
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		t.Error("the handler was reached over plain http")
	}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	defer srv.Close()
	addr := "http://" + srv.Listener.Addr().String()
	err := exchangeErr(t, addr, nil)
	want := "keytrail broker: the server at " + addr + " answered that it speaks https (400 Client sent an HTTP request to an HTTPS server.): use https://" + srv.Listener.Addr().String()
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
