package main

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestBadListenerFailsBeforeVault: the listener was bound, the serving
// key pair loaded and pprof's listener bound only after the whole start-up
// (Vault login, store, audit log, reconciler, the start's policy_load
// event): a taken port or a bad certificate was found after all that,
// with the audit log opened and written. They are now checked first: the
// start-up fails before Vault is asked anything and before the audit log
// is created.
func TestBadListenerFailsBeforeVault(t *testing.T) {
	var vaultCalls atomic.Int64
	vault := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		vaultCalls.Add(1)
		http.Error(w, `{"errors":["test vault"]}`, http.StatusInternalServerError)
	}))
	defer vault.Close()
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	for _, tc := range []struct {
		name string
		mod  func(c *Config, dir string)
		want string
	}{
		{"fail/listen-taken", func(c *Config, _ string) { c.Listen = taken.Addr().String() }, "listen"},
		{"fail/pprof-taken", func(c *Config, _ string) { c.PprofListen = taken.Addr().String() }, "pprof_listen"},
		{"fail/bad-key-pair", badKeyPair(t), "tls"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vaultCalls.Store(0)
			dir := t.TempDir()
			cfg := serverTestConfig(t, dir, "127.0.0.1:0", vault.URL)
			auditPath := cfg.Audit.File
			tc.mod(cfg, dir)
			cfg.applyDefaults()
			var logs brokertest.SyncBuffer
			e := &env{ctx: context.Background(), stdout: &logs, stderr: &logs, getenv: func(k string) string {
				return map[string]string{"VAULT_TOKEN": "test-token"}[k]
			}}
			done := make(chan error, 1)
			go func() { done <- runServer(context.Background(), e, cfg, nil) }()
			select {
			case err = <-done:
			case <-time.After(60 * time.Second):
				t.Fatalf("runServer did not return\n%s", logs.String())
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("runServer() = %v, want an error naming %s\n%s", err, tc.want, logs.String())
			}
			if n := vaultCalls.Load(); n != 0 {
				t.Errorf("Vault got %d requests from a start-up that could not listen, want none: the listener must be checked first\n%s", n, logs.String())
			}
			if _, err := os.Stat(auditPath); !os.IsNotExist(err) {
				t.Errorf("audit log %s: %v, want none created by a start-up that could not listen\n%s", auditPath, err, logs.String())
			}
		})
	}
}

