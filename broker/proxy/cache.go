package proxy

import (
	"net/http"
	"strings"
)

// cacheControlPrivate is the Cache-Control of a proxied response whose
// upstream sent none. Shared by every such response: it goes into the
// header map net/http writes to the caller as it is (responseWriter.adopt
// hands the upstream's map on without a copy), and nothing on the way
// writes a header value in place (an Add to this slice of capacity 1
// copies it; a Set replaces it). Never assign to its element.
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

// weakenRevalidatedETags makes weak each strong ETag of a 304 (whose
// upstream sent no Content-Encoding) that the caller's If-None-Match names
// weak and not strong, and reports whether it did. The broker relays a
// strong tag weak when the body it relayed is not the upstream's bytes
// (decoded, or with the secret masked; see weakenETags); a caller
// revalidating what it stored then sends that weak tag, and a 304 bringing
// back the strong one would make the stored body (decoded or masked)
// strongly tagged as the upstream's representation again. The 304 itself
// cannot tell: a 304 need not repeat Content-Encoding, and has no body.
func weakenRevalidatedETags(h http.Header, inm []string) bool {
	weakened := false
	vs := h["Etag"]
	for i, v := range vs {
		t := strings.TrimSpace(v)
		if t == "" || strings.HasPrefix(t, "W/") {
			continue
		}
		if weak, strong := listsETag(inm, t); weak && !strong {
			vs[i] = "W/" + t
			weakened = true
		}
	}
	return weakened
}

// listsETag reports whether an If-None-Match (its field lines) lists the
// opaque tag (quotes included) weak (W/"x") and strong ("x"). Entity-tags
// are read quote to quote (a comma may be part of one); anything else up
// to the next comma ("*", junk) is skipped.
func listsETag(inm []string, opaque string) (weak, strong bool) {
	for _, v := range inm {
		for i := 0; i < len(v); {
			if c := v[i]; c == ' ' || c == '\t' || c == ',' {
				i++
				continue
			}
			w := strings.HasPrefix(v[i:], "W/")
			if w {
				i += 2
			}
			if i >= len(v) || v[i] != '"' {
				j := strings.IndexByte(v[i:], ',')
				if j < 0 {
					break
				}
				i += j + 1
				continue
			}
			j := strings.IndexByte(v[i+1:], '"')
			if j < 0 {
				break
			}
			if v[i:i+j+2] == opaque {
				weak, strong = weak || w, strong || !w
			}
			i += j + 2
		}
	}
	return weak, strong
}
