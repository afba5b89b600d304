package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/net/http/httpproxy"

	"github.com/keytrail/keytrail/broker/client"
	"github.com/keytrail/keytrail/policies"
)

// Exit status of fetch and exec when the broker refuses for good (400, 401,
// 403) or the identity token cannot be had.
const exitPermanent = 1

// workloadFlags are what fetch and exec share: where the broker is, which
// grants, which identity, how long to try.
type workloadFlags struct {
	grants       []string
	tokenFile    string
	tokenEnv     string
	github       bool
	audience     string
	addr         string
	insecureHTTP bool
	ttl          time.Duration
	timeout      time.Duration
	watch        bool
	cmd          *cobra.Command // to tell a flag given from its default
}

func (w *workloadFlags) register(c *cobra.Command) {
	f := c.Flags()
	w.cmd = c
	f.StringArrayVar(&w.grants, "grant", nil, "grant to fetch (repeatable)")
	f.StringVar(&w.tokenFile, "identity-token-file", client.DefaultTokenFile, "identity token file, re-read on every exchange (the default is a Kubernetes projected service-account token)")
	f.StringVar(&w.tokenEnv, "identity-token-env", "", "take the identity token from this environment variable instead")
	f.BoolVar(&w.github, "github-actions", false, "request the identity token from GitHub Actions OIDC (the job needs permissions id-token: write)")
	f.StringVar(&w.audience, "audience", client.DefaultAudience, "audience of the GitHub Actions identity token (with --github-actions only)")
	f.StringVar(&w.addr, "addr", "", "keytrail server URL (default $KEYTRAIL_ADDR or "+client.DefaultAddr+")")
	f.BoolVar(&w.insecureHTTP, "allow-insecure-http", false, "allow a plain-http server URL that is not loopback (the identity token crosses the network in clear)")
	f.DurationVar(&w.ttl, "ttl", 0, "ask for a shorter lifetime than the grant's (whole seconds)")
	f.DurationVar(&w.timeout, "timeout", 5*time.Minute, "give up the first fetch after this long while the broker is busy or down (0: never)")
	f.BoolVar(&w.watch, "watch", false, "keep running and renew at about 2/3 of the TTL")
	c.MarkFlagsMutuallyExclusive("identity-token-file", "identity-token-env", "github-actions")
}

func (w *workloadFlags) validate() error {
	if len(w.grants) == 0 {
		return errors.New("--grant is required")
	}
	seen := map[string]bool{}
	for _, g := range w.grants {
		if strings.TrimSpace(g) == "" || strings.ContainsAny(g, "/\\\x00") || g == "." || g == ".." {
			return fmt.Errorf("--grant %q is not a grant name", g)
		}
		if seen[g] {
			return fmt.Errorf("--grant %s given twice", g)
		}
		seen[g] = true
	}
	if w.ttl < 0 || (w.ttl > 0 && w.ttl%time.Second != 0) {
		return errors.New("--ttl must be a positive whole number of seconds (e.g. 90s, 15m)")
	}
	if w.timeout < 0 {
		return errors.New("--timeout must not be negative")
	}
	// An empty value is a mistake (an unset shell variable, say), not a
	// request for the default: the default token file, or the audience
	// keytrail, would be used without a word.
	for _, name := range []string{"identity-token-file", "identity-token-env", "audience"} {
		if w.cmd == nil || !w.cmd.Flags().Changed(name) {
			continue
		}
		if v, _ := w.cmd.Flags().GetString(name); strings.TrimSpace(v) == "" {
			return fmt.Errorf("--%s must not be empty", name)
		}
	}
	if w.cmd != nil && w.cmd.Flags().Changed("audience") && !w.github {
		// It would be ignored: only the GitHub Actions identity is asked
		// for an audience.
		return errors.New("--audience applies only with --github-actions")
	}
	return nil
}

func (w *workloadFlags) identity(e *env) (client.IdentitySource, error) {
	switch {
	case w.github:
		return client.NewGitHubActionsIdentity(client.GitHubActionsFromEnv(e.getenv, w.audience))
	case w.tokenEnv != "":
		return client.EnvIdentity{Name: w.tokenEnv, Getenv: e.getenv}, nil
	default:
		return client.FileIdentity{Path: w.tokenFile}, nil
	}
}

// sources builds one renewing Source per grant. onCred is called with every
// new credential of a grant (to write it out); retries are reported on
// stderr.
func (w *workloadFlags) sources(e *env, onCred func(grant string, c *client.Credential) error) ([]*client.Source, client.IdentitySource, error) {
	addr, src := w.brokerAddrFrom(e)
	// Checked as client.New checks it, to name where it came from.
	if _, err := client.CheckAddr(addr, w.insecureHTTP); err != nil {
		return nil, nil, fmt.Errorf("broker address (%s): %w", src, err)
	}
	cl, err := client.New(client.Options{Addr: addr, AllowInsecureHTTP: w.insecureHTTP, UserAgent: "keytrail/" + version,
		HTTPClient: &http.Client{Timeout: client.DefaultTimeout, Transport: workloadTransport()}})
	if err != nil {
		return nil, nil, err
	}
	if warn := allProxyWarning(e.getenv, addr); warn != "" {
		fmt.Fprintln(e.lineErr(), "keytrail: warning: "+warn)
	}
	id, err := w.identity(e)
	if err != nil {
		return nil, nil, err
	}
	var out []*client.Source
	for _, g := range w.grants {
		var src *client.Source
		src, err = client.NewSource(client.SourceOptions{
			Client: cl, Grant: g, Exchange: client.ExchangeOptions{Identity: id, TTL: w.ttl},
			OnCredential: func(c *client.Credential) error { return onCred(g, c) },
			OnRetry: func(err error, wait time.Duration) {
				keep := ""
				if c := src.Current(); c != nil && c.Valid(time.Now()) {
					keep = fmt.Sprintf(" (keeping issuance %s, expires in %s)", c.IssuanceID, roundDur(time.Until(c.ExpiresAt)))
				}
				fmt.Fprintf(e.lineErr(), "keytrail: %s: %s; retrying in %s%s\n", g, retryReason(err, addr), roundDur(wait), keep)
			},
		})
		if err != nil {
			return nil, nil, err
		}
		out = append(out, src)
	}
	return out, id, nil
}

