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

// TestIntrospectRateLimited pins SPEC-ADDITIONS' "a workload's own rate
// applies then": an authenticated caller's introspections are limited, so
// that a holder of a valid identity token cannot write introspect events
// without bound. A caller that matches a workload takes from a bucket its
// workload's rate sizes (its own, not the one its exchanges take from); a
// caller that matches none (a service introspecting what it was sent) from
// a bucket of its identity that IntrospectLimits size (here set low, under
// the workload's rate, which then sizes the workload's bucket). An admin is
// not limited, as its admin calls are not.
// Past the burst the call is answered 429 slow_down with Retry-After and
// audited as the other refused introspections are (an introspect event,
// outcome 429 slow_down, reason rate_limited).
func TestIntrospectRateLimited(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	pol := testPolicy(t, "    rate: {per_second: 0.5, burst: 2}", `
admins:
  - name: secops
    match: {issuer: ci, subject: repo:acme/secops}
    roles: [trace]
`)
	const adminToken = "eyJhbGciOiJFUzI1NiJ9.admin.sig"
	sink := &brokertest.Sink{}
	minter := &brokertest.Minter{}
	authn := brokertest.Authn{goodToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "repo:acme/deploy",
		Claims: map[string]any{"sub": "repo:acme/deploy"}},
		callerToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "repo:acme/verifier", JTI: "caller-jti-1",
			Claims: map[string]any{"sub": "repo:acme/verifier"}},
		adminToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "repo:acme/secops",
			Claims: map[string]any{"sub": "repo:acme/secops"}}}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: minter},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: minter},
		Store:    memstore.New(func() time.Time { return now }),
		Audit:    sink,
		Now:      func() time.Time { return now },
		// A floor under the workload's rate: the workload's rate sizes its
		// bucket.
		IntrospectLimits: broker.IntrospectLimits{PerSecond: 0.25, Burst: 1},
	})
	if err != nil {
		t.Fatal(err)
	}
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example",
		Ready: func(ctx context.Context) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	h := api.Routes()
	post := func(path, bearer string, form url.Values) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, path, strings.NewReader(form.Encode()))
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		if bearer != "" {
			r.Header.Set("Authorization", "Bearer "+bearer)
		}
		w := httptest.NewRecorder()
		h.ServeHTTP(w, r)
		return w
	}
	introspect := func(caller string) *httptest.ResponseRecorder {
		return post("/v1/introspect", caller, url.Values{"token": {"hvs.whatever"}})
	}
	limited := func(t *testing.T, w *httptest.ResponseRecorder, retryAfter string) {
		t.Helper()
		if w.Code != http.StatusTooManyRequests || !strings.Contains(w.Body.String(), `"slow_down"`) {
			t.Fatalf("introspection past the burst = %d %s, want 429 slow_down", w.Code, w.Body)
		}
		if got := w.Header().Get("Retry-After"); got != retryAfter {
			t.Errorf("Retry-After = %q, want %q", got, retryAfter)
		}
		evs := sink.Events()
		last := evs[len(evs)-1]
		if last.Type != "introspect" || last.Outcome == nil || last.Outcome.Status != 429 || last.Outcome.Reason != "rate_limited" ||
			last.RequestID != w.Header().Get("X-Request-Id") {
			t.Errorf("last event = %s %+v (request %s), want the 429's introspect event, reason rate_limited", last.Type, last.Outcome, last.RequestID)
		}
	}

	t.Run("workload", func(t *testing.T) {
		for i := 0; i < 2; i++ {
			if w := introspect(goodToken); w.Code != http.StatusOK {
				t.Fatalf("introspection %d within the burst = %d %s, want 200", i+1, w.Code, w.Body)
			}
		}
		limited(t, introspect(goodToken), "2") // one token at 0.5/s
		// The workload's exchanges have a bucket of their own.
		if w := post("/v1/token", "", form()); w.Code != http.StatusOK {
			t.Fatalf("exchange after the introspections = %d %s, want 200", w.Code, w.Body)
		}
		now = now.Add(2 * time.Second)
		if w := introspect(goodToken); w.Code != http.StatusOK {
			t.Fatalf("introspection once a token is back = %d %s, want 200", w.Code, w.Body)
		}
	})
	t.Run("no-workload", func(t *testing.T) {
		if w := introspect(callerToken); w.Code != http.StatusOK {
			t.Fatalf("introspection within the burst = %d %s, want 200", w.Code, w.Body)
		}
		limited(t, introspect(callerToken), "4") // one token at 0.25/s
		now = now.Add(4 * time.Second)
		if w := introspect(callerToken); w.Code != http.StatusOK {
			t.Fatalf("introspection once a token is back = %d %s, want 200", w.Code, w.Body)
		}
	})
	t.Run("admin", func(t *testing.T) {
		for i := 0; i < 20; i++ {
			if w := introspect(adminToken); w.Code != http.StatusOK {
				t.Fatalf("admin introspection %d = %d %s, want 200", i+1, w.Code, w.Body)
			}
		}
	})
}
