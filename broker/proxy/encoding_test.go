package proxy_test

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/proxy"
)

// encodeAs encodes plain as the fixture's /up/encoded route is asked to:
// gzip, zlib (HTTP's deflate), rawdeflate (the deflate some servers send),
// plain, empty (no body), garbage (a gzip magic number and then not gzip),
// bomb (1 MiB of zeros, gzipped to about 1 KiB: far over the response cap
// once decoded), members (400 empty gzip members: over the cap on the
// wire, nothing once decoded), gzip-split (plain as two gzip members, the
// secret cut between them), C-then-X with C zlib, gzip or rawdeflate (a C
// stream of clean text, then data: X plain as a second C stream, gzip
// plain gzipped, zlib plain zlib'd, text plain as it is, newline a "\n",
// x a lone "x", 1f and 1f8b the first bytes of a gzip header, zeros four
// zero bytes, zeros-then-gzip those and plain gzipped, a-bad-member a gzip
// header and then not gzip), xtext (text that starts
// "x = ", a zlib header with a preset dictionary), hktext (text that
// starts "HK", a zlib header of a 16 KiB window) or xhattext (text that
// starts "x^", a zlib header of a 32 KiB window). Names joined with "."
// are layers, the outer first: "gzip.zlib" is zlib data, gzipped.
// secretMiddle returns where in plain the middle of the upstream secret
// is, raw or as encoding/json writes it ("&" as \u0026): the secret cut
// there is in neither half; with no secret, the middle of plain.
func secretMiddle(plain []byte) int {
	for _, form := range []string{upstreamKey, strings.ReplaceAll(upstreamKey, "&", `\u0026`)} {
		if k := bytes.Index(plain, []byte(form)); k >= 0 {
			return k + len(form)/2
		}
	}
	return len(plain) / 2
}

func encodeAs(as string, plain []byte) []byte {
	if outer, inner, ok := strings.Cut(as, "."); ok {
		return encodeAs(outer, encodeAs(inner, plain))
	}
	if first, then, ok := strings.Cut(as, "-then-"); ok {
		var after []byte
		switch then {
		case "plain":
			after = encodeAs(first, plain)
		case "gzip", "zlib":
			after = encodeAs(then, plain)
		case "text":
			after = plain
		case "newline":
			after = []byte("\n")
		case "x":
			after = []byte("x")
		case "1f", "1f8b":
			after = []byte("\x1f\x8b")[:len(then)/2]
		case "zeros":
			after = make([]byte, 4)
		case "zeros-then-gzip":
			after = append(make([]byte, 4), encodeAs("gzip", plain)...)
		case "oldgzip":
			// A gzip member under gzip's old magic (1f 9e), which GNU
			// gzip -d decodes after a member (Go's reader does not).
			after = encodeAs("gzip", plain)
			after[1] = 0x9e
		case "lzw":
			after = []byte("\x1f\x9d\x90 compress(1) data")
		case "a-bad-member":
			after = []byte("\x1f\x8b\x08 not really gzip")
		default:
			panic("encodeAs: unknown " + as)
		}
		return append(encodeAs(first, []byte(cleanText)), after...)
	}
	var b bytes.Buffer
	switch as {
	case "xtext":
		return []byte("x = 80 requests, no secret\n")
	case "hktext":
		return []byte("HKD 7.80\n")
	case "xhattext":
		return []byte("x^2 + y^2\n")
	case "gzip-split-into-text", "zlib-split-into-text":
		// The secret cut between the end of a stream and the text
		// after it.
		i := secretMiddle(plain)
		coding, _, _ := strings.Cut(as, "-")
		return append(encodeAs(coding, plain[:i]), plain[i:]...)
	case "gzip-split":
		// Two gzip members, the secret cut between them.
		i := secretMiddle(plain)
		return append(encodeAs("gzip", plain[:i]), encodeAs("gzip", plain[i:])...)
	case "gzip", "bomb", "members":
		if as == "bomb" {
			plain = make([]byte, 1<<20)
		}
		n := 1
		if as == "members" {
			n, plain = 400, nil
		}
		for range n {
			zw := gzip.NewWriter(&b)
			_, _ = zw.Write(plain)
			_ = zw.Close()
		}
	case "zlib":
		zw := zlib.NewWriter(&b)
		_, _ = zw.Write(plain)
		_ = zw.Close()
	case "rawdeflate":
		zw, _ := flate.NewWriter(&b, flate.DefaultCompression)
		_, _ = zw.Write(plain)
		_ = zw.Close()
	case "plain":
		return plain
	case "empty":
		return nil
	case "garbage":
		return []byte("\x1f\x8b not really gzip")
	default:
		panic("encodeAs: unknown " + as)
	}
	return b.Bytes()
}

