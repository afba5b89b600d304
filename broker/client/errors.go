package client

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// OAuth error codes of POST /v1/token (SPEC "HTTP API").
const (
	CodeInvalidRequest         = "invalid_request"         // 400
	CodeUnsupportedGrantType   = "unsupported_grant_type"  // 400
	CodeInvalidTarget          = "invalid_target"          // 400: unknown grant
	CodeInvalidGrant           = "invalid_grant"           // 401: identity token rejected
	CodeAccessDenied           = "access_denied"           // 403
	CodeSlowDown               = "slow_down"               // 429, with Retry-After
	CodeTemporarilyUnavailable = "temporarily_unavailable" // 503, with Retry-After
)

// MaxRetryAfter bounds how long a Retry-After from the broker is honoured;
// a larger value is treated as this.
const MaxRetryAfter = 10 * time.Minute

// Error is an error answer of the broker. Description and RequestID are the
// broker's safe texts; no secret is ever part of an Error.
type Error struct {
	Status      int           // HTTP status
	Code        string        // OAuth error code ("" when the body was not the OAuth shape)
	Description string        // error_description
	RequestID   string        // request_id (or the X-Request-Id header)
	RetryAfter  time.Duration // parsed Retry-After; 0 when absent
	// NotBroker: a 5xx without the X-Request-Id every answer of the broker
	// carries (SPEC "HTTP API"), so of something in front of the broker
	// (an ingress, a load balancer) that could not reach it. Retried as
	// the broker's own.
	NotBroker bool
}

func (e *Error) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "keytrail broker: %d", e.Status)
	if e.Code != "" {
		b.WriteString(" " + e.Code)
	}
	if e.Description != "" {
		b.WriteString(": " + e.Description)
	}
	if e.RequestID != "" {
		b.WriteString(" (request_id " + e.RequestID + ")")
	}
	if e.NotBroker {
		b.WriteString(" (from something in front of the broker, not the broker: no X-Request-Id)")
	}
	return b.String()
}

// Unwrap returns the category sentinel of package broker matching the code
// (or, for a body that is not the OAuth shape, the status).
func (e *Error) Unwrap() error {
	switch e.Code {
	case CodeInvalidRequest, CodeUnsupportedGrantType:
		return broker.ErrInvalidRequest
	case CodeInvalidTarget:
		return broker.ErrInvalidTarget
	case CodeInvalidGrant:
		return broker.ErrUnauthenticated
	case CodeAccessDenied:
		return broker.ErrDenied
	case CodeSlowDown:
		return broker.ErrRateLimited
	case CodeTemporarilyUnavailable:
		return broker.ErrUnavailable
	case "not_found":
		return broker.ErrNotFound
	}
	switch {
	case e.Status == http.StatusTooManyRequests:
		return broker.ErrRateLimited
	case e.Status >= 500:
		return broker.ErrUnavailable
	case e.Status == http.StatusUnauthorized:
		return broker.ErrUnauthenticated
	case e.Status == http.StatusForbidden:
		return broker.ErrDenied
	case e.Status == http.StatusNotFound:
		return broker.ErrNotFound
	default:
		return broker.ErrInvalidRequest
	}
}

// Temporary reports whether retrying the same request later can succeed:
// 429, 408 and every 5xx.
func (e *Error) Temporary() bool {
	return e.Status == http.StatusTooManyRequests || e.Status == http.StatusRequestTimeout || e.Status >= 500
}

