package proxy_test

import (
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/text/unicode/norm"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/proxy"
	"github.com/keytrail/keytrail/policies"
)

// attack is one hostile request, written byte for byte on the wire.
type attack struct {
	name   string
	method string // default GET
	target string // request target as sent
	host   string // Host header; "" = the broker's address
	extra  []string
	body   string
	// Expected outcome: the status, and whether the request may reach the
	// upstream (only the ok/ cases do).
	wantStatus int
	wantCode   string // OAuth error code; "" = not checked (not an OAuth error)
	wantHit    bool
	check      func(t *testing.T, f *fixture, res *response)
}

// attacks is the table of hostile requests. Requests whose raw path the
// router itself cleans (literal "." and ".." segments, "//") never reach the
// proxy: Go's ServeMux answers them with a 307 to the cleaned path on the
// broker itself, where the credential is checked again against the grant's
// paths. Everything else (encoded dots and slashes, backslashes, ...)
// reaches the proxy, whose normaliser refuses it with 400 (see also
// TestNormalizePath).
var attacks = []attack{
	{name: "ok/plain", target: "/v1/proxy/stripe/v1/charges", wantStatus: 200, wantHit: true},
	{name: "ok/escaped-ordinary-byte", target: "/v1/proxy/stripe/v1/charges/ch%5F1", wantStatus: 200, wantHit: true,
		check: func(t *testing.T, f *fixture, res *response) {
			if got := f.up.Last().Path; got != "/v1/charges/ch_1" {
				t.Errorf("upstream path = %q, want /v1/charges/ch_1", got)
			}
		}},
	{name: "ok/connection-header-cannot-strip-injected", target: "/v1/proxy/stripe/v1/charges",
		extra:      []string{"Connection: X-Keytrail-Issuance, X-Request-Id, Authorization"},
		wantStatus: 200, wantHit: true,
		check: func(t *testing.T, f *fixture, res *response) {
			h := f.up.Last().Header
			if h.Get("X-Keytrail-Issuance") == "" || h.Get("X-Request-Id") == "" || h.Get("Authorization") != "Bearer "+upstreamKey {
				t.Errorf("upstream headers = %v, want the injected secret and correlation headers despite Connection", h)
			}
		}},
	{name: "ok/underscore-lookalike-headers-dropped", target: "/v1/proxy/stripe/v1/charges",
		// CGI, WSGI and Rack upstreams read X_Request_Id as X-Request-Id:
		// every caller header with an underscore is dropped.
		extra: []string{"X_Keytrail_Issuance: iss_SPOOFED", "x_request_id: use_SPOOFED", "X-Keytrail_Issuance: iss_SPOOFED",
			"Proxy_Authorization: Bearer SPOOFED", "X_Forwarded_For: SPOOFED", "X-Custom_Thing: SPOOFED", "X-Custom: kept"},
		wantStatus: 200, wantHit: true,
		check: func(t *testing.T, f *fixture, res *response) {
			h := f.up.Last().Header
			for name, vs := range h {
				if strings.Contains(name, "_") || strings.Contains(strings.Join(vs, ","), "SPOOFED") {
					t.Errorf("upstream got caller-sent %s: %q", name, vs)
				}
			}
			use := f.eventsOf(audit.TypeUse)
			got := []any{h.Values("X-Keytrail-Issuance"), h.Values("X-Request-Id"), h.Get("X-Custom")}
			want := []any{[]string{use[len(use)-1].IssuanceID}, []string{use[len(use)-1].UseID}, "kept"}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("upstream [issuance request-id custom] (-want +got):\n%s", diff)
			}
		}},
	{name: "ok/method-and-url-override-headers-dropped", method: "POST", target: "/v1/proxy/stripe/v1/charges",
		// The grant allows GET, HEAD and POST on /v1/charges: headers that
		// make common upstream frameworks (Express method-override, Rails,
		// Laravel, Symfony, ASP.NET, IIS URL Rewrite, Zend) use another
		// method or path must not reach the upstream.
		extra: []string{"X-HTTP-Method-Override: DELETE", "X-HTTP-Method: DELETE", "X-Method-Override: DELETE",
			"X-Original-URL: /v1/customers", "X-Rewrite-URL: /v1/customers"},
		wantStatus: 200, wantHit: true,
		check: func(t *testing.T, f *fixture, res *response) {
			h := f.up.Last().Header
			for _, name := range []string{"X-Http-Method-Override", "X-Http-Method", "X-Method-Override", "X-Original-Url", "X-Rewrite-Url"} {
				if vs := h.Values(name); len(vs) != 0 {
					t.Errorf("upstream got caller-sent %s: %q", name, vs)
				}
			}
		}},
	{name: "ok/request-trailers-not-forwarded", method: "POST", target: "/v1/proxy/stripe/v1/charges",
		// Trailers come after the checks and could stand in for a header
		// the broker strips or sets: neither their names (announced in
		// Trailer) nor their values reach the upstream.
		extra:      []string{"Transfer-Encoding: chunked", "Trailer: X-Keytrail-Issuance, X-Request-Id, X-Smuggle"},
		body:       "4\r\ndata\r\n0\r\nX-Keytrail-Issuance: iss_SPOOFED\r\nX-Request-Id: use_SPOOFED\r\nX-Smuggle: SPOOFED\r\n\r\n",
		wantStatus: 200, wantHit: true,
		check: func(t *testing.T, f *fixture, res *response) {
			seen := f.up.Last()
			if len(seen.Trailer) != 0 || len(seen.Header.Values("Trailer")) != 0 {
				t.Errorf("upstream got request trailers %v (Trailer header %q), want none", seen.Trailer, seen.Header.Values("Trailer"))
			}
		}},
	{name: "fail/dot-dot", target: "/v1/proxy/stripe/v1/charges/../../admin", wantStatus: 307,
		check: wantLocalRedirect("/v1/proxy/stripe/admin")},
	{name: "fail/dot-dot-out-of-proxy", target: "/v1/proxy/stripe/../../token", wantStatus: 307,
		check: wantLocalRedirect("/v1/token")},
	{name: "fail/encoded-dot-dot", target: "/v1/proxy/stripe/v1/charges/%2e%2e/%2E%2E/admin", wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/double-slash-host", target: "/v1/proxy/stripe//evil.example/x", wantStatus: 307,
		check: wantLocalRedirect("/v1/proxy/stripe/evil.example/x")},
	{name: "fail/dot-dot-semicolon", target: "/v1/proxy/stripe/v1/charges/..;/admin", wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/encoded-slash", target: "/v1/proxy/stripe/v1/charges/a%2fb", wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/encoded-slash-traversal", target: "/v1/proxy/stripe/v1/charges/..%2F..%2Fadmin", wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/encoded-backslash", target: "/v1/proxy/stripe/v1/charges/..%5cadmin", wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/raw-backslash", target: `/v1/proxy/stripe/v1/charges/..\admin`, wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/double-encoding", target: "/v1/proxy/stripe/v1/charges/%252e%252e/admin", wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/encoded-nul", target: "/v1/proxy/stripe/v1/charges/a%00b", wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/overlong-utf8-dot-dot", target: "/v1/proxy/stripe/v1/charges/%c0%ae%c0%ae/%c0%ae%c0%ae/admin", wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/fullwidth-dot-dot", target: "/v1/proxy/stripe/v1/charges/%EF%BC%8E%EF%BC%8E/%EF%BC%8E%EF%BC%8E/admin", wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/absolute-uri", target: "https://evil.example/v1/proxy/stripe/v1/charges", host: "evil.example", wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/absolute-uri-broker-host", target: "http://{broker}/v1/proxy/stripe/v1/charges", wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/host-header", target: "/v1/proxy/stripe/v1/charges", host: "evil.example", wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/h2c-upgrade", target: "/v1/proxy/stripe/v1/charges",
		extra:      []string{"Upgrade: h2c", "Connection: Upgrade, HTTP2-Settings", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"},
		wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/websocket-upgrade", target: "/v1/proxy/stripe/v1/charges",
		extra: []string{"Upgrade: websocket", "Connection: Upgrade"}, wantStatus: 400, wantCode: "invalid_request"},
	// Each sign of an upgrade alone (the check looks each name up as
	// net/http keys it: a name written otherwise would never match).
	{name: "fail/upgrade-header-alone", target: "/v1/proxy/stripe/v1/charges",
		extra: []string{"upgrade: websocket"}, wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/http2-settings-alone", target: "/v1/proxy/stripe/v1/charges",
		extra: []string{"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA"}, wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/connection-upgrade-alone", target: "/v1/proxy/stripe/v1/charges",
		extra: []string{"connection: keep-alive, UPGRADE"}, wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/connect-origin-form", method: "CONNECT", target: "/v1/proxy/stripe/v1/charges", wantStatus: 400, wantCode: "invalid_request"},
	{name: "fail/connect-authority-form", method: "CONNECT", target: "evil.example:443", host: "evil.example:443", wantStatus: 404},
	{name: "fail/method-not-allowed", method: "DELETE", target: "/v1/proxy/stripe/v1/charges/ch_1", wantStatus: 403, wantCode: "access_denied"},
	{name: "fail/trace", method: "TRACE", target: "/v1/proxy/stripe/v1/charges", wantStatus: 403, wantCode: "access_denied"},
	{name: "fail/path-not-allowed", target: "/v1/proxy/stripe/v1/customers", wantStatus: 403, wantCode: "access_denied"},
	{name: "fail/path-prefix-lookalike", target: "/v1/proxy/stripe/v1/chargesX", wantStatus: 403, wantCode: "access_denied"},
	{name: "fail/body-too-large", method: "POST", target: "/v1/proxy/stripe/v1/charges",
		extra: []string{"Content-Type: application/json"}, body: strings.Repeat("a", maxReqBytes+1),
		wantStatus: 413, wantCode: "invalid_request"},
}

// wantLocalRedirect checks that a router redirect stays on the broker.
func wantLocalRedirect(want string) func(t *testing.T, f *fixture, res *response) {
	return func(t *testing.T, f *fixture, res *response) {
		loc := res.Header.Get("Location")
		u, err := url.Parse(loc)
		if err != nil || u.Host != "" || u.Scheme != "" || u.Path != want {
			t.Errorf("Location = %q, want the broker-local path %q", loc, want)
		}
	}
}

func TestProxyAttacks(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	for _, a := range attacks {
		t.Run(a.name, func(t *testing.T) {
			before := f.up.Hits()
			method := a.method
			if method == "" {
				method = "GET"
			}
			host := a.host
			if host == "" {
				host = f.addr
			}
			target := strings.ReplaceAll(a.target, "{broker}", f.addr)
			lines := []string{method + " " + target + " HTTP/1.1", "Host: " + host, "Authorization: Bearer " + tok}
			lines = append(lines, a.extra...)
			if a.body != "" {
				lines = append(lines, "Content-Length: "+strconv.Itoa(len(a.body)))
			}
			lines = append(lines, "Connection: close")
			res := f.rawRequest(t, lines, a.body)
			hit := f.up.Hits() > before
			got := []any{res.Status, hit}
			want := []any{a.wantStatus, a.wantHit}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("%s %s = [status upstream-hit] (-want +got):\n%s\nbody: %s", method, target, diff, res.Body)
			}
			if a.wantCode != "" && res.Status == a.wantStatus {
				if code := oauthError(t, res.Body); code != a.wantCode {
					t.Errorf("error code = %q, want %q", code, a.wantCode)
				}
			}
			if leaks(res.raw()) {
				t.Errorf("response carries the upstream secret")
			}
			if a.check != nil {
				if a.wantHit {
					f.waitEvent(t, audit.TypeUseResult)
				}
				a.check(t, f, res)
			}
		})
	}
}

