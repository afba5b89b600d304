package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
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
	"github.com/keytrail/keytrail/broker/client"
)

// writeTokenFile writes an identity token file in dir and returns its path.
func writeTokenFile(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "identity")
	if err := os.WriteFile(p, []byte("identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// writeCAFile writes cert as a PEM file in dir and returns its path.
func writeCAFile(t *testing.T, dir, name string, cert *x509.Certificate) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// newTLSBroker is the fake token broker on https, with a log that keeps
// the refused handshakes quiet.
func newTLSBroker(t *testing.T, tlsConf *tls.Config) *httptest.Server {
	t.Helper()
	srv := httptest.NewUnstartedServer(&fakeTokenBroker{byGrant: map[string]tokenReply{"g": {200, vaultBody}}})
	srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	if tlsConf != nil {
		srv.TLS = tlsConf
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	return srv
}

// expiredCert is a self-signed CA certificate for 127.0.0.1 that expired
// an hour ago, with its key.
func expiredCert(t *testing.T) (tls.Certificate, *x509.Certificate) {
	t.Helper()
	pair, cert, err := brokertest.ExpiredCertificate()
	if err != nil {
		t.Fatal(err)
	}
	return pair, cert
}

// TestCertificateFailureIsNotRetried: a broker certificate that does not
// verify was retried with backoff until --timeout ('x509: certificate
// signed by unknown authority; retrying in ...', then 'no credential after
// 3s; last failure: keytrail broker unreachable: Post ...: tls: failed to
// verify certificate: ...'), though nothing changes between tries, and
// nothing said what to check. fetch and exec now fail at once, naming the
// broker and the x509 cause, and say what to check: the CA (SSL_CERT_FILE,
// SSL_CERT_DIR: the client has no CA flag) and the host name of --addr, or
// for an expired certificate its dates and the clock.
func TestCertificateFailureIsNotRetried(t *testing.T) {
	dir := t.TempDir()
	tokenFile := writeTokenFile(t, dir)
	broker := newTLSBroker(t, nil)
	caFile := writeCAFile(t, dir, "ca.pem", broker.Certificate())
	_, port, _ := net.SplitHostPort(broker.Listener.Addr().String())
	expiredPair, expired := expiredCert(t)
	old := newTLSBroker(t, &tls.Config{Certificates: []tls.Certificate{expiredPair}})
	oldCAFile := writeCAFile(t, dir, "expired.pem", expired)

	caHint := "check that SSL_CERT_FILE (or SSL_CERT_DIR) holds the CA that issued the broker's certificate (Go on Linux reads them instead of the system roots), and that the host in --addr (or KEYTRAIL_ADDR), 127.0.0.1, is the broker's"
	for _, c := range []struct {
		name, addr string
		env        []string
		want       string
	}{
		{"unknown-authority", broker.URL, nil,
			"cannot verify the certificate of the broker at " + broker.URL + ": x509: certificate signed by unknown authority: " + caHint},
		// httptest's certificate is for example.com and the loopback IPs.
		{"hostname", "https://localhost:" + port, []string{"SSL_CERT_FILE=" + caFile},
			"cannot verify the certificate of the broker at https://localhost:" + port + ": x509: certificate is valid for example.com, *.example.com, not localhost: " +
				"check the host in --addr (or KEYTRAIL_ADDR), localhost: use a name the broker's certificate is for"},
		{"expired", old.URL, []string{"SSL_CERT_FILE=" + oldCAFile},
			"cannot verify the certificate of the broker at " + old.URL + ": x509: certificate has expired or is not yet valid: current time "},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, cmd := range [][]string{
				{"fetch", "--grant", "g", "--identity-token-file", tokenFile, "--addr", c.addr, "--out", filepath.Join(dir, "cred"), "--timeout", "3s"},
				{"exec", "--grant", "g", "--identity-token-file", tokenFile, "--addr", c.addr, "--env", "T", "--timeout", "3s", "--", "touch", filepath.Join(dir, "ran")},
			} {
				_, stderr, code := runKeytrailProcess(t, c.env, cmd...)
				want := "keytrail: g: " + c.want
				if code != 1 || !strings.HasPrefix(stderr, want) || strings.Contains(stderr, "retrying") || strings.Count(stderr, "\n") != 1 {
					t.Errorf("keytrail %s: exit %d, stderr %q; want exit 1 at once with %q", cmd[0], code, stderr, want)
				}
				if c.name == "expired" && !strings.HasSuffix(stderr, ": the broker's certificate (or a CA's) must be renewed, or this machine's clock is wrong: check both\n") {
					t.Errorf("keytrail %s: stderr %q, want it to ask for the certificate's dates and the clock", cmd[0], stderr)
				}
			}
		})
	}
	for _, f := range []string{"cred", "ran"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Errorf("%s exists (stat: %v): nothing should be written or run", f, err)
		}
	}
}