// encodedCase is a request for /up/encoded?query through the broker (see
// checkEncoded) and what must come of it.
type encodedCase struct {
	name        string
	method      string // default GET
	query       string
	wantStatus  int
	wantBody    string // the body relayed, when set (a 200's); unset, it must hold no gzip magic
	cut         bool   // the body read fails (the response is cut)
	keepsLength bool   // with decoded: the upstream's Content-Length is relayed
	wantUse     audit.Outcome
	check       func(t *testing.T, res *response) // more checks, when set
}

// checkEncoded sends each case's request with tok (asking for every
// coding, so the test client relays the body as it came: it decodes gzip
// only when it asked on its own) and checks, besides the status, the
// body and the use_result outcome the case wants: no Content-Encoding
// relayed; with decoded (the table's bodies are relayed decoded) no
// Content-Length unless keepsLength for a 200; no secret anywhere in
// the response; no gzip magic in a body the case does not name; a body
// read error exactly when cut; a 502 without Retry-After and (but for
// HEAD) with the temporarily_unavailable error body; one use_result event
// per request.
func (f *fixture) checkEncoded(t *testing.T, tok string, decoded bool, cases []encodedCase) {
	t.Helper()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "GET"
			}
			before := len(f.eventsOf(audit.TypeUseResult))
			hdr := bearer(tok)
			hdr.Set("Accept-Encoding", "gzip, deflate, br, zstd")
			res := f.do(t, method, "/v1/proxy/stripe/up/encoded?"+tt.query, hdr, nil)
			if res.Status != tt.wantStatus {
				t.Errorf("%s %s = %d, want %d; body %.80q", method, tt.query, res.Status, tt.wantStatus, res.Body)
			}
			if (res.Err != nil) != tt.cut {
				t.Errorf("body read error %v, want one: %v", res.Err, tt.cut)
			}
			if ce := res.Header.Values("Content-Encoding"); len(ce) != 0 {
				t.Errorf("Content-Encoding = %q relayed, want none (the body is relayed decoded or as it came)", ce)
			}
			if cl := res.Header.Get("Content-Length"); decoded && cl != "" && tt.wantStatus == 200 && !tt.keepsLength {
				t.Errorf("Content-Length = %s relayed, want none (the upstream's is the encoded length)", cl)
			}
			if leaks(res.raw()) || (tt.wantBody == "" && strings.Contains(res.Body, "\x1f\x8b")) {
				t.Errorf("response carries the upstream secret or an undecoded gzip body:\n%.400q", res.raw())
			}
			// Retrying cannot help a body carrying the secret (the
			// upstream would echo it again), one over the cap or one that
			// does not decode: no 502 here carries Retry-After.
			if ra := res.Header.Get("Retry-After"); tt.wantStatus == 502 && (ra != "" || (method != "HEAD" && oauthError(t, res.Body) != "temporarily_unavailable")) {
				t.Errorf("refusal: Retry-After %q, body %.120q; want no Retry-After and temporarily_unavailable", ra, res.Body)
			}
			if tt.wantBody != "" && res.Body != tt.wantBody {
				t.Errorf("body = %.80q, want %.80q", res.Body, tt.wantBody)
			}
			if tt.check != nil {
				tt.check(t, res)
			}
			f.wantUseResult(t, before, tt.wantUse)
		})
	}
}

// wantUseResult waits for the use_result event of the request sent after
// before such events were recorded, and checks that it is the one more
// and has outcome want.
func (f *fixture) wantUseResult(t *testing.T, before int, want audit.Outcome) {
	t.Helper()
	f.waitEvent(t, audit.TypeUseResult)
	results := f.eventsOf(audit.TypeUseResult)
	if len(results) != before+1 {
		t.Fatalf("use_result events = %d, want %d", len(results), before+1)
	}
	if diff := cmp.Diff(want, *results[before].Outcome); diff != "" {
		t.Errorf("use_result outcome (-want +got):\n%s", diff)
	}
}

