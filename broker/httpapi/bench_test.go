package httpapi_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/policies"
)

// BenchmarkTokenEndpoint measures one exchange through the HTTP API over a
// loopback keep-alive connection (client and server in this process): form
// parsing, the Service (map-backed identities, a minter and audit sink that
// do nothing, the in-memory store) and the JSON answer, next to its
// baseline, GET /healthz on the same server and connection. The difference
// is what the exchange adds to an HTTP round trip; allocs/op counts both
// sides of the connection.
func BenchmarkTokenEndpoint(b *testing.B) {
	pol := testPolicy(b, "", "")
	authn := brokertest.Authn{goodToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "repo:acme/deploy",
		Claims: map[string]any{"sub": "repo:acme/deploy"}}}
	svc, err := broker.NewService(broker.Deps{
		Policy:  func() *policies.Policy { return pol },
		Authn:   func() broker.Authenticator { return authn },
		Minters: map[string]broker.Minter{broker.KindVaultToken: brokertest.QuietMinter{}},
		Store:   memstore.New(time.Now),
		Audit:   brokertest.DiscardSink{},
	})
	if err != nil {
		b.Fatal(err)
	}
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example"})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(api.Routes())
	b.Cleanup(srv.Close)
	client := srv.Client()
	body := form().Encode()

	do := func(b *testing.B, newReq func() *http.Request) {
		b.Helper()
		resp, err := client.Do(newReq())
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			b.Fatalf("status %d, want 200", resp.StatusCode)
		}
	}
	for _, c := range []struct {
		name   string
		newReq func() *http.Request
	}{
		{"healthz", func() *http.Request {
			r, _ := http.NewRequest(http.MethodGet, srv.URL+"/healthz", nil)
			return r
		}},
		{"exchange", func() *http.Request {
			r, _ := http.NewRequest(http.MethodPost, srv.URL+"/v1/token", strings.NewReader(body))
			r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			return r
		}},
	} {
		b.Run(c.name, func(b *testing.B) {
			do(b, c.newReq) // the connection is open before the clock starts
			b.ReportAllocs()
			for b.Loop() {
				do(b, c.newReq)
			}
		})
	}
}
