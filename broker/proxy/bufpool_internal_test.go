package proxy

import "testing"

// A ReverseProxy copy buffer handed back (bufferPool.Put, once per proxied
// body) allocates nothing once the pool is warm: it goes back in a holder a
// Get emptied, not in a new pointer boxed for sync.Pool. (Under the race
// detector sync.Pool drops a quarter of what it is given: under one
// allocation per round trip on average, as for the scan's buffers.)
func TestCopyBufferHandedBackWithoutAllocating(t *testing.T) {
	p := newBufferPool()
	p.Put(p.Get())
	allocs := testing.AllocsPerRun(200, func() {
		b := p.Get()
		if len(b) != 32<<10 {
			t.Fatalf("buffer of %d bytes, want %d", len(b), 32<<10)
		}
		p.Put(b)
	})
	if allocs >= 1 {
		t.Errorf("%v allocations per copy buffer taken and handed back, want under 1", allocs)
	}
}
