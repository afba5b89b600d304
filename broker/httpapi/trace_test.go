package httpapi_test

import (
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/broker/trace"
	"github.com/keytrail/keytrail/policies"
)

const traceRolesYAML = `
admins:
  - name: auditors
    match: {issuer: ci, claims: {groups: audit}}
    roles: [trace]
  - name: managers
    match: {issuer: ci, claims: {groups: mgmt}}
    roles: [report]
`

// traceFixture is a broker with a real audit file, the trace routes over
// it and the in-memory store.
type traceFixture struct {
	srv       *httptest.Server
	svc       *broker.Service
	auditPath string
	logs      *brokertest.SyncBuffer
}

func newTraceFixture(t *testing.T) *traceFixture {
	t.Helper()
	pol := testPolicy(t, "", traceRolesYAML)
	id := func(sub string, claims map[string]any) *broker.Identity {
		c := map[string]any{"sub": sub}
		for k, v := range claims {
			c[k] = v
		}
		return &broker.Identity{IssuerName: "ci", Iss: "https://ci.example", Sub: sub, Claims: c}
	}
	authn := brokertest.Authn{
		"workload": id("repo:acme/deploy", nil),
		"auditor":  id("bob", map[string]any{"groups": "audit"}),
		"manager":  id("carol", map[string]any{"groups": "mgmt"}),
		"nobody":   id("eve", map[string]any{"groups": "dev"}),
	}
	f := &traceFixture{auditPath: filepath.Join(t.TempDir(), "audit.jsonl"), logs: &brokertest.SyncBuffer{}}
	sink, err := auditfile.Open(auditfile.Options{Path: f.auditPath, NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sink.Close() })
	store := memstore.New(time.Now)
	svc, err := broker.NewService(broker.Deps{
		Policy: func() *policies.Policy { return pol }, Authn: func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: &brokertest.Minter{}},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: &brokertest.Minter{}},
		Store:    store, Audit: sink,
	})
	if err != nil {
		t.Fatal(err)
	}
	live, err := trace.NewLive(trace.LiveOptions{Path: f.auditPath, Store: store, Policy: func() *policies.Policy { return pol }})
	if err != nil {
		t.Fatal(err)
	}
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example",
		Extra:  func(mux *http.ServeMux, s *httpapi.Server) { httpapi.RegisterTrace(mux, s, live) },
		Logger: slog.New(slog.NewJSONHandler(f.logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	f.srv = httptest.NewServer(api.Routes())
	t.Cleanup(f.srv.Close)
	f.svc = svc
	return f
}

func (f *traceFixture) get(t *testing.T, path, token string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", f.srv.URL+path, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}

func (f *traceFixture) exchange(t *testing.T) (issuanceID, accessToken string) {
	t.Helper()
	form := url.Values{"grant_type": {broker.GrantTypeTokenExchange}, "subject_token": {"workload"},
		"subject_token_type": {broker.TokenTypeJWT}, "audience": {"deploy-vault"}}
	resp, err := http.Post(f.srv.URL+"/v1/token", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		IssuanceID  string `json:"issuance_id"`
		AccessToken string `json:"access_token"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil || resp.StatusCode != 200 {
		t.Fatalf("exchange = %d, %v", resp.StatusCode, err)
	}
	return body.IssuanceID, body.AccessToken
}

func TestTraceRoutes(t *testing.T) {
	f := newTraceFixture(t)
	issID, secret := f.exchange(t)
	q := url.QueryEscape
	cases := []struct {
		name, path, token string
		status            int
		code              string // error code, or the issuance id for 200 trace answers
	}{
		{"ok/by-issuance-id", "/v1/admin/trace?q=" + issID, "auditor", 200, issID},
		{"ok/by-raw-credential", "/v1/admin/trace?q=" + q(secret), "auditor", 200, issID},
		{"ok/by-fingerprint", "/v1/admin/trace?q=" + q(broker.Fingerprint(secret)), "auditor", 200, issID},
		{"ok/by-accessor", "/v1/admin/trace?q=acc-" + issID, "auditor", 200, issID},
		{"fail/not-found", "/v1/admin/trace?q=iss_NOPE", "auditor", 404, "not_found"},
		{"fail/no-q", "/v1/admin/trace", "auditor", 400, "invalid_request"},
		{"fail/two-q", "/v1/admin/trace?q=a&q=b", "auditor", 400, "invalid_request"},
		{"fail/no-token", "/v1/admin/trace?q=" + issID, "", 401, "invalid_token"},
		{"fail/not-admin", "/v1/admin/trace?q=" + issID, "nobody", 403, "access_denied"},
		{"fail/workload", "/v1/admin/trace?q=" + issID, "workload", 403, "access_denied"},
		{"fail/report-role-cannot-trace", "/v1/admin/trace?q=" + issID, "manager", 403, "access_denied"},
		{"ok/report", "/v1/admin/report", "manager", 200, ""},
		{"fail/trace-role-cannot-report", "/v1/admin/report", "auditor", 403, "access_denied"},
		{"fail/report-no-token", "/v1/admin/report", "", 401, "invalid_token"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := f.get(t, tc.path, tc.token)
			var got struct {
				Error    string `json:"error"`
				Issuance struct {
					ID string `json:"issuance_id"`
				} `json:"issuance"`
				Workloads []struct {
					Name   string `json:"name"`
					Active int    `json:"active"`
				} `json:"workloads"`
			}
			if err := json.Unmarshal(body, &got); err != nil {
				t.Fatalf("GET %s: not JSON: %s", tc.name, body)
			}
			code := got.Error
			if status == 200 {
				code = got.Issuance.ID
			}
			if status != tc.status || code != tc.code {
				t.Fatalf("GET %s = %d %s, want %d %s", tc.name, status, body, tc.status, tc.code)
			}
			if strings.Contains(string(body), secret) {
				t.Errorf("GET %s: the answer contains the raw credential", tc.name)
			}
			if tc.name == "ok/report" {
				want := []struct {
					Name   string `json:"name"`
					Active int    `json:"active"`
				}{{"deployer", 1}}
				if diff := cmp.Diff(want, got.Workloads); diff != "" {
					t.Errorf("GET %s workloads = got, want want (-want +got):\n%s", tc.name, diff)
				}
			}
		})
	}

	// Every call was audited as an admin event (denied ones too), naming
	// the query only by its hash; the raw credential is nowhere on disk or
	// in the server log.
	data, err := os.ReadFile(f.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(data), secret) || strings.Contains(f.logs.String(), secret) {
		t.Fatal("the raw credential reached the audit log or the server log")
	}
	var admin, traced int
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		ev, err := audit.ParseLine([]byte(line))
		if err != nil {
			t.Fatal(err)
		}
		if ev.Type != audit.TypeAdmin {
			continue
		}
		admin++
		if tgt, ok := ev.Details["target"].(map[string]any); ok && tgt["query_sha256"] == broker.Fingerprint(secret) {
			traced++
		}
	}
	if admin != len(cases) || traced != 1 {
		t.Errorf("admin events = %d (%d naming the raw credential's hash), want %d (1)", admin, traced, len(cases))
	}
}

// TestTraceByUpstreamRequestID: GET /v1/admin/trace answers the request id
// an upstream returned for a proxied call (recorded in the use_result
// event's details.upstream_request_ids) with the use and its issuance.
func TestTraceByUpstreamRequestID(t *testing.T) {
	f := newTraceFixture(t)
	issID, _ := f.exchange(t)
	for _, ev := range []*audit.Event{
		{Type: audit.TypeUse, RequestID: "req_P", UseID: "use_P", IssuanceID: issID, Workload: "deployer",
			Upstream: &audit.Upstream{Method: "POST", Host: "api.stripe.com", Path: "/v1/charges"}},
		{Type: audit.TypeUseResult, RequestID: "req_P", UseID: "use_P", IssuanceID: issID, Workload: "deployer",
			Upstream: &audit.Upstream{Method: "POST", Host: "api.stripe.com", Path: "/v1/charges", Status: 200},
			Outcome:  &audit.Outcome{Status: 200},
			Details:  map[string]any{"upstream_request_ids": map[string]string{"request-id": "req_ABC"}}},
	} {
		if err := f.svc.Audit(t.Context(), ev); err != nil {
			t.Fatal(err)
		}
	}
	status, body := f.get(t, "/v1/admin/trace?q=req_ABC", "auditor")
	var got struct {
		Query    trace.Match `json:"query"`
		Issuance struct {
			ID string `json:"issuance_id"`
		} `json:"issuance"`
		Uses []struct {
			Type  string `json:"type"`
			UseID string `json:"use_id"`
		} `json:"uses"`
	}
	if err := json.Unmarshal(body, &got); err != nil || status != 200 {
		t.Fatalf("GET trace?q=req_ABC = %d %s", status, body)
	}
	want := []string{issID, trace.KindUpstreamRequestID, "req_ABC"}
	if diff := cmp.Diff(want, []string{got.Issuance.ID, got.Query.Kind, got.Query.Value}); diff != "" {
		t.Errorf("GET trace?q=req_ABC issuance, match kind, value (-want +got):\n%s", diff)
	}
	var uses []string
	for _, u := range got.Uses {
		uses = append(uses, u.Type+" "+u.UseID)
	}
	if diff := cmp.Diff([]string{"use use_P", "use_result use_P"}, uses); diff != "" {
		t.Errorf("GET trace?q=req_ABC uses (-want +got):\n%s", diff)
	}
}

// TestUnknownQueryParamsNamed: every admin GET refuses a query parameter it
// does not take with 400 naming it (trace and report used to ignore them),
// and does not repeat a name that may be a credential pasted in the wrong
// place.
func TestUnknownQueryParamsNamed(t *testing.T) {
	tf := newTraceFixture(t)
	issID, secret := tf.exchange(t)
	af := newAdminFixture(t)
	tests := []struct {
		name, path, token string
		admin             bool // the admin fixture, else the trace fixture
		wantDesc          string
	}{
		{"fail/trace-unknown", "/v1/admin/trace?q=" + issID + "&format=json", "auditor", false, `unknown query parameter "format"; this endpoint takes q`},
		{"fail/trace-typo", "/v1/admin/trace?query=" + issID, "auditor", false, `unknown query parameter "query"; this endpoint takes q`},
		{"fail/report-unknown", "/v1/admin/report?format=html", "manager", false, `unknown query parameter "format"; this endpoint takes none`},
		{"fail/trace-credential-as-name", "/v1/admin/trace?q=" + issID + "&" + url.QueryEscape(secret), "auditor", false, "unknown query parameter (name not shown); this endpoint takes q"},
		{"fail/revocation-unknown", "/v1/admin/revocations/rev_01NOPE?verbose=1", "revoker", true, `unknown query parameter "verbose"; this endpoint takes none`},
		{"fail/blocks-unknown", "/v1/admin/blocks?workload=x", "revoker", true, `unknown query parameter "workload"; this endpoint takes none`},
		{"fail/issuances-unknown", "/v1/admin/issuances?team=x&workload=deployer", "tracer", true, `unknown query parameter "team"; this endpoint takes workload, owner, session_id, active, limit`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var status int
			var raw []byte
			if tt.admin {
				var s string
				status, _, s = af.do(t, "GET", tt.path, tt.token, "", "")
				raw = []byte(s)
			} else {
				status, raw = tf.get(t, tt.path, tt.token)
			}
			var body struct {
				Error string `json:"error"`
				Desc  string `json:"error_description"`
			}
			if err := json.Unmarshal(raw, &body); err != nil {
				t.Fatalf("GET %s: not JSON: %s", tt.path, raw)
			}
			if diff := cmp.Diff([]any{400, "invalid_request", tt.wantDesc}, []any{status, body.Error, body.Desc}); diff != "" {
				t.Errorf("GET %s = got, want want (-want +got):\n%s", tt.path, diff)
			}
			if strings.Contains(string(raw), secret) {
				t.Errorf("GET %s: the answer repeats the credential", tt.path)
			}
		})
	}
}

// A use id of another instance is only in that instance's audit log: the
// 404 keeps its code and says which log was searched, and where such ids
// are found. It names the log as the broker's audit log, not by its path
// on the server (a caller of the API is not shown the server's files, as
// Vault's API shows none), which the server's own log keeps.
func TestTraceNotFoundNamesTheLogSearched(t *testing.T) {
	f := newTraceFixture(t)
	status, body := f.get(t, "/v1/admin/trace?q=use_01OTHERINSTANCE", "auditor")
	var got struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if err := json.Unmarshal(body, &got); err != nil || status != 404 || got.Error != "not_found" {
		t.Fatalf("GET trace of another instance's use id = %d %s, want 404 not_found", status, body)
	}
	for _, want := range []string{"the broker's audit log", "other instance", "--audit-log"} {
		if !strings.Contains(got.Description, want) {
			t.Errorf("not-found description %q does not say %q", got.Description, want)
		}
	}
	if dir := filepath.Dir(f.auditPath); strings.Contains(string(body), dir) {
		t.Errorf("not-found answer %s shows the server's audit directory %s", body, dir)
	}
	if logs := f.logs.String(); !strings.Contains(logs, f.auditPath) {
		t.Errorf("the server log does not name the audit file searched (%s):\n%s", f.auditPath, logs)
	}
}
