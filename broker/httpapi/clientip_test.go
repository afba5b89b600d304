package httpapi

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

func TestClientIP(t *testing.T) {
	// The front proxies: 192.0.2.1 (the broker's peer below unless a case
	// says otherwise) and the network 10.0.0.0/8 behind it.
	proxies := []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("2001:db8:f::/48")}
	tests := []struct {
		name    string
		peer    string   // RemoteAddr; "" = 192.0.2.1:4711
		xff     []string // X-Forwarded-For header lines, in order
		trusted []netip.Prefix
		want    string
	}{
		{name: "ok/remote-addr", trusted: proxies, want: "192.0.2.1"},
		{name: "ok/no-trusted-proxies-xff-ignored", xff: []string{"198.51.100.4"}, want: "192.0.2.1"},
		{name: "ok/one-entry", xff: []string{"198.51.100.4"}, trusted: proxies, want: "198.51.100.4"},
		// The caller sent "127.0.0.1"; the front proxy appended the address
		// it saw. The caller's entry must not be taken.
		{name: "ok/caller-entry-not-taken", xff: []string{"127.0.0.1, 198.51.100.4"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/no-space", xff: []string{"127.0.0.1,198.51.100.4"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/last-header-line", xff: []string{"127.0.0.1", "203.0.113.9, 198.51.100.4"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/ipv6", xff: []string{"2001:db8::1"}, trusted: proxies, want: "2001:db8::1"},
		// A caller reaching the broker directly (not through a trusted
		// proxy) is its own source whatever X-Forwarded-For it sends.
		{name: "ok/direct-peer-xff-ignored", peer: "203.0.113.66:4711", xff: []string{"198.51.100.4"}, trusted: proxies, want: "203.0.113.66"},
		{name: "ok/direct-peer-names-a-proxy", peer: "203.0.113.66:4711", xff: []string{"10.0.0.7"}, trusted: proxies, want: "203.0.113.66"},
		{name: "ok/direct-ipv6-peer", peer: "[2001:db8::66]:4711", xff: []string{"198.51.100.4"}, trusted: proxies, want: "2001:db8::66"},
		// Two proxies: the outer one (10.0.0.7) appended the client, the
		// inner one (the peer) appended the outer one.
		{name: "ok/chain-rightmost-untrusted", xff: []string{"127.0.0.1, 198.51.100.4, 10.0.0.7"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/chain-across-header-lines", xff: []string{"127.0.0.1, 198.51.100.4", "10.0.0.7", "10.2.0.1"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/chain-ipv6-proxy", xff: []string{"198.51.100.4, 2001:db8:f::2"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/chain-ipv4-mapped-proxy", xff: []string{"198.51.100.4, ::ffff:10.0.0.7"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/ipv4-mapped-peer", peer: "[::ffff:192.0.2.1]:4711", xff: []string{"198.51.100.4"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/all-trusted-leftmost", xff: []string{"10.0.0.9, 10.0.0.7"}, trusted: proxies, want: "10.0.0.9"},
		// An entry with the port the proxy saw (Azure's Application
		// Gateway appends one), or an IPv6 address in brackets, is that
		// address, as nginx's real_ip module reads it.
		{name: "ok/entry-with-port", xff: []string{"127.0.0.1, 198.51.100.4:5678"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/ipv6-entry-with-port", xff: []string{"127.0.0.1, [2001:db8::1]:80"}, trusted: proxies, want: "2001:db8::1"},
		{name: "ok/ipv6-entry-in-brackets", xff: []string{"[2001:db8::1]"}, trusted: proxies, want: "2001:db8::1"},
		{name: "ok/ipv6-zone-entry-with-port", xff: []string{"[fe80::1%eth0]:80"}, trusted: proxies, want: "fe80::1"},
		{name: "ok/mapped-entry-with-port", xff: []string{"[::ffff:198.51.100.4]:80"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/proxy-entry-with-port", xff: []string{"127.0.0.1, 198.51.100.4, 10.0.0.7:443"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/ipv6-proxy-entry-with-port", xff: []string{"198.51.100.4, [2001:db8:f::2]:443"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/direct-peer-entry-with-port-ignored", peer: "203.0.113.66:4711", xff: []string{"198.51.100.4:5678"}, trusted: proxies, want: "203.0.113.66"},
		{name: "fail/empty-port", xff: []string{"127.0.0.1, 198.51.100.4:"}, trusted: proxies, want: "192.0.2.1"},
		{name: "fail/port-out-of-range", xff: []string{"127.0.0.1, 198.51.100.4:65536"}, trusted: proxies, want: "192.0.2.1"},
		{name: "fail/ipv4-in-brackets", xff: []string{"127.0.0.1, [198.51.100.4]:80"}, trusted: proxies, want: "192.0.2.1"},
		{name: "fail/unclosed-bracket", xff: []string{"127.0.0.1, [2001:db8::1"}, trusted: proxies, want: "192.0.2.1"},
		{name: "fail/not-an-address", xff: []string{"127.0.0.1, bogus"}, trusted: proxies, want: "192.0.2.1"},
		// Empty entries are skipped, as nginx's real_ip module does (it
		// reads a run of commas and spaces as one separator): a proxy that
		// passed on "a, , b" or a trailing comma does not make every
		// caller behind it the last trusted hop.
		{name: "ok/empty-last-entry", xff: []string{"198.51.100.4, "}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/empty-entry-past-a-proxy", xff: []string{"127.0.0.1, 198.51.100.4, , 10.0.0.7"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/empty-entry-between-proxies", xff: []string{"198.51.100.4,,10.0.0.9, ,10.0.0.7"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/empty-header-line", xff: []string{"198.51.100.4", "", "10.0.0.7"}, trusted: proxies, want: "198.51.100.4"},
		// An empty entry the caller sent is left of the entry its proxy
		// appended: it chooses nothing.
		{name: "ok/caller-empty-entry-not-read", xff: []string{"127.0.0.1, , 198.51.100.4"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/only-empty-entries", xff: []string{" , ,,"}, trusted: proxies, want: "192.0.2.1"},
		{name: "ok/all-trusted-empty-leftmost", xff: []string{", 10.0.0.9, 10.0.0.7"}, trusted: proxies, want: "10.0.0.9"},
		// A space separates entries too, as in nginx's real_ip module
		// (it reads back from the end to a space or a comma): "a b" is
		// two entries, not one that is not an address (which stopped
		// the walk at the last trusted hop: the proxy).
		{name: "ok/space-separated", xff: []string{"127.0.0.1 198.51.100.4"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/space-separated-proxy", xff: []string{"198.51.100.4 10.0.0.7"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/space-separated-caller-entry-not-taken", xff: []string{"203.0.113.9 127.0.0.1, 198.51.100.4"}, trusted: proxies, want: "198.51.100.4"},
		{name: "ok/space-separated-all-trusted-leftmost", xff: []string{"10.0.0.9  10.0.0.7"}, trusted: proxies, want: "10.0.0.9"},
		{name: "fail/space-separated-not-an-address-past-a-proxy", xff: []string{"bogus 10.0.0.7"}, trusted: proxies, want: "10.0.0.7"},
		{name: "fail/not-an-address-past-a-proxy", xff: []string{"bogus, 10.0.0.7"}, trusted: proxies, want: "10.0.0.7"},
		{name: "fail/peer-not-an-address", peer: "pipe", xff: []string{"198.51.100.4"}, trusted: proxies, want: "pipe"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: "192.0.2.1:4711", Header: http.Header{}}
			if tt.peer != "" {
				r.RemoteAddr = tt.peer
			}
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := clientIP(r, tt.trusted); got != tt.want {
				t.Errorf("clientIP(%s, %q, %v) = %q, want %q", r.RemoteAddr, tt.xff, tt.trusted, got, tt.want)
			}
		})
	}
}

func TestParseTrustedProxy(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{in: "127.0.0.1", want: "127.0.0.1/32"},
		{in: "::1", want: "::1/128"},
		{in: "10.0.0.0/8", want: "10.0.0.0/8"},
		{in: "10.1.2.3/8", want: "10.0.0.0/8"},
		{in: "fd00::/8", want: "fd00::/8"},
		{in: "::ffff:10.0.0.7", want: "10.0.0.7/32"},
		{in: "::ffff:10.0.0.0/104", want: "10.0.0.0/8"},
		{in: "10.0.0.0/33", wantErr: `"10.0.0.0/33" is not an IP address or CIDR`},
		{in: "proxy.internal", wantErr: `"proxy.internal" is not an IP address or CIDR`},
		{in: "fe80::1%eth0", wantErr: "is not an IP address or CIDR"},
		{in: "", wantErr: `"" is not an IP address or CIDR`},
		{in: "::ffff:0.0.0.0/80", wantErr: "must be /96 or longer"},
	}
	for _, tt := range tests {
		p, err := ParseTrustedProxy(tt.in)
		switch {
		case tt.wantErr != "":
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("ParseTrustedProxy(%q) = %v, %v, want an error containing %q", tt.in, p, err, tt.wantErr)
			}
		case err != nil || p.String() != tt.want:
			t.Errorf("ParseTrustedProxy(%q) = %v, %v, want %s", tt.in, p, err, tt.want)
		}
	}
}

// FuzzClientIP: whatever X-Forwarded-For a request carries, the source is
// the peer's host, or an address that is not a trusted proxy, or the last
// trusted hop; from a peer that is not a trusted proxy, always the peer.
func FuzzClientIP(f *testing.F) {
	for _, s := range []string{"198.51.100.4", "127.0.0.1, 198.51.100.4, 10.0.0.7", "bogus, 10.0.0.7", "198.51.100.4, ", "::ffff:10.0.0.7", "fe80::1%eth0, 10.0.0.1", ",,,", "198.51.100.4:5678, [2001:db8::1]:80, 10.0.0.7:443", "[::1]", "127.0.0.1 198.51.100.4  10.0.0.7"} {
		f.Add("192.0.2.1:4711", s)
		f.Add("203.0.113.66:1", s)
	}
	trusted := []netip.Prefix{netip.MustParsePrefix("192.0.2.1/32"), netip.MustParsePrefix("10.0.0.0/8")}
	f.Fuzz(func(t *testing.T, peer, xff string) {
		r := &http.Request{RemoteAddr: peer, Header: http.Header{"X-Forwarded-For": {xff}}}
		got := clientIP(r, trusted)
		host := clientIP(r, nil)
		if got == host {
			return
		}
		if p, err := netip.ParseAddr(host); err != nil || !trustedAddr(trusted, p) {
			t.Fatalf("clientIP(%q, %q) = %q from a peer that is not a trusted proxy", peer, xff, got)
		}
		for _, e := range strings.FieldsFunc(xff, func(r rune) bool { return r == ',' || r == ' ' }) {
			e = strings.Trim(e, " \t")
			a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(e, "["), "]"))
			if err != nil {
				ap, perr := netip.ParseAddrPort(e) // an entry with a port
				a, err = ap.Addr(), perr
			}
			if err == nil && a.WithZone("").Unmap().String() == got {
				return
			}
		}
		t.Fatalf("clientIP(%q, %q) = %q, not the peer nor an entry of the header", peer, xff, got)
	})
}
