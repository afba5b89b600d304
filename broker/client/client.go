package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/keytrail/keytrail/broker"
)

// Defaults.
const (
	DefaultAddr     = "http://127.0.0.1:7700"
	DefaultTimeout  = 30 * time.Second
	maxResponseBody = 1 << 20
)

// Options configure a Client.
type Options struct {
	// Addr is the broker's base URL (KEYTRAIL_ADDR); default DefaultAddr.
	// Plain http:// is accepted only for loopback hosts unless
	// AllowInsecureHTTP is set: the identity token would cross the network
	// in clear.
	Addr              string
	AllowInsecureHTTP bool
	// HTTPClient sends the requests; default: a client with DefaultTimeout
	// over net/http's DefaultTransport. New copies it (and never follows a
	// redirect). An *http.Transport with a Proxy function (as net/http's
	// default one has) is copied too, to name a proxy that refuses the
	// tunnel (ProxyError): Clients over the same transport share one copy
	// and its connection pool, made at the first New; the transport's
	// fields are read then, and later changes to them are not seen. The
	// transport's own CloseIdleConnections does not reach that copy: call
	// the Client's. A transport without a Proxy function, one with its own
	// OnProxyConnectResponse, or another RoundTripper is used as it is.
	HTTPClient *http.Client
	// Now is the clock used to compute expiry times; default time.Now.
	Now func() time.Time
	// UserAgent is sent with every request; default "keytrail-client".
	UserAgent string
}

// Client talks to one broker. It is safe for concurrent use.
type Client struct {
	tokenURL string
	hc       *http.Client
	now      func() time.Time
	ua       string
	// proxy is the Proxy function of the transport (nil when unknown).
	proxy func(*http.Request) (*url.URL, error)
	// proxyTLSTraced: the transport reports its TLS handshake with an
	// https proxy to the request's trace (see proxyTLSTraced).
	proxyTLSTraced bool
}

// New validates o and returns a Client. Clients made over the same
// transport (Options.HTTPClient) share its connections; make one Client
// per broker and reuse it, as an http.Client.
func New(o Options) (*Client, error) {
	addr := strings.TrimSpace(o.Addr)
	if addr == "" {
		addr = DefaultAddr
	}
	if err := checkURL(addr, o.AllowInsecureHTTP, false); err != nil {
		return nil, fmt.Errorf("client: broker address: %w", err)
	}
	// Never follow a redirect: a 307/308 would re-send the form, identity
	// token included, to whatever the Location names (plain http to any
	// host too, past checkURL). A caller's client is copied, not changed;
	// so is its *http.Transport with a Proxy function, to name a proxy that
	// refuses CONNECT (see ProxyError, proxyAware).
	hc := &http.Client{Timeout: DefaultTimeout}
	if o.HTTPClient != nil {
		c := *o.HTTPClient
		hc = &c
	}
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	now := o.Now
	if now == nil {
		now = time.Now
	}
	var proxy func(*http.Request) (*url.URL, error)
	hc.Transport, proxy = proxyAware(hc.Transport)
	ua := o.UserAgent
	if ua == "" {
		ua = "keytrail-client"
	}
	return &Client{tokenURL: strings.TrimRight(addr, "/") + "/v1/token", hc: hc, now: now, ua: ua, proxy: proxy, proxyTLSTraced: proxyTLSTraced(hc.Transport)}, nil
}

// CloseIdleConnections closes the idle connections of the transport the
// Client sends with: the caller's, or the copy of it that the Clients over
// it share (see Options.HTTPClient), for all of them.
func (c *Client) CloseIdleConnections() { c.hc.CloseIdleConnections() }

// CheckAddr checks a keytrail server address as New does (https, or http
// to a loopback host unless allowInsecureHTTP; no user info, query or
// fragment) and returns it parsed. Its errors never quote what could hold a
// password or a token.
func CheckAddr(raw string, allowInsecureHTTP bool) (*url.URL, error) {
	if err := checkURL(raw, allowInsecureHTTP, false); err != nil {
		return nil, err
	}
	return url.Parse(raw)
}

