package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/policies"
)

// testPolicy parses the policy the handler tests share: issuer ci, workload
// deployer with the vault_token grant deploy-vault. workloadExtra is added
// to the workload (indented four spaces), extra after the grants (admins).
func testPolicy(t testing.TB, workloadExtra, extra string) *policies.Policy {
	t.Helper()
	yaml := `
version: 1
issuers:
  - name: ci
    issuer: https://ci.example
    jwks_url: https://ci.example/jwks
    audiences: [keytrail]
    algorithms: [ES256]
workloads:
  - name: deployer
    owner: team-platform
    match: {issuer: ci, subject: repo:acme/deploy}
    grants: [deploy-vault]
` + workloadExtra + `
grants:
  - name: deploy-vault
    kind: vault_token
    ttl: 10m
    vault_token: {policies: [deploy]}
` + extra
	pol, err := policies.Parse("p.yaml", []byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	return pol
}

const goodToken = "eyJhbGciOiJFUzI1NiJ9.good.sig"

// callerToken is another identity of the trusted issuer, with a jti, that
// matches no workload (a service introspecting what it was sent).
const callerToken = "eyJhbGciOiJFUzI1NiJ9.caller.sig"

type fixture struct {
	srv    *httptest.Server
	sink   *brokertest.Sink
	minter *brokertest.Minter
	ready  error
	api    *httpapi.Server
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	pol := testPolicy(t, "    rate: {per_second: 1, burst: 1}", "")
	f := &fixture{sink: &brokertest.Sink{}, minter: &brokertest.Minter{}}
	authn := brokertest.Authn{goodToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "repo:acme/deploy",
		Claims: map[string]any{"sub": "repo:acme/deploy"}},
		callerToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "repo:acme/verifier", JTI: "caller-jti-1",
			Claims: map[string]any{"sub": "repo:acme/verifier"}}}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: f.minter},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: f.minter},
		Store:    memstore.New(time.Now),
		Audit:    f.sink,
	})
	if err != nil {
		t.Fatal(err)
	}
	// A trailing slash, as an operator may write public_url: every iss the
	// API serves must still be the one spelling (TestOneIssuer).
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example/",
		Ready: func(ctx context.Context) error { return f.ready }})
	if err != nil {
		t.Fatal(err)
	}
	f.api = api
	f.srv = httptest.NewServer(api.Routes())
	t.Cleanup(f.srv.Close)
	return f
}

// newIntrospectFixture serves pol at https://keytrail.example, always
// ready, authenticating goodToken and callerToken as newFixture does and
// extra's tokens besides, with one brokertest.Minter minting and revoking
// each of kinds.
func newIntrospectFixture(t *testing.T, pol *policies.Policy, extra brokertest.Authn, kinds ...string) *fixture {
	t.Helper()
	f := &fixture{sink: &brokertest.Sink{}, minter: &brokertest.Minter{}}
	authn := brokertest.Authn{goodToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "repo:acme/deploy",
		Claims: map[string]any{"sub": "repo:acme/deploy"}},
		callerToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "repo:acme/verifier", JTI: "caller-jti-1",
			Claims: map[string]any{"sub": "repo:acme/verifier"}}}
	for tok, id := range extra {
		authn[tok] = id
	}
	minters, revokers := map[string]broker.Minter{}, map[string]broker.Revoker{}
	for _, k := range kinds {
		minters[k], revokers[k] = f.minter, f.minter
	}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return authn },
		Minters:  minters,
		Revokers: revokers,
		Store:    memstore.New(time.Now),
		Audit:    f.sink,
	})
	if err != nil {
		t.Fatal(err)
	}
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example",
		Ready: func(ctx context.Context) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	f.api = api
	f.srv = httptest.NewServer(api.Routes())
	t.Cleanup(f.srv.Close)
	return f
}

