package proxy

import (
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"

	"golang.org/x/text/unicode/norm"

	"github.com/keytrail/keytrail/broker"
)

// maxPathBytes bounds the forwarded path.
const maxPathBytes = 4096

// pathPrefix is where the proxy is mounted.
const pathPrefix = "/v1/proxy/"

// splitTarget takes the raw request target (r.RequestURI, exactly as the
// client sent it) and returns the escaped grant segment, the escaped tail
// ("/..." after the grant) and the raw query. ok is false when the target is
// not origin-form under pathPrefix.
func splitTarget(requestURI string) (grantSeg, tail, rawQuery string, reason string) {
	if !strings.HasPrefix(requestURI, "/") {
		return "", "", "", "absolute_target" // absolute-form, authority-form or "*"
	}
	escaped, rawQuery, _ := strings.Cut(requestURI, "?")
	if strings.ContainsAny(rawQuery, "#\x00\r\n") {
		return "", "", "", "bad_query"
	}
	rest, ok := strings.CutPrefix(escaped, pathPrefix)
	if !ok {
		return "", "", "", "bad_path"
	}
	i := strings.IndexByte(rest, '/')
	if i <= 0 {
		return "", "", "", "bad_path"
	}
	return rest[:i], rest[i:], rawQuery, ""
}

