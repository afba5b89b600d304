package proxy

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/keytrail/keytrail/policies"
)

// errResponseTooLarge is returned when an upstream response exceeds the cap.
var errResponseTooLarge = errors.New("upstream response exceeds the size limit")

// Errors of an upstream response whose body the scan could not see plain.
var (
	errEncodingUnsupported = errors.New("upstream response has a content encoding the broker does not decode")
	errUndecodable         = errors.New("upstream response body does not decode as its content encoding says")
	// errDataAfterStream: a Content-Encoding: deflate body goes on after
	// the end of its stream with something other than trailingPad bytes.
	errDataAfterStream = fmt.Errorf("%w: data other than whitespace or NUL bytes after the end of the deflate stream", errUndecodable)
	// errDataAfterMember: a Content-Encoding: gzip body goes on after
	// its last member with something other than trailingPad bytes.
	errDataAfterMember = fmt.Errorf("%w: data other than whitespace or NUL bytes after the last gzip member", errUndecodable)
)

// trailingPad are the bytes a Content-Encoding: gzip body may end with
// after its last member, and a deflate body (zlib or raw) after its
// stream: whitespace (a trailing newline, CRLF) and NUL (zero padding to a
// block), which browsers, curl and gzip -d ("trailing garbage ignored",
// "trailing zeros ignored") skip. They carry nothing: the body decodes to
// its members' or its stream's content.
var trailingPad = [256]bool{' ': true, '\t': true, '\r': true, '\n': true, 0: true}

// contentCoding is how an upstream response body is encoded.
type contentCoding uint8

const (
	codingIdentity    contentCoding = iota // no coding (or only "identity")
	codingGzip                             // gzip or x-gzip
	codingDeflate                          // deflate: zlib (RFC 1950), or raw deflate as some servers send it
	codingUnsupported                      // anything else: br, zstd, compress, an unknown token, stacked codings
)

// responseCoding reads the Content-Encoding of an upstream response: every
// value and every comma-separated token, ignoring empty ones and
// "identity". One gzip, x-gzip or deflate token is a coding the broker
// decodes; any other token, or more than one coding, is unsupported. It
// allocates nothing.
func responseCoding(h http.Header) contentCoding {
	coding := codingIdentity
	for _, v := range h["Content-Encoding"] {
		for tok := range strings.SplitSeq(v, ",") {
			tok = strings.Trim(tok, " \t")
			switch {
			case tok == "" || strings.EqualFold(tok, "identity"):
				continue
			case coding != codingIdentity:
				return codingUnsupported
			case strings.EqualFold(tok, "gzip"), strings.EqualFold(tok, "x-gzip"):
				coding = codingGzip
			case strings.EqualFold(tok, "deflate"):
				coding = codingDeflate
			default:
				return codingUnsupported
			}
		}
	}
	return coding
}

// dropDigests deletes the integrity fields of a body the broker does not
// relay as it came (decoded, or with the secret masked), which do not
// describe the body relayed: Content-Digest (RFC 9530, over the content as
// sent), Repr-Digest (over the representation, its content coding
// included), Digest (RFC 3230's instance digest, after the content coding)
// and Content-MD5 (RFC 1864, of the body as sent).
func dropDigests(h http.Header) {
	delete(h, "Content-Digest")
	delete(h, "Repr-Digest")
	delete(h, "Digest")
	delete(h, "Content-Md5")
}

// decoder decodes a gzip or deflate body read through wire (which caps the
// bytes taken from the upstream: a stream of empty gzip members or deflate
// blocks decodes to nothing however long it is). What it yields is capped
// by the capReader above it, so a decompression bomb is cut at the
// response cap of decoded bytes; the decompressors' own memory is fixed
// (a 32 KiB window). bad records that the body failed to decode (as
// opposed to the upstream read failing or the cap), for the use_result
// event.
type decoder struct {
	wire    *capReader
	dec     io.Reader // nil: the body was empty
	wireErr error     // the last error wire returned
	bad     bool
	// trailingOK lets a deflate stream or a gzip member end before wire
	// does, Read returning io.EOF there (the gzip guard looks at what
	// follows itself); otherwise what follows is looked at (see
	// afterEnd): another gzip member, decoded on, or trailingPad bytes to
	// the end of the body, else errDataAfterMember or errDataAfterStream.
	trailingOK bool
	// ended: the last Read decoded the end of a gzip member or of the
	// deflate stream; the next one looks at what follows (afterEnd).
	ended bool
	// endErr is what ended the body after a member or the stream
	// (afterEnd's error, io.EOF included): every Read after returns it.
	endErr error

	// The decompressor in use (at most one), and where it returns on
	// Close.
	pools    *decoderPools
	gz       *gzip.Reader
	zl       io.ReadCloser // zlib's, a zlib.Resetter
	fl       io.ReadCloser // flate's, a flate.Resetter
	br       *bufio.Reader // what the decompressor reads (wire, buffered)
	released bool          // closed: the decompressor went back to its pool
}

