package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
)

// TestRequestDuringStartupIsAnswered503OverTLS: with tls set, the
// starting answers go out over TLS too (the handshake with the serving key
// pair, then 503 "starting"), a bearer token sent meanwhile is in no log
// line, and a start-up that then fails (Vault answers 503) closes the
// server: runServer returns, and the listener no longer accepts.
func TestRequestDuringStartupIsAnswered503OverTLS(t *testing.T) {
	arrived, release := make(chan struct{}, 1), make(chan struct{})
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case arrived <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		http.Error(w, `{"errors":["Vault is sealed"]}`, http.StatusServiceUnavailable)
	}))
	defer vault.Close()
	released := false
	open := func() {
		if !released {
			released = true
			close(release)
		}
	}
	defer open()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	cfg := serverTestConfig(t, dir, "127.0.0.1:0", vault.URL)
	certFile, keyFile := writeKeyPair(t, dir, "broker", time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	cfg.TLS = &TLSConfig{CertFile: certFile, KeyFile: keyFile}
	cfg.Vault.Timeout = duration(time.Minute) // the start-up stays held until release
	cfg.applyDefaults()
	var logs brokertest.SyncBuffer
	addrc := make(chan string, 1)
	e := &env{ctx: ctx, stdout: io.Discard, stderr: &logs, getenv: func(k string) string {
		return map[string]string{"VAULT_TOKEN": "hvs.root-token-under-test", envReconcile: "off"}[k]
	}, listening: func(ln net.Listener) { addrc <- ln.Addr().String() }}
	errc := make(chan error, 1)
	go func() { errc <- runServer(ctx, e, cfg, func(string) { t.Error("the broker served with Vault held") }) }()
	var addr string
	select {
	case addr = <-addrc:
	case err := <-errc:
		t.Fatalf("server: %v\n%s", err, logs.String())
	case <-time.After(60 * time.Second):
		t.Fatal("server did not bind its listener")
	}
	select {
	case <-arrived:
	case err := <-errc:
		t.Fatalf("server: %v\n%s", err, logs.String())
	case <-time.After(60 * time.Second):
		t.Fatal("the start-up never asked Vault")
	}

	pem, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "broker"}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 20 * time.Second}
	const secret = "Bearer kt-secret-caller-token-under-test"
	get := func(method, path string) (int, string, map[string]string, *tls.ConnectionState) {
		t.Helper()
		req, err := http.NewRequest(method, "https://"+addr+path, strings.NewReader("token=also-secret-form-value"))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", secret)
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s over TLS during the start-up: %v (want an answer at once)\n%s", method, path, err, logs.String())
		}
		defer resp.Body.Close()
		var body map[string]string
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, resp.Header.Get("Retry-After"), body, resp.TLS
	}
	if st, _, body, cs := get(http.MethodGet, "/healthz"); st != http.StatusOK || cs == nil {
		t.Errorf("GET /healthz over TLS during the start-up = %d %v (TLS %v), want 200 over TLS", st, body, cs != nil)
	}
	if st, ra, body, _ := get(http.MethodGet, "/readyz"); st != http.StatusServiceUnavailable || body["error"] != httpapi.ReadyStarting || ra != "1" {
		t.Errorf("GET /readyz over TLS during the start-up = %d %v Retry-After %q, want 503 %q", st, body, ra, httpapi.ReadyStarting)
	}
	for _, c := range []struct{ method, path string }{
		{http.MethodPost, "/v1/introspect"}, {http.MethodGet, "/v1/admin/issuances"}, {http.MethodGet, "/metrics"},
	} {
		if st, ra, body, _ := get(c.method, c.path); st != http.StatusServiceUnavailable || body["error"] != "temporarily_unavailable" || ra != "1" {
			t.Errorf("%s %s over TLS during the start-up = %d %v Retry-After %q, want 503 temporarily_unavailable", c.method, c.path, st, body, ra)
		}
	}

	// Vault answers 503: the start-up fails and closes the server.
	open()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("runServer() = nil with Vault answering 503, want the start-up's error")
		}
	case <-time.After(90 * time.Second):
		t.Fatalf("runServer did not return once Vault answered 503\n%s", logs.String())
	}
	tr.CloseIdleConnections()
	if c, err := net.DialTimeout("tcp", addr, 5*time.Second); err == nil {
		c.Close()
		t.Errorf("the listener %s still accepts after a failed start-up", addr)
	}
	for _, s := range []string{"kt-secret-caller-token-under-test", "also-secret-form-value", "hvs.root-token-under-test"} {
		if strings.Contains(logs.String(), s) {
			t.Errorf("the log names %q, sent during the start-up\n%s", s, logs.String())
		}
	}
}
