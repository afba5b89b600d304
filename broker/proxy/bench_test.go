package proxy_test

import (
	"io"
	"net/http"
	"slices"
	"testing"
	"time"
)

// BenchmarkProxy measures one request proxied through the broker (credential
// lookup, policy checks, use and use_result audit events to a sink that
// discards, secret injection, response scan) against BenchmarkDirect, the
// same request sent straight to the same upstream with the secret. Both
// reuse connections; compare with -benchmem. p50-ns and p99-ns are the
// latency percentiles of the run.
//
// memstore: the Service's store is memstore, asked on every request (it
// decodes the issuance's JSON each time) and the secret source on every
// request too (the figures of docs/PERFORMANCE.md before 2026-11-28 are
// this one's). cached: as keytrail server wires them, a RevocationCache
// with FastReads in front of the store and a secret source that answers
// from memory, so the credential lookup, block check and secret read of a
// request are all answered from memory. Both audit to discardSink, which
// like the server's audit file takes the use_result event through
// AppendDeferred (until 2026-11-29 it did not, and every request started
// a goroutine the server does not: 2 allocations and about 2.5k
// instructions of the figures before).
func BenchmarkProxy(b *testing.B) {
	for _, bc := range []struct {
		name string
		fo   fixtureOpts
	}{
		{"memstore", fixtureOpts{audit: discardSink{}}},
		{"cached", fixtureOpts{audit: discardSink{}, fastReads: true}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			f := newFixture(b, bc.fo)
			tok := f.credential(b, "stripe").AccessToken
			req, err := http.NewRequest("GET", "http://"+f.addr+"/v1/proxy/stripe/v1/charges?limit=3", nil)
			if err != nil {
				b.Fatal(err)
			}
			req.Header.Set("Authorization", "Bearer "+tok)
			run(b, f.client, req)
		})
	}
}

// BenchmarkProxyGzip is BenchmarkProxy with a gzipped response (about 2 KB
// decoded) that the broker decodes to scan: compare its allocations with
// BenchmarkProxy's for what decoding costs.
func BenchmarkProxyGzip(b *testing.B) {
	f := newFixture(b, fixtureOpts{audit: discardSink{}})
	tok := f.credential(b, "stripe").AccessToken
	req, err := http.NewRequest("GET", "http://"+f.addr+"/v1/proxy/stripe/up/gzipped", nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+tok)
	run(b, f.client, req)
}

func BenchmarkDirect(b *testing.B) {
	f := newFixture(b, fixtureOpts{audit: discardSink{}})
	client := f.up.srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64
	req, err := http.NewRequest("GET", f.up.srv.URL+"/v1/charges?limit=3", nil)
	if err != nil {
		b.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+upstreamKey)
	run(b, client, req)
}

func run(b *testing.B, client *http.Client, req *http.Request) {
	b.Helper()
	lat := make([]time.Duration, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		start := time.Now()
		res, err := client.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			b.Fatalf("status %d", res.StatusCode)
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds()), "p50-ns")
		b.ReportMetric(float64(lat[len(lat)*99/100].Nanoseconds()), "p99-ns")
	}
}
