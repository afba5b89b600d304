package proxy

import (
	"bytes"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"fmt"
	"html"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/keytrail/keytrail/policies"
)

// TestFormsCacheBounded: references dropped by policy reloads do not keep
// their secrets' forms forever; the cache is emptied past its bound, and a
// rotated secret replaces its entry rather than adding one.
func TestFormsCacheBounded(t *testing.T) {
	var c formsCache
	ref := policies.ProxySecret{VaultKV: "secret/a", Field: "key"}
	for i := range 10 {
		if f := c.get(ref, fmt.Sprint("sk_", i)); f == nil {
			t.Fatal("get() = nil")
		}
	}
	if n := c.len(); n != 1 {
		t.Errorf("entries after 10 rotations of one secret = %d, want 1", n)
	}
	for i := range 3 * maxFormsEntries {
		c.get(policies.ProxySecret{VaultKV: fmt.Sprint("secret/ref-", i), Field: "key"}, "sk_x")
	}
	if n := c.len(); n > maxFormsEntries {
		t.Errorf("entries after %d references = %d, want at most %d", 3*maxFormsEntries, n, maxFormsEntries)
	}
	f1 := c.get(ref, "sk_y")
	if f2 := c.get(ref, "sk_y"); f1 != f2 {
		t.Error("get() of the same secret twice built its forms twice")
	}
}

// TestHTMLNamedRefs: every named reference the scan knows stands for its
// character.
func TestHTMLNamedRefs(t *testing.T) {
	for c, names := range htmlNamedRefs {
		for _, name := range names {
			if got := html.UnescapeString("&" + name + ";"); got != string(rune(c)) {
				t.Errorf("&%s; = %q, want %q", name, got, string(rune(c)))
			}
		}
	}
}

// TestDecoderPoolReuse: decompressors handed back to the pools (after a
// whole body, a body closed half read, or a body that did not decode) decode
// the next body of any coding from its start, with nothing of the last one.
func TestDecoderPoolReuse(t *testing.T) {
	gz := func(s string) []byte {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		_, _ = zw.Write([]byte(s))
		_ = zw.Close()
		return b.Bytes()
	}
	zl := func(s string) []byte {
		var b bytes.Buffer
		zw := zlib.NewWriter(&b)
		_, _ = zw.Write([]byte(s))
		_ = zw.Close()
		return b.Bytes()
	}
	raw := func(s string) []byte {
		var b bytes.Buffer
		zw, _ := flate.NewWriter(&b, flate.BestSpeed)
		_, _ = zw.Write([]byte(s))
		_ = zw.Close()
		return b.Bytes()
	}
	long := strings.Repeat("0123456789abcdef", 4096) // 64 KiB: more than a window
	tests := []struct {
		name     string
		coding   contentCoding
		body     []byte
		readOnly int // read this many bytes, then close (0: all)
		want     string
		wantErr  bool // newDecoder or the read fails
	}{
		{name: "ok/gzip", coding: codingGzip, body: gz("first"), want: "first"},
		{name: "ok/gzip-half-read", coding: codingGzip, body: gz(long), readOnly: 1000, want: long[:1000]},
		{name: "ok/gzip-after-half-read", coding: codingGzip, body: gz("second"), want: "second"},
		{name: "fail/gzip-garbage", coding: codingGzip, body: []byte("\x1f\x8b not really gzip"), wantErr: true},
		{name: "ok/gzip-after-garbage", coding: codingGzip, body: gz(long), want: long},
		{name: "ok/gzip-empty", coding: codingGzip, want: ""},
		{name: "ok/zlib", coding: codingDeflate, body: zl(long), readOnly: 5000, want: long[:5000]},
		{name: "ok/zlib-again", coding: codingDeflate, body: zl("third"), want: "third"},
		{name: "ok/raw-deflate", coding: codingDeflate, body: raw(long), readOnly: 7, want: long[:7]},
		{name: "ok/raw-deflate-again", coding: codingDeflate, body: raw("fourth"), want: "fourth"},
		{name: "fail/zlib-truncated", coding: codingDeflate, body: zl(long)[:40], wantErr: true},
		{name: "ok/zlib-after-truncated", coding: codingDeflate, body: zl("fifth"), want: "fifth"},
		{name: "ok/gzip-last", coding: codingGzip, body: gz("sixth"), want: "sixth"},
	}
	var pools decoderPools
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			wire := &capReader{src: io.NopCloser(bytes.NewReader(tt.body)), limit: 1 << 20}
			d, err := newDecoder(wire, tt.coding, &pools)
			var got []byte
			if err == nil {
				if tt.readOnly > 0 {
					got = make([]byte, tt.readOnly)
					_, err = io.ReadFull(d, got)
				} else {
					got, err = io.ReadAll(d)
				}
				_ = d.Close()
				if n, rerr := d.Read(make([]byte, 1)); n != 0 || rerr == nil || rerr == io.EOF {
					t.Errorf("Read after Close = %d, %v; want an error other than io.EOF", n, rerr)
				}
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("decode = %v, want error %v", err, tt.wantErr)
			}
			if !tt.wantErr && string(got) != tt.want {
				t.Errorf("decoded %d bytes %.40q..., want %d bytes %.40q...", len(got), got, len(tt.want), tt.want)
			}
		})
	}
}

