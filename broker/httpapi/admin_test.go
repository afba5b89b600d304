package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/policies"
)

const adminRolesYAML = `
admins:
  - name: secops
    match: {issuer: ci, claims: {groups: secops}}
    roles: [revoke]
  - name: auditors
    match: {issuer: ci, claims: {groups: audit}}
    roles: [trace]
`

// switchRevoker fails while err is set.
type switchRevoker struct {
	mu  sync.Mutex
	err error
}

func (r *switchRevoker) Revoke(ctx context.Context, is *broker.Issuance) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (r *switchRevoker) set(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.err = err
}

type adminFixture struct {
	srv  *httptest.Server
	sink *brokertest.Sink
	rv   *switchRevoker
	logs *brokertest.SyncBuffer
}

func newAdminFixture(t testing.TB) *adminFixture {
	t.Helper()
	pol := testPolicy(t, "", adminRolesYAML)
	id := func(sub string, claims map[string]any) *broker.Identity {
		c := map[string]any{"sub": sub}
		for k, v := range claims {
			c[k] = v
		}
		return &broker.Identity{IssuerName: "ci", Iss: "https://ci.example", Sub: sub, Claims: c}
	}
	authn := brokertest.Authn{
		"workload": id("repo:acme/deploy", nil),
		"revoker":  id("alice", map[string]any{"groups": "secops"}),
		"tracer":   id("bob", map[string]any{"groups": "audit"}),
		"nobody":   id("eve", map[string]any{"groups": "dev"}),
	}
	f := &adminFixture{sink: &brokertest.Sink{}, rv: &switchRevoker{}, logs: &brokertest.SyncBuffer{}}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: &brokertest.Minter{}},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: f.rv},
		Store:    memstore.New(time.Now),
		Audit:    f.sink,
	})
	if err != nil {
		t.Fatal(err)
	}
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example", Extra: httpapi.RegisterAdmin,
		Logger: slog.New(slog.NewJSONHandler(f.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(api.Routes())
	t.Cleanup(f.srv.Close)
	return f
}

// do sends one request and decodes the JSON answer.
func (f *adminFixture) do(t *testing.T, method, path, token, contentType, body string) (int, map[string]any, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.srv.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("%s %s: body is not JSON: %q", method, path, raw)
	}
	return resp.StatusCode, m, string(raw)
}

func (f *adminFixture) issue(t *testing.T) string {
	t.Helper()
	form := url.Values{
		"grant_type": {broker.GrantTypeTokenExchange}, "subject_token": {"workload"},
		"subject_token_type": {broker.TokenTypeJWT}, "audience": {"deploy-vault"},
	}
	status, body, _ := f.do(t, "POST", "/v1/token", "", "application/x-www-form-urlencoded", form.Encode())
	if status != 200 {
		t.Fatalf("exchange = %d %v", status, body)
	}
	return body["issuance_id"].(string)
}

const jsonCT = "application/json"

func TestAdminAuthorization(t *testing.T) {
	revokeBody := `{"workload":"deployer","reason":"incident"}`
	tests := []struct {
		name, method, path, token, body string
		status                          int
		code                            string
	}{
		{"ok/revoker-revokes", "POST", "/v1/admin/revoke", "revoker", revokeBody, 200, ""},
		{"ok/revoker-lists-blocks", "GET", "/v1/admin/blocks", "revoker", "", 200, ""},
		{"ok/tracer-lists-issuances", "GET", "/v1/admin/issuances?workload=deployer", "tracer", "", 200, ""},
		{"fail/no-token", "POST", "/v1/admin/revoke", "", revokeBody, 401, "invalid_token"},
		{"fail/bad-token", "POST", "/v1/admin/revoke", "forged", revokeBody, 401, "invalid_token"},
		{"fail/not-an-admin", "POST", "/v1/admin/revoke", "nobody", revokeBody, 403, "access_denied"},
		{"fail/workload-is-not-admin", "GET", "/v1/admin/blocks", "workload", "", 403, "access_denied"},
		{"fail/tracer-cannot-revoke", "POST", "/v1/admin/revoke", "tracer", revokeBody, 403, "access_denied"},
		{"fail/tracer-cannot-unblock", "DELETE", "/v1/admin/blocks/deployer", "tracer", "", 403, "access_denied"},
		{"fail/revoker-cannot-list-issuances", "GET", "/v1/admin/issuances", "revoker", "", 403, "access_denied"},
		{"fail/bad-body-from-stranger-is-401-not-400", "POST", "/v1/admin/revoke", "", `{"nope":1}`, 401, "invalid_token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAdminFixture(t)
			ct := ""
			if tt.body != "" {
				ct = jsonCT
			}
			status, body, _ := f.do(t, tt.method, tt.path, tt.token, ct, tt.body)
			if got := []any{status, body["error"]}; !cmp.Equal(got, []any{tt.status, nilIfEmpty(tt.code)}) {
				t.Errorf("%s %s as %q = %d %v, want %d %s", tt.method, tt.path, tt.token, status, body, tt.status, tt.code)
			}
			evs := f.sink.Events()
			if len(evs) == 0 || evs[0].Type != "admin" {
				t.Fatalf("first audit event = %v, want an admin event for every call", f.sink.Types())
			}
			wantStatus := 200
			if tt.status >= 400 {
				wantStatus = tt.status
			}
			if evs[0].Outcome == nil || evs[0].Outcome.Status != wantStatus {
				t.Errorf("admin event outcome = %+v, want status %d", evs[0].Outcome, wantStatus)
			}
			if tt.token == "nobody" && evs[0].Identity.Sub != "eve" {
				t.Errorf("denied admin event names %+v, want the caller eve", evs[0].Identity)
			}
		})
	}
}

