package proxy_test

import (
	"io"
	"net/http"
	"testing"
)

// proxiedAllocs returns the allocations of one proxied request answered as
// keytrail server answers it (lookups from memory, audit events to a sink
// that discards them) beyond those of the same request sent straight to the
// upstream: what the broker adds, its second HTTP hop included. Counted over
// the whole process (client, broker, upstream), like BenchmarkProxy/cached
// against BenchmarkDirect.
func proxiedAllocs(t *testing.T) (proxied, direct float64) {
	t.Helper()
	f := newFixture(t, fixtureOpts{audit: discardSink{}, fastReads: true})
	tok := f.credential(t, "stripe").AccessToken
	preq, err := http.NewRequest("GET", "http://"+f.addr+"/v1/proxy/stripe/v1/charges?limit=3", nil)
	if err != nil {
		t.Fatal(err)
	}
	preq.Header.Set("Authorization", "Bearer "+tok)
	dclient := f.up.srv.Client()
	dreq, err := http.NewRequest("GET", f.up.srv.URL+"/v1/charges?limit=3", nil)
	if err != nil {
		t.Fatal(err)
	}
	dreq.Header.Set("Authorization", "Bearer "+upstreamKey)
	send := func(c *http.Client, req *http.Request) {
		res, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("status %d", res.StatusCode)
		}
	}
	for range 20 { // connections made, pools filled
		send(f.client, preq)
		send(dclient, dreq)
	}
	proxied = testing.AllocsPerRun(500, func() { send(f.client, preq) })
	direct = testing.AllocsPerRun(500, func() { send(dclient, dreq) })
	return proxied, direct
}

// TestProxyRequestAllocs bounds what a proxied request allocates beyond
// the direct request (BenchmarkProxy/cached against BenchmarkDirect; each
// allocation pass lowers the bound to what it reached):
//
//	147  with NewID, Fingerprint, the path checks and the policy view done
//	138  the response writer, the body's readers, the forwarded request's
//	     URL and the values of the headers the broker sets held in the call
//	135  the use and use_result events held in the call, the injected
//	     header's value kept with the secret's forms
//	133  httpapi's request id held in its status writer
//	129  one shared ReverseProxy (no hook closures per request), its
//	     context held in the call, the scan buffer handed back through
//	     its own pointer
//	127  the cached issuance record read without a copy, the copy buffer
//	     handed back without boxing a new pointer
//	125  not a saving: the sink is a DeferredAuditSink, as the server's
//	     audit file is, so use_result no longer takes the goroutine (and
//	     its closure and detached context) of Service.AuditDeferred for a
//	     sink without AppendDeferred, which the server never takes
//	117  the upstream response's header map staged as it is (adopt), not
//	     copied value by value by ReverseProxy, and no staged map made
//	     for it
func TestProxyRequestAllocs(t *testing.T) {
	const maxAdded = 117 + raceAllocs
	proxied, direct := proxiedAllocs(t)
	t.Logf("proxied %v, direct %v allocations, difference %v", proxied, direct, proxied-direct)
	if proxied-direct > maxAdded {
		t.Errorf("a proxied request allocates %v times more than a direct one, want at most %d", proxied-direct, maxAdded)
	}
}