// TestDecoderGzipTrailingWhitespace: a Content-Encoding: gzip body whose
// last member is followed by whitespace (space, tab, CR, LF) and NUL bytes
// only decodes to its members' content and ends (io.EOF), read whole or a
// byte at a time; anything else after a member (after such bytes too) is
// errUndecodable and marks the body bad, except another member right
// after it, which is decoded on. The trailing bytes are read through wire:
// past its cap they are errResponseTooLarge, not a bad body. It used to be
// errUndecodable for any byte after the last member (Go's multi-member
// reader took it for a bad header).
func TestDecoderGzipTrailingWhitespace(t *testing.T) {
	gz := func(s string) string {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		_, _ = zw.Write([]byte(s))
		_ = zw.Close()
		return b.String()
	}
	const text = "decoded content\n"
	tests := []struct {
		name, body, want string
		limit            int64 // of wire (default 1 MiB)
		wantErr          error
	}{
		{name: "ok/newline", body: gz(text) + "\n", want: text},
		{name: "ok/crlf", body: gz(text) + "\r\n", want: text},
		{name: "ok/spaces-and-tabs", body: gz(text) + " \t \t", want: text},
		{name: "ok/nuls", body: gz(text) + strings.Repeat("\x00", 512), want: text},
		{name: "ok/nuls-and-whitespace", body: gz(text) + "\x00\n\x00 \r\n\x00\x00", want: text},
		{name: "ok/padding-a-long-way", body: gz(text) + strings.Repeat(" ", 100<<10), want: text},
		{name: "ok/two-members-then-a-newline", body: gz(text) + gz("second\n") + "\n", want: text + "second\n"},
		{name: "ok/empty-member-then-a-newline", body: gz("") + "\n", want: ""},
		{name: "fail/a-byte-after", body: gz(text) + "x", want: text, wantErr: errUndecodable},
		{name: "fail/a-byte-after-whitespace", body: gz(text) + "\r\n}", want: text, wantErr: errUndecodable},
		{name: "fail/a-form-feed-after", body: gz(text) + "\n\f", want: text, wantErr: errUndecodable},
		{name: "fail/a-byte-after-a-long-padding", body: gz(text) + strings.Repeat("\x00", 100<<10) + "x", want: text, wantErr: errUndecodable},
		{name: "fail/a-partial-header-after", body: gz(text) + "\x1f\x8b", want: text, wantErr: errUndecodable},
		{name: "fail/a-partial-header-after-a-newline", body: gz(text) + "\n\x1f\x8b\x08", want: text, wantErr: errUndecodable},
		{name: "fail/a-member-after-a-newline", body: gz(text) + "\n" + gz("second\n"), want: text, wantErr: errUndecodable},
		{name: "fail/a-member-after-zero-padding", body: gz(text) + "\x00\x00\x00\x00" + gz("second\n"), want: text, wantErr: errUndecodable},
		{name: "fail/padding-over-the-cap", body: gz(text) + strings.Repeat("\n", 4096), limit: 4096, want: text, wantErr: errResponseTooLarge},
	}
	var pools decoderPools
	for _, tt := range tests {
		for _, oneByte := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/one-byte-reads=%v", tt.name, oneByte), func(t *testing.T) {
				var src io.Reader = strings.NewReader(tt.body)
				if oneByte {
					src = iotest.OneByteReader(src)
				}
				limit := tt.limit
				if limit == 0 {
					limit = 1 << 20
				}
				wire := &capReader{src: io.NopCloser(src), limit: limit}
				d, err := newDecoder(wire, codingGzip, &pools)
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close()
				got, err := io.ReadAll(d)
				// The decoder's own errors are the decompressor's; bad
				// makes them errUndecodable (see call.bodyError).
				bad := errors.Is(tt.wantErr, errUndecodable)
				if string(got) != tt.want || (err == nil) != (tt.wantErr == nil) || (!bad && !errors.Is(err, tt.wantErr)) {
					t.Errorf("decoded %q, %v; want %q, %v", got, err, tt.want, tt.wantErr)
				}
				if d.bad != bad {
					t.Errorf("bad = %v, want %v (error %v)", d.bad, bad, err)
				}
				if n, err := d.Read(make([]byte, 8)); n != 0 || (err == nil) {
					t.Errorf("Read after the end = %d, %v; want 0 and an error", n, err)
				}
			})
		}
	}
}