// checkURL accepts https URLs, and http URLs of loopback hosts (or any host
// when insecure is allowed); a query only when query is set.
func checkURL(raw string, insecure, query bool) error {
	if !strings.Contains(raw, "://") {
		// A host:port alone (127.0.0.1:7700) parses as a scheme and an
		// opaque part, or not at all; either way it has no host.
		return errors.New("not a URL: write it with its scheme, https://HOST[:PORT] (http:// for a loopback host)")
	}
	u, err := url.Parse(raw)
	if err != nil {
		// url.Parse's error repeats raw, and an unescaped '/' or '@' in a
		// password makes it quote part of it as the port.
		return errors.New("not a URL")
	}
	// Errors show the address's scheme and host only: its user info,
	// path, query or fragment may hold a password or a token (one pasted
	// into the path too), and errors go to stderr (CI logs).
	shown := strconv.Quote((&url.URL{Scheme: u.Scheme, Host: u.Host}).String())
	if u.Host == "" || u.User != nil || (u.RawQuery != "" && !query) || u.Fragment != "" {
		return fmt.Errorf("%s must be scheme://host[:port][/path] without credentials, query or fragment", shown)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		if insecure || isLoopback(u.Hostname()) {
			return nil
		}
		return fmt.Errorf("%s is plain http to a non-loopback host: use https", shown)
	default:
		return fmt.Errorf("%s: scheme must be http or https", shown)
	}
}

// isLoopback reports whether host is localhost (in any case: host names
// are case-insensitive), in 127.0.0.0/8 or ::1. It is a copy of
// policies.IsLoopbackHost (this package imports no project package), and
// must agree with it: the keytrail command accepts plain http to
// "http://LOCALHOST:7700" by that one.
func isLoopback(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// ExchangeOptions are the per-exchange inputs.
type ExchangeOptions struct {
	// Identity supplies the subject token (required).
	Identity IdentitySource
	// Actor optionally supplies an actor token (delegation: an agent acting
	// for someone), recorded as the act chain.
	Actor IdentitySource
	// TTL asks for a shorter lifetime than the grant's (whole seconds; 0 =
	// the grant's TTL).
	TTL time.Duration
}

// Credential is one minted credential: the broker's response plus the
// client-side times. Its String and LogValue never show the secret.
type Credential struct {
	AccessToken     string         `json:"access_token"`
	IssuedTokenType string         `json:"issued_token_type"`
	TokenType       string         `json:"token_type"`
	ExpiresIn       int64          `json:"expires_in"`
	IssuanceID      string         `json:"issuance_id"`
	Workload        string         `json:"workload"`
	Owner           string         `json:"owner"`
	SessionID       string         `json:"session_id"`
	Grant           string         `json:"grant"`
	Kind            string         `json:"kind"`
	Fields          map[string]any `json:"credential,omitempty"`

	// IssuedAt is the client's time when the request was sent; ExpiresAt is
	// IssuedAt + ExpiresIn (so it errs on the early side).
	IssuedAt  time.Time `json:"-"`
	ExpiresAt time.Time `json:"-"`
	// Raw is the response body exactly as the broker sent it.
	Raw []byte `json:"-"`
}

// TTL is the lifetime the broker granted.
func (c *Credential) TTL() time.Duration { return c.ExpiresAt.Sub(c.IssuedAt) }

// Valid reports whether the credential has not yet expired at now.
func (c *Credential) Valid(now time.Time) bool { return c != nil && now.Before(c.ExpiresAt) }

// Field returns a credential field ("username", "password", "lease_id",
// ...) as a string, or a top-level response field ("access_token",
// "issuance_id", "session_id", "expires_in", ...). Non-string values are
// JSON-encoded. ok is false when there is no such field.
func (c *Credential) Field(name string) (string, bool) {
	if v, ok := c.Fields[name]; ok {
		return fieldString(v), true
	}
	switch name {
	case "access_token":
		return c.AccessToken, true
	case "token_type":
		return c.TokenType, true
	case "issued_token_type":
		return c.IssuedTokenType, true
	case "expires_in":
		return strconv.FormatInt(c.ExpiresIn, 10), true
	case "issuance_id":
		return c.IssuanceID, true
	case "workload":
		return c.Workload, true
	case "owner":
		return c.Owner, true
	case "session_id":
		return c.SessionID, true
	case "grant":
		return c.Grant, true
	case "kind":
		return c.Kind, true
	}
	return "", false
}

func fieldString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case nil:
		return ""
	case json.Number:
		return x.String()
	case float64:
		return strconv.FormatFloat(x, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(x)
	default:
		b, err := json.Marshal(x)
		if err != nil {
			return ""
		}
		return string(b)
	}
}