// TestProxyCertificateFailureNamesTheProxy: through an https proxy
// (HTTPS_PROXY=https://...) whose own certificate does not verify, the
// failure is the proxy's, permanent too, and says so, naming the proxy by
// host:port (it said 'the proxy (HTTPS_PROXY)': net/http's error has no
// address), never by its URL's user info.
func TestProxyCertificateFailureNamesTheProxy(t *testing.T) {
	const addr = "https://keytrail.internal:7700"
	proxy := newTLSBroker(t, nil) // never gets past the handshake
	proxyURL, err := url.Parse(proxy.URL)
	if err != nil {
		t.Fatal(err)
	}
	proxyURL.User = url.UserPassword("PROXY-USER-MARKER", "PROXY-PW-MARKER")
	xerr := exchangeThroughProxy(t, addr, proxyURL, writeTokenFile(t, t.TempDir()))
	ee, ok := permanentError("g", nil, xerr, addr).(exitError)
	want := "g: cannot verify the certificate of the proxy at " + proxyURL.Host + " (HTTPS_PROXY) for the broker at " + addr + ": x509: certificate signed by unknown authority: " +
		"check that SSL_CERT_FILE (or SSL_CERT_DIR) holds the CA that issued the proxy's certificate, and the proxy's host name in HTTPS_PROXY"
	if !ok || ee.code != exitPermanent || ee.msg != want {
		t.Errorf("permanentError(%v) = %#v, want exit 1 with %q", xerr, ee, want)
	}
	if strings.Contains(ee.msg, "MARKER") {
		t.Errorf("the message shows the proxy's user info: %q", ee.msg)
	}
}

// TestSOCKSRefusalIsNotRetried: a SOCKS5 proxy (HTTPS_PROXY=socks5://...)
// refusing the proxy URL's user name and password was retried until
// --timeout ('the SOCKS proxy at P (HTTPS_PROXY) for the broker at X
// failed: username/password authentication failed; retrying in ...'). It
// now fails at once, naming the proxy and what to check.
func TestSOCKSRefusalIsNotRetried(t *testing.T) {
	dir := t.TempDir()
	tokenFile := writeTokenFile(t, dir)
	socks := brokertest.SOCKSProxy(t, func(conn net.Conn) {
		_, _ = conn.Write([]byte{5, 2}) // username/password
		_, _ = conn.Read(make([]byte, 600))
		_, _ = conn.Write([]byte{1, 1}) // refused
	})
	const addr = "https://keytrail.example"
	proxy := "socks5://PROXY-USER-MARKER:PROXY-PW-MARKER@" + socks
	_, stderr, code := runKeytrailProcess(t, []string{"HTTPS_PROXY=" + proxy},
		"fetch", "--grant", "g", "--identity-token-file", tokenFile, "--addr", addr, "--out", filepath.Join(dir, "cred"), "--timeout", "3s")
	want := "keytrail: g: the SOCKS proxy at " + socks + " (HTTPS_PROXY) for the broker at " + addr +
		" failed: username/password authentication failed: check the proxy's user name and password in the proxy URL (socks5://USER:PASSWORD@HOST:PORT), or list the broker's host in NO_PROXY to reach it without the proxy\n"
	if code != 1 || stderr != want {
		t.Errorf("fetch through a SOCKS proxy refusing the login: exit %d, stderr %q; want exit 1 at once with %q", code, stderr, want)
	}
}

