package proxy

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/policies"
)

// The checks of a request read the policy's grant and workload without
// copying them (Policy.Grant and Policy.Workload: 7 allocations): with the
// lookups answered from memory, what is left is the fingerprint (the
// cached record was copied too until FindIssuanceWithin handed out the
// cache's own, read only). (Header.Get("HTTP2-Settings") made the name
// canonical, a third.)
func TestCheckPolicyNotCopiedAllocs(t *testing.T) {
	_, cache, _, c := lookupCall(t)
	if err := cache.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := c.check(); err != nil {
		t.Fatal(err)
	}
	n := testing.AllocsPerRun(200, func() {
		if err := c.check(); err != nil {
			t.Fatal(err)
		}
	})
	if n > 1 {
		t.Errorf("check answered from memory: %v allocations, want at most 1", n)
	}
}

// A policy reload is seen by the next request: the grant and workload it
// checks are the new policy's.
func TestCheckSeesPolicyReload(t *testing.T) {
	parse := func(doc string) *policies.Policy {
		t.Helper()
		pol, err := policies.Parse("p.yaml", []byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		return pol
	}
	var cur atomic.Pointer[policies.Policy]
	cur.Store(parse(lookupPolicy))
	_, cache, _, c := lookupCallPolicy(t, cur.Load)
	if err := cache.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	check := func(want string) {
		t.Helper()
		err := c.check()
		if got := broker.AsError(err); (want == "") != (err == nil) || (err != nil && got.Reason != want) {
			t.Fatalf("check() = %v, want reason %q", err, want)
		}
	}
	check("")
	// The grant's paths change: the new pattern is the one checked.
	cur.Store(parse(strings.Replace(lookupPolicy, `paths: ["/v1/charges"]`, `paths: ["/v1/refunds"]`, 1)))
	check("path_not_allowed")
	// The workload no longer has the grant.
	noGrant := strings.Replace(lookupPolicy, "grants: [stripe]", "grants: []", 1)
	cur.Store(parse(noGrant))
	check("grant_not_allowed")
	// The grant is gone.
	cur.Store(parse(strings.Replace(noGrant, "  - name: stripe\n    kind: proxy", "  - name: stripe2\n    kind: proxy", 1)))
	check("grant_removed")
	cur.Store(parse(lookupPolicy))
	check("")
}

// The header a grant injects its secret in is keyed as net/http keys it
// (canonical form, what Header.Set did on every request), once per policy:
// a policy may write it in any case.
func TestPolicyViewInjectHeaderCanonical(t *testing.T) {
	for _, tt := range []struct{ name, written, want string }{
		{"ok/canonical", "Authorization", "Authorization"},
		{"ok/lower-case", "x-api-key", "X-Api-Key"},
		{"ok/upper-case", "X-API-KEY", "X-Api-Key"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			doc := strings.Replace(lookupPolicy, "inject: {header: Authorization,", "inject: {header: "+tt.written+",", 1)
			pol, err := policies.Parse("p.yaml", []byte(doc))
			if err != nil {
				t.Fatal(err)
			}
			g, ok := newPolicyView(pol).grant("stripe")
			if !ok {
				t.Fatal("no grant stripe in the view")
			}
			if g.Proxy.Inject.Header != tt.written || g.injectHeader != tt.want {
				t.Errorf("inject header %q, keyed as %q; want %q, %q", g.Proxy.Inject.Header, g.injectHeader, tt.written, tt.want)
			}
		})
	}
}
