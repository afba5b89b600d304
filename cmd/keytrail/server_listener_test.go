package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
)

// serverTestConfig writes serverTestPolicy into dir and returns the Config
// of a broker serving it on listen, with Vault at vaultAddr, its audit log
// in dir and info text logs; the defaults are not applied yet.
func serverTestConfig(t *testing.T, dir, listen, vaultAddr string) *Config {
	t.Helper()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	return &Config{Listen: listen, PublicURL: "http://127.0.0.1:7700", Policy: pol,
		Vault: VaultConfig{Address: vaultAddr}, Audit: AuditConfig{File: filepath.Join(dir, "audit.jsonl")},
		Log: LogConfig{Level: "info", Format: "text"}}
}

// badKeyPair is a Config change whose serving key pair (written into dir)
// is not PEM.
func badKeyPair(t *testing.T) func(c *Config, dir string) {
	return func(c *Config, dir string) {
		cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
		for _, f := range []string{cert, key} {
			if err := os.WriteFile(f, []byte("not PEM\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		c.TLS = &TLSConfig{CertFile: cert, KeyFile: key}
	}
}

// TestFailedStartupReleasesTheListener: the listen address is bound before
// the start-up, so every start-up that fails after it (a bad serving key
// pair, a taken pprof_listen, a failure in the wiring after the Vault
// login: here an audit log that cannot be created) must release it: a
// supervisor restarts the broker on the same port, and a listener (its fd)
// kept open would fail that start with "address already in use". After
// each failure a second start-up on the same port serves.
func TestFailedStartupReleasesTheListener(t *testing.T) {
	vp := harness.StartVault(t)
	pprofTaken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pprofTaken.Close()
	for _, tc := range []struct {
		name string
		mod  func(c *Config, dir string)
		want string
	}{
		{"bad-key-pair", badKeyPair(t), "tls"},
		{"pprof-taken", func(c *Config, _ string) { c.PprofListen = pprofTaken.Addr().String() }, "pprof_listen"},
		{"wiring-fails", func(c *Config, dir string) {
			blocker := filepath.Join(dir, "not-a-dir")
			if err := os.WriteFile(blocker, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			c.Audit.File = filepath.Join(blocker, "audit.jsonl")
		}, "audit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			listen := closedLoopbackAddrs(t, 1)[0]
			dir := t.TempDir()
			var logs brokertest.SyncBuffer
			newCfg := func() *Config { return serverTestConfig(t, dir, listen, vp.Addr) }
			e := &env{ctx: context.Background(), stdout: io.Discard, stderr: &logs, getenv: func(k string) string {
				return map[string]string{"VAULT_TOKEN": vp.RootToken, envReconcile: "off"}[k]
			}}
			cfg := newCfg()
			tc.mod(cfg, dir)
			cfg.applyDefaults()
			if err := runServer(context.Background(), e, cfg, nil); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("runServer() = %v, want a failure naming %s\n%s", err, tc.want, logs.String())
			}

			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			cfg = newCfg()
			cfg.applyDefaults()
			readyc, errc := make(chan string, 1), make(chan error, 1)
			go func() { errc <- runServer(ctx, e, cfg, func(a string) { readyc <- a }) }()
			select {
			case a := <-readyc:
				if a != listen {
					t.Errorf("second start-up serves on %s, want %s", a, listen)
				}
				resp, err := http.Get("http://" + a + "/healthz")
				if err != nil {
					t.Fatalf("GET /healthz after the second start-up: %v", err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					t.Errorf("GET /healthz = %d, want 200", resp.StatusCode)
				}
			case err := <-errc:
				t.Fatalf("second start-up on %s after a failed one: %v (the failed start-up kept its listener)\n%s", listen, err, logs.String())
			case <-time.After(60 * time.Second):
				t.Fatalf("second start-up did not serve\n%s", logs.String())
			}
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("runServer() = %v after cancel, want nil", err)
			}
		})
	}
}

// TestStartupConnectionIsAnsweredOnceServing: the listener is bound before
// the start-up. A client that connects before anything is wired is
// accepted by the kernel (not refused) and answered on that connection:
// /healthz 200 (alive), as during the start-up, the broker's routes once
// serving (TestRequestDuringStartupIsAnswered503: the other routes answer
// 503 "starting" meanwhile; docs/WORKLOADS.md says so to workloads).
func TestStartupConnectionIsAnsweredOnceServing(t *testing.T) {
	vp := harness.StartVault(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	cfg := serverTestConfig(t, dir, "127.0.0.1:0", vp.Addr)
	cfg.applyDefaults()
	var logs brokertest.SyncBuffer
	conns := make(chan net.Conn, 1)
	e := &env{ctx: ctx, stdout: io.Discard, stderr: &logs, getenv: func(k string) string {
		return map[string]string{"VAULT_TOKEN": vp.RootToken, envReconcile: "off"}[k]
	}, listening: func(ln net.Listener) {
		// Before the wiring: nothing serves yet.
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Errorf("dial during the start-up: %v", err)
			close(conns)
			return
		}
		if _, err := fmt.Fprintf(c, "GET /healthz HTTP/1.1\r\nHost: keytrail\r\nConnection: close\r\n\r\n"); err != nil {
			t.Errorf("write during the start-up: %v", err)
		}
		conns <- c
	}}
	readyc, errc := make(chan string, 1), make(chan error, 1)
	go func() { errc <- runServer(ctx, e, cfg, func(a string) { readyc <- a }) }()
	select {
	case <-readyc:
	case err := <-errc:
		t.Fatalf("server: %v\n%s", err, logs.String())
	case <-time.After(60 * time.Second):
		t.Fatal("server did not start")
	}
	c, ok := <-conns
	if !ok {
		t.FailNow()
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("the connection made during the start-up got no answer once serving: %v\n%s", err, logs.String())
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("/healthz asked during the start-up = %d, want 200 once serving", resp.StatusCode)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("runServer() = %v after cancel, want nil", err)
	}
}

// TestInFlightCountsEveryHandlerEnd: runServer waits after shutdown_timeout
// for the handlers it counts; a count that missed a handler's end would
// make every later shutdown wait the whole grace (or forever). A handler
// that panics (net/http's http.ErrAbortHandler, as a proxied stream cut
// short aborts, or any other panic) and a streaming one that flushes are
// counted down when they end; wait does not wait with nothing in flight
// and gives up after its bound with a handler still running.
func TestInFlightCountsEveryHandlerEnd(t *testing.T) {
	var f inFlight
	block := make(chan struct{})
	started := make(chan struct{}, 1)
	srv := httptest.NewUnstartedServer(f.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/abort":
			panic(http.ErrAbortHandler)
		case "/panic":
			panic(errors.New("test panic"))
		case "/stream":
			w.Header().Set("Content-Type", "text/event-stream")
			for i := 0; i < 3; i++ {
				fmt.Fprintf(w, "data: %d\n\n", i)
				_ = http.NewResponseController(w).Flush()
			}
		case "/block":
			started <- struct{}{}
			<-block
		}
	})))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the panics' stacks
	srv.Config.SetKeepAlivesEnabled(false)
	srv.Start()
	defer srv.Close()
	for _, p := range []string{"/abort", "/panic", "/stream"} {
		resp, err := http.Get(srv.URL + p)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		// The handler's end and the client's read race: wait for the count
		// (bounded by the test's timeout), not for a time.
		for f.running() != 0 {
			if n := f.wait(time.Minute); n != 0 {
				t.Fatalf("%s: %d handlers counted running after it ended", p, n)
			}
		}
	}
	if n := f.wait(time.Hour); n != 0 {
		t.Fatalf("wait() = %d with nothing in flight", n)
	}

	done := make(chan struct{})
	go func() {
		defer close(done)
		if resp, err := http.Get(srv.URL + "/block"); err == nil {
			resp.Body.Close()
		}
	}()
	<-started
	if n := f.wait(time.Millisecond); n != 1 {
		t.Errorf("wait(1ms) with a handler blocked = %d, want 1 (bounded)", n)
	}
	close(block)
	<-done
	if n := f.wait(time.Minute); n != 0 {
		t.Errorf("wait() after the blocked handler ended = %d, want 0", n)
	}
}