// brokerAddr is the broker address fetch and exec use: --addr, else
// $KEYTRAIL_ADDR, else the client's default.
func (w *workloadFlags) brokerAddr(e *env) string {
	addr, _ := w.brokerAddrFrom(e)
	return addr
}

// brokerAddrFrom is brokerAddr and where it came from, for error messages.
func (w *workloadFlags) brokerAddrFrom(e *env) (addr, src string) {
	addr, src = w.addr, "--addr"
	if addr == "" {
		addr, src = e.getenv("KEYTRAIL_ADDR"), "KEYTRAIL_ADDR"
	}
	if strings.TrimSpace(addr) == "" {
		return client.DefaultAddr, "the default"
	}
	return addr, src
}

// retryReason names a transient failure in a few words, without secrets:
// a connection to the broker at addr that failed says that address and the
// cause, without the Go error's request, operation and resolved address.
func retryReason(err error, addr string) string {
	addr = brokerShown(addr)
	var be *client.Error
	if errors.As(err, &be) {
		if be.NotBroker {
			return fmt.Sprintf("something in front of the broker at %s (not the broker: its answer has no X-Request-Id) answered %d %s", addr, be.Status, http.StatusText(be.Status))
		}
		if be.Code != "" {
			return fmt.Sprintf("broker answered %d %s", be.Status, be.Code)
		}
		return fmt.Sprintf("broker answered %d", be.Status)
	}
	if why := connectionFailure(err, addr); why != "" {
		return why
	}
	return err.Error()
}

// brokerShown is the broker address addr (accepted by client.CheckAddr)
// as fetch's and exec's failures name it: scheme://host[:port] only, as
// broker/client's errors do. Its path may hold a token pasted into it, and
// these messages go to stderr (CI logs).
func brokerShown(addr string) string {
	addr = strings.TrimRight(strings.TrimSpace(addr), "/")
	if u, err := url.Parse(addr); err == nil && u.Host != "" {
		return (&url.URL{Scheme: u.Scheme, Host: u.Host}).String()
	}
	return addr
}

// workloadTransport is the transport fetch and exec reach the broker with:
// net/http's default one (HTTPS_PROXY, HTTP_PROXY and NO_PROXY honoured),
// whose failed dials say what they dialed: a dial that failed before it
// had an address (the proxy's host not found) names the host:port.
// client.New names a proxy's own answers (*client.ProxyError: a
// refused CONNECT, or an answer without X-Request-Id to a plain-http
// request it was to forward).
func workloadTransport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	dial := (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	t.DialContext = func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := dial(ctx, network, address)
		var op *net.OpError
		if err != nil && errors.As(err, &op) && op.Addr == nil {
			named := *op
			named.Addr = dialedAddr{network: network, address: address}
			return nil, &named
		}
		return c, err
	}
	return t
}

// proxyVariable is the environment variable net/http takes the proxy for
// the broker at addr from: HTTP_PROXY for plain http, else HTTPS_PROXY
// (ALL_PROXY is not read, nor HTTP_PROXY for https).
func proxyVariable(addr string) string {
	if u, err := url.Parse(addr); err == nil && strings.EqualFold(u.Scheme, "http") {
		return "HTTP_PROXY"
	}
	return "HTTPS_PROXY"
}

// allProxyWarning says that ALL_PROXY (or all_proxy) is set but not used
// for the broker at addr: net/http never reads it (curl and many other
// tools do), so the broker is reached directly. "" when neither is set,
// when the broker is on loopback (net/http never proxies it), when the
// variable net/http reads for it is set (ALL_PROXY would not apply then
// either), or when NO_PROXY (or no_proxy) excludes the broker's host, as
// net/http reads it (golang.org/x/net/http/httpproxy, which net/http
// vendors): no proxy would be used for it anyway. The proxy URL is not
// shown: it may hold a password.
func allProxyWarning(getenv func(string) string, addr string) string {
	name := "ALL_PROXY"
	if getenv(name) == "" {
		name = "all_proxy"
		if getenv(name) == "" {
			return ""
		}
	}
	broker := strings.TrimRight(strings.TrimSpace(addr), "/")
	u, err := url.Parse(broker)
	if err != nil {
		return ""
	}
	if policies.IsLoopbackHost(u.Hostname()) {
		return ""
	}
	v := proxyVariable(broker)
	if getenv(v) != "" || getenv(strings.ToLower(v)) != "" {
		return ""
	}
	noProxy := getenv("NO_PROXY")
	if noProxy == "" {
		noProxy = getenv("no_proxy")
	}
	// Would a proxy set for the broker's scheme be used for it? The
	// placeholder is never dialed.
	const placeholder = "http://proxy.invalid"
	cfg := httpproxy.Config{HTTPProxy: placeholder, HTTPSProxy: placeholder, NoProxy: noProxy}
	if p, err := cfg.ProxyFunc()(u); err != nil || p == nil {
		return ""
	}
	return fmt.Sprintf("%s is set but not used: Go reads HTTPS_PROXY for an https broker and HTTP_PROXY for a plain-http one, so the broker at %s is reached directly; set %s to use that proxy", name, broker, v)
}

