package proxy

import (
	"bytes"
	"encoding/json"
	"errors"
	"html"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/keytrail/keytrail/policies"
)

// errResponseTooLarge is returned when an upstream response exceeds the cap.
var errResponseTooLarge = errors.New("upstream response exceeds the size limit")

// secretForms returns the byte strings under which an injected secret can
// come back in a response: raw, URL-encoded (query and path escaping, upper
// and lower case hex), JSON-escaped (with and without HTML escaping, upper
// and lower case hex, with and without "\/") and HTML-escaped (an error
// page echoing a request header: &#34; or &quot;, &#39; or &#x27;),
// deduplicated. Other encodings (base64, compression) are not recognised.
func secretForms(secret string) [][]byte {
	cands := []string{secret, url.QueryEscape(secret), url.PathEscape(secret)}
	for _, c := range cands[1:3] {
		cands = append(cands, lowerHex(c))
	}
	for _, html := range []bool{true, false} {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(html)
		if enc.Encode(secret) == nil {
			j := strings.TrimSuffix(b.String(), "\n")
			j = j[1 : len(j)-1] // unquote
			cands = append(cands, j, strings.ReplaceAll(j, "/", `\/`))
			if up := jsonUpperHex.Replace(j); up != j {
				cands = append(cands, up, strings.ReplaceAll(up, "/", `\/`))
			}
		}
	}
	h := html.EscapeString(secret)
	cands = append(cands, h, htmlNamedQuotes.Replace(h))
	var out [][]byte
	seen := map[string]bool{}
	for _, c := range cands {
		if c != "" && !seen[c] {
			seen[c] = true
			out = append(out, []byte(c))
		}
	}
	return out
}

// jsonUpperHex writes the escapes Go's encoder writes with lower case hex
// letters (\u003c, \u003e) in upper case, as other encoders do.
var jsonUpperHex = strings.NewReplacer(`\u003c`, `\u003C`, `\u003e`, `\u003E`)

// htmlNamedQuotes turns html.EscapeString's numeric quote escapes into the
// other common spellings.
var htmlNamedQuotes = strings.NewReplacer("&#34;", "&quot;", "&#39;", "&#x27;")

// lowerHex lower-cases the hex digits of every percent escape.
func lowerHex(s string) string {
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1], b[i+2] = lowerASCII(b[i+1]), lowerASCII(b[i+2])
			i += 2
		}
	}
	return string(b)
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// formSet is a secret's forms as byte strings (for the body scan) and as
// strings (for headers and error texts), so neither converts per request.
type formSet struct {
	b [][]byte
	s []string
}

func newFormSet(secret string) *formSet {
	f := &formSet{b: secretForms(secret)}
	for _, b := range f.b {
		f.s = append(f.s, string(b))
	}
	return f
}

// containsAny reports whether s contains one of the forms.
func (f *formSet) containsAny(s string) bool {
	for _, form := range f.s {
		if strings.Contains(s, form) {
			return true
		}
	}
	return false
}

// redact replaces every form in s with '*' of the same length.
func (f *formSet) redact(s string) string {
	for _, form := range f.s {
		s = strings.ReplaceAll(s, form, strings.Repeat("*", len(form)))
	}
	return s
}

// formsCache keeps each secret reference's forms for the value it last had,
// so they are built once per secret rather than once per proxied request. A
// rotated secret replaces its entry. There is one entry per secret reference
// named since start-up or since the cache was last emptied: past
// maxFormsEntries it is emptied, so that references a policy reload dropped
// (and their secrets' values) do not stay in memory for good.
type formsCache struct {
	m sync.Map     // policies.ProxySecret → *formsEntry
	n atomic.Int64 // entries stored since the last emptying (an estimate under races)
}

// maxFormsEntries bounds the forms cache; a policy names far fewer secrets.
const maxFormsEntries = 1024

type formsEntry struct {
	secret string
	forms  *formSet
}

