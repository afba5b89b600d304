package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
)

// errSecretInBody is returned for a response body the broker cannot relay
// redacted: gzip data sent without Content-Encoding that decodes to text
// carrying the injected secret.
var errSecretInBody = errors.New("upstream response body is gzip data (without Content-Encoding) carrying the injected secret")

// gzipMagic starts every gzip member (RFC 1952: ID1, ID2, CM deflate).
var gzipMagic = [3]byte{0x1f, 0x8b, 0x08}

// gzipGuard screens a body that is gzip data although the response does
// not say so (no Content-Encoding: a .gz download, or an endpoint echoing
// compressed bytes as application/octet-stream), which the response scan
// would see only compressed. Such a body is read whole (its bytes are
// capped by src, a capReader at the response cap), decoded (at most limit
// decoded bytes: a decompression bomb is refused, not decoded on) and
// scanned for the secret's forms; clean, its original bytes are relayed
// unchanged, else it is refused. Any other body passes through, its first
// bytes (read to tell) replayed first. One layer is decoded: gzip inside
// the decoded data is not looked into.
//
// screen runs in ModifyResponse for a body of declared length, so that a
// refusal is a 502; a streamed body is screened at its first Read (a
// refusal is a 502 if its headers have not gone out yet, else it aborts
// the response: see call.forward). The guard lives in
// the call, so the per-request path allocates nothing for it.
type gzipGuard struct {
	src   io.ReadCloser
	forms *formSet
	pools *decoderPools
	limit int64 // of decoded bytes

	screened bool
	head     [len(gzipMagic)]byte // the first bytes, read to tell
	nhead    int
	offHead  int
	err      error  // src's error, returned once head is replayed (or once relayed after it)
	body     []byte // a screened gzip body, relayed from here
	gz       bool   // the body was gzip data (body holds it)
	fail     error  // why the body is refused: nothing more is relayed
	refused  string // the use_result reason of a refusal
}

// screen tells whether the body is gzip data and, if it is, reads, decodes
// and scans it. It returns why the body must not be relayed.
func (g *gzipGuard) screen() error {
	g.screened = true
	// Read only while the bytes so far could start the magic: a streamed
	// first chunk that cannot (a newline, "[") is relayed at once.
	for g.nhead < len(g.head) && g.err == nil && bytes.Equal(g.head[:g.nhead], gzipMagic[:g.nhead]) {
		n, err := g.src.Read(g.head[g.nhead:])
		g.nhead += n
		g.err = err
	}
	if g.nhead < len(g.head) || g.head != gzipMagic {
		return nil // plain, or too short to be gzip: relayed as it is
	}
	var buf bytes.Buffer
	buf.Write(g.head[:])
	if g.err == nil {
		_, err := buf.ReadFrom(g.src)
		g.err = err
	}
	if g.err != nil && g.err != io.EOF {
		return g.refuse(g.err) // the cap, a timeout: the body cannot be screened whole
	}
	g.err = io.EOF
	g.body, g.gz = buf.Bytes(), true
	found, err := g.scan()
	switch {
	case err != nil:
		return g.refuse(err)
	case found:
		return g.refuse(errSecretInBody)
	}
	return nil
}

// scan decodes body and looks for the secret's forms in the decoded bytes.
func (g *gzipGuard) scan() (bool, error) {
	wire := &capReader{src: io.NopCloser(bytes.NewReader(g.body)), limit: int64(len(g.body))}
	d, err := newDecoder(wire, codingGzip, g.pools)
	if err != nil {
		return false, err
	}
	defer d.Close()
	dec := &capReader{src: d, limit: g.limit}
	buf := make([]byte, max(32<<10, 2*g.forms.keep))
	held := 0 // buf[:held]: the end of the last read, which could start an occurrence
	for {
		n, err := dec.Read(buf[held:])
		b := buf[:held+n]
		if g.forms.secret != "" {
			for i := range b {
				if g.forms.start[b[i]] {
					if _, res := matchFrom(g.forms, b, i, 0); res == fullMatch {
						return true, nil
					}
				}
			}
		}
		switch {
		case err == io.EOF:
			return false, nil
		case err != nil:
			if d.bad {
				return false, fmt.Errorf("%w: %v", errUndecodable, err)
			}
			return false, err
		}
		held = min(len(b), g.forms.keep)
		copy(buf, b[len(b)-held:])
	}
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
	}
	g.body, g.fail = nil, err
	return err
}

func (g *gzipGuard) Read(p []byte) (int, error) {
	if !g.screened {
		_ = g.screen()
	}
	if g.fail != nil {
		return 0, g.fail
	}
	if g.gz {
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