// dialedAddr is the address a dial was for, as a net.Addr.
type dialedAddr struct{ network, address string }

func (a dialedAddr) Network() string { return a.network }
func (a dialedAddr) String() string  { return a.address }

// proxyRefusal says that a proxy refused the tunnel to the broker at addr
// (its answer to CONNECT was not 200), or answered of its own to a
// plain-http request it was to forward, and what it answered.
func proxyRefusal(e *client.ProxyError, addr string) string {
	broker := strings.TrimRight(strings.TrimSpace(addr), "/")
	if e.HTTPSPort {
		// The proxy URL's http:// names a port that speaks TLS.
		return fmt.Sprintf("the proxy at %s (%s) for the broker at %s answered that it speaks https (400 Client sent an HTTP request to an HTTPS server.)", e.Proxy, proxyVariable(broker), broker)
	}
	refused := "refused the tunnel to"
	if e.Forwarding {
		refused = "refused to forward the request to"
	}
	return fmt.Sprintf("the proxy at %s (%s) %s the broker at %s: it answered %s", e.Proxy, proxyVariable(broker), refused, broker, e.StatusLine)
}

// proxyRefusalHint says what to check after a proxy's permanent refusal
// of the request to the broker at addr.
func proxyRefusalHint(e *client.ProxyError, addr string) string {
	if e.HTTPSPort {
		v := proxyVariable(strings.TrimRight(strings.TrimSpace(addr), "/"))
		return fmt.Sprintf("write the proxy URL in %s with https:// (https://%s), as the proxy speaks TLS, or list the broker's host in NO_PROXY to reach it without the proxy", v, e.Proxy)
	}
	if e.Status == http.StatusProxyAuthRequired {
		return "check the proxy's user name and password in the proxy URL (http://USER:PASSWORD@HOST:PORT), or list the broker's host in NO_PROXY to reach it without the proxy"
	}
	what := "tunnels"
	if e.Forwarding {
		what = "requests"
	}
	return "check that the proxy allows " + what + " to the broker's host and port, or list the broker's host in NO_PROXY to reach it without the proxy"
}

// connectionFailure says in plain words how a connection to the broker at
// addr failed ("cannot reach the broker at http://127.0.0.1:1: connection
// refused" for "keytrail broker unreachable: Post
// http://127.0.0.1:1/v1/token: dial tcp 127.0.0.1:1: connect: connection
// refused"), or "" for an error that is not a connection's.
func connectionFailure(err error, addr string) string {
	target := "the broker at " + addr
	var refused *client.ProxyError
	if errors.As(err, &refused) {
		return proxyRefusal(refused, addr)
	}
	if why := socksFailure(err, addr); why != "" {
		return why
	}
	if px := proxyFailure(err); px != nil {
		if px.Addr != nil && errors.Is(px.Err, client.ErrConnectUnanswered) {
			// client.Exchange's for an http proxy that closed the
			// connection without answering CONNECT: an https proxy
			// named with http://, say.
			v := proxyVariable(addr)
			return fmt.Sprintf("%s for the broker at %s closed the connection without answering CONNECT: if it speaks https, write https:// in %s (https://%s)", proxyNamed(px, v), addr, v, px.Addr)
		}
		// The proxy of HTTPS_PROXY or HTTP_PROXY failed, not (yet) the
		// broker: named as such, by its dialed address (never the proxy
		// URL, which may carry a password): client.Exchange's for an
		// https proxy's TLS alert, else the failed dial's.
		target = "the proxy (" + proxyVariable(addr) + ") for the broker at " + addr
		at := px.Addr
		var dial *net.OpError
		if at == nil && errors.As(px.Err, &dial) {
			at = dial.Addr
		}
		if at != nil {
			target = fmt.Sprintf("the proxy at %s (%s) for the broker at %s", at, proxyVariable(addr), addr)
		}
		err = px.Err
	}
	var dnsErr *net.DNSError
	var op *net.OpError
	var ne net.Error
	switch {
	case errors.As(err, &dnsErr):
		switch {
		case dnsErr.IsNotFound:
			return fmt.Sprintf("cannot reach %s: host %s not found", target, dnsErr.Name)
		case dnsErr.IsTimeout:
			return fmt.Sprintf("cannot reach %s: looking up host %s timed out", target, dnsErr.Name)
		}
		return fmt.Sprintf("cannot reach %s: looking up host %s failed: %s", target, dnsErr.Name, dnsErr.Err)
	case errors.As(err, &op):
		cause := op.Err.Error()
		var errno syscall.Errno
		var sc *os.SyscallError
		switch {
		case op.Timeout():
			cause = "timed out"
		case errors.As(op.Err, &errno):
			cause = errno.Error()
		case errors.As(op.Err, &sc):
			cause = sc.Err.Error()
		}
		if op.Op == "dial" {
			return fmt.Sprintf("cannot reach %s: %s", target, cause)
		}
		return fmt.Sprintf("the connection to %s failed: %s", target, cause)
	case errors.As(err, &ne) && ne.Timeout() && errors.Is(err, context.DeadlineExceeded):
		// The client's own timeout (http.Client.Timeout). Another one,
		// such as net/http's "TLS handshake timeout" (10 s), reads as it is.
		return fmt.Sprintf("no answer from %s within %s", target, client.DefaultTimeout)
	}
	return ""
}

