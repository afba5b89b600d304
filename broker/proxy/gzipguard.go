package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// errSecretInBody is returned for a response body the broker cannot relay
// redacted: compressed data (gzip or zlib, without Content-Encoding) that
// decodes to text carrying the injected secret.
var errSecretInBody = errors.New("upstream response body is compressed data (without Content-Encoding) carrying the injected secret")

// errNestedCoding is returned for compressed data whose decoded bytes are
// compressed data again: the scan decodes one layer.
var errNestedCoding = fmt.Errorf("%w: compressed data inside compressed data", errEncodingUnsupported)

// errTrailingData is returned for a zlib body whose stream is followed by
// data starting with a gzip or zlib header (or with what could start one),
// and for a gzip body whose last member is followed by a zlib header, by
// what could start a header, or by anything starting 1f (GNU gzip -d reads
// on into gzip's old magic 1f 9e, compress's 1f 9d, pack's 1f 1e, LZH's
// 1f a0), which a decoder that reads on would open as a second stream,
// unscanned. Other data after the stream is relayed (and
// scanned as plain bytes); a gzip member after a gzip member is decoded.
var errTrailingData = fmt.Errorf("%w: a compressed stream after the end of the compressed stream", errUndecodable)

// gzipMagic starts every gzip member (RFC 1952: ID1, ID2, CM deflate).
var gzipMagic = [3]byte{0x1f, 0x8b, 0x08}

// gzipDecodesToo are the second bytes, after 1f, of the other magic
// numbers GNU gzip -d decodes: gzip's old magic 1f 9e (a gzip member),
// compress (1f 9d), pack (1f 1e), LZH (1f a0).
var gzipDecodesToo = [256]bool{0x9e: true, 0x9d: true, 0x1e: true, 0xa0: true}

// errGzipDecodesToo is returned for a body that starts with one of them:
// the scan does not decode it, and gzip -d at the caller would.
var errGzipDecodesToo = fmt.Errorf("%w: gzip's old magic, compress, pack or LZH data (gzip -d decodes them)", errEncodingUnsupported)

// sniffCoding tells from the first bytes of a body whether it is
// compressed data the scan must decode: gzip (a member's ID1 ID2 CM,
// 1f 8b 08) or zlib (an RFC 1950 header with CMF 78 — deflate, the 32 KiB
// window — the FCHECK bits right and FDICT clear: 78 01, 78 5e, 78 9c,
// 78 da, what zlib's default, Go's compress/zlib, Python's zlib.compress,
// Java's Deflater and PHP's gzcompress write). more is true while b is too
// short to tell and could still start one. Headers of smaller windows (CMF
// 08 to 68) are not taken for zlib: no common producer writes them, and
// text starts with them ("HK", "XG", "hC", "8O", "(S"), which would be
// refused as not decoding. Nor is a header with a preset dictionary: the
// dictionary is not known, so it could not be decoded, and text starts
// with such headers ("x ", "x?"). The other magic numbers GNU gzip -d
// decodes (gzipDecodesToo: 1f 9e, 1f 9d, 1f 1e, 1f a0) are
// codingUnsupported: not decoded, refused (text does not start with 1f).
func sniffCoding(b []byte) (coding contentCoding, more bool) {
	switch {
	case len(b) == 0:
		return codingIdentity, true
	case b[0] == gzipMagic[0]:
		if len(b) >= 2 && gzipDecodesToo[b[1]] {
			return codingUnsupported, false
		}
		n := min(len(b), len(gzipMagic))
		switch {
		case !bytes.Equal(b[:n], gzipMagic[:n]):
			return codingIdentity, false
		case n < len(gzipMagic):
			return codingIdentity, true
		}
		return codingGzip, false
	case b[0] == 0x78:
		if len(b) < 2 {
			return codingIdentity, true
		}
		if (uint16(b[0])<<8|uint16(b[1]))%31 == 0 && b[1]&0x20 == 0 {
			return codingDeflate, false // zlib: newDecoder tells it by the same header
		}
	}
	return codingIdentity, false
}

