package proxy_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/proxy"
)

// TestProxyScreensGzipWithoutContentEncoding: a body that is gzip data
// although the response has no Content-Encoding (a .gz download, an echo
// endpoint returning compressed bytes as application/octet-stream) is
// decoded to be scanned. Clean, the caller gets the upstream's bytes
// unchanged (it asked for a .gz file); carrying the injected secret, or
// not decodable within the response cap, it is refused: 502, when its
// length was declared and when it streams and its headers have not gone out
// (here: ReverseProxy's early header flush is dropped; see
// TestProxyStreamedGzipRefusalAfterHeadersAborts for the other case).
func TestProxyScreensGzipWithoutContentEncoding(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	proxy.DropEarlyFlush(f.proxy)
	tok := f.credential(t, "stripe").AccessToken
	cleanGz := string(encodeAs("gzip", []byte(cleanText)))
	refused := func(reason string) audit.Outcome {
		return audit.Outcome{Status: 502, Error: "temporarily_unavailable", Reason: reason}
	}
	ok := audit.Outcome{Status: 200}
	f.checkEncoded(t, tok, false, []encodedCase{
		{name: "ok/clean-gzip-relayed-unchanged", query: "as=gzip&clean=1", wantStatus: 200, wantBody: cleanGz, wantUse: audit.Outcome{Status: 200}},
		{name: "ok/clean-gzip-streamed-relayed-unchanged", query: "as=gzip&clean=1&stream=1", wantStatus: 200, wantBody: cleanGz, wantUse: audit.Outcome{Status: 200}},
		{name: "ok/not-gzip-magic-relayed", query: "as=garbage", wantStatus: 200, wantBody: "\x1f\x8b not really gzip", wantUse: audit.Outcome{Status: 200}},
		{name: "fail/gzip-carrying-the-secret", query: "as=gzip", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/gzip-carrying-the-secret-streamed", query: "as=gzip&stream=1", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/decompression-bomb", query: "as=bomb", wantStatus: 502, wantUse: refused("response_too_large")},
		{name: "fail/truncated-gzip", query: "as=gzip&clean=1&cut=1", wantStatus: 502, wantUse: refused("response_undecodable")},
		// What follows a gzip member: text is relayed with it (see
		// TestProxyMasksTextAfterCompressedStream), another member is
		// decoded and scanned on, a zlib stream or what could start a
		// header is refused.
		{name: "ok/gzip-then-a-newline", query: "as=gzip-then-newline", wantStatus: 200, wantBody: string(encodeAs("gzip-then-newline", nil)), wantUse: ok},
		{name: "ok/gzip-then-a-newline-streamed", query: "as=gzip-then-newline&stream=1", wantStatus: 200, wantBody: string(encodeAs("gzip-then-newline", nil)), wantUse: ok},
		{name: "ok/gzip-then-clean-text", query: "as=gzip-then-text&clean=1", wantStatus: 200, wantBody: string(encodeAs("gzip-then-text", []byte(cleanText))), wantUse: ok},
		{name: "ok/gzip-then-zero-padding", query: "as=gzip-then-zeros", wantStatus: 200, wantBody: string(encodeAs("gzip-then-zeros", nil)), wantUse: ok},
		// Whitespace and zero padding after the last member (what a
		// Content-Encoding: gzip body may end with too: see
		// TestProxyDecodesGzipWithTrailingWhitespace) are relayed with
		// it, declared or streamed; the decoded content is still
		// screened.
		{name: "ok/gzip-then-crlf", query: "as=gzip&clean=1&pad=%0D%0A", wantStatus: 200, wantBody: cleanGz + "\r\n", wantUse: ok},
		{name: "ok/gzip-then-crlf-streamed", query: "as=gzip&clean=1&pad=%0D%0A&stream=1", wantStatus: 200, wantBody: cleanGz + "\r\n", wantUse: ok},
		{name: "ok/gzip-then-zero-padding-streamed", query: "as=gzip-then-zeros&stream=1", wantStatus: 200, wantBody: string(encodeAs("gzip-then-zeros", nil)), wantUse: ok},
		{name: "ok/gzip-then-mixed-whitespace-and-nuls", query: "as=gzip&clean=1&pad=%00%00%20%09%0D%0A%00", wantStatus: 200, wantBody: cleanGz + "\x00\x00 \t\r\n\x00", wantUse: ok},
		{name: "fail/gzip-carrying-the-secret-then-a-newline", query: "as=gzip&pad=%0A", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/gzip-carrying-the-secret-then-a-newline-streamed", query: "as=gzip&pad=%0A&stream=1", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/gzip-carrying-the-secret-then-nuls", query: "as=gzip&pad=%00%00%00%00%00%00%00%00", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "ok/gzip-then-a-newline-in-labelled-gzip", query: "as=gzip.gzip-then-newline&ce=gzip", wantStatus: 200, wantBody: string(encodeAs("gzip-then-newline", nil)), wantUse: ok},
		{name: "ok/two-clean-members", query: "as=gzip-then-plain&clean=1", wantStatus: 200, wantBody: string(encodeAs("gzip-then-plain", []byte(cleanText))), wantUse: ok},
		{name: "ok/two-clean-members-streamed", query: "as=gzip-then-plain&clean=1&stream=1", wantStatus: 200, wantBody: string(encodeAs("gzip-then-plain", []byte(cleanText))), wantUse: ok},
		{name: "ok/clean-member-after-zero-padding", query: "as=gzip-then-zeros-then-gzip&clean=1", wantStatus: 200, wantBody: string(encodeAs("gzip-then-zeros-then-gzip", []byte(cleanText))), wantUse: ok},
		{name: "fail/second-member-carrying-the-secret", query: "as=gzip-then-plain", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/second-member-carrying-the-secret-streamed", query: "as=gzip-then-plain&stream=1", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/member-after-zero-padding-carrying-the-secret", query: "as=gzip-then-zeros-then-gzip", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/secret-cut-between-two-members", query: "as=gzip-split", wantStatus: 502, wantUse: refused("response_contains_secret")},
		// zcat -f (gzip -dcf) writes the text after the last member as
		// it is, right after the decoded bytes: a secret cut between them
		// reaches it whole, while the response scan sees only the part
		// in the text. It used to be relayed.
		{name: "fail/secret-cut-between-the-last-member-and-the-text-after-it", query: "as=gzip-split-into-text", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/secret-cut-between-the-last-member-and-the-text-after-it-streamed", query: "as=gzip-split-into-text&stream=1", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/gzip-then-a-zlib-stream", query: "as=gzip-then-zlib&clean=1", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "fail/gzip-then-a-zlib-stream-in-labelled-gzip", query: "as=gzip.gzip-then-zlib&clean=1&ce=gzip", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "fail/gzip-then-what-could-start-a-member-1f", query: "as=gzip-then-1f", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "fail/gzip-then-what-could-start-a-member-1f8b", query: "as=gzip-then-1f8b", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "fail/gzip-then-what-could-start-a-zlib-header", query: "as=gzip-then-x", wantStatus: 502, wantUse: refused("response_undecodable")},
		// GNU gzip -d decodes what starts with 1f after a member: a
		// member under gzip's old magic 1f 9e (here carrying the
		// secret), compress data (1f 9d). It used to be relayed as text,
		// unscanned.
		{name: "fail/gzip-then-an-old-magic-member-gzip-d-decodes", query: "as=gzip-then-oldgzip", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "fail/gzip-then-an-old-magic-member-gzip-d-decodes-streamed", query: "as=gzip-then-oldgzip&stream=1", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "fail/gzip-then-compress-data-gzip-d-decodes", query: "as=gzip-then-lzw", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "fail/gzip-then-a-member-that-does-not-decode", query: "as=gzip-then-a-bad-member", wantStatus: 502, wantUse: refused("response_undecodable")},
	})
}

// TestProxyRelaysShortFirstChunkAtOnce: a streamed body whose first chunk
// is no longer than the gzip magic (a keep-alive newline, the "[" of a
// streamed JSON array, a ":\n\n" server-sent-event comment, a lone "x")
// reaches the caller while the upstream holds the rest, as any chunk does,
// and the rest follows it unchanged: the gzip and zlib check reads only the
// bytes that could still be a header, and relays them without waiting for
// more, also when they could still start one ("x", 1f, 1f 8b: see
// TestProxyScreensStreamAfterRelayedHeaderPrefix). It used to hold such a
// chunk until the upstream sent more (or ended): an upstream that sends
// "x" and then waits for the caller (an event stream, a long poll) hung
// until the timeout.
func TestProxyRelaysShortFirstChunkAtOnce(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	for _, first := range []string{"\n", "[\n", ":\n\n", "\x1fA", "x", "\x1f", "\x1f\x8b"} {
		t.Run(fmt.Sprintf("ok/%q", first), func(t *testing.T) {
			h := f.up.holdRequest(t)
			req, err := http.NewRequest("GET", "http://"+f.addr+"/v1/proxy/stripe/up/hold?first="+url.QueryEscape(first), nil)
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
				b := make([]byte, len(first))
				n, _ := io.ReadFull(res.Body, b)
				got <- string(b[:n])
			}()
			select {
			case b := <-got:
				if b != first {
					t.Errorf("first chunk = %q, want %q", b, first)
				}
			case <-time.After(cutDeadline):
				t.Fatalf("first chunk %q not relayed %v after the upstream flushed it", first, cutDeadline)
			}
			h.letGo()
			if rest, err := io.ReadAll(res.Body); err != nil || string(rest) != holdSecond {
				t.Errorf("rest of the body = %q, %v; want %q", rest, err, holdSecond)
			}
		})
	}
}

