package proxy

import (
	"bytes"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"io"
	"slices"
	"strings"
	"testing"
	"testing/iotest"
)

// gzipMembers returns one gzip member per part, concatenated.
func gzipMembers(parts ...string) []byte {
	var b bytes.Buffer
	zw := gzip.NewWriter(&b)
	for _, p := range parts {
		zw.Reset(&b)
		_, _ = zw.Write([]byte(p))
		_ = zw.Close()
	}
	return b.Bytes()
}

// screenBody screens body as a gzipGuard of declared length does.
func screenBody(secret string, body []byte) (*gzipGuard, error) {
	g := &gzipGuard{
		src:   &capReader{src: io.NopCloser(bytes.NewReader(body)), limit: 64 << 20},
		forms: newFormSet(secret),
		pools: &decoderPools{},
		limit: 64 << 20,
	}
	return g, g.screen()
}

// TestGzipScanLooksAtEachByteAboutOnce: the scan of a gzip body of many
// members (each a read of the decoder) looks again, at the next read,
// only at the end of the bytes so far where an occurrence of the secret
// may start that they end inside, and at nothing when a member decodes to
// nothing. It used to look again at the last keep bytes (ten times the
// secret's length) at every member: a body of tiny members, which 503748b
// made the scan read one by one, cost keep bytes of matching per 20 bytes
// sent (a 50 MB body of empty members after 400 bytes of "%": 14 s of CPU
// instead of 1 s). Counted, not timed: looked is the bytes the scan
// looked at.
func TestGzipScanLooksAtEachByteAboutOnce(t *testing.T) {
	const secret = "sk_live_51HxUpstreamSharedSecret/+=&key"
	const members = 2000
	keep := newFormSet(secret).keep
	empties := make([]string, members)
	percents := make([]string, members)
	for i := range members {
		percents[i] = "%"
	}
	for _, tt := range []struct {
		name    string
		parts   []string
		decoded int
	}{
		{name: "empty-members-after-text", parts: append([]string{strings.Repeat("%", 400)}, empties...), decoded: 400},
		{name: "members-of-one-byte", parts: append([]string{strings.Repeat("%", 400)}, percents...), decoded: 400 + members},
	} {
		t.Run(tt.name, func(t *testing.T) {
			g, err := screenBody(secret, gzipMembers(tt.parts...))
			if err != nil {
				t.Fatalf("screen: %v, want the clean body relayed", err)
			}
			if limit := int64(2*tt.decoded + keep); g.looked > limit {
				t.Errorf("the scan looked at %d bytes of %d decoded, want at most %d", g.looked, tt.decoded, limit)
			}
		})
	}
}

// TestGzipScanFindsSecretAcrossTinyMembers: holding back only where an
// occurrence may start still finds the secret cut into members of a byte
// (or none) each, raw or in an escaped form.
func TestGzipScanFindsSecretAcrossTinyMembers(t *testing.T) {
	const secret = "sk_live_51HxUpstreamSharedSecret/+=&key"
	for _, form := range []string{secret, strings.ReplaceAll(secret, "&", `\u0026`), "%73k_live_51HxUpstreamSharedSecret%2F%2B%3D%26key"} {
		var parts []string
		for _, c := range "a%" + form + "%\\" {
			parts = append(parts, string(c), "")
		}
		if _, err := screenBody(secret, gzipMembers(parts...)); !errors.Is(err, errSecretInBody) {
			t.Errorf("%q cut into members of a byte: %v, want errSecretInBody", form, err)
		}
	}
}

// bgzf returns parts as BGZF blocks (bgzip's format: gzip members with a
// "BC" extra field holding the block's size), ended by BGZF's empty EOF
// block.
func bgzf(parts ...string) []byte {
	var out []byte
	for _, p := range parts {
		var b bytes.Buffer
		zw := gzip.NewWriter(&b)
		zw.Extra = []byte{'B', 'C', 2, 0, 0, 0} // BSIZE-1 set below
		_, _ = zw.Write([]byte(p))
		_ = zw.Close()
		blk := b.Bytes()
		size := len(blk) - 1
		blk[16], blk[17] = byte(size), byte(size>>8) // 10-byte header, XLEN, "BC", SLEN
		out = append(out, blk...)
	}
	return append(out, "\x1f\x8b\x08\x04\x00\x00\x00\x00\x00\xff\x06\x00BC\x02\x00\x1b\x00\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00"...)
}

// TestGzipScanBGZF: a bgzip file (every .vcf.gz, .bam: members with an
// extra field, ended by an empty member) decodes whole: clean, it is
// relayed; the secret cut between two blocks is found.
func TestGzipScanBGZF(t *testing.T) {
	const secret = "sk_live_51HxUpstreamSharedSecret/+=&key"
	clean := bgzf("#fileformat=VCFv4.2\n", strings.Repeat("chr1\t100\t.\tA\tG\n", 50))
	if got, err := io.ReadAll(gzipReader(t, clean)); err != nil || !strings.HasPrefix(string(got), "#fileformat") {
		t.Fatalf("the BGZF fixture does not decode: %v", err)
	}
	if _, err := screenBody(secret, clean); err != nil {
		t.Errorf("clean BGZF: %v, want it relayed", err)
	}
	if _, err := screenBody(secret, bgzf("token="+secret[:10], secret[10:]+"\n")); !errors.Is(err, errSecretInBody) {
		t.Errorf("BGZF with the secret cut between blocks: %v, want errSecretInBody", err)
	}
}

func gzipReader(t *testing.T, b []byte) io.Reader {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return zr
}

