package vault

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/policies"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func tokenReq(mut func(*broker.MintRequest)) broker.MintRequest {
	r := broker.MintRequest{
		IssuanceID: "iss_01JTEST",
		Workload:   "payments-api",
		Owner:      "team-payments",
		SessionID:  "ses_abc",
		Grant: policies.Grant{
			Name: "payments-vault", Kind: broker.KindVaultToken, TTL: policies.Duration(15 * time.Minute),
			VaultToken: &policies.VaultTokenGrant{Policies: []string{"payments-read"}},
		},
		TTL: 15 * time.Minute,
		Now: t0,
	}
	if mut != nil {
		mut(&r)
	}
	return r
}

func wantCreateBody(policies []string, ttl string, numUses float64) map[string]any {
	pol := make([]any, len(policies))
	for i, p := range policies {
		pol[i] = p
	}
	return map[string]any{
		"type":             "service",
		"policies":         pol,
		"ttl":              ttl,
		"explicit_max_ttl": ttl,
		"renewable":        false,
		"num_uses":         numUses,
		"display_name":     "keytrail-payments-api",
		"meta": map[string]any{
			"workload":    "payments-api",
			"owner":       "team-payments",
			"session_id":  "ses_abc",
			"issuance_id": "iss_01JTEST",
			"grant":       "payments-vault",
		},
	}
}

// authReply is a create-token answer.
func authReply(lease int, renewable bool, policies ...string) map[string]any {
	return map[string]any{
		"auth": map[string]any{
			"client_token":   "hvs.minted-secret",
			"accessor":       "acc-123",
			"policies":       append([]string{"default"}, policies...),
			"token_policies": append([]string{"default"}, policies...),
			"lease_duration": lease,
			"renewable":      renewable,
			"orphan":         true, // create-orphan, or a role with orphan=true
		},
	}
}

// childAuthReply is authReply for a token that is not an orphan: what a
// token role edited to orphan=false makes.
func childAuthReply(lease int, policies ...string) map[string]any {
	r := authReply(lease, false, policies...)
	r["auth"].(map[string]any)["orphan"] = false
	return r
}

