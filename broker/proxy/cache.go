package proxy

import (
	"net/http"
	"strings"
)

// cacheControlPrivate is the Cache-Control of a proxied response whose
// upstream sent none. Shared by every such response: header values are
// copied, never appended to in place, on their way to the caller.
var cacheControlPrivate = []string{"private"}

// keepOutOfSharedCaches makes a proxied response private: a shared cache in
// front of the broker (a CDN, a caching reverse proxy) must not store it,
// or it would answer later requests itself, with no credential check and
// no use event. The upstream's own directives are kept except public and
// s-maxage (which only speak to shared caches); private is added when
// missing. A response without Cache-Control costs no allocation.
func keepOutOfSharedCaches(h http.Header) {
	vs := h["Cache-Control"]
	if len(vs) == 0 {
		h["Cache-Control"] = cacheControlPrivate
		return
	}
	var kept []string
	private := false
	for _, v := range vs {
		for d := range strings.SplitSeq(v, ",") {
			d = strings.TrimSpace(d)
			if d == "" {
				continue
			}
			name, _, _ := strings.Cut(d, "=")
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "public", "s-maxage":
				continue
			case "private":
				private = true
			}
			kept = append(kept, d)
		}
	}
	if !private {
		kept = append(kept, "private")
	}
	h["Cache-Control"] = []string{strings.Join(kept, ", ")}
}

// weakenETags makes every strong ETag of a response the broker relays
// decoded (its upstream compressed it) weak: a strong validator promises
// byte-identical representations (RFC 9110 8.8.1), and the decoded body is
// not the one the upstream's tag names. Weak, it still revalidates
// (If-None-Match compares weakly, and the upstream sees W/"x" match its "x"),
// and it never matches where byte equality is needed (If-Match, If-Range),
// so a cache or client cannot mix the encoded and decoded bytes. nginx's gzip
// filter does the same. An ETag already weak is left as it is.
func weakenETags(h http.Header) {
	vs := h["Etag"] // the upstream response's own values
	for i, v := range vs {
		if t := strings.TrimLeft(v, " \t"); t != "" && !strings.HasPrefix(t, "W/") {
			vs[i] = "W/" + t
		}
	}
}
