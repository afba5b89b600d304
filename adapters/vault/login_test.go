package vault_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	vaultapi "github.com/hashicorp/vault/api"

	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// placeholderToken is what a client holds before Start: never a valid token.
const placeholderToken = "hvs.placeholder-not-a-token"

// writeFile writes content to dir/name (0600) and returns the path.
func writeLoginFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// replaceFile replaces path atomically (write and rename, like a Kubernetes
// Secret volume or Vault Agent's sink).
func replaceLoginFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// waitUntil polls cond every 20ms until it holds, failing after timeout.
func waitLogin(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-time.After(20 * time.Millisecond)
	}
}

// loginLogBuffer is a log destination that Run's goroutine and the test share.
type loginLogBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *loginLogBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *loginLogBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newLoginLogger(w *loginLogBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// loginErr is what the tests compare of an error.
type loginErr struct {
	Kind   string
	Reason string
}

func loginErrOf(err error) loginErr {
	if err == nil {
		return loginErr{}
	}
	var be *broker.Error
	if !errors.As(err, &be) {
		return loginErr{Kind: "plain", Reason: err.Error()}
	}
	return loginErr{Kind: be.Kind.Error(), Reason: be.Reason}
}

func TestNewLogin(t *testing.T) {
	c, err := vault.NewClient(vault.ClientOptions{Address: "http://127.0.0.1:1", Token: placeholderToken})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		in   vault.LoginOptions
		want string // "" = ok, else a substring of the error
	}{
		{"ok/token", vault.LoginOptions{Client: c, Method: "token", Token: "t"}, ""},
		{"ok/token-file", vault.LoginOptions{Client: c, Method: "token_file", TokenFile: "/run/t"}, ""},
		{"ok/approle", vault.LoginOptions{Client: c, Method: "approle", RoleIDFile: "/r", SecretIDFile: "/s"}, ""},
		{"ok/approle-mount", vault.LoginOptions{Client: c, Method: "approle", RoleIDFile: "/r", SecretIDFile: "/s", Mount: "approle-prod"}, ""},
		{"ok/kubernetes", vault.LoginOptions{Client: c, Method: "kubernetes", Role: "keytrail"}, ""},
		{"ok/kubernetes-nested-mount", vault.LoginOptions{Client: c, Method: "kubernetes", Role: "keytrail", JWTFile: "/t", Mount: "k8s/prod"}, ""},
		{"fail/no-client", vault.LoginOptions{Method: "token", Token: "t"}, "client is required"},
		{"fail/unknown-method", vault.LoginOptions{Client: c, Method: "userpass"}, `method: must be token, token_file, approle or kubernetes, not "userpass"`},
		{"fail/no-method", vault.LoginOptions{Client: c}, "method: must be"},
		{"fail/token-missing", vault.LoginOptions{Client: c, Method: "token"}, "token: required for method token"},
		{"fail/token-file-missing", vault.LoginOptions{Client: c, Method: "token_file"}, "token_file: required for method token_file"},
		{"fail/approle-no-secret-id", vault.LoginOptions{Client: c, Method: "approle", RoleIDFile: "/r"}, "secret_id_file: required for method approle"},
		{"fail/approle-with-role", vault.LoginOptions{Client: c, Method: "approle", RoleIDFile: "/r", SecretIDFile: "/s", Role: "x"}, "role: not used by method approle"},
		{"fail/kubernetes-no-role", vault.LoginOptions{Client: c, Method: "kubernetes"}, "role: required for method kubernetes"},
		{"fail/kubernetes-with-token", vault.LoginOptions{Client: c, Method: "kubernetes", Role: "r", Token: "t"}, "token: not used by method kubernetes"},
		{"fail/token-with-mount", vault.LoginOptions{Client: c, Method: "token", Token: "t", Mount: "m"}, "mount: not used by method token"},
		{"fail/bad-mount", vault.LoginOptions{Client: c, Method: "approle", RoleIDFile: "/r", SecretIDFile: "/s", Mount: "../sys"}, "mount: bad auth mount path"},
		{"fail/mount-slash", vault.LoginOptions{Client: c, Method: "approle", RoleIDFile: "/r", SecretIDFile: "/s", Mount: "/approle/"}, "mount: bad auth mount path"},
		{"fail/role-path", vault.LoginOptions{Client: c, Method: "kubernetes", Role: "a/b"}, "must be a plain name"},
		{"fail/negative-poll", vault.LoginOptions{Client: c, Method: "token", Token: "t", PollInterval: -time.Second}, "must not be negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l, err := vault.NewLogin(tt.in)
			got := ""
			if err != nil {
				got = err.Error()
			}
			switch {
			case tt.want == "" && (err != nil || l == nil):
				t.Errorf("NewLogin(%s) = %v, want a Login", tt.name, err)
			case tt.want != "" && !strings.Contains(got, tt.want):
				t.Errorf("NewLogin(%s) = %q, want an error containing %q", tt.name, got, tt.want)
			}
		})
	}
}

// fakeLoginVault serves auth/<mount>/login for Kubernetes and AppRole
// logins and fails the test on anything else.
type fakeLoginVault struct {
	t   *testing.T
	srv *httptest.Server

	mu     sync.Mutex
	bodies []map[string]any
	paths  []string
	reply  func(n int) (int, any) // n: 1-based login count
}

func newFakeLoginVault(t *testing.T, reply func(n int) (int, any)) *fakeLoginVault {
	t.Helper()
	f := &fakeLoginVault{t: t, reply: reply}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeLoginVault) serve(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPut && r.URL.Path == "/v1/auth/token/revoke-self" {
		// Run revokes a token a new login replaced.
		w.WriteHeader(http.StatusNoContent)
		return
	}
	if r.Method != http.MethodPut || !strings.HasPrefix(r.URL.Path, "/v1/auth/") || !strings.HasSuffix(r.URL.Path, "/login") {
		f.t.Errorf("fake vault: unexpected request %s %s", r.Method, r.URL.Path)
		http.Error(w, `{"errors":["unexpected"]}`, http.StatusInternalServerError)
		return
	}
	if tok := r.Header.Get("X-Vault-Token"); tok != "" {
		f.t.Errorf("login request carries X-Vault-Token %q, want none", tok)
	}
	if ns := r.Header.Get("X-Vault-Namespace"); ns != "" {
		f.t.Errorf("login request carries X-Vault-Namespace %q, want none", ns)
	}
	if r.Header.Get("X-Vault-Request") != "true" {
		f.t.Errorf("login request lacks X-Vault-Request: true")
	}
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		f.t.Errorf("login body is not JSON: %v", err)
	}
	f.mu.Lock()
	f.bodies = append(f.bodies, body)
	f.paths = append(f.paths, r.URL.Path)
	n := len(f.bodies)
	f.mu.Unlock()
	status, out := f.reply(n)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(out)
}