// gzipGuard screens a body that is compressed data although the response
// does not say so (no Content-Encoding: a .gz download, an endpoint echoing
// compressed bytes as application/octet-stream, a zlib.compress'd blob),
// which the response scan would see only compressed. It knows gzip and
// zlib by their headers (sniffCoding); a body starting with another magic
// number GNU gzip -d decodes (gzip's old 1f 9e, compress, pack, LZH) is
// refused, not decoded; zip, brotli (which has no magic number), zstd and
// other formats are not recognised. Such a body is read
// whole (its bytes are capped by src, a capReader at the response cap),
// decoded (at most limit decoded bytes: a decompression bomb is refused,
// not decoded on) and scanned for the secret's forms; clean, its original
// bytes are relayed unchanged, else it is refused: carrying the secret,
// not decoding (a zlib stream followed by a second gzip or zlib stream, a
// gzip member followed by a zlib stream or by anything starting 1f, which
// gzip -d reads on into, or either followed by what could start a header,
// included), or decoding to compressed data again (one
// layer is decoded: a key inside a second layer would pass unseen). A
// gzip body of several members (cat a.gz b.gz, bgzip's blocks; after zero
// padding too, which Python's gzip skips) is decoded and scanned member
// after member as one stream, as gzip -d and Go's reader decode it. Other
// data after the end of a zlib stream or of the last gzip member (a stray
// newline after PHP's gzcompress output) is relayed with the stream:
// decoders stop there (gzip -d: "trailing garbage ignored"), and it goes
// through the response scan above the guard, which masks the secret in
// it; a secret cut between the end of the decoded bytes and that data
// (zcat -f writes it right after them) is found, and the body refused. Any
// other body passes through, its first bytes (read to tell)
// replayed first.
//
// It also sits above the decoder of a body that has a Content-Encoding, so
// such a body decoding to gzip or zlib data is screened the same way (and
// a third layer is refused). Only the start of the decoded bytes is looked
// at: compressed data further in (a second gzip member's content, a file
// inside a tar) is not recognised.
//
// screen runs in ModifyResponse for a body of declared length, so that a
// refusal is a 502; a streamed body is screened at its first Read (a
// refusal is a 502 if its headers have not gone out yet, else it aborts
// the response: see call.forward). A streamed first chunk that could
// still start a header and is all the upstream sent ("x", 1f, 1f 8b) is
// relayed at once, not held until more comes (an upstream may send it and
// then wait for the caller: an event stream, a long poll), and the
// screen goes on at the next Read with the bytes that follow: compressed
// data after all, it is read whole, decoded and scanned with them, the
// rest relayed when clean, and refused otherwise (the response aborted:
// its headers went out with those first bytes, which carry nothing of
// the data). The guard lives in
// the call, so the per-request path allocates nothing for it.
type gzipGuard struct {
	src   io.ReadCloser
	forms *formSet
	pools *decoderPools
	limit int64 // of decoded bytes

	screened   bool
	undecided  bool                 // a streamed body's first bytes (head) could still start a header: relayed, the next Read screens on
	head       [len(gzipMagic)]byte // the first bytes, read to tell
	nhead      int
	offHead    int
	err        error  // src's error, returned once head is replayed (or once relayed after it)
	body       []byte // a screened compressed body, relayed from here
	compressed bool   // the body was compressed data (body holds it)
	fail       error  // why the body is refused: nothing more is relayed
	refused    string // the use_result reason of a refusal
	looked     int64  // decoded bytes the scan looked at, those held back again included (for tests)
}

// screen tells whether a body of declared length is compressed data and,
// if it is, reads, decodes and scans it. It returns why the body must not
// be relayed.
func (g *gzipGuard) screen() error { return g.sniff(false) }