// TestDecoderGzipTrailingWhitespaceHoldsNothing: the padding after the
// last member is read and dropped through the decoder's small buffer: a
// body padded with 1 MiB of spaces decodes with the allocations of one
// without padding (the memory does not grow with it; its bytes count
// towards the cap, see TestDecoderGzipTrailingWhitespace).
func TestDecoderGzipTrailingWhitespaceHoldsNothing(t *testing.T) {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	_, _ = zw.Write([]byte("decoded content\n"))
	_ = zw.Close()
	member := b.String()
	p := make([]byte, 4096)
	decode := func(body *strings.Reader) {
		// Pools of its own each time: the race detector drops some of
		// what goes back to a sync.Pool, which would make the counts
		// differ.
		var pools decoderPools
		wire := &capReader{src: io.NopCloser(body), limit: 2 << 20}
		d, err := newDecoder(wire, codingGzip, &pools)
		if err != nil {
			t.Fatal(err)
		}
		for err == nil {
			_, err = d.Read(p)
		}
		if err != io.EOF {
			t.Fatalf("decode: %v", err)
		}
		_ = d.Close()
	}
	allocs := func(body string) float64 {
		r := strings.NewReader(body)
		return testing.AllocsPerRun(20, func() { r.Reset(body); decode(r) })
	}
	if bare, padded := allocs(member), allocs(member+strings.Repeat(" ", 1<<20)); padded != bare {
		t.Errorf("allocations decoding a member with 1 MiB of padding = %v, without = %v; want the same", padded, bare)
	}
}