func form(kv ...string) url.Values {
	v := url.Values{
		"grant_type":         {broker.GrantTypeTokenExchange},
		"subject_token":      {goodToken},
		"subject_token_type": {broker.TokenTypeJWT},
		"audience":           {"deploy-vault"},
	}
	for i := 0; i+1 < len(kv); i += 2 {
		if kv[i+1] == "<del>" {
			delete(v, kv[i])
			continue
		}
		v[kv[i]] = append([]string(nil), strings.Split(kv[i+1], "|")...)
	}
	return v
}

func (f *fixture) post(t *testing.T, path, contentType, body string) (*http.Response, map[string]any) {
	t.Helper()
	resp, err := http.Post(f.srv.URL+path, contentType, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("body is not JSON: %q", raw)
	}
	return resp, m
}

func TestTokenEndpointErrors(t *testing.T) {
	const formCT = "application/x-www-form-urlencoded"
	tests := []struct {
		name        string
		contentType string
		body        string
		status      int
		code        string
	}{
		{"fail/json-body", "application/json", `{"grant_type":"x"}`, 400, "invalid_request"},
		{"fail/missing-grant-type", formCT, form("grant_type", "<del>").Encode(), 400, "invalid_request"},
		{"fail/missing-subject-token", formCT, form("subject_token", "<del>").Encode(), 400, "invalid_request"},
		{"fail/missing-subject-token-type", formCT, form("subject_token_type", "<del>").Encode(), 400, "invalid_request"},
		{"fail/missing-audience", formCT, form("audience", "<del>").Encode(), 400, "invalid_request"},
		{"fail/id-token-type-unknown-grant", formCT, form("subject_token_type", broker.TokenTypeIDToken, "audience", "nope").Encode(), 400, "invalid_target"},
		{"fail/unsupported-grant-type", formCT, form("grant_type", "password").Encode(), 400, "unsupported_grant_type"},
		{"fail/repeated-param", formCT, form("audience", "deploy-vault|other").Encode(), 400, "invalid_request"},
		{"fail/bad-subject-token-type", formCT, form("subject_token_type", "urn:x").Encode(), 400, "invalid_request"},
		{"fail/bad-ttl", formCT, form("ttl", "-5").Encode(), 400, "invalid_request"},
		{"fail/bad-resource", formCT, form("resource", "not a uri").Encode(), 400, "invalid_target"},
		{"fail/unknown-grant", formCT, form("audience", "nope").Encode(), 400, "invalid_target"},
		{"fail/bad-token", formCT, form("subject_token", "forged.token.here").Encode(), 401, "invalid_grant"},
		// The identity token is checked before the grant name: a caller
		// without a valid one learns nothing of the grants (README).
		{"fail/bad-token-unknown-grant", formCT, form("subject_token", "forged.token.here", "audience", "nope").Encode(), 401, "invalid_grant"},
		{"fail/oversized", formCT, form("subject_token", strings.Repeat("a", 70<<10)).Encode(), 400, "invalid_request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			resp, body := f.post(t, "/v1/token", tt.contentType, tt.body)
			got := []any{resp.StatusCode, body["error"]}
			if diff := cmp.Diff([]any{tt.status, tt.code}, got); diff != "" {
				t.Errorf("POST /v1/token = %v, want %d %s (-want +got):\n%s", body, tt.status, tt.code, diff)
			}
			if rid := resp.Header.Get("X-Request-Id"); rid == "" || body["request_id"] != rid {
				t.Errorf("request_id = %v, header %q; want equal and set", body["request_id"], rid)
			}
			if d, _ := body["error_description"].(string); d == "" || strings.Contains(d, "forged") {
				t.Errorf("error_description = %q; want a safe non-empty text", d)
			}
			if len(f.minter.Calls()) != 0 {
				t.Errorf("minted on a failed request")
			}
			if diff := cmp.Diff([]string{"deny"}, f.sink.Types()); diff != "" {
				t.Errorf("every refusal is one deny event (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTokenEndpointOK(t *testing.T) {
	f := newFixture(t)
	resp, body := f.post(t, "/v1/token", "application/x-www-form-urlencoded",
		form("ttl", "60", "scope", "ignored", "requested_token_type", broker.TokenTypeAccessToken).Encode())
	if resp.StatusCode != 200 {
		t.Fatalf("status = %d %v", resp.StatusCode, body)
	}
	if cc := resp.Header.Get("Cache-Control"); cc != "no-store" {
		t.Errorf("Cache-Control = %q, want no-store", cc)
	}
	want := map[string]any{"issued_token_type": broker.TokenTypeAccessToken, "token_type": "Bearer", "expires_in": float64(60),
		"workload": "deployer", "owner": "team-platform", "grant": "deploy-vault", "kind": "vault_token"}
	for k, v := range want {
		if body[k] != v {
			t.Errorf("%s = %v, want %v", k, body[k], v)
		}
	}
	if id, _ := body["issuance_id"].(string); !strings.HasPrefix(id, "iss_") || body["access_token"] != "hvs.secret-"+id {
		t.Errorf("issuance_id %v / access_token %v mismatch", body["issuance_id"], body["access_token"])
	}
	if sid, _ := body["session_id"].(string); !strings.HasPrefix(sid, broker.PrefixSession) {
		t.Errorf("session_id = %v, want a %s id", body["session_id"], broker.PrefixSession)
	}
	if cred, ok := body["credential"].(map[string]any); !ok || len(cred) == 0 {
		t.Errorf("credential = %v, want the kind-specific fields as an object", body["credential"])
	}
	if diff := cmp.Diff([]string{"issue"}, f.sink.Types()); diff != "" {
		t.Errorf("audit (-want +got):\n%s", diff)
	}
}

// TestTokenTTLCapped: ttl is capped by the grant (SPEC), however large:
// a value above any grant's TTL gets the grant's TTL, not a 400.
func TestTokenTTLCapped(t *testing.T) {
	for _, ttl := range []string{"601", "31622401", "9223372036854775807", "99999999999999999999"} {
		t.Run("ok/"+ttl, func(t *testing.T) {
			f := newFixture(t)
			resp, body := f.post(t, "/v1/token", "application/x-www-form-urlencoded", form("ttl", ttl).Encode())
			if got := []any{resp.StatusCode, body["expires_in"]}; !cmp.Equal(got, []any{200, float64(600)}) {
				t.Errorf("ttl=%s: POST /v1/token = %d %v, want 200 expires_in 600 (the grant's TTL)", ttl, resp.StatusCode, body)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	t.Run("fail/rate-limited-429", func(t *testing.T) {
		f := newFixture(t)
		f.post(t, "/v1/token", "application/x-www-form-urlencoded", form().Encode())
		resp, body := f.post(t, "/v1/token", "application/x-www-form-urlencoded", form().Encode())
		if resp.StatusCode != 429 || body["error"] != "slow_down" || resp.Header.Get("Retry-After") == "" {
			t.Errorf("second request at 1/s = %d %v Retry-After=%q; want 429 slow_down with Retry-After", resp.StatusCode, body, resp.Header.Get("Retry-After"))
		}
	})
	t.Run("fail/audit-down-503", func(t *testing.T) {
		f := newFixture(t)
		f.sink.Fail = func(*audit.Event) bool { return true }
		resp, body := f.post(t, "/v1/token", "application/x-www-form-urlencoded", form().Encode())
		if resp.StatusCode != 503 || body["error"] != "temporarily_unavailable" || resp.Header.Get("Retry-After") == "" {
			t.Errorf("with audit down = %d %v; want 503 temporarily_unavailable with Retry-After", resp.StatusCode, body)
		}
		if _, ok := body["access_token"]; ok {
			t.Errorf("credential handed out while audit is down")
		}
		if got := f.minter.RevokedIDs(); len(got) != 1 {
			t.Errorf("revoked %v, want the one minted credential", got)
		}
	})
}

func TestReadyz(t *testing.T) {
	f := newFixture(t)
	var clock atomic.Int64 // /readyz's answer is kept for ReadyCacheFor
	f.api.SetReadyClock(func() time.Time { return time.Unix(0, clock.Load()) })
	get := func() int {
		resp, err := http.Get(f.srv.URL + "/readyz")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := get(); got != 200 {
		t.Errorf("readyz = %d, want 200", got)
	}
	f.ready = errors.Join(httpapi.ReadyError{Component: "vault"}, errors.New("connection refused"))
	clock.Add(int64(httpapi.ReadyCacheFor))
	if got := get(); got != 503 {
		t.Errorf("readyz with vault down = %d, want 503", got)
	}
	resp, err := http.Get(f.srv.URL + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("healthz = %v %v, want 200 regardless of backends", resp, err)
	}
}

func TestUnknownRouteShape(t *testing.T) {
	f := newFixture(t)
	resp, err := http.Get(f.srv.URL + "/v1/nope")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != 404 || body["error"] != "not_found" || body["request_id"] == "" {
		t.Errorf("GET /v1/nope = %d %v", resp.StatusCode, body)
	}
}

func TestMetricsAfterTraffic(t *testing.T) {
	f := newFixture(t)
	f.post(t, "/v1/token", "application/x-www-form-urlencoded", form().Encode())
	f.post(t, "/v1/token", "application/x-www-form-urlencoded", form("subject_token", "bad").Encode())
	wantMetrics(t, f.srv.URL,
		`keytrail_exchanges_total{grant="deploy-vault",kind="vault_token",outcome="ok"} 1`,
		`keytrail_exchanges_total{grant="deploy-vault",kind="vault_token",outcome="invalid_grant"} 1`,
		`keytrail_denies_total{reason="bad_signature"} 1`,
	)
}

// wantMetrics fails t for each of lines (whole lines) that base's /metrics
// lacks.
func wantMetrics(t *testing.T, base string, lines ...string) {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	for _, want := range lines {
		if !strings.Contains(string(raw), want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// TestOneIssuer: discovery's issuer and introspection's iss are the same
// string (verifiers compare them byte for byte), even when the public URL was
// written with a trailing slash.
func TestOneIssuer(t *testing.T) {
	f := newFixture(t)
	resp, tok := f.post(t, "/v1/token", "application/x-www-form-urlencoded", form().Encode())
	if resp.StatusCode != 200 {
		t.Fatalf("exchange = %d %v", resp.StatusCode, tok)
	}
	req, _ := http.NewRequest("POST", f.srv.URL+"/v1/introspect", strings.NewReader(url.Values{"token": {tok["access_token"].(string)}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+goodToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var intro map[string]any
	err = json.NewDecoder(resp.Body).Decode(&intro)
	resp.Body.Close()
	if err != nil || resp.StatusCode != 200 || intro["active"] != true {
		t.Fatalf("introspect = %d %v %v", resp.StatusCode, intro, err)
	}
	resp, err = http.Get(f.srv.URL + "/.well-known/openid-configuration")
	if err != nil {
		t.Fatal(err)
	}
	var disc map[string]any
	err = json.NewDecoder(resp.Body).Decode(&disc)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	got := []any{disc["issuer"], intro["iss"]}
	if diff := cmp.Diff([]any{"https://keytrail.example", "https://keytrail.example"}, got); diff != "" {
		t.Errorf("discovery issuer, introspection iss (-want +got):\n%s", diff)
	}
}

// introspect posts token to /v1/introspect with the caller's Bearer token.
func (f *fixture) introspect(t *testing.T, caller, token string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest("POST", f.srv.URL+"/v1/introspect", strings.NewReader(url.Values{"token": {token}}.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+caller)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("introspect body is not JSON: %v", err)
	}
	return resp.StatusCode, body
}

// TestIntrospectResponse: SPEC "POST /v1/introspect": an active broker
// credential answers sub (the workload), owner, sid, jti (the issuance id),
// grant, iat, exp and iss; any other token answers exactly {"active":
// false}; both are recorded as a use (an introspect event with a use id)
// naming the caller's identity token {iss, sub, jti}.
func TestIntrospectResponse(t *testing.T) {
	f := newFixture(t)
	resp, tok := f.post(t, "/v1/token", "application/x-www-form-urlencoded", form().Encode())
	if resp.StatusCode != 200 {
		t.Fatalf("exchange = %d %v", resp.StatusCode, tok)
	}
	status, got := f.introspect(t, callerToken, tok["access_token"].(string))
	if status != 200 {
		t.Fatalf("introspect = %d %v, want 200", status, got)
	}
	want := map[string]any{"active": true, "sub": "deployer", "owner": "team-platform", "sid": tok["session_id"],
		"jti": tok["issuance_id"], "grant": "deploy-vault", "iss": "https://keytrail.example"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("introspect %s = %v, want %v", k, got[k], v)
		}
	}
	iat, _ := got["iat"].(float64)
	exp, _ := got["exp"].(float64)
	if iat == 0 || exp-iat != 600 {
		t.Errorf("introspect iat = %v, exp = %v; want Unix seconds 600 apart (the grant's TTL)", got["iat"], got["exp"])
	}

	status, got = f.introspect(t, callerToken, "hvs.not-a-broker-credential")
	if diff := cmp.Diff(map[string]any{"active": false}, got); status != 200 || diff != "" {
		t.Errorf("introspect of an unknown token = %d, body (-want +got):\n%s", status, diff)
	}

	var uses []*audit.Event
	for _, ev := range f.sink.Events() {
		if ev.Type == audit.TypeIntrospect {
			uses = append(uses, ev)
		}
	}
	if len(uses) != 2 {
		t.Fatalf("introspect events = %d, want 2 (one per call)", len(uses))
	}
	for i, ev := range uses {
		if !strings.HasPrefix(ev.UseID, broker.PrefixUse) || ev.Outcome == nil || ev.Outcome.Status != 200 {
			t.Errorf("introspect event %d: use_id %q, outcome %+v; want a use_ id and status 200", i, ev.UseID, ev.Outcome)
		}
		wantID := &audit.Identity{Iss: "https://ci.example", Sub: "repo:acme/verifier", JTI: "caller-jti-1"}
		if diff := cmp.Diff(wantID, ev.Identity); diff != "" {
			t.Errorf("introspect event %d: identity (-want +got):\n%s", i, diff)
		}
	}
	if uses[0].IssuanceID != tok["issuance_id"] || uses[1].IssuanceID != "" {
		t.Errorf("introspect events name issuances %q and %q, want %v and none", uses[0].IssuanceID, uses[1].IssuanceID, tok["issuance_id"])
	}
}

// TestReadyzWhileDraining: once Drain is called (the server got SIGTERM and
// drains), /readyz answers 503 with the stable error "shutting down" and
// Retry-After, without asking the backends, and /healthz stays 200.
func TestReadyzWhileDraining(t *testing.T) {
	svc, err := broker.NewService(broker.Deps{
		Policy:  func() *policies.Policy { return testPolicy(t, "", "") },
		Authn:   func() broker.Authenticator { return brokertest.Authn{} },
		Minters: map[string]broker.Minter{broker.KindVaultToken: &brokertest.Minter{}},
		Store:   memstore.New(time.Now),
		Audit:   &brokertest.Sink{},
	})
	if err != nil {
		t.Fatal(err)
	}
	var asked atomic.Int32
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example",
		Ready: func(context.Context) error { asked.Add(1); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Routes())
	defer srv.Close()
	api.Drain()
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Status, Error string }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	if resp.StatusCode != 503 || body.Error != "shutting down" || resp.Header.Get("Retry-After") == "" {
		t.Errorf("readyz while draining = %d %+v (Retry-After %q), want 503 error %q with Retry-After",
			resp.StatusCode, body, resp.Header.Get("Retry-After"), "shutting down")
	}
	if n := asked.Load(); n != 0 {
		t.Errorf("readyz while draining asked the backends %d times, want 0", n)
	}
	if resp, err := http.Get(srv.URL + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Errorf("healthz while draining = %v %v, want 200", resp, err)
	} else {
		resp.Body.Close()
	}
}
