package proxy

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
)

// A body of declared length is gathered and masked up to fill bytes
// before its first bytes (and with them its headers) are released, so a
// secret in them strips the headers of their validators (altered). An
// occurrence that starts in those bytes but ends after them is masked
// before the first Read returns too, however the upstream's reads fall:
// it used to be held back undecided, released with the headers after the
// first Read, and masked only after the strong ETag went out.
func TestRedactFillCoversAnOccurrenceStartingInIt(t *testing.T) {
	const secret = "sk_live_51HxUpstreamSharedSecret/+=&key"
	forms := newFormSet(secret)
	const fill = redactChunk / 2
	for _, tt := range []struct {
		name  string
		start int // where the secret starts
		cut   int // where the upstream's first read ends
	}{
		{name: "inside/cut-after", start: 100, cut: fill + 100},
		{name: "straddling/cut-at-fill", start: fill - 10, cut: fill},
		{name: "straddling/cut-after-fill", start: fill - 10, cut: fill + 5},
		{name: "straddling/cut-before-fill", start: fill - 10, cut: fill - 5},
		{name: "straddling/last-byte-of-fill", start: fill - 1, cut: fill + 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			body := strings.Repeat("a", tt.start) + secret + strings.Repeat("b", 20<<10)
			// One chunk per Read: the first ends at cut.
			src := io.MultiReader(strings.NewReader(body[:tt.cut]), strings.NewReader(body[tt.cut:]))
			r := newRedactReader(io.NopCloser(src), forms, newRedactBufferPool())
			var altered atomic.Bool
			r.altered = &altered
			r.fill = fill
			buf := make([]byte, 32<<10)
			n, err := r.Read(buf)
			if err != nil || n == 0 {
				t.Fatalf("first Read = %d, %v", n, err)
			}
			if !altered.Load() {
				t.Errorf("the first %d bytes were released (the headers with them) before the secret starting at %d was masked", n, tt.start)
			}
			rest, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			got := string(buf[:n]) + string(rest)
			if want := strings.Repeat("a", tt.start) + strings.Repeat("*", len(secret)) + strings.Repeat("b", 20<<10); got != want {
				t.Errorf("relayed %d bytes, not the body masked (%d bytes)", len(got), len(want))
			}
			if c := cap(r.buf); c != redactChunk+redactSlack {
				t.Errorf("the pooled buffer grew to %d bytes", c)
			}
			_ = r.Close()
		})
	}
}

// TestRedactLooksAtEachByteAboutOnce: while the first bytes of a body of
// declared length are gathered (fill), each read of the upstream's looks
// again only at the end of the bytes so far where an occurrence may start
// that they end inside, not at the last keep bytes (ten times the
// secret's length). A Content-Encoding: gzip body of one-byte members
// decodes a member per read: the scan used to cost keep bytes of matching
// per member up to the 16 KiB mark (a 425 KB body of "%" members took 11 s
// of CPU with a 200-byte secret, 75 s with a 1000-byte one). Counted, not
// timed: looked is the bytes the scan looked at.
func TestRedactLooksAtEachByteAboutOnce(t *testing.T) {
	secret := "sk_live_" + strings.Repeat("Q", 32)
	keep := newFormSet(secret).keep
	const members = 20000
	parts := make([]string, members)
	for i := range parts {
		parts[i] = "%"
	}
	body := gzipMembers(parts...)
	for _, fill := range []int{redactChunk / 2, 0} {
		t.Run(fmt.Sprint("fill-", fill), func(t *testing.T) {
			d, err := newDecoder(&capReader{src: io.NopCloser(bytes.NewReader(body)), limit: 64 << 20}, codingGzip, &decoderPools{})
			if err != nil {
				t.Fatal(err)
			}
			r := newRedactReader(d, newFormSet(secret), newRedactBufferPool())
			r.fill = fill
			got, err := io.ReadAll(r)
			if err != nil || string(got) != strings.Repeat("%", members) {
				t.Fatalf("relayed %d bytes, %v; want the %d decoded bytes", len(got), err, members)
			}
			if limit := int64(4*members + 2*keep); r.looked > limit {
				t.Errorf("the scan looked at %d bytes of %d decoded, want at most %d", r.looked, members, limit)
			}
			_ = r.Close()
		})
	}
}

// TestRedactMasksSecretReadAByteAtATime: scanning again only where an
// occurrence may start still masks the secret, raw or escaped, arriving a
// byte per read, in the gathered first bytes and after them.
func TestRedactMasksSecretReadAByteAtATime(t *testing.T) {
	const secret = "sk_live_51HxUpstreamSharedSecret/+=&key"
	forms := newFormSet(secret)
	for _, form := range []string{secret, strings.ReplaceAll(secret, "&", `\u0026`), "%73k_live_51HxUpstreamSharedSecret%2F%2B%3D%26key", strings.ReplaceAll(secret, "&", "&amp;")} {
		for _, at := range []int{10, redactChunk/2 - 20, redactChunk / 2, redactChunk + 5} {
			body := strings.Repeat("%", at) + "\\&" + form + "%\\" + strings.Repeat("b", 100)
			for _, fill := range []int{redactChunk / 2, 0} {
				r := newRedactReader(io.NopCloser(iotest.OneByteReader(strings.NewReader(body))), forms, nil)
				r.fill = fill
				got, err := io.ReadAll(r)
				if err != nil || len(got) != len(body) || forms.containsAny(string(got)) {
					t.Errorf("%q at %d, fill %d: relayed %d bytes of %d, %v, secret masked: %v", form[:6], at, fill, len(got), len(body), err, !forms.containsAny(string(got)))
				}
			}
		}
	}
}