func nilIfEmpty(s string) any {
	if s == "" {
		return nil
	}
	return s
}

func TestAdminRevokeRejectsBadBodies(t *testing.T) {
	tests := []struct {
		name, path, contentType, body string
		reason                        string
	}{
		{"fail/unknown-field", "/v1/admin/revoke", jsonCT, `{"workload":"deployer","reason":"x","dry_run":true}`, "bad_json"},
		{"fail/trailing-data", "/v1/admin/revoke", jsonCT, `{"workload":"deployer","reason":"x"} {}`, "bad_json"},
		{"fail/not-json", "/v1/admin/revoke", jsonCT, `workload=deployer`, "bad_json"},
		{"fail/form-content-type", "/v1/admin/revoke", "application/x-www-form-urlencoded", `{"workload":"deployer","reason":"x"}`, "bad_content_type"},
		{"fail/query-params", "/v1/admin/revoke?workload=deployer", jsonCT, `{"reason":"x"}`, "query_params"},
		{"fail/oversized", "/v1/admin/revoke", jsonCT, `{"workload":"deployer","reason":"` + strings.Repeat("a", 70<<10) + `"}`, "body_too_large"},
		{"fail/two-selectors", "/v1/admin/revoke", jsonCT, `{"workload":"deployer","owner":"team-platform","reason":"x"}`, "bad_selector"},
		{"fail/no-selector", "/v1/admin/revoke", jsonCT, `{"reason":"x"}`, "bad_selector"},
		{"fail/missing-reason", "/v1/admin/revoke", jsonCT, `{"workload":"deployer"}`, "missing_reason"},
		{"fail/wrong-type", "/v1/admin/revoke", jsonCT, `{"workload":"deployer","reason":"x","block":"yes"}`, "bad_json"},
		// encoding/json keeps the last of repeated names and folds case:
		// each of these would revoke deployer while the body first names
		// someone else.
		{"fail/repeated-field", "/v1/admin/revoke", jsonCT, `{"workload":"nobody","workload":"deployer","reason":"x"}`, "repeated_field"},
		{"fail/repeated-field-escaped", "/v1/admin/revoke", jsonCT, `{"workload":"nobody","work\u006coad":"deployer","reason":"x"}`, "repeated_field"},
		{"fail/case-variant", "/v1/admin/revoke", jsonCT, `{"workload":"nobody","Workload":"deployer","reason":"x"}`, "field_case"},
		{"fail/case-variant-alone", "/v1/admin/revoke", jsonCT, `{"WORKLOAD":"deployer","reason":"x"}`, "field_case"},
		{"fail/kelvin-sign-fold", "/v1/admin/revoke", jsonCT, `{"workload":"deployer","reason":"x","bloc\u212a":false}`, "field_case"},
		{"fail/session-case-variants", "/v1/admin/revoke", jsonCT, `{"session_id":"ses_a","Session_ID":"ses_b","reason":"x"}`, "field_case"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAdminFixture(t)
			id := f.issue(t)
			status, body, _ := f.do(t, "POST", tt.path, "revoker", tt.contentType, tt.body)
			if status != 400 || body["error"] != "invalid_request" {
				t.Errorf("POST %s = %d %v, want 400 invalid_request", tt.path, status, body)
			}
			if slices.Contains(f.sink.Types(), "revoke") {
				t.Errorf("a rejected body produced a revoke event: %v", f.sink.Types())
			}
			if want := `"reason":"` + tt.reason + `"`; !strings.Contains(f.logs.String(), want) {
				t.Errorf("log lacks %s:\n%s", want, f.logs.String())
			}
			// The credential is untouched.
			status, body, _ = f.do(t, "GET", "/v1/admin/issuances?active=true", "tracer", "", "")
			if list, _ := body["issuances"].([]any); status != 200 || len(list) != 1 || list[0].(map[string]any)["issuance_id"] != id {
				t.Errorf("active issuances after a rejected revoke = %d %v, want %s", status, body, id)
			}
		})
	}
}

