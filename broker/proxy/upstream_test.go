package proxy_test

import (
	"bufio"
	"encoding/base64"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/proxy"
)

// TestProxyUpstreamBehaviour covers what an upstream can do to leak the
// injected secret or send the broker elsewhere.
func TestProxyUpstreamBehaviour(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	evilURL := f.evil.srv.URL + "/collect"
	masked := strings.Repeat("*", len(upstreamKey))

	tests := []struct {
		name       string
		path       string
		wantStatus int
		wantUse    audit.Outcome // outcome of the use_result event
		check      func(t *testing.T, res *response)
	}{
		{
			name: "ok/redirect-to-other-host-returned-not-followed",
			path: "/up/redirect-away?to=" + url.QueryEscape(evilURL), wantStatus: 302,
			wantUse: audit.Outcome{Status: 302},
			check: func(t *testing.T, res *response) {
				if got := res.Header.Get("Location"); got != evilURL {
					t.Errorf("Location = %q, want the upstream's %q relayed", got, evilURL)
				}
			},
		},
		{
			name: "ok/redirect-carrying-the-secret-loses-its-location",
			path: "/up/redirect-leak?to=" + url.QueryEscape(evilURL), wantStatus: 302,
			wantUse: audit.Outcome{Status: 302},
			check: func(t *testing.T, res *response) {
				if got := res.Header.Values("Location"); len(got) != 0 {
					t.Errorf("Location = %q, want it dropped", got)
				}
			},
		},
		{
			name: "ok/echoed-secret-in-body-is-masked", path: "/echo", wantStatus: 200,
			wantUse: audit.Outcome{Status: 200},
			check: func(t *testing.T, res *response) {
				if !strings.Contains(res.Body, "Bearer "+masked) {
					t.Errorf("echo body = %s, want the secret masked in place", res.Body)
				}
			},
		},
		{
			name: "ok/echoed-secret-in-error-body-is-masked", path: "/echo/error", wantStatus: 400,
			wantUse: audit.Outcome{Status: 400},
			check: func(t *testing.T, res *response) {
				if !strings.Contains(res.Body, masked) {
					t.Errorf("echo body = %s, want the secret masked", res.Body)
				}
			},
		},
		{
			name: "ok/response-header-carrying-the-secret-is-dropped", path: "/up/header-leak", wantStatus: 200,
			wantUse: audit.Outcome{Status: 200},
			check: func(t *testing.T, res *response) {
				got := []any{res.Header.Values("X-Debug-Auth"), res.Header.Get("X-Fine"), len(res.Header.Values("X-Request-Id"))}
				want := []any{[]string(nil), "kept", 1}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("response headers [debug fine request-ids] (-want +got):\n%s", diff)
				}
				if strings.HasPrefix(res.Header.Get("X-Request-Id"), "upstream") {
					t.Errorf("X-Request-Id = upstream's, want the broker's")
				}
			},
		},
		{
			// ReverseProxy copies an interim response's headers into the
			// staging writer and clears them; the final response's are
			// staged on their own (responseWriter.adopt).
			name: "ok/interim-response-is-not-relayed", path: "/up/early-hints", wantStatus: 200,
			wantUse: audit.Outcome{Status: 200},
			check: func(t *testing.T, res *response) {
				got := []any{res.Header.Values("Link"), res.Header.Get("X-Fine"), res.Body}
				want := []any{[]string(nil), "kept", "ok"}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("response [link fine body] (-want +got):\n%s", diff)
				}
			},
		},
		{
			name: "ok/announced-trailers-are-dropped", path: "/up/trailer-announced", wantStatus: 200,
			wantUse: audit.Outcome{Status: 200},
			check:   wantNoTrailers,
		},
		{
			name: "ok/unannounced-trailers-are-dropped", path: "/up/trailer-unannounced", wantStatus: 200,
			wantUse: audit.Outcome{Status: 200},
			check:   wantNoTrailers,
		},
		{
			name: "fail/declared-response-over-cap", path: "/up/big", wantStatus: 502,
			wantUse: audit.Outcome{Status: 502, Error: "temporarily_unavailable", Reason: "response_too_large"},
			check: func(t *testing.T, res *response) {
				if code := oauthError(t, res.Body); code != "temporarily_unavailable" {
					t.Errorf("error code = %q", code)
				}
			},
		},
		{
			name: "fail/streamed-response-over-cap-is-cut", path: "/up/stream-big", wantStatus: 200,
			wantUse: audit.Outcome{Status: 200, Error: "aborted", Reason: "response_too_large"},
			check: func(t *testing.T, res *response) {
				if res.Err == nil || len(res.Body) > maxRespBytes {
					t.Errorf("streamed body: %d bytes, read error %v; want it cut at %d with an error", len(res.Body), res.Err, maxRespBytes)
				}
			},
		},
		{
			name: "fail/unrequested-protocol-switch", path: "/up/switch", wantStatus: 502,
			wantUse: audit.Outcome{Status: 502, Error: "temporarily_unavailable", Reason: "upstream_error"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(f.eventsOf(audit.TypeUseResult))
			res := f.do(t, "GET", "/v1/proxy/stripe"+tt.path, bearer(tok), nil)
			if res.Status != tt.wantStatus {
				t.Errorf("GET %s = %d, want %d; body %s", tt.path, res.Status, tt.wantStatus, res.Body)
			}
			if leaks(res.raw()) {
				t.Errorf("response carries the upstream secret:\n%s", res.raw())
			}
			if tt.check != nil {
				tt.check(t, res)
			}
			f.wantUseResult(t, before, tt.wantUse)
			if h := f.evil.Hits(); h != 0 {
				t.Errorf("the other host was reached %d times", h)
			}
		})
	}
}