// TestDecoderDeflateTrailingWhitespace: a Content-Encoding: deflate body,
// zlib-wrapped or raw, whose stream is followed by whitespace (space, tab,
// CR, LF) and NUL bytes only decodes to the stream's content and ends
// (io.EOF), read whole or a byte at a time, as a gzip body after its last
// member does (TestDecoderGzipTrailingWhitespace); anything else after the
// stream (after such bytes too), a second stream included, is
// errUndecodable and marks the body bad. The trailing bytes are read
// through wire: past its cap they are errResponseTooLarge, not a bad body.
// It used to be errUndecodable for any byte after the stream.
func TestDecoderDeflateTrailingWhitespace(t *testing.T) {
	zl := func(s string) string {
		var b bytes.Buffer
		zw := zlib.NewWriter(&b)
		_, _ = zw.Write([]byte(s))
		_ = zw.Close()
		return b.String()
	}
	raw := func(s string) string {
		var b bytes.Buffer
		zw, _ := flate.NewWriter(&b, flate.DefaultCompression)
		_, _ = zw.Write([]byte(s))
		_ = zw.Close()
		return b.String()
	}
	const text = "decoded content\n"
	var pools decoderPools
	for _, enc := range []struct {
		name   string
		encode func(string) string
	}{{"zlib", zl}, {"raw", raw}} {
		e := enc.encode
		tests := []struct {
			name, body, want string
			limit            int64 // of wire (default 1 MiB)
			wantErr          error
		}{
			{name: "ok/nothing-after", body: e(text), want: text},
			{name: "ok/newline", body: e(text) + "\n", want: text},
			{name: "ok/crlf", body: e(text) + "\r\n", want: text},
			{name: "ok/spaces-and-tabs", body: e(text) + " \t \t", want: text},
			{name: "ok/nuls", body: e(text) + strings.Repeat("\x00", 512), want: text},
			{name: "ok/nuls-and-whitespace", body: e(text) + "\x00\n\x00 \r\n\x00\x00", want: text},
			{name: "ok/padding-a-long-way", body: e(text) + strings.Repeat(" ", 100<<10), want: text},
			{name: "ok/empty-stream-then-a-newline", body: e("") + "\n", want: ""},
			{name: "fail/a-byte-after", body: e(text) + "x", want: text, wantErr: errUndecodable},
			{name: "fail/a-byte-after-whitespace", body: e(text) + "\r\n}", want: text, wantErr: errUndecodable},
			{name: "fail/a-form-feed-after", body: e(text) + "\n\f", want: text, wantErr: errUndecodable},
			{name: "fail/a-byte-after-a-long-padding", body: e(text) + strings.Repeat("\x00", 100<<10) + "x", want: text, wantErr: errUndecodable},
			{name: "fail/a-second-stream-after", body: e(text) + e("second\n"), want: text, wantErr: errUndecodable},
			{name: "fail/a-second-stream-after-a-newline", body: e(text) + "\n" + e("second\n"), want: text, wantErr: errUndecodable},
			{name: "fail/a-gzip-member-after-zero-padding", body: e(text) + "\x00\x00\x1f\x8b\x08", want: text, wantErr: errUndecodable},
			{name: "fail/padding-over-the-cap", body: e(text) + strings.Repeat("\n", 4096), limit: 4096, want: text, wantErr: errResponseTooLarge},
		}
		for _, tt := range tests {
			for _, oneByte := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/one-byte-reads=%v", enc.name, tt.name, oneByte), func(t *testing.T) {
					var src io.Reader = strings.NewReader(tt.body)
					if oneByte {
						src = iotest.OneByteReader(src)
					}
					limit := tt.limit
					if limit == 0 {
						limit = 1 << 20
					}
					wire := &capReader{src: io.NopCloser(src), limit: limit}
					d, err := newDecoder(wire, codingDeflate, &pools)
					if err != nil {
						t.Fatal(err)
					}
					defer d.Close()
					if (d.zl != nil) != (enc.name == "zlib") {
						t.Fatalf("decoding %s as zlib: %v", enc.name, d.zl != nil)
					}
					got, err := io.ReadAll(d)
					bad := errors.Is(tt.wantErr, errUndecodable)
					if string(got) != tt.want || (err == nil) != (tt.wantErr == nil) || !errors.Is(err, tt.wantErr) {
						t.Errorf("decoded %q, %v; want %q, %v", got, err, tt.want, tt.wantErr)
					}
					if d.bad != bad {
						t.Errorf("bad = %v, want %v (error %v)", d.bad, bad, err)
					}
					if n, err := d.Read(make([]byte, 8)); n != 0 || (err == nil) {
						t.Errorf("Read after the end = %d, %v; want 0 and an error", n, err)
					}
				})
			}
		}
	}
}

// gateReader serves head, then (once a Read asks past it) tail, recording
// that it was asked: an upstream that sent head and would wait before
// sending more.
type gateReader struct {
	head, tail string
	past       bool
}