// normalizeCases is the table of the path normaliser; FuzzProxyPath is seeded
// from it and from the attack table.
var normalizeCases = []struct {
	name    string
	in      string
	want    string
	wantErr string
}{
	{name: "ok/simple", in: "/v1/charges", want: "/v1/charges"},
	{name: "ok/root", in: "/", want: "/"},
	{name: "ok/trailing-slash", in: "/v1/charges/", want: "/v1/charges/"},
	{name: "ok/escaped-ordinary", in: "/v1/charges/ch%5F1%20x", want: "/v1/charges/ch_1 x"},
	{name: "ok/dots-inside-name", in: "/v1/a..b/...", want: "/v1/a..b/..."},
	{name: "ok/encoded-dot-in-name", in: "/v1/a%2eb", want: "/v1/a.b"},
	{name: "ok/semicolon-param", in: "/v1/a;b=c", want: "/v1/a;b=c"},
	{name: "fail/not-absolute", in: "v1/charges", wantErr: "path_not_absolute"},
	{name: "fail/empty", in: "", wantErr: "path_not_absolute"},
	{name: "fail/dot-dot", in: "/v1/../admin", wantErr: "dot_segment"},
	{name: "fail/dot", in: "/v1/./charges", wantErr: "dot_segment"},
	{name: "fail/trailing-dot-dot", in: "/v1/..", wantErr: "dot_segment"},
	{name: "fail/encoded-dot-dot", in: "/v1/%2e%2e/admin", wantErr: "dot_segment"},
	{name: "fail/mixed-encoded-dot-dot", in: "/v1/.%2E/admin", wantErr: "dot_segment"},
	{name: "fail/dot-dot-semicolon", in: "/v1/..;x=1/admin", wantErr: "dot_segment"},
	{name: "fail/dot-dot-space", in: "/v1/..%20/admin", wantErr: "dot_segment"},
	{name: "fail/double-slash", in: "//evil.example/x", wantErr: "empty_segment"},
	{name: "fail/inner-double-slash", in: "/v1//charges", wantErr: "empty_segment"},
	{name: "fail/encoded-slash", in: "/v1/a%2fb", wantErr: "encoded_slash"},
	{name: "fail/encoded-slash-upper", in: "/v1/a%2Fb", wantErr: "encoded_slash"},
	{name: "fail/encoded-backslash", in: "/v1/a%5cb", wantErr: "encoded_slash"},
	{name: "fail/raw-backslash", in: `/v1/a\b`, wantErr: "backslash"},
	{name: "fail/double-encoding", in: "/v1/%252e%252e", wantErr: "double_encoding"},
	{name: "fail/encoded-nul", in: "/v1/a%00", wantErr: "control_byte"},
	{name: "fail/raw-nul", in: "/v1/a\x00", wantErr: "control_byte"},
	{name: "fail/raw-newline", in: "/v1/a\nb", wantErr: "control_byte"},
	{name: "fail/encoded-question-mark", in: "/v1/a%3fkey=1", wantErr: "encoded_delimiter"},
	{name: "fail/encoded-hash", in: "/v1/a%23b", wantErr: "encoded_delimiter"},
	{name: "fail/raw-hash", in: "/v1/a#b", wantErr: "encoded_delimiter"},
	{name: "fail/bad-escape", in: "/v1/a%zz", wantErr: "bad_escape"},
	{name: "fail/truncated-escape", in: "/v1/a%2", wantErr: "bad_escape"},
	{name: "fail/non-ascii", in: "/v1/caf\xc3\xa9", wantErr: "non_ascii"},
	{name: "ok/encoded-utf8", in: "/v1/caf%C3%A9", want: "/v1/caf\u00e9"},
	{name: "fail/overlong-dot-dot", in: "/v1/%c0%ae%c0%ae/admin", wantErr: "invalid_utf8"},
	{name: "fail/overlong-slash", in: "/v1/..%c0%afadmin", wantErr: "invalid_utf8"},
	{name: "fail/latin1-byte", in: "/v1/caf%e9", wantErr: "invalid_utf8"},
	{name: "fail/surrogate", in: "/v1/%ed%a0%80", wantErr: "invalid_utf8"},
	{name: "fail/truncated-sequence", in: "/v1/a%c3", wantErr: "invalid_utf8"},
	{name: "ok/fullwidth-dot-in-name", in: "/v1/file%EF%BC%8Etxt", want: "/v1/file\uff0etxt"},
	{name: "ok/compatibility-letters", in: "/v1/%EF%BD%81%E2%84%A1", want: "/v1/\uff41\u2121"},
	{name: "fail/fullwidth-dot-dot", in: "/v1/%EF%BC%8E%EF%BC%8E/admin", wantErr: "dot_segment"},
	{name: "fail/fullwidth-and-ascii-dot", in: "/v1/.%EF%BC%8E/admin", wantErr: "dot_segment"},
	{name: "fail/two-dot-leader", in: "/v1/%E2%80%A5/admin", wantErr: "dot_segment"},
	{name: "fail/small-full-stop", in: "/v1/%EF%B9%92;x/admin", wantErr: "dot_segment"},
	{name: "fail/fullwidth-slash", in: "/v1/..%EF%BC%8Fadmin", wantErr: "encoded_slash"},
	{name: "fail/fullwidth-backslash", in: "/v1/..%EF%BC%BCadmin", wantErr: "encoded_slash"},
	{name: "fail/fullwidth-percent", in: "/v1/%EF%BC%852e%EF%BC%852e", wantErr: "double_encoding"},
	{name: "fail/fullwidth-question-mark", in: "/v1/a%EF%BC%9Fkey=1", wantErr: "encoded_delimiter"},
	{name: "fail/too-long", in: "/" + strings.Repeat("a", 4096), wantErr: "path_too_long"},
}