func TestTokenMinterMint(t *testing.T) {
	t.Parallel()
	const createOrphan = "PUT /v1/auth/token/create-orphan"
	const revoke = "PUT /v1/auth/token/revoke-accessor"
	tests := []struct {
		name      string
		role      string
		req       broker.MintRequest
		path      string         // create path expected
		wantBody  map[string]any // exact create body
		replyWith http.HandlerFunc
		revoke    bool // a revoke-accessor call is expected
		want      *broker.Credential
		wantErr   errShape
	}{
		{
			name:      "ok/create-orphan",
			req:       tokenReq(nil),
			path:      createOrphan,
			wantBody:  wantCreateBody([]string{"payments-read"}, "900s", 0),
			replyWith: func(w http.ResponseWriter, r *http.Request) { reply(w, 200, authReply(900, false, "payments-read")) },
			want: &broker.Credential{
				AccessToken: "hvs.minted-secret",
				Fields:      map[string]any{"accessor": "acc-123", "policies": []string{"default", "payments-read"}, "lease_duration": 900},
				Refs:        broker.CredentialRefs{Accessor: "acc-123", ExpiresAt: t0.Add(15 * time.Minute)},
			},
		},
		{
			name: "ok/role-num-uses-shorter-lease",
			role: "keytrail",
			req: tokenReq(func(r *broker.MintRequest) {
				r.Grant.VaultToken = &policies.VaultTokenGrant{Policies: []string{"a", "b"}, NumUses: 3}
				r.TTL = 90*time.Second + 500*time.Millisecond // whole seconds only
			}),
			path:      "PUT /v1/auth/token/create/keytrail",
			wantBody:  wantCreateBody([]string{"a", "b"}, "90s", 3),
			replyWith: func(w http.ResponseWriter, r *http.Request) { reply(w, 200, authReply(60, false, "a", "b")) },
			want: &broker.Credential{
				AccessToken: "hvs.minted-secret",
				Fields:      map[string]any{"accessor": "acc-123", "policies": []string{"default", "a", "b"}, "lease_duration": 60},
				Refs:        broker.CredentialRefs{Accessor: "acc-123", ExpiresAt: t0.Add(time.Minute)},
			},
		},
		{
			name:      "fail/lease-exceeds-ttl-is-revoked",
			req:       tokenReq(nil),
			path:      createOrphan,
			wantBody:  wantCreateBody([]string{"payments-read"}, "900s", 0),
			replyWith: func(w http.ResponseWriter, r *http.Request) { reply(w, 200, authReply(3600, false, "payments-read")) },
			revoke:    true,
			wantErr:   errShape{unavailable, ReasonBadResponse},
		},
		{
			name:      "fail/renewable-is-revoked",
			req:       tokenReq(nil),
			path:      createOrphan,
			wantBody:  wantCreateBody([]string{"payments-read"}, "900s", 0),
			replyWith: func(w http.ResponseWriter, r *http.Request) { reply(w, 200, authReply(900, true, "payments-read")) },
			revoke:    true,
			wantErr:   errShape{unavailable, ReasonBadResponse},
		},
		{
			name:      "fail/role-made-a-child-is-revoked",
			role:      "keytrail",
			req:       tokenReq(nil),
			path:      "PUT /v1/auth/token/create/keytrail",
			wantBody:  wantCreateBody([]string{"payments-read"}, "900s", 0),
			replyWith: func(w http.ResponseWriter, r *http.Request) { reply(w, 200, childAuthReply(900, "payments-read")) },
			revoke:    true,
			wantErr:   errShape{unavailable, ReasonConfig},
		},
		{
			name:      "fail/no-auth-block",
			req:       tokenReq(nil),
			path:      createOrphan,
			wantBody:  wantCreateBody([]string{"payments-read"}, "900s", 0),
			replyWith: func(w http.ResponseWriter, r *http.Request) { reply(w, 200, map[string]any{"data": map[string]any{}}) },
			wantErr:   errShape{unavailable, ReasonBadResponse},
		},
		{
			name:    "fail/no-policies-would-inherit",
			req:     tokenReq(func(r *broker.MintRequest) { r.Grant.VaultToken.Policies = nil }),
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name:    "fail/root-policy",
			req:     tokenReq(func(r *broker.MintRequest) { r.Grant.VaultToken.Policies = []string{"a", " Root"} }),
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name:    "fail/wrong-kind",
			req:     tokenReq(func(r *broker.MintRequest) { r.Grant.Kind = broker.KindJWT }),
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name:    "fail/ttl-under-a-second",
			req:     tokenReq(func(r *broker.MintRequest) { r.TTL = 999 * time.Millisecond }),
			wantErr: errShape{invalid, "ttl_too_short"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			routes := map[string]http.HandlerFunc{}
			if tc.path != "" {
				routes[tc.path] = func(w http.ResponseWriter, r *http.Request) {
					if diff := cmp.Diff(tc.wantBody, decodeBody(t, r)); diff != "" {
						t.Errorf("create body (-want +got):\n%s", diff)
					}
					tc.replyWith(w, r)
				}
			}
			if tc.revoke {
				routes[revoke] = func(w http.ResponseWriter, r *http.Request) {
					if diff := cmp.Diff(map[string]any{"accessor": "acc-123"}, decodeBody(t, r)); diff != "" {
						t.Errorf("revoke body (-want +got):\n%s", diff)
					}
					w.WriteHeader(http.StatusNoContent)
				}
			}
			f := newFakeVault(t, routes)
			m, err := NewTokenMinter(TokenMinterOptions{Client: f.client(t), Role: tc.role, Now: func() time.Time { return t0 }})
			if err != nil {
				t.Fatal(err)
			}
			got, err := m.Mint(context.Background(), tc.req)
			if diff := cmp.Diff(tc.wantErr, shapeOf(err)); diff != "" {
				t.Errorf("Mint() error = %v, want %+v", err, tc.wantErr)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("Mint() credential (-want +got):\n%s", diff)
			}
			if err != nil && strings.Contains(err.Error(), "hvs.minted-secret") {
				t.Errorf("Mint() error leaks the token: %v", err)
			}
			wantCalls := 0
			if tc.path != "" {
				wantCalls++
				if n := f.count(tc.path); n != 1 {
					t.Errorf("create calls = %d, want 1", n)
				}
			}
			if tc.revoke {
				wantCalls++
			}
			if n := f.total(); n != wantCalls {
				t.Errorf("Vault calls = %d, want %d", n, wantCalls)
			}
		})
	}
}