func (g *gateReader) Read(p []byte) (int, error) {
	if g.head != "" {
		n := copy(p, g.head)
		g.head = g.head[n:]
		return n, nil
	}
	g.past = true
	if g.tail == "" {
		return 0, io.EOF
	}
	n := copy(p, g.tail)
	g.tail = g.tail[n:]
	return n, nil
}

// TestDecoderHandsOutEndAtOnce: the decoder hands out the last decoded
// bytes of a gzip member or of a zlib or raw deflate stream without
// reading past its end first: what follows (another member, padding, the
// end of the body), which a slow upstream may send only later, is read
// by the next Read. It used to be read (waited for) before the member's
// last bytes were handed out.
func TestDecoderHandsOutEndAtOnce(t *testing.T) {
	gz := func(s string) string {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		_, _ = zw.Write([]byte(s))
		_ = zw.Close()
		return b.String()
	}
	zl := func(s string) string {
		var b bytes.Buffer
		zw := zlib.NewWriter(&b)
		_, _ = zw.Write([]byte(s))
		_ = zw.Close()
		return b.String()
	}
	raw := func(s string) string {
		var b bytes.Buffer
		zw, _ := flate.NewWriter(&b, flate.DefaultCompression)
		_, _ = zw.Write([]byte(s))
		_ = zw.Close()
		return b.String()
	}
	const first, second = "data: first\n\n", "data: second\n\n"
	tests := []struct {
		name       string
		coding     contentCoding
		head, tail string // head: the member or stream, sent first
		wantRest   string
		wantErr    error // after the rest: io.EOF, or errUndecodable (d.bad)
	}{
		{name: "gzip/then-a-member", coding: codingGzip, head: gz(first), tail: gz(second), wantRest: second, wantErr: io.EOF},
		{name: "gzip/then-a-newline", coding: codingGzip, head: gz(first), tail: "\n", wantErr: io.EOF},
		{name: "gzip/then-the-end", coding: codingGzip, head: gz(first), wantErr: io.EOF},
		{name: "gzip/then-text", coding: codingGzip, head: gz(first), tail: "text", wantErr: errUndecodable},
		{name: "gzip/second-member-then-the-end", coding: codingGzip, head: gz(first) + gz(second), wantRest: "", wantErr: io.EOF},
		{name: "zlib/then-a-newline", coding: codingDeflate, head: zl(first), tail: "\n", wantErr: io.EOF},
		{name: "zlib/then-the-end", coding: codingDeflate, head: zl(first), wantErr: io.EOF},
		{name: "zlib/then-text", coding: codingDeflate, head: zl(first), tail: "text", wantErr: errUndecodable},
		{name: "raw/then-nuls", coding: codingDeflate, head: raw(first), tail: "\x00\x00", wantErr: io.EOF},
	}
	var pools decoderPools
	for _, tt := range tests {
		for _, oneByte := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/one-byte-reads=%v", tt.name, oneByte), func(t *testing.T) {
				want := first
				if strings.HasPrefix(tt.name, "gzip/second-member") {
					want = first + second
				}
				src := &gateReader{head: tt.head, tail: tt.tail}
				var r io.Reader = src
				if oneByte {
					r = iotest.OneByteReader(r)
				}
				wire := &capReader{src: io.NopCloser(r), limit: 1 << 20}
				d, err := newDecoder(wire, tt.coding, &pools)
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close()
				got := make([]byte, len(want))
				if _, err := io.ReadFull(d, got); err != nil || string(got) != want {
					t.Fatalf("decoded %q, %v; want %q", got, err, want)
				}
				if src.past {
					t.Errorf("the decoder read past the end of the member or stream before handing out its last decoded bytes")
				}
				rest, err := io.ReadAll(d)
				if err == nil {
					err = io.EOF // ReadAll's nil
				}
				// The decoder's own errors are the decompressor's; bad
				// makes them errUndecodable (see call.bodyError).
				bad := errors.Is(tt.wantErr, errUndecodable)
				if string(rest) != tt.wantRest || (err == io.EOF) != (tt.wantErr == io.EOF) {
					t.Errorf("rest %q, %v; want %q, %v", rest, err, tt.wantRest, tt.wantErr)
				}
				if d.bad != bad {
					t.Errorf("bad = %v, want %v", d.bad, bad)
				}
			})
		}
	}
}