// TestProxyScreensStreamAfterRelayedHeaderPrefix: a streamed body whose
// first chunk is a lone "x" or 1f (which could start a zlib or gzip
// header) is relayed at once (TestProxyRelaysShortFirstChunkAtOnce), and
// what follows is still screened with it: a zlib or gzip stream (that
// byte, then the rest) is read whole, decoded and scanned, relayed
// unchanged when clean, and when it carries the secret the response is
// cut after that first byte (its headers went out with it): the caller
// never gets the compressed secret. It used to hold the first byte until
// more came, and an upstream waiting for the caller after it hung until
// the timeout.
func TestProxyScreensStreamAfterRelayedHeaderPrefix(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	clean := string(encodeAs("zlib", []byte(cleanText)))
	secret := string(encodeAs("zlib", []byte("Authorization: Bearer "+upstreamKey+"\n")))
	cleanGz := string(encodeAs("gzip", []byte(cleanText)))
	secretGz := string(encodeAs("gzip", []byte("Authorization: Bearer "+upstreamKey+"\n")))
	tests := []struct {
		name     string
		body     string // the upstream's: its first byte, then (once let go) the rest
		wantBody string
		wantErr  bool
		wantUse  audit.Outcome
	}{
		{name: "ok/clean-zlib-relayed-unchanged", body: clean, wantBody: clean, wantUse: audit.Outcome{Status: 200}},
		{name: "fail/zlib-carrying-the-secret-cut-after-the-x", body: secret, wantBody: "x", wantErr: true,
			wantUse: audit.Outcome{Status: 200, Error: "aborted", Reason: "response_contains_secret"}},
		{name: "ok/clean-gzip-relayed-unchanged", body: cleanGz, wantBody: cleanGz, wantUse: audit.Outcome{Status: 200}},
		{name: "fail/gzip-carrying-the-secret-cut-after-the-1f", body: secretGz, wantBody: "\x1f", wantErr: true,
			wantUse: audit.Outcome{Status: 200, Error: "aborted", Reason: "response_contains_secret"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(f.eventsOf(audit.TypeUseResult))
			h := f.up.holdRequest(t)
			q := url.Values{"first": {tt.body[:1]}, "second": {tt.body[1:]}}
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
			first := make([]byte, 1)
			if _, err := io.ReadFull(res.Body, first); err != nil || string(first) != tt.body[:1] {
				t.Fatalf("first byte = %q, %v; want %q", first, err, tt.body[:1])
			}
			h.letGo()
			rest, err := io.ReadAll(res.Body)
			body := string(first) + string(rest)
			if (err != nil) != tt.wantErr || body != tt.wantBody {
				t.Errorf("body = %.80q, error %v; want %.80q, error %v", body, err, tt.wantBody, tt.wantErr)
			}
			f.wantUseResult(t, before, tt.wantUse)
		})
	}
}

