package broker

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// TestSourceRefusalTextNamesIPv6Network: an IPv6 source's refusals are
// counted by its /64, but the 429 past that bucket said "from this
// address", blaming a caller whose own address may have refused nothing
// (another host of its /64 did). It now says this /64; an IPv4 source's
// (and an IPv4-mapped one's) still says this address.
func TestSourceRefusalTextNamesIPv6Network(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	svc, err := NewService(Deps{Policy: func() *policies.Policy { return nil }, Authn: func() Authenticator { return nil },
		Store: nopStore{}, Audit: &recordingSink{}, Now: func() time.Time { return t0 },
		RefusalLimits: &RefusalLimits{PerSecond: 1, Burst: 1, GlobalPerSecond: -1}})
	if err != nil {
		t.Fatal(err)
	}
	refuse := func(ip string) error {
		return svc.refuseAnonymous(context.Background(), &audit.Event{Type: audit.TypeDeny}, Source{IP: ip},
			Errorf(ErrUnauthenticated, "token_expired", "the identity token has expired", nil))
	}
	for _, tc := range []struct{ first, second, want, not string }{
		// Two hosts of one /64: the second is refused for the first's.
		{first: "2001:db8:1:2::1", second: "2001:db8:1:2::99", want: "from this /64 (its IPv6 network)", not: "from this address"},
		{first: "192.0.2.7", second: "192.0.2.7", want: "from this address", not: "/64"},
		{first: "::ffff:192.0.2.8", second: "::ffff:192.0.2.8", want: "from this address", not: "/64"},
	} {
		if err := refuse(tc.first); SuppressedScope(err) != "" {
			t.Fatalf("first refusal of %s suppressed: %v", tc.first, err)
		}
		err := refuse(tc.second)
		if SuppressedScope(err) != RefusalScopeSource {
			t.Fatalf("refusal of %s after %s = %v, want suppressed by its source's bucket", tc.second, tc.first, err)
		}
		if safe := AsError(err).Safe; !strings.Contains(safe, tc.want) || strings.Contains(safe, tc.not) || !strings.Contains(safe, "the identity token has expired") {
			t.Errorf("429 of %s: %q; want %q (not %q) and the request's own reason", tc.second, safe, tc.want, tc.not)
		}
	}
}