// decoderPools keep the decompressors of compressed responses (each holds a
// 32 KiB window and its Huffman tables, some 40 KB) for the next one, reset
// to its new source, rather than allocating them per response.
type decoderPools struct {
	gzip, zlib, flate, bufio sync.Pool
}

// wireSource is what the decompressor reads: wire, recording its errors.
type wireSource struct{ d *decoder }

func (s wireSource) Read(p []byte) (int, error) {
	n, err := s.d.wire.Read(p)
	if err != nil {
		s.d.wireErr = err
	}
	return n, err
}

// newDecoder reads the coding's header from wire. An empty body decodes to
// an empty one; a header that is not the coding's is errUndecodable; an
// error reading wire (a timeout, the cap) is returned as it is. The
// decompressor comes from pools and goes back there on Close (or at once,
// when newDecoder fails).
func newDecoder(wire *capReader, coding contentCoding, pools *decoderPools) (*decoder, error) {
	d := &decoder{wire: wire, pools: pools}
	src := wireSource{d}
	fail := func(err error) (*decoder, error) {
		d.release()
		switch {
		case d.wireErr != nil && d.wireErr != io.EOF:
			return nil, d.wireErr
		case err == io.EOF && d.wireErr == io.EOF && wire.n == 0:
			return d, nil // empty body
		}
		return nil, fmt.Errorf("%w: %v", errUndecodable, err)
	}
	if coding != codingGzip && coding != codingDeflate {
		return nil, errEncodingUnsupported
	}
	// The decompressors read through a bufio.Reader of their own (an
	// io.ByteReader), or each Reset would allocate one.
	if d.br, _ = pools.bufio.Get().(*bufio.Reader); d.br == nil {
		d.br = bufio.NewReaderSize(src, 512)
	} else {
		d.br.Reset(src)
	}
	switch coding {
	case codingGzip:
		if d.gz, _ = pools.gzip.Get().(*gzip.Reader); d.gz == nil {
			d.gz = new(gzip.Reader)
		}
		if err := d.gz.Reset(d.br); err != nil {
			return fail(err)
		}
		// One member at a time: Read looks at what follows each
		// (afterEnd), which Go's multi-member reader would take for
		// a bad header when it is a trailing newline or zero padding.
		d.gz.Multistream(false)
		d.dec = d.gz
	case codingDeflate:
		// RFC 9110 deflate is zlib; some servers (old IIS) send raw
		// deflate, which browsers accept too. A zlib header is told by
		// its method (8) and check bits.
		h, err := d.br.Peek(2)
		if err != nil {
			return fail(err)
		}
		if h[0]&0x0f == 8 && (uint16(h[0])<<8|uint16(h[1]))%31 == 0 {
			if d.zl, _ = pools.zlib.Get().(io.ReadCloser); d.zl == nil {
				d.zl, err = zlib.NewReader(d.br)
			} else {
				err = d.zl.(zlib.Resetter).Reset(d.br, nil)
			}
			if err != nil {
				return fail(err)
			}
			d.dec = d.zl
		} else {
			if d.fl, _ = pools.flate.Get().(io.ReadCloser); d.fl == nil {
				d.fl = flate.NewReader(d.br)
			} else if err := d.fl.(flate.Resetter).Reset(d.br, nil); err != nil {
				return fail(err)
			}
			d.dec = d.fl
		}
	}
	return d, nil
}

// release hands the decompressor back to its pool; d must not be read
// afterwards.
func (d *decoder) release() {
	switch {
	case d.gz != nil:
		d.pools.gzip.Put(d.gz)
	case d.zl != nil:
		d.pools.zlib.Put(d.zl)
	case d.fl != nil:
		d.pools.flate.Put(d.fl)
	}
	if d.br != nil {
		d.br.Reset(nil) // the pooled readers keep no hold on this response
		d.pools.bufio.Put(d.br)
	}
	d.gz, d.zl, d.fl, d.br, d.dec = nil, nil, nil, nil, nil
}