// TestProxyStreamedGzipRefusalBeforeHeadersIsA502: a streamed body that is
// gzip data carrying the injected secret, refused at its first read before
// the response's headers went out (ReverseProxy flushes them from a timer,
// which can lose the race), gets an ordinary 502 response_contains_secret.
// It used to be cut off with nothing sent, which an HTTP client on a reused
// keep-alive connection takes for a connection the server closed while idle
// and retries (a GET): the request went upstream, and into the audit log,
// twice.
func TestProxyStreamedGzipRefusalBeforeHeadersIsA502(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	proxy.DropEarlyFlush(f.proxy)
	tok := f.credential(t, "stripe").AccessToken
	// A first request leaves its connection idle for the second.
	if res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(tok), nil); res.Status != 200 {
		t.Fatalf("first request: status %d, want 200", res.Status)
	}
	f.waitEvent(t, audit.TypeUseResult)
	hits, uses := f.up.Hits(), len(f.eventsOf(audit.TypeUse))

	reused := false
	trace := &httptrace.ClientTrace{GotConn: func(i httptrace.GotConnInfo) { reused = reused || i.Reused }}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace),
		"GET", "http://"+f.addr+"/v1/proxy/stripe/up/encoded?as=gzip&stream=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = bearer(tok)
	status, body := 0, ""
	res, err := f.client.Do(req)
	if err == nil {
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		status, body = res.StatusCode, string(b)
	}
	if !reused {
		t.Fatal("the request did not go on the first request's connection")
	}
	if status != 502 || leaks(body) {
		t.Errorf("status %d, body %.120q (err %v); want 502 temporarily_unavailable", status, body, err)
	} else if code := oauthError(t, body); code != "temporarily_unavailable" {
		t.Errorf("error %q, want temporarily_unavailable", code)
	}
	f.waitEvent(t, audit.TypeUseResult)
	results := f.eventsOf(audit.TypeUseResult)
	r := results[len(results)-1]
	got := []any{f.up.Hits() - hits, len(f.eventsOf(audit.TypeUse)) - uses, *r.Outcome, r.Upstream.Status, *r.Upstream.Bytes}
	want := []any{int64(1), 1, audit.Outcome{Status: 502, Error: "temporarily_unavailable", Reason: "response_contains_secret"}, 200, int64(0)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("[upstream-hits use-events use_result-outcome upstream-status bytes] (-want +got):\n%s", diff)
	}
}