// socksFailure says how a SOCKS proxy (HTTPS_PROXY=socks5://...) failed
// after it was reached: it refused the handshake (its user name and
// password, in the proxy URL) or could not connect to the broker. net/http's
// error says "socks connect" with the proxy's address as Source (host:port,
// never the URL's user info) and the broker's as Addr, and would read as
// the broker's failure. "" for another error.
func socksFailure(err error, addr string) string {
	var op *net.OpError
	if !errors.As(err, &op) || !strings.HasPrefix(op.Op, "socks ") || op.Err == nil {
		return ""
	}
	proxy := "the SOCKS proxy"
	if op.Source != nil {
		proxy += " at " + op.Source.String()
	}
	// "unknown error connection refused": the proxy's reply to CONNECT.
	cause := strings.TrimPrefix(op.Err.Error(), "unknown error ")
	if op.Timeout() {
		cause = "timed out"
	}
	return fmt.Sprintf("%s (%s) for the broker at %s failed: %s", proxy, proxyVariable(addr), addr, cause)
}

// socksHint says what to check after a SOCKS proxy's refusal that
// client.IsPermanent counts: its rules, or the user name and password of
// the proxy URL (the other refusals are of the login).
func socksHint(err error) string {
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil && strings.HasSuffix(op.Err.Error(), "not allowed by ruleset") {
		return "check that the proxy's rules allow connections to the broker's host and port, or list the broker's host in NO_PROXY to reach it without the proxy"
	}
	return "check the proxy's user name and password in the proxy URL (socks5://USER:PASSWORD@HOST:PORT), or list the broker's host in NO_PROXY to reach it without the proxy"
}

// certificateFailure says which certificate did not verify (the broker's,
// or an https proxy's), the x509 cause, and what to check: the CA
// (SSL_CERT_FILE, SSL_CERT_DIR: fetch and exec have no CA flag, Go reads
// these on Linux instead of the system roots) and the host name of --addr;
// for an expired certificate its renewal and the clock.
func certificateFailure(err error, addr string) string {
	broker := strings.TrimRight(strings.TrimSpace(addr), "/")
	cause := err.Error()
	var cv *tls.CertificateVerificationError
	if errors.As(err, &cv) && cv.Err != nil {
		cause = cv.Err.Error()
	}
	if px := proxyFailure(err); px != nil {
		// The proxy's own TLS (HTTPS_PROXY=https://...), named by the
		// host:port client.Exchange adds to net/http's error.
		v := proxyVariable(broker)
		return fmt.Sprintf("cannot verify the certificate of %s for the broker at %s: %s: check that SSL_CERT_FILE (or SSL_CERT_DIR) holds the CA that issued the proxy's certificate, and the proxy's host name in %s", proxyNamed(px, v), broker, cause, v)
	}
	host := broker
	if u, perr := url.Parse(broker); perr == nil && u.Hostname() != "" {
		host = u.Hostname()
	}
	hint := "check that SSL_CERT_FILE (or SSL_CERT_DIR) holds the CA that issued the broker's certificate (Go on Linux reads them instead of the system roots), and that the host in --addr (or KEYTRAIL_ADDR), " + host + ", is the broker's"
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	switch {
	case errors.As(err, &hn):
		hint = "check the host in --addr (or KEYTRAIL_ADDR), " + host + ": use a name the broker's certificate is for"
	case errors.As(err, &ci) && ci.Reason == x509.Expired:
		hint = "the broker's certificate (or a CA's) must be renewed, or this machine's clock is wrong: check both"
	}
	return fmt.Sprintf("cannot verify the certificate of the broker at %s: %s: %s", broker, cause, hint)
}

// clientCertificateFailure says that the broker at addr (or the https proxy
// for it) refused the TLS connection with an alert about the client's
// certificate (client.IsClientCertificateRefused): it requires mutual TLS
// (the broker's tls.client_ca_file), and fetch and exec have no client
// certificate setting (no flag, no environment variable) to present one.
func clientCertificateFailure(err error, addr string) string {
	broker := strings.TrimRight(strings.TrimSpace(addr), "/")
	cause := err.Error()
	var op *net.OpError
	for e := err; errors.As(e, &op); e = op.Err {
		if op.Op == "remote error" {
			cause = op.Error()
			break
		}
	}
	const cannot = "it requires a client certificate it trusts (mutual TLS), which fetch and exec cannot present: they have no client certificate setting"
	if px := proxyFailure(err); px != nil {
		// client.Exchange names the https proxy's alert so, with its
		// host:port (never the URL's user info).
		v := proxyVariable(broker)
		return fmt.Sprintf("%s for the broker at %s refused the TLS connection: %s: %s; use a proxy that does not require one in %s, or list the broker's host in NO_PROXY to reach it without the proxy", proxyNamed(px, v), broker, cause, cannot, v)
	}
	return fmt.Sprintf("the broker at %s refused the TLS connection: %s: %s; reach it at an address that does not require one (the broker's tls.client_ca_file unset), or fetch with the Go client (broker/client), whose Options.HTTPClient can present one", broker, cause, cannot)
}