func (c *formsCache) get(ref policies.ProxySecret, secret string) *formSet {
	if v, ok := c.m.Load(ref); ok {
		if e := v.(*formsEntry); e.secret == secret {
			return e.forms
		}
	}
	f := newFormSet(secret)
	if _, replaced := c.m.Swap(ref, &formsEntry{secret: secret, forms: f}); !replaced && c.n.Add(1) > maxFormsEntries {
		c.m.Clear()
		c.n.Store(0)
	}
	return f
}

// len counts the entries (for tests).
func (c *formsCache) len() int {
	n := 0
	c.m.Range(func(any, any) bool { n++; return true })
	return n
}

// redactReader overwrites every occurrence of the secret forms in a stream
// with '*' of the same length, so a Content-Length stays right. It holds back
// the end of what it has read that could start an occurrence (at most the
// longest form - 1 bytes) until more data (or the end, io.EOF) shows whether
// it does; a stream that fails otherwise never releases it.
type redactReader struct {
	src   io.ReadCloser
	forms [][]byte
	keep  int
	pool  *sync.Pool // where buf came from and returns to on Close (may be nil)

	buf   []byte // buf[off:ready] may be returned; buf[ready:] is held back
	off   int
	ready int
	err   error // sticky error of src
}

const (
	redactChunk = 32 << 10
	redactSlack = 1 << 10 // pooled buffers hold forms up to this long
)

// newRedactBufferPool returns the pool of redactReader buffers.
func newRedactBufferPool() *sync.Pool {
	return &sync.Pool{New: func() any { b := make([]byte, 0, redactChunk+redactSlack); return &b }}
}

func newRedactReader(src io.ReadCloser, forms [][]byte, pool *sync.Pool) *redactReader {
	keep := 0
	for _, f := range forms {
		keep = max(keep, len(f)-1)
	}
	r := &redactReader{src: src, forms: forms, keep: keep}
	if pool != nil && keep <= redactSlack {
		r.pool = pool
		r.buf = (*pool.Get().(*[]byte))[:0]
	} else {
		r.buf = make([]byte, 0, redactChunk+keep)
	}
	return r
}

func (r *redactReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for r.off == r.ready {
		if r.err != nil {
			return 0, r.err
		}
		if r.off > 0 { // compact
			n := copy(r.buf[:cap(r.buf)], r.buf[r.off:])
			r.buf = r.buf[:n]
			r.ready -= r.off
			r.off = 0
		}
		if cap(r.buf)-len(r.buf) < redactChunk/2 {
			nb := make([]byte, len(r.buf), 2*cap(r.buf))
			copy(nb, r.buf)
			r.buf = nb
		}
		old := len(r.buf)
		n, err := r.src.Read(r.buf[old:cap(r.buf)])
		r.buf = r.buf[:old+n]
		r.err = err
		if n > 0 {
			r.mask(max(0, old-r.keep))
		}
		if err == io.EOF {
			r.ready = len(r.buf) // nothing can complete a held-back prefix now
		} else {
			// nil, or an error that cuts the stream (the response cap, a
			// timeout, a broken upstream): the held-back bytes may start
			// the secret and are never released.
			r.ready = max(r.ready, len(r.buf)-r.partial())
		}
	}
	n := copy(p, r.buf[r.off:r.ready])
	r.off += n
	return n, nil
}

// partial returns the length of the longest end of buf that is the start of
// a form (at most keep bytes): what must be held back until more data shows
// whether it completes one. A stream whose end starts no form (a server-sent
// event, a line of a watch) is released at once.
func (r *redactReader) partial() int {
	tail := r.buf[max(0, len(r.buf)-r.keep):]
	for i := range tail {
		for _, f := range r.forms {
			if tail[i] == f[0] && len(tail)-i < len(f) && bytes.HasPrefix(f, tail[i:]) {
				return len(tail) - i
			}
		}
	}
	return 0
}

