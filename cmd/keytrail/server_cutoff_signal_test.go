package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestSecondSignalEndsTheCutOffGrace: the wait for handlers cut off at
// shutdown_timeout is now up to cutOffGrace (152 s with vault.timeout
// 60s); a second SIGTERM during it still exits at once (status 1), as
// during the drain and the start-up: an operator or supervisor does not
// wait out a mint held by a hung Vault. As main does, the signals cancel
// ctx (signal.NotifyContext); e.exit stands for os.Exit.
func TestSecondSignalEndsTheCutOffGrace(t *testing.T) {
	vp := harness.StartVault(t)
	px := startGatedVaultOn(t, vp, isTransitSign, 0) // a Vault that hangs until the test ends
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	issSrv := httptest.NewServer(iss.Handler())
	defer issSrv.Close()
	iss.URL = issSrv.URL

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	dir := t.TempDir()
	polFile := filepath.Join(dir, "policy.yaml")
	p := strings.NewReplacer("{ISS}", issSrv.URL, "{GRANTS}", "orders-jwt", "{EXTRA}", "").Replace(reloadJWKSPolicy)
	if err := os.WriteFile(polFile, []byte(p), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := &Config{Listen: "127.0.0.1:0", PublicURL: "http://127.0.0.1:7700", Policy: polFile,
		Vault: VaultConfig{Address: px.URL, Timeout: duration(time.Minute)}, Audit: AuditConfig{File: filepath.Join(dir, "audit.jsonl")},
		Log: LogConfig{Level: "info", Format: "text"}, ShutdownTimeout: duration(500 * time.Millisecond)}
	cfg.applyDefaults()
	if err := cfg.validate("test config"); err != nil {
		t.Fatal(err)
	}
	var logs brokertest.SyncBuffer
	exited := make(chan int, 1)
	e := &env{ctx: ctx, stdout: io.Discard, stderr: &logs, getenv: func(k string) string {
		return map[string]string{"VAULT_TOKEN": vp.RootToken, envReconcile: "off"}[k]
	}, exit: func(code int) {
		select {
		case exited <- code:
		default:
		}
	}}
	readyc, done := make(chan string, 1), make(chan struct{})
	go func() { defer close(done); _ = runServer(ctx, e, cfg, func(a string) { readyc <- a }) }()
	defer func() { // before px.Close, which waits for the held sign: let the server end before the next test
		px.open()
		select {
		case <-done:
		case <-time.After(3 * time.Minute):
		}
	}()
	var base string
	select {
	case a := <-readyc:
		base = "http://" + a
	case <-done:
		t.Fatalf("server ended\n%s", logs.String())
	case <-time.After(60 * time.Second):
		t.Fatal("server did not start")
	}

	px.hold.Store(true)
	go func() {
		tok, err := iss.Token("system:serviceaccount:payments:api", "keytrail", time.Now(), 10*time.Minute)
		if err != nil {
			return
		}
		resp, err := http.PostForm(base+"/v1/token", url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"},
			"subject_token": {tok}, "subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"}, "audience": {"orders-jwt"}})
		if err == nil { // cut off: no answer
			resp.Body.Close()
		}
	}()
	select {
	case <-px.arrived: // the mint is in flight, held
	case <-done:
		t.Fatalf("server ended\n%s", logs.String())
	case <-time.After(30 * time.Second):
		t.Fatal("the exchange never asked Vault to sign")
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done()
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(logs.String(), "waiting for requests cut off at shutdown_timeout"); {
		if time.Now().After(deadline) {
			t.Fatalf("the shutdown never began its wait for the cut-off exchange\n%s", logs.String())
		}
		<-time.After(20 * time.Millisecond)
	}
	deadline := time.After(20 * time.Second) // far below the 152 s grace
	for {
		if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case code := <-exited:
			if code != 1 {
				t.Errorf("exit status after a second signal = %d, want 1", code)
			}
			return
		case <-done:
			t.Fatalf("runServer returned with the mint still held: no grace was waited\n%s", logs.String())
		case <-deadline:
			t.Fatalf("SIGTERMs sent during the wait for a cut-off mint never exited\n%s", logs.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
