package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/adapters/redisstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// BenchmarkExchangeBackends measures Service.Exchange in process with the
// real store and audit sink of scenario C (redisstore against a
// redis-server of its own, the auditfile sink without fsync, so that the
// disk does not set the pace) and a minter that does nothing: an ES256
// identity token verified in full every time (the verified-token cache
// off, as for a new token), the issuance record written to Redis and the
// issue event sealed and written. No HTTP. allocs/op and instructions
// (valgrind) are the broker's own per exchange; Redis runs in its own
// process. KEYTRAIL_BENCH_REDIS_URL names a running Redis to use instead
// of starting one (under valgrind, whose callgrind aborts on the signals of
// a child process).
func BenchmarkExchangeBackends(b *testing.B) {
	_, tok, text := brokertest.PaymentsES256(b)
	pol, err := policies.Parse("bench.yaml", []byte(text))
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	an, err := authn.New(ctx, authn.Options{Issuers: pol.Issuers(), VerifiedCacheSize: -1})
	if err != nil {
		b.Fatal(err)
	}
	url := os.Getenv("KEYTRAIL_BENCH_REDIS_URL")
	if url == "" {
		url = harness.StartRedis(b).URL()
	}
	store, err := redisstore.New(ctx, redisstore.Options{URL: url})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = store.Close() })
	sink, err := auditfile.Open(auditfile.Options{Path: filepath.Join(b.TempDir(), "audit.jsonl"), ChainID: "bench", NoFsync: true})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = sink.Close() })
	svc, err := broker.NewService(broker.Deps{
		Policy:  func() *policies.Policy { return pol },
		Authn:   func() broker.Authenticator { return an },
		Minters: map[string]broker.Minter{broker.KindVaultToken: brokertest.QuietMinter{}},
		Store:   store,
		Audit:   sink,
	})
	if err != nil {
		b.Fatal(err)
	}
	req := broker.ExchangeRequest{SubjectToken: tok, Grant: "payments-vault", Source: broker.Source{IP: "127.0.0.1", UserAgent: "bench"}}
	if _, err := svc.Exchange(ctx, req); err != nil { // fetches the JWKS
		b.Fatalf("Exchange() = %v", err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := svc.Exchange(ctx, req); err != nil {
			b.Fatalf("Exchange() = %v", err)
		}
	}
}
