package broker_test

import (
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker"
)

// The texts of Fingerprint and SessionID are stored and logged: they must
// stay those of their original formulas, which are written out here.
func TestFingerprintAndSessionIDText(t *testing.T) {
	values := []string{"", "a", "kt_p_01JABCDEFGHJKMNPQRSTVWXYZ0123456789abcdefghijklmnop", strings.Repeat("x", 4096), "ünïcödé\x00\xff"}
	for _, v := range values {
		sum := sha256.Sum256([]byte(v))
		if got, want := broker.Fingerprint(v), "sha256:"+hex.EncodeToString(sum[:]); got != want {
			t.Errorf("Fingerprint(%.20q) = %q, want %q", v, got, want)
		}
		for _, iss := range []string{"", "k8s", "github-actions-production"} {
			sum := sha256.Sum256([]byte(iss + "\x00" + v))
			want := broker.PrefixSession + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:16]))
			if got := broker.SessionID(iss, v); got != want {
				t.Errorf("SessionID(%q, %.20q) = %q, want %q", iss, v, got, want)
			}
		}
	}
}

// Every exchange takes a fingerprint and a session id, every proxied request
// a fingerprint: each costs its string and at most one more allocation (the
// secret's bytes or the hash state), not four.
func TestFingerprintAndSessionIDAllocs(t *testing.T) {
	tok := "kt_p_01JABCDEFGHJKMNPQRSTVWXYZ0123456789abcdefghijklmnop"
	if n := testing.AllocsPerRun(100, func() { _ = broker.Fingerprint(tok) }); n > 2 {
		t.Errorf("Fingerprint: %v allocations, want at most 2", n)
	}
	if n := testing.AllocsPerRun(100, func() {
		_ = broker.SessionID("github-actions", "claim:3f2a9c1e-8b7d-4e5f-a6c3-123456789abc")
	}); n > 2 {
		t.Errorf("SessionID: %v allocations, want at most 2", n)
	}
}