// TestProxyDecodesCompressedResponses: an upstream that compresses although
// the broker asked for identity (or echoes the request headers compressed,
// as httpbin's /gzip does) must not get the injected secret past the
// response scan. A gzip or deflate body is decoded, scanned and relayed
// without Content-Encoding; a decoded body over the response cap (a
// decompression bomb) is cut there; any other coding, or a body that does
// not decode, is refused with 502 and the reason in the use_result event.
// HEAD, 204 and 304 responses carry no body and lose the coding's headers.
func TestProxyDecodesCompressedResponses(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	masked := "Bearer " + strings.Repeat("*", len(upstreamKey))

	decodedEcho := func(t *testing.T, res *response) {
		t.Helper()
		if !strings.Contains(res.Body, masked) || res.Err != nil {
			t.Errorf("body = %q (read error %v), want the decoded echo with the secret masked", res.Body, res.Err)
		}
	}
	unsupported := audit.Outcome{Status: 502, Error: "temporarily_unavailable", Reason: "response_encoding_unsupported"}
	cutUndecodable := audit.Outcome{Status: 200, Error: "aborted", Reason: "response_undecodable"}
	cut := func(t *testing.T, res *response) {
		t.Helper()
		if res.Body != cleanText {
			t.Errorf("body = %.80q, want the first stream's decoded text %.80q", res.Body, cleanText)
		}
	}
	f.checkEncoded(t, tok, true, []encodedCase{
		{name: "ok/gzip", query: "as=gzip&ce=gzip", wantStatus: 200, wantUse: audit.Outcome{Status: 200}, check: decodedEcho},
		{name: "ok/x-gzip-upper-case", query: "as=gzip&ce=X-GZIP", wantStatus: 200, wantUse: audit.Outcome{Status: 200}, check: decodedEcho},
		{name: "ok/deflate-zlib", query: "as=zlib&ce=deflate", wantStatus: 200, wantUse: audit.Outcome{Status: 200}, check: decodedEcho},
		{name: "ok/deflate-raw", query: "as=rawdeflate&ce=deflate", wantStatus: 200, wantUse: audit.Outcome{Status: 200}, check: decodedEcho},
		{name: "ok/identity-token", query: "as=plain&ce=identity", wantStatus: 200, keepsLength: true, wantUse: audit.Outcome{Status: 200}, check: decodedEcho},
		{name: "ok/gzip-after-identity", query: "as=gzip&ce=identity,%20gzip", wantStatus: 200, wantUse: audit.Outcome{Status: 200}, check: decodedEcho},
		{name: "ok/empty-gzip-body", query: "as=empty&ce=gzip", wantStatus: 200, keepsLength: true, wantUse: audit.Outcome{Status: 200},
			check: func(t *testing.T, res *response) {
				if res.Body != "" || res.Err != nil {
					t.Errorf("body = %q (read error %v), want empty", res.Body, res.Err)
				}
			}},
		{name: "ok/head-of-gzip", method: "HEAD", query: "as=gzip&ce=gzip", wantStatus: 200, wantUse: audit.Outcome{Status: 200}},
		{name: "ok/304-of-gzip", query: "as=empty&ce=gzip&status=304", wantStatus: 304, wantUse: audit.Outcome{Status: 304}},
		{name: "ok/204-of-gzip", query: "as=empty&ce=gzip&status=204", wantStatus: 204, wantUse: audit.Outcome{Status: 204}},
		{name: "fail/br", query: "as=plain&ce=br", wantStatus: 502, wantUse: unsupported},
		{name: "fail/zstd", query: "as=plain&ce=zstd", wantStatus: 502, wantUse: unsupported},
		{name: "fail/compress", query: "as=plain&ce=compress", wantStatus: 502, wantUse: unsupported},
		{name: "fail/unknown-token", query: "as=plain&ce=snappy", wantStatus: 502, wantUse: unsupported},
		{name: "fail/gzip-with-parameter", query: "as=gzip&ce=gzip%3Bq=1", wantStatus: 502, wantUse: unsupported},
		{name: "fail/stacked-in-one-line", query: "as=gzip&ce=gzip,%20gzip", wantStatus: 502, wantUse: unsupported},
		{name: "fail/stacked-in-two-lines", query: "as=gzip&ce=gzip&ce=gzip", wantStatus: 502, wantUse: unsupported},
		{name: "fail/gzip-then-br", query: "as=gzip&ce=gzip,br", wantStatus: 502, wantUse: unsupported},
		{name: "fail/head-of-br", method: "HEAD", query: "as=plain&ce=br", wantStatus: 502, wantUse: unsupported},
		{name: "fail/not-really-gzip", query: "as=garbage&ce=gzip", wantStatus: 502,
			wantUse: audit.Outcome{Status: 502, Error: "temporarily_unavailable", Reason: "response_undecodable"}},
		// Data after the end of the coded stream does not decode as the
		// Content-Encoding says: refused, for deflate as for gzip (but
		// whitespace and NUL bytes after the last gzip member or the
		// deflate stream: see TestProxyDecodesGzipWithTrailingWhitespace
		// and TestProxyDecodesDeflateWithTrailingWhitespace), not dropped
		// unseen. A body
		// relayed decoded is relayed as it decodes (its length is not
		// known: no Content-Length), so the refusal comes after the
		// decoded bytes, clean or masked, and cuts the response, as a
		// truncated one is.
		{name: "fail/deflate-zlib-then-text", query: "as=zlib-then-text&ce=deflate", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: cut},
		{name: "fail/deflate-zlib-then-a-second-stream", query: "as=zlib-then-plain&clean=1&ce=deflate", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: cut},
		{name: "fail/deflate-raw-then-text", query: "as=rawdeflate-then-text&ce=deflate", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: cut},
		{name: "fail/deflate-zlib-then-text-streamed", query: "as=zlib-then-text&ce=deflate&stream=1", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: cut},
		{name: "fail/gzip-then-text", query: "as=gzip-then-text&ce=gzip", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: cut},
		{name: "fail/decompression-bomb-is-cut-at-the-cap", query: "as=bomb&ce=gzip", wantStatus: 200, cut: true,
			wantUse: audit.Outcome{Status: 200, Error: "aborted", Reason: "response_too_large"},
			check: func(t *testing.T, res *response) {
				if res.Err == nil || len(res.Body) > maxRespBytes {
					t.Errorf("decoded body: %d bytes, read error %v; want it cut at %d decoded bytes with an error", len(res.Body), res.Err, maxRespBytes)
				}
			}},
	})
}

