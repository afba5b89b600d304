package proxy

import (
	"net"
	"testing"

	"github.com/keytrail/keytrail/policies"
)

// A grant's transport is built once per grant and policy and found again
// without allocating (every proxied request asks); a change of what it is
// built from (policy hash, upstream, allow_private here) builds a new one.
func TestTransportCachedPerGrantAndPolicy(t *testing.T) {
	p := &Proxy{o: Options{MaxIdleConnsPerHost: 2, Resolver: net.DefaultResolver}, transports: map[string]*grantTransport{}}
	p.o.Timeouts.defaults()
	g := &policies.Grant{Name: "stripe", Kind: "proxy", Proxy: &policies.ProxyGrant{Upstream: "https://api.stripe.example"}}
	gt, err := p.transport("h1", g)
	if err != nil {
		t.Fatal(err)
	}
	if again, err := p.transport("h1", g); err != nil || again != gt {
		t.Fatalf("second call: %p, %v; want the first transport %p", again, err, gt)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = p.transport("h1", g) }); n != 0 {
		t.Errorf("cached transport: %v allocations, want 0", n)
	}
	for _, c := range []struct {
		name string
		hash string
		g    *policies.Grant
	}{
		{"policy hash", "h2", g},
		{"upstream", "h2", &policies.Grant{Name: "stripe", Kind: "proxy", Proxy: &policies.ProxyGrant{Upstream: "https://api2.stripe.example"}}},
		{"allow_private", "h2", &policies.Grant{Name: "stripe", Kind: "proxy", Proxy: &policies.ProxyGrant{Upstream: "https://api2.stripe.example", AllowPrivate: true}}},
	} {
		prev := p.transports["stripe"]
		nt, err := p.transport(c.hash, c.g)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if nt == prev {
			t.Errorf("%s changed: the old transport was kept", c.name)
		}
	}
}
