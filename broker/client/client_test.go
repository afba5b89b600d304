package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
)

// outcome is what a test compares after an exchange.
type outcome struct {
	Issuance   string
	ExpiresAt  time.Time
	Code       string
	Status     int
	RequestID  string
	RetryAfter time.Duration
	Category   string
	Transient  bool
	Permanent  bool
}

var categories = []error{broker.ErrInvalidRequest, broker.ErrInvalidTarget, broker.ErrUnauthenticated,
	broker.ErrDenied, broker.ErrNotFound, broker.ErrRateLimited, broker.ErrUnavailable}

func outcomeOf(c *Credential, err error) outcome {
	if err == nil {
		return outcome{Issuance: c.IssuanceID, ExpiresAt: c.ExpiresAt}
	}
	o := outcome{Transient: IsTransient(err), Permanent: IsPermanent(err), RetryAfter: RetryAfterOf(err)}
	var be *Error
	if errors.As(err, &be) {
		o.Code, o.Status, o.RequestID = be.Code, be.Status, be.RequestID
	}
	for _, k := range categories {
		if errors.Is(err, k) {
			o.Category = k.Error()
		}
	}
	return o
}

func TestExchange(t *testing.T) {
	clock := newFakeClock()
	t0 := clock.Now()
	// A broker whose clock agrees with the client's: its Date is t0.
	dated := errReply(503, CodeTemporarilyUnavailable, t0.Add(7*time.Second).Format(http.TimeFormat))
	dated.header["Date"] = t0.Format(http.TimeFormat)
	tests := []struct {
		name  string
		reply reply
		want  outcome
	}{
		{"ok/credential", reply{status: 200, body: okBody}, outcome{Issuance: "iss_1", ExpiresAt: t0.Add(900 * time.Second)}},
		{"fail/invalid-grant-401", errReply(401, CodeInvalidGrant, ""),
			outcome{Code: "invalid_grant", Status: 401, RequestID: "req_body", Category: "unauthenticated", Permanent: true}},
		{"fail/access-denied-403", errReply(403, CodeAccessDenied, ""),
			outcome{Code: "access_denied", Status: 403, RequestID: "req_body", Category: "access denied", Permanent: true}},
		{"fail/invalid-target-400", errReply(400, CodeInvalidTarget, ""),
			outcome{Code: "invalid_target", Status: 400, RequestID: "req_body", Category: "unknown grant", Permanent: true}},
		{"fail/invalid-request-400", errReply(400, CodeInvalidRequest, ""),
			outcome{Code: "invalid_request", Status: 400, RequestID: "req_body", Category: "invalid request", Permanent: true}},
		{"fail/unsupported-grant-type-400", errReply(400, CodeUnsupportedGrantType, ""),
			outcome{Code: "unsupported_grant_type", Status: 400, RequestID: "req_body", Category: "invalid request", Permanent: true}},
		{"fail/slow-down-429-seconds", errReply(429, CodeSlowDown, "3"),
			outcome{Code: "slow_down", Status: 429, RequestID: "req_body", RetryAfter: 3 * time.Second, Category: "rate limited", Transient: true}},
		{"fail/unavailable-503-http-date", dated,
			outcome{Code: "temporarily_unavailable", Status: 503, RequestID: "req_body", RetryAfter: 7 * time.Second, Category: "temporarily unavailable", Transient: true}},
		{"fail/unavailable-503-no-retry-after", errReply(503, CodeTemporarilyUnavailable, ""),
			outcome{Code: "temporarily_unavailable", Status: 503, RequestID: "req_body", Category: "temporarily unavailable", Transient: true}},
		{"fail/502-not-oauth-shape", reply{status: 502, body: "<html>bad gateway</html>"},
			outcome{Status: 502, RequestID: "req_hdr", Category: "temporarily unavailable", Transient: true}},
		// A 200 that is not a token response cannot become one on a retry
		// (wrong --addr, something rewriting answers), and each retry may
		// mint a credential that is thrown away: permanent.
		{"fail/200-malformed", reply{status: 200, body: `{"access_token":`}, outcome{Permanent: true}},
		{"fail/200-without-token", reply{status: 200, body: `{"expires_in":5}`}, outcome{Permanent: true}},
		{"fail/200-html", reply{status: 200, body: `<html>hello</html>`, header: map[string]string{"Content-Type": "text/html"}}, outcome{Permanent: true}},
		{"fail/200-token-type-not-bearer", reply{status: 200, body: `{"access_token":"x","token_type":"mac","expires_in":60}`}, outcome{Permanent: true}},
		{"fail/200-negative-expires-in", reply{status: 200, body: `{"access_token":"x","token_type":"Bearer","expires_in":-1}`}, outcome{Permanent: true}},
		{"ok/200-token-type-any-case", reply{status: 200, body: `{"access_token":"x","token_type":"bearer","expires_in":60,"issuance_id":"iss_b"}`},
			outcome{Issuance: "iss_b", ExpiresAt: t0.Add(60 * time.Second)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fb := newFakeBroker(t, tc.reply)
			c, err := New(Options{Addr: fb.srv.URL, Now: clock.Now})
			if err != nil {
				t.Fatal(err)
			}
			cred, err := c.Exchange(context.Background(), "payments-vault", ExchangeOptions{Identity: staticIdentity("SUBJECT-JWT"), TTL: 90 * time.Second})
			if diff := cmp.Diff(tc.want, outcomeOf(cred, err)); diff != "" {
				t.Errorf("Exchange(%s) = %v, want %+v (-want +got):\n%s", tc.name, err, tc.want, diff)
			}
			if err != nil && (strings.Contains(err.Error(), "SUBJECT-JWT") || strings.Contains(err.Error(), "SECRET")) {
				t.Errorf("error %q carries a secret", err)
			}
			forms := fb.sent()
			if len(forms) != 1 {
				t.Fatalf("broker saw %d requests, want 1", len(forms))
			}
			wantForm := url.Values{
				"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
				"subject_token":      {"SUBJECT-JWT"},
				"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"},
				"audience":           {"payments-vault"},
				"ttl":                {"90"},
			}
			if diff := cmp.Diff(wantForm, forms[0]); diff != "" {
				t.Errorf("form sent (-want +got):\n%s", diff)
			}
		})
	}
}