// plainHTTPFailure says that the broker at addr (an https URL), or the
// https proxy for it, answered the TLS handshake in plain HTTP, and which
// address to use instead. The addresses shown have no user info, query or
// fragment. Plain http to a host not on loopback needs
// --allow-insecure-http (client.New refuses it otherwise).
func plainHTTPFailure(err error, addr string) string {
	broker := strings.TrimRight(strings.TrimSpace(addr), "/")
	u, perr := url.Parse(broker)
	if perr != nil {
		u = &url.URL{}
	}
	shown := &url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	broker = shown.String()
	if px := proxyFailure(err); px != nil {
		v := proxyVariable(broker)
		use := "http://"
		if px.Addr != nil {
			use += " (http://" + px.Addr.String() + ")"
		}
		return fmt.Sprintf("%s for the broker at %s answered in plain HTTP: use %s for the proxy in %s, or enable TLS on the proxy", proxyNamed(px, v), broker, use, v)
	}
	shown.Scheme = "http"
	use := shown.String()
	if policies.IsLoopbackHost(u.Hostname()) {
		return fmt.Sprintf("the broker at %s answered in plain HTTP: use %s in --addr (or KEYTRAIL_ADDR), or enable TLS on the broker", broker, use)
	}
	return fmt.Sprintf("the broker at %s answered in plain HTTP: enable TLS on the broker, or use %s in --addr (or KEYTRAIL_ADDR) with --allow-insecure-http (the identity token then crosses the network in clear)", broker, use)
}

// httpsPortFailure says that the broker at addr, an http URL, answered
// that it speaks https (client.ErrHTTPSPort: net/http's answer to plain
// HTTP on its TLS port), and which address to use instead.
func httpsPortFailure(addr string) string {
	u, err := url.Parse(strings.TrimRight(strings.TrimSpace(addr), "/"))
	if err != nil {
		u = &url.URL{}
	}
	shown := &url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	broker := shown.String()
	shown.Scheme = "https"
	return fmt.Sprintf("the broker at %s answered that it speaks https (400 Client sent an HTTP request to an HTTPS server.): use %s in --addr (or KEYTRAIL_ADDR)", broker, shown)
}

// refusedHint is what to check after a refused connection: the broker's
// address, or the proxy's when the proxy refused.
func refusedHint(err error) string {
	switch {
	case !errors.Is(err, syscall.ECONNREFUSED):
		return ""
	case proxyFailure(err) != nil:
		return "; is the proxy running at that address? NO_PROXY names the hosts reached without it"
	}
	return "; is the broker running at that address? Give its URL with --addr or KEYTRAIL_ADDR"
}

// proxyNamed is the proxy of px, a proxyFailure, as messages name it: by
// its host:port when the error has it ("the proxy at 10.0.0.5:3128
// (HTTPS_PROXY)"), never by its URL, which may carry a password; v is the
// variable it is set in.
func proxyNamed(px *net.OpError, v string) string {
	if px.Addr == nil {
		return "the proxy (" + v + ")"
	}
	return fmt.Sprintf("the proxy at %s (%s)", px.Addr, v)
}

// proxyFailure is net/http's error for a connection to the proxy
// (HTTPS_PROXY, HTTP_PROXY) that failed, or nil.
func proxyFailure(err error) *net.OpError {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "proxyconnect" {
		return op
	}
	return nil
}

func roundDur(d time.Duration) time.Duration {
	if d > time.Minute {
		return d.Round(time.Second)
	}
	return d.Round(10 * time.Millisecond)
}

// permanentError turns a failure that retrying cannot fix into an exit
// status with a message that says what to fix.
func permanentError(grant string, id client.IdentitySource, err error, addr string) error {
	var be *client.Error
	var ie *client.IdentityError
	var refused *client.ProxyError
	// The broker named by its scheme and host only (brokerShown), except
	// where the address to use instead is said (plainHTTPFailure,
	// httpsPortFailure).
	shown := brokerShown(addr)
	switch {
	case errors.As(err, &refused):
		return exitError{code: exitPermanent, msg: fmt.Sprintf("%s: %s: %s", grant, proxyRefusal(refused, shown), proxyRefusalHint(refused, shown))}
	case client.IsCertificateError(err):
		return exitError{code: exitPermanent, msg: fmt.Sprintf("%s: %s", grant, certificateFailure(err, shown))}
	case client.IsClientCertificateRefused(err):
		return exitError{code: exitPermanent, msg: fmt.Sprintf("%s: %s", grant, clientCertificateFailure(err, shown))}
	case client.IsPlainHTTPAnswer(err):
		return exitError{code: exitPermanent, msg: fmt.Sprintf("%s: %s", grant, plainHTTPFailure(err, addr))}
	case errors.Is(err, client.ErrHTTPSPort):
		return exitError{code: exitPermanent, msg: fmt.Sprintf("%s: %s", grant, httpsPortFailure(addr))}
	case socksFailure(err, shown) != "":
		return exitError{code: exitPermanent, msg: fmt.Sprintf("%s: %s: %s", grant, socksFailure(err, shown), socksHint(err))}
	case errors.As(err, &be) && be.Code == client.CodeInvalidGrant:
		fix := "check the token " + id.Describe() + ", its audience (" + client.DefaultAudience + ") and expiry"
		if _, gh := id.(*client.GitHubActionsIdentity); gh {
			fix = "check that the job has `permissions: id-token: write`, the --audience, and that the policy trusts this repository's tokens"
		}
		return exitError{code: exitPermanent, msg: fmt.Sprintf("%s: the identity token was rejected (%s): %s", grant, be, fix)}
	case errors.As(err, &be):
		return exitError{code: exitPermanent, msg: fmt.Sprintf("%s: %s: %s", grant, be, be.Hint())}
	case errors.Is(err, client.ErrBadResponse):
		return exitError{code: exitPermanent, msg: fmt.Sprintf("%s: %s: check that --addr (or $KEYTRAIL_ADDR) names a keytrail server and that nothing in between rewrites its answers", grant, err)}
	case errors.As(err, &ie):
		fix := "check --identity-token-file (in Kubernetes: a projected service-account token volume with audience " + client.DefaultAudience + ", see docs/examples)"
		switch id.(type) {
		case client.EnvIdentity:
			fix = "check --identity-token-env and that the variable holds the identity JWT"
		case *client.GitHubActionsIdentity:
			fix = "check that the job has `permissions: id-token: write`"
		}
		return exitError{code: exitPermanent, msg: fmt.Sprintf("%s: cannot get the identity token: %s: %s", grant, ie, fix)}
	}
	return exitError{code: exitPermanent, msg: fmt.Sprintf("%s: %s", grant, err)}
}

