package proxy

import (
	"maps"
	"mime"
	"net/http"
	"reflect"
	"slices"
	"testing"
	"time"
)

// rpFlushInterval is httputil.ReverseProxy's flushInterval for a proxy
// with FlushInterval 0 (as the broker's): a text/event-stream response
// and a response of unknown length are flushed at once (-1), others not
// (0).
func rpFlushInterval(res *http.Response) time.Duration {
	if base, _, _ := mime.ParseMediaType(res.Header.Get("Content-Type")); base == "text/event-stream" {
		return -1
	}
	if res.ContentLength == -1 {
		return -1
	}
	return 0
}

// rpCopyHeader is httputil.ReverseProxy's copyHeader.
func rpCopyHeader(dst, src http.Header) {
	for k, vv := range src {
		for _, v := range vv {
			dst.Add(k, v)
		}
	}
}

// What ReverseProxy does with a response's headers after ModifyResponse
// (copy them into the writer's Header(), then choose the flush interval
// from res) gives the same staged headers and the same flush interval
// whether ModifyResponse ended with responseWriter.adopt or not, for every
// Content-Type, event streams in any case, with parameters, in a second
// value, or written with a character whose lower case is ASCII (the Kelvin
// sign), and for responses of known and unknown length.
func TestAdoptLeavesWhatReverseProxyReads(t *testing.T) {
	contentTypes := [][]string{
		nil,
		{"application/json"},
		{"text/event-stream"},
		{"Text/Event-Stream; charset=utf-8"},
		{" text/event-stream ;"},
		{"text/event-stream; x=\"unterminated"},
		{"text/event-streams"},
		{"application/x-event-stream"},
		{"application/json", "text/event-stream"},
		{"text/event-stream", "application/json"},
		{"text/\u212aevent-stream"},
		{"text/event-\u017ftream"},
		{""},
	}
	for _, ct := range contentTypes {
		for _, length := range []int64{-1, 0, 42} {
			header := func() http.Header {
				h := http.Header{
					"Date":           {"Mon, 02 Jan 2006 15:04:05 GMT"},
					"X-Multi":        {"a", "b"},
					"Etag":           {`"v1"`},
					"Cache-Control":  cacheControlPrivate,
					"X-Keytrail-Use": {"use_1"},
				}
				if ct != nil {
					h["Content-Type"] = slices.Clone(ct)
				}
				return h
			}
			// ReverseProxy after a ModifyResponse without adopt.
			want := &responseWriter{}
			want.init(nil)
			wres := &http.Response{Header: header(), ContentLength: length}
			rpCopyHeader(want.Header(), wres.Header)
			wantFlush := rpFlushInterval(wres)

			got := &responseWriter{}
			got.init(nil)
			res := &http.Response{Header: header(), ContentLength: length}
			got.adopt(res)
			rpCopyHeader(got.Header(), res.Header)
			if !reflect.DeepEqual(got.staged, want.staged) {
				t.Errorf("Content-Type %q, length %d: staged %v, want %v", ct, length, got.staged, want.staged)
			}
			if f := rpFlushInterval(res); f != wantFlush {
				t.Errorf("Content-Type %q, length %d: flush interval %v, want %v", ct, length, f, wantFlush)
			}
		}
	}
}

// After a 1xx response, whose headers ReverseProxy copies into Header()
// and then clears, adopt still stages the final response's headers, and
// only those.
func TestAdoptAfterInterimResponse(t *testing.T) {
	rw := &responseWriter{}
	rw.init(nil)
	rw.Header().Set("Link", "</style.css>; rel=preload")
	rw.WriteHeader(http.StatusEarlyHints)
	clear(rw.Header())
	res := &http.Response{Header: http.Header{"Content-Type": {"application/json"}, "X-Fine": {"kept"}}, ContentLength: 2}
	want := maps.Clone(res.Header)
	rw.adopt(res)
	rpCopyHeader(rw.Header(), res.Header)
	if !reflect.DeepEqual(rw.staged, want) {
		t.Errorf("staged %v, want %v", rw.staged, want)
	}
}