// TestProxyStreamedGzipRefusalAfterHeadersAborts: a streamed body that is
// gzip data carrying the injected secret, refused once the response's
// headers went out (the upstream sent them, then the body), is cut off: the
// caller's body read fails without any of it, and the request went upstream
// once.
func TestProxyStreamedGzipRefusalAfterHeadersAborts(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	h := f.up.holdRequest(t)
	req, err := http.NewRequest("GET", "http://"+f.addr+"/v1/proxy/stripe/up/encoded?as=gzip&stream=1&hold=1", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = bearer(tok)
	res, err := f.client.Do(req) // returns with the headers
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	h.letGo()
	b, err := io.ReadAll(res.Body)
	if err == nil || len(b) != 0 {
		t.Errorf("body = %.80q, %v; want nothing and an error (cut)", b, err)
	}
	f.waitEvent(t, audit.TypeUseResult)
	r := f.eventsOf(audit.TypeUseResult)[0]
	got := []any{res.StatusCode, f.up.Hits(), *r.Outcome, *r.Upstream.Bytes}
	want := []any{200, int64(1), audit.Outcome{Status: 200, Error: "aborted", Reason: "response_contains_secret"}, int64(0)}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("[status upstream-hits use_result-outcome bytes] (-want +got):\n%s", diff)
	}
}

