package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestFailedStartupHungCloseExitsAndRevokes: a start-up logged in with
// AppRole that then failed (here: vault.token_role names no role) and
// whose close hung (here: the audit sink's Close, as on an audit disk
// that hangs) waited there for ever: no exit, its login's token never
// revoked (its closer runs after the sink's), until a second signal. Its
// close is now bounded as a start-up stopped by startup_timeout is:
// startupCloseGrace later it logs an ERROR with the start-up's error,
// revokes the login's token and exits 1.
func TestFailedStartupHungCloseExitsAndRevokes(t *testing.T) {
	r := startHungClose(t, context.Background(), "kt-failhung", func(cfg *Config, e *env) {
		cfg.Vault.TokenRole = "kt-no-such-role"
	})
	c, before, logs := r.c, r.before, r.logs
	tokens := func() int { t.Helper(); return vaultTokenCount(t, c) }
	select {
	case <-r.closing:
	case <-r.done:
		t.Fatalf("runServer returned (%v) without closing its audit sink\n%s", r.runErr(), logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("the failed start-up never closed its audit sink\n%s", logs.String())
	}
	if n := tokens(); n != before+1 {
		t.Fatalf("Vault tokens: %d before the start-up, %d while its close hangs, want its login's one more", before, n)
	}
	awaitHardExit(t, logs, r.exited, r.done, 60*time.Second, "a failed start-up whose close hangs (grace 2s)")
	if after := tokens(); after != before {
		t.Errorf("Vault tokens: %d before a failed start-up whose close hung, %d after its exit: its AppRole login's token was left valid\n%s", before, after, logs.String())
	}
	l := logs.String()
	if !strings.Contains(l, `level=ERROR msg="start-up failed and did not end: exiting now, the audit log left as it is (no checkpoint written)" waited=2s error="vault.token_role: vault token role \"kt-no-such-role\" does not exist`) {
		t.Errorf("the hard exit's ERROR (with the start-up's error) is not logged\n%s", l)
	}
	// The in-process runServer (e.exit does not end it) closes once the
	// Close is released: its closer finds the token revoked already.
	r.release()
	select {
	case <-r.done:
		if err := r.runErr(); err == nil || !strings.Contains(err.Error(), "kt-no-such-role") {
			t.Errorf("runServer() = %v, want the start-up's error", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("runServer did not return once the Close was released\n%s", logs.String())
	}
	l = logs.String()
	if n := strings.Count(l, "revoked the Vault token the broker logged in for"); n != 1 {
		t.Errorf("the login token's revocation logged %d times, want 1\n%s", n, l)
	}
	if strings.Contains(l, "could not revoke the Vault token the broker logged in for") {
		t.Errorf("a second revocation was tried\n%s", l)
	}
}
