package proxy

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

const lookupPolicy = `
version: 1
issuers:
  - name: ci
    issuer: https://ci.example
    jwks_url: https://ci.example/jwks
    audiences: [keytrail]
    algorithms: [ES256]
workloads:
  - name: payments
    owner: team-payments
    match: {issuer: ci, subject: repo:acme/payments}
    grants: [stripe]
grants:
  - name: stripe
    kind: proxy
    ttl: 10m
    proxy:
      upstream: https://api.stripe.example
      secret: {vault_kv: secret/data/upstreams/stripe, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      paths: ["/v1/charges"]
`

// lookupCall returns a proxy over a RevocationCache (FastReads) in front of
// a brokertest.DeadlineStore holding one proxy credential, and a request with it.
func lookupCall(t *testing.T) (*Proxy, *broker.RevocationCache, *brokertest.DeadlineStore, *call) {
	t.Helper()
	pol, err := policies.Parse("p.yaml", []byte(lookupPolicy))
	if err != nil {
		t.Fatal(err)
	}
	return lookupCallPolicy(t, func() *policies.Policy { return pol })
}

// lookupCallPolicy is lookupCall with the Service's policy read from pol.
func lookupCallPolicy(t *testing.T, pol func() *policies.Policy) (*Proxy, *broker.RevocationCache, *brokertest.DeadlineStore, *call) {
	t.Helper()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	const tok = TokenPrefix + "01JABCDEFGHJKMNPQRSTVWXYZ0123456789abcdef"
	ms := memstore.New(clock)
	is := &broker.Issuance{ID: "iss_1", Workload: "payments", Owner: "team-payments", Grant: "stripe", Kind: broker.KindProxy,
		IssuedAt: now, ExpiresAt: now.Add(10 * time.Minute),
		Refs: broker.CredentialRefs{Fingerprint: broker.Fingerprint(tok), ExpiresAt: now.Add(10 * time.Minute)}}
	if err := ms.PutIssuance(context.Background(), is); err != nil {
		t.Fatal(err)
	}
	ds := &brokertest.DeadlineStore{Store: ms}
	cache, err := broker.NewRevocationCache(ds, broker.CacheOptions{FastReads: true, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	svc, err := broker.NewService(broker.Deps{
		Policy: pol,
		Authn:  func() broker.Authenticator { return brokertest.Authn{} },
		Store:  cache.Store(),
		Audit:  &brokertest.Sink{},
		Now:    clock,
	})
	if err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{Service: svc, Secrets: nopSecrets{}, StoreTimeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r := httptest.NewRequest(http.MethodGet, "/v1/proxy/stripe/v1/charges", nil)
	r.SetPathValue("grant", "stripe")
	r.Header.Set("Authorization", "Bearer "+tok)
	return p, cache, ds, &call{h: &handler{p: p}, r: r}
}

type nopSecrets struct{}

func (nopSecrets) Secret(context.Context, policies.ProxySecret) (string, error) { return "", nil }

// Every lookup of a proxied request's checks that goes to the Store still
// has StoreTimeout to run (the view not fresh yet: both go to the Store;
// the record not fetched yet: the credential lookup does).
func TestCheckStoreCallsHaveStoreTimeout(t *testing.T) {
	check := func(t *testing.T, ds *brokertest.DeadlineStore, want int) {
		t.Helper()
		calls := ds.Calls()
		if len(calls) != want {
			t.Fatalf("Store calls = %d, want %d", len(calls), want)
		}
		for i, left := range calls {
			if left <= 2*time.Second || left > 3*time.Second {
				t.Errorf("Store call %d had %v left, want StoreTimeout (3s)", i, left)
			}
		}
	}
	t.Run("ok/view-not-fresh", func(t *testing.T) {
		_, _, ds, c := lookupCall(t)
		if err := c.check(); err != nil {
			t.Fatal(err)
		}
		check(t, ds, 2) // lookup and block check
	})
	t.Run("ok/record-not-fetched", func(t *testing.T) {
		_, cache, ds, c := lookupCall(t)
		if err := cache.Refresh(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := c.check(); err != nil {
			t.Fatal(err)
		}
		check(t, ds, 1) // the lookup; the fresh view answers the block check
	})
}

// A request whose credential lookup and block check the revocation cache
// answers from memory (FastReads, view fresh, record fetched) makes no Store
// call and no deadline context. Its checks allocated 13 times when this
// test was written (2 since, see TestCheckPolicyNotCopiedAllocs). Each
// context.WithTimeout added 4 allocations and a timer (21 with the two).
func TestCheckFromMemoryAllocs(t *testing.T) {
	_, cache, ds, c := lookupCall(t)
	if err := cache.Refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := c.check(); err != nil { // fetches the record into the cache
		t.Fatal(err)
	}
	before := len(ds.Calls())
	n := testing.AllocsPerRun(200, func() {
		if err := c.check(); err != nil {
			t.Fatal(err)
		}
	})
	if got := len(ds.Calls()) - before; got != 0 {
		t.Errorf("checks answered from memory made %d Store calls, want 0", got)
	}
	if n > 13 {
		t.Errorf("check answered from memory: %v allocations, want at most 13 (no deadline contexts)", n)
	}
}