// wantNoTrailers checks that the upstream's trailers (one of which echoes
// the injected secret, see the fixture's /up/trailer-* routes) reach the
// caller neither announced nor sent. The client moves an announcing Trailer
// header into res.Trailer, so an empty Trailer covers both.
func wantNoTrailers(t *testing.T, res *response) {
	t.Helper()
	if res.Body != "body" || res.Err != nil {
		t.Errorf("body = %q (read error %v), want the upstream's %q", res.Body, res.Err, "body")
	}
	if len(res.Trailer) != 0 {
		var b strings.Builder
		_ = res.Trailer.Write(&b)
		t.Errorf("upstream trailers reached the caller (names announced or trailers sent): %q, names %q", b.String(), slices.Sorted(maps.Keys(res.Trailer)))
	}
}

// TestProxyRedactsRotatedSecret: the response scan follows the secret's
// current value. The proxy keeps a secret's redaction forms between
// requests, so a rotation must replace them: the new key is masked in the
// echoed headers, and an upstream echoing the old one is no longer a leak
// of anything the broker injects.
func TestProxyRedactsRotatedSecret(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	for i, key := range []string{upstreamKey, "sk_live_rotated<key>&more/+", upstreamKey} {
		f.secrets.rotate(key)
		res := f.do(t, "GET", "/v1/proxy/stripe/echo", bearer(tok), nil)
		if res.Status != 200 {
			t.Fatalf("key %d: status %d, body %s", i, res.Status, res.Body)
		}
		if got := f.up.Last().Header.Get("Authorization"); got != "Bearer "+key {
			t.Errorf("key %d: upstream saw Authorization %q, want the current key", i, got)
		}
		if strings.Contains(res.raw(), key) || strings.Contains(res.raw(), url.QueryEscape(key)) {
			t.Errorf("key %d: response carries the current key:\n%s", i, res.raw())
		}
		if !strings.Contains(res.Body, "Bearer "+strings.Repeat("*", len(key))) {
			t.Errorf("key %d: echo body = %s, want the current key masked in place", i, res.Body)
		}
	}
}