// fetchAll fetches every source's first credential concurrently and
// returns the first failure (as an exit error). A failure retrying cannot
// fix (a permanent refusal, no identity token, a credential that cannot be
// written) stops the other fetches at once: the command fails either way,
// and they may be retrying a busy broker until --timeout (or forever).
func fetchAll(ctx context.Context, srcs []*client.Source, id client.IdentitySource, timeout time.Duration, addr string) error {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	i, err := firstFailure(ctx, srcs, func(ctx context.Context, s *client.Source) error {
		_, err := s.Fetch(ctx)
		return err
	})
	if i < 0 {
		return nil
	}
	grant := srcs[i].Grant()
	switch {
	case timeout > 0 && errors.Is(err, context.DeadlineExceeded) && ctx.Err() != nil:
		why := "the broker stayed busy or unreachable"
		if last := client.LastFailure(err); last != nil {
			why = "last failure: " + retryReason(last, addr) + refusedHint(last)
		}
		return exitError{code: exitPermanent, msg: fmt.Sprintf("%s: no credential after %s; %s", grant, timeout, why)}
	case errors.Is(err, context.Canceled):
		return err
	case client.IsPermanent(err):
		return permanentError(grant, id, err, addr)
	default:
		return exitError{code: exitPermanent, msg: fmt.Sprintf("%s: %s", grant, err)}
	}
}

// watchAll runs every source until ctx ends (nil) or one fails for good;
// it then stops the others and returns the failed source's index and error.
func watchAll(ctx context.Context, srcs []*client.Source) (int, error) {
	return firstFailure(ctx, srcs, func(ctx context.Context, s *client.Source) error { return s.Run(ctx) })
}

// firstFailure runs fn for every source concurrently until all return. The
// first one to fail cancels the others (their cancellations are not
// reported); it returns that source's index and error, or -1, nil.
func firstFailure(ctx context.Context, srcs []*client.Source, fn func(context.Context, *client.Source) error) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type result struct {
		i   int
		err error
	}
	res := make(chan result, len(srcs))
	for i, s := range srcs {
		go func() { res <- result{i, fn(ctx, s)} }()
	}
	first := result{i: -1}
	for range srcs {
		r := <-res
		if r.err != nil && first.i < 0 {
			first = r
			cancel()
		}
	}
	return first.i, first.err
}

// outputFlags say where and how credentials are written.
type outputFlags struct {
	out    string
	outDir string
	format string
}

func (o *outputFlags) register(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&o.out, "out", "", "file to write the credential to (one grant; - for stdout)")
	f.StringVar(&o.outDir, "out-dir", "", "directory to write one file per grant to, named after the grant")
	f.StringVar(&o.format, "format", "raw", "raw (the access token), json (the whole response), env (KEYTRAIL_* shell assignments) or pem (certificate, chain and key of pki grants)")
	c.MarkFlagsMutuallyExclusive("out", "out-dir")
}

func (o *outputFlags) any() bool { return o.out != "" || o.outDir != "" }

func (o *outputFlags) validate(grants []string, watch bool) error {
	if _, ok := formatExt[o.format]; !ok {
		return fmt.Errorf("--format %q: want raw, json, env or pem", o.format)
	}
	if o.out != "" && len(grants) > 1 {
		return errors.New("--out takes one grant; use --out-dir for several")
	}
	if o.out == "-" && watch {
		return errors.New("--out - (stdout) cannot be combined with --watch")
	}
	return nil
}