// TestTokenMinterErrors is the error translation table: everything Vault can
// go wrong with is ErrUnavailable, Vault's text never reaches Safe, and no
// request is retried.
func TestTokenMinterErrors(t *testing.T) {
	t.Parallel()
	const secretDetail = "policy detail SECRET-DETAIL-42"
	tests := []struct {
		name    string
		status  int
		body    string
		want    errShape
		wantRA  time.Duration
		wantMsg string // must appear in Error() (for the log)
	}{
		{"fail/sealed-503", 503, `{"errors":["Vault is sealed"]}`, errShape{unavailable, ReasonUnavailable}, 2 * time.Second, "Vault is sealed"},
		{"fail/500-not-retried", 500, `{"errors":["internal error ` + secretDetail + `"]}`, errShape{unavailable, ReasonUnavailable}, 2 * time.Second, secretDetail},
		{"fail/502-raw-body", 502, `<html>bad gateway</html>`, errShape{unavailable, ReasonUnavailable}, 2 * time.Second, "bad gateway"},
		{"fail/429-rate-limited", 429, `{"errors":["request path \"auth/token/create-orphan\": rate limit quota exceeded"]}`, errShape{unavailable, ReasonUnavailable}, 2 * time.Second, "quota"},
		{"fail/403-broker-misconfigured", 403, `{"errors":["1 error occurred:\n\t* permission denied\n\n"]}`, errShape{unavailable, ReasonDenied}, 30 * time.Second, "permission denied"},
		{"fail/401-broker-token-bad", 401, `{"errors":["` + secretDetail + `"]}`, errShape{unavailable, ReasonDenied}, 30 * time.Second, secretDetail},
		{"fail/400-not-subset", 400, `{"errors":["child policies must be subset of parent"]}`, errShape{unavailable, ReasonRejected}, 30 * time.Second, "subset"},
		{"fail/404-unknown-role", 404, ``, errShape{unavailable, ReasonRejected}, 30 * time.Second, "Code: 404"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeVault(t, map[string]http.HandlerFunc{
				"PUT /v1/auth/token/create-orphan": replyRaw(tc.status, tc.body),
			})
			m, err := NewTokenMinter(TokenMinterOptions{Client: f.client(t)})
			if err != nil {
				t.Fatal(err)
			}
			_, err = m.Mint(context.Background(), tokenReq(nil))
			if diff := cmp.Diff(tc.want, shapeOf(err)); diff != "" {
				t.Fatalf("Mint() error = %v, want %+v", err, tc.want)
			}
			be := broker.AsError(err)
			if be.RetryAfter != tc.wantRA {
				t.Errorf("RetryAfter = %v, want %v", be.RetryAfter, tc.wantRA)
			}
			if be.Safe != "a backend is temporarily unavailable; retry later" {
				t.Errorf("Safe = %q, want the generic text", be.Safe)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("Error() = %q, want it to contain %q for the log", err.Error(), tc.wantMsg)
			}
			if n := f.total(); n != 1 {
				t.Errorf("Vault calls = %d, want exactly 1 (no retry)", n)
			}
		})
	}
}