// TestSniffCodingZlibHeaders: the screen of a body without Content-Encoding
// takes for zlib exactly the two-byte headers Go's zlib reader opens
// without a preset dictionary, and for gzip only 1f 8b 08; the other
// magic numbers gzip -d decodes are unsupported.
func TestSniffCodingZlibHeaders(t *testing.T) {
	for a := range 256 {
		for b := range 256 {
			h := []byte{byte(a), byte(b)}
			_, err := zlib.NewReader(bytes.NewReader(append(h, 0, 0, 0, 0)))
			want := codingIdentity
			switch {
			case err == nil && a == 0x78:
				want = codingDeflate
			case a == 0x1f && (b == 0x9e || b == 0x9d || b == 0x1e || b == 0xa0):
				want = codingUnsupported // what gzip -d decodes too: refused
			}
			if got, more := sniffCoding(h); got != want || more && (a != 0x1f || b != 0x8b) {
				t.Errorf("sniffCoding(% x) = %v, more %v; want %v (zlib.NewReader: %v)", h, got, more, want, err)
			}
		}
	}
	if got, _ := sniffCoding(gzipMagic[:]); got != codingGzip {
		t.Errorf("sniffCoding(gzip magic) = %v, want gzip", got)
	}
	if got, more := sniffCoding([]byte{0x1f, 0x8b, 0x09}); got != codingIdentity || more {
		t.Errorf("sniffCoding(1f 8b 09) = %v, more %v; want identity, done", got, more)
	}
}

// TestGzipGuardStreamedHeaderSplitAcrossReads: a streamed body arriving a
// byte at a time is relayed a byte at a time while its first bytes could
// still start a header (1f, then 8b: each is returned before the next is
// read), and screened once they tell: a gzip or zlib stream is read whole,
// decoded with those bytes and scanned, its rest relayed unchanged when
// clean, refused when it carries the secret (nothing after the bytes
// already relayed); text is relayed as it comes.
func TestGzipGuardStreamedHeaderSplitAcrossReads(t *testing.T) {
	const secret = "sk_live_guarded"
	gz := func(s string) string {
		var b bytes.Buffer
		w := gzip.NewWriter(&b)
		_, _ = io.WriteString(w, s)
		_ = w.Close()
		return b.String()
	}
	zl := func(s string) string {
		var b bytes.Buffer
		w := zlib.NewWriter(&b)
		_, _ = io.WriteString(w, s)
		_ = w.Close()
		return b.String()
	}
	clean := strings.Repeat("nothing to see\n", 10)
	tests := []struct {
		name, body, want string
		wantErr          error
	}{
		{name: "ok/clean-gzip", body: gz(clean), want: gz(clean)},
		{name: "ok/clean-zlib", body: zl(clean), want: zl(clean)},
		{name: "ok/text-starting-1f-8b", body: "\x1f\x8b\x07 text", want: "\x1f\x8b\x07 text"},
		{name: "ok/text-starting-x", body: "xyz", want: "xyz"},
		{name: "fail/gzip-carrying-the-secret", body: gz(secret), want: "\x1f\x8b", wantErr: errSecretInBody},
		{name: "fail/zlib-carrying-the-secret", body: zl(secret), want: "x", wantErr: errSecretInBody},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := io.NopCloser(iotest.OneByteReader(strings.NewReader(tt.body)))
			g := &gzipGuard{src: src, forms: newFormSet(secret), pools: &decoderPools{}, limit: 1 << 20}
			var got []byte
			var err error
			p := make([]byte, 64)
			for {
				var n int
				n, err = g.Read(p)
				got = append(got, p[:n]...)
				if err != nil {
					break
				}
			}
			if string(got) != tt.want || (tt.wantErr == nil && err != io.EOF) || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Errorf("relayed %q, %v; want %q, %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}
