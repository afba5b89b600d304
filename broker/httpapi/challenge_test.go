package httpapi_test

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
)

// TestUnauthorizedChallenges: a 401 of a protected resource (introspection,
// the admin API) says invalid_token in its body, its WWW-Authenticate and its
// audit event alike; a request that sent no Bearer token gets a challenge
// naming no error (RFC 6750 §3.1). POST /v1/token keeps the SPEC's
// invalid_grant, with a challenge that does not contradict it.
func TestUnauthorizedChallenges(t *testing.T) {
	introspect := url.Values{"token": {"whatever"}}.Encode()
	exchange := url.Values{
		"grant_type": {broker.GrantTypeTokenExchange}, "subject_token": {"forged"},
		"subject_token_type": {broker.TokenTypeJWT}, "audience": {"deploy-vault"},
	}.Encode()
	const (
		formCT = "application/x-www-form-urlencoded"
		bare   = `Bearer realm="keytrail"`
		bad    = `Bearer error="invalid_token"`
	)
	tests := []struct {
		name, method, path, auth, ct, body string
		code, challenge                    string
	}{
		{"fail/introspect-no-token", "POST", "/v1/introspect", "", formCT, introspect, "invalid_token", bare},
		{"fail/introspect-basic-auth", "POST", "/v1/introspect", "Basic dXNlcjpwYXNz", formCT, introspect, "invalid_token", bare},
		{"fail/introspect-forged-token", "POST", "/v1/introspect", "Bearer forged", formCT, introspect, "invalid_token", bad},
		{"fail/revoke-no-token", "POST", "/v1/admin/revoke", "", jsonCT, `{"workload":"deployer","reason":"x"}`, "invalid_token", bare},
		{"fail/revoke-forged-token", "POST", "/v1/admin/revoke", "Bearer forged", jsonCT, `{"workload":"deployer","reason":"x"}`, "invalid_token", bad},
		{"fail/blocks-no-token", "GET", "/v1/admin/blocks", "", "", "", "invalid_token", bare},
		{"fail/issuances-forged-token", "GET", "/v1/admin/issuances", "Bearer forged", "", "", "invalid_token", bad},
		{"fail/token-forged-subject", "POST", "/v1/token", "", formCT, exchange, "invalid_grant", bare},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAdminFixture(t)
			req, err := http.NewRequest(tt.method, f.srv.URL+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			if tt.auth != "" {
				req.Header.Set("Authorization", tt.auth)
			}
			if tt.ct != "" {
				req.Header.Set("Content-Type", tt.ct)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body struct {
				Error string `json:"error"`
			}
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("body is not JSON: %v", err)
			}
			evs := f.sink.Events()
			if len(evs) == 0 || evs[len(evs)-1].Outcome == nil {
				t.Fatalf("audit events = %v, want the refusal recorded", f.sink.Types())
			}
			last := evs[len(evs)-1].Outcome
			got := []any{resp.StatusCode, body.Error, resp.Header.Get("WWW-Authenticate"), last.Status, last.Error}
			want := []any{401, tt.code, tt.challenge, 401, tt.code}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("%s %s (status, error, WWW-Authenticate, audit status, audit error) = got, want want (-want +got):\n%s", tt.method, tt.path, diff)
			}
		})
	}
}

// TestDeniesCountedByReason: refused introspections and admin calls count in
// keytrail_denies_total by reason, as refused exchanges do, so a flood of
// bad tokens on any of them shows on /metrics.
func TestDeniesCountedByReason(t *testing.T) {
	f := newAdminFixture(t)
	send := func(method, path, auth, ct, body string) {
		t.Helper()
		req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		if ct != "" {
			req.Header.Set("Content-Type", ct)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 401 && resp.StatusCode != 403 {
			t.Fatalf("%s %s = %d, want a refusal", method, path, resp.StatusCode)
		}
	}
	const formCT = "application/x-www-form-urlencoded"
	introspect := url.Values{"token": {"whatever"}}.Encode()
	send("POST", "/v1/introspect", "Bearer forged", formCT, introspect)
	send("POST", "/v1/introspect", "Bearer forged", formCT, introspect)
	send("POST", "/v1/introspect", "", formCT, introspect)
	send("GET", "/v1/admin/blocks", "Bearer forged", "", "")
	send("GET", "/v1/admin/blocks", "", "", "")
	send("GET", "/v1/admin/blocks", "Bearer nobody", "", "")
	send("POST", "/v1/token", "", formCT, url.Values{
		"grant_type": {broker.GrantTypeTokenExchange}, "subject_token": {"forged"},
		"subject_token_type": {broker.TokenTypeJWT}, "audience": {"deploy-vault"},
	}.Encode())

	wantMetrics(t, f.srv.URL,
		`keytrail_denies_total{reason="bad_signature"} 4`,
		`keytrail_denies_total{reason="missing_caller_token"} 1`,
		`keytrail_denies_total{reason="missing_admin_token"} 1`,
		`keytrail_denies_total{reason="not_admin"} 1`,
	)
}