// normalizePath checks the escaped path tail exactly as the client sent it
// and returns it decoded (what the grant's path patterns are matched
// against). It refuses, rather than cleans, anything that could make the
// upstream see another path than the one checked: "." and ".." segments
// (also percent-encoded, also with ";params"), empty segments ("//") except a
// trailing slash, encoded slashes and backslashes, raw backslashes, NUL and
// control bytes (raw or encoded), double encoding ("%25"), encoded "?" and
// "#", malformed escapes, raw non-ASCII bytes, escapes that do not decode
// to valid UTF-8 (overlong forms such as %c0%ae), segments that read as one
// of the above once Unicode compatibility forms are folded (NFKC: fullwidth
// "．．", "／"), and paths over 4 KiB. reason
// is "" when the path is accepted.
func normalizePath(escaped string) (decoded string, reason string) {
	if len(escaped) == 0 || escaped[0] != '/' {
		return "", "path_not_absolute"
	}
	if len(escaped) > maxPathBytes {
		return "", "path_too_long"
	}
	// Without an escape every segment decodes to itself: the decoded path
	// is escaped, checked segment by segment, and nothing is allocated.
	plain := strings.IndexByte(escaped, '%') < 0
	var b strings.Builder
	if !plain {
		b.Grow(len(escaped))
	}
	for rest, more := escaped[1:], true; more; {
		var seg string
		seg, rest, more = strings.Cut(rest, "/")
		if seg == "" {
			if more {
				return "", "empty_segment"
			}
			if !plain {
				b.WriteByte('/') // a trailing slash
			}
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
		if !plain {
			b.WriteByte('/')
			b.WriteString(d)
		}
	}
	if plain {
		return escaped, ""
	}
	return b.String(), ""
}

// decodeSegment percent-decodes one path segment, refusing what
// normalizePath refuses.
func decodeSegment(seg string) (string, string) {
	if strings.IndexByte(seg, '%') < 0 {
		for i := 0; i < len(seg); i++ {
			if why := rawByteProblem(seg[i]); why != "" {
				return "", why
			}
		}
		return seg, ""
	}
	out := make([]byte, 0, len(seg))
	for i := 0; i < len(seg); i++ {
		c := seg[i]
		if c != '%' {
			if why := rawByteProblem(c); why != "" {
				return "", why
			}
			out = append(out, c)
			continue
		}
		if i+2 >= len(seg) || !isHex(seg[i+1]) || !isHex(seg[i+2]) {
			return "", "bad_escape"
		}
		d := unhex(seg[i+1])<<4 | unhex(seg[i+2])
		switch {
		case d == '/' || d == '\\':
			return "", "encoded_slash"
		case d == '%':
			return "", "double_encoding"
		case d == '?' || d == '#':
			return "", "encoded_delimiter"
		case d < 0x20 || d == 0x7f:
			return "", "control_byte"
		}
		out = append(out, d)
		i += 2
	}
	// Escaped bytes must decode to UTF-8: an overlong form (%c0%ae is ".",
	// %c0%af is "/" to a lax decoder), a surrogate or a stray byte could
	// read as another path to the upstream than the one checked.
	if !utf8.Valid(out) {
		return "", "invalid_utf8"
	}
	return string(out), ""
}

// isDotSegment reports whether a decoded segment is "." or "..", also with
// ";params" or trailing blanks.
func isDotSegment(d string) bool {
	base, _, _ := strings.Cut(d, ";")
	base = strings.TrimRight(base, " \t")
	return base == "." || base == ".."
}

// foldedProblem checks a decoded segment as an upstream that applies
// Unicode compatibility normalisation (NFKC: Python's unicodedata, Java's
// and .NET's Normalizer) would read it: fullwidth "．．" is "..", "／" and
// "＼" are slashes, "％" starts an escape. It says why the folded segment
// is refused, or "" (always for ASCII, which NFKC leaves alone).
func foldedProblem(d string) string {
	ascii := true
	for i := 0; i < len(d); i++ {
		if d[i] >= utf8.RuneSelf {
			ascii = false
			break
		}
	}
	if ascii || norm.NFKC.IsNormalString(d) {
		return ""
	}
	f := norm.NFKC.String(d)
	for i := 0; i < len(f); i++ {
		switch c := f[i]; {
		case c == '/' || c == '\\':
			return "encoded_slash"
		case c == '%':
			return "double_encoding"
		case c == '?' || c == '#':
			return "encoded_delimiter"
		case c < 0x20 || c == 0x7f:
			return "control_byte"
		}
	}
	if isDotSegment(f) {
		return "dot_segment"
	}
	return ""
}

// rawByteProblem says why a byte may not appear unescaped in a path.
func rawByteProblem(c byte) string {
	switch {
	case c == '\\':
		return "backslash"
	case c <= 0x20 || c == 0x7f:
		return "control_byte"
	case c >= 0x80:
		return "non_ascii"
	case c == '#' || c == '?':
		return "encoded_delimiter"
	}
	return ""
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// auditPath is the upstream path with the query reduced to its parameter
// names (values may carry personal data; the injected parameter is left
// out), at most maxAuditQueryBytes of them: longer names are recorded as
// their first maxAuditQueryBytes, "…", then their length and SHA-256.
func auditPath(path, rawQuery, injectParam string) string {
	if rawQuery == "" {
		return path
	}
	// The names kept, in order, each once: looked up among the first few
	// in place, in a map beyond them (a query may have thousands).
	var small [8]string
	keys := small[:0]
	var seen map[string]bool
	size := 0
	for more := true; more; {
		var kv string
		kv, rawQuery, more = strings.Cut(rawQuery, "&")
		k, _, _ := strings.Cut(kv, "=")
		if k == "" || (injectParam != "" && queryKeyIs(k, injectParam)) {
			continue
		}
		switch {
		case seen != nil:
			if seen[k] {
				continue
			}
			seen[k] = true
		case slices.Contains(keys, k):
			continue
		case len(keys) == len(small):
			seen = make(map[string]bool, 4*len(small))
			for _, x := range keys {
				seen[x] = true
			}
			seen[k] = true
		}
		keys = append(keys, k)
		size += len(k) + 1
	}
	if len(keys) == 0 {
		return path
	}
	if size-1 <= maxAuditQueryBytes {
		// The usual case: path, "?" and the names written in one piece.
		var b strings.Builder
		b.Grow(len(path) + size)
		b.WriteString(path)
		for i, k := range keys {
			if i == 0 {
				b.WriteByte('?')
			} else {
				b.WriteByte('&')
			}
			b.WriteString(k)
		}
		return b.String()
	}
	names := strings.Join(keys, "&")
	if len(names) > maxAuditQueryBytes {
		// The path is bounded (maxPathBytes), the query only by the
		// request header cap: keep its start, and name the rest.
		cut := maxAuditQueryBytes
		for cut > 0 && !utf8.RuneStart(names[cut]) {
			cut--
		}
		names = fmt.Sprintf("%s…(%d bytes, %s)", names[:cut], len(names), broker.Fingerprint(names))
	}
	return path + "?" + names
}

// maxAuditQueryBytes bounds the parameter names an audit path records.
const maxAuditQueryBytes = 2048
