package httpapi_test

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/policies"
)

// TestIntrospectResourceServerNotThrottled: a resource server introspects
// every request it receives (RFC 7662; README: "a service that must honour
// revocation introspects the JWTs it receives"). With the default limits
// (DefaultIntrospectLimits, 100/s after a burst of 1000) a burst of 1000
// introspections at one clock reading is answered, whether the caller
// matches no workload or matches one whose exchange rate is the SPEC
// example's {per_second: 5, burst: 20} (the default is a floor a workload's
// rate only raises); the next is 429, with Retry-After 1 (one token back
// at 100/s). IntrospectLimits.PerSecond -1 turns the limit off.
func TestIntrospectResourceServerNotThrottled(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	pol := testPolicy(t, "    rate: {per_second: 5, burst: 20}", "")
	authn := brokertest.Authn{goodToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "repo:acme/deploy",
		Claims: map[string]any{"sub": "repo:acme/deploy"}},
		callerToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "repo:acme/verifier", JTI: "caller-jti-1",
			Claims: map[string]any{"sub": "repo:acme/verifier"}}}
	routes := func(t *testing.T, lim broker.IntrospectLimits) http.Handler {
		svc, err := broker.NewService(broker.Deps{
			Policy:           func() *policies.Policy { return pol },
			Authn:            func() broker.Authenticator { return authn },
			Store:            memstore.New(func() time.Time { return now }),
			Audit:            &brokertest.Sink{},
			Now:              func() time.Time { return now },
			IntrospectLimits: lim,
		})
		if err != nil {
			t.Fatal(err)
		}
		api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example",
			Ready: func(ctx context.Context) error { return nil }})
		if err != nil {
			t.Fatal(err)
		}
		return api.Routes()
	}
	introspect := func(h http.Handler, token string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/v1/introspect", strings.NewReader(url.Values{"token": {"hvs.whatever"}}.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("Authorization", "Bearer "+token)
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	callers := []struct{ name, token string }{{"no-workload", callerToken}, {"workload-rate-5", goodToken}}
	h := routes(t, broker.IntrospectLimits{})
	for _, c := range callers {
		t.Run(c.name, func(t *testing.T) {
			for i := 0; i < broker.DefaultIntrospectLimits.Burst; i++ {
				if w := introspect(h, c.token); w.Code != http.StatusOK {
					t.Fatalf("introspection %d of a resource server's burst = %d %s, want 200", i+1, w.Code, w.Body)
				}
			}
			w := introspect(h, c.token)
			if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "1" {
				t.Fatalf("introspection past the default burst = %d (Retry-After %q) %s, want 429, Retry-After 1", w.Code, w.Header().Get("Retry-After"), w.Body)
			}
		})
	}
	t.Run("off", func(t *testing.T) {
		h := routes(t, broker.IntrospectLimits{PerSecond: -1})
		for _, c := range callers {
			for i := 0; i < broker.DefaultIntrospectLimits.Burst+10; i++ {
				if w := introspect(h, c.token); w.Code != http.StatusOK {
					t.Fatalf("%s: introspection %d with the limit off = %d %s, want 200", c.name, i+1, w.Code, w.Body)
				}
			}
		}
	})
}