// TestProxyDecodesGzipWithTrailingWhitespace: a Content-Encoding: gzip
// body whose last member is followed only by whitespace (space, tab, CR,
// LF) and NUL bytes (a trailing newline, zero padding to a block), which
// browsers, curl and gzip -d ("trailing garbage ignored") accept, is
// relayed decoded as any gzip body is, the trailing bytes dropped, the
// decoded content scanned (the secret masked) as ever; declared or
// streamed, the same. It used to be cut, use_result response_undecodable:
// Go's multi-member reader took the trailing bytes for a bad header. Any
// other byte after the last member (after whitespace too), what could
// start a second member, zero padding then a member, stay refused, and the
// whitespace counts towards the response cap.
func TestProxyDecodesGzipWithTrailingWhitespace(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	masked := "Bearer " + strings.Repeat("*", len(upstreamKey))
	ok := audit.Outcome{Status: 200}
	cutUndecodable := audit.Outcome{Status: 200, Error: "aborted", Reason: "response_undecodable"}
	cutTooLarge := audit.Outcome{Status: 200, Error: "aborted", Reason: "response_too_large"}
	decodedEcho := func(t *testing.T, res *response) {
		t.Helper()
		if !strings.Contains(res.Body, masked) || res.Err != nil {
			t.Errorf("body = %q (read error %v), want the decoded echo with the secret masked", res.Body, res.Err)
		}
	}
	firstMember := func(t *testing.T, res *response) {
		t.Helper()
		if res.Body != cleanText {
			t.Errorf("body = %.80q, want the member's decoded text %.80q", res.Body, cleanText)
		}
	}
	nuls := strings.Repeat("%00", 64)
	var cases []encodedCase
	for _, framing := range []struct{ name, query string }{{"declared", ""}, {"streamed", "&stream=1"}} {
		for _, c := range []encodedCase{
			{name: "ok/newline", query: "as=gzip&clean=1&ce=gzip&pad=%0A", wantStatus: 200, wantBody: cleanText, wantUse: ok},
			{name: "ok/crlf", query: "as=gzip&clean=1&ce=gzip&pad=%0D%0A", wantStatus: 200, wantBody: cleanText, wantUse: ok},
			{name: "ok/nuls", query: "as=gzip&clean=1&ce=gzip&pad=" + nuls, wantStatus: 200, wantBody: cleanText, wantUse: ok},
			{name: "ok/four-nuls", query: "as=gzip-then-zeros&ce=gzip", wantStatus: 200, wantBody: cleanText, wantUse: ok},
			{name: "ok/mixed-whitespace-and-nuls", query: "as=gzip&clean=1&ce=gzip&pad=%20%09%0D%0A%00%0A%00%00", wantStatus: 200, wantBody: cleanText, wantUse: ok},
			{name: "ok/two-members-then-a-newline", query: "as=gzip-then-plain&clean=1&ce=gzip&pad=%0A", wantStatus: 200, wantBody: cleanText + cleanText, wantUse: ok},
			{name: "ok/secret-masked-with-a-newline-after", query: "as=gzip&ce=gzip&pad=%0A", wantStatus: 200, wantUse: ok, check: decodedEcho},
			{name: "ok/secret-masked-with-nuls-after", query: "as=gzip&ce=gzip&pad=" + nuls, wantStatus: 200, wantUse: ok, check: decodedEcho},
			{name: "fail/a-byte-after", query: "as=gzip&clean=1&ce=gzip&pad=x", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: firstMember},
			{name: "fail/a-byte-after-a-newline", query: "as=gzip&clean=1&ce=gzip&pad=%0Ax", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: firstMember},
			{name: "fail/a-byte-after-nuls", query: "as=gzip&clean=1&ce=gzip&pad=" + nuls + "%0C", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: firstMember},
			{name: "fail/a-partial-second-header", query: "as=gzip&clean=1&ce=gzip&pad=%1F%8B%08", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: firstMember},
			{name: "fail/a-partial-second-header-after-a-newline", query: "as=gzip&clean=1&ce=gzip&pad=%0A%1F%8B%08", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: firstMember},
			{name: "fail/a-member-after-a-newline", query: "as=gzip-then-newline&ce=gzip&pad=" + url.QueryEscape(string(encodeAs("gzip", []byte(cleanText)))),
				wantStatus: 200, cut: true, wantUse: cutUndecodable, check: firstMember},
			{name: "fail/a-member-after-zero-padding", query: "as=gzip-then-zeros-then-gzip&clean=1&ce=gzip", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: firstMember},
		} {
			c.name = framing.name + "/" + c.name
			c.query += framing.query
			cases = append(cases, c)
		}
	}
	// Whitespace past the cap of bytes read from the upstream (a body of
	// declared length over it is refused at its length, unread).
	cases = append(cases, encodedCase{name: "streamed/fail/whitespace-over-the-cap", query: "as=gzip&clean=1&ce=gzip&stream=1&pad=" + strings.Repeat("+", maxRespBytes),
		wantStatus: 200, cut: true, wantUse: cutTooLarge, check: firstMember})
	f.checkEncoded(t, tok, true, cases)
}

