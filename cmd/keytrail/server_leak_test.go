package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/signal"
	"regexp"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/vault/devserver"
	"github.com/keytrail/keytrail/e2e/harness"
)

var goroutineHeader = regexp.MustCompile(`^goroutine (\d+) `)

// goroutineStacks returns the stacks of every goroutine, by id.
func goroutineStacks() map[string]string {
	buf := make([]byte, 4<<20)
	out := map[string]string{}
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if m := goroutineHeader.FindStringSubmatch(g); m != nil {
			out[m[1]] = g
		}
	}
	return out
}

// TestServerShutdownLeavesNothingRunning: once runServer has returned,
// every goroutine it caused has ended (goleak-style: every goroutine not
// there before the server started, waited for with a deadline), with a
// Redis store, a Vault transit checkpoint key and pprof, after a few
// requests. The Vault client's idle keep-alive connections (and their two
// goroutines each) used to stay open until Vault's idle timeout, 90 s later.
func TestServerShutdownLeavesNothingRunning(t *testing.T) {
	rd := harness.StartRedis(t)
	vp := harness.StartVault(t)
	// The os/signal loop starts with the first signal.Notify and lives on.
	sc := make(chan os.Signal, 1)
	signal.Notify(sc, syscall.SIGUSR2)
	signal.Stop(sc)
	vp.Client.CloneConfig().HttpClient.CloseIdleConnections()
	before := goroutineStacks()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, errc := startTestServer(t, ctx, vp.Addr, vp.RootToken, func(c *Config) {
		c.Store.RedisURL = rd.URL()
		c.Audit.CheckpointTransitKey = devserver.Ed25519Key
		c.PprofListen = "127.0.0.1:0"
	})
	client := &http.Client{Transport: &http.Transport{}}
	for _, p := range []string{"/readyz", "/metrics", "/.well-known/jwks.json"} {
		resp, err := client.Get("http://" + addr + p)
		if err != nil {
			t.Fatalf("GET %s: %v", p, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	client.CloseIdleConnections()
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("runServer() = %v", err)
	}

	deadline := time.Now().Add(10 * time.Second)
	for {
		var left []string
		for id, g := range goroutineStacks() {
			if _, ok := before[id]; !ok && !strings.Contains(g, "TestServerShutdownLeavesNothingRunning") {
				left = append(left, g)
			}
		}
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines started while the server ran are still there 10s after runServer returned:\n\n%s",
				len(left), strings.Join(left, "\n\n"))
		}
		<-time.After(50 * time.Millisecond)
	}
}