func TestProxyDialerRefusesPrivateAddress(t *testing.T) {
	// Grant "closed" points at the same 127.0.0.1 upstream without
	// allow_private.
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "closed").AccessToken
	res := f.do(t, "GET", "/v1/proxy/closed/v1/charges", bearer(tok), nil)
	got := []any{res.Status, oauthError(t, res.Body), f.up.Hits()}
	want := []any{502, "temporarily_unavailable", int64(0)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("[status code upstream-hits] (-want +got):\n%s", diff)
	}
	if leaks(res.raw()) {
		t.Errorf("response carries the secret")
	}
	for _, leak := range []string{"127.0.0.1", "dial", "refused"} {
		if strings.Contains(res.Body, leak) {
			t.Errorf("error body %s carries internal text %q", res.Body, leak)
		}
	}
	f.waitEvent(t, audit.TypeUseResult)
	r := f.eventsOf(audit.TypeUseResult)[0]
	if r.Outcome.Reason != "upstream_address_refused" {
		t.Errorf("use_result reason = %q, want upstream_address_refused", r.Outcome.Reason)
	}
}

func TestProxyUpstreamTimeout(t *testing.T) {
	// Over HTTP/2 the transport's response header timeout is an error of
	// its own (not context.DeadlineExceeded): it is a timeout all the same.
	for _, h2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("http2=%v", h2), func(t *testing.T) {
			f := newFixture(t, fixtureOpts{timeouts: proxy.Timeouts{ResponseHeader: 100 * time.Millisecond}, http2: h2})
			tok := f.credential(t, "stripe").AccessToken
			res := f.do(t, "GET", "/v1/proxy/stripe/up/hang", bearer(tok), nil)
			got := []any{res.Status, oauthError(t, res.Body), leaks(res.raw())}
			want := []any{504, "temporarily_unavailable", false}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("[status code leaks] (-want +got):\n%s", diff)
			}
			f.waitEvent(t, audit.TypeUseResult)
			if r := f.eventsOf(audit.TypeUseResult)[0]; r.Outcome.Status != 504 || r.Outcome.Reason != "upstream_timeout" || r.Upstream.Status != 0 {
				t.Errorf("use_result outcome %+v upstream %+v, want 504 upstream_timeout with no upstream status", r.Outcome, r.Upstream)
			}
		})
	}
}

func TestProxyStreamedRequestBodyOverCap(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	// No Content-Length: the body is streamed and cut at the cap.
	body := io.NopCloser(strings.NewReader(strings.Repeat("b", 4*maxReqBytes)))
	req, err := http.NewRequest("POST", "http://"+f.addr+"/v1/proxy/stripe/v1/charges", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	req.Header = bearer(tok)
	res, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("POST (streamed, over cap) = %d %s, want 413", res.StatusCode, b)
	}
	if leaks(string(b)) {
		t.Errorf("error carries the secret")
	}
}