func TestAdminRevokeReceipt(t *testing.T) {
	tests := []struct {
		name       string
		backendErr error
		status     int
		receipt    string
	}{
		{name: "ok/all-revoked-200", status: 200, receipt: httpapi.ReceiptRevoked},
		{name: "ok/backend-down-202-pending", backendErr: broker.Unavailable("vault_unavailable", time.Second, errors.New("dial tcp: connection refused")), status: 202, receipt: httpapi.ReceiptPending},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAdminFixture(t)
			id := f.issue(t)
			f.rv.set(tt.backendErr)
			status, body, raw := f.do(t, "POST", "/v1/admin/revoke", "revoker", jsonCT, `{"workload":"deployer","reason":"incident 7","block":true}`)
			if status != tt.status || body["status"] != tt.receipt {
				t.Fatalf("POST /v1/admin/revoke = %d %s, want %d %s", status, raw, tt.status, tt.receipt)
			}
			var keys []string
			for k := range body {
				keys = append(keys, k)
			}
			slices.Sort(keys)
			// A workload's revocation is complete only once its sweep
			// (for credentials minted meanwhile) has run.
			wantKeys := []string{"admin", "block", "blocks", "created_at", "failed", "matched", "pending", "reason", "revocation_id", "revoked", "selector", "status", "sweep_at"}
			if diff := cmp.Diff(wantKeys, keys); diff != "" {
				t.Errorf("receipt keys (-want +got):\n%s", diff)
			}
			revoked, pending := []any{id}, []any{}
			if tt.status == 202 {
				revoked, pending = []any{}, []any{id}
			}
			if !cmp.Equal(body["revoked"], revoked) || !cmp.Equal(body["pending"], pending) || body["matched"] != float64(1) {
				t.Errorf("receipt = %s; want revoked %v pending %v matched 1", raw, revoked, pending)
			}
			if strings.Contains(raw, "connection refused") {
				t.Errorf("receipt leaks the backend's error text: %s", raw)
			}
			revID := body["revocation_id"].(string)

			// Progress, blocks, the block in force, the issuance revoked.
			status, got, _ := f.do(t, "GET", "/v1/admin/revocations/"+revID, "revoker", "", "")
			if status != 200 || got["status"] != tt.receipt || got["revocation_id"] != revID {
				t.Errorf("GET revocation = %d %v", status, got)
			}
			status, got, _ = f.do(t, "GET", "/v1/admin/blocks", "revoker", "", "")
			blocks, _ := got["blocks"].([]any)
			if status != 200 || len(blocks) != 1 || blocks[0].(map[string]any)["workload"] != "deployer" || blocks[0].(map[string]any)["revocation_id"] != revID {
				t.Errorf("GET blocks = %d %v", status, got)
			}
			form := url.Values{"grant_type": {broker.GrantTypeTokenExchange}, "subject_token": {"workload"},
				"subject_token_type": {broker.TokenTypeJWT}, "audience": {"deploy-vault"}}
			if status, got, _ := f.do(t, "POST", "/v1/token", "", "application/x-www-form-urlencoded", form.Encode()); status != 403 || got["error"] != "access_denied" {
				t.Errorf("exchange while blocked = %d %v, want 403 access_denied", status, got)
			}
			status, got, raw = f.do(t, "GET", "/v1/admin/issuances?workload=deployer", "tracer", "", "")
			list, _ := got["issuances"].([]any)
			if status != 200 || len(list) != 1 || list[0].(map[string]any)["revocation_id"] != revID || strings.Contains(raw, "hvs.") {
				t.Errorf("GET issuances = %d %s; want the revoked record, no secret", status, raw)
			}
			if status, got, _ := f.do(t, "GET", "/v1/admin/issuances?active=true", "tracer", "", ""); status != 200 || len(got["issuances"].([]any)) != 0 {
				t.Errorf("GET issuances?active=true = %d %v, want none", status, got)
			}

			// Unblock, audited; then exchange works again.
			if status, got, _ := f.do(t, "DELETE", "/v1/admin/blocks/deployer?reason=resolved", "revoker", "", ""); status != 200 || got["unblocked"] != true {
				t.Errorf("DELETE block = %d %v", status, got)
			}
			if !slices.Contains(f.sink.Types(), "unblock") {
				t.Errorf("no unblock event in %v", f.sink.Types())
			}
			if status, got, _ := f.do(t, "DELETE", "/v1/admin/blocks/deployer", "revoker", "", ""); status != 404 || got["error"] != "not_found" {
				t.Errorf("second DELETE = %d %v, want 404", status, got)
			}
			if status, got, _ := f.do(t, "POST", "/v1/token", "", "application/x-www-form-urlencoded", form.Encode()); status != 200 {
				t.Errorf("exchange after unblock = %d %v, want 200", status, got)
			}
		})
	}
}

