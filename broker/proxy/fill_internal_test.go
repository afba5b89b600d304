package proxy

import (
	"io"
	"strings"
	"sync/atomic"
	"testing"
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