// TestProxyScreensZlibAndNestedCompression: the screen of a body sent
// without Content-Encoding knows zlib too (an RFC 1950 header: method 8, a
// window of at most 32 KiB, the check bits right, no preset dictionary), as
// Python's zlib.compress, Java's Deflater and PHP's gzcompress write it:
// such a body is read whole, decoded and scanned like gzip, relayed as it
// came when clean, refused when it carries the secret, when it does not
// decode, or when a second gzip or zlib stream (or what could start one)
// follows its end, which decoders that read on would open; other data
// after its end (a newline, text) is relayed with it (see
// TestProxyMasksTextAfterCompressedStream). Compressed data inside compressed data (a
// gzip or zlib stream the decoded bytes start with) is not looked into and
// is refused, with or without Content-Encoding: a key inside a second
// layer used to reach the caller. Text whose first bytes read as a zlib
// header with a preset dictionary ("x = ", "80") is relayed as any body;
// text whose first bytes read as one of a smaller window ("HK") is
// relayed as text (only CMF 78 is taken for zlib); text starting like a
// 32 KiB-window header ("x^") is taken for zlib and refused, in a gzip
// body too.
func TestProxyScreensZlibAndNestedCompression(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	proxy.DropEarlyFlush(f.proxy)
	tok := f.credential(t, "stripe").AccessToken
	refused := func(reason string) audit.Outcome {
		return audit.Outcome{Status: 502, Error: "temporarily_unavailable", Reason: reason}
	}
	ok := audit.Outcome{Status: 200}
	f.checkEncoded(t, tok, false, []encodedCase{
		{name: "ok/clean-zlib-relayed-unchanged", query: "as=zlib&clean=1", wantStatus: 200, wantBody: string(encodeAs("zlib", []byte(cleanText))), wantUse: ok},
		{name: "ok/clean-zlib-streamed-relayed-unchanged", query: "as=zlib&clean=1&stream=1", wantStatus: 200, wantBody: string(encodeAs("zlib", []byte(cleanText))), wantUse: ok},
		{name: "ok/text-like-a-zlib-header-with-a-dictionary", query: "as=xtext", wantStatus: 200, wantBody: string(encodeAs("xtext", nil)), wantUse: ok},
		{name: "ok/clean-gzip-labelled-inside-gzip", query: "as=gzip.gzip&clean=1&ce=gzip", wantStatus: 200, wantBody: string(encodeAs("gzip", []byte(cleanText))), wantUse: ok},
		{name: "ok/text-like-a-small-window-zlib-header", query: "as=hktext", wantStatus: 200, wantBody: string(encodeAs("hktext", nil)), wantUse: ok},
		{name: "ok/text-like-a-small-window-zlib-header-in-gzip", query: "as=gzip.hktext", wantStatus: 200, wantBody: string(encodeAs("gzip.hktext", nil)), wantUse: ok},
		{name: "ok/text-like-a-small-window-zlib-header-in-labelled-gzip", query: "as=gzip.hktext&ce=gzip", wantStatus: 200, wantBody: string(encodeAs("hktext", nil)), wantUse: ok},
		{name: "fail/text-like-a-zlib-header", query: "as=xhattext", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "fail/text-like-a-zlib-header-in-gzip", query: "as=gzip.xhattext", wantStatus: 502, wantUse: refused("response_encoding_unsupported")},
		{name: "fail/text-like-a-zlib-header-in-labelled-gzip", query: "as=gzip.xhattext&ce=gzip", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "fail/zlib-carrying-the-secret", query: "as=zlib", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/zlib-carrying-the-secret-streamed", query: "as=zlib&stream=1", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/truncated-zlib", query: "as=zlib&clean=1&cut=1", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "ok/zlib-then-a-newline", query: "as=zlib-then-newline", wantStatus: 200, wantBody: string(encodeAs("zlib-then-newline", nil)), wantUse: ok},
		{name: "ok/zlib-then-a-newline-streamed", query: "as=zlib-then-newline&stream=1", wantStatus: 200, wantBody: string(encodeAs("zlib-then-newline", nil)), wantUse: ok},
		{name: "ok/zlib-then-clean-text", query: "as=zlib-then-text&clean=1", wantStatus: 200, wantBody: string(encodeAs("zlib-then-text", []byte(cleanText))), wantUse: ok},
		{name: "ok/zlib-then-a-newline-in-labelled-gzip", query: "as=gzip.zlib-then-newline&ce=gzip", wantStatus: 200, wantBody: string(encodeAs("zlib-then-newline", nil)), wantUse: ok},
		// A zlib stream followed by whitespace or NUL bytes is relayed
		// as it came when clean (the zlib-then-a-newline cases above),
		// declared or streamed, and refused when the stream carries the
		// secret, the padding after it or not; text after the newline
		// goes through the response scan (the secret masked in it).
		{name: "ok/zlib-then-crlf-and-nuls", query: "as=zlib&clean=1&pad=%0D%0A%00%00", wantStatus: 200, wantBody: string(encodeAs("zlib", []byte(cleanText))) + "\r\n\x00\x00", wantUse: ok},
		{name: "ok/zlib-then-crlf-and-nuls-streamed", query: "as=zlib&clean=1&pad=%0D%0A%00%00&stream=1", wantStatus: 200, wantBody: string(encodeAs("zlib", []byte(cleanText))) + "\r\n\x00\x00", wantUse: ok},
		{name: "ok/zlib-then-a-newline-then-the-secret-masked", query: "as=zlib-then-newline&pad=" + url.QueryEscape(upstreamKey), wantStatus: 200,
			wantBody: string(encodeAs("zlib-then-newline", nil)) + strings.Repeat("*", len(upstreamKey)), wantUse: ok},
		{name: "fail/zlib-carrying-the-secret-then-a-newline", query: "as=zlib&pad=%0A", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/zlib-carrying-the-secret-then-a-newline-streamed", query: "as=zlib&pad=%0A&stream=1", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/zlib-carrying-the-secret-then-nuls", query: "as=zlib&pad=%00%00%00%00", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/secret-cut-between-the-zlib-stream-and-the-text-after-it", query: "as=zlib-split-into-text", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/zlib-then-a-second-stream", query: "as=zlib-then-plain", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "fail/zlib-then-a-clean-second-stream", query: "as=zlib-then-plain&clean=1", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "fail/zlib-then-a-gzip-stream", query: "as=zlib-then-gzip&clean=1", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "fail/zlib-then-a-gzip-stream-in-labelled-gzip", query: "as=gzip.zlib-then-gzip&ce=gzip", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "fail/zlib-then-what-could-start-a-zlib-header", query: "as=zlib-then-x", wantStatus: 502, wantUse: refused("response_undecodable")},
		{name: "fail/gzip-inside-gzip", query: "as=gzip.gzip", wantStatus: 502, wantUse: refused("response_encoding_unsupported")},
		{name: "fail/gzip-inside-gzip-streamed", query: "as=gzip.gzip&stream=1", wantStatus: 502, wantUse: refused("response_encoding_unsupported")},
		{name: "fail/zlib-inside-gzip", query: "as=gzip.zlib", wantStatus: 502, wantUse: refused("response_encoding_unsupported")},
		{name: "fail/gzip-inside-zlib", query: "as=zlib.gzip", wantStatus: 502, wantUse: refused("response_encoding_unsupported")},
		{name: "fail/clean-gzip-inside-gzip-is-not-looked-into", query: "as=gzip.gzip&clean=1", wantStatus: 502, wantUse: refused("response_encoding_unsupported")},
		{name: "fail/three-layers-labelled", query: "as=gzip.gzip.gzip&ce=gzip", wantStatus: 502, wantUse: refused("response_encoding_unsupported")},
		{name: "fail/zlib-inside-gzip-labelled-deflate", query: "as=zlib.gzip.zlib&ce=deflate", wantStatus: 502, wantUse: refused("response_encoding_unsupported")},
	})
}