func TestNormalizePath(t *testing.T) {
	for _, tt := range normalizeCases {
		t.Run(tt.name, func(t *testing.T) {
			got, err := proxy.NormalizePath(tt.in)
			gotErr := ""
			if err != nil {
				gotErr = err.Error()
			}
			if diff := cmp.Diff([]string{tt.want, tt.wantErr}, []string{got, gotErr}); diff != "" {
				t.Errorf("NormalizePath(%q) = %q, %q, want %q, %q", tt.in, got, gotErr, tt.want, tt.wantErr)
			}
		})
	}
}

func FuzzProxyPath(f *testing.F) {
	for _, tt := range normalizeCases {
		f.Add(tt.in)
	}
	for _, a := range attacks {
		if tail, ok := strings.CutPrefix(a.target, "/v1/proxy/stripe"); ok {
			f.Add(tail)
		}
	}
	anything := &policies.ProxyGrant{Paths: []string{"/*"}}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := proxy.NormalizePath(in)
		if err != nil {
			if got != "" {
				t.Errorf("NormalizePath(%q) = %q with error %v, want no path", in, got, err)
			}
			return
		}
		lower := strings.ToLower(in)
		switch {
		case !strings.HasPrefix(got, "/"):
			t.Errorf("NormalizePath(%q) = %q, not absolute", in, got)
		case strings.Contains(got, "//"):
			t.Errorf("NormalizePath(%q) = %q, contains //", in, got)
		case !utf8.ValidString(got):
			t.Errorf("NormalizePath(%q) = %q, not valid UTF-8", in, got)
		case strings.ContainsAny(got, "\\\x00\r\n"):
			t.Errorf("NormalizePath(%q) = %q, contains a backslash or control byte", in, got)
		case strings.Contains(lower, "%2f") || strings.Contains(lower, "%5c") || strings.Contains(in, `\`):
			t.Errorf("NormalizePath(%q) let an encoded slash or backslash through", in)
		case got != "/" && !anything.AllowsPath(got):
			t.Errorf("NormalizePath(%q) = %q, which policies do not consider clean", in, got)
		}
		for _, seg := range strings.Split(got, "/") {
			base, _, _ := strings.Cut(seg, ";")
			if b := strings.TrimRight(base, " \t"); b == "." || b == ".." {
				t.Errorf("NormalizePath(%q) = %q, has a dot segment %q", in, got, seg)
			}
		}
		// An upstream that folds compatibility forms (NFKC) reads the
		// same segments, none of them a dot segment or an escape.
		folded := norm.NFKC.String(got)
		if strings.Count(folded, "/") != strings.Count(got, "/") || strings.ContainsAny(folded, "\\%?#") {
			t.Errorf("NormalizePath(%q) = %q, which reads as %q once NFKC-folded", in, got, folded)
		}
		for _, seg := range strings.Split(folded, "/") {
			base, _, _ := strings.Cut(seg, ";")
			if b := strings.TrimRight(base, " \t"); b == "." || b == ".." {
				t.Errorf("NormalizePath(%q) = %q, has a dot segment %q once NFKC-folded", in, got, seg)
			}
		}
		if dec, err := url.PathUnescape(in); err != nil || dec != got {
			t.Errorf("NormalizePath(%q) = %q, but standard decoding gives %q (%v)", in, got, dec, err)
		}
	})
}

func TestPublicAddr(t *testing.T) {
	tests := []struct {
		addr string
		want bool
	}{
		{"93.184.216.34", true},
		{"2606:2800:220:1:248:1893:25c8:1946", true},
		{"127.0.0.1", false},
		{"::1", false},
		{"10.1.2.3", false},
		{"172.16.0.1", false},
		{"192.168.1.1", false},
		{"169.254.169.254", false},
		{"0.0.0.0", false},
		{"::", false},
		{"224.0.0.1", false},
		{"100.64.0.1", false},
		{"255.255.255.255", false},
		{"::ffff:127.0.0.1", false},
		{"::ffff:10.0.0.1", false},
		{"fd00::1", false},
		{"fe80::1", false},
		{"64:ff9b::a00:1", false},
		{"2002:a00:1::", false},
	}
	for _, tt := range tests {
		if got := proxy.PublicAddr(netip.MustParseAddr(tt.addr)); got != tt.want {
			t.Errorf("PublicAddr(%s) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}
