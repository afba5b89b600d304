package broker_test

import (
	"testing"

	"github.com/keytrail/keytrail/broker"
)

// TestParseKeyID: ParseKeyID reads back what KeyID makes, splitting at the
// last ":", the rule the JWT minter (adapters/vault) and the JWKS
// (broker/jwks) both follow; anything KeyID does not make is not a KID.
func TestParseKeyID(t *testing.T) {
	for _, tt := range []struct {
		kid     string
		name    string
		version int
		ok      bool
	}{
		{"orders:3", "orders", 3, true},
		{"a:b:12", "a:b", 12, true},
		{"orders", "", 0, false},
		{":3", "", 0, false},
		{"orders:", "", 0, false},
		{"orders:0", "", 0, false},
		{"orders:-1", "", 0, false},
		{"orders:01", "", 0, false},
		{"orders:+1", "", 0, false},
		{"orders:1.0", "", 0, false},
		{"orders:3:x", "", 0, false},
	} {
		name, v, ok := broker.ParseKeyID(tt.kid)
		if name != tt.name || v != tt.version || ok != tt.ok {
			t.Errorf("ParseKeyID(%q) = %q, %d, %v, want %q, %d, %v", tt.kid, name, v, ok, tt.name, tt.version, tt.ok)
		}
		if tt.ok {
			if got := broker.KeyID(name, v); got != tt.kid {
				t.Errorf("KeyID(%q, %d) = %q, want %q", name, v, got, tt.kid)
			}
		}
	}
}