// Hint says, in a sentence, what the caller should fix or expect.
func (e *Error) Hint() string {
	switch e.Code {
	case CodeInvalidGrant:
		return "the identity token was rejected: check the token source, its audience (keytrail), issuer and expiry"
	case CodeAccessDenied:
		return "the identity is not allowed this grant (no workload matches it, the grant is not listed for the workload, or the workload is blocked or revoked): check the policy with `keytrail policy explain --policy PATH --token FILE --grant G`"
	case CodeInvalidTarget:
		return "the broker knows no such grant: check the grant name against the policy's grants"
	case CodeUnsupportedGrantType, CodeInvalidRequest:
		return "the broker rejected the request as malformed: check the grant name, the ttl and the identity token type"
	case CodeSlowDown:
		return "the broker is rate limiting this workload: retry after Retry-After"
	case CodeTemporarilyUnavailable:
		return "the broker or one of its backends is temporarily unavailable: retry after Retry-After"
	}
	if e.NotBroker {
		return "something in front of the broker (an ingress, a load balancer) answered for it: it could not reach the broker, or the broker is down; retry later"
	}
	if e.Temporary() {
		return "the broker is unavailable: retry later"
	}
	return "the broker refused the request"
}

// IdentityError is a failure to obtain the workload's identity token.
type IdentityError struct {
	Source    string // what was asked, e.g. "file /var/run/secrets/tokens/keytrail"
	Err       error
	Transient bool // retrying may help (e.g. the GitHub OIDC endpoint answered 503)
}

func (e *IdentityError) Error() string {
	return "identity token from " + e.Source + ": " + e.Err.Error()
}

func (e *IdentityError) Unwrap() error { return e.Err }

// ErrBadResponse is wrapped by the error for a 200 answer that is not a
// token response (not JSON, no access_token, a token_type other than
// Bearer, an impossible expires_in): the address names something other
// than a keytrail broker, or something in between rewrites its answers.
// It is permanent: a retry would get the same, and each one may mint a
// credential nobody receives.
var ErrBadResponse = errors.New("not a keytrail token response")

// ErrHTTPSPort is wrapped by the error for an http:// address whose server
// speaks https: it answered the plain-HTTP request as net/http does on a
// TLS port, outside any handler (so without the X-Request-Id of the
// broker's answers), "400 Bad Request" with "Client sent an HTTP request
// to an HTTPS server.", directly or forwarded by an HTTP proxy (that
// answer, forwarded, is not the proxy's *ProxyError). The default address (DefaultAddr, http) names a
// local broker serving TLS so, say. Use https:// in the address. It is
// permanent.
var ErrHTTPSPort = errors.New("plain http to a server that speaks https")

// httpsPortAnswer is the start of net/http's answer to plain HTTP on a TLS
// port.
const httpsPortAnswer = "Client sent an HTTP request to an HTTPS server."

// httpsPortAnswered reports whether resp, whose body starts with body, is
// net/http's answer on a TLS port to req, a plain-http request, directly
// or forwarded by a proxy.
func httpsPortAnswered(req *http.Request, resp *http.Response, body []byte) bool {
	return resp.StatusCode == http.StatusBadRequest && req.URL.Scheme == "http" && resp.Header.Get("X-Request-Id") == "" &&
		bytes.HasPrefix(body, []byte(httpsPortAnswer))
}

// readPrefix is up to the first n bytes of r (fewer when it ends or fails
// first).
func readPrefix(r io.Reader, n int) []byte {
	b := make([]byte, n)
	k, _ := io.ReadFull(r, b)
	return b[:k]
}

// httpsPortError is the error for ErrHTTPSPort, naming the address (addr,
// its scheme and host only, redactURL).
type httpsPortError struct{ addr string }

func (e *httpsPortError) Error() string {
	return "keytrail broker: the server at " + e.addr + " answered that it speaks https (400 " + httpsPortAnswer + "): use https://" + strings.TrimPrefix(e.addr, "http://")
}

func (e *httpsPortError) Is(target error) bool { return target == ErrHTTPSPort }

// httpsPortError is the ErrHTTPSPort of the broker's address.
func (c *Client) httpsPortError() error {
	return &httpsPortError{addr: redactURL(strings.TrimSuffix(c.tokenURL, "/v1/token"))}
}