// String identifies the credential without its secret.
func (c *Credential) String() string {
	if c == nil {
		return "<nil credential>"
	}
	return fmt.Sprintf("credential{grant=%s issuance=%s fingerprint=%s expires_at=%s}",
		c.Grant, c.IssuanceID, broker.Fingerprint(c.AccessToken), c.ExpiresAt.UTC().Format(time.RFC3339))
}

// LogValue implements slog.LogValuer without the secret.
func (c *Credential) LogValue() slog.Value {
	if c == nil {
		return slog.StringValue("<nil>")
	}
	return slog.GroupValue(
		slog.String("grant", c.Grant), slog.String("issuance_id", c.IssuanceID),
		slog.String("fingerprint", broker.Fingerprint(c.AccessToken)),
		slog.Time("expires_at", c.ExpiresAt))
}

// Exchange performs one RFC 8693 token exchange for grant. It does not
// retry: see Source for that. Broker errors are *Error; a failure to get
// the identity token is *IdentityError; an HTTP proxy's own answer (a
// refused CONNECT, or an answer without X-Request-Id to a plain-http
// request it forwarded, other than an https port's answer: ErrHTTPSPort;
// the proxy's own port speaking TLS is its *ProxyError with HTTPSPort)
// is *ProxyError; anything else is a transport failure (transient).
func (c *Client) Exchange(ctx context.Context, grant string, o ExchangeOptions) (*Credential, error) {
	if grant == "" {
		return nil, &configError{"client: grant is required"}
	}
	if o.Identity == nil {
		return nil, &configError{"client: ExchangeOptions.Identity is required"}
	}
	if o.TTL < 0 || (o.TTL > 0 && o.TTL < time.Second) {
		return nil, &configError{"client: ttl must be at least 1s"}
	}
	subject, err := o.Identity.IdentityToken(ctx)
	if err != nil {
		return nil, err
	}
	form := url.Values{
		"grant_type":         {broker.GrantTypeTokenExchange},
		"subject_token":      {subject},
		"subject_token_type": {broker.TokenTypeJWT},
		"audience":           {grant},
	}
	if o.Actor != nil {
		actor, err := o.Actor.IdentityToken(ctx)
		if err != nil {
			return nil, err
		}
		form.Set("actor_token", actor)
		form.Set("actor_token_type", broker.TokenTypeJWT)
	}
	if o.TTL > 0 {
		form.Set("ttl", strconv.FormatInt(int64(o.TTL/time.Second), 10))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.tokenURL, strings.NewReader(form.Encode()))
	if err != nil {
		return nil, &configError{"client: building request: " + err.Error()}
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.ua)
	via := c.proxyFor(req)
	req, h := c.traceHandshakes(req, via)
	sent := c.now()
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, transportError(req, via, h, err, sent)
	}
	defer resp.Body.Close()
	if err := c.proxyAnswer(req, via, resp, sent); err != nil {
		return nil, err
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody+1))
	if err != nil {
		return nil, fmt.Errorf("keytrail broker: reading response: %w", err)
	}
	if len(body) > maxResponseBody {
		return nil, fmt.Errorf("keytrail broker: response larger than %d bytes", maxResponseBody)
	}
	if httpsPortAnswered(req, resp, body) {
		return nil, c.httpsPortError()
	}
	return parseResponse(resp.StatusCode, resp.Header, body, sent)
}

// scrubURLError keeps the operation and cause of a *url.Error.
func scrubURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return fmt.Errorf("%s %s: %w", ue.Op, redactURL(ue.URL), ue.Err)
	}
	return err
}

// redactURL is raw as errors show it: scheme://host[:port] only, as
// checkURL shows a refused address. Its user info (url.URL.Redacted masks
// only the password, and the name may be a token as much as the password),
// path (a token pasted into it), query and fragment may hold a secret, and
// errors go to stderr (CI logs).
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<url>"
	}
	return (&url.URL{Scheme: u.Scheme, Host: u.Host}).String()
}