func (d *decoder) Read(p []byte) (int, error) {
	if d.dec == nil {
		if d.released {
			return 0, io.ErrClosedPipe
		}
		return 0, io.EOF
	}
	if d.endErr != nil {
		return 0, d.endErr
	}
	for {
		if d.ended {
			d.ended = false
			if more, err := d.afterEnd(); !more {
				if err != io.EOF && (d.wireErr == nil || d.wireErr == io.EOF) {
					// Not the upstream's read error nor the cap: what
					// follows does not decode.
					d.bad = true
				}
				d.endErr = err
				return 0, err
			}
		}
		n, err := d.dec.Read(p)
		if err == io.EOF && !d.trailingOK {
			// The end of a gzip member or of the deflate stream: what
			// follows is looked at by the next Read (afterEnd), which
			// may wait on the upstream: the last decoded bytes go out
			// first.
			d.ended = true
			if n == 0 {
				continue
			}
			return n, nil
		}
		if err != nil && err != io.EOF && (d.wireErr == nil || d.wireErr == io.EOF) {
			// Not the upstream's read error nor the cap: the data (or
			// its end, a truncated stream) does not decode.
			d.bad = true
		}
		return n, err
	}
}

// afterEnd looks at what follows the end of a gzip member or of the
// deflate stream. After a gzip member, a member (what does not start with
// a trailingPad byte: Go's reader reads its header, and refuses one that
// is not a member's) is more to decode; after a zlib or raw deflate
// stream, the body must end (Go's readers, as others, stop at its end: data
// after it would be dropped unseen, which hides what the upstream sent),
// so such data is errDataAfterStream. trailingPad bytes to the end of the
// body are the end of it, io.EOF: they are read and dropped, through wire,
// so the response cap bounds them, a few bytes at a time and nothing kept;
// anything after them, a member or a stream too (which gzip -d would skip,
// Python's gzip refuse), is errDataAfterMember or errDataAfterStream. An
// error reading wire (the cap, a timeout) is returned as it is.
func (d *decoder) afterEnd() (more bool, err error) {
	dataAfter := errDataAfterStream
	if d.gz != nil {
		dataAfter = errDataAfterMember
	}
	b, err := d.br.Peek(1)
	if err != nil {
		return false, err // io.EOF: the body ends with the member or stream
	}
	if !trailingPad[b[0]] {
		if d.gz == nil {
			return false, dataAfter
		}
		if err := d.gz.Reset(d.br); err != nil {
			return false, err
		}
		d.gz.Multistream(false)
		return true, nil
	}
	for {
		if d.br.Buffered() == 0 {
			if _, err := d.br.Peek(1); err != nil {
				return false, err // io.EOF: only padding after the end
			}
		}
		b, _ := d.br.Peek(d.br.Buffered())
		for _, c := range b {
			if !trailingPad[c] {
				return false, dataAfter
			}
		}
		_, _ = d.br.Discard(len(b))
	}
}

func (d *decoder) Close() error {
	if d.dec != nil {
		_ = d.dec.(io.Closer).Close()
	}
	d.release()
	d.released = true
	return d.wire.Close()
}

// formSet recognises the injected secret in what an upstream sends back,
// under any mix, byte by byte, of the escapes encoders apply to text they
// echo. Each byte of the secret may appear raw or as
//
//   - a percent escape %HH, either hex case ("+" for a space): Go's
//     QueryEscape and PathEscape, Python's quote (which keeps "/"), JavaScript's
//     encodeURIComponent;
//   - a JSON or JavaScript string escape: \u00HH or \xHH (either hex case),
//     \/ \" \\ or \t;
//   - an HTML or XML character reference: &#DD; or &#xHH; (at most
//     maxRefDigits digits, leading zeros allowed, either case of x and hex)
//     or a named one (htmlNamedRefs: &amp; &quot; &sol; &equals; ...), as
//     html.EscapeString, Python's html.escape, PHP's htmlspecialchars,
//     Handlebars and OWASP's encoders write them.
//
// Escapes within escapes (%252F, \u0026amp;), base64 and compression are not
// recognised. Matching allocates nothing.
type formSet struct {
	secret string
	start  [256]bool // bytes an occurrence can begin with
	first  [5]byte   // the same bytes, f.first[:f.nfirst]
	nfirst int
	keep   int // the longest occurrence - 1: what a stream scan holds back at most
	// inject is the value of an injected header made from this secret
	// with the format it was last asked with (see injected).
	inject atomic.Pointer[injectedValue]
}