// sniff is screen; streamed, it returns after a read that leaves the
// first bytes a possible start of a header (undecided: Read relays them,
// and calls sniff again for the next ones).
func (g *gzipGuard) sniff(streamed bool) error {
	g.screened, g.undecided = true, false
	// Read only while the bytes so far could start a header: a streamed
	// first chunk that cannot (a newline, "[") is relayed at once.
	coding, more := sniffCoding(g.head[:g.nhead])
	for more && g.nhead < len(g.head) && g.err == nil {
		n, err := g.src.Read(g.head[g.nhead:])
		g.nhead += n
		g.err = err
		coding, more = sniffCoding(g.head[:g.nhead])
		if streamed && more && n > 0 && err == nil {
			g.undecided = true // relayed, not held until the upstream sends more
			return nil
		}
	}
	switch coding {
	case codingIdentity:
		return nil // plain, or too short to be compressed: relayed as it is
	case codingUnsupported:
		return g.refuse(errGzipDecodesToo)
	}
	var buf bytes.Buffer
	buf.Write(g.head[:g.nhead])
	if g.err == nil {
		_, err := buf.ReadFrom(g.src)
		g.err = err
	}
	if g.err != nil && g.err != io.EOF {
		return g.refuse(g.err) // the cap, a timeout: the body cannot be screened whole
	}
	g.err = io.EOF
	g.body, g.compressed = buf.Bytes(), true
	found, err := g.scan(coding)
	switch {
	case err != nil:
		return g.refuse(err)
	case found:
		return g.refuse(errSecretInBody)
	}
	g.body = g.body[g.offHead:] // the first bytes relayed while undecided
	return nil
}

// scan decodes body and looks for the secret's forms in the decoded bytes,
// and for a compression header at their start (errNestedCoding).
func (g *gzipGuard) scan(coding contentCoding) (bool, error) {
	wire := &capReader{src: io.NopCloser(bytes.NewReader(g.body)), limit: int64(len(g.body))}
	d, err := newDecoder(wire, coding, g.pools)
	if err != nil {
		return false, err
	}
	defer d.Close()
	d.trailingOK = true // looked at below
	if d.gz != nil {
		// One member at a time: what follows each is looked at below.
		d.gz.Multistream(false)
	}
	dec := &capReader{src: d, limit: g.limit}
	buf := make([]byte, max(32<<10, 2*g.forms.keep))
	var first [len(gzipMagic)]byte // the first decoded bytes
	nfirst := 0
	held := 0 // buf[:held]: the end of the bytes so far, where an occurrence may start that they end inside
	for {
		n, err := dec.Read(buf[held:])
		b := buf[:held+n]
		// b[cut:] is held for the next read: from the first position
		// where an occurrence may start that b ends inside (at most keep
		// bytes; where no occurrence can start, more bytes cannot make
		// one). Only that is looked at again, and only with new bytes: a
		// body of many gzip members (each a read), empty or of a byte or
		// two, would otherwise have the last keep bytes looked at again
		// per member.
		cut := len(b)
		switch {
		case g.forms.secret == "":
		case n == 0:
			cut = 0 // nothing new (an empty member): b was looked at
		default:
			g.looked += int64(len(b))
			for i := range b {
				if g.forms.start[b[i]] {
					switch _, res := matchFrom(g.forms, b, i, 0); {
					case res == fullMatch:
						return true, nil
					case res == partialMatch && i < cut:
						cut = i
					}
				}
			}
			cut = max(cut, len(b)-g.forms.keep)
		}
		if nfirst < len(first) {
			nfirst += copy(first[nfirst:], buf[held:held+n])
			if c, _ := sniffCoding(first[:nfirst]); c != codingIdentity {
				return false, errNestedCoding
			}
		}
		switch {
		case err == io.EOF:
			if d.br == nil {
				return false, nil // an empty body
			}
			// Go's zlib reader stops at the end of the stream, as other
			// decoders do; the gzip reader is told to stop at the end of
			// each member (Multistream(false)). What follows is relayed
			// through the response scan (the redactReader above the
			// guard) like any body, and so masked, unless it starts what
			// a decoder that reads on would open as a second stream (or,
			// ending there, could: fail closed). After a gzip member,
			// another member (past zero padding, which Python's gzip
			// skips) is decoded and scanned on with it: a gzip file of
			// several members (cat a.gz b.gz, bgzip) is one file, which
			// gzip -d and Go's reader decode whole.
			end := wire.n - int64(d.br.Buffered())
			rest := g.body[end:]
			pad := 0
			if coding == codingGzip {
				pad = len(rest) - len(bytes.TrimLeft(rest, "\x00"))
			}
			c, more := sniffCoding(rest[pad:])
			// GNU gzip -d reads on after a member into what starts
			// with 1f whatever follows: gzip's old magic 1f 9e,
			// compress (1f 9d), pack (1f 1e), LZH (1f a0).
			gzipReadsOn := coding == codingGzip && len(rest) > pad && rest[pad] == gzipMagic[0]
			switch {
			case len(rest) == pad || (c == codingIdentity && !more && !gzipReadsOn):
				return g.spans(buf, b, rest), nil
			case coding != codingGzip || c != codingGzip:
				return false, errTrailingData
			}
			if _, err := d.br.Discard(pad); err != nil {
				return false, err
			}
			if err := d.gz.Reset(d.br); err != nil {
				return false, fmt.Errorf("%w: %v", errUndecodable, err)
			}
			d.gz.Multistream(false)
		case err != nil:
			if d.bad {
				return false, fmt.Errorf("%w: %v", errUndecodable, err)
			}
			return false, err
		}
		held = copy(buf, b[cut:])
	}
}