func TestExchangeCredentialFields(t *testing.T) {
	fb := newFakeBroker(t, reply{status: 200, body: okBody})
	c, err := New(Options{Addr: fb.srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	cred, err := c.Exchange(context.Background(), "payments-vault", ExchangeOptions{Identity: staticIdentity("x"), Actor: staticIdentity("ACTOR")})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, f := range []string{"access_token", "accessor", "policies", "ttl", "issuance_id", "expires_in", "session_id", "nope"} {
		v, ok := cred.Field(f)
		got[f] = fmt.Sprintf("%v:%s", ok, v)
	}
	want := map[string]string{"access_token": "true:hvs.SECRET-TOKEN", "accessor": "true:acc_1", "policies": `true:["payments-read"]`,
		"ttl": "true:900", "issuance_id": "true:iss_1", "expires_in": "true:900", "session_id": "true:ses_1", "nope": "false:"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Field (-want +got):\n%s", diff)
	}
	if string(cred.Raw) != okBody {
		t.Errorf("Raw = %q, want the body as sent", cred.Raw)
	}
	f := fb.sent()[0]
	if f.Get("actor_token") != "ACTOR" || f.Get("actor_token_type") != broker.TokenTypeJWT || f.Has("ttl") {
		t.Errorf("form = %v, want actor token and no ttl", f)
	}
	// Neither String nor LogValue shows the secret.
	var logged strings.Builder
	slog.New(slog.NewTextHandler(&logged, nil)).Info("x", "cred", cred)
	for _, s := range []string{cred.String(), fmt.Sprint(cred), logged.String()} {
		if strings.Contains(s, "SECRET") || !strings.Contains(s, "iss_1") {
			t.Errorf("rendering %q shows the secret or lacks the issuance id", s)
		}
	}
}

func TestExchangeTransportFailureIsTransient(t *testing.T) {
	fb := newFakeBroker(t, reply{status: 200, body: okBody})
	addr := fb.srv.URL
	fb.srv.Close()
	c, err := New(Options{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Exchange(context.Background(), "g", ExchangeOptions{Identity: staticIdentity("x")})
	if got := outcomeOf(nil, err); !got.Transient || got.Permanent {
		t.Errorf("Exchange(broker down) = %v (%+v), want transient", err, got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = c.Exchange(ctx, "g", ExchangeOptions{Identity: staticIdentity("x")})
	if IsTransient(err) || IsPermanent(err) {
		t.Errorf("Exchange(cancelled) = %v: transient %v permanent %v, want neither", err, IsTransient(err), IsPermanent(err))
	}
}

func TestNewValidatesAddress(t *testing.T) {
	tests := []struct {
		name     string
		addr     string
		insecure bool
		wantErr  bool
	}{
		{"ok/default", "", false, false},
		{"ok/loopback-http", "http://127.0.0.1:7700", false, false},
		{"ok/localhost-http", "http://localhost:7700/", false, false},
		{"ok/https", "https://keytrail.internal:7700", false, false},
		{"ok/insecure-allowed", "http://keytrail.svc:7700", true, false},
		{"fail/remote-http", "http://keytrail.svc:7700", false, true},
		{"fail/scheme", "ftp://127.0.0.1", false, true},
		{"fail/userinfo", "https://u:p@keytrail.internal", false, true},
		{"fail/no-host", "https://", false, true},
		{"fail/query", "https://k.internal/?a=b", false, true},
	}
	for _, tc := range tests {
		_, err := New(Options{Addr: tc.addr, AllowInsecureHTTP: tc.insecure})
		if (err != nil) != tc.wantErr {
			t.Errorf("New(%s: %q) = %v, want error %v", tc.name, tc.addr, err, tc.wantErr)
		}
	}
}

// A broker address refused for carrying credentials or a query (or not
// parsing at all) must not be quoted whole: the error goes to stderr, and
// from there into CI logs.
func TestNewAddressErrorHidesSecrets(t *testing.T) {
	const secret = "ADDR-SECRET-MARKER-5"
	for _, addr := range []string{
		"https://ci:" + secret + "@keytrail.internal",
		"http://ci:" + secret + "@keytrail.svc:7700",
		"https://keytrail.internal/?token=" + secret,
		"https://keytrail.internal/#" + secret,
		"https://ci:" + secret + "@keytrail.internal:notaport",
		"ftp://ci:" + secret + "@keytrail.internal",
		// A token pasted into the path: refused for another reason, the
		// error shows the scheme and host only.
		"http://keytrail.example.com/" + secret,
		"ftp://keytrail.internal/" + secret,
		"https://keytrail.internal/" + secret + "?q=1",
		"https://keytrail.internal/" + secret + "#f",
		"https:///" + secret,
	} {
		_, err := New(Options{Addr: addr})
		if err == nil {
			t.Errorf("New(%q) = nil error, want one", addr)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("New(%q) = %q, quotes the secret", addr, err)
		}
	}
}

func TestExchangeRejectsBadInput(t *testing.T) {
	c, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		grant string
		o     ExchangeOptions
	}{
		{"fail/no-grant", "", ExchangeOptions{Identity: staticIdentity("x")}},
		{"fail/no-identity", "g", ExchangeOptions{}},
		{"fail/sub-second-ttl", "g", ExchangeOptions{Identity: staticIdentity("x"), TTL: time.Millisecond}},
	}
	for _, tc := range tests {
		_, err := c.Exchange(context.Background(), tc.grant, tc.o)
		if err == nil || !IsPermanent(err) {
			t.Errorf("Exchange(%s) = %v, want a permanent error", tc.name, err)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		in   string
		want time.Duration
	}{
		{"ok/seconds", "3", 3 * time.Second},
		{"ok/spaces", " 12 ", 12 * time.Second},
		{"ok/http-date", now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{"ok/capped", "86400", MaxRetryAfter},
		{"ok/overflow-capped", "99999999999999999999", MaxRetryAfter},
		{"ok/date-capped", now.Add(time.Hour).Format(http.TimeFormat), MaxRetryAfter},
		{"fail/empty", "", 0},
		{"fail/zero", "0", 0},
		{"fail/negative", "-5", 0},
		{"fail/fraction", "1.5", 0},
		{"fail/past-date", now.Add(-time.Minute).Format(http.TimeFormat), 0},
		{"fail/garbage", "soon", 0},
	}
	for _, tc := range tests {
		if got := ParseRetryAfter(tc.in, now); got != tc.want {
			t.Errorf("ParseRetryAfter(%s: %q) = %v, want %v", tc.name, tc.in, got, tc.want)
		}
	}
}

func TestErrorHintAndMessage(t *testing.T) {
	e := &Error{Status: 401, Code: CodeInvalidGrant, Description: "identity token rejected", RequestID: "req_1"}
	if got, want := e.Error(), "keytrail broker: 401 invalid_grant: identity token rejected (request_id req_1)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	for _, code := range []string{CodeInvalidGrant, CodeAccessDenied, CodeInvalidTarget, CodeInvalidRequest, CodeSlowDown, CodeTemporarilyUnavailable} {
		if h := (&Error{Code: code}).Hint(); h == "" || h == (&Error{Status: 400}).Hint() {
			t.Errorf("Hint(%s) = %q, want specific advice", code, h)
		}
	}
	if h := (&Error{Status: 401, Code: CodeInvalidGrant}).Hint(); !strings.Contains(h, "audience (keytrail)") || !strings.Contains(h, "expiry") {
		t.Errorf("invalid_grant hint = %q, want audience and expiry named", h)
	}
}

// TestExchangeDoesNotFollowRedirects: a 307/308 from the broker address
// would make net/http re-send the form, identity token included, to the
// Location (plain http to any host too). The client refuses to follow,
// also with a caller's HTTP client, which it leaves unchanged.
func TestExchangeDoesNotFollowRedirects(t *testing.T) {
	var mu sync.Mutex
	var leaked []string
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		mu.Lock()
		leaked = append(leaked, r.PostForm.Get("subject_token"))
		mu.Unlock()
		http.Error(w, "nope", http.StatusBadRequest)
	}))
	defer target.Close()
	callers := &http.Client{Timeout: time.Minute}
	for _, code := range []int{http.StatusTemporaryRedirect, http.StatusPermanentRedirect} {
		for _, hc := range []*http.Client{nil, callers} {
			broker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				http.Redirect(w, r, target.URL+"/v1/token", code)
			}))
			c, err := New(Options{Addr: broker.URL, HTTPClient: hc})
			if err != nil {
				t.Fatal(err)
			}
			_, err = c.Exchange(context.Background(), "g", ExchangeOptions{Identity: staticIdentity("identity.jwt.secret")})
			broker.Close()
			if err == nil {
				t.Errorf("Exchange(broker answers %d) = nil error, want an error", code)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(leaked) > 0 {
		t.Errorf("the identity token was re-sent to the redirect target: %q", leaked)
	}
	if callers.CheckRedirect != nil {
		t.Errorf("the caller's HTTP client was changed")
	}
}

// TestRetryAfterDateIsReadOnTheBrokersClock: a Retry-After HTTP-date is a
// time on the broker's clock. With the workload's clock an hour ahead (or
// behind) the wait is still the one the broker meant, measured from the
// response's Date: not 0 (retrying at once) nor MaxRetryAfter.
func TestRetryAfterDateIsReadOnTheBrokersClock(t *testing.T) {
	brokerNow := time.Now().UTC().Truncate(time.Second)
	for _, skew := range []time.Duration{time.Hour, -time.Hour} {
		fb := newFakeBroker(t, reply{status: 503, body: `{"error":"temporarily_unavailable"}`, header: map[string]string{
			"Date": brokerNow.Format(http.TimeFormat), "Retry-After": brokerNow.Add(30 * time.Second).Format(http.TimeFormat)}})
		c, err := New(Options{Addr: fb.srv.URL, Now: func() time.Time { return brokerNow.Add(skew) }})
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Exchange(context.Background(), "g", ExchangeOptions{Identity: staticIdentity("jwt")})
		if got := RetryAfterOf(err); got != 30*time.Second {
			t.Errorf("client clock %v off: Retry-After = %v, want 30s (err %v)", skew, got, err)
		}
	}
}

// TestScrubURLErrorShowsNoUserinfo: scrubURLError quoted a *url.Error's
// URL as url.URL.Redacted does, which masks only the password: the user
// name (which may be a token as much as the password) was shown. No user
// info of the URL is shown now, nor its path, query or fragment.
func TestScrubURLErrorShowsNoUserinfo(t *testing.T) {
	for _, raw := range []string{
		"https://USER-MARKER:PW-MARKER@keytrail.internal:7700/v1/token",
		"https://USER-MARKER@keytrail.internal:7700/v1/token",
		"https://keytrail.internal:7700/v1/token?t=PW-MARKER#PW-MARKER",
	} {
		err := scrubURLError(&url.Error{Op: "Post", URL: raw, Err: errors.New("connection refused")})
		want := "Post https://keytrail.internal:7700: connection refused"
		if got := err.Error(); got != want {
			t.Errorf("scrubURLError(%q) = %q, want %q", raw, got, want)
		}
	}
	if got := scrubURLError(&url.Error{Op: "Post", URL: "https://USER-MARKER@[::1", Err: errors.New("x")}).Error(); strings.Contains(got, "MARKER") {
		t.Errorf("scrubURLError of an unparsable URL = %q, shows its user info", got)
	}
}

// permanentTransportError is an error of a caller's own transport that says
// whether retrying can help.
type permanentTransportError struct{ permanent bool }

func (e permanentTransportError) Error() string   { return "refused by the proxy" }
func (e permanentTransportError) Permanent() bool { return e.permanent }

// TestIsPermanentAsksTheError: a transport failure was always transient,
// so a caller's transport could not say that one of its failures (a proxy
// refusing the tunnel with 407) will not pass. An error in the chain with a
// Permanent method decides now, wrapped as Exchange wraps it.
func TestIsPermanentAsksTheError(t *testing.T) {
	for _, permanent := range []bool{true, false} {
		err := fmt.Errorf("keytrail broker unreachable: %w", scrubURLError(&url.Error{Op: "Post", URL: "https://keytrail.internal/v1/token", Err: permanentTransportError{permanent}}))
		if IsPermanent(err) != permanent || IsTransient(err) == permanent {
			t.Errorf("Permanent() = %v: IsPermanent = %v, IsTransient = %v", permanent, IsPermanent(err), IsTransient(err))
		}
	}
}

// TestTransportErrorShowsNoAddressPath: a transport failure quoted the
// accepted broker address's path (scheme://host/PATH/v1/token), where a
// token pasted into the address would be printed; the refused-address
// errors of checkURL already showed its scheme and host only. Now
// transport errors do too, through a real failed Exchange.
func TestTransportErrorShowsNoAddressPath(t *testing.T) {
	host := closedLoopbackAddr(t)
	c, err := New(Options{Addr: "http://" + host + "/PATH-MARKER-s3cr3t"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Exchange(context.Background(), "g", ExchangeOptions{Identity: staticIdentity("jwt")})
	if err == nil {
		t.Fatal("Exchange to a closed port succeeded")
	}
	if strings.Contains(err.Error(), "MARKER") || strings.Contains(err.Error(), "v1/token") {
		t.Errorf("Exchange = %q: shows the address's path", err)
	}
	if want := "Post http://" + host + ": "; !strings.Contains(err.Error(), want) {
		t.Errorf("Exchange = %q, want it to name the address as %q", err, want)
	}
}

// closedLoopbackAddr is a loopback host:port nothing listens on (a port
// listened on and closed again).
func closedLoopbackAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}
