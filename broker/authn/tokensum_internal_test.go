package authn

import (
	"crypto/sha256"
	"strings"
	"testing"
)

// tokenSum is the SHA-256 of the token's bytes (the verified-token cache's
// key), for tokens of every size up to the largest accepted, and takes no
// heap copy of the token: converting it for sha256.Sum256 did, on every
// exchange.
func TestTokenSum(t *testing.T) {
	for _, n := range []int{0, 1, 900, 2048, 2049, DefaultMaxTokenBytes} {
		raw := strings.Repeat("eyJh.", n/5+1)[:n]
		if got, want := tokenSum(raw), sha256.Sum256([]byte(raw)); got != want {
			t.Errorf("tokenSum of %d bytes = %x, want %x", n, got, want)
		}
	}
	raw := strings.Repeat("x", 1100)
	tokenSum(raw)
	if n := testing.AllocsPerRun(200, func() { tokenSum(raw) }); n >= 1 {
		t.Errorf("tokenSum: %v allocations per token, want under 1", n)
	}
}

// checkCompact's verdicts and messages, the parts counted in place.
func TestCheckCompactShapes(t *testing.T) {
	for _, c := range []struct{ raw, err string }{
		{"a.b.c", ""}, {"a.b.", ""}, {"eyJ.eyJ.sig", ""},
		{"", "empty token"},
		{"abc", "token has 1 parts, want 3 (JWS compact)"},
		{"a.b", "token has 2 parts, want 3 (JWS compact)"},
		{"a.b.c.d", "token has 4 parts, want 3 (JWS compact)"},
		{"....", "token has 5 parts, want 3 (JWS compact)"},
		{".b.c", "token has an empty header or payload"},
		{"a..c", "token has an empty header or payload"},
		{"..", "token has an empty header or payload"},
		{"..c", "token has an empty header or payload"},
		{"a b.c.d", "token contains characters outside base64url"},
	} {
		err := checkCompact(c.raw)
		got := ""
		if err != nil {
			got = err.Error()
		}
		if got != c.err {
			t.Errorf("checkCompact(%q) = %q, want %q", c.raw, got, c.err)
		}
	}
}
