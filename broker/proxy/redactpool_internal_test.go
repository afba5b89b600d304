package proxy

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// overwritingReader writes all of body into p, as far as it goes, yet
// returns only n bytes and err: what io.Reader allows a failing read to do
// (capReader at the cap returns less than its source wrote).
type overwritingReader struct {
	body string
	n    int
	err  error
	done bool
}

func (o *overwritingReader) Read(p []byte) (int, error) {
	if o.done {
		return 0, o.err
	}
	o.done = true
	copy(p, o.body)
	return min(o.n, len(p)), o.err
}

// The response scan's buffer goes back to its pool when the body is closed,
// cleared only as far as it was written (not its whole 33 KiB): no byte of
// the secret, nor of the body, may survive in it for the next response,
// however the body ended. The whole array is checked, not only what the
// reader returned.
func TestRedactBufferHandedBackCleared(t *testing.T) {
	const secret = "sk_live_51HxUpstreamSharedSecret/+=&key"
	forms := newFormSet(secret)
	body := strings.Repeat("x", 1000) + secret + strings.Repeat("y", 2000) + secret + "tail"
	cases := []struct {
		name string
		src  func() io.Reader
	}{
		{"whole", func() io.Reader { return strings.NewReader(body) }},
		{"one-byte-reads", func() io.Reader { return iotest.OneByteReader(strings.NewReader(body)) }},
		{"ends-in-a-prefix-held-back", func() io.Reader {
			return iotest.DataErrReader(strings.NewReader("ok " + secret[:20]))
		}},
		{"fails-after-a-prefix", func() io.Reader {
			return io.MultiReader(strings.NewReader("ok "+secret[:20]), iotest.ErrReader(errors.New("upstream reset")))
		}},
		// capReader at the response cap: its source wrote the secret past
		// the cap into the buffer, it returns the bytes up to the cap.
		{"cut-at-the-cap", func() io.Reader {
			return &capReader{src: io.NopCloser(strings.NewReader(body)), limit: 900}
		}},
		{"failed-read-wrote-more-than-it-returned", func() io.Reader {
			return &overwritingReader{body: body, n: 10, err: errors.New("cut")}
		}},
		{"long-body", func() io.Reader {
			return strings.NewReader(strings.Repeat(body, 40)) // several buffers' worth
		}},
	}
	pool := newRedactBufferPool()
	for _, tt := range cases {
		t.Run(tt.name, func(t *testing.T) {
			r := newRedactReader(io.NopCloser(tt.src()), forms, pool)
			got, _ := io.ReadAll(r)
			if bytes.Contains(got, []byte(secret)) {
				t.Fatalf("the secret was relayed")
			}
			if cap(r.buf) != redactChunk+redactSlack {
				t.Fatalf("buffer of capacity %d, want the pool's %d", cap(r.buf), redactChunk+redactSlack)
			}
			arr := r.buf[:cap(r.buf)]
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if i := bytes.IndexFunc(arr, func(c rune) bool { return c != 0 }); i >= 0 {
				t.Errorf("byte %d of the buffer handed back is %q, want every byte cleared (secret in it: %v)",
					i, arr[i], bytes.Contains(arr, []byte(secret[:8])))
			}
		})
	}
}

// Handing the scan's buffer back allocates nothing: it goes back through
// the pointer it came in. (Under the race detector sync.Pool drops a
// quarter of what it is given, and New then allocates: about half an
// allocation per body on average, against one or more for each body if
// Close boxed a new pointer.)
func TestRedactBufferHandedBackWithoutAllocating(t *testing.T) {
	forms := newFormSet("sk_live_51HxUpstreamSharedSecret")
	pool := newRedactBufferPool()
	var src strings.Reader
	rc := io.NopCloser(&src)
	var r redactReader
	buf := make([]byte, 512)
	allocs := testing.AllocsPerRun(200, func() {
		src.Reset("a small upstream answer")
		r = redactReader{}
		r.init(rc, forms, pool)
		for {
			if _, err := r.Read(buf); err != nil {
				break
			}
		}
		_ = r.Close()
	})
	if allocs >= 1 {
		t.Errorf("%v allocations per body scanned, want under 1", allocs)
	}
}
