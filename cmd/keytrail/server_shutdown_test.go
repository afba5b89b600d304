package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/e2e/harness"
)

// gatedVault puts a reverse proxy in front of vp: once hold is set, each
// request to sys/health signals arrived and waits until release is closed
// (or its caller gives up). /readyz asks sys/health first, so a /readyz
// request can be held in flight for as long as a test needs.
type gatedVault struct {
	URL      string
	hold     atomic.Bool
	arrived  chan struct{}
	release  chan struct{}
	released sync.Once
}

func startGatedVault(t *testing.T, vp *harness.Vault) *gatedVault {
	t.Helper()
	target, err := url.Parse(vp.Addr)
	if err != nil {
		t.Fatal(err)
	}
	g := &gatedVault{arrived: make(chan struct{}, 1), release: make(chan struct{})}
	rp := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if g.hold.Load() && strings.HasPrefix(r.URL.Path, "/v1/sys/health") {
			select {
			case g.arrived <- struct{}{}:
			default:
			}
			select {
			case <-g.release:
			case <-r.Context().Done():
				return
			}
		}
		rp.ServeHTTP(w, r)
	}))
	t.Cleanup(front.Close)
	t.Cleanup(g.open)
	g.URL = front.URL
	return g
}

func (g *gatedVault) open() { g.released.Do(func() { close(g.release) }) }

// TestServerExitsNonZeroWhenShutdownTimesOut: a request still running when
// shutdown_timeout ends is cut off. That stop is not clean, and a
// supervisor (systemd, Kubernetes) sees it only in the exit status:
// runServer must return an error (exit status 1), not nil after logging
// "shutdown incomplete". The request held in flight is a /readyz whose
// Vault health check waits at a gate.
func TestServerExitsNonZeroWhenShutdownTimesOut(t *testing.T) {
	vp := harness.StartVault(t)
	gate := startGatedVault(t, vp)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	readyc, errc := goServer(t, ctx, dir, pol, gate.URL, vp.RootToken, func(c *Config) {
		c.ShutdownTimeout = duration(200 * time.Millisecond)
	})
	var addr string
	select {
	case addr = <-readyc:
	case err := <-errc:
		t.Fatalf("server: %v", err)
	case <-time.After(60 * time.Second):
		t.Fatal("server did not start")
	}

	gate.hold.Store(true)
	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	go func() {
		resp, err := client.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
		}
	}()
	select {
	case <-gate.arrived: // /readyz is in flight, waiting for Vault
	case err := <-errc:
		t.Fatalf("server ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("/readyz never asked Vault")
	}
	cancel()
	var err error
	select {
	case err = <-errc:
	case <-time.After(30 * time.Second):
		t.Fatal("runServer did not return after shutdown_timeout")
	}
	if err == nil || !strings.Contains(err.Error(), "shutdown incomplete") || !strings.Contains(err.Error(), "shutdown_timeout") {
		t.Fatalf("runServer() = %v after a request outlived shutdown_timeout, want an error saying the shutdown was incomplete (exit status 1)", err)
	}
}