type injectedValue struct{ format, value string }

// injected returns format with policies.SecretPlaceholder replaced by the
// secret: the value of a grant's injected header, kept for the format last
// asked (a grant's is the same on every request).
func (f *formSet) injected(format string) string {
	if v := f.inject.Load(); v != nil && v.format == format {
		return v.value
	}
	v := &injectedValue{format: format, value: strings.ReplaceAll(format, policies.SecretPlaceholder, f.secret)}
	f.inject.Store(v)
	return v.value
}

// maxRefDigits bounds the digits of a numeric character reference.
const maxRefDigits = 6

// maxUnitLen is the longest escape of one byte ("&#x" + maxRefDigits + ";").
const maxUnitLen = 3 + maxRefDigits + 1

// htmlNamedRefs are the HTML5 named character references of ASCII
// characters, without "&" and ";".
var htmlNamedRefs = [128][]string{
	'\t': {"Tab"}, '!': {"excl"}, '"': {"quot", "QUOT"}, '#': {"num"}, '$': {"dollar"}, '%': {"percnt"},
	'&': {"amp", "AMP"}, '\'': {"apos"}, '(': {"lpar"}, ')': {"rpar"}, '*': {"ast", "midast"}, '+': {"plus"},
	',': {"comma"}, '.': {"period"}, '/': {"sol"}, ':': {"colon"}, ';': {"semi"}, '<': {"lt", "LT"},
	'=': {"equals"}, '>': {"gt", "GT"}, '?': {"quest"}, '@': {"commat"}, '[': {"lsqb", "lbrack"},
	'\\': {"bsol"}, ']': {"rsqb", "rbrack"}, '^': {"Hat"}, '_': {"lowbar"}, '`': {"grave"},
	'{': {"lcub", "lbrace"}, '|': {"verbar", "vert"}, '}': {"rcub", "rbrace"},
}

func newFormSet(secret string) *formSet {
	f := &formSet{secret: secret}
	if secret == "" {
		return f // matches nothing
	}
	starts := []byte{secret[0], '%', '\\', '&'}
	if secret[0] == ' ' {
		starts = append(starts, '+')
	}
	for _, c := range starts {
		if !f.start[c] {
			f.start[c] = true
			f.first[f.nfirst] = c
			f.nfirst++
		}
	}
	f.keep = maxUnitLen*len(secret) - 1
	return f
}

// containsAny reports whether s contains the secret in one of its forms.
func (f *formSet) containsAny(s string) bool {
	for i := 0; i < len(s); i++ {
		if f.start[s[i]] {
			if _, res := matchFrom(f, s, i, 0); res == fullMatch {
				return true
			}
		}
	}
	return false
}

// redact replaces every occurrence in s with '*' of the same length.
func (f *formSet) redact(s string) string {
	if !f.containsAny(s) {
		return s
	}
	b := []byte(s)
	f.mask(b, 0)
	return string(b)
}

// mask overwrites every occurrence in b starting at or after from with '*'
// and reports whether there was one. It visits only the bytes an
// occurrence can start with, found with bytes.IndexByte (next[k] is where
// f.first[k] is next, -1: nowhere).
func (f *formSet) mask(b []byte, from int) (masked bool) {
	var next [len(formSet{}.first)]int
	for k := range f.nfirst {
		next[k] = -2 // not looked for yet
	}
	for i := from; ; {
		at := -1
		for k, c := range f.first[:f.nfirst] {
			if next[k] != -1 && next[k] < i {
				next[k] = bytes.IndexByte(b[i:], c)
				if next[k] >= 0 {
					next[k] += i
				}
			}
			if next[k] >= 0 && (at < 0 || next[k] < at) {
				at = next[k]
			}
		}
		if at < 0 {
			return masked
		}
		end, res := matchFrom(f, b, at, 0)
		if res != fullMatch {
			i = at + 1
			continue
		}
		for k := at; k < end; k++ {
			b[k] = '*'
		}
		masked = true
		i = end
	}
}

// matchResult says whether text at a position is an occurrence.
type matchResult uint8

const (
	noMatch      matchResult = iota
	partialMatch             // the text ends inside what could be one
	fullMatch
)

