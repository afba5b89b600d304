package proxy

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/policies"
)

// TestReloadDropsTransportsOfRemovedGrants: the transport cache is keyed
// by grant name and its entries were only ever replaced, never deleted: a
// grant a reload removed kept its entry (transport, dialer, CA pool) for
// the process's life, and its idle upstream connections until their idle
// timeout. The first request of the new policy now drops the entries of
// the grants it no longer has, closing their idle connections; a grant
// still there keeps its connection pool, and a request still running under
// the old policy drops nothing the new one added.
func TestReloadDropsTransportsOfRemovedGrants(t *testing.T) {
	closed := make(chan struct{}, 1)
	up := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	up.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			select {
			case closed <- struct{}{}:
			default:
			}
		}
	}
	up.Start()
	t.Cleanup(up.Close)
	grant := func(name string) string {
		return `
  - name: ` + name + `
    kind: proxy
    ttl: 10m
    proxy:
      upstream: ` + up.URL + `
      allow_private: true
      secret: {vault_kv: secret/data/upstreams/` + name + `, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      paths: ["/x"]
`
	}
	parse := func(doc string) *policies.Policy {
		t.Helper()
		pol, err := policies.Parse("p.yaml", []byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		return pol
	}
	old := parse(lookupPolicy + strings.TrimPrefix(grant("github"), "\n"))
	cur := parse(lookupPolicy + strings.TrimPrefix(grant("gitlab"), "\n")) // github removed, gitlab added
	var inForce atomic.Pointer[policies.Policy]
	inForce.Store(old)
	p, cache, _, c := lookupCallPolicy(t, inForce.Load)
	if err := cache.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := c.check(); err != nil {
		t.Fatal(err)
	}
	resolve := func(pol *policies.Policy, name string) *grantTransport {
		t.Helper()
		g, ok := pol.Grant(name)
		if !ok {
			t.Fatalf("no grant %s", name)
		}
		gt, err := p.transport(pol, g)
		if err != nil {
			t.Fatal(err)
		}
		return gt
	}
	stripe := resolve(old, "stripe")
	github := resolve(old, "github")
	// One idle connection in github's pool.
	res, err := (&http.Client{Transport: github.rt, Timeout: 5 * time.Second}).Get(up.URL + "/x")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()

	inForce.Store(cur) // the reload
	if err := c.check(); err != nil {
		t.Fatal(err)
	}
	p.mu.Lock()
	_, githubKept := p.transports["github"]
	stripeNow := p.transports["stripe"]
	p.mu.Unlock()
	if githubKept {
		t.Error("the transport of grant github, removed by the reload, is still cached")
	}
	select {
	case <-closed:
	case <-time.After(10 * time.Second): // a bound on waiting for the close, not a timing being measured
		t.Error("the idle connection of the removed grant's transport was not closed")
	}
	if stripeNow != stripe {
		t.Error("the transport of grant stripe, unchanged by the reload, was dropped")
	}
	if again := resolve(cur, "stripe"); again.rt != stripe.rt {
		t.Error("grant stripe, unchanged by the reload: a new connection pool, want the old one kept")
	}

	// A request still running under the old policy builds its view again:
	// the transport the new policy's gitlab grant has is not dropped.
	gitlab := resolve(cur, "gitlab")
	p.viewOf(old)
	p.mu.Lock()
	gitlabNow := p.transports["gitlab"]
	p.mu.Unlock()
	if gitlabNow != gitlab {
		t.Error("a view built for the old policy after the reload dropped the new policy's gitlab transport")
	}
}