func TestTokenMinterConnectionRefused(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := "http://" + l.Addr().String()
	l.Close()
	c, err := NewClient(ClientOptions{Address: addr, Token: brokerToken})
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewTokenMinter(TokenMinterOptions{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Mint(context.Background(), tokenReq(nil))
	if got, want := shapeOf(err), (errShape{unavailable, ReasonUnavailable}); got != want {
		t.Errorf("Mint(refused) = %v, want %+v", err, want)
	}
	err = m.Revoke(context.Background(), &broker.Issuance{Refs: broker.CredentialRefs{Accessor: "acc"}})
	if got, want := shapeOf(err), (errShape{unavailable, ReasonUnavailable}); got != want {
		t.Errorf("Revoke(refused) = %v, want %+v", err, want)
	}
}

func TestTokenMinterDeadline(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	f := newFakeVault(t, map[string]http.HandlerFunc{
		"PUT /v1/auth/token/create-orphan": func(w http.ResponseWriter, r *http.Request) {
			_ = decodeBody(t, r)
			select {
			case <-r.Context().Done():
			case <-release:
			}
		},
	})
	// Registered after the server, so it runs before the server's Close.
	t.Cleanup(func() { close(release) })
	m, err := NewTokenMinter(TokenMinterOptions{Client: f.client(t)}) // client timeout 5s
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = m.Mint(ctx, tokenReq(nil))
	elapsed := time.Since(start)
	if got, want := shapeOf(err), (errShape{unavailable, ReasonUnavailable}); got != want {
		t.Errorf("Mint(deadline) = %v, want %+v", err, want)
	}
	if elapsed > 2*time.Second {
		t.Errorf("Mint(deadline) took %v, want it to return at the 200ms deadline", elapsed)
	}
	if n := f.total(); n != 1 {
		t.Errorf("Vault calls = %d, want 1", n)
	}
}

// cancelOnRT cancels the caller's ctx as a request to path sets out, then
// sends the request on: the exchange's client goes away while Mint talks to
// Vault. A request made with that ctx then fails in the transport and never
// reaches Vault.
type cancelOnRT struct {
	path   string
	cancel context.CancelFunc
}

func (rt cancelOnRT) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path == rt.path {
		rt.cancel()
	}
	return http.DefaultTransport.RoundTrip(r)
}

// TestTokenMinterTakesBackLongTokenAfterCancel: Vault answers the create
// with a lease longer than the grant's TTL (a token role with a period, a
// renewable token), and the caller's ctx ends as Mint takes that token back.
// The revocation must still reach Vault (it must not depend on the caller:
// the token would stay valid, unrecorded, for 24h) and, when Vault refuses
// it, the returned error must say why. (vault/api drops an answer whose ctx
// ended before it returned, so the create itself cannot be the moment.)
func TestTokenMinterTakesBackLongTokenAfterCancel(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		revoke    http.HandlerFunc
		wantInErr string // in the returned error's text (for the log)
	}{
		{"ok/revoked", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(204) }, "the token was revoked"},
		{"fail/revoke-refused", replyRaw(403, `{"errors":["permission denied on revoke-accessor"]}`), "permission denied on revoke-accessor"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeVault(t, map[string]http.HandlerFunc{
				"PUT /v1/auth/token/create-orphan": func(w http.ResponseWriter, r *http.Request) {
					reply(w, 200, authReply(86400, true, "payments-read"))
				},
				"PUT /v1/auth/token/revoke-accessor": tt.revoke,
			})
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cfg := vaultapi.DefaultConfig()
			cfg.Address = f.srv.URL
			cfg.MaxRetries = 0
			cfg.Timeout = 5 * time.Second
			cfg.HttpClient = &http.Client{Transport: cancelOnRT{path: "/v1/auth/token/revoke-accessor", cancel: cancel}}
			c, err := vaultapi.NewClient(cfg)
			if err != nil {
				t.Fatal(err)
			}
			c.SetToken(brokerToken)
			m, err := NewTokenMinter(TokenMinterOptions{Client: c, Now: func() time.Time { return t0 }})
			if err != nil {
				t.Fatal(err)
			}
			_, err = m.Mint(ctx, tokenReq(nil))
			if got, want := shapeOf(err), (errShape{unavailable, ReasonBadResponse}); got != want {
				t.Errorf("Mint(24h renewable token, ctx ended) = %v, want %+v", err, want)
			}
			if err != nil && !strings.Contains(err.Error(), tt.wantInErr) {
				t.Errorf("Mint() error = %q, want it to contain %q", err, tt.wantInErr)
			}
			if n := f.count("PUT /v1/auth/token/revoke-accessor"); n != 1 {
				t.Errorf("revoke-accessor calls = %d, want 1: a renewable 24h token minted for a 15m grant was left valid", n)
			}
		})
	}
}