// matchFrom matches the secret from its byte k on against b from j, and
// returns where the occurrence ends. Where a byte can be read two ways (a
// raw "&" that also starts "&amp;"), both are tried.
func matchFrom[T ~string | ~[]byte](f *formSet, b T, j, k int) (int, matchResult) {
	for ; k < len(f.secret); k++ {
		if j >= len(b) {
			return j, partialMatch
		}
		c, x := f.secret[k], b[j]
		if x != '%' && x != '\\' && x != '&' && x != '+' { // no escape starts here
			if x != c {
				return j, noMatch
			}
			j++
			continue
		}
		n, alt, cut := unitAt(b, j, c)
		if alt > 0 {
			switch end, res := matchFrom(f, b, j+alt, k+1); res {
			case fullMatch:
				return end, res
			case partialMatch:
				cut = true
			}
		}
		if n == 0 {
			if cut {
				return j, partialMatch
			}
			return j, noMatch
		}
		if cut {
			if end, res := matchFrom(f, b, j+n, k+1); res != noMatch {
				return end, res
			}
			return j, partialMatch
		}
		j += n
	}
	return j, fullMatch
}

// unitAt returns the lengths of the forms of byte c that start at b[j]: n
// the first (0: none), alt a second one (an escape starting with a raw c,
// 0: none); cut is true when b ends inside a form that could still be c.
func unitAt[T ~string | ~[]byte](b T, j int, c byte) (n, alt int, cut bool) {
	x := b[j]
	if x == c || (c == ' ' && x == '+') {
		n = 1
	}
	esc := 0
	switch x {
	case '%':
		esc, cut = hexValueAt(b, j+1, 2, c)
		if esc > 0 {
			esc++
		}
	case '\\':
		if j+1 >= len(b) {
			cut = true
			break
		}
		switch y := b[j+1]; {
		case y == 'u':
			if esc, cut = hexValueAt(b, j+2, 4, c); esc > 0 {
				esc += 2
			}
		case y == 'x':
			if esc, cut = hexValueAt(b, j+2, 2, c); esc > 0 {
				esc += 2
			}
		case y == c && (c == '/' || c == '"' || c == '\\'), y == 't' && c == '\t':
			esc = 2
		}
	case '&':
		esc, cut = refAt(b, j, c)
	}
	if esc > 0 {
		if n == 0 {
			n = esc
		} else {
			alt = esc
		}
	}
	return n, alt, cut
}

// hexValueAt reads exactly digits hex digits at b[j:] and returns digits
// when their value is c; cut is true when b ends before them.
func hexValueAt[T ~string | ~[]byte](b T, j, digits int, c byte) (n int, cut bool) {
	v := 0
	for i := j; i < j+digits; i++ {
		if i >= len(b) {
			return 0, true
		}
		if !isHex(b[i]) {
			return 0, false
		}
		v = v<<4 | int(unhex(b[i]))
	}
	if v != int(c) {
		return 0, false
	}
	return digits, false
}

