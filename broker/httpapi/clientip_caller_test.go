package httpapi

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

// FuzzClientIPCallerChoosesNothing: whatever X-Forwarded-For lines a
// caller that is not a trusted proxy sends (commas, spaces, tabs, several
// lines, entries with ports or brackets), the address its trusted proxy
// appends is the source, however the proxy appends it: nginx
// ("$http_x_forwarded_for, $remote_addr", lines joined), HAProxy (a line
// of its own), Envoy (",addr" on the last line), or a chain of two
// proxies. FuzzClientIP's oracle only asks for an entry of the header.
func FuzzClientIPCallerChoosesNothing(f *testing.F) {
	f.Add("1.2.3.4 5.6.7.8", "x", []byte{198, 51, 100, 4}, uint8(0))
	f.Add("", "", []byte{203, 0, 113, 9}, uint8(1))
	f.Add("10.0.0.1\t,  ,", "[2001:db8::1]:80 ", []byte{0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, uint8(2))
	trusted := []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("10.0.0.0/8")}
	f.Fuzz(func(t *testing.T, l1, l2 string, cb []byte, style uint8) {
		c, ok := netip.AddrFromSlice(cb)
		if !ok {
			return
		}
		c = c.Unmap()
		if trustedAddr(trusted, c) || c.Zone() != "" {
			return
		}
		var lines []string
		for _, l := range []string{l1, l2} {
			if l != "" && !strings.ContainsAny(l, "\r\n\x00") {
				lines = append(lines, l)
			}
		}
		cs := c.String()
		var xff []string
		switch style % 4 {
		case 0: // nginx: "$http_x_forwarded_for, $remote_addr"
			if len(lines) > 0 {
				xff = []string{strings.Join(lines, ", ") + ", " + cs}
			} else {
				xff = []string{cs}
			}
		case 1: // HAProxy: a header line of its own
			xff = append(append(xff, lines...), cs)
		case 2: // Envoy: appended to the last line with a comma
			if len(lines) > 0 {
				xff = append(append(xff, lines[:len(lines)-1]...), lines[len(lines)-1]+","+cs)
			} else {
				xff = []string{cs}
			}
		case 3: // two proxies: the client's, then a trusted one
			xff = append(append(xff, lines...), cs+", 10.0.0.7")
		}
		r := &http.Request{RemoteAddr: "192.0.2.1:4711", Header: http.Header{"X-Forwarded-For": xff}}
		if got := clientIP(r, trusted); got != cs {
			t.Fatalf("clientIP(%q) = %q, want the proxy's client %s", xff, got, cs)
		}
	})
}
