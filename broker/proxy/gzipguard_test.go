package proxy_test

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
)

// TestProxyScreensGzipWithoutContentEncoding: a body that is gzip data
// although the response has no Content-Encoding (a .gz download, an echo
// endpoint returning compressed bytes as application/octet-stream) is
// decoded to be scanned. Clean, the caller gets the upstream's bytes
// unchanged (it asked for a .gz file); carrying the injected secret, or
// not decodable within the response cap, it is refused: 502 when its length
// was declared, the response aborted when it streams (its status is gone).
func TestProxyScreensGzipWithoutContentEncoding(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	cleanGz := string(encodeAs("gzip", []byte(cleanText)))
	refused := func(reason string) audit.Outcome {
		return audit.Outcome{Status: 502, Error: "temporarily_unavailable", Reason: reason}
	}
	aborted := func(reason string) audit.Outcome {
		return audit.Outcome{Status: 200, Error: "aborted", Reason: reason}
	}
	tests := []struct {
		name       string
		query      string
		wantStatus int // 0: the response is aborted (the client may see none)
		wantBody   string
		wantUse    audit.Outcome
	}{
		{name: "ok/clean-gzip-relayed-unchanged", query: "as=gzip&clean=1", wantStatus: 200, wantBody: cleanGz, wantUse: audit.Outcome{Status: 200}},
		{name: "ok/clean-gzip-streamed-relayed-unchanged", query: "as=gzip&clean=1&stream=1", wantStatus: 200, wantBody: cleanGz, wantUse: audit.Outcome{Status: 200}},
		{name: "ok/not-gzip-magic-relayed", query: "as=garbage", wantStatus: 200, wantBody: "\x1f\x8b not really gzip", wantUse: audit.Outcome{Status: 200}},
		{name: "fail/gzip-carrying-the-secret", query: "as=gzip", wantStatus: 502, wantUse: refused("response_contains_secret")},
		{name: "fail/gzip-carrying-the-secret-streamed", query: "as=gzip&stream=1", wantUse: aborted("response_contains_secret")},
		{name: "fail/decompression-bomb", query: "as=bomb", wantStatus: 502, wantUse: refused("response_too_large")},
		{name: "fail/truncated-gzip", query: "as=gzip&clean=1&cut=1", wantStatus: 502, wantUse: refused("response_undecodable")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(f.eventsOf(audit.TypeUseResult))
			req, err := http.NewRequest("GET", "http://"+f.addr+"/v1/proxy/stripe/up/encoded?"+tt.query, nil)
			if err != nil {
				t.Fatal(err)
			}
			req.Header = bearer(tok)
			// A new connection each: on a reused one, the client retries a
			// GET aborted before its headers reached it (a streamed refusal
			// can beat ReverseProxy's asynchronous header flush), which
			// sends the request upstream twice.
			req.Close = true
			status, body := 0, ""
			if res, err := f.client.Do(req); err == nil {
				b, rerr := io.ReadAll(res.Body)
				res.Body.Close()
				body = string(b)
				if rerr == nil {
					status = res.StatusCode
				}
				if ce := res.Header.Get("Content-Encoding"); ce != "" {
					t.Errorf("Content-Encoding %q relayed", ce)
				}
			}
			if status != tt.wantStatus {
				t.Errorf("status = %d, want %d (0: aborted); body %.80q", status, tt.wantStatus, body)
			}
			if strings.Contains(body, "\x1f\x8b") && tt.wantStatus != 200 || leaks(body) {
				t.Errorf("the refused body reached the caller: %.80q", body)
			}
			if tt.wantStatus == 200 && body != tt.wantBody {
				t.Errorf("body = %.80q, want the upstream's bytes %.80q", body, tt.wantBody)
			}
			f.waitEvent(t, audit.TypeUseResult)
			results := f.eventsOf(audit.TypeUseResult)
			if len(results) != before+1 {
				t.Fatalf("use_result events = %d, want %d", len(results), before+1)
			}
			if diff := cmp.Diff(tt.wantUse, *results[before].Outcome); diff != "" {
				t.Errorf("use_result outcome (-want +got):\n%s", diff)
			}
		})
	}
}

// TestProxyRelaysShortFirstChunkAtOnce: a streamed body whose first chunk
// is no longer than the gzip magic and is not it (a keep-alive newline,
// the "[" of a streamed JSON array, a ":\n\n" server-sent-event comment)
// reaches the caller while the upstream holds the rest, as any chunk does:
// the gzip check reads only the bytes that could still be gzip's, and
// relays them without waiting for more. It used to hold such a chunk until
// the upstream sent more (or ended).
func TestProxyRelaysShortFirstChunkAtOnce(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tok := f.credential(t, "stripe").AccessToken
	for _, first := range []string{"\n", "[\n", ":\n\n", "\x1fA"} {
		t.Run(fmt.Sprintf("ok/%q", first), func(t *testing.T) {
			f.up.holdRequest(t)
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
		})
	}
}