// prepare creates --out-dir and checks that every grant's file can be
// written, before the broker is asked: a credential minted and then
// dropped for want of a directory is an issuance for nothing.
func (o *outputFlags) prepare(grants []string) error {
	if !o.any() {
		return nil // exec with --env only
	}
	if o.outDir != "" {
		if err := os.MkdirAll(o.outDir, 0o700); err != nil {
			return fmt.Errorf("--out-dir %s: %w", o.outDir, stripPath(err))
		}
	}
	flag := "--out"
	if o.outDir != "" {
		flag = "--out-dir"
	}
	probed := map[string]bool{}
	for _, g := range grants {
		p := o.path(g)
		if p == "-" {
			continue
		}
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			if o.outDir != "" {
				return fmt.Errorf("%s: %s is a directory", flag, p)
			}
			return fmt.Errorf("%s %s: is a directory (use --out-dir)", flag, p)
		}
		dir := filepath.Dir(p)
		if probed[dir] {
			continue
		}
		probed[dir] = true
		// What writeAtomic will do: a temporary file in the directory.
		f, err := os.CreateTemp(dir, ".keytrail-probe-*")
		if err != nil {
			return fmt.Errorf("%s %s: cannot write in %s: %w", flag, p, dir, stripPath(err))
		}
		f.Close()
		os.Remove(f.Name())
	}
	return nil
}

// stripPath keeps the cause of an *os.PathError (the message names the
// path already).
func stripPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

var formatExt = map[string]string{"raw": "", "json": ".json", "env": ".env", "pem": ".pem"}

// path is where grant's credential goes ("-" for stdout).
func (o *outputFlags) path(grant string) string {
	if o.out != "" {
		return o.out
	}
	return filepath.Join(o.outDir, grant+formatExt[o.format])
}

// write renders c and writes it atomically to its path.
func (o *outputFlags) write(stdout io.Writer, grant string, c *client.Credential) (string, error) {
	data, err := renderCredential(o.format, c)
	if err != nil {
		return "", err
	}
	p := o.path(grant)
	if p == "-" {
		_, err := stdout.Write(data)
		return "stdout", err
	}
	if err := writeAtomic(p, data); err != nil {
		return "", err
	}
	return p, nil
}

// renderCredential formats c for a file.
func renderCredential(format string, c *client.Credential) ([]byte, error) {
	switch format {
	case "raw":
		return []byte(c.AccessToken), nil
	case "json":
		return c.Raw, nil
	case "env":
		return renderEnv(c), nil
	case "pem":
		return renderPEM(c)
	}
	return nil, fmt.Errorf("unknown format %q", format)
}

// renderEnv writes KEYTRAIL_ACCESS_TOKEN and the other fields as shell
// assignments, single-quoted, one a line. Credential fields become
// KEYTRAIL_<FIELD> (upper case; the prefix keeps a field called "path"
// from overwriting PATH).
func renderEnv(c *client.Credential) []byte {
	vars := map[string]string{
		"KEYTRAIL_ACCESS_TOKEN": c.AccessToken,
		"KEYTRAIL_GRANT":        c.Grant,
		"KEYTRAIL_ISSUANCE_ID":  c.IssuanceID,
		"KEYTRAIL_SESSION_ID":   c.SessionID,
		"KEYTRAIL_EXPIRES_AT":   c.ExpiresAt.UTC().Format(time.RFC3339),
	}
	// Fields in sorted order: when two names map to one variable (lease-id,
	// lease_id) the same one wins on every renewal.
	fields := make([]string, 0, len(c.Fields))
	for k := range c.Fields {
		fields = append(fields, k)
	}
	sort.Strings(fields)
	for _, k := range fields {
		name := "KEYTRAIL_" + envName(k)
		if _, taken := vars[name]; taken {
			continue
		}
		v, _ := c.Field(k)
		vars[name] = v
	}
	names := make([]string, 0, len(vars))
	for k := range vars {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		b.WriteString(k + "=" + shellQuote(vars[k]) + "\n")
	}
	return []byte(b.String())
}

// envName upper-cases a field name and replaces anything but [A-Z0-9_].
func envName(field string) string {
	return strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z':
			return r - 'a' + 'A'
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_':
			return r
		}
		return '_'
	}, field)
}

// shellQuote quotes s for POSIX sh: single quotes, with each embedded
// quote written as close-quote, backslash-quote, open-quote.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// renderPEM concatenates the certificate, its chain (or issuing CA) and the
// private key of a pki credential.
func renderPEM(c *client.Credential) ([]byte, error) {
	cert, ok := c.Fields["certificate"].(string)
	if !ok || !strings.Contains(cert, "-----BEGIN ") {
		return nil, fmt.Errorf("grant %s (kind %s) returned no certificate: --format pem is for pki grants", c.Grant, c.Kind)
	}
	blocks := []string{cert}
	switch chain := c.Fields["ca_chain"].(type) {
	case []any:
		for _, v := range chain {
			if s, ok := v.(string); ok {
				blocks = append(blocks, s)
			}
		}
	case string:
		blocks = append(blocks, chain)
	default:
		if ca, ok := c.Fields["issuing_ca"].(string); ok {
			blocks = append(blocks, ca)
		}
	}
	if key, ok := c.Fields["private_key"].(string); ok {
		blocks = append(blocks, key)
	}
	var b strings.Builder
	for _, s := range blocks {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		b.WriteString(s + "\n")
	}
	return []byte(b.String()), nil
}