// TestRedactReaderEscapedForms: a secret with characters that JSON and HTML
// escape is redacted in those forms too (an upstream's error page or JSON
// echo of the request's Authorization header).
func TestRedactReaderEscapedForms(t *testing.T) {
	const secret = `k&y<1>"'z`
	forms := proxy.SecretForms(secret)
	for _, in := range []string{
		`k&amp;y&lt;1&gt;&#34;&#39;z`,   // Go's html.EscapeString, html/template
		`k&amp;y&lt;1&gt;&quot;&#x27;z`, // Python's html.escape, many others
		`k\u0026y\u003c1\u003e\"'z`,     // Go's encoding/json
		`k\u0026y\u003C1\u003E\"'z`,     // upper case hex
		`k&y<1>\"'z`,                    // JSON without HTML escaping
		"k%26y%3C1%3E%22%27z",           // query escaping
	} {
		r := proxy.NewRedactReader(io.NopCloser(strings.NewReader("<p>"+in+"</p>")), forms)
		got, err := io.ReadAll(r)
		if want := "<p>" + strings.Repeat("*", len(in)) + "</p>"; err != nil || string(got) != want {
			t.Errorf("redact(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
}

func TestRedactReader(t *testing.T) {
	const secret = "s3cr3t/+"
	forms := proxy.SecretForms(secret)
	tests := []struct {
		name string
		in   string
		want string
	}{
		{name: "ok/no-secret", in: "hello world", want: "hello world"},
		{name: "ok/raw", in: `{"auth":"Bearer s3cr3t/+"}`, want: `{"auth":"Bearer ********"}`},
		{name: "ok/query-escaped", in: "key=s3cr3t%2F%2B&x", want: "key=************&x"},
		{name: "ok/query-escaped-lower-hex", in: "key=s3cr3t%2f%2b&x", want: "key=************&x"},
		{name: "ok/json-escaped-slash", in: `{"k":"s3cr3t\/+"}`, want: `{"k":"*********"}`},
		{name: "ok/at-start-and-end", in: "s3cr3t/+ mid s3cr3t/+", want: "******** mid ********"},
		{name: "ok/adjacent", in: "s3cr3t/+s3cr3t/+", want: "****************"},
		{name: "ok/partial-prefix-at-end", in: "abc s3cr3", want: "abc s3cr3"},
		{name: "ok/empty", in: "", want: ""},
	}
	readers := map[string]func(io.Reader) io.Reader{
		"whole":    func(r io.Reader) io.Reader { return r },
		"one-byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
	}
	for _, tt := range tests {
		for rname, wrap := range readers {
			t.Run(tt.name+"/"+rname, func(t *testing.T) {
				r := proxy.NewRedactReader(io.NopCloser(wrap(strings.NewReader(tt.in))), forms)
				got, err := io.ReadAll(iotest.OneByteReader(r))
				if err != nil {
					t.Fatal(err)
				}
				if string(got) != tt.want {
					t.Errorf("redact(%q) = %q, want %q", tt.in, got, tt.want)
				}
			})
		}
	}
	// A long stream crossing the internal buffer, with the secret split
	// across every read.
	long := strings.Repeat("x", 40<<10) + secret + strings.Repeat("y", 40<<10) + secret
	r := proxy.NewRedactReader(io.NopCloser(iotest.HalfReader(strings.NewReader(long))), forms)
	got, err := io.ReadAll(r)
	if err != nil || len(got) != len(long) || strings.Contains(string(got), secret) {
		t.Errorf("long redact: %d bytes (want %d), err %v, secret left: %v", len(got), len(long), err, strings.Contains(string(got), secret))
	}
}

// TestProxyResponseCapDoesNotCutTheSecretOpen: a streamed response cut at
// MaxResponseBytes must not end with the part of the secret the scan was
// holding back. A caller pads an echo (a header it sends, echoed before the
// injected Authorization) so that the cap falls inside the echoed secret:
// the bytes before the cap are all but the last of the secret.
func TestProxyResponseCapDoesNotCutTheSecretOpen(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	echo := func(pad int) *response {
		hdr := bearer(tok)
		hdr.Set("Aaaa", strings.Repeat("x", pad)) // sorts before Authorization in the echo
		return f.do(t, "GET", "/v1/proxy/stripe/echo", hdr, nil)
	}
	// Where the masked secret lands with one byte of padding.
	first := echo(1)
	start := strings.Index(first.Body, "Bearer *") + len("Bearer ")
	n := len(first.Body[start:]) - len(strings.TrimLeft(first.Body[start:], "*"))
	if first.Status != 200 || start < len("Bearer ") || n < len(upstreamKey) {
		t.Fatalf("echo = %d %s, want the secret masked", first.Status, first.Body)
	}
	// Pad so that the cap falls just before the last byte of the secret.
	res := echo(1 + maxRespBytes - (start + n - 1))
	if res.Err == nil || len(res.Body) > maxRespBytes {
		t.Fatalf("padded echo: %d bytes, read error %v; want it cut at the cap", len(res.Body), res.Err)
	}
	if prefix := upstreamKey[:20]; strings.Contains(res.Body, prefix) {
		t.Errorf("the body cut at the cap ends with the secret's first %d+ bytes: ...%q", len(prefix), res.Body[max(0, len(res.Body)-60):])
	}
}

// TestProxyHeadOfLargeResource: the Content-Length of a HEAD response is
// that of the body a GET would get; no body follows, so the response cap
// does not apply and the headers are relayed.
func TestProxyHeadOfLargeResource(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	res := f.do(t, "HEAD", "/v1/proxy/stripe/up/big", bearer(tok), nil)
	got := []any{res.Status, res.Header.Get("Content-Length"), res.Body}
	want := []any{200, strconv.Itoa(maxRespBytes + 1), ""}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("HEAD of a resource over the response cap = [status content-length body] (-want +got):\n%s", diff)
	}
	f.waitEvent(t, audit.TypeUseResult)
	if r := f.eventsOf(audit.TypeUseResult)[0]; r.Outcome.Status != 200 || r.Outcome.Error != "" {
		t.Errorf("use_result outcome = %+v, want 200 without error", r.Outcome)
	}
}

// TestProxyStreamsEventsWithoutHoldingThemBack: the response scan holds
// back the end of what it has read only while it could be the start of the
// secret. A server-sent event must reach the caller when the upstream sends
// it, not when the next one comes (or the stream ends).
func TestProxyStreamsEventsWithoutHoldingThemBack(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	req, err := http.NewRequest("GET", "http://"+f.addr+"/v1/proxy/stripe/up/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = bearer(tok)
	res, err := f.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close() // ends the upstream's stream
	got := make(chan string, 1)
	go func() {
		line, _ := bufio.NewReader(res.Body).ReadString('\n')
		got <- line
	}()
	select {
	case line := <-got:
		if line != "data: first\n" {
			t.Errorf("first line = %q, want the upstream's event", line)
		}
	case <-time.After(10 * time.Second):
		t.Errorf("the upstream's event did not reach the caller within 10s (held back by the response scan)")
	}
}

// TestProxyRefusesUnsendableSecret: a secret no HTTP header can carry (a
// control character other than HTAB: Go's Transport refuses the request)
// is refused before the use event, naming the grant in the log, so no use
// event claims a request that could never be sent. A tab is a valid header
// character and goes through.
func TestProxyRefusesUnsendableSecret(t *testing.T) {
	tests := []struct {
		name   string
		secret string
		want   int
	}{
		{name: "fail/soh", secret: "sk_live_\x01key", want: 503},
		{name: "fail/escape", secret: "sk_live_\x1b[0mkey", want: 503},
		{name: "fail/del", secret: "sk_live_key\x7f", want: 503},
		{name: "fail/vertical-tab", secret: "sk_live_\vkey", want: 503},
		{name: "fail/newline", secret: "sk_live_key\n", want: 503},
		{name: "fail/nul", secret: "sk_live_\x00key", want: 503},
		{name: "ok/tab", secret: "sk_live_\tkey", want: 200},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			logs := &brokertest.SyncBuffer{}
			f := newFixture(t, fixtureOpts{logs: logs})
			tok := f.credential(t, "stripe").AccessToken
			f.secrets.rotate(tt.secret)
			res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(tok), nil)
			if res.Status != tt.want {
				t.Fatalf("status %d, body %s; want %d", res.Status, res.Body, tt.want)
			}
			if tt.want == 200 {
				if got := f.up.Last().Header.Get("Authorization"); got != "Bearer "+tt.secret {
					t.Errorf("upstream saw Authorization %q, want the secret", got)
				}
				return
			}
			f.waitEvent(t, audit.TypeDeny)
			got := []any{oauthError(t, res.Body), f.up.Hits(), len(f.eventsOf(audit.TypeUse)), len(f.eventsOf(audit.TypeUseResult))}
			want := []any{"temporarily_unavailable", int64(0), 0, 0}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("[code upstream-hits use-events use_result-events] (-want +got):\n%s", diff)
			}
			if d := f.eventsOf(audit.TypeDeny); len(d) != 1 || d[0].Outcome.Reason != "secret_unusable" || d[0].Grant != "stripe" {
				t.Errorf("deny events %s, want one for grant stripe with reason secret_unusable", eventJSON(t, d))
			}
			out := logs.String()
			if !strings.Contains(out, "grant stripe") || !strings.Contains(out, "secret/data/upstreams/stripe") {
				t.Errorf("log does not name the grant and its secret reference:\n%s", out)
			}
			if strings.Contains(out, strings.TrimRight(tt.secret, "\n")) || strings.Contains(res.raw(), tt.secret) {
				t.Errorf("the secret reached the log or the response")
			}
		})
	}
}