// A workload name the policy and the store do not know is refused with 404
// and a hint, nothing blocked; with force it is revoked and blocked.
func TestAdminRevokeUnknownWorkload(t *testing.T) {
	f := newAdminFixture(t)
	status, body, _ := f.do(t, "POST", "/v1/admin/revoke", "revoker", jsonCT, `{"workload":"Deployer","reason":"x","block":true}`)
	if desc, _ := body["error_description"].(string); status != 404 || body["error"] != "not_found" || !strings.Contains(desc, `did you mean "deployer"?`) {
		t.Errorf("revoke of an unknown workload = %d %v; want 404 not_found naming deployer", status, body)
	}
	if status, got, _ := f.do(t, "GET", "/v1/admin/blocks", "revoker", "", ""); status != 200 || len(got["blocks"].([]any)) != 0 {
		t.Errorf("GET blocks after a refused revoke = %d %v, want none", status, got)
	}
	status, body, _ = f.do(t, "POST", "/v1/admin/revoke", "revoker", jsonCT, `{"workload":"Deployer","reason":"x","block":true,"force":true}`)
	if blocks, _ := body["blocks"].([]any); status != 200 || len(blocks) != 1 || blocks[0] != "Deployer" {
		t.Errorf("forced revoke = %d %v; want 200 blocking Deployer", status, body)
	}
}

func TestAdminLookupErrors(t *testing.T) {
	tests := []struct {
		name, method, path string
		status             int
		code               string
	}{
		{"fail/unknown-revocation", "GET", "/v1/admin/revocations/rev_01NOPE", 404, "not_found"},
		{"fail/not-a-revocation-id", "GET", "/v1/admin/revocations/iss_01", 400, "invalid_request"},
		{"fail/issuances-unknown-param", "GET", "/v1/admin/issuances?team=x", 400, "invalid_request"},
		{"fail/issuances-repeated-param", "GET", "/v1/admin/issuances?workload=a&workload=b", 400, "invalid_request"},
		{"fail/issuances-bad-active", "GET", "/v1/admin/issuances?active=yes", 400, "invalid_request"},
		{"fail/issuances-bad-limit", "GET", "/v1/admin/issuances?limit=0", 400, "invalid_request"},
		{"fail/blocks-query", "GET", "/v1/admin/blocks?x=1", 400, "invalid_request"},
	}
	f := newAdminFixture(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			token := "revoker"
			if strings.Contains(tt.path, "issuances") {
				token = "tracer"
			}
			status, body, _ := f.do(t, tt.method, tt.path, token, "", "")
			if status != tt.status || body["error"] != tt.code {
				t.Errorf("%s %s = %d %v, want %d %s", tt.method, tt.path, status, body, tt.status, tt.code)
			}
		})
	}
}