func (f *fakeLoginVault) requests() ([]string, []map[string]any) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.paths...), append([]map[string]any(nil), f.bodies...)
}

func authReply(token string, lease int, renewable bool) any {
	return map[string]any{"auth": map[string]any{
		"client_token": token, "accessor": "acc-" + token, "policies": []string{"keytrail-broker"},
		"lease_duration": lease, "renewable": renewable,
	}}
}

// TestLoginKubernetes checks the Kubernetes login request against a fake
// Vault: the path of the mount, a body of exactly role and jwt, no token,
// no namespace (even with VAULT_TOKEN and VAULT_NAMESPACE in the
// environment), and the returned token set on the client.
func TestLoginKubernetes(t *testing.T) {
	t.Setenv("VAULT_TOKEN", "hvs.from-the-environment")
	t.Setenv("VAULT_NAMESPACE", "from-the-environment")
	dir := t.TempDir()
	jwtFile := writeLoginFile(t, dir, "token", "eyJhbGciOiJSUzI1NiJ9.k8s-sa.sig\n")
	emptyFile := writeLoginFile(t, dir, "empty", " \n")
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

	type want struct {
		Err      loginErr
		Path     string
		Body     map[string]any
		Token    string
		Status   vault.LoginStatus
		Requests int
	}
	tests := []struct {
		name  string
		opts  vault.LoginOptions
		reply func(int) (int, any)
		want  want
	}{
		{
			name:  "ok/default-mount",
			opts:  vault.LoginOptions{Method: "kubernetes", Role: "keytrail", JWTFile: jwtFile},
			reply: func(int) (int, any) { return 200, authReply("hvs.k8s-1", 3600, true) },
			want: want{
				Path: "/v1/auth/kubernetes/login", Body: map[string]any{"role": "keytrail", "jwt": "eyJhbGciOiJSUzI1NiJ9.k8s-sa.sig"},
				Token:    "hvs.k8s-1",
				Status:   vault.LoginStatus{Method: "kubernetes", Logins: 1, LastLogin: now, ExpiresAt: now.Add(time.Hour), Renewable: true, TokenType: "service"},
				Requests: 1,
			},
		},
		{
			name:  "ok/custom-mount",
			opts:  vault.LoginOptions{Method: "kubernetes", Role: "broker", JWTFile: jwtFile, Mount: "k8s/prod"},
			reply: func(int) (int, any) { return 200, authReply("hvs.k8s-2", 60, false) },
			want: want{
				Path: "/v1/auth/k8s/prod/login", Body: map[string]any{"role": "broker", "jwt": "eyJhbGciOiJSUzI1NiJ9.k8s-sa.sig"},
				Token:    "hvs.k8s-2",
				Status:   vault.LoginStatus{Method: "kubernetes", Logins: 1, LastLogin: now, ExpiresAt: now.Add(time.Minute), TokenType: "service"},
				Requests: 1,
			},
		},
		{
			// Vault gives a batch token no accessor.
			name: "ok/batch-token",
			opts: vault.LoginOptions{Method: "kubernetes", Role: "broker", JWTFile: jwtFile},
			reply: func(int) (int, any) {
				return 200, map[string]any{"auth": map[string]any{"client_token": "hvb.k8s-3", "accessor": "", "lease_duration": 60, "renewable": false}}
			},
			want: want{
				Path: "/v1/auth/kubernetes/login", Body: map[string]any{"role": "broker", "jwt": "eyJhbGciOiJSUzI1NiJ9.k8s-sa.sig"},
				Token:    "hvb.k8s-3",
				Status:   vault.LoginStatus{Method: "kubernetes", Logins: 1, LastLogin: now, ExpiresAt: now.Add(time.Minute), TokenType: "batch"},
				Requests: 1,
			},
		},
		{
			name: "fail/role-rejected",
			opts: vault.LoginOptions{Method: "kubernetes", Role: "nope", JWTFile: jwtFile},
			reply: func(int) (int, any) {
				return 400, map[string]any{"errors": []string{`invalid role name "nope"`}}
			},
			want: want{
				Err:  loginErr{Kind: broker.ErrUnavailable.Error(), Reason: vault.ReasonRejected},
				Path: "/v1/auth/kubernetes/login", Body: map[string]any{"role": "nope", "jwt": "eyJhbGciOiJSUzI1NiJ9.k8s-sa.sig"},
				Token: placeholderToken, Status: vault.LoginStatus{Method: "kubernetes"}, Requests: 1,
			},
		},
		{
			name:  "fail/jwt-denied",
			opts:  vault.LoginOptions{Method: "kubernetes", Role: "keytrail", JWTFile: jwtFile},
			reply: func(int) (int, any) { return 403, map[string]any{"errors": []string{"permission denied"}} },
			want: want{
				Err:  loginErr{Kind: broker.ErrUnavailable.Error(), Reason: vault.ReasonDenied},
				Path: "/v1/auth/kubernetes/login", Body: map[string]any{"role": "keytrail", "jwt": "eyJhbGciOiJSUzI1NiJ9.k8s-sa.sig"},
				Token: placeholderToken, Status: vault.LoginStatus{Method: "kubernetes"}, Requests: 1,
			},
		},
		{
			name:  "fail/no-auth-block",
			opts:  vault.LoginOptions{Method: "kubernetes", Role: "keytrail", JWTFile: jwtFile},
			reply: func(int) (int, any) { return 200, map[string]any{"data": map[string]any{}} },
			want: want{
				Err:  loginErr{Kind: broker.ErrUnavailable.Error(), Reason: vault.ReasonBadResponse},
				Path: "/v1/auth/kubernetes/login", Body: map[string]any{"role": "keytrail", "jwt": "eyJhbGciOiJSUzI1NiJ9.k8s-sa.sig"},
				Token: placeholderToken, Status: vault.LoginStatus{Method: "kubernetes"}, Requests: 1,
			},
		},
		{
			name:  "fail/jwt-file-missing",
			opts:  vault.LoginOptions{Method: "kubernetes", Role: "keytrail", JWTFile: filepath.Join(dir, "absent")},
			reply: func(int) (int, any) { return 200, authReply("hvs.never", 60, true) },
			want: want{
				Err:   loginErr{Kind: broker.ErrUnavailable.Error(), Reason: vault.ReasonConfig},
				Token: placeholderToken, Status: vault.LoginStatus{Method: "kubernetes"},
			},
		},
		{
			name:  "fail/jwt-file-empty",
			opts:  vault.LoginOptions{Method: "kubernetes", Role: "keytrail", JWTFile: emptyFile},
			reply: func(int) (int, any) { return 200, authReply("hvs.never", 60, true) },
			want: want{
				Err:   loginErr{Kind: broker.ErrUnavailable.Error(), Reason: vault.ReasonConfig},
				Token: placeholderToken, Status: vault.LoginStatus{Method: "kubernetes"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFakeLoginVault(t, tt.reply)
			c, err := vault.NewClient(vault.ClientOptions{Address: f.srv.URL, Token: placeholderToken, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			o := tt.opts
			o.Client = c
			o.Now = func() time.Time { return now }
			l, err := vault.NewLogin(o)
			if err != nil {
				t.Fatal(err)
			}
			if s := fmt.Sprint(l) + fmt.Sprintf("%+v", l); strings.Contains(s, placeholderToken) || strings.Contains(s, "k8s-sa") {
				t.Errorf("a printed Login shows a credential: %s", s)
			}
			err = l.Start(context.Background())
			if s := fmt.Sprint(l); strings.Contains(s, "hvs.") {
				t.Errorf("a printed Login shows the token: %s", s)
			}
			paths, bodies := f.requests()
			got := want{Err: loginErrOf(err), Token: c.Token(), Status: l.Status(), Requests: len(bodies)}
			got.Status.LastError = ""
			if len(bodies) > 0 {
				got.Path, got.Body = paths[0], bodies[0]
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Start(%s) (-want +got):\n%s", tt.name, diff)
			}
			if err != nil && strings.Contains(err.Error(), "k8s-sa") {
				t.Errorf("Start(%s) error carries the service-account token: %v", tt.name, err)
			}
		})
	}
}

// TestLoginKubernetesRun: when the token cannot be renewed any more, Run
// logs in again (reading the rotated service-account token), retrying
// failed logins with exponential backoff, and stops with its ctx.
func TestLoginKubernetesRun(t *testing.T) {
	dir := t.TempDir()
	jwtFile := writeLoginFile(t, dir, "token", "jwt-one")
	f := newFakeLoginVault(t, func(n int) (int, any) {
		switch n {
		case 1:
			// Not renewable, 1s: the LifetimeWatcher gives up within it.
			return 200, authReply("hvs.first", 1, false)
		case 2, 3:
			return 503, map[string]any{"errors": []string{"Vault is sealed"}}
		default:
			// Not renewable either, so the watcher makes no renew call.
			return 200, authReply("hvs.second", 3600, false)
		}
	})
	c, err := vault.NewClient(vault.ClientOptions{Address: f.srv.URL, Token: placeholderToken, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var waits waitRecorder
	var logs loginLogBuffer
	l, err := vault.NewLogin(vault.LoginOptions{
		Client: c, Method: "kubernetes", Role: "keytrail", JWTFile: jwtFile,
		RetryMin: 100 * time.Millisecond, RetryMax: 250 * time.Millisecond,
		After: waits.after, Logger: newLoginLogger(&logs),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := l.Run(ctx); err == nil {
		t.Errorf("Run() before Start() = nil, want an error")
	}
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	replaceLoginFile(t, jwtFile, "jwt-two")
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	waitLogin(t, 10*time.Second, "a second successful login", func() bool { return c.Token() == "hvs.second" })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run() after cancel = %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run() did not return after its ctx ended")
	}

	st := l.Status()
	st.LastLogin, st.ExpiresAt = time.Time{}, time.Time{}
	if diff := cmp.Diff(vault.LoginStatus{Method: "kubernetes", Logins: 2, Failures: 2, TokenType: "service"}, st); diff != "" {
		t.Errorf("Status() (-want +got):\n%s", diff)
	}
	gotWaits := waits.got()
	if diff := cmp.Diff([]time.Duration{100 * time.Millisecond, 200 * time.Millisecond}, gotWaits); diff != "" {
		t.Errorf("backoff waits (-want +got):\n%s", diff)
	}
	_, bodies := f.requests()
	var jwts []any
	for _, b := range bodies {
		jwts = append(jwts, b["jwt"])
	}
	if diff := cmp.Diff([]any{"jwt-one", "jwt-two", "jwt-two", "jwt-two"}, jwts); diff != "" {
		t.Errorf("jwt of each login (-want +got):\n%s", diff)
	}
	for _, secret := range []string{"hvs.first", "hvs.second", "jwt-one", "jwt-two"} {
		// The fake's accessors are "acc-" and the token: those may be logged.
		if strings.Contains(strings.ReplaceAll(logs.String(), "acc-"+secret, ""), secret) {
			t.Errorf("logs contain %q:\n%s", secret, logs.String())
		}
	}
}

// loginTestPolicy is a keytrail policy whose grants need a transit key, a
// KV read and a vault_token policy, for MinimumBrokerPolicy.
const loginTestPolicy = `version: 1
issuers:
  - name: test
    issuer: http://127.0.0.1:9/
    jwks_url: http://127.0.0.1:9/jwks.json
    audiences: [keytrail]
    algorithms: [ES256]
workloads:
  - name: api
    owner: team-a
    match: {issuer: test, subject: api}
    grants: [api-vault, api-jwt, api-proxy]
grants:
  - name: api-vault
    kind: vault_token
    ttl: 5m
    vault_token: {policies: [payments-read]}
  - name: api-jwt
    kind: jwt
    ttl: 5m
    jwt: {audience: orders, transit_key: keytrail-signing}
  - name: api-proxy
    kind: proxy
    ttl: 5m
    proxy:
      upstream: https://api.example.com
      secret: {vault_kv: secret/data/upstreams/example, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      paths: ["/v1/*"]
`

// TestLoginRealVault runs the logins against a real Vault dev server. The
// AppRole's tokens carry MinimumBrokerPolicy only (no default policy), so
// renewing them also proves that policy lets the broker renew itself.
func TestLoginRealVault(t *testing.T) {
	v := harness.StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	root := v.Client

	pol, err := policies.Parse("login-test.yaml", []byte(loginTestPolicy))
	if err != nil {
		t.Fatal(err)
	}
	hcl, err := vault.MinimumBrokerPolicy(pol, vault.BrokerPolicyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := root.Sys().PutPolicyWithContext(ctx, "keytrail-broker", hcl); err != nil {
		t.Fatalf("put policy: %v\n%s", err, hcl)
	}
	if err := root.Sys().EnableAuthWithOptionsWithContext(ctx, "approle", &vaultapi.EnableAuthOptions{Type: "approle"}); err != nil {
		t.Fatal(err)
	}
	if _, err := root.Logical().WriteWithContext(ctx, "auth/approle/role/keytrail", map[string]any{
		"token_ttl": "3s", "token_max_ttl": "6s",
		"token_policies": []string{"keytrail-broker"}, "token_no_default_policy": true,
	}); err != nil {
		t.Fatal(err)
	}
	rid, err := root.Logical().ReadWithContext(ctx, "auth/approle/role/keytrail/role-id")
	if err != nil {
		t.Fatal(err)
	}
	sid, err := root.Logical().WriteWithContext(ctx, "auth/approle/role/keytrail/secret-id", nil)
	if err != nil {
		t.Fatal(err)
	}
	roleID, secretID := rid.Data["role_id"].(string), sid.Data["secret_id"].(string)
	dir := t.TempDir()
	roleIDFile := writeLoginFile(t, dir, "role-id", roleID+"\n")
	secretIDFile := writeLoginFile(t, dir, "secret-id", secretID+"\n")
	badSecretFile := writeLoginFile(t, dir, "bad-secret-id", "00000000-0000-0000-0000-000000000000")

	newClient := func(t *testing.T) *vaultapi.Client {
		t.Helper()
		c, err := vault.NewClient(vault.ClientOptions{Address: v.Addr, Token: placeholderToken, Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	policiesOf := func(t *testing.T, c *vaultapi.Client) []string {
		t.Helper()
		self, err := c.Auth().Token().LookupSelfWithContext(ctx)
		if err != nil {
			t.Fatalf("lookup-self with the broker's client = %v", err)
		}
		ps, err := self.TokenPolicies()
		if err != nil {
			t.Fatal(err)
		}
		return ps
	}

	t.Run("ok/approle-renews-then-logs-in-again", func(t *testing.T) {
		c := newClient(t)
		var logs loginLogBuffer
		l, err := vault.NewLogin(vault.LoginOptions{
			Client: c, Method: "approle", RoleIDFile: roleIDFile, SecretIDFile: secretIDFile,
			RetryMin: 100 * time.Millisecond, Logger: newLoginLogger(&logs),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Start(ctx); err != nil {
			t.Fatalf("Start() = %v", err)
		}
		if diff := cmp.Diff([]string{"keytrail-broker"}, policiesOf(t, c)); diff != "" {
			t.Errorf("policies of the logged-in token (-want +got):\n%s", diff)
		}
		// The client works with the policy: read the transit keys.
		tk, err := vault.NewTransitKeys(vault.TransitKeysOptions{Client: c, Keys: []string{harness.VaultSigningKey}})
		if err != nil {
			t.Fatal(err)
		}
		if keys, err := tk.PublicKeys(ctx); err != nil || len(keys) == 0 {
			t.Errorf("PublicKeys() with the approle token = %d keys, %v; want keys", len(keys), err)
		}
		first := c.Token()

		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- l.Run(rctx) }()
		waitLogin(t, 15*time.Second, "a renewal of the approle token", func() bool { return l.Status().Renewals >= 1 })
		if c.Token() != first {
			t.Errorf("token changed before its max TTL; want it renewed in place")
		}
		waitLogin(t, 20*time.Second, "a new login after the token's max TTL", func() bool {
			return l.Status().Logins >= 2 && c.Token() != first
		})
		if diff := cmp.Diff([]string{"keytrail-broker"}, policiesOf(t, c)); diff != "" {
			t.Errorf("policies after the new login (-want +got):\n%s", diff)
		}
		stop()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run() = %v, want nil", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Run() did not return after its ctx ended")
		}
		if st := l.Status(); st.Failures != 0 {
			t.Errorf("Status().Failures = %d (%s), want 0", st.Failures, st.LastError)
		}
		for _, s := range []string{first, c.Token(), roleID, secretID} {
			if strings.Contains(logs.String(), s) {
				t.Errorf("logs contain a credential:\n%s", logs.String())
			}
		}
	})

	t.Run("ok/approle-token-revoked-logs-in-again", func(t *testing.T) {
		c := newClient(t)
		l, err := vault.NewLogin(vault.LoginOptions{
			Client: c, Method: "approle", RoleIDFile: roleIDFile, SecretIDFile: secretIDFile,
			RetryMin: 100 * time.Millisecond, MaxRenewInterval: 100 * time.Millisecond,
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Start(ctx); err != nil {
			t.Fatalf("Start() = %v", err)
		}
		first := c.Token()
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- l.Run(rctx) }()
		waitLogin(t, 5*time.Second, "a renewal of the approle token", func() bool { return l.Status().Renewals >= 1 })
		if err := root.Auth().Token().RevokeTreeWithContext(ctx, first); err != nil {
			t.Fatal(err)
		}
		// Well before the token's max TTL (6s) would make Run log in again.
		waitLogin(t, 2*time.Second, "a new login after the token was revoked", func() bool {
			return l.Status().Logins >= 2 && c.Token() != first
		})
		if diff := cmp.Diff([]string{"keytrail-broker"}, policiesOf(t, c)); diff != "" {
			t.Errorf("policies after the new login (-want +got):\n%s", diff)
		}
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
	})

	t.Run("ok/approle-replaced-token-revoked", func(t *testing.T) {
		// token_ttl = token_max_ttl = 10s: Run logs in again a tenth of
		// the lease (1s) before the first token ends, and revokes it
		// (revoke-self, which the minimum policy allows) before then.
		if _, err := root.Logical().WriteWithContext(ctx, "auth/approle/role/keytrail-replace", map[string]any{
			"token_ttl": "10s", "token_max_ttl": "10s",
			"token_policies": []string{"keytrail-broker"}, "token_no_default_policy": true,
		}); err != nil {
			t.Fatal(err)
		}
		rid, err := root.Logical().ReadWithContext(ctx, "auth/approle/role/keytrail-replace/role-id")
		if err != nil {
			t.Fatal(err)
		}
		sid, err := root.Logical().WriteWithContext(ctx, "auth/approle/role/keytrail-replace/secret-id", nil)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		c := newClient(t)
		var logs loginLogBuffer
		l, err := vault.NewLogin(vault.LoginOptions{
			Client: c, Method: "approle", RetryMin: 100 * time.Millisecond, RevokeGrace: 10 * time.Millisecond, Logger: newLoginLogger(&logs),
			RoleIDFile:   writeLoginFile(t, dir, "role-id", rid.Data["role_id"].(string)),
			SecretIDFile: writeLoginFile(t, dir, "secret-id", sid.Data["secret_id"].(string)),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Start(ctx); err != nil {
			t.Fatalf("Start() = %v", err)
		}
		first := c.Token()
		look, err := root.Auth().Token().LookupWithContext(ctx, first)
		if err != nil {
			t.Fatal(err)
		}
		accessor, _ := look.Data["accessor"].(string)
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- l.Run(rctx) }()
		waitLogin(t, 20*time.Second, "a new login near the first token's max TTL", func() bool { return c.Token() != first })
		// A success means Vault took revoke-self from the first token while
		// it was still valid (an ended token gets 403, logged at WARN).
		revoked := func() bool {
			for _, line := range strings.Split(logs.String(), "\n") {
				if strings.Contains(line, `"msg":"revoked the vault token a new login replaced"`) && strings.Contains(line, `"accessor":"`+accessor+`"`) {
					return true
				}
			}
			return false
		}
		waitLogin(t, 10*time.Second, "the first token's revocation", func() bool {
			return revoked() || strings.Contains(logs.String(), "could not revoke") || strings.Contains(logs.String(), "nothing to revoke")
		})
		if !revoked() {
			t.Errorf("the first token was not revoked while valid:\n%s", logs.String())
		}
		if _, err := root.Auth().Token().LookupAccessorWithContext(ctx, accessor); err == nil {
			t.Errorf("lookup-accessor of the replaced token succeeds; want it revoked")
		}
		if diff := cmp.Diff([]string{"keytrail-broker"}, policiesOf(t, c)); diff != "" {
			t.Errorf("policies of the new token (-want +got):\n%s", diff)
		}
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
		if strings.Contains(logs.String(), first) || strings.Contains(logs.String(), c.Token()) {
			t.Errorf("logs contain a token:\n%s", logs.String())
		}
	})

	t.Run("fail/approle-bad-secret-id", func(t *testing.T) {
		c := newClient(t)
		l, err := vault.NewLogin(vault.LoginOptions{Client: c, Method: "approle", RoleIDFile: roleIDFile, SecretIDFile: badSecretFile})
		if err != nil {
			t.Fatal(err)
		}
		err = l.Start(ctx)
		if diff := cmp.Diff(loginErr{Kind: broker.ErrUnavailable.Error(), Reason: vault.ReasonRejected}, loginErrOf(err)); diff != "" {
			t.Errorf("Start() error (-want +got):\n%s", diff)
		}
		msg := fmt.Sprint(err)
		t.Logf("Start() with a bad secret id: %v", err)
		if !strings.Contains(msg, "approle login at auth/approle/login") || !strings.Contains(strings.ToLower(msg), "invalid") {
			t.Errorf("Start() = %q, want it to name the approle login and Vault's reason", msg)
		}
		if strings.Contains(msg, "00000000-0000") || strings.Contains(msg, roleID) {
			t.Errorf("Start() error carries the role or secret id: %q", msg)
		}
		if c.Token() != placeholderToken {
			t.Errorf("client token changed after a failed login")
		}
	})

	mkToken := func(t *testing.T, ttl string) string {
		t.Helper()
		s, err := root.Auth().Token().CreateWithContext(ctx, &vaultapi.TokenCreateRequest{
			Policies: []string{"keytrail-broker"}, NoDefaultPolicy: true, TTL: ttl,
		})
		if err != nil {
			t.Fatal(err)
		}
		return s.Auth.ClientToken
	}

	t.Run("ok/token-file-rotation", func(t *testing.T) {
		a, b := mkToken(t, "1h"), mkToken(t, "1h")
		file := writeLoginFile(t, t.TempDir(), "vault-token", a+"\n")
		c := newClient(t)
		var logs loginLogBuffer
		l, err := vault.NewLogin(vault.LoginOptions{
			Client: c, Method: "token_file", TokenFile: file, PollInterval: 20 * time.Millisecond, Logger: newLoginLogger(&logs),
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Start(ctx); err != nil {
			t.Fatalf("Start() = %v", err)
		}
		if c.Token() != a {
			t.Fatalf("after Start() the client does not hold the file's token")
		}
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- l.Run(rctx) }()
		replaceLoginFile(t, file, a+"\n\n") // new mtime and size, same token: no new login
		replaceLoginFile(t, file, b+"\n")
		waitLogin(t, 10*time.Second, "the rotated token in use", func() bool { return c.Token() == b })
		if diff := cmp.Diff([]string{"keytrail-broker"}, policiesOf(t, c)); diff != "" {
			t.Errorf("policies after rotation (-want +got):\n%s", diff)
		}
		stop()
		<-done
		st := l.Status()
		if st.Logins != 2 || st.Failures != 0 || !st.Renewable || st.ExpiresAt.IsZero() {
			t.Errorf("Status() = %+v, want 2 logins, no failures, renewable with an expiry", st)
		}
		for _, s := range []string{a, b} {
			if strings.Contains(logs.String(), s) {
				t.Errorf("logs contain a token:\n%s", logs.String())
			}
		}
	})

	t.Run("ok/static-token", func(t *testing.T) {
		tok := mkToken(t, "1h")
		c := newClient(t)
		l, err := vault.NewLogin(vault.LoginOptions{Client: c, Method: "token", Token: tok})
		if err != nil {
			t.Fatal(err)
		}
		if err := l.Start(ctx); err != nil {
			t.Fatalf("Start() = %v", err)
		}
		st := l.Status()
		if c.Token() != tok || st.Logins != 1 || !st.Renewable || time.Until(st.ExpiresAt) < 59*time.Minute {
			t.Errorf("after Start(): holds token %v, Status() = %+v; want the token, renewable, expiring in about 1h", c.Token() == tok, st)
		}
	})

	t.Run("fail/static-token-revoked", func(t *testing.T) {
		tok := mkToken(t, "1h")
		if err := root.Auth().Token().RevokeOrphanWithContext(ctx, tok); err != nil {
			t.Fatal(err)
		}
		c := newClient(t)
		l, err := vault.NewLogin(vault.LoginOptions{Client: c, Method: "token", Token: tok})
		if err != nil {
			t.Fatal(err)
		}
		err = l.Start(ctx)
		if diff := cmp.Diff(loginErr{Kind: broker.ErrUnavailable.Error(), Reason: vault.ReasonDenied}, loginErrOf(err)); diff != "" {
			t.Errorf("Start() with a revoked token (-want +got):\n%s", diff)
		}
		if err != nil && strings.Contains(err.Error(), tok) {
			t.Errorf("Start() error carries the token")
		}
	})
}

// ownTokenVault is a fake Vault for the broker's own token. AppRole logins
// hand out hvs.login-1, hvs.login-2, ...; lookup-self and renew-self answer
// for any token with the given TTL, renewable, except for a revoked one,
// which gets 403 permission denied (as from Vault).
type ownTokenVault struct {
	t   *testing.T
	srv *httptest.Server
	ttl int

	mu       sync.Mutex
	logins   int
	revoked  map[string]bool
	noRenew  map[string]bool // valid, but renew-self is denied (a policy without it)
	capped   map[string]int  // renew-self answers this lease (its max TTL is near)
	noRevoke map[string]bool // revoke-self fails with 500 (Vault's storage failing)
	calls    map[string]int  // path+" "+token -> requests
}

func newOwnTokenVault(t *testing.T, ttl int) *ownTokenVault {
	t.Helper()
	f := &ownTokenVault{t: t, ttl: ttl, revoked: map[string]bool{}, noRenew: map[string]bool{}, capped: map[string]int{}, noRevoke: map[string]bool{}, calls: map[string]int{}}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *ownTokenVault) serve(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	tok := r.Header.Get("X-Vault-Token")
	f.mu.Lock()
	f.calls[r.URL.Path+" "+tok]++
	revoked := f.revoked[tok] || (r.URL.Path == "/v1/auth/token/renew-self" && f.noRenew[tok])
	renewLease, capped := f.capped[tok]
	noRevoke := f.noRevoke[tok]
	f.mu.Unlock()
	switch r.URL.Path {
	case "/v1/auth/approle/login":
		f.mu.Lock()
		f.logins++
		n := f.logins
		f.mu.Unlock()
		_ = json.NewEncoder(w).Encode(authReply(fmt.Sprintf("hvs.login-%d", n), f.ttl, true))
		return
	case "/v1/auth/token/lookup-self", "/v1/auth/token/renew-self":
		if revoked {
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"errors":["permission denied"]}`))
			return
		}
		if r.URL.Path == "/v1/auth/token/lookup-self" {
			_ = json.NewEncoder(w).Encode(map[string]any{"data": map[string]any{"ttl": f.ttl, "renewable": true}})
			return
		}
		if !capped {
			renewLease = f.ttl
		}
		_ = json.NewEncoder(w).Encode(authReply(tok, renewLease, true))
		return
	case "/v1/auth/token/revoke-self":
		if revoked {
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"errors":["permission denied"]}`))
			return
		}
		if noRevoke {
			w.WriteHeader(http.StatusInternalServerError)
			_, _ = w.Write([]byte(`{"errors":["failed to revoke token"]}`))
			return
		}
		f.revoke(tok)
		w.WriteHeader(http.StatusNoContent)
		return
	}
	f.t.Errorf("fake vault: unexpected request %s %s", r.Method, r.URL.Path)
	w.WriteHeader(http.StatusNotFound)
}

func (f *ownTokenVault) revoke(tok string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked[tok] = true
}

func (f *ownTokenVault) denyRenewal(tok string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.noRenew[tok] = true
}

// capRenewal makes renew-self of tok answer a lease of secs seconds, as
// Vault does near a token's max TTL.
func (f *ownTokenVault) capRenewal(tok string, secs int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.capped[tok] = secs
}

// failRevocation makes revoke-self of tok fail with 500.
func (f *ownTokenVault) failRevocation(tok string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.noRevoke[tok] = true
}

func (f *ownTokenVault) count(path, tok string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[path+" "+tok]
}

// TestLoginRevokedToken: an operator revokes the broker's own token (Vault
// then answers renew-self with 403 permission denied). Run must notice at
// the renewal and act at once, not wait for the end of the token's lease
// (an hour here) while every Vault call fails: approle logs in again,
// token_file reads its file again, and a static token, which nothing can
// replace, is reported as an error and retried with backoff.
// startRun makes a client for the fake, starts o's Login on it, calls
// beforeRun (if any) and runs Run in the background. stop ends Run and
// checks it returned nil.
func startRun(t *testing.T, f *ownTokenVault, o vault.LoginOptions, beforeRun func(c *vaultapi.Client)) (l *vault.Login, c *vaultapi.Client, stop func()) {
	t.Helper()
	c, err := vault.NewClient(vault.ClientOptions{Address: f.srv.URL, NoToken: true, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	o.Client = c
	l, err = vault.NewLogin(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := l.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if beforeRun != nil {
		beforeRun(c)
	}
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	return l, c, func() {
		t.Helper()
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
	}
}

func TestLoginRevokedToken(t *testing.T) {
	for _, tt := range []struct {
		name   string
		method string
		// done reports whether Run has done what it must; it runs with the
		// fake, the client, the log and the first token.
		done func(f *ownTokenVault, c *vaultapi.Client, logs, first string) bool
		what string
	}{
		{"ok/approle-logs-in-again", vault.LoginAppRole, func(f *ownTokenVault, c *vaultapi.Client, _, _ string) bool {
			return c.Token() == "hvs.login-2"
		}, "a new login"},
		{"ok/token-file-read-again", vault.LoginTokenFile, func(f *ownTokenVault, _ *vaultapi.Client, _, first string) bool {
			return f.count("/v1/auth/token/lookup-self", first) >= 2
		}, "the token file read and looked up again"},
		{"fail/static-token-reported-and-retried", vault.LoginToken, func(f *ownTokenVault, _ *vaultapi.Client, logs, first string) bool {
			return f.count("/v1/auth/token/lookup-self", first) >= 3 && strings.Contains(logs, "cannot be replaced")
		}, "an error logged and the token retried with backoff"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newOwnTokenVault(t, 3600)
			dir := t.TempDir()
			o := vault.LoginOptions{Method: tt.method, RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond}
			switch tt.method {
			case vault.LoginAppRole:
				o.RoleIDFile = writeLoginFile(t, dir, "role_id", "role-1")
				o.SecretIDFile = writeLoginFile(t, dir, "secret_id", "secret-1")
			case vault.LoginTokenFile:
				o.TokenFile = writeLoginFile(t, dir, "token", "hvs.static")
			case vault.LoginToken:
				o.Token = "hvs.static"
			}
			var logs loginLogBuffer
			o.Logger = newLoginLogger(&logs)
			var first string
			_, c, stop := startRun(t, f, o, func(c *vaultapi.Client) { first = c.Token(); f.revoke(first) })
			waitLogin(t, 5*time.Second, tt.what+" after the token (lease 1h) was revoked", func() bool {
				return tt.done(f, c, logs.String(), first)
			})
			stop()
			if strings.Contains(logs.String(), first) {
				t.Errorf("logs contain the token:\n%s", logs.String())
			}
		})
	}
}

// TestLoginRevokedLaterNoticedWithinMaxRenewInterval: the token (lease 1h)
// was renewed once and is revoked afterwards. Renewing only at two thirds
// of the lease would leave that unnoticed for 40 minutes; MaxRenewInterval
// bounds it.
func TestLoginRevokedLaterNoticedWithinMaxRenewInterval(t *testing.T) {
	f := newOwnTokenVault(t, 3600)
	dir := t.TempDir()
	l, c, stop := startRun(t, f, vault.LoginOptions{Method: vault.LoginAppRole,
		RoleIDFile: writeLoginFile(t, dir, "role_id", "role-1"), SecretIDFile: writeLoginFile(t, dir, "secret_id", "secret-1"),
		RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond, MaxRenewInterval: 20 * time.Millisecond}, nil)
	waitLogin(t, 5*time.Second, "two renewals", func() bool { return l.Status().Renewals >= 2 })
	f.revoke("hvs.login-1")
	waitLogin(t, 5*time.Second, "a new login after the renewed token was revoked", func() bool { return c.Token() == "hvs.login-2" })
	stop()
}

// TestLoginRenewalDeniedTokenValid: renew-self answers 403 permission
// denied, as for a revoked token, but lookup-self shows the token valid (its
// policy lacks renew-self). Run must not log in again at once (every
// renewal would then make a new token): it keeps the token, says why, and
// logs in again near the end of its lease.
func TestLoginRenewalDeniedTokenValid(t *testing.T) {
	f := newOwnTokenVault(t, 3600)
	f.denyRenewal("hvs.login-1")
	dir := t.TempDir()
	var logs loginLogBuffer
	l, c, stop := startRun(t, f, vault.LoginOptions{Method: vault.LoginAppRole,
		RoleIDFile: writeLoginFile(t, dir, "role_id", "role-1"), SecretIDFile: writeLoginFile(t, dir, "secret_id", "secret-1"),
		RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond, Logger: newLoginLogger(&logs)}, nil)
	waitLogin(t, 5*time.Second, "the denied renewal reported", func() bool {
		return strings.Contains(logs.String(), "may not renew itself")
	})
	if st := l.Status(); c.Token() != "hvs.login-1" || st.Logins != 1 {
		t.Errorf("after a denied renewal of a valid token: token %q, Status() = %+v; want hvs.login-1 kept, 1 login", c.Token(), st)
	}
	if n := f.count("/v1/auth/token/lookup-self", "hvs.login-1"); n != 1 {
		t.Errorf("lookup-self of the token = %d calls, want 1", n)
	}
	stop()
}

// TestLoginTokenFileBadNewTokenKeepsOldRenewed: the token file is
// rewritten with a token Vault refuses (403 on lookup-self). Run keeps the
// old token set while it retries the new one, and must keep renewing it:
// it is still valid, and would otherwise run out (here within 2s).
func TestLoginTokenFileBadNewTokenKeepsOldRenewed(t *testing.T) {
	f := newOwnTokenVault(t, 2)
	f.revoke("hvs.bad")
	file := writeLoginFile(t, t.TempDir(), "token", "hvs.good")
	l, c, stop := startRun(t, f, vault.LoginOptions{Method: "token_file", TokenFile: file,
		PollInterval: 20 * time.Millisecond, RetryMin: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond}, nil)
	replaceLoginFile(t, file, "hvs.bad")
	waitLogin(t, 5*time.Second, "the new token refused", func() bool {
		return f.count("/v1/auth/token/lookup-self", "hvs.bad") >= 1 && l.Status().Failures >= 1
	})
	before := f.count("/v1/auth/token/renew-self", "hvs.good")
	// Within the old token's TTL (2s), with a second of slack.
	waitLogin(t, 3*time.Second, "a renewal of the old token after the new one was refused", func() bool {
		return f.count("/v1/auth/token/renew-self", "hvs.good") > before
	})
	if c.Token() != "hvs.good" {
		t.Errorf("client token = %q, want the old token kept", c.Token())
	}
	stop()
}

// TestLoginRevokesReplacedToken: a token an AppRole or Kubernetes re-login
// replaced (here: near its max TTL, its renewal gave it 5 more minutes,
// less than a tenth of its first lease of 1h) is revoked with revoke-self, made with that token, RevokeGrace
// after the new one is set, or at once when Run's ctx ends first, rather
// than left valid until its TTL; only its accessor is logged. A token
// Vault refused (revoked) is not revoked again, and a token the operator
// gave (token_file) is never revoked.
func TestLoginRevokesReplacedToken(t *testing.T) {
	const revokeSelf = "/v1/auth/token/revoke-self"
	approle := func(t *testing.T, o vault.LoginOptions) vault.LoginOptions {
		dir := t.TempDir()
		o.Method = vault.LoginAppRole
		o.RoleIDFile = writeLoginFile(t, dir, "role_id", "role-1")
		o.SecretIDFile = writeLoginFile(t, dir, "secret_id", "secret-1")
		o.RetryMin, o.RetryMax = 10*time.Millisecond, 50*time.Millisecond
		return o
	}
	noToken := func(t *testing.T, logs string, tokens ...string) {
		t.Helper()
		for _, tok := range tokens {
			if strings.Contains(strings.ReplaceAll(logs, "acc-"+tok, ""), tok) {
				t.Errorf("logs contain the token %s:\n%s", tok, logs)
			}
		}
	}

	t.Run("ok/approle-replaced-token-revoked-after-grace", func(t *testing.T) {
		f := newOwnTokenVault(t, 3600)
		f.capRenewal("hvs.login-1", 300)
		var logs loginLogBuffer
		l, c, stop := startRun(t, f, approle(t, vault.LoginOptions{RevokeGrace: 50 * time.Millisecond, Logger: newLoginLogger(&logs)}), nil)
		waitLogin(t, 10*time.Second, "the replaced token revoked", func() bool { return f.count(revokeSelf, "hvs.login-1") == 1 })
		if c.Token() != "hvs.login-2" {
			t.Errorf("client token = %q, want hvs.login-2", c.Token())
		}
		waitLogin(t, 5*time.Second, "the revocation logged", func() bool {
			return strings.Contains(logs.String(), `"accessor":"acc-hvs.login-1"`)
		})
		stop()
		if n := f.count(revokeSelf, "hvs.login-2"); n != 0 {
			t.Errorf("revoke-self with the token in use: %d calls, want none", n)
		}
		if n := l.Status().ReplacedRevokeFailures; n != 0 {
			t.Errorf("ReplacedRevokeFailures after a successful revocation = %d, want 0", n)
		}
		noToken(t, logs.String(), "hvs.login-1", "hvs.login-2")
	})

	// A failed revocation leaves the replaced token valid until its TTL:
	// it is logged and counted (LoginStatus.ReplacedRevokeFailures, the
	// metric keytrail_vault_replaced_token_revoke_failures_total), once per
	// token; a success counts nothing.
	t.Run("ok/failed-revocation-counted", func(t *testing.T) {
		f := newOwnTokenVault(t, 3600)
		f.capRenewal("hvs.login-1", 300)
		f.failRevocation("hvs.login-1")
		var logs loginLogBuffer
		l, c, stop := startRun(t, f, approle(t, vault.LoginOptions{RevokeGrace: 50 * time.Millisecond, Logger: newLoginLogger(&logs)}), nil)
		if n := l.Status().ReplacedRevokeFailures; n != 0 {
			t.Errorf("ReplacedRevokeFailures before any re-login = %d, want 0", n)
		}
		waitLogin(t, 10*time.Second, "the failed revocation counted", func() bool { return l.Status().ReplacedRevokeFailures == 1 })
		if c.Token() != "hvs.login-2" {
			t.Errorf("client token = %q, want hvs.login-2", c.Token())
		}
		if !strings.Contains(logs.String(), "could not revoke the vault token a new login replaced") {
			t.Errorf("the failed revocation is not logged:\n%s", logs.String())
		}
		stop()
		if n := l.Status().ReplacedRevokeFailures; n != 1 {
			t.Errorf("ReplacedRevokeFailures = %d, want 1 (one failed revocation)", n)
		}
		if n := f.count(revokeSelf, "hvs.login-1"); n != 1 {
			t.Errorf("revoke-self of the replaced token = %d calls, want 1", n)
		}
		noToken(t, logs.String(), "hvs.login-1", "hvs.login-2")
	})

	t.Run("ok/not-before-grace-at-once-on-shutdown", func(t *testing.T) {
		f := newOwnTokenVault(t, 3600)
		f.capRenewal("hvs.login-1", 300)
		_, c, stop := startRun(t, f, approle(t, vault.LoginOptions{RevokeGrace: time.Hour}), nil)
		waitLogin(t, 10*time.Second, "a new login", func() bool { return c.Token() == "hvs.login-2" })
		if n := f.count(revokeSelf, "hvs.login-1"); n != 0 {
			t.Errorf("the replaced token was revoked within its grace (1h): %d calls", n)
		}
		stop() // Run returns once the pending revocation is made
		if n := f.count(revokeSelf, "hvs.login-1"); n != 1 {
			t.Errorf("revoke-self of the replaced token after Run returned = %d calls, want 1", n)
		}
	})

	t.Run("ok/refused-token-not-revoked-again", func(t *testing.T) {
		f := newOwnTokenVault(t, 3600)
		_, c, stop := startRun(t, f, approle(t, vault.LoginOptions{RevokeGrace: time.Millisecond}), func(*vaultapi.Client) { f.revoke("hvs.login-1") })
		waitLogin(t, 10*time.Second, "a new login", func() bool { return c.Token() == "hvs.login-2" })
		stop()
		if n := f.count(revokeSelf, "hvs.login-1"); n != 0 {
			t.Errorf("revoke-self of a token Vault already refused = %d calls, want none", n)
		}
	})

	t.Run("ok/ended-token-not-revoked", func(t *testing.T) {
		// Its renewal denied, the 2s token runs to its end: revoking it
		// after that (a grace of 3s) is moot, and would only log a 403.
		f := newOwnTokenVault(t, 2)
		f.denyRenewal("hvs.login-1")
		var logs loginLogBuffer
		_, c, stop := startRun(t, f, approle(t, vault.LoginOptions{RevokeGrace: 3 * time.Second, Logger: newLoginLogger(&logs)}), nil)
		waitLogin(t, 10*time.Second, "a new login", func() bool { return c.Token() == "hvs.login-2" })
		waitLogin(t, 10*time.Second, "the revocation skipped", func() bool { return strings.Contains(logs.String(), "nothing to revoke") })
		stop()
		if n := f.count(revokeSelf, "hvs.login-1"); n != 0 {
			t.Errorf("revoke-self of an ended token = %d calls, want none", n)
		}
	})

	// A lease owned by the broker's token (a certificate of a pki role with
	// generate_lease=true) is revoked with it, and the certificate with the
	// lease: Login leaves the replaced token alone once one is known,
	// noted before the re-login or during the grace (a call sent with the
	// old token just before it), shutdown included.
	t.Run("ok/token-holding-leases-not-revoked", func(t *testing.T) {
		f := newOwnTokenVault(t, 3600)
		f.capRenewal("hvs.login-1", 300)
		leases := new(vault.TokenLeases)
		leases.Note()
		var logs loginLogBuffer
		_, c, stop := startRun(t, f, approle(t, vault.LoginOptions{RevokeGrace: 50 * time.Millisecond, Leases: leases, Logger: newLoginLogger(&logs)}), nil)
		waitLogin(t, 10*time.Second, "a new login", func() bool { return c.Token() == "hvs.login-2" })
		waitLogin(t, 10*time.Second, "the revocation skipped", func() bool {
			return strings.Contains(logs.String(), "left the vault token a new login replaced valid") && strings.Contains(logs.String(), `"accessor":"acc-hvs.login-1"`)
		})
		stop()
		if n := f.count(revokeSelf, "hvs.login-1"); n != 0 {
			t.Errorf("revoke-self of a replaced token owning leases = %d calls, want none", n)
		}
		noToken(t, logs.String(), "hvs.login-1", "hvs.login-2")
	})

	t.Run("ok/lease-noted-during-grace-not-revoked-on-shutdown", func(t *testing.T) {
		f := newOwnTokenVault(t, 3600)
		f.capRenewal("hvs.login-1", 300)
		leases := new(vault.TokenLeases)
		_, c, stop := startRun(t, f, approle(t, vault.LoginOptions{RevokeGrace: time.Hour, Leases: leases}), nil)
		waitLogin(t, 10*time.Second, "a new login", func() bool { return c.Token() == "hvs.login-2" })
		leases.Note()
		stop()
		if n := f.count(revokeSelf, "hvs.login-1"); n != 0 {
			t.Errorf("revoke-self of a replaced token owning leases = %d calls, want none", n)
		}
	})

	t.Run("ok/token-file-token-never-revoked", func(t *testing.T) {
		f := newOwnTokenVault(t, 3600)
		file := writeLoginFile(t, t.TempDir(), "token", "hvs.operator-1")
		_, c, stop := startRun(t, f, vault.LoginOptions{Method: vault.LoginTokenFile, TokenFile: file, PollInterval: 20 * time.Millisecond,
			RetryMin: 10 * time.Millisecond, RevokeGrace: time.Millisecond}, nil)
		replaceLoginFile(t, file, "hvs.operator-second") // another size: the mtime may not have moved
		waitLogin(t, 10*time.Second, "the new token file loaded", func() bool { return c.Token() == "hvs.operator-second" })
		stop()
		if n := f.count(revokeSelf, "hvs.operator-1"); n != 0 {
			t.Errorf("revoke-self of the operator's replaced token = %d calls, want none", n)
		}
	})
}