// TestProxyRangeCannotSplitTheSecret: an upstream that echoes the injected
// secret and honours Range would let a caller fetch it in pieces (two
// single-range requests, or one multipart/byteranges response with the
// pieces in separate parts) that the response scan cannot recognise. The
// proxy does not forward Range or If-Range: every response is whole, and
// the secret in it is masked.
func TestProxyRangeCannotSplitTheSecret(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	cut := len(rangedPrefix+"Bearer ") + len(upstreamKey)/2 // inside the secret
	get := func(t *testing.T, ranges ...string) *response {
		t.Helper()
		h := bearer(tok)
		h.Set("Range", "bytes="+strings.Join(ranges, ","))
		res := f.do(t, "GET", "/v1/proxy/stripe/echo/ranged", h, nil)
		if res.Status != 200 && res.Status != 206 {
			t.Fatalf("Range %v: status %d, body %q", ranges, res.Status, res.Body)
		}
		if got := f.up.Last().Header.Get("Range"); got != "" {
			t.Errorf("upstream saw Range %q, want none", got)
		}
		return res
	}
	start := upstreamKey[:cut-len(rangedPrefix+"Bearer ")] // the first piece of the secret
	t.Run("fail/two-single-ranges", func(t *testing.T) {
		head := get(t, "0-"+strconv.Itoa(cut-1))
		tail := get(t, strconv.Itoa(cut)+"-")
		if whole := head.Body + tail.Body; leaks(whole) || strings.Contains(whole, start) {
			t.Errorf("the two ranges put together carry the secret: %q", whole)
		}
	})
	t.Run("fail/multipart-byteranges", func(t *testing.T) {
		if raw := get(t, "0-"+strconv.Itoa(cut-1), strconv.Itoa(cut)+"-").raw(); strings.Contains(raw, start) {
			t.Errorf("the multipart response carries the start of the secret: %q", raw)
		}
	})
	t.Run("ok/if-range-and-request-range-not-forwarded", func(t *testing.T) {
		// Request-Range is the legacy Range Apache httpd still honours.
		h := bearer(tok)
		h.Set("If-Range", `"v1"`)
		h.Set("Request-Range", "bytes=0-"+strconv.Itoa(cut-1))
		if res := f.do(t, "GET", "/v1/proxy/stripe/echo/ranged", h, nil); res.Status != 200 || leaks(res.raw()) {
			t.Errorf("status %d, leaks %v; want 200 without the secret", res.Status, leaks(res.raw()))
		}
		if seen := f.up.Last().Header; seen.Get("If-Range") != "" || seen.Get("Request-Range") != "" {
			t.Errorf("upstream saw If-Range %q Request-Range %q, want neither", seen.Get("If-Range"), seen.Get("Request-Range"))
		}
	})
}