// TestProxyDecodesDeflateWithTrailingWhitespace: a Content-Encoding:
// deflate body, zlib-wrapped or raw, whose stream is followed only by
// whitespace (space, tab, CR, LF) and NUL bytes, which curl and browsers
// accept, is relayed decoded, the trailing bytes dropped, the decoded
// content scanned (the secret masked) as ever, declared or streamed, as a
// gzip body after its last member is (see
// TestProxyDecodesGzipWithTrailingWhitespace). It used to be cut, use_result
// response_undecodable. Any other byte after the stream (after whitespace
// too), a second stream, a second stream after a newline, stay refused, and
// the whitespace counts towards the response cap.
func TestProxyDecodesDeflateWithTrailingWhitespace(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	masked := "Bearer " + strings.Repeat("*", len(upstreamKey))
	ok := audit.Outcome{Status: 200}
	cutUndecodable := audit.Outcome{Status: 200, Error: "aborted", Reason: "response_undecodable"}
	cutTooLarge := audit.Outcome{Status: 200, Error: "aborted", Reason: "response_too_large"}
	decodedEcho := func(t *testing.T, res *response) {
		t.Helper()
		if !strings.Contains(res.Body, masked) || res.Err != nil {
			t.Errorf("body = %q (read error %v), want the decoded echo with the secret masked", res.Body, res.Err)
		}
	}
	firstStream := func(t *testing.T, res *response) {
		t.Helper()
		if res.Body != cleanText {
			t.Errorf("body = %.80q, want the stream's decoded text %.80q", res.Body, cleanText)
		}
	}
	nuls := strings.Repeat("%00", 64)
	var cases []encodedCase
	for _, as := range []string{"zlib", "rawdeflate"} {
		for _, framing := range []struct{ name, query string }{{"declared", ""}, {"streamed", "&stream=1"}} {
			for _, c := range []encodedCase{
				{name: "ok/newline", query: "as=" + as + "&clean=1&ce=deflate&pad=%0A", wantStatus: 200, wantBody: cleanText, wantUse: ok},
				{name: "ok/crlf", query: "as=" + as + "&clean=1&ce=deflate&pad=%0D%0A", wantStatus: 200, wantBody: cleanText, wantUse: ok},
				{name: "ok/nuls", query: "as=" + as + "&clean=1&ce=deflate&pad=" + nuls, wantStatus: 200, wantBody: cleanText, wantUse: ok},
				{name: "ok/four-nuls", query: "as=" + as + "-then-zeros&ce=deflate", wantStatus: 200, wantBody: cleanText, wantUse: ok},
				{name: "ok/then-a-newline", query: "as=" + as + "-then-newline&ce=deflate", wantStatus: 200, wantBody: cleanText, wantUse: ok},
				{name: "ok/mixed-whitespace-and-nuls", query: "as=" + as + "&clean=1&ce=deflate&pad=%20%09%0D%0A%00%0A%00%00", wantStatus: 200, wantBody: cleanText, wantUse: ok},
				{name: "ok/secret-masked-with-a-newline-after", query: "as=" + as + "&ce=deflate&pad=%0A", wantStatus: 200, wantUse: ok, check: decodedEcho},
				{name: "ok/secret-masked-with-nuls-after", query: "as=" + as + "&ce=deflate&pad=" + nuls, wantStatus: 200, wantUse: ok, check: decodedEcho},
				{name: "fail/a-byte-after", query: "as=" + as + "&clean=1&ce=deflate&pad=x", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: firstStream},
				{name: "fail/a-byte-after-a-newline", query: "as=" + as + "&clean=1&ce=deflate&pad=%0Ax", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: firstStream},
				{name: "fail/a-byte-after-nuls", query: "as=" + as + "&clean=1&ce=deflate&pad=" + nuls + "%0C", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: firstStream},
				{name: "fail/a-second-stream", query: "as=" + as + "-then-plain&clean=1&ce=deflate", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: firstStream},
				{name: "fail/a-second-stream-after-a-newline", query: "as=" + as + "-then-newline&ce=deflate&pad=" + url.QueryEscape(string(encodeAs(as, []byte(cleanText)))),
					wantStatus: 200, cut: true, wantUse: cutUndecodable, check: firstStream},
				{name: "fail/a-gzip-member-after-zero-padding", query: "as=" + as + "-then-zeros-then-gzip&clean=1&ce=deflate", wantStatus: 200, cut: true, wantUse: cutUndecodable, check: firstStream},
			} {
				c.name = as + "/" + framing.name + "/" + c.name
				c.query += framing.query
				cases = append(cases, c)
			}
		}
		// Whitespace past the cap of bytes read from the upstream (a body
		// of declared length over it is refused at its length, unread).
		cases = append(cases, encodedCase{name: as + "/streamed/fail/whitespace-over-the-cap", query: "as=" + as + "&clean=1&ce=deflate&stream=1&pad=" + strings.Repeat("+", maxRespBytes),
			wantStatus: 200, cut: true, wantUse: cutTooLarge, check: firstStream})
	}
	f.checkEncoded(t, tok, true, cases)
}