func TestTokenMinterRevoke(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		is      *broker.Issuance
		reply   http.HandlerFunc // nil: no call expected
		wantErr errShape
	}{
		{"ok/revoked", &broker.Issuance{Refs: broker.CredentialRefs{Accessor: "acc-1"}}, replyRaw(204, ""), errShape{}},
		{"ok/unknown-accessor-warning", &broker.Issuance{Refs: broker.CredentialRefs{Accessor: "acc-1"}}, replyRaw(200, `{"warnings":["No token found with this accessor"]}`), errShape{}},
		{"ok/token-not-found", &broker.Issuance{Refs: broker.CredentialRefs{Accessor: "acc-1"}}, replyRaw(400, `{"errors":["token not found"]}`), errShape{}},
		{"ok/invalid-accessor", &broker.Issuance{Refs: broker.CredentialRefs{Accessor: "acc-1"}}, replyRaw(400, `{"errors":["invalid accessor"]}`), errShape{}},
		{"fail/other-400", &broker.Issuance{Refs: broker.CredentialRefs{Accessor: "acc-1"}}, replyRaw(400, `{"errors":["missing accessor"]}`), errShape{unavailable, ReasonRejected}},
		{"fail/500-not-retried", &broker.Issuance{Refs: broker.CredentialRefs{Accessor: "acc-1"}}, replyRaw(500, `{"errors":["boom"]}`), errShape{unavailable, ReasonUnavailable}},
		{"fail/403", &broker.Issuance{Refs: broker.CredentialRefs{Accessor: "acc-1"}}, replyRaw(403, `{"errors":["permission denied"]}`), errShape{unavailable, ReasonDenied}},
		{"fail/missing-accessor", &broker.Issuance{ID: "iss_x"}, nil, errShape{invalid, "missing_accessor"}},
		{"fail/nil-issuance", nil, nil, errShape{invalid, "missing_accessor"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			routes := map[string]http.HandlerFunc{}
			if tc.reply != nil {
				routes["PUT /v1/auth/token/revoke-accessor"] = func(w http.ResponseWriter, r *http.Request) {
					if diff := cmp.Diff(map[string]any{"accessor": "acc-1"}, decodeBody(t, r)); diff != "" {
						t.Errorf("revoke body (-want +got):\n%s", diff)
					}
					tc.reply(w, r)
				}
			}
			f := newFakeVault(t, routes)
			m, err := NewTokenMinter(TokenMinterOptions{Client: f.client(t)})
			if err != nil {
				t.Fatal(err)
			}
			err = m.Revoke(context.Background(), tc.is)
			if diff := cmp.Diff(tc.wantErr, shapeOf(err)); diff != "" {
				t.Errorf("Revoke() = %v, want %+v", err, tc.wantErr)
			}
			want := 0
			if tc.reply != nil {
				want = 1
			}
			if n := f.total(); n != want {
				t.Errorf("Vault calls = %d, want %d", n, want)
			}
		})
	}
}