// TestGzipScanFindsSecretCutAcrossPaddingAndEmptyMembers: the secret cut
// between two members with empty members and zero padding (which Python's
// gzip skips) between them is found; cut between a member and the text
// after empty members, which zcat -f writes right after the decoded
// bytes, too.
func TestGzipScanFindsSecretCutAcrossPaddingAndEmptyMembers(t *testing.T) {
	const secret = "sk_live_51HxUpstreamSharedSecret/+=&key"
	zeros := []byte{0, 0, 0, 0}
	for _, tt := range []struct {
		name string
		body []byte
	}{
		{"empty-zeros-empty", slices.Concat(gzipMembers("a "+secret[:7]), gzipMembers(""), zeros, gzipMembers("", secret[7:]))},
		{"empty-members-then-text", slices.Concat(gzipMembers("a "+secret[:20], "", ""), []byte(secret[20:]+"\n"))},
		{"escape-cut-then-empty-then-text", slices.Concat(gzipMembers(`a `+secret[:35]+`\u00`), gzipMembers(""), []byte(`26key`))},
	} {
		if _, err := screenBody(secret, tt.body); !errors.Is(err, errSecretInBody) {
			t.Errorf("%s: %v, want errSecretInBody", tt.name, err)
		}
	}
}

// TestGzipGuardRefusesWhatGzipDecodesUnderOtherMagics: a body starting
// with a magic number GNU gzip -d decodes other than 1f 8b (gzip's old
// magic 1f 9e, a gzip member under it; compress 1f 9d, pack 1f 1e, LZH
// 1f a0) was relayed unscanned, and `gzip -dc` at the caller printed the
// secret of an old-magic member (gzip 1.12). It is refused, declared or
// streamed; text does not start with 1f, and 1f 8b that is not gzip is
// still relayed.
func TestGzipGuardRefusesWhatGzipDecodesUnderOtherMagics(t *testing.T) {
	const secret = "sk_live_51HxUpstreamSharedSecret/+=&key"
	old := gzipMembers("token=" + secret + "\n")
	old[1] = 0x9e
	for _, tt := range []struct {
		name string
		body string
		ok   bool
	}{
		{name: "old-magic-gzip-member", body: string(old)},
		{name: "compress", body: "\x1f\x9d\x90 compress(1) data"},
		{name: "pack", body: "\x1f\x1e packed"},
		{name: "lzh", body: "\x1f\xa0 lzh"},
		{name: "1f-8b-not-gzip", body: "\x1f\x8b not really gzip", ok: true},
		{name: "a-lone-1f", body: "\x1f", ok: true},
	} {
		_, err := screenBody(secret, []byte(tt.body))
		g := &gzipGuard{src: io.NopCloser(iotest.OneByteReader(strings.NewReader(tt.body))), forms: newFormSet(secret), pools: &decoderPools{}, limit: 1 << 20}
		got, serr := io.ReadAll(g)
		switch {
		case tt.ok && (err != nil || serr != nil || string(got) != tt.body):
			t.Errorf("%s: declared %v, streamed %q, %v; want it relayed", tt.name, err, got, serr)
		case !tt.ok && (!errors.Is(err, errEncodingUnsupported) || !errors.Is(serr, errEncodingUnsupported) || g.refused != "response_encoding_unsupported" || len(got) > 1):
			t.Errorf("%s: declared %v, streamed %q, %v (%s); want refused, response_encoding_unsupported", tt.name, err, got, serr, g.refused)
		}
	}
}

// TestGzipGuardZlibThenWhitespace: a body without Content-Encoding that is
// a zlib stream followed by whitespace or NUL bytes (PHP's gzcompress
// output and a trailing newline) is relayed as it came when the stream is
// clean, declared or streamed (a byte per read too), and refused when the
// stream carries the secret: the guard relays such a body, it does not
// refuse it (and Content-Encoding: deflate decodes it, see
// TestDecoderDeflateTrailingWhitespace).
func TestGzipGuardZlibThenWhitespace(t *testing.T) {
	const secret = "sk_live_51HxUpstreamSharedSecret/+=&key"
	zl := func(s string) string {
		var b bytes.Buffer
		zw := zlib.NewWriter(&b)
		_, _ = zw.Write([]byte(s))
		_ = zw.Close()
		return b.String()
	}
	for _, tt := range []struct {
		name string
		body string
		ok   bool
	}{
		{name: "clean-then-a-newline", body: zl("a clean line\n") + "\n", ok: true},
		{name: "clean-then-crlf", body: zl("a clean line\n") + "\r\n", ok: true},
		{name: "clean-then-nuls-and-spaces", body: zl("a clean line\n") + "\x00\x00 \t\x00", ok: true},
		{name: "secret-then-a-newline", body: zl("token="+secret+"\n") + "\n"},
		{name: "secret-then-nuls", body: zl("token="+secret) + "\x00\x00\x00\x00"},
	} {
		_, err := screenBody(secret, []byte(tt.body))
		g := &gzipGuard{src: io.NopCloser(iotest.OneByteReader(strings.NewReader(tt.body))), forms: newFormSet(secret), pools: &decoderPools{}, limit: 1 << 20}
		got, serr := io.ReadAll(g)
		switch {
		case tt.ok && (err != nil || serr != nil || string(got) != tt.body):
			t.Errorf("%s: declared %v, streamed %q, %v; want it relayed as it came", tt.name, err, got, serr)
		case !tt.ok && (!errors.Is(err, errSecretInBody) || !errors.Is(serr, errSecretInBody) || g.refused != "response_contains_secret" || len(got) > 1):
			t.Errorf("%s: declared %v, streamed %q, %v (%s); want refused, response_contains_secret", tt.name, err, got, serr, g.refused)
		}
	}
}