// IsPermanent reports whether err is a failure that retrying cannot fix: a
// 4xx answer of the broker other than 408 and 429, a 200 answer that is
// not a token response (ErrBadResponse), plain http to a server that
// speaks https (ErrHTTPSPort), a certificate that does not
// verify (IsCertificateError), a TLS alert refusing the client's
// certificate or its absence (IsClientCertificateRefused), a plain-HTTP
// answer to the TLS handshake (IsPlainHTTPAnswer), an HTTP proxy's own
// answer other than 408, 429 and 5xx (*ProxyError), a SOCKS5 proxy
// refusing the authentication or the connection by its rules, or an
// identity token that cannot be had.
// An error in err's chain with a Permanent() bool method (one of the
// caller's own HTTP transport, such as a proxy refusing the tunnel) decides
// for itself. Context cancellation is neither permanent nor transient.
func IsPermanent(err error) bool {
	if err == nil {
		return false
	}
	if errors.Is(err, ErrBadResponse) || errors.Is(err, ErrHTTPSPort) || IsCertificateError(err) || IsClientCertificateRefused(err) || IsPlainHTTPAnswer(err) || socksRefused(err) {
		return true
	}
	var px *ProxyError
	if errors.As(err, &px) {
		return !px.Temporary()
	}
	var pe interface{ Permanent() bool }
	if errors.As(err, &pe) {
		return pe.Permanent()
	}
	var be *Error
	if errors.As(err, &be) {
		return !be.Temporary()
	}
	var ie *IdentityError
	if errors.As(err, &ie) {
		return !ie.Transient
	}
	var ce *configError
	return errors.As(err, &ce)
}

// IsCertificateError reports whether err is a failure to verify the TLS
// certificate of the broker (or of an https proxy): signed by an authority
// the workload does not trust (SSL_CERT_FILE and SSL_CERT_DIR name the
// roots Go trusts on Linux), for another host name than the address's,
// expired or not yet valid, or otherwise invalid. Retrying cannot help
// until the trust, the address or the certificate changes. A TLS alert the
// server sent about the client's certificate is not one: see
// IsClientCertificateRefused.
func IsCertificateError(err error) bool {
	var cv *tls.CertificateVerificationError
	var ua x509.UnknownAuthorityError
	var hn x509.HostnameError
	var ci x509.CertificateInvalidError
	var sr x509.SystemRootsError
	var ia x509.InsecureAlgorithmError
	var uc x509.UnhandledCriticalExtension
	var cv2 x509.ConstraintViolationError
	return errors.As(err, &cv) || errors.As(err, &ua) || errors.As(err, &hn) || errors.As(err, &ci) ||
		errors.As(err, &sr) || errors.As(err, &ia) || errors.As(err, &uc) || errors.As(err, &cv2)
}

// IsClientCertificateRefused reports whether err is a TLS alert of the
// server (the broker, or an https proxy) about the client's certificate:
// it requires one and got none ("tls: certificate required"), or refuses
// the one presented (bad, unsupported, revoked, expired or unknown
// certificate, unknown certificate authority). Before TLS 1.3 a server
// missing the certificate may answer "tls: handshake failure" instead (Go
// does), which says no more than that the handshake failed: not one.
// It asks for mutual TLS: the client certificate is set in the
// *http.Transport's TLSClientConfig (Options.HTTPClient), which net/http
// presents to an https proxy too. Retrying cannot help until the client's
// certificate or the server's trust changes.
// An https proxy's alert is named as the proxy's: err then holds a
// *net.OpError with Op "proxyconnect" and Addr the proxy's host:port, as
// net/http's failures at the proxy ("proxyconnect tcp 10.0.0.5:3128: the
// https proxy refused the TLS connection: remote error: tls: certificate
// required"). net/http itself names it so only for an alert during the
// handshake (TLS 1.2); Exchange does for a TLS 1.3 proxy's, which comes
// after the client's side of it (with an *http.Transport, whose Proxy
// function tells the proxy, and without a TLS dialer of its own, whose
// handshake with the proxy net/http may not trace).
func IsClientCertificateRefused(err error) bool {
	var ae tls.AlertError
	if errors.As(err, &ae) {
		return clientCertificateAlerts[ae.Error()]
	}
	// A received alert is of crypto/tls's unexported alert type: known by
	// its text.
	if op := remoteAlert(err); op != nil && op.Err != nil {
		return clientCertificateAlerts[op.Err.Error()]
	}
	return false
}