// TestTokenMinterCheckRole: a token role must exist, make orphans and be
// able to make service tokens, or the broker does not start; without a role
// there is nothing to read.
func TestTokenMinterCheckRole(t *testing.T) {
	f := newFakeVault(t, map[string]http.HandlerFunc{
		"GET /v1/auth/token/roles/orphans": func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, map[string]any{"data": map[string]any{"orphan": true, "allowed_policies": []string{"payments-read"}}})
		},
		"GET /v1/auth/token/roles/children": func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, map[string]any{"data": map[string]any{"orphan": false}})
		},
		"GET /v1/auth/token/roles/batch": func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, map[string]any{"data": map[string]any{"orphan": true, "token_type": "batch"}})
		},
		"GET /v1/auth/token/roles/default-batch": func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, map[string]any{"data": map[string]any{"orphan": true, "token_type": "default-batch"}})
		},
		"GET /v1/auth/token/roles/num-uses": func(w http.ResponseWriter, r *http.Request) {
			reply(w, 200, map[string]any{"data": map[string]any{"orphan": true, "token_num_uses": 1}})
		},
		"GET /v1/auth/token/roles/hidden":  replyRaw(403, `{"errors":["permission denied"]}`),
		"GET /v1/auth/token/roles/missing": replyRaw(404, `{"errors":[]}`), // what Vault answers
	})
	for _, tc := range []struct {
		role    string
		wantErr string // "" = nil
	}{
		{"", ""},
		{"orphans", ""},
		{"children", "must set orphan=true"},
		{"batch", "token_type"},
		{"default-batch", ""}, // the request's type=service wins
		{"num-uses", "token_num_uses=1"},
		{"missing", "does not exist"},
		{"hidden", "permission denied"},
	} {
		t.Run("role="+tc.role, func(t *testing.T) {
			m, err := NewTokenMinter(TokenMinterOptions{Client: f.client(t), Role: tc.role})
			if err != nil {
				t.Fatal(err)
			}
			err = m.CheckRole(context.Background())
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("CheckRole() = %v, want nil", err)
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Errorf("CheckRole() = %v, want an error containing %q", err, tc.wantErr)
			}
		})
	}
	if n := f.count("GET /v1/auth/token/roles/orphans"); n != 1 {
		t.Errorf("role reads = %d, want 1", n)
	}
}