func FuzzAdminRevokeBody(f *testing.F) {
	for _, s := range []string{
		`{"workload":"deployer","reason":"x"}`, `{"issuance_id":"iss_1","reason":"x","block":true}`,
		`{"workload":"deployer","reason":"x","force":true}`, `{"reason":"x"} {}`, `[]`, `null`, ``,
	} {
		f.Add(s)
	}
	fx := newAdminFixture(f)
	f.Fuzz(func(t *testing.T, body string) {
		req, _ := http.NewRequest("POST", fx.srv.URL+"/v1/admin/revoke", strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer revoker")
		req.Header.Set("Content-Type", jsonCT)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var m map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
			t.Fatalf("answer to %q is not JSON: %v", body, err)
		}
		switch resp.StatusCode {
		case 200, 202:
			if _, ok := m["revocation_id"]; !ok {
				t.Errorf("success without revocation_id: %v", m)
			}
		case 400, 404:
			if m["error"] == nil || m["request_id"] == nil {
				t.Errorf("error without OAuth shape: %v", m)
			}
		default:
			t.Errorf("POST %q = %d %v, want 200/202/400/404", body, resp.StatusCode, m)
		}
	})
}

// TestWrongMethod: a route asked with a method it does not serve answers
// 405 with Allow (RFC 9110 §15.5.6), not 404 "no such endpoint"; a path no
// route serves stays 404.
func TestWrongMethod(t *testing.T) {
	f := newAdminFixture(t)
	tests := []struct {
		name, method, path string
		status             int
		code, allow        string
	}{
		{"fail/get-token", "GET", "/v1/token", 405, "method_not_allowed", "POST"},
		{"fail/options-token", "OPTIONS", "/v1/token", 405, "method_not_allowed", "POST"},
		{"fail/put-introspect", "PUT", "/v1/introspect", 405, "method_not_allowed", "POST"},
		{"fail/post-healthz", "POST", "/healthz", 405, "method_not_allowed", "GET, HEAD"},
		{"fail/get-revoke", "GET", "/v1/admin/revoke", 405, "method_not_allowed", "POST"},
		{"fail/get-block", "GET", "/v1/admin/blocks/deployer", 405, "method_not_allowed", "DELETE"},
		{"fail/delete-blocks", "DELETE", "/v1/admin/blocks", 405, "method_not_allowed", "GET, HEAD"},
		{"fail/no-route", "GET", "/v1/nope", 404, "not_found", ""},
		{"fail/trailing-slash", "POST", "/v1/token/", 404, "not_found", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, f.srv.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if strings.HasPrefix(tt.path, "/v1/admin/") {
				// Strangers get 401 there (TestAdminUnknownRouteIsAudited).
				req.Header.Set("Authorization", "Bearer revoker")
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body map[string]any
			if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
				t.Fatalf("body is not JSON: %v", err)
			}
			got := []any{resp.StatusCode, body["error"], resp.Header.Get("Allow"), body["request_id"] == resp.Header.Get("X-Request-Id")}
			if diff := cmp.Diff([]any{tt.status, tt.code, tt.allow, true}, got); diff != "" {
				t.Errorf("%s %s = %v, want %d %s Allow %q (-want +got):\n%s", tt.method, tt.path, got, tt.status, tt.code, tt.allow, diff)
			}
		})
	}
}

// TestAdminDenyKeepsStrangersTextOut: an admin call whose caller is not
// authenticated is audited (action, role, source, outcome) without its
// target, which is the caller's free text (a path segment, query values, a
// body's selector): anyone could otherwise write up to the header or body
// cap of their own text into the audit log. An authenticated caller's
// target is kept: it is attributed to that identity (a value this long by
// its length and SHA-256, see TestAdminTargetBoundedInAudit).
func TestAdminDenyKeepsStrangersTextOut(t *testing.T) {
	junk := strings.Repeat("J", 8<<10)
	tests := []struct {
		name, method, path, token, body string
		wantTarget                      bool
	}{
		{"fail/unblock-no-token", "DELETE", "/v1/admin/blocks/" + junk, "", "", false},
		{"fail/unblock-forged-token", "DELETE", "/v1/admin/blocks/" + junk, "forged", "", false},
		{"fail/revocation-no-token", "GET", "/v1/admin/revocations/rev_" + junk, "", "", false},
		{"fail/issuances-no-token", "GET", "/v1/admin/issuances?owner=" + junk, "", "", false},
		{"fail/revoke-no-token", "POST", "/v1/admin/revoke", "", `{"workload":"` + junk + `","reason":"x"}`, false},
		{"fail/unblock-not-an-admin", "DELETE", "/v1/admin/blocks/" + junk, "nobody", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAdminFixture(t)
			ct := ""
			if tt.body != "" {
				ct = jsonCT
			}
			if status, body, _ := f.do(t, tt.method, tt.path, tt.token, ct, tt.body); status != 401 && status != 403 {
				t.Fatalf("%s as %q = %d %v, want 401/403", tt.method, tt.token, status, body)
			}
			evs := f.sink.Events()
			if len(evs) != 1 || evs[0].Type != "admin" {
				t.Fatalf("audit events = %v, want one admin event", f.sink.Types())
			}
			raw, err := json.Marshal(evs[0])
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(string(raw), broker.Fingerprint(junk)); got != tt.wantTarget {
				t.Errorf("admin event holds the caller's text = %v, want %v (event %d bytes)", got, tt.wantTarget, len(raw))
			}
			if evs[0].Details["action"] == nil || evs[0].Outcome == nil || evs[0].Outcome.Status < 400 {
				t.Errorf("admin event = %+v, want the action and the denied outcome", evs[0])
			}
		})
	}
}