// mask overwrites every occurrence starting at or after from.
func (r *redactReader) mask(from int) {
	for _, f := range r.forms {
		for i := from; i <= len(r.buf)-len(f); {
			j := bytes.Index(r.buf[i:], f)
			if j < 0 {
				break
			}
			start := i + j
			for k := start; k < start+len(f); k++ {
				r.buf[k] = '*'
			}
			i = start + len(f)
		}
	}
}

// Close closes the source and hands the buffer back; the reader must not be
// used afterwards.
func (r *redactReader) Close() error {
	if r.pool != nil && r.buf != nil {
		b := r.buf[:0]
		clear(b[:cap(b)])
		r.pool.Put(&b)
	}
	r.buf, r.pool = nil, nil
	r.off, r.ready = 0, 0
	if r.err == nil {
		r.err = io.ErrClosedPipe
	}
	return r.src.Close()
}

// capReader fails once more than limit bytes have been read.
type capReader struct {
	src   io.ReadCloser
	n     int64
	limit int64
	hit   bool
}

func (c *capReader) Read(p []byte) (int, error) {
	if c.hit {
		return 0, errResponseTooLarge
	}
	n, err := c.src.Read(p)
	c.n += int64(n)
	if c.n > c.limit {
		c.hit = true
		n -= int(c.n - c.limit)
		c.n = c.limit
		return n, errResponseTooLarge
	}
	return n, err
}

func (c *capReader) Close() error { return c.src.Close() }

// responseWriter sits between ReverseProxy and the caller. Headers are staged
// and reach the caller only with a final (>= 200) status, so 1xx interim
// responses (whose headers ReverseProxy copies and then clears) are never
// relayed and cannot wipe the broker's own headers. It records the status and
// bytes for the use_result event.
//
// It relays no trailers. After the body, ReverseProxy copies the upstream's
// trailers (which the transport fills in when the body is closed, whatever
// ModifyResponse did) into Header(), and net/http sends as trailers whatever
// lands in the real header map after the status: so Header() never returns
// the real map. WriteHeader moves the staged headers out and empties the
// staged map, which keeps collecting what is set afterwards, unsent. The
// staged headers lose any Trailer announcement and http.TrailerPrefix keys.
type responseWriter struct {
	w      http.ResponseWriter
	staged http.Header
	status int
	bytes  int64
}

func newResponseWriter(w http.ResponseWriter) *responseWriter {
	return &responseWriter{w: w, staged: http.Header{}}
}

// Header returns the staged headers; once the status is written, a map that
// is never sent (see responseWriter).
func (rw *responseWriter) Header() http.Header { return rw.staged }

func (rw *responseWriter) WriteHeader(code int) {
	if rw.status != 0 || code < 200 {
		return
	}
	h := rw.w.Header()
	for k, v := range rw.staged {
		if isTrailerKey(k) {
			continue
		}
		h[k] = v
	}
	clear(rw.staged)
	rw.status = code
	rw.w.WriteHeader(code)
}

// isTrailerKey reports whether a header map key would make net/http announce
// or send a trailer: "Trailer" itself, or a name with http.TrailerPrefix.
func isTrailerKey(k string) bool {
	n := len(http.TrailerPrefix)
	return strings.EqualFold(k, "Trailer") || (len(k) >= n && strings.EqualFold(k[:n], http.TrailerPrefix))
}

func (rw *responseWriter) Write(b []byte) (int, error) {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	n, err := rw.w.Write(b)
	rw.bytes += int64(n)
	return n, err
}

func (rw *responseWriter) Flush() {
	if rw.status == 0 {
		rw.WriteHeader(http.StatusOK)
	}
	_ = http.NewResponseController(rw.w).Flush()
}

// bufferPool is the ReverseProxy copy-buffer pool.
type bufferPool struct{ p sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (b *bufferPool) Get() []byte { return *(b.p.Get().(*[]byte)) }

func (b *bufferPool) Put(buf []byte) {
	if cap(buf) == 32<<10 {
		b.p.Put(&buf)
	}
}
