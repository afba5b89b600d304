package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/e2e/harness"
)

// TestHardExitStopsAReloginBeforeRevoking: the hard exit of a failed
// start-up whose close hangs revoked its login's token while the login's
// loop still ran: a re-login it had in flight then made a token nobody
// revokes (here Vault, through a front, refuses the renewals once the
// close hangs, and the re-login's request is held until the hard exit
// has revoked). The loop is now stopped first: the held re-login is
// cancelled before it reaches Vault, and no token is left.
func TestHardExitStopsAReloginBeforeRevoking(t *testing.T) {
	vp := harness.StartVault(t)
	c := vp.Client
	dir := t.TempDir()
	roleFile, secretFile := approleLogin(t, c, "kt-relogin", dir)
	// Renewed every few seconds, so a renewal comes while the close hangs.
	if _, err := c.Logical().Write("auth/approle/role/kt", map[string]any{"token_policies": "kt-relogin", "token_ttl": "9s", "token_max_ttl": "1h"}); err != nil {
		t.Fatal(err)
	}
	tokens := func() int { t.Helper(); return vaultTokenCount(t, c) }
	before := tokens()

	// The front: once armed, renew-self and lookup-self answer 403 (a
	// revoked token, as Vault says), and the next AppRole login is held
	// until released or its client gives up.
	target, err := url.Parse(vp.Addr)
	if err != nil {
		t.Fatal(err)
	}
	rp := httputil.NewSingleHostReverseProxy(target)
	var armed atomic.Bool
	loginHeld, loginRelease := make(chan struct{}), make(chan struct{})
	// heldGone is closed when the held re-login's client gave up.
	heldGone := make(chan struct{})
	var heldOnce sync.Once
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if armed.Load() {
			switch {
			case strings.HasSuffix(r.URL.Path, "/auth/token/renew-self"), strings.HasSuffix(r.URL.Path, "/auth/token/lookup-self"):
				http.Error(w, `{"errors":["permission denied"]}`, http.StatusForbidden)
				return
			case strings.HasSuffix(r.URL.Path, "/auth/approle/login"):
				// The body is read first: only then does the server
				// notice a client that gave up (r.Context ends); a held
				// request whose client had gone reached Vault at the
				// release and made a token nobody waited for.
				body, err := io.ReadAll(r.Body)
				if err != nil {
					return
				}
				r.Body = io.NopCloser(bytes.NewReader(body))
				held := false
				heldOnce.Do(func() { held = true; close(loginHeld) })
				select {
				case <-loginRelease:
				case <-r.Context().Done():
					if held {
						close(heldGone)
					}
					return // the client gave up: Vault never sees it
				}
				if r.Context().Err() != nil {
					return
				}
			}
		}
		rp.ServeHTTP(w, r)
	}))
	defer front.Close()

	cfg := startupDeadlineConfig(t, dir, front.URL, func(cfg *Config) {
		cfg.Vault.Auth = &VaultAuthConfig{Method: "approle", RoleIDFile: roleFile, SecretIDFile: secretFile}
		cfg.Vault.TokenRole = "kt-no-such-role"
		// The held re-login waits until the exit: not given up at
		// vault.timeout's default 5s, and retried, in the meantime.
		cfg.Vault.Timeout = duration(2 * time.Minute)
	})
	cfg.StartupTimeout = new(duration)
	logs, exited, e := hardExitEnv()
	e.startupCloseGrace = 30 * time.Second // the renewal and the held re-login come first
	e.getenv = func(k string) string { return map[string]string{envReconcile: "off"}[k] }
	closing, release := make(chan struct{}), make(chan struct{})
	e.auditClosing = func() {
		close(closing)
		<-release
	}
	done, _ := goRunServer(context.Background(), e, cfg)
	var openOnce, loginOnce sync.Once
	open := func() { openOnce.Do(func() { close(release) }) }
	letLogin := func() { loginOnce.Do(func() { close(loginRelease) }) }
	t.Cleanup(func() {
		letLogin()
		open()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
		}
	})
	select {
	case <-closing:
	case <-done:
		t.Fatalf("runServer returned without closing its audit sink\n%s", logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("the failed start-up never closed its audit sink\n%s", logs.String())
	}
	armed.Store(true)
	select {
	case <-loginHeld:
	case <-time.After(25 * time.Second):
		t.Fatalf("no re-login while the close hangs\n%s", logs.String())
	}
	select {
	case <-exited:
	case <-time.After(60 * time.Second):
		t.Fatalf("no exit within 60s of a failed start-up whose close hangs\n%s", logs.String())
	}
	// The exit stopped the login's loop, whose client then closed the held
	// re-login's connection; the front notices (its read of that
	// connection ends) a little later, under load after the exit: the
	// release waits for that, or it may forward a request whose client is
	// gone (a token nobody waited for, counted as the server's). A client
	// still there (a loop not stopped) is released when the wait ends.
	select {
	case <-heldGone:
	case <-time.After(20 * time.Second):
	}
	// What the re-login would have got, had it still been waiting.
	letLogin()
	open()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("runServer did not return once the Close was released\n%s", logs.String())
	}
	if after := tokens(); after != before {
		t.Errorf("Vault tokens: %d before a failed start-up the hard exit ended, %d after: a re-login in flight at the exit left its token valid\n%s", before, after, logs.String())
	}
}