func TestNewTokenMinterValidates(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t, nil)
	for _, tc := range []struct {
		name string
		o    TokenMinterOptions
		ok   bool
	}{
		{"ok/default", TokenMinterOptions{Client: f.client(t)}, true},
		{"ok/role", TokenMinterOptions{Client: f.client(t), Role: "keytrail"}, true},
		{"fail/no-client", TokenMinterOptions{}, false},
		{"fail/role-with-slash", TokenMinterOptions{Client: f.client(t), Role: "a/../b"}, false},
	} {
		_, err := NewTokenMinter(tc.o)
		if (err == nil) != tc.ok {
			t.Errorf("%s: NewTokenMinter() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

// TestNewClient checks validation, and that VAULT_* variables change neither
// the token, the namespace nor the retry count.
func TestNewClient(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte("  "+brokerToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	emptyFile := filepath.Join(dir, "empty")
	if err := os.WriteFile(emptyFile, []byte("\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("VAULT_TOKEN", "hvs.from-env")
	t.Setenv("VAULT_NAMESPACE", "env-ns")
	t.Setenv("VAULT_MAX_RETRIES", "5")
	t.Setenv("VAULT_AGENT_ADDR", "http://127.0.0.1:1")

	f := newFakeVault(t, map[string]http.HandlerFunc{
		"PUT /v1/auth/token/create-orphan": replyRaw(500, `{"errors":["boom"]}`),
	})
	t.Setenv("VAULT_ADDR", "http://127.0.0.1:1")

	fails := []struct {
		name string
		o    ClientOptions
		want string // substring of the error
	}{
		{"fail/no-address", ClientOptions{Token: "x"}, "vault.address: required"},
		{"fail/bad-scheme", ClientOptions{Address: "ftp://vault:8200", Token: "x"}, "vault.address: must be"},
		{"fail/no-token", ClientOptions{Address: f.srv.URL}, "exactly one of token and token_file"},
		{"fail/both-tokens", ClientOptions{Address: f.srv.URL, Token: "x", TokenFile: tokenFile}, "exactly one of token and token_file"},
		{"fail/token-and-login", ClientOptions{Address: f.srv.URL, Token: "x", NoToken: true}, "cannot be combined with a login method"},
		{"fail/negative-timeout", ClientOptions{Address: f.srv.URL, Token: "x", Timeout: -1}, "vault.timeout"},
		{"fail/missing-token-file", ClientOptions{Address: f.srv.URL, TokenFile: filepath.Join(dir, "nope")}, "vault.token_file"},
		{"fail/empty-token-file", ClientOptions{Address: f.srv.URL, TokenFile: emptyFile}, ": empty"},
		{"fail/missing-ca-file", ClientOptions{Address: f.srv.URL, Token: "x", CAFile: filepath.Join(dir, "nope.pem")}, "vault.ca_file"},
	}
	for _, tc := range fails {
		_, err := NewClient(tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: NewClient() = %v, want error containing %q", tc.name, err, tc.want)
		}
	}

	c, err := NewClient(ClientOptions{Address: f.srv.URL, TokenFile: tokenFile})
	if err != nil {
		t.Fatalf("ok/token-file: NewClient() = %v", err)
	}
	if got := c.Address(); got != f.srv.URL {
		t.Errorf("Address() = %q, want %q", got, f.srv.URL)
	}
	if got := c.ClientTimeout(); got != DefaultTimeout {
		t.Errorf("ClientTimeout() = %v, want %v", got, DefaultTimeout)
	}
	m, err := NewTokenMinter(TokenMinterOptions{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Mint(context.Background(), tokenReq(nil)); err == nil {
		t.Fatal("Mint() = nil error, want the fake's 500")
	}
	if n := f.count("PUT /v1/auth/token/create-orphan"); n != 1 {
		t.Errorf("create calls with VAULT_MAX_RETRIES=5 = %d, want 1", n)
	}
}

// TestNewClientReusesConnections: with 16 requests in flight at once, three
// rounds of them open 16 connections to Vault, not one per request beyond
// the idle pool (vaultapi's default keeps GOMAXPROCS+1 idle connections).
func TestNewClientReusesConnections(t *testing.T) {
	const inFlight, rounds = 16, 3
	var newConns atomic.Int64
	arrived := make(chan struct{}, inFlight)
	release := make(chan struct{})
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived <- struct{}{}
		<-release
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"data":{"ok":true}}`)
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			newConns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)

	c, err := NewClient(ClientOptions{Address: srv.URL, Token: "x"})
	if err != nil {
		t.Fatal(err)
	}
	for r := 0; r < rounds; r++ {
		var wg sync.WaitGroup
		errs := make(chan error, inFlight)
		for i := 0; i < inFlight; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := c.Logical().ReadWithContext(context.Background(), "secret/x")
				errs <- err
			}()
		}
		for i := 0; i < inFlight; i++ {
			<-arrived // all 16 are in flight at once
		}
		for i := 0; i < inFlight; i++ {
			release <- struct{}{}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("round %d: %v", r, err)
			}
		}
	}
	if got := newConns.Load(); got > inFlight {
		t.Errorf("%d rounds of %d concurrent requests opened %d connections, want at most %d (idle connections reused)", rounds, inFlight, got, inFlight)
	}
}
