package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/brokertest"
)

// exchangeErr makes one exchange with the broker at addr through hc and
// returns its error.
func exchangeErr(t *testing.T, addr string, hc *http.Client) error {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := New(Options{Addr: addr, HTTPClient: hc})
	if err != nil {
		t.Fatal(err)
	}
	_, xerr := c.Exchange(context.Background(), "g", ExchangeOptions{Identity: FileIdentity{Path: tokenFile}})
	if xerr == nil {
		t.Fatal("Exchange succeeded, want it to fail")
	}
	return xerr
}

// trusting is a client that trusts the certificate cert (and nothing else).
func trusting(cert *x509.Certificate) *http.Client {
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
}

// expiredServer is an https server whose self-signed certificate (for
// 127.0.0.1) expired an hour ago; it returns the server and its
// certificate.
func expiredServer(t *testing.T) (*httptest.Server, *x509.Certificate) {
	t.Helper()
	pair, cert, err := brokertest.ExpiredCertificate()
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{pair}}
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv, cert
}

// TestCertificateErrorIsPermanent: a broker certificate that does not
// verify (signed by a CA the workload does not trust, for another host
// name, expired) was a transport failure like any other, retried with
// backoff until the caller gave up, though nothing changes between tries
// until someone fixes the trust (SSL_CERT_FILE), the address or the
// certificate. It is permanent now (IsCertificateError, IsPermanent).
func TestCertificateErrorIsPermanent(t *testing.T) {
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshakes refused
	srv.StartTLS()
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	expired, expiredCert := expiredServer(t)
	for _, c := range []struct {
		name, addr string
		hc         *http.Client
		want       string
	}{
		{"unknown-authority", srv.URL, &http.Client{Transport: &http.Transport{}}, "x509: certificate signed by unknown authority"},
		// httptest's certificate is for example.com and the loopback IPs.
		{"hostname", "https://localhost:" + port, trusting(srv.Certificate()), "x509: certificate is valid for example.com"},
		{"expired", expired.URL, trusting(expiredCert), "x509: certificate has expired or is not yet valid"},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := exchangeErr(t, c.addr, c.hc)
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("Exchange = %v, want %q", err, c.want)
			}
			if !IsCertificateError(err) || !IsPermanent(err) || IsTransient(err) {
				t.Errorf("IsCertificateError, IsPermanent, IsTransient = %v, %v, %v for %q; want true, true, false",
					IsCertificateError(err), IsPermanent(err), IsTransient(err), err)
			}
		})
	}
	// Other TLS and transport failures stay transient.
	closing := brokertest.ServeConns(t, func(net.Conn) {}) // closes each connection, no handshake at all
	err := exchangeErr(t, "https://"+closing, &http.Client{Transport: &http.Transport{}})
	if IsCertificateError(err) || !IsTransient(err) {
		t.Errorf("a connection closed during the handshake (%v): IsCertificateError %v, IsTransient %v; want false, true", err, IsCertificateError(err), IsTransient(err))
	}
}

// TestSOCKSRefusalIsPermanent: a SOCKS5 proxy (HTTPS_PROXY=socks5://...)
// that refuses the authentication (wrong user name or password in the
// proxy URL, or none of the methods offered), or whose rules do not allow
// the connection, was retried like a broker that is down. It stays so
// until the proxy URL or the proxy's rules change: permanent now. A proxy
// that could not reach the broker (connection refused, host unreachable)
// is still transient.
func TestSOCKSRefusalIsPermanent(t *testing.T) {
	authThen := func(auth byte, connect ...byte) func(net.Conn) {
		return func(c net.Conn) {
			_, _ = c.Write([]byte{5, 2}) // username/password
			_, _ = c.Read(make([]byte, 600))
			_, _ = c.Write([]byte{1, auth})
			if auth == 0 {
				_, _ = c.Read(make([]byte, 600))
				_, _ = c.Write(append([]byte{5}, connect...))
			}
		}
	}
	for _, c := range []struct {
		name      string
		reply     func(net.Conn)
		permanent bool
	}{
		{"no-acceptable-auth", func(c net.Conn) { _, _ = c.Write([]byte{5, 0xff}) }, true},
		{"bad-password", authThen(1), true},
		{"ruleset", authThen(0, 2, 0, 1, 0, 0, 0, 0, 0, 0), true},
		{"broker-refused", authThen(0, 5, 0, 1, 0, 0, 0, 0, 0, 0), false},
		{"host-unreachable", authThen(0, 4, 0, 1, 0, 0, 0, 0, 0, 0), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			proxy := &url.URL{Scheme: "socks5", User: url.UserPassword("u", "p"), Host: brokertest.SOCKSProxy(t, c.reply)}
			err := exchangeErr(t, "https://keytrail.internal:7700", &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(proxy)}})
			if !strings.Contains(err.Error(), "socks connect") {
				t.Fatalf("Exchange = %v, want a SOCKS failure", err)
			}
			if IsPermanent(err) != c.permanent || IsTransient(err) == c.permanent {
				t.Errorf("IsPermanent, IsTransient = %v, %v for %q; want %v, %v", IsPermanent(err), IsTransient(err), err, c.permanent, !c.permanent)
			}
		})
	}
}

// TestPlainHTTPAnswerIsPermanent: an https address naming a plain-http
// port (the broker without TLS) fails the handshake with net/http's
// "server gave HTTP response to HTTPS client", and was a transport failure
// retried with backoff until the caller gave up, though every try gets the
// same answer. It is permanent now (IsPlainHTTPAnswer, IsPermanent), as is
// the same answer of an https proxy (HTTPS_PROXY=https://...) speaking
// plain http, which net/http wraps as "proxyconnect".
func TestPlainHTTPAnswerIsPermanent(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	defer srv.Close()
	plain := srv.Listener.Addr().String()
	for _, c := range []struct {
		name, addr string
		hc         *http.Client
	}{
		{"broker", "https://" + plain, &http.Client{Transport: &http.Transport{}}},
		{"proxy", "https://keytrail.internal:7700", &http.Client{Transport: &http.Transport{Proxy: http.ProxyURL(&url.URL{Scheme: "https", Host: plain})}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := exchangeErr(t, c.addr, c.hc)
			if !IsPlainHTTPAnswer(err) || !IsPermanent(err) || IsTransient(err) || IsCertificateError(err) {
				t.Errorf("IsPlainHTTPAnswer, IsPermanent, IsTransient, IsCertificateError = %v, %v, %v, %v for %q; want true, true, false, false",
					IsPlainHTTPAnswer(err), IsPermanent(err), IsTransient(err), IsCertificateError(err), err)
			}
		})
	}
}
