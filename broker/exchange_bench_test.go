package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// BenchmarkExchange measures Service.Exchange with the backend taken out:
// the in-memory store, a minter and audit sink that do nothing. "fake-authn"
// looks the identity up in a map; "es256-new-token" verifies a real ES256
// identity token (keys cached, signature checked every time, as for a token
// seen for the first time); "es256-repeat" presents the same token again
// (a verified-token cache hit: no signature check).
func BenchmarkExchange(b *testing.B) {
	pol, err := policies.Parse("bench.yaml", []byte(brokertest.PaymentsPolicy))
	if err != nil {
		b.Fatal(err)
	}
	// The ES256 cases' policy trusts the test issuer (the service checks
	// that the policy in force names the identity's iss).
	_, tok, text := brokertest.PaymentsES256(b)
	polES, err := policies.Parse("bench.yaml", []byte(text))
	if err != nil {
		b.Fatal(err)
	}
	issuers := polES.Issuers()
	es, err := authn.New(context.Background(), authn.Options{Issuers: issuers, VerifiedCacheSize: -1})
	if err != nil {
		b.Fatal(err)
	}
	esCached, err := authn.New(context.Background(), authn.Options{Issuers: issuers})
	if err != nil {
		b.Fatal(err)
	}
	fake := brokertest.Authn{"payments": identity("system:serviceaccount:payments:api", map[string]any{
		"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}},
	})}
	for _, c := range []struct {
		name  string
		pol   *policies.Policy
		authn broker.Authenticator
		token string
	}{
		{"fake-authn", pol, fake, "payments"},
		{"es256-new-token", polES, es, tok},
		{"es256-repeat", polES, esCached, tok},
	} {
		b.Run(c.name, func(b *testing.B) {
			svc, err := broker.NewService(broker.Deps{
				Policy:  func() *policies.Policy { return c.pol },
				Authn:   func() broker.Authenticator { return c.authn },
				Minters: map[string]broker.Minter{broker.KindVaultToken: brokertest.QuietMinter{}},
				Store:   memstore.New(time.Now),
				Audit:   brokertest.DiscardSink{},
			})
			if err != nil {
				b.Fatal(err)
			}
			req := broker.ExchangeRequest{SubjectToken: c.token, Grant: "payments-vault", Source: broker.Source{IP: "127.0.0.1"}}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if _, err := svc.Exchange(ctx, req); err != nil {
					b.Fatalf("Exchange() = %v", err)
				}
			}
		})
	}
}