// spans reports whether an occurrence of the secret starts in the last
// decoded bytes (the end of b, which lies in buf, itself at least 2*keep
// long) and ends in rest, the data relayed after the stream: zcat -f
// (gzip -dcf) writes that data as it is right after the decoded bytes, so
// a secret cut there is whole to the caller, while the response scan sees
// only its second part. An occurrence within either was looked for already
// (b by scan, rest by the response scan).
func (g *gzipGuard) spans(buf, b, rest []byte) bool {
	if g.forms.secret == "" || len(rest) == 0 {
		return false
	}
	tail := min(len(b), g.forms.keep)
	copy(buf, b[len(b)-tail:])
	k := copy(buf[tail:], rest[:min(len(rest), g.forms.keep)])
	for i := range tail {
		if g.forms.start[buf[i]] {
			if _, res := matchFrom(g.forms, buf[:tail+k], i, 0); res == fullMatch {
				return true
			}
		}
	}
	return false
}

// refuse records why the body is refused (for the use_result event) and
// returns err.
func (g *gzipGuard) refuse(err error) error {
	switch {
	case errors.Is(err, errSecretInBody):
		g.refused = "response_contains_secret"
	case errors.Is(err, errResponseTooLarge):
		g.refused = "response_too_large"
	case errors.Is(err, errUndecodable):
		g.refused = "response_undecodable"
	case errors.Is(err, errEncodingUnsupported):
		g.refused = "response_encoding_unsupported"
	}
	g.body, g.fail = nil, err
	return err
}

func (g *gzipGuard) Read(p []byte) (int, error) {
	if !g.screened || (g.undecided && g.offHead == g.nhead) {
		_ = g.sniff(true)
	}
	if g.fail != nil {
		return 0, g.fail
	}
	if g.compressed {
		if len(g.body) == 0 {
			return 0, g.err
		}
		n := copy(p, g.body)
		g.body = g.body[n:]
		return n, nil
	}
	if g.offHead < g.nhead {
		// The first bytes alone, without waiting on src for more: they
		// may be all of a streamed first chunk.
		n := copy(p, g.head[g.offHead:g.nhead])
		g.offHead += n
		if g.offHead == g.nhead && g.err != nil {
			return n, g.err
		}
		return n, nil
	}
	if g.err != nil {
		return 0, g.err
	}
	n, err := g.src.Read(p)
	if err != nil {
		// Kept for call.bodyError: the scan above can hold back all
		// that came before it, so that it is the first the copy sees.
		g.err = err
	}
	return n, err
}

func (g *gzipGuard) Close() error {
	g.body = nil
	return g.src.Close()
}
