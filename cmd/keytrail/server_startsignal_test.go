package main

import (
	"context"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestSecondSignalExitsDuringStartup: a second SIGTERM exits at once
// (status 1) during the drain and the shutdown, but the watcher for it was
// set up only once the server was serving. A SIGTERM during the start-up
// that the start-up does not notice (here: the start's policy_load event
// waits for an audit disk whose writes hang) left the broker waiting, and
// the second SIGTERM was swallowed (signal.NotifyContext's channel still
// takes it): only SIGKILL ended the process. Now the second signal exits
// from the first one on, start-up and the close of a failed start-up
// included.
//
// As main does, the signals cancel ctx (signal.NotifyContext); e.exit
// stands for os.Exit. SIGTERM is sent until the exit comes: the watcher
// arms itself once the first one has cancelled ctx.
func TestSecondSignalExitsDuringStartup(t *testing.T) {
	vp := harness.StartVault(t)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	exited := make(chan int, 1)
	var logs brokertest.SyncBuffer
	e := &env{ctx: ctx, stdout: io.Discard, stderr: &logs, getenv: func(k string) string {
		return map[string]string{"VAULT_TOKEN": vp.RootToken, envReconcile: "off"}[k]
	}, exit: func(code int) {
		select {
		case exited <- code:
		default:
		}
	}}
	cfg := &Config{Listen: "127.0.0.1:0", PublicURL: "http://127.0.0.1:7700", Policy: pol,
		Vault: VaultConfig{Address: vp.Addr}, Audit: AuditConfig{File: filepath.Join(dir, "audit.jsonl")},
		Log: LogConfig{Level: "info", Format: "text"}}
	cfg.applyDefaults()
	if err := cfg.validate("test config"); err != nil {
		t.Fatal(err)
	}
	held, open := holdFirstAuditWrite(e)
	done, _ := goRunServer(ctx, e, cfg)
	t.Cleanup(func() { // let the server end before the next test
		open()
		select {
		case <-done:
		case <-time.After(60 * time.Second):
		}
	})
	select {
	case <-held: // the start-up waits for the audit disk
	case <-done:
		t.Fatalf("server ended\n%s", logs.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("the start-up never wrote its policy_load event\n%s", logs.String())
	}
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	<-ctx.Done()
	deadline := time.After(20 * time.Second)
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
		case <-deadline:
			t.Fatalf("SIGTERMs sent during a start-up that waits for the audit log never exited\n%s", logs.String())
		case <-time.After(100 * time.Millisecond):
		}
	}
}