// writeAtomic replaces path with data so that a reader sees either the old
// file or the complete new one, never a part: a temporary file in the same
// directory (mode 0600), write, fsync, rename, fsync the directory.
// An existing path that is not a regular file (nor a symbolic link, which
// the rename replaces as it always did) is refused: renaming over
// /dev/null, a named pipe or a socket would replace the device itself (as
// root, /dev/null became a 0600 regular file), and a directory cannot be
// replaced. Standard output is `--out -`.
func writeAtomic(path string, data []byte) (err error) {
	if fi, err := os.Lstat(path); err == nil && !fi.Mode().IsRegular() && fi.Mode()&os.ModeSymlink == 0 {
		return fmt.Errorf("writing %w: it would be replaced, not written to; name a file (or - for standard output where the command takes it)", policies.NotRegular(path, fi.Mode()))
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err = f.Chmod(0o600); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("writing %s: fsync: %w", path, err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err = os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("writing %s: opening directory for fsync: %w", path, err)
	}
	defer d.Close()
	if err = d.Sync(); err != nil {
		return fmt.Errorf("writing %s: fsync directory: %w", path, err)
	}
	return nil
}

// statusLine is the one line per credential fetch and exec print.
func statusLine(w io.Writer, grant string, c *client.Credential, dest string) {
	msg := fmt.Sprintf("keytrail: %s: issuance %s, expires in %s", grant, c.IssuanceID, roundDur(time.Until(c.ExpiresAt)))
	if dest != "" {
		msg += ", written to " + dest
	}
	fmt.Fprintln(w, msg)
}

func newFetchCmd(e *env) *cobra.Command {
	var (
		wf workloadFlags
		of outputFlags
	)
	c := &cobra.Command{
		Use:   "fetch --grant G [--grant G2...] [--identity-token-file F | --identity-token-env VAR | --github-actions] (--out FILE | --out-dir DIR) [--format raw|json|env|pem] [--watch]",
		Short: "Exchange the workload's identity token for a credential and write it atomically (0600)",
		Long: `Exchange the workload's identity token for credentials and write each one
atomically (temporary file in the same directory, mode 0600, fsync, rename):
a reader sees the old file or the new one, never a part of one. One status
line per credential goes to stderr.

Identity: --identity-token-file (default ` + client.DefaultTokenFile + `, re-read on
every exchange), --identity-token-env VAR, or --github-actions (the runner's
OIDC endpoint, audience --audience).
Server:   --addr, else $KEYTRAIL_ADDR, else ` + client.DefaultAddr + `

When the broker is busy (429) or unavailable (503) or unreachable, fetch backs
off with jitter, never before Retry-After, and tries again (the first fetch
for at most --timeout). With --watch it keeps running, renews each credential
at about 2/3 of its TTL (with jitter), keeps the last credential in place
while renewals fail transiently, and stops on SIGINT/SIGTERM.

Formats: raw   the access token alone
         json  the broker's whole response
         env   KEYTRAIL_ACCESS_TOKEN='...' and KEYTRAIL_<FIELD>='...' lines
         pem   certificate, chain and private key (pki grants)

Exit status: 0 done (with --watch: stopped by SIGINT/SIGTERM); 1 the broker
refused for good (400/401/403: the message says what to fix), its 200 answer
was not a token response (not retried), its certificate did not verify
(check SSL_CERT_FILE and the host in --addr), it asked for a client
certificate (mutual TLS: fetch has none to present), a proxy refused, the identity
token cannot be read, --out/--out-dir cannot be written (checked before the broker is asked), no
credential came within --timeout, or a signal came before every credential
was fetched; 2 usage.`,
		Example: `  keytrail fetch --grant payments-db --out /run/secrets/db.json --format json
  keytrail fetch --grant payments-vault --grant orders-jwt --out-dir /run/keytrail --watch
  keytrail fetch --github-actions --grant deploy-vault --out - --format env`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := wf.validate(); err != nil {
				return exitError{code: exitUsage, msg: "fetch: " + err.Error()}
			}
			if !of.any() {
				return exitError{code: exitUsage, msg: "fetch: --out or --out-dir is required"}
			}
			if err := of.validate(wf.grants, wf.watch); err != nil {
				return exitError{code: exitUsage, msg: "fetch: " + err.Error()}
			}
			if err := of.prepare(wf.grants); err != nil {
				return exitError{code: exitPermanent, msg: "fetch: " + err.Error()}
			}
			// Grants renew concurrently: one at a time writes files and lines.
			var outMu sync.Mutex
			srcs, id, err := wf.sources(e, func(grant string, c *client.Credential) error {
				outMu.Lock()
				defer outMu.Unlock()
				dest, err := of.write(e.stdout, grant, c)
				if err != nil {
					return err
				}
				statusLine(e.lineErr(), grant, c, dest)
				return nil
			})
			if err != nil {
				return exitError{code: exitPermanent, msg: "fetch: " + err.Error()}
			}
			return runFetch(e.ctx, srcs, id, wf, wf.brokerAddr(e))
		},
	}
	wf.register(c)
	of.register(c)
	return c
}

func runFetch(ctx context.Context, srcs []*client.Source, id client.IdentitySource, wf workloadFlags, addr string) error {
	if err := fetchAll(ctx, srcs, id, wf.timeout, addr); err != nil {
		if errors.Is(err, context.Canceled) {
			return exitError{code: exitPermanent, msg: "fetch: interrupted before every credential was fetched"}
		}
		return err
	}
	if !wf.watch {
		return nil
	}
	i, err := watchAll(ctx, srcs)
	if err == nil {
		return nil
	}
	if client.IsPermanent(err) {
		return permanentError(srcs[i].Grant(), id, err, addr)
	}
	return exitError{code: exitPermanent, msg: fmt.Sprintf("%s: %s", srcs[i].Grant(), err)}
}