// TestPlainHTTPBrokerIsNotRetried: --addr https://H:P naming a broker that
// serves plain http was retried with backoff until --timeout ('keytrail
// broker unreachable: Post https://H:P/v1/token: http: server gave HTTP
// response to HTTPS client; retrying in ...'), though every try gets the
// same answer, and nothing said what to change. fetch and exec now fail at
// once, naming the broker and the http:// address to use instead.
func TestPlainHTTPBrokerIsNotRetried(t *testing.T) {
	dir := t.TempDir()
	tokenFile := writeTokenFile(t, dir)
	plain := httptest.NewServer(&fakeTokenBroker{byGrant: map[string]tokenReply{"g": {200, vaultBody}}})
	defer plain.Close()
	host := plain.Listener.Addr().String()
	addr := "https://" + host
	want := "keytrail: g: the broker at " + addr + " answered in plain HTTP: use http://" + host + " in --addr (or KEYTRAIL_ADDR), or enable TLS on the broker\n"
	for _, cmd := range [][]string{
		{"fetch", "--grant", "g", "--identity-token-file", tokenFile, "--addr", addr, "--out", filepath.Join(dir, "cred"), "--timeout", "3s"},
		{"exec", "--grant", "g", "--identity-token-file", tokenFile, "--addr", addr + "/", "--env", "T", "--timeout", "3s", "--", "touch", filepath.Join(dir, "ran")},
	} {
		_, stderr, code := runKeytrailProcess(t, nil, cmd...)
		if code != 1 || stderr != want {
			t.Errorf("keytrail %s: exit %d, stderr %q; want exit 1 at once with %q", cmd[0], code, stderr, want)
		}
	}
	for _, f := range []string{"cred", "ran"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Errorf("%s exists (stat: %v): nothing should be written or run", f, err)
		}
	}
}

// TestPlainHTTPMessages: the message for a plain-http answer names the
// address without user info, keeps a path prefix, asks for
// --allow-insecure-http when the host is not on loopback (plain http is
// refused there otherwise), and names the proxy, by host:port (it said
// 'the proxy (HTTPS_PROXY)'), when it was an https proxy
// (HTTPS_PROXY=https://...) that answered in plain http.
func TestPlainHTTPMessages(t *testing.T) {
	plain := httptest.NewServer(&fakeTokenBroker{byGrant: map[string]tokenReply{"g": {200, vaultBody}}})
	defer plain.Close()
	host := plain.Listener.Addr().String()
	tokenFile := writeTokenFile(t, t.TempDir())
	proxyErr := exchangeThroughProxy(t, "https://keytrail.internal:7700", &url.URL{Scheme: "https", User: url.UserPassword("PROXY-USER-MARKER", "PROXY-PW-MARKER"), Host: host}, tokenFile)
	brokerErr := fmt.Errorf("keytrail broker unreachable: Post %q: %w", "https://"+host+"/v1/token", http.ErrSchemeMismatch)
	for _, c := range []struct {
		addr string
		err  error
		want string
	}{
		{"https://USER-MARKER:PW-MARKER@127.0.0.1:7700/kt/", brokerErr,
			"g: the broker at https://127.0.0.1:7700/kt answered in plain HTTP: use http://127.0.0.1:7700/kt in --addr (or KEYTRAIL_ADDR), or enable TLS on the broker"},
		{"https://keytrail.internal:7700", brokerErr,
			"g: the broker at https://keytrail.internal:7700 answered in plain HTTP: enable TLS on the broker, or use http://keytrail.internal:7700 in --addr (or KEYTRAIL_ADDR) with --allow-insecure-http (the identity token then crosses the network in clear)"},
		{"https://keytrail.internal:7700", proxyErr,
			"g: the proxy at " + host + " (HTTPS_PROXY) for the broker at https://keytrail.internal:7700 answered in plain HTTP: use http:// (http://" + host + ") for the proxy in HTTPS_PROXY, or enable TLS on the proxy"},
	} {
		if !client.IsPermanent(c.err) {
			t.Errorf("client.IsPermanent(%v) = false", c.err)
		}
		ee, ok := permanentError("g", nil, c.err, c.addr).(exitError)
		if !ok || ee.code != exitPermanent || ee.msg != c.want {
			t.Errorf("permanentError(%v, %q) = %#v, want exit 1 with %q", c.err, c.addr, ee, c.want)
		}
		if strings.Contains(ee.msg, "MARKER") {
			t.Errorf("the message shows user info: %q", ee.msg)
		}
	}
}

