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
// a longer one is its first MaxQuoted bytes or fewer, quoted, then "..."
// and its length: "aaaa"... (5000 bytes). The cut never splits a rune: it
// falls before a rune that would cross MaxQuoted; a byte that is not
// UTF-8 (quoted as \x80) counts as one, so a value of such bytes shows
// its first MaxQuoted of them.
func Quote(s string) string { return quote(s, strconv.Quote) }

// QuoteASCII is Quote with non-ASCII runes escaped, as %+q does.
func QuoteASCII(s string) string { return quote(s, strconv.QuoteToASCII) }

func quote(s string, q func(string) string) string {
	if len(s) <= MaxQuoted {
		return q(s)
	}
	n := 0
	for {
		// An invalid byte decodes as one (RuneError, 1): quoted as \xNN.
		_, size := utf8.DecodeRuneInString(s[n:])
		if n+size > MaxQuoted {
			break
		}
		n += size
	}
	return q(s[:n]) + "... (" + strconv.Itoa(len(s)) + " bytes)"
}