// The receipt names the workloads a blocking revocation blocked, so the
// admin sees when a block took nothing (an unknown session or owner): an
// empty list, not a bare "block": true.
func TestAdminRevokeReceiptNamesBlocks(t *testing.T) {
	f := newAdminFixture(t)
	f.issue(t)
	for _, tc := range []struct {
		body string
		want any
	}{
		{`{"workload":"deployer","reason":"incident","block":true}`, []any{"deployer"}},
		{`{"session_id":"ses_unknown","reason":"typo","block":true}`, []any{}},
		{`{"owner":"team-platform","reason":"no block"}`, nil},
	} {
		status, body, raw := f.do(t, "POST", "/v1/admin/revoke", "revoker", jsonCT, tc.body)
		if status != 200 {
			t.Fatalf("POST /v1/admin/revoke %s = %d %s", tc.body, status, raw)
		}
		if got, ok := body["blocks"]; !cmp.Equal(got, tc.want) || ok != (tc.want != nil) {
			t.Errorf("receipt of %s: blocks = %v (present %v), want %v", tc.body, got, ok, tc.want)
		}
	}
}

// TestAdminUnblockNamedBlock: DELETE /v1/admin/blocks/{workload} with
// revocation_id lifts the block only while it is that revocation's. A
// retry of an unblock (its first answer a 503 or lost) after the workload
// was blocked again by another revocation must not lift the new block: it
// answers 404 naming the block now standing, which stays. (Without the
// parameter, the only form, a retry lifted whatever block stood.)
func TestAdminUnblockNamedBlock(t *testing.T) {
	f := newAdminFixture(t)
	f.issue(t)
	revoke := func() string {
		t.Helper()
		status, body, raw := f.do(t, "POST", "/v1/admin/revoke", "revoker", jsonCT, `{"workload":"deployer","reason":"incident 7","block":true}`)
		if status != 200 && status != 202 {
			t.Fatalf("POST /v1/admin/revoke = %d %s", status, raw)
		}
		return body["revocation_id"].(string)
	}
	r1 := revoke()
	r2 := revoke() // blocked again: the block is r2's now
	status, got, raw := f.do(t, "DELETE", "/v1/admin/blocks/deployer?revocation_id="+r1, "revoker", "", "")
	if desc, _ := got["error_description"].(string); status != 404 || got["error"] != "not_found" || !strings.Contains(desc, r2) {
		t.Errorf("DELETE block of %s while %s's stands = %d %s, want 404 naming %s", r1, r2, status, raw, r2)
	}
	status, got, _ = f.do(t, "GET", "/v1/admin/blocks", "revoker", "", "")
	if blocks, _ := got["blocks"].([]any); status != 200 || len(blocks) != 1 || blocks[0].(map[string]any)["revocation_id"] != r2 {
		t.Fatalf("GET blocks = %d %v, want %s's block standing", status, got, r2)
	}
	if status, got, raw := f.do(t, "DELETE", "/v1/admin/blocks/deployer?revocation_id="+r2, "revoker", "", ""); status != 200 || got["unblocked"] != true {
		t.Errorf("DELETE block of %s = %d %s, want 200", r2, status, raw)
	}
	if status, _, raw := f.do(t, "DELETE", "/v1/admin/blocks/deployer?revocation_id=bogus", "revoker", "", ""); status != 400 {
		t.Errorf("DELETE with revocation_id=bogus = %d %s, want 400", status, raw)
	}
}

