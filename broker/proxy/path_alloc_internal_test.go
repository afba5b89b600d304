package proxy

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/keytrail/keytrail/broker"
)

// splitNormalizePath, splitHeaderHasToken and joinAuditPath are the forms
// normalizePath, headerHasToken and auditPath had before they stopped
// allocating (strings.Split, strings.Join): the tests below hold the new
// ones to their answers.
func splitNormalizePath(escaped string) (string, string) {
	if len(escaped) == 0 || escaped[0] != '/' {
		return "", "path_not_absolute"
	}
	if len(escaped) > maxPathBytes {
		return "", "path_too_long"
	}
	var b strings.Builder
	segs := strings.Split(escaped[1:], "/")
	for i, seg := range segs {
		if seg == "" {
			if i != len(segs)-1 {
				return "", "empty_segment"
			}
			b.WriteByte('/')
			continue
		}
		d, why := decodeSegment(seg)
		if why != "" {
			return "", why
		}
		if isDotSegment(d) {
			return "", "dot_segment"
		}
		if why := foldedProblem(d); why != "" {
			return "", why
		}
		b.WriteByte('/')
		b.WriteString(d)
	}
	return b.String(), ""
}

func splitHeaderHasToken(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, t := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(t), token) {
				return true
			}
		}
	}
	return false
}

func joinAuditPath(path, rawQuery, injectParam string) string {
	if rawQuery == "" {
		return path
	}
	var keys []string
	seen := map[string]bool{}
	for _, kv := range strings.Split(rawQuery, "&") {
		k, _, _ := strings.Cut(kv, "=")
		if k == "" || seen[k] || (injectParam != "" && queryKeyIs(k, injectParam)) {
			continue
		}
		seen[k] = true
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return path
	}
	names := strings.Join(keys, "&")
	if len(names) > maxAuditQueryBytes {
		cut := maxAuditQueryBytes
		for cut > 0 && !utf8.RuneStart(names[cut]) {
			cut--
		}
		names = fmt.Sprintf("%s…(%d bytes, %s)", names[:cut], len(names), broker.Fingerprint(names))
	}
	return path + "?" + names
}

// randomText returns n characters from alphabet.
func randomText(r *rand.Rand, alphabet []string, n int) string {
	var b strings.Builder
	for range n {
		b.WriteString(alphabet[r.IntN(len(alphabet))])
	}
	return b.String()
}

func TestNormalizePathAsSplit(t *testing.T) {
	paths := []string{"", "/", "//", "/a", "/a/", "/a//", "/a//b", "/.", "/..", "/%2e", "/%2E%2e/", "/a;x/..;y", "/. /",
		"/v1/charges", "/v1/charges/", "/v1/%63harges", "/v1/%2fx", "/v1/%25", "/v1/%zz", "/v1/%c0%ae", "/v1/caf%C3%A9",
		"/v1/\uff0e\uff0e", "/v1/%EF%BC%8E%EF%BC%8E", "/a\\b", "/a b", "/a?b", "/a#b", "/\x00", "/\x7f", "/é",
		"/" + strings.Repeat("a", maxPathBytes), "/" + strings.Repeat("a", maxPathBytes-1), "no-slash"}
	r := rand.New(rand.NewPCG(9, 9))
	alphabet := []string{"/", "/", "a", "b", ".", "%", "2", "e", "f", "%2e", "%2f", "%41", "%c3%a9", "%ef%bc%8e", ";", " ", "\\", "é", "\uff0e"}
	for range 20000 {
		paths = append(paths, "/"+randomText(r, alphabet, r.IntN(12)))
	}
	for _, p := range paths {
		gotPath, gotWhy := normalizePath(p)
		wantPath, wantWhy := splitNormalizePath(p)
		if gotPath != wantPath || gotWhy != wantWhy {
			t.Fatalf("normalizePath(%q) = %q, %q; want %q, %q", p, gotPath, gotWhy, wantPath, wantWhy)
		}
	}
}

func TestHeaderHasTokenAsSplit(t *testing.T) {
	for _, vs := range [][]string{nil, {""}, {"upgrade"}, {"Upgrade"}, {"keep-alive"}, {"keep-alive, Upgrade"}, {" upgrade ,x"},
		{"x", "y,UPGRADE"}, {"upgrades"}, {",,"}, {"keep-alive,", ",upgrade"}, {"up grade"}} {
		h := http.Header{"Connection": vs}
		if got, want := headerHasToken(h, "Connection", "upgrade"), splitHeaderHasToken(h, "Connection", "upgrade"); got != want {
			t.Errorf("headerHasToken(Connection: %q) = %v, want %v", vs, got, want)
		}
	}
}

func TestAuditPathAsJoin(t *testing.T) {
	queries := []string{"", "&", "a", "a=1", "a=1&a=2", "a&b&a", "=x&b", "key=secret&a=1", "KEY=x&a", "k%65y=1&b", "%zz=1&b",
		"a=1&&b=2", strings.Repeat("n", maxAuditQueryBytes) + "=1", strings.Repeat("n", maxAuditQueryBytes-1) + "=1&b",
		strings.Repeat("é", maxAuditQueryBytes/2) + "x=1"}
	var many []string // past the names auditPath looks up in place
	for i := range 20 {
		many = append(many, fmt.Sprintf("k%d=%d", i%13, i))
	}
	queries = append(queries, strings.Join(many, "&"), strings.Join(many, "&")+"&key=1&k5&k19")
	r := rand.New(rand.NewPCG(7, 7))
	alphabet := []string{"a", "b", "c", "key", "KEY", "=", "=", "&", "&", "%6b", "%zz", "1", "é"}
	for range 20000 {
		queries = append(queries, randomText(r, alphabet, r.IntN(40)))
	}
	for _, q := range queries {
		for _, inject := range []string{"", "key"} {
			if got, want := auditPath("/v1/x", q, inject), joinAuditPath("/v1/x", q, inject); got != want {
				t.Fatalf("auditPath(%q, %q) = %q, want %q", q, inject, got, want)
			}
		}
	}
}

// The string work of a request's checks and of its use event's path: a
// path without escapes is its own decoded form, a Connection header is
// looked through in place, and the audit path is one string.
func TestPathChecksAllocs(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { _, _ = normalizePath("/v1/customers/cus_123/sources") }); n != 0 {
		t.Errorf("normalizePath of a path without escapes: %v allocations, want 0", n)
	}
	h := http.Header{"Connection": {"keep-alive, TE"}}
	if n := testing.AllocsPerRun(100, func() { _ = headerHasToken(h, "Connection", "upgrade") }); n != 0 {
		t.Errorf("headerHasToken: %v allocations, want 0", n)
	}
	if n := testing.AllocsPerRun(100, func() { _ = auditPath("/v1/charges", "limit=3&starting_after=ch_1&key=x", "key") }); n > 1 {
		t.Errorf("auditPath: %v allocations, want 1", n)
	}
}