// remoteAlert is the TLS alert received in err's chain (the first
// *net.OpError "remote error", as crypto/tls reports one), or nil.
func remoteAlert(err error) *net.OpError {
	var op *net.OpError
	for e := err; errors.As(e, &op); e = op.Err {
		if op.Op == "remote error" {
			return op
		}
	}
	return nil
}

// clientCertificateAlerts are the texts of the TLS alerts a server sends
// about the client's certificate (RFC 8446 §6.2).
var clientCertificateAlerts = map[string]bool{
	"tls: bad certificate":               true, // 42
	"tls: unsupported certificate":       true, // 43
	"tls: revoked certificate":           true, // 44
	"tls: expired certificate":           true, // 45
	"tls: unknown certificate":           true, // 46
	"tls: unknown certificate authority": true, // 48
	"tls: certificate required":          true, // 116
}

// IsPlainHTTPAnswer reports whether err is a plain-HTTP answer to the TLS
// handshake: an https address naming a port that serves plain http
// (net/http's ErrSchemeMismatch, "server gave HTTP response to HTTPS
// client"), or an https proxy (HTTPS_PROXY=https://...) that does (its
// tls.RecordHeaderError starting "HTTP/", wrapped as "proxyconnect").
// Retrying cannot help until the address or the server's TLS changes.
func IsPlainHTTPAnswer(err error) bool {
	var rh tls.RecordHeaderError
	return errors.Is(err, http.ErrSchemeMismatch) || (errors.As(err, &rh) && string(rh.RecordHeader[:]) == "HTTP/")
}

// socksRefused reports whether err is a SOCKS5 proxy's refusal that stays
// until the proxy URL or the proxy's rules change: it accepts none of the
// authentication methods offered, the user name and password of the proxy
// URL failed, or its rules do not allow the connection. net/http's SOCKS
// errors are plain texts (its vendored socks dialer has no error types),
// in a *net.OpError whose Op is "socks connect"; its failures to reach the
// broker ("connection refused", "host unreachable") or a timeout stay
// transient.
func socksRefused(err error) bool {
	var op *net.OpError
	if !errors.As(err, &op) || !strings.HasPrefix(op.Op, "socks ") || op.Err == nil || op.Timeout() {
		return false
	}
	switch msg := op.Err.Error(); {
	case msg == "no acceptable authentication methods",
		msg == "username/password authentication failed",
		msg == "invalid username/password",
		strings.HasPrefix(msg, "unsupported authentication method "),
		msg == "unknown error connection not allowed by ruleset":
		return true
	}
	return false
}

// IsTransient reports whether retrying err later can help: a 429, 408 or
// 5xx answer, a temporary identity failure, or a transport failure (the
// broker is down, restarting or unreachable).
func IsTransient(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) || IsPermanent(err) {
		return false
	}
	return true
}

// RetryAfterOf returns the Retry-After the broker (or a proxy, *ProxyError)
// sent with err, or 0.
func RetryAfterOf(err error) time.Duration {
	var be *Error
	if errors.As(err, &be) {
		return be.RetryAfter
	}
	var pe *ProxyError
	if errors.As(err, &pe) {
		return pe.RetryAfter
	}
	return 0
}

// configError is a problem of the caller's own set-up (never retried).
type configError struct{ msg string }

func (e *configError) Error() string { return e.msg }

// ParseRetryAfter parses a Retry-After header value (RFC 9110 §10.2.3):
// delay-seconds or an HTTP-date, relative to now. Absent, malformed or past
// values give 0; values beyond MaxRetryAfter give MaxRetryAfter.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	var d time.Duration
	if n, err := strconv.ParseUint(v, 10, 64); err == nil || errors.Is(err, strconv.ErrRange) {
		if err != nil || n >= uint64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter
		}
		d = time.Duration(n) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	} else {
		return 0
	}
	switch {
	case d <= 0:
		return 0
	case d > MaxRetryAfter:
		return MaxRetryAfter
	}
	return d
}
