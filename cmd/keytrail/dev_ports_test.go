package main

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestDevHoldsListenFromItsCheck: dev checked that --listen was free (it
// bound it and closed it again) before it started Vault, and the broker
// bound it only once Vault was up: another process could take it in
// between, and dev then failed after starting Vault ("broker: listen ...:
// address already in use"). dev now keeps --listen bound from its check
// and hands the listener to the broker, so nothing can take it meanwhile;
// a dev that fails before the broker serves releases it.
func TestDevHoldsListenFromItsCheck(t *testing.T) {
	out := t.TempDir()
	pol := writeFile(t, out, "p.yaml", "version: 1\n")
	listen := closedLoopbackAddrs(t, 1)[0]
	called := false
	e := &env{ctx: context.Background(), stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }}
	e.devListenHeld = func() {
		called = true
		// Another process, between dev's check of --listen and Vault.
		l, err := net.Listen("tcp", listen)
		if err == nil {
			l.Close()
			t.Errorf("another process took --listen %s after dev checked it, before Vault started", listen)
		} else if !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("taking --listen %s after dev's check: %v, want address in use", listen, err)
		}
	}
	// No Vault binary: dev fails at Vault's start (or before, on the demo
	// issuer's port, when something else holds 127.0.0.1:7701).
	err := runDev(context.Background(), e, devOptions{dir: filepath.Join(out, "dev"), listen: listen, policy: pol, vaultBin: filepath.Join(out, "no-vault")})
	if err == nil || !(strings.Contains(err.Error(), "starting Vault") || strings.Contains(err.Error(), "the demo issuer needs")) {
		t.Fatalf("dev = %v, want it to fail starting Vault (or on the demo issuer's port)", err)
	}
	if !called {
		t.Fatal("dev did not get to holding --listen")
	}
	// Released once dev failed.
	l, err := net.Listen("tcp", listen)
	if err != nil {
		t.Fatalf("--listen %s still taken after dev failed: %v", listen, err)
	}
	l.Close()
}
