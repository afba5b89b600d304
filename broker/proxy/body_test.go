package proxy

import (
	"fmt"
	"html"
	"testing"

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
