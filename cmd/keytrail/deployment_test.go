package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/e2e/harness"
)

// serverLog is a log a server writes while the test reads it.
type serverLog struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *serverLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *serverLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// loggedDeployment is the deployment a server logged at start-up ("" when
// it has not).
func loggedDeployment(log string) string {
	sc := bufio.NewScanner(strings.NewReader(log))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		var line struct {
			Msg        string `json:"msg"`
			Deployment string `json:"deployment"`
		}
		if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "deployment" {
			return line.Deployment
		}
	}
	return ""
}

// TestDeploymentSharedAcrossRedisAddresses: two brokers of one deployment
// that reach the same Redis under different names (redis://127.0.0.1:port
// and redis://localhost:port; the same goes for a DNS name against an IP,
// or Sentinel against a direct address) tag their Vault tokens with one
// deployment id, so that neither's reconciliation takes the other's tokens
// for another deployment's and leaves them alone. A broker restarted on a
// fresh audit file keeps it, and one with another key prefix (another
// deployment on the same Redis) gets another. The default used to be a
// hash of the configured location and prefix: a different id for each
// spelling of the address. Real Redis and Vault.
func TestDeploymentSharedAcrossRedisAddresses(t *testing.T) {
	rd := harness.StartRedis(t)
	vp := harness.StartVault(t)
	_, port, err := net.SplitHostPort(rd.Addr())
	if err != nil {
		t.Fatal(err)
	}
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	// start runs a broker with store url and prefix, a fresh audit file,
	// until it has logged its deployment; then stops it.
	start := func(url, prefix string) string {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var log serverLog
		readyc, errc := goServerLog(t, ctx, &log, t.TempDir(), pol, vp.Addr, vp.RootToken, func(c *Config) {
			c.Store.RedisURL, c.Store.Prefix = url, prefix
			c.Log = LogConfig{Level: "info", Format: "json"}
		})
		select {
		case <-readyc:
		case err := <-errc:
			t.Fatalf("server on %s: %v\n%s", url, err, log.String())
		case <-time.After(60 * time.Second):
			t.Fatalf("server on %s did not start\n%s", url, log.String())
		}
		cancel()
		if err := <-errc; err != nil {
			t.Fatalf("server on %s: runServer() = %v", url, err)
		}
		d := loggedDeployment(log.String())
		if !validDeployment(d) {
			t.Fatalf("server on %s logged deployment %q, want a valid one\n%s", url, d, log.String())
		}
		return d
	}
	byIP := start("redis://127.0.0.1:"+port+"/0", "")
	byName := start("redis://localhost:"+port, "")
	if byName != byIP {
		t.Errorf("deployment through localhost = %q, through 127.0.0.1 = %q; want one deployment", byName, byIP)
	}
	if again := start("redis://127.0.0.1:"+port+"/0", ""); again != byIP {
		t.Errorf("deployment after a restart on a fresh audit file = %q, want %q", again, byIP)
	}
	if other := start("redis://localhost:"+port, "{staging}:"); other == byIP {
		t.Errorf("deployment with another prefix = %q, the same as the default prefix's; want another deployment", other)
	}
}