// echoEncodings are escapings that real encoders apply to text they echo,
// each applied to the whole secret, by name.
var echoEncodings = map[string]func(string) string{
	// Python's urllib.parse.quote (safe="/"), Ruby's ERB::Util.url_encode
	// keeps "/": every other byte outside the unreserved set as %XX.
	"python-quote": func(s string) string {
		return escapeEach(s, "/", func(c byte) string { return fmt.Sprintf("%%%02X", c) })
	},
	// Handlebars, Underscore: & < > " ' ` = as named or hex references.
	"handlebars": strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#x27;", "`", "&#x60;", "=", "&#x3D;").Replace,
	// PHP's htmlspecialchars(ENT_QUOTES), XML serializers: decimal references.
	"decimal-refs": strings.NewReplacer("&", "&#38;", "/", "&#47;", "'", "&#039;").Replace,
	// OWASP ESAPI encodeForHTML: every non-alphanumeric byte as &#xHH;.
	"owasp-html": func(s string) string {
		return escapeEach(s, "", func(c byte) string { return fmt.Sprintf("&#x%02x;", c) })
	},
	// A JSON encoder escaping every non-alphanumeric byte (\u00XX).
	"json-all": func(s string) string {
		return escapeEach(s, "", func(c byte) string { return fmt.Sprintf(`\u%04x`, c) })
	},
	// JavaScript and Python string literals: \xHH.
	"js-hex": func(s string) string {
		return escapeEach(s, "", func(c byte) string { return fmt.Sprintf(`\x%02X`, c) })
	},
	// HTML5 named references for punctuation (&sol; &plus; &equals;).
	"html5-named": strings.NewReplacer("/", "&sol;", "+", "&plus;", "=", "&equals;", "&", "&amp;").Replace,
}