// parseResponse turns a /v1/token answer into a Credential or an *Error.
func parseResponse(status int, h http.Header, body []byte, sent time.Time) (*Credential, error) {
	if status != http.StatusOK {
		e := &Error{Status: status, RequestID: h.Get("X-Request-Id")}
		var eb struct {
			Error            string `json:"error"`
			ErrorDescription string `json:"error_description"`
			RequestID        string `json:"request_id"`
		}
		if json.Unmarshal(body, &eb) == nil && eb.Error != "" && printable(eb.Error) {
			e.Code = eb.Error
			e.Description = clip(eb.ErrorDescription, 300)
			if eb.RequestID != "" {
				e.RequestID = eb.RequestID
			}
		} else {
			e.Description = http.StatusText(status)
		}
		e.RequestID = clip(e.RequestID, 100)
		// Every answer of the broker carries X-Request-Id (SPEC "HTTP
		// API"): a 5xx without it is of something in front of the broker.
		e.NotBroker = status >= 500 && h.Get("X-Request-Id") == ""
		if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
			e.RetryAfter = retryAfter(h, sent)
		}
		return nil, e
	}
	if ct := h.Get("Content-Type"); ct != "" {
		if mt, _, err := mime.ParseMediaType(ct); err != nil || mt != "application/json" {
			return nil, badResponse(fmt.Sprintf("200 with content type %s, want application/json", strconv.Quote(clip(ct, 100))))
		}
	}
	var c Credential
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&c); err != nil {
		return nil, badResponse("malformed token response: " + jsonErrorKind(err))
	}
	switch {
	case c.AccessToken == "":
		return nil, badResponse("token response without access_token")
	case c.TokenType != "" && !strings.EqualFold(c.TokenType, "Bearer"):
		// RFC 6749 §7.1: the type is case-insensitive; keytrail issues
		// Bearer tokens only.
		return nil, badResponse("token response with token_type " + strconv.Quote(clip(c.TokenType, 40)) + ", want Bearer")
	case c.ExpiresIn < 0:
		return nil, badResponse("token response with negative expires_in")
	case c.ExpiresIn > 10*366*24*3600:
		return nil, badResponse("token response with absurd expires_in")
	case c.ExpiresIn == 0:
		// Over as it arrives (the minted lifetime rounded to 0 s, e.g. a
		// Vault token capped by the broker's own expiring token): useless,
		// and renewing it at once would loop. Transient: Source backs off.
		return nil, errors.New("keytrail broker: the credential expired on arrival (expires_in 0)")
	}
	c.IssuedAt = sent
	c.ExpiresAt = sent.Add(time.Duration(c.ExpiresIn) * time.Second)
	c.Raw = body
	return &c, nil
}

// badResponse is a 200 answer that is not a keytrail token response; it
// is ErrBadResponse (errors.Is) without repeating its text.
func badResponse(what string) error { return &badResponseError{"keytrail broker: " + what} }

type badResponseError struct{ msg string }

func (e *badResponseError) Error() string        { return e.msg }
func (e *badResponseError) Is(target error) bool { return target == ErrBadResponse }

// jsonErrorKind describes a decoding error without quoting the input (which
// may hold a secret).
func jsonErrorKind(err error) string {
	var se *json.SyntaxError
	var te *json.UnmarshalTypeError
	switch {
	case errors.As(err, &se):
		return fmt.Sprintf("invalid JSON at offset %d", se.Offset)
	case errors.As(err, &te):
		return fmt.Sprintf("field %q has the wrong type", te.Field)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "truncated JSON"
	}
	return "invalid JSON"
}

func printable(s string) bool {
	if len(s) > 64 {
		return false
	}
	for _, r := range s {
		if r < 0x21 || r > 0x7e {
			return false
		}
	}
	return true
}

// clip replaces control characters (C0, DEL, C1) and invalid UTF-8 in s,
// which may come from whatever answered, and cuts it to n runes.
func clip(s string, n int) string {
	s = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, s)
	if r := []rune(s); len(r) > n {
		return string(r[:n]) + "..."
	}
	return s
}
