package yamlcheck

import (
	"strconv"
	"unicode/utf8"
)

// MaxQuoted is how many bytes of a value Quote shows: a problem names the
// value it refuses, and a value pasted by mistake (a key, a whole
// document) would otherwise be echoed whole in every message about it.
const MaxQuoted = 64

// Quote is s quoted as %q does when it is at most MaxQuoted bytes long;
// a longer one is its first MaxQuoted bytes (cut at a rune boundary),
// quoted, then "..." and its length: "aaaa"... (5000 bytes).
func Quote(s string) string { return quote(s, strconv.Quote) }

// QuoteASCII is Quote with non-ASCII runes escaped, as %+q does.
func QuoteASCII(s string) string { return quote(s, strconv.QuoteToASCII) }

func quote(s string, q func(string) string) string {
	if len(s) <= MaxQuoted {
		return q(s)
	}
	n := MaxQuoted
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return q(s[:n]) + "... (" + strconv.Itoa(len(s)) + " bytes)"
}