// TestProxyRelaysDecodedMemberAtOnce: a Content-Encoding: gzip or deflate
// body whose upstream sends a whole gzip member (or zlib or raw deflate
// stream) and then pauses (a slow upstream, a stream of members sent as
// they come) reaches the caller decoded, all of it, while the upstream
// holds the rest; what follows (another member, padding, the end) is
// looked at after. It used to hold the member's last decoded bytes until
// the upstream sent more or ended: the decoder looked at what follows the
// member before handing them out.
func TestProxyRelaysDecodedMemberAtOnce(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	tests := []struct {
		name, ce, as string
		second       string // what the upstream sends once let go
		wantRest     string // decoded
	}{
		{name: "gzip/then-a-second-member", ce: "gzip", as: "gzip", second: string(encodeAs("gzip", []byte(holdSecond))), wantRest: holdSecond},
		{name: "gzip/then-a-newline", ce: "gzip", as: "gzip", second: "\n"},
		{name: "gzip/then-the-end", ce: "gzip", as: "gzip"},
		{name: "deflate-zlib/then-a-newline", ce: "deflate", as: "zlib", second: "\n"},
		{name: "deflate-zlib/then-the-end", ce: "deflate", as: "zlib"},
		{name: "deflate-raw/then-nuls", ce: "deflate", as: "rawdeflate", second: "\x00\x00"},
	}
	for _, tt := range tests {
		t.Run("ok/"+tt.name, func(t *testing.T) {
			before := len(f.eventsOf(audit.TypeUseResult))
			h := f.up.holdRequest(t)
			q := url.Values{"first": {string(encodeAs(tt.as, []byte(holdFirst)))}, "second": {tt.second}, "ce": {tt.ce}}
			req, err := http.NewRequest("GET", "http://"+f.addr+"/v1/proxy/stripe/up/hold?"+q.Encode(), nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header = bearer(tok)
			res, err := f.client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			got := make(chan string, 1)
			go func() {
				b := make([]byte, len(holdFirst))
				n, _ := io.ReadFull(res.Body, b)
				got <- string(b[:n])
			}()
			select {
			case b := <-got:
				if b != holdFirst {
					t.Errorf("first member decoded = %q, want %q", b, holdFirst)
				}
			case <-time.After(cutDeadline):
				// Not a timing the test depends on: the bytes come at
				// once, or (the old code) only once the upstream is let go.
				t.Fatalf("first member's decoded bytes not all relayed %v after the upstream flushed it", cutDeadline)
			}
			h.letGo()
			if rest, err := io.ReadAll(res.Body); err != nil || string(rest) != tt.wantRest {
				t.Errorf("rest of the body = %q, %v; want %q", rest, err, tt.wantRest)
			}
			f.wantUseResult(t, before, audit.Outcome{Status: 200})
		})
	}
}

// TestProxyCapsEncodedBytes: the response cap also bounds the bytes read
// from the upstream when the body is decoded, so a body that decodes to
// little or nothing (here 400 empty gzip members, over the cap on the wire)
// cannot keep the broker decoding without end. The cap is hit at the body's
// first read, before anything of the response went out (ReverseProxy's
// early header flush is dropped, as when it loses that race): 502
// response_too_large, not a cut connection.
func TestProxyCapsEncodedBytes(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	proxy.DropEarlyFlush(f.proxy)
	tok := f.credential(t, "stripe").AccessToken
	res := f.do(t, "GET", "/v1/proxy/stripe/up/encoded?as=members&ce=gzip&stream=1", bearer(tok), nil)
	if res.Status != 502 || oauthError(t, res.Body) != "temporarily_unavailable" {
		t.Errorf("status %d, body %.120q; want 502 temporarily_unavailable", res.Status, res.Body)
	}
	f.waitEvent(t, audit.TypeUseResult)
	got := []any{*f.eventsOf(audit.TypeUseResult)[0].Outcome, f.up.Hits()}
	want := []any{audit.Outcome{Status: 502, Error: "temporarily_unavailable", Reason: "response_too_large"}, int64(1)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("[use_result-outcome upstream-hits] (-want +got):\n%s", diff)
	}
}

// TestProxyWeakensETagOfDecodedResponses: a response the broker relays
// decoded, or with the secret masked (found in the first 16 KiB of a body
// of declared length, which are read before the headers go out; a
// streamed body's headers go out with its first bytes), is not the
// representation a strong ETag of the upstream names (RFC 9110 8.8.1), so
// its strong ETags are relayed weak: revalidation (If-None-Match) still works, byte-range and
// If-Match use cannot mix the upstream's bytes and the relayed ones. A
// response relayed as it came keeps its ETag; HEAD and 304 answers of a
// compressed representation get the tag its GET would. A 304 without
// Content-Encoding cannot tell how the response the caller holds was
// relayed, but the caller's If-None-Match does: a strong tag the caller
// names only weak (the broker weakened it) is relayed weak, so the 304
// does not make the caller's stored (decoded or masked) body strong again.
// A masked body kept its strong ETag, and a 304 without Content-Encoding
// always relayed the strong tag.
func TestProxyWeakensETagOfDecodedResponses(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	tests := []struct {
		name   string
		method string // default GET
		query  string
		inm    string // the caller's If-None-Match
		want   []string
	}{
		{name: "gzip/strong-becomes-weak", query: "as=gzip&ce=gzip&etag=%22v1%22", want: []string{`W/"v1"`}},
		{name: "deflate/strong-becomes-weak", query: "as=zlib&ce=deflate&etag=%22v1%22", want: []string{`W/"v1"`}},
		{name: "gzip/weak-stays", query: "as=gzip&ce=gzip&etag=W/%22v1%22", want: []string{`W/"v1"`}},
		{name: "gzip/each-line", query: "as=gzip&ce=gzip&etag=W/%22a%22&etag=%22b%22", want: []string{`W/"a"`, `W/"b"`}},
		{name: "head-of-gzip", method: "HEAD", query: "as=gzip&ce=gzip&etag=%22v1%22", want: []string{`W/"v1"`}},
		{name: "304-of-gzip", query: "as=empty&ce=gzip&status=304&etag=%22v1%22", want: []string{`W/"v1"`}},
		{name: "plain/strong-stays", query: "as=plain&clean=1&etag=%22v1%22", want: []string{`"v1"`}},
		{name: "identity-token/strong-stays", query: "as=plain&clean=1&ce=identity&etag=%22v1%22", want: []string{`"v1"`}},
		{name: "plain-masked/strong-becomes-weak", query: "as=plain&etag=%22v1%22", want: []string{`W/"v1"`}},
		{name: "gzip-without-content-encoding/strong-stays", query: "as=gzip&clean=1&etag=%22v1%22", want: []string{`"v1"`}},
		{name: "304/revalidating-a-weakened-tag", query: "as=empty&status=304&etag=%22v1%22", inm: `W/"v1"`, want: []string{`W/"v1"`}},
		{name: "304/revalidating-among-others", query: "as=empty&status=304&etag=%22v1%22", inm: `"a,W/\"v1\"", W/"x", W/"v1"`, want: []string{`W/"v1"`}},
		{name: "304/revalidating-the-strong-tag", query: "as=empty&status=304&etag=%22v1%22", inm: `"v1"`, want: []string{`"v1"`}},
		{name: "304/revalidating-both-forms", query: "as=empty&status=304&etag=%22v1%22", inm: `W/"v1", "v1"`, want: []string{`"v1"`}},
		{name: "304/weak-tag-inside-another", query: "as=empty&status=304&etag=%22v1%22", inm: `"W/\"v1\""`, want: []string{`"v1"`}},
		{name: "304/no-if-none-match", query: "as=empty&status=304&etag=%22v1%22", want: []string{`"v1"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "GET"
			}
			hdr := bearer(tok)
			if tt.inm != "" {
				hdr.Set("If-None-Match", tt.inm)
			}
			res := f.do(t, method, "/v1/proxy/stripe/up/encoded?"+tt.query, hdr, nil)
			if res.Status >= 300 && res.Status != 304 {
				t.Fatalf("%s %s = %d: %s", method, tt.query, res.Status, res.Body)
			}
			if leaks(res.raw()) {
				t.Fatalf("the secret reached the caller: %q", res.raw())
			}
			if diff := cmp.Diff(tt.want, res.Header.Values("ETag")); diff != "" {
				t.Errorf("ETag relayed (-want +got):\n%s", diff)
			}
		})
	}
}

// TestProxyDropsDigestsOfDecodedResponses: the integrity fields of a body
// the upstream encoded (Content-Digest, over the content as sent;
// Repr-Digest, over the representation, which its content coding is part
// of; Digest, RFC 3230's instance digest; Content-MD5) do not describe the
// decoded body the broker relays, and would fail a caller that checks them:
// they are dropped. So are those of a body relayed with the secret masked
// (in the first 16 KiB of a body of declared length: they kept them), and those of a 304 revalidating a tag the broker
// weakened (see TestProxyWeakensETagOfDecodedResponses). A body relayed as
// it came keeps them.
func TestProxyDropsDigestsOfDecodedResponses(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	tests := []struct {
		name   string
		method string // default GET
		query  string
		inm    string // the caller's If-None-Match
		kept   bool
	}{
		{name: "gzip/dropped", query: "as=gzip&ce=gzip&clean=1&digests=1"},
		{name: "gzip-streamed/dropped", query: "as=gzip&ce=gzip&clean=1&stream=1&digests=1"},
		{name: "deflate/dropped", query: "as=zlib&ce=deflate&clean=1&digests=1"},
		{name: "head-of-gzip/dropped", method: "HEAD", query: "as=gzip&ce=gzip&clean=1&digests=1"},
		{name: "304-of-gzip/dropped", query: "as=empty&ce=gzip&status=304&digests=1"},
		{name: "plain/kept", query: "as=plain&clean=1&digests=1", kept: true},
		{name: "identity-token/kept", query: "as=plain&ce=identity&clean=1&digests=1", kept: true},
		{name: "gzip-without-content-encoding/kept", query: "as=gzip&clean=1&digests=1", kept: true},
		{name: "plain-masked/dropped", query: "as=plain&digests=1"},
		{name: "304-revalidating-a-weakened-tag/dropped", query: "as=empty&status=304&etag=%22v1%22&digests=1", inm: `W/"v1"`},
		{name: "304-revalidating-the-strong-tag/kept", query: "as=empty&status=304&etag=%22v1%22&digests=1", inm: `"v1"`, kept: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = "GET"
			}
			hdr := bearer(tok)
			if tt.inm != "" {
				hdr.Set("If-None-Match", tt.inm)
			}
			res := f.do(t, method, "/v1/proxy/stripe/up/encoded?"+tt.query, hdr, nil)
			if res.Status >= 300 && res.Status != 304 {
				t.Fatalf("%s %s = %d: %s", method, tt.query, res.Status, res.Body)
			}
			for _, name := range digestHeaders {
				if got := res.Header.Get(name) != ""; got != tt.kept {
					t.Errorf("%s relayed: %v, want %v", name, got, tt.kept)
				}
			}
		})
	}
}