// TestProxyMasksTextAfterCompressedStream: data after the end of a zlib
// stream or of a gzip member sent without Content-Encoding (PHP's
// gzcompress output and then a stray newline or a log line) that does not
// start a gzip or zlib header is relayed, not refused: decoders (Python's
// zlib.decompress, Java's Inflater, zlib's inflate) stop at the end of a
// zlib stream, and gzip -d at what is not a member ("trailing garbage
// ignored"). It is relayed as the rest of the body is, through the
// response scan, which masks the secret in it: what comes after the
// stream carries the secret masked, the stream itself is relayed
// unchanged. A secret inside the stream, or a second zlib stream after it,
// is refused (TestProxyScreensZlibAndNestedCompression); a second gzip
// member is decoded and scanned (TestProxyScreensGzipWithoutContentEncoding).
// It used to be refused 502 response_undecodable, the text clean or not.
func TestProxyMasksTextAfterCompressedStream(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	for _, query := range []string{
		"as=zlib-then-text", "as=zlib-then-text&stream=1", "as=gzip.zlib-then-text&ce=gzip",
		"as=gzip-then-text", "as=gzip-then-text&stream=1", "as=gzip.gzip-then-text&ce=gzip",
	} {
		t.Run("ok/"+query, func(t *testing.T) {
			coding := "zlib"
			if strings.Contains(query, "gzip-then") {
				coding = "gzip"
			}
			stream := string(encodeAs(coding, []byte(cleanText)))
			before := len(f.eventsOf(audit.TypeUseResult))
			res := f.do(t, "GET", "/v1/proxy/stripe/up/encoded?"+query, bearer(tok), nil)
			if res.Status != 200 {
				t.Fatalf("status = %d, want 200; body %.120q", res.Status, res.Body)
			}
			text, ok := strings.CutPrefix(res.Body, stream)
			if !ok {
				t.Fatalf("body = %.80q, want the upstream's %s stream %.80q first", res.Body, coding, stream)
			}
			// The request headers the upstream echoes, the injected
			// Authorization among them, its secret masked.
			if leaks(text) || !strings.HasPrefix(text, `{"headers":`) || !strings.Contains(text, "Bearer "+strings.Repeat("*", len(upstreamKey))) {
				t.Errorf("text after the stream = %.400q, want the echoed headers with the secret masked", text)
			}
			f.wantUseResult(t, before, audit.Outcome{Status: 200})
		})
	}
}