// TestAdminUnknownRouteIsAudited: SPEC "every admin call is audited, denied
// ones too" covers a path or method under /v1/admin/ that no route serves:
// it is answered like the admin routes (401/403 unless the caller is an
// admin of any role, then 404 or 405 with Allow) and recorded as an admin
// event naming the caller and, once authenticated, the path.
func TestAdminUnknownRouteIsAudited(t *testing.T) {
	tests := []struct {
		name, method, path, token string
		status                    int
		code, reason, admin       string
	}{
		{"no-token", "GET", "/v1/admin/secrets", "", 401, "invalid_token", "missing_admin_token", ""},
		{"bad-token", "GET", "/v1/admin/secrets", "forged", 401, "invalid_token", "", ""},
		{"not-an-admin", "GET", "/v1/admin/secrets", "nobody", 403, "access_denied", "not_admin", ""},
		{"workload", "DELETE", "/v1/admin/blocks", "workload", 403, "access_denied", "not_admin", ""},
		{"revoker-no-route", "GET", "/v1/admin/secrets", "revoker", 404, "not_found", "no_route", "secops"},
		{"tracer-no-route", "POST", "/v1/admin", "tracer", 404, "not_found", "no_route", "auditors"},
		{"revoker-wrong-method", "GET", "/v1/admin/revoke", "revoker", 405, "method_not_allowed", "method_not_allowed", "secops"},
		{"tracer-wrong-method", "PUT", "/v1/admin/blocks/deployer", "tracer", 405, "method_not_allowed", "method_not_allowed", "auditors"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAdminFixture(t)
			req, err := http.NewRequest(tt.method, f.srv.URL+tt.path, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.token != "" {
				req.Header.Set("Authorization", "Bearer "+tt.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			raw, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var body map[string]any
			if err := json.Unmarshal(raw, &body); err != nil {
				t.Fatalf("body is not JSON: %q", raw)
			}
			if resp.StatusCode != tt.status || body["error"] != tt.code {
				t.Errorf("%s %s as %q = %d %v, want %d %s", tt.method, tt.path, tt.token, resp.StatusCode, body, tt.status, tt.code)
			}
			if allow := resp.Header.Get("Allow"); (tt.status == 405) != (allow != "") {
				t.Errorf("Allow = %q with status %d", allow, resp.StatusCode)
			}
			evs := f.sink.Events()
			if len(evs) != 1 || evs[0].Type != "admin" {
				t.Fatalf("audit events = %v, want one admin event", f.sink.Types())
			}
			ev := evs[0]
			if ev.Outcome == nil || ev.Outcome.Status != tt.status || (tt.reason != "" && ev.Outcome.Reason != tt.reason) {
				t.Errorf("admin event outcome = %+v, want %d %s", ev.Outcome, tt.status, tt.reason)
			}
			if ev.Admin != "" && !strings.HasPrefix(ev.Admin, tt.admin) || (ev.Admin == "") != (tt.admin == "") {
				t.Errorf("admin event names admin %q, want %q", ev.Admin, tt.admin)
			}
			target, _ := ev.Details["target"].(map[string]any)
			authenticated := tt.token != "" && tt.token != "forged"
			if authenticated && (target["path"] != tt.path || target["method"] != tt.method) {
				t.Errorf("admin event target = %v, want %s %s", ev.Details["target"], tt.method, tt.path)
			}
			if !authenticated && target != nil {
				t.Errorf("a stranger's path was recorded: %v", target)
			}
			if ev.Details["action"] != "unknown_route" {
				t.Errorf("admin event action = %v", ev.Details["action"])
			}
		})
	}
	t.Run("outside-admin-not-audited", func(t *testing.T) {
		f := newAdminFixture(t)
		status, body, _ := f.do(t, "GET", "/v1/administrator", "", "", "")
		if status != 404 || body["error"] != "not_found" {
			t.Errorf("GET /v1/administrator = %d %v, want 404 not_found", status, body)
		}
		if len(f.sink.Events()) != 0 {
			t.Errorf("audit events = %v, want none outside /v1/admin/", f.sink.Types())
		}
	})
}
