package broker_test

import (
	"crypto/sha256"
	"encoding/base32"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"github.com/oklog/ulid/v2"

	"github.com/keytrail/keytrail/broker"
)

// The texts of Fingerprint and SessionID are stored and logged: they must
// stay those of their original formulas, which are written out here.
func TestFingerprintAndSessionIDText(t *testing.T) {
	values := []string{"", "a", "kt_p_01JABCDEFGHJKMNPQRSTVWXYZ0123456789abcdefghijklmnop", strings.Repeat("x", 128), strings.Repeat("y", 129), strings.Repeat("x", 4096), "ünïcödé\x00\xff"}
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
// a fingerprint: a session id costs its string and at most one more
// allocation (the hash state), not four; a fingerprint of a credential
// (up to 128 bytes) its string only.
func TestFingerprintAndSessionIDAllocs(t *testing.T) {
	for _, tok := range []string{"kt_p_01JABCDEFGHJKMNPQRSTVWXYZ0123456789abcdefghijklmnop", strings.Repeat("x", 128)} {
		if n := testing.AllocsPerRun(100, func() { _ = broker.Fingerprint(tok) }); n > 1 {
			t.Errorf("Fingerprint of %d bytes: %v allocations, want at most 1", len(tok), n)
		}
	}
	if n := testing.AllocsPerRun(100, func() {
		_ = broker.SessionID("github-actions", "claim:3f2a9c1e-8b7d-4e5f-a6c3-123456789abc")
	}); n > 2 {
		t.Errorf("SessionID: %v allocations, want at most 2", n)
	}
}

// Every proxied request takes two ids (its request id and its use id) and
// every exchange one or two: each is its string and nothing else.
func TestNewIDAllocs(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { _ = broker.NewID(broker.PrefixUse) }); n > 1 {
		t.Errorf("NewID: %v allocations, want at most 1", n)
	}
}

// NewID's text is the prefix and a ULID in Crockford base32, and ids made in
// a row sort in the order they were made (monotonic within the process, also
// within one millisecond).
func TestNewIDText(t *testing.T) {
	prev := ""
	for i := 0; i < 2000; i++ {
		for _, prefix := range []string{broker.PrefixUse, broker.PrefixRequest, "", "a_long_prefix_"} {
			id := broker.NewID(prefix)
			rest, ok := strings.CutPrefix(id, prefix)
			if !ok || len(rest) != ulid.EncodedSize {
				t.Fatalf("NewID(%q) = %q: not the prefix and %d characters", prefix, id, ulid.EncodedSize)
			}
			u, err := ulid.ParseStrict(rest)
			if err != nil || u.String() != rest {
				t.Fatalf("NewID(%q) = %q: not a ULID in canonical form (%v)", prefix, id, err)
			}
			if d := time.Since(ulid.Time(u.Time())); d < -time.Second || d > time.Minute {
				t.Fatalf("NewID(%q) = %q: time %s is not now", prefix, id, ulid.Time(u.Time()))
			}
			if rest <= prev {
				t.Fatalf("NewID(%q) = %q after ...%s: not increasing", prefix, id, prev)
			}
			prev = rest
		}
	}
}