// TestClientCertificateRequiredIsNotRetried: a broker requiring mutual TLS
// (its tls.client_ca_file) refuses fetch and exec, which have no client
// certificate setting, with a TLS alert ('remote error: tls: certificate
// required'), and they retried it until --timeout as if the broker were
// down, then said only 'last failure: keytrail broker unreachable: Post
// ...: remote error: tls: certificate required'. They now fail at once,
// naming the broker and the alert, and say that it asks for a client
// certificate they cannot present.
func TestClientCertificateRequiredIsNotRetried(t *testing.T) {
	dir := t.TempDir()
	tokenFile := writeTokenFile(t, dir)
	broker := newTLSBroker(t, &tls.Config{ClientCAs: x509.NewCertPool(), ClientAuth: tls.RequireAndVerifyClientCert})
	caFile := writeCAFile(t, dir, "ca.pem", broker.Certificate())
	want := "keytrail: g: the broker at " + broker.URL + " refused the TLS connection: remote error: tls: certificate required: " +
		"it requires a client certificate it trusts (mutual TLS), which fetch and exec cannot present: they have no client certificate setting; " +
		"reach it at an address that does not require one (the broker's tls.client_ca_file unset), or fetch with the Go client (broker/client), whose Options.HTTPClient can present one\n"
	for _, cmd := range [][]string{
		{"fetch", "--grant", "g", "--identity-token-file", tokenFile, "--addr", broker.URL, "--out", filepath.Join(dir, "cred"), "--timeout", "3s"},
		{"exec", "--grant", "g", "--identity-token-file", tokenFile, "--addr", broker.URL, "--env", "T", "--timeout", "3s", "--", "touch", filepath.Join(dir, "ran")},
	} {
		_, stderr, code := runKeytrailProcess(t, []string{"SSL_CERT_FILE=" + caFile}, cmd...)
		if code != 1 || stderr != want {
			t.Errorf("keytrail %s: exit %d, stderr %q; want exit 1 at once with %q", cmd[0], code, stderr, want)
		}
	}
	for _, f := range []string{"cred", "ran"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Errorf("%s exists (stat: %v): nothing should be written or run", f, err)
		}
	}
}

// TestProxyRequiringClientCertificateIsNamed: an https proxy
// (HTTPS_PROXY=https://...) requiring a client certificate refuses fetch
// and exec with a TLS 1.3 alert that arrives after their side of the
// handshake, which net/http does not name as the proxy's: they said 'the
// broker at X refused the TLS connection: ...; reach it at an address that
// does not require one (the broker's tls.client_ca_file unset)', sending
// the operator to a broker that was never reached. They now name the
// proxy, by its host:port (never its user info), and say to use another
// proxy or NO_PROXY.
func TestProxyRequiringClientCertificateIsNamed(t *testing.T) {
	const addr = "https://keytrail.internal:7700"
	dir := t.TempDir()
	tokenFile := writeTokenFile(t, dir)
	proxy := newTLSBroker(t, &tls.Config{ClientCAs: x509.NewCertPool(), ClientAuth: tls.RequireAndVerifyClientCert})
	caFile := writeCAFile(t, dir, "proxy-ca.pem", proxy.Certificate())
	host := proxy.Listener.Addr().String()
	env := []string{"SSL_CERT_FILE=" + caFile, "HTTPS_PROXY=https://PROXY-USER-MARKER:PROXY-PW-MARKER@" + host}
	want := "keytrail: g: the proxy at " + host + " (HTTPS_PROXY) for the broker at " + addr + " refused the TLS connection: remote error: tls: certificate required: " +
		"it requires a client certificate it trusts (mutual TLS), which fetch and exec cannot present: they have no client certificate setting; " +
		"use a proxy that does not require one in HTTPS_PROXY, or list the broker's host in NO_PROXY to reach it without the proxy\n"
	for _, cmd := range [][]string{
		{"fetch", "--grant", "g", "--identity-token-file", tokenFile, "--addr", addr, "--out", filepath.Join(dir, "cred"), "--timeout", "3s"},
		{"exec", "--grant", "g", "--identity-token-file", tokenFile, "--addr", addr, "--env", "T", "--timeout", "3s", "--", "touch", filepath.Join(dir, "ran")},
	} {
		_, stderr, code := runKeytrailProcess(t, env, cmd...)
		if code != 1 || stderr != want {
			t.Errorf("keytrail %s: exit %d, stderr %q; want exit 1 at once with %q", cmd[0], code, stderr, want)
		}
	}
	for _, f := range []string{"cred", "ran"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Errorf("%s exists (stat: %v): nothing should be written or run", f, err)
		}
	}
}

