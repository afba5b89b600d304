package main

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
)

// deadListener is a bound listener whose Accept fails at once (as one whose
// socket broke): http.Server.Serve returns its error.
type deadListener struct{ net.Listener }

func (deadListener) Accept() (net.Conn, error) { return nil, errors.New("test: accept failed") }

// TestListenerFailedDuringStartupNeverServes: the listener serves (the
// starting handler) from before the start-up. One that fails during the
// start-up ended Serve then, but runServer went on to log "keytrail
// serving" and call ready once wired, and only then noticed the failure
// and shut down: a log saying the broker served when it never did. Now it
// goes from the wiring to the shutdown: no "serving" line, ready never
// called, the serve error returned (exit status 1).
func TestListenerFailedDuringStartupNeverServes(t *testing.T) {
	vp := harness.StartVault(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cfg := serverTestConfig(t, t.TempDir(), ln.Addr().String(), vp.Addr)
	cfg.applyDefaults()
	var logs brokertest.SyncBuffer
	e := &env{ctx: context.Background(), stdout: io.Discard, stderr: &logs, getenv: func(k string) string {
		return map[string]string{"VAULT_TOKEN": vp.RootToken, envReconcile: "off"}[k]
	}, listener: deadListener{ln}}
	readyCalled := make(chan struct{}, 1)
	errc := make(chan error, 1)
	go func() { errc <- runServer(context.Background(), e, cfg, func(string) { readyCalled <- struct{}{} }) }()
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "test: accept failed") {
			t.Errorf("runServer() = %v, want the listener's error", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("runServer did not return after its listener failed\n%s", logs.String())
	}
	select {
	case <-readyCalled:
		t.Errorf("ready called although the listener failed during the start-up")
	default:
	}
	if strings.Contains(logs.String(), "keytrail serving") {
		t.Errorf("logged \"keytrail serving\" although the listener failed during the start-up\n%s", logs.String())
	}
}