// refAt matches an HTML character reference of c at b[j] ("&"): numeric
// (&#DD; &#xHH;) or named. It returns its length.
func refAt[T ~string | ~[]byte](b T, j int, c byte) (n int, cut bool) {
	i := j + 1
	if i >= len(b) {
		return 0, true
	}
	if b[i] != '#' {
		if c >= 128 {
			return 0, false
		}
		for _, name := range htmlNamedRefs[c] {
			k := 0
			for ; k < len(name) && i+k < len(b) && b[i+k] == name[k]; k++ {
			}
			switch {
			case k < len(name) && i+k >= len(b):
				cut = true
			case k == len(name) && i+k >= len(b):
				cut = true
			case k == len(name) && b[i+k] == ';':
				return len(name) + 2, false
			}
		}
		return 0, cut
	}
	i++
	base := 10
	if i < len(b) && (b[i] == 'x' || b[i] == 'X') {
		base = 16
		i++
	}
	v, digits := 0, 0
	for ; i < len(b); i++ {
		d := b[i]
		switch {
		case base == 10 && '0' <= d && d <= '9', base == 16 && isHex(d):
			if digits++; digits > maxRefDigits {
				return 0, false
			}
			v = v*base + int(unhex(d))
			continue
		case d == ';' && digits > 0 && v == int(c):
			return i + 1 - j, false
		}
		return 0, false
	}
	return 0, true // b ends inside the reference
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
	forms *formSet
	keep  int
	pool  *sync.Pool // where buf came from and returns to on Close (may be nil)
	// bufp is the pointer buf came in from pool: it goes back in it, so
	// that handing buf back allocates nothing.
	bufp *[]byte
	// dirty is how far into buf's array bytes may have been written (see
	// Close, which clears that much before handing buf back).
	dirty int
	// altered, when set, is set once an occurrence was masked: the body
	// relayed is no longer the upstream's (see responseWriter.altered).
	altered *atomic.Bool
	// fill is how many bytes are gathered (and masked) before the first
	// are released (at most redactChunk/2, so buf does not grow), and
	// then as many more as decide whether an occurrence starts in them
	// (at most keep: while gathering, buf grows only when full): the
	// response's headers go out with them, and a secret masked in them
	// still strips the headers of their validators (see altered). A
	// failure of src while gathering releases none of them. 0: release
	// what comes as it comes (a streamed body).
	fill int

	buf   []byte // buf[off:ready] may be returned; buf[ready:] is held back
	off   int
	ready int
	// from is where in buf an occurrence may start that more bytes could
	// complete (the start of what partial found held back; no byte before
	// it starts one): mask and partial look again from there only, so
	// that reads of a byte or two (a Content-Encoding: gzip body of tiny
	// members decodes one per read) do not each look at the last keep
	// bytes again while the first fill bytes are gathered.
	from   int
	err    error // sticky error of src
	looked int64 // bytes mask and partial looked at (for tests)
}

const (
	redactChunk = 32 << 10
	redactSlack = 1 << 10
)

// newRedactBufferPool returns the pool of redactReader buffers.
func newRedactBufferPool() *sync.Pool {
	return &sync.Pool{New: func() any { b := make([]byte, 0, redactChunk+redactSlack); return &b }}
}

func newRedactReader(src io.ReadCloser, forms *formSet, pool *sync.Pool) *redactReader {
	r := new(redactReader)
	r.init(src, forms, pool)
	return r
}

// init sets up a zero redactReader as newRedactReader does (for one held in
// a call rather than allocated on its own).
func (r *redactReader) init(src io.ReadCloser, forms *formSet, pool *sync.Pool) {
	keep := forms.keep
	r.src, r.forms, r.keep = src, forms, keep
	if pool != nil {
		// A buffer holding back more than half a chunk grows in Read
		// (a secret of over ~1.6 KB) and is then not handed back.
		r.pool = pool
		r.bufp = pool.Get().(*[]byte)
		r.buf = (*r.bufp)[:0]
	} else {
		r.buf = make([]byte, 0, redactChunk+keep)
	}
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
			r.from -= r.off
			r.off = 0
		}
		if room := cap(r.buf) - len(r.buf); room == 0 || (room < redactChunk/2 && r.fill == 0) {
			nb := make([]byte, len(r.buf), 2*cap(r.buf))
			copy(nb, r.buf)
			r.buf = nb
		}
		old := len(r.buf)
		n, err := r.src.Read(r.buf[old:cap(r.buf)])
		r.buf = r.buf[:old+n]
		r.err = err
		if err != nil && err != io.EOF {
			// A failed read may have written more than it returned
			// (capReader at the cap does).
			r.dirty = cap(r.buf)
		}
		r.dirty = max(r.dirty, len(r.buf))
		if n > 0 {
			r.looked += int64(len(r.buf) - r.from)
		}
		if n > 0 && r.forms.mask(r.buf, r.from) && r.altered != nil {
			r.altered.Store(true)
		}
		if err != nil && err != io.EOF && r.fill > 0 {
			// Failed while gathering the first bytes: nothing was
			// released, nor the headers; the error is the first the copy
			// sees, and the caller gets the error answer, not a
			// connection cut with nothing on the wire (see call.forward).
			continue
		}
		held := 0
		if err != io.EOF { // at EOF nothing can complete a held-back prefix
			held = r.partial()
		}
		r.from = len(r.buf) - held
		if err == nil && (len(r.buf) < r.fill || len(r.buf)-held < r.fill) {
			// Gathering the first bytes, or the end of an occurrence
			// that may start in them (see fill).
			continue
		}
		r.fill = 0
		// On an error that cuts the stream (the response cap, a timeout,
		// a broken upstream) the held-back bytes may start the secret and
		// are never released.
		r.ready = max(r.ready, len(r.buf)-held)
	}
	n := copy(p, r.buf[r.off:r.ready])
	r.off += n
	return n, nil
}