// escapeEach escapes every byte of s other than ASCII letters, digits,
// "-_.~" and keep with esc.
func escapeEach(s, keep string, esc func(byte) string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-_.~"+keep, c) >= 0 {
			b.WriteByte(c)
			continue
		}
		b.WriteString(esc(c))
	}
	return b.String()
}

// TestProxyRedactsEveryEscapingOfTheSecret: an upstream echoing the injected
// key through a common encoder (a URL built with Python's quote, an HTML
// page rendered by Handlebars or PHP, a JSON or JavaScript literal escaping
// every symbol) must not hand it to the caller: the body shows '*' where
// it was, the header carrying it is dropped.
func TestProxyRedactsEveryEscapingOfTheSecret(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	for _, name := range slices.Sorted(maps.Keys(echoEncodings)) {
		t.Run(name, func(t *testing.T) {
			enc := echoEncodings[name](upstreamKey)
			if enc == upstreamKey {
				t.Fatalf("encoding %s leaves the key unchanged", name)
			}
			res := f.do(t, "GET", "/v1/proxy/stripe/up/echo-as?enc="+name, bearer(tok), nil)
			got := []any{res.Status, res.Header.Values("X-Echo"), res.Body}
			want := []any{200, []string(nil), "<p>key: " + strings.Repeat("*", len(enc)) + "</p>"}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("echo of the key as %s (%s): [status X-Echo body] (-want +got):\n%s", name, enc, diff)
			}
		})
	}
}

// TestRedactReaderSplitEscapes: every escaping of echoEncodings is redacted
// however the stream is split, and text that falls short of the secret
// (one byte missing, a reference without its ";") is left alone.
func TestRedactReaderSplitEscapes(t *testing.T) {
	forms := proxy.SecretForms(upstreamKey)
	short := upstreamKey[:len(upstreamKey)-1]
	for _, name := range slices.Sorted(maps.Keys(echoEncodings)) {
		enc := echoEncodings[name](upstreamKey)
		notSecret := echoEncodings[name](short) + " " + strings.Replace(echoEncodings["owasp-html"](upstreamKey), ";", "", 1)
		in := "a " + enc + " b " + notSecret + " " + enc
		want := "a " + strings.Repeat("*", len(enc)) + " b " + notSecret + " " + strings.Repeat("*", len(enc))
		for _, wrap := range []func(io.Reader) io.Reader{iotest.OneByteReader, iotest.HalfReader} {
			got, err := io.ReadAll(proxy.NewRedactReader(io.NopCloser(wrap(strings.NewReader(in))), forms))
			if err != nil || string(got) != want {
				t.Errorf("%s: redact(%q) = %q, %v; want %q", name, in, got, err, want)
			}
		}
	}
	// A secret longer than half the scan's buffer, escaped: the bytes held
	// back outgrow the pooled buffer.
	var raw [24 << 10]byte
	for i := range raw {
		raw[i] = byte(i * 7919 >> 3)
	}
	long := base64.StdEncoding.EncodeToString(raw[:])
	enc := echoEncodings["json-all"](long)
	got, err := io.ReadAll(proxy.NewRedactReader(io.NopCloser(iotest.HalfReader(strings.NewReader("a "+enc+" b"))), proxy.SecretForms(long)))
	if want := "a " + strings.Repeat("*", len(enc)) + " b"; err != nil || string(got) != want {
		t.Errorf("redact of a %d-byte secret JSON-escaped: %d bytes, %v; want %d bytes of '*' between a and b", len(long), len(got), err, len(enc))
	}
}