// TestCutOffExchangeIsAuditedBeforeTheLogCloses: a request still running
// when shutdown_timeout ends is cut off (srv.Close), but srv.Close does not
// wait for its handler, and runServer closed the store and the audit log
// at once, under it: an exchange still in its mint (which the caller
// leaving does not cut short) lost its issue event, as a proxied call cut
// off lost its use_result. runServer now waits a bounded grace for such
// handlers before it closes the runtime. The exchange is held in its
// transit sign by a proxy in front of a real Vault.
func TestCutOffExchangeIsAuditedBeforeTheLogCloses(t *testing.T) {
	vp := harness.StartVault(t)
	px := startGatedVaultOn(t, vp, isTransitSign, 0)

	iss, dir, polFile := ordersJWTPolicy(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs brokertest.SyncBuffer
	readyc, errc := goServerLog(t, ctx, &logs, dir, polFile, px.URL, vp.RootToken, func(c *Config) {
		c.ShutdownTimeout = duration(200 * time.Millisecond)
		c.Log.Level = "info"
	})
	base := "http://" + awaitServing(t, readyc, errc)

	px.hold.Store(true)
	tok, err := iss.Token("system:serviceaccount:payments:api", "keytrail", time.Now(), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	go func() {
		form := url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"}, "subject_token": {tok},
			"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"}, "audience": {"orders-jwt"}}
		if resp, err := client.PostForm(base+"/v1/token", form); err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-px.arrived: // the exchange is in its mint, waiting for Vault
	case err := <-errc:
		t.Fatalf("server ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatalf("the exchange never reached the transit sign\n%s", logs.String())
	}

	cancel() // SIGTERM: shutdown_timeout (200ms) passes with the exchange held
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "waiting for requests cut off at shutdown_timeout") {
		select {
		case err := <-errc:
			t.Fatalf("runServer returned (%v) while an exchange cut off at shutdown_timeout was still in its mint: the audit log was closed under it and its issue event lost\n%s", err, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no wait for the cut-off request logged\n%s", logs.String())
		}
	}
	px.open() // the mint completes
	select {
	case err = <-errc:
	case <-time.After(30 * time.Second):
		t.Fatalf("runServer did not return\n%s", logs.String())
	}
	if err == nil || !strings.Contains(err.Error(), "shutdown incomplete") {
		t.Errorf("runServer() = %v, want the shutdown incomplete (exit status 1)", err)
	}
	raw, err := os.ReadFile(filepath.Join(dir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(raw, []byte(`"type":"issue"`)) {
		t.Errorf("audit log has no issue event for the exchange cut off at shutdown_timeout\n%s\n--- log ---\n%s", raw, logs.String())
	}
	if l := logs.String(); strings.Contains(l, "closing the audit log with requests still running") {
		t.Errorf("runServer closed the audit log with the request still running\n%s", l)
	}
}

// TestServeFailureShutsTheServerDown: when srv.Serve returned an error
// (its listener failed) runServer returned at once: the connections open
// were still served while the runtime (store, audit log) closed under
// their handlers. The server is now shut as at a signal first: a request
// in flight (a /readyz held at a gate in front of Vault) completes, then
// runServer returns the serve error.
func TestServeFailureShutsTheServerDown(t *testing.T) {
	vp := harness.StartVault(t)
	gate := startGatedVault(t, vp)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	cfg := serverTestConfig(t, dir, "127.0.0.1:0", gate.URL)
	cfg.applyDefaults()
	if err := cfg.validate("test config"); err != nil {
		t.Fatal(err)
	}
	var logs brokertest.SyncBuffer
	lnc := make(chan net.Listener, 1)
	e := &env{ctx: ctx, stdout: io.Discard, stderr: &logs, listening: func(ln net.Listener) { lnc <- ln },
		getenv: func(k string) string {
			return map[string]string{"VAULT_TOKEN": vp.RootToken, envReconcile: "off"}[k]
		}}
	readyc, errc := make(chan string, 1), make(chan error, 1)
	go func() { errc <- runServer(ctx, e, cfg, func(a string) { readyc <- a }) }()
	base := "http://" + awaitServing(t, readyc, errc)
	ln := <-lnc

	gate.hold.Store(true)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	readyz := make(chan int, 1)
	go func() {
		resp, err := client.Get(base + "/readyz")
		if err != nil {
			readyz <- 0
			return
		}
		resp.Body.Close()
		readyz <- resp.StatusCode
	}()
	select {
	case <-gate.arrived: // /readyz is in flight, waiting for Vault
	case err := <-errc:
		t.Fatalf("server ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("/readyz never asked Vault")
	}

	ln.Close() // srv.Serve returns an error other than http.ErrServerClosed
	deadline := time.Now().Add(30 * time.Second)
	for !strings.Contains(logs.String(), "serving failed: shutting down") {
		select {
		case err := <-errc:
			t.Fatalf("runServer returned (%v) with a request still in flight: the server was not shut before the runtime closed\n%s", err, logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no shutdown after the serve failure logged\n%s", logs.String())
		}
	}
	gate.open()
	if st := <-readyz; st != http.StatusOK {
		t.Errorf("/readyz in flight when serving failed = %d, want 200 (completed by the shutdown)", st)
	}
	var err error
	select {
	case err = <-errc:
	case <-time.After(30 * time.Second):
		t.Fatalf("runServer did not return\n%s", logs.String())
	}
	if err == nil || !strings.Contains(err.Error(), "serve:") {
		t.Fatalf("runServer() = %v, want the serve error", err)
	}
}
