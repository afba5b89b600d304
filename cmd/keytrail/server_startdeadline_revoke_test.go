package main

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/e2e/harness"
)

// TestStartupTimeoutHardExitRevokesTheLoginToken: a start-up logged in
// with AppRole and then hung where the cancel does not reach (here: its
// start event's write to an audit disk that hangs) was ended by
// startup_timeout's hard exit without running any closer, the one that
// revokes the login's token included: an AppRole broker crash-looping on
// a hung disk left one live token per start in Vault until its TTL (32
// days by default). The hard exit now revokes it first (bounded by
// loginRevokeTimeout); the closer that runs once the write is released
// does not revoke it a second time.
func TestStartupTimeoutHardExitRevokesTheLoginToken(t *testing.T) {
	vp := harness.StartVault(t)
	c := vp.Client
	dir := t.TempDir()
	roleFile, secretFile := approleLogin(t, c, "kt-hardexit", dir)
	tokens := func() int { t.Helper(); return vaultTokenCount(t, c) }
	before := tokens()

	cfg := startupDeadlineConfig(t, dir, vp.Addr, func(cfg *Config) {
		cfg.Vault.Auth = &VaultAuthConfig{Method: "approle", RoleIDFile: roleFile, SecretIDFile: secretFile}
	})
	logs, exited, e := hardExitEnv()
	e.getenv = func(k string) string { return map[string]string{envReconcile: "off"}[k] }
	held, open := holdFirstAuditWrite(e)
	done, _ := goRunServer(context.Background(), e, cfg)
	t.Cleanup(func() {
		open()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
		}
	})
	select {
	case <-held:
	case <-done:
		t.Fatalf("server ended\n%s", logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("the start-up never wrote its start event\n%s", logs.String())
	}
	if n := tokens(); n != before+1 {
		t.Fatalf("Vault tokens: %d before the start-up, %d while it hangs, want its login's one more", before, n)
	}
	select {
	case <-exited:
	case <-done:
		t.Fatalf("runServer returned while its start event's write hangs\n%s", logs.String())
	case <-time.After(90 * time.Second):
		t.Fatalf("no exit within 90s (startup_timeout 10s)\n%s", logs.String())
	}
	if after := tokens(); after != before {
		t.Errorf("Vault tokens: %d before a start-up that startup_timeout's hard exit ended, %d after: its AppRole login's token was left valid\n%s", before, after, logs.String())
	}
	// The in-process runServer (e.exit does not end it) closes once the
	// write is released: its closer finds the token revoked already.
	open()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("runServer did not return once the write was released\n%s", logs.String())
	}
	l := logs.String()
	if n := strings.Count(l, "revoked the Vault token the broker logged in for"); n != 1 {
		t.Errorf("the login token's revocation logged %d times, want 1\n%s", n, l)
	}
	if strings.Contains(l, "could not revoke the Vault token the broker logged in for") {
		t.Errorf("a second revocation was tried\n%s", l)
	}
	if exit, revoked := strings.Index(l, "exiting now"), strings.Index(l, "revoked the Vault token the broker logged in for"); exit < 0 || revoked < exit {
		t.Errorf("the token was not revoked by the hard exit (after its ERROR)\n%s", l)
	}
}

// TestStartupTimeoutAfterASignalSaysSo: SIGINT/SIGTERM during a start-up
// whose wait ignores the cancel (here: its start event's write to an
// audit disk that hangs) left it waiting; startup_timeout then logged its
// ERROR "start-up did not finish within startup_timeout", blaming the
// timeout for a stop the signal had begun. The log now says the signal
// stopped it (a WARN naming the step when the timeout passes, the hard
// exit's ERROR naming the signal), and no timeout ERROR. As in
// TestSecondSignalExitsDuringStartup, the signal is ctx's end.
func TestStartupTimeoutAfterASignalSaysSo(t *testing.T) {
	vp := harness.StartVault(t)
	dir := t.TempDir()
	cfg := startupDeadlineConfig(t, dir, vp.Addr, nil)
	logs, exited, e := hardExitEnv()
	held, open := holdFirstAuditWrite(e)
	ctx, signal := context.WithCancel(context.Background())
	defer signal()
	done, runErr := goRunServer(ctx, e, cfg)
	t.Cleanup(func() {
		open()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
		}
	})
	select {
	case <-held:
	case <-done:
		t.Fatalf("server ended: %v\n%s", runErr(), logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("the start-up never wrote its start event\n%s", logs.String())
	}
	signal()
	select {
	case <-exited:
	case <-done:
		t.Fatalf("runServer returned (%v) while its start event's write hangs\n%s", runErr(), logs.String())
	case <-time.After(90 * time.Second):
		t.Fatalf("no exit within 90s (startup_timeout 10s)\n%s", logs.String())
	}
	l := logs.String()
	if strings.Contains(l, "start-up did not finish within startup_timeout") {
		t.Errorf("the timeout is blamed for a start-up the signal had stopped\n%s", l)
	}
	if !strings.Contains(l, `level=WARN msg="start-up stopped by SIGINT/SIGTERM has not ended at startup_timeout: still waiting" startup_timeout=10s waiting_for="the start event to be durable (audit.file)"`) ||
		!strings.Contains(l, `level=ERROR msg="start-up stopped by SIGINT/SIGTERM did not end: exiting now`) {
		t.Errorf("the log does not say the signal stopped the start-up\n%s", l)
	}
	open()
	select {
	case <-done:
		if err := runErr(); err == nil || !strings.Contains(err.Error(), "start-up stopped by SIGINT/SIGTERM: still waiting for the start event to be durable (audit.file) at startup_timeout (10s)") {
			t.Errorf("runServer() = %v, want the signal named", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("runServer did not return once the write was released\n%s", logs.String())
	}
}
