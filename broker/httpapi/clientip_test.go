package httpapi

import (
	"net/http"
	"testing"
)

func TestClientIP(t *testing.T) {
	tests := []struct {
		name     string
		xff      []string // X-Forwarded-For header lines, in order
		trustXFF bool
		want     string
	}{
		{"ok/remote-addr", nil, true, "192.0.2.1"},
		{"ok/untrusted-xff-ignored", []string{"198.51.100.4"}, false, "192.0.2.1"},
		{"ok/one-entry", []string{"198.51.100.4"}, true, "198.51.100.4"},
		// The caller sent "127.0.0.1"; the front proxy appended the address
		// it saw. The caller's entry must not be taken.
		{"ok/caller-entry-not-taken", []string{"127.0.0.1, 198.51.100.4"}, true, "198.51.100.4"},
		{"ok/no-space", []string{"127.0.0.1,198.51.100.4"}, true, "198.51.100.4"},
		{"ok/last-header-line", []string{"127.0.0.1", "10.0.0.1, 198.51.100.4"}, true, "198.51.100.4"},
		{"ok/ipv6", []string{"2001:db8::1"}, true, "2001:db8::1"},
		{"fail/not-an-address", []string{"127.0.0.1, bogus"}, true, "192.0.2.1"},
		{"fail/empty-last-entry", []string{"198.51.100.4, "}, true, "192.0.2.1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := &http.Request{RemoteAddr: "192.0.2.1:4711", Header: http.Header{}}
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := clientIP(r, tt.trustXFF); got != tt.want {
				t.Errorf("clientIP(%q, %v) = %q, want %q", tt.xff, tt.trustXFF, got, tt.want)
			}
		})
	}
}
