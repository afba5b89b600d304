package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestRequestDuringStartupIsAnswered503: the listener is bound before the
// start-up, which may be long (Vault slow, the audit disk slow). A request
// that came meanwhile waited unanswered in the backlog and ran once the
// broker served (an exchange then raced its client's timeout). Now, with
// the start-up held at its first Vault request, every route answers at
// once: /healthz 200, /readyz 503 "starting", and the others 503
// temporarily_unavailable with Retry-After: 1 and a request id. None of
// them reaches a handler: the audit log, once the broker serves, has no
// event naming them (only the start's policy_load).
func TestRequestDuringStartupIsAnswered503(t *testing.T) {
	vp := harness.StartVault(t)
	target, err := url.Parse(vp.Addr)
	if err != nil {
		t.Fatal(err)
	}
	var hold atomic.Bool
	hold.Store(true)
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	rp := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if hold.Load() {
			select {
			case arrived <- struct{}{}:
			default:
			}
			select {
			case <-release:
			case <-r.Context().Done():
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	defer front.Close()
	opened := false
	open := func() {
		if !opened {
			opened = true
			hold.Store(false)
			close(release)
		}
	}
	defer open()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	cfg := serverTestConfig(t, dir, "127.0.0.1:0", front.URL)
	cfg.applyDefaults()
	var logs brokertest.SyncBuffer
	addrc := make(chan string, 1)
	e := &env{ctx: ctx, stdout: io.Discard, stderr: &logs, getenv: func(k string) string {
		return map[string]string{"VAULT_TOKEN": vp.RootToken, envReconcile: "off"}[k]
	}, listening: func(ln net.Listener) { addrc <- ln.Addr().String() }}
	readyc, errc := make(chan string, 1), make(chan error, 1)
	go func() { errc <- runServer(ctx, e, cfg, func(a string) { readyc <- a }) }()
	var base string
	select {
	case a := <-addrc:
		base = "http://" + a
	case err := <-errc:
		t.Fatalf("server: %v\n%s", err, logs.String())
	case <-time.After(60 * time.Second):
		t.Fatal("server did not bind its listener")
	}
	select {
	case <-arrived: // the start-up waits for Vault
	case err := <-errc:
		t.Fatalf("server: %v\n%s", err, logs.String())
	case <-time.After(60 * time.Second):
		t.Fatal("the start-up never asked Vault")
	}

	// A bound, not a timing: the old broker left these unanswered until
	// it served (never, while Vault is held).
	client := &http.Client{Timeout: 20 * time.Second}
	type answer struct {
		status     int
		retryAfter string
		requestID  string
		body       map[string]string
	}
	do := func(method, path, form string) answer {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader(form))
		if err != nil {
			t.Fatal(err)
		}
		if form != "" {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s during the start-up: %v (want an answer at once)\n%s", method, path, err, logs.String())
		}
		defer resp.Body.Close()
		a := answer{status: resp.StatusCode, retryAfter: resp.Header.Get("Retry-After"), requestID: resp.Header.Get("X-Request-Id")}
		_ = json.NewDecoder(resp.Body).Decode(&a.body)
		return a
	}
	if a := do(http.MethodGet, "/healthz", ""); a.status != http.StatusOK || a.body["status"] != "ok" {
		t.Errorf("GET /healthz during the start-up = %d %v, want 200 ok (alive)", a.status, a.body)
	}
	if a := do(http.MethodGet, "/readyz", ""); a.status != http.StatusServiceUnavailable || a.body["error"] != httpapi.ReadyStarting || a.retryAfter != "1" {
		t.Errorf("GET /readyz during the start-up = %d %v Retry-After %q, want 503 %q, Retry-After 1", a.status, a.body, a.retryAfter, httpapi.ReadyStarting)
	}
	var ids []string
	for _, c := range []struct{ method, path, form string }{
		{http.MethodPost, "/v1/token", "grant_type=urn:ietf:params:oauth:grant-type:token-exchange&subject_token=x&subject_token_type=urn:ietf:params:oauth:token-type:jwt&audience=ci-deploy"},
		{http.MethodPost, "/v1/introspect", "token=x"},
		{http.MethodGet, "/v1/admin/issuances", ""},
		{http.MethodGet, "/.well-known/jwks.json", ""},
		{http.MethodGet, "/metrics", ""},
	} {
		a := do(c.method, c.path, c.form)
		if a.status != http.StatusServiceUnavailable || a.body["error"] != "temporarily_unavailable" || a.retryAfter != "1" ||
			a.requestID == "" || a.body["request_id"] != a.requestID {
			t.Errorf("%s %s during the start-up = %d %v Retry-After %q X-Request-Id %q, want 503 temporarily_unavailable, Retry-After 1, its request id",
				c.method, c.path, a.status, a.body, a.retryAfter, a.requestID)
		}
		ids = append(ids, a.requestID)
	}
	select {
	case <-readyc:
		t.Fatal("the broker served with Vault held")
	default:
	}

	open()
	select {
	case <-readyc:
	case err := <-errc:
		t.Fatalf("server: %v\n%s", err, logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("server did not start once Vault answered\n%s", logs.String())
	}
	// Serving: the broker's own routes answer (the admin route refuses a
	// caller without a token, 401, audited under its own request id).
	if a := do(http.MethodGet, "/v1/admin/issuances", ""); a.status != http.StatusUnauthorized {
		t.Errorf("GET /v1/admin/issuances once serving = %d %v, want 401", a.status, a.body)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("runServer() = %v after cancel, want nil", err)
	}
	raw, err := os.ReadFile(cfg.Audit.File)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if id != "" && strings.Contains(string(raw), id) {
			t.Errorf("the audit log names request %s, answered during the start-up: it reached a handler\n%s", id, raw)
		}
	}
	for _, typ := range []string{"issue", "deny", "introspect"} {
		if strings.Contains(string(raw), `"type":"`+typ+`"`) {
			t.Errorf("the audit log has a %s event: a request made during the start-up was served\n%s", typ, raw)
		}
	}
}