// partial returns the length of the longest end of buf that could start an
// occurrence (at most keep bytes): what must be held back until more data
// shows whether it is one. A stream whose end starts none (a server-sent
// event, a line of a watch) is released at once. It looks from r.from
// on: no byte before it starts an occurrence.
func (r *redactReader) partial() int {
	i := max(r.from, len(r.buf)-r.keep)
	r.looked += int64(len(r.buf) - i)
	for ; i < len(r.buf); i++ {
		if r.forms.start[r.buf[i]] {
			if _, res := matchFrom(r.forms, r.buf, i, 0); res == partialMatch {
				return len(r.buf) - i
			}
		}
	}
	return 0
}

// Close closes the source and hands the buffer back, cleared, through the
// pointer it came in (no allocation); the reader must not be used
// afterwards. Only what was written is cleared (dirty): a read that succeeds
// writes what it returns (the sources here, gzipGuard, capReader, decoder
// and the response body, copy exactly that; io.Reader allows a read to use
// all of p as scratch, which none of them does), a read that fails may have
// written anything (capReader at the cap returns less than its source
// wrote), so it marks the whole buffer. A buffer grown in Read is not
// handed back (nor is the smaller one it replaced: neither is pooled).
// TestRedactBufferHandedBackCleared checks that no byte of the secret
// survives in a buffer handed back.
func (r *redactReader) Close() error {
	if r.pool != nil && cap(r.buf) == redactChunk+redactSlack {
		b := r.buf[:min(r.dirty, cap(r.buf))]
		clear(b)
		*r.bufp = b[:0]
		r.pool.Put(r.bufp)
	}
	r.buf, r.pool, r.bufp = nil, nil, nil
	r.off, r.ready, r.from, r.dirty = 0, 0, 0, 0
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
// the bytes of the upstream's body relayed (not of the broker's own error
// body: see own) for the use_result event.
//
// The status and headers go to the caller (send) with the body's first byte
// or a flush, not at WriteHeader: until then reset can still replace the
// response with an error answer (a body that fails at its first read, see
// call.forward).
//
// It relays no trailers. After the body, ReverseProxy copies the upstream's
// trailers (which the transport fills in when the body is closed, whatever
// ModifyResponse did) into Header(), and net/http sends as trailers whatever
// lands in the real header map after the status: so Header() never returns
// the real map. send moves the staged headers out and empties the staged
// map, which keeps collecting what is set afterwards, unsent (ReverseProxy
// flushes before it copies trailers after an empty body). The staged headers
// lose any Trailer announcement and http.TrailerPrefix keys.
type responseWriter struct {
	w      http.ResponseWriter
	staged http.Header
	status int
	sent   bool  // the status went to w: the response can no longer be replaced
	bytes  int64 // of the upstream's body
	own    bool  // the broker answers itself (ReverseProxy's ErrorHandler): bytes does not count
	// altered is set (by the redactReader, while the body is read, which
	// a flush on ReverseProxy's timer can race) once the body relayed is
	// not the upstream's bytes (the secret was masked): the headers, if
	// not sent yet, lose their strong ETags and digests (see send).
	altered atomic.Bool
	// dropEarlyFlush drops the first flush (a seam for tests: ReverseProxy's
	// early header flush of a streamed response, which runs on a timer,
	// losing the race to a refusal at the body's first read).
	dropEarlyFlush bool
}

// init sets up a zero responseWriter (the one a call holds). The staged
// map is made when it is first asked for (Header): a proxied response's
// are the upstream's own map (adopt).
func (rw *responseWriter) init(w http.ResponseWriter) {
	rw.w = w
}

// Header returns the staged headers; once the status is sent, a map that is
// never sent (see responseWriter).
func (rw *responseWriter) Header() http.Header {
	if rw.staged == nil {
		rw.staged = http.Header{}
	}
	return rw.staged
}

// adopt stages the headers of the upstream's response res, as
// ModifyResponse leaves them (checked, hop-by-hop headers removed), by
// taking res.Header's map itself, and leaves res.Header empty for
// ReverseProxy's copy of it into Header() (copyHeader: Header.Add for
// every value, each a canonicalisation and a new slice) that follows
// ModifyResponse. The staged map and its values are the same as the copy
// would make them; the one other use ReverseProxy makes of res.Header after
// ModifyResponse is flushInterval, which flushes a response of known length
// at once when its Content-Type is text/event-stream: a Content-Type that
// may name it is left in res.Header for both, so that it is read and
// staged as before (TestAdoptLeavesWhatReverseProxyReads). It must be the
// last step of a ModifyResponse that succeeds: a refused response's
// headers must not be staged.
func (rw *responseWriter) adopt(res *http.Response) {
	if len(rw.staged) != 0 {
		// Nothing is staged before ModifyResponse (a 1xx's copy is
		// cleared): should something be, ReverseProxy copies as it does.
		return
	}
	h := res.Header
	res.Header = rw.staged // nil or empty
	if ct := h["Content-Type"]; len(ct) > 0 && res.ContentLength != -1 && mayNameEventStream(ct[0]) {
		if res.Header == nil {
			res.Header = http.Header{}
		}
		res.Header["Content-Type"] = ct
		delete(h, "Content-Type")
	}
	rw.staged = h
}

// mayNameEventStream reports whether a Content-Type value may have the
// media type text/event-stream for mime.ParseMediaType (which lower-cases
// the part before ';'): whether it holds "event-stream" in any case. No
// letter of it is the lower case of a non-ASCII character, so a value
// without it cannot have that media type; it may report true for a value
// that has another (which is then read as before).
func mayNameEventStream(v string) bool {
	const name = "event-stream"
	for i := 0; i+len(name) <= len(v); i++ {
		if strings.EqualFold(v[i:i+len(name)], name) {
			return true
		}
	}
	return false
}

func (rw *responseWriter) WriteHeader(code int) {
	if rw.status != 0 || code < 200 {
		return
	}
	rw.status = code
}

// send hands the status and the staged headers to the caller's writer.
func (rw *responseWriter) send() {
	if rw.sent {
		return
	}
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	if rw.altered.Load() {
		// The upstream's validators and digests name bytes the caller
		// does not get.
		weakenETags(rw.staged)
		dropDigests(rw.staged)
	}
	h := rw.w.Header()
	for k, v := range rw.staged {
		if isTrailerKey(k) {
			continue
		}
		h[k] = v
	}
	clear(rw.staged)
	rw.sent = true
	rw.w.WriteHeader(rw.status)
}

// reset drops the status and headers written but not sent, and reports
// whether it could (nothing was sent).
func (rw *responseWriter) reset() bool {
	if rw.sent {
		return false
	}
	clear(rw.staged)
	rw.status = 0
	return true
}

// isTrailerKey reports whether a header map key would make net/http announce
// or send a trailer: "Trailer" itself, or a name with http.TrailerPrefix.
func isTrailerKey(k string) bool {
	n := len(http.TrailerPrefix)
	return strings.EqualFold(k, "Trailer") || (len(k) >= n && strings.EqualFold(k[:n], http.TrailerPrefix))
}

func (rw *responseWriter) Write(b []byte) (int, error) {
	rw.send()
	n, err := rw.w.Write(b)
	if !rw.own {
		rw.bytes += int64(n)
	}
	return n, err
}

func (rw *responseWriter) Flush() {
	if rw.dropEarlyFlush {
		rw.dropEarlyFlush = false
		return
	}
	rw.flush()
}

// flush sends the status and headers, and what was written, to the caller.
func (rw *responseWriter) flush() {
	rw.send()
	_ = http.NewResponseController(rw.w).Flush()
}

// bufferPool is the ReverseProxy copy-buffer pool. sync.Pool holds
// pointers: a slice put in as it is would be boxed, an allocation per Put.
// The pointer a Get empties is kept in holders for the next Put, so that
// neither allocates once the pools are warm
// (TestCopyBufferHandedBackWithoutAllocating).
type bufferPool struct{ p, holders sync.Pool }

func newBufferPool() *bufferPool {
	return &bufferPool{p: sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}}
}

func (b *bufferPool) Get() []byte {
	h := b.p.Get().(*[]byte)
	buf := *h
	*h = nil // the holder does not keep the buffer alive
	b.holders.Put(h)
	return buf
}

func (b *bufferPool) Put(buf []byte) {
	if cap(buf) != 32<<10 {
		return
	}
	h, _ := b.holders.Get().(*[]byte)
	if h == nil {
		h = new([]byte)
	}
	*h = buf
	b.p.Put(h)
}