// TestPlainHTTPToTLSBrokerIsNamed: an http:// --addr (or KEYTRAIL_ADDR, or
// the default http://127.0.0.1:7700) naming a broker that serves TLS got
// net/http's answer to plain HTTP on a TLS port, '400 Bad Request', read
// as the broker's refusal: 'keytrail: g: keytrail broker: 400: Bad
// Request: the broker refused the request'. fetch and exec now say that
// the broker speaks https and which address to use.
func TestPlainHTTPToTLSBrokerIsNamed(t *testing.T) {
	dir := t.TempDir()
	tokenFile := writeTokenFile(t, dir)
	broker := newTLSBroker(t, nil)
	hostPort := broker.Listener.Addr().String()
	want := "keytrail: g: the broker at http://" + hostPort + " answered that it speaks https (400 Client sent an HTTP request to an HTTPS server.): use https://" + hostPort + " in --addr (or KEYTRAIL_ADDR)\n"
	for _, cmd := range [][]string{
		{"fetch", "--grant", "g", "--identity-token-file", tokenFile, "--addr", "http://" + hostPort, "--out", filepath.Join(dir, "cred"), "--timeout", "3s"},
		{"exec", "--grant", "g", "--identity-token-file", tokenFile, "--env", "T", "--timeout", "3s", "--", "touch", filepath.Join(dir, "ran")},
	} {
		_, stderr, code := runKeytrailProcess(t, []string{"KEYTRAIL_ADDR=http://" + hostPort + "/"}, cmd...)
		if code != 1 || stderr != want {
			t.Errorf("keytrail %s: exit %d, stderr %q; want exit 1 at once with %q", cmd[0], code, stderr, want)
		}
	}
}

// TestProxyTLSAlertRetryNamesProxy: an https proxy (HTTPS_PROXY) failing
// the TLS handshake with an alert that is not about the client's
// certificate (here internal_error) is retried, and the retry line said
// 'the connection to the proxy (HTTPS_PROXY) for the broker at X failed'
// without the proxy's host:port, which the permanent messages give. It
// names the proxy by host:port now (never its user info).
func TestProxyTLSAlertRetryNamesProxy(t *testing.T) {
	const addr = "https://keytrail.internal:7700"
	dir := t.TempDir()
	tokenFile := writeTokenFile(t, dir)
	proxy := newTLSBroker(t, &tls.Config{GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
		return nil, errors.New("refused") // an internal_error alert
	}})
	host := proxy.Listener.Addr().String()
	_, stderr, code := runKeytrailProcess(t, []string{"HTTPS_PROXY=https://PROXY-USER-MARKER:PROXY-PW-MARKER@" + host},
		"fetch", "--grant", "g", "--identity-token-file", tokenFile, "--addr", addr, "--out", filepath.Join(dir, "cred"), "--timeout", "1s")
	why := "the connection to the proxy at " + host + " (HTTPS_PROXY) for the broker at " + addr + " failed: tls: internal error"
	if code != 1 || !strings.HasPrefix(stderr, "keytrail: g: "+why+"; retrying in ") || !strings.HasSuffix(stderr, "keytrail: g: no credential after 1s; last failure: "+why+"\n") || strings.Contains(stderr, "MARKER") {
		t.Errorf("fetch through an https proxy sending a TLS alert: exit %d, stderr %q; want it retried, naming %q", code, stderr, why)
	}
}
