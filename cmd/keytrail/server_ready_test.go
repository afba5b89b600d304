package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/e2e/harness"
)

// TestReadyzFailsWhenVaultRefusesTheBrokerToken: with the broker's own
// Vault token revoked (or expired) Vault still answers sys/health, but every
// mint fails (503 vault_denied). /readyz must say so too, so that a load
// balancer and an operator see the broker as unable to serve, and turn ready
// again without a restart once a working token is back.
func TestReadyzFailsWhenVaultRefusesTheBrokerToken(t *testing.T) {
	vp := harness.StartVault(t)
	sec, err := vp.Client.Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{"root"}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	tokenFile := filepath.Join(t.TempDir(), "vault-token")
	if err := os.WriteFile(tokenFile, []byte(sec.Auth.ClientToken), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, errc := startTestServer(t, ctx, vp.Addr, "", func(c *Config) { c.Vault.TokenFile = tokenFile })
	readyz := readyzProbe(t, addr)
	if st, _ := readyz(); st != 200 {
		t.Fatalf("/readyz = %d before the revocation, want 200", st)
	}
	if err := vp.Client.Auth().Token().RevokeTree(sec.Auth.ClientToken); err != nil {
		t.Fatal(err)
	}
	// A success is kept for a second (vault.DefaultTokenHealthTTL).
	if st, why := readyzUntil(t, readyz, 503, 10*time.Second); st != 503 || why != "vault unavailable" {
		t.Errorf("/readyz with the broker's token revoked = %d %q, want 503 %q", st, why, "vault unavailable")
	}
	// A new token in the token file: ready again, without a restart.
	sec2, err := vp.Client.Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{"root"}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte(sec2.Auth.ClientToken), 0o600); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, _ := readyz()
		if st == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("/readyz = %d 30s after a new token was written, want 200", st)
		}
		<-time.After(100 * time.Millisecond)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("runServer() = %v", err)
	}
}

// startTestServer writes serverTestPolicy to a new directory and runs a
// server of it there, in process (goServer: Vault at vaultAddr with token,
// mods applied), until ctx ends. It returns once the server serves: its
// address, and the channel runServer's result arrives on.
func startTestServer(t *testing.T, ctx context.Context, vaultAddr, token string, mods ...func(*Config)) (addr string, errc chan error) {
	t.Helper()
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(pol, []byte(serverTestPolicy), 0o600); err != nil {
		t.Fatal(err)
	}
	readyc, errc := goServer(t, ctx, dir, pol, vaultAddr, token, mods...)
	addr = awaitServing(t, readyc, errc)
	return addr, errc
}

// readyzProbe returns a probe of the server at addr: a GET /readyz, its
// status and error code.
func readyzProbe(t *testing.T, addr string) func() (int, string) {
	return func() (int, string) {
		resp, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			t.Fatalf("GET /readyz: %v", err)
		}
		defer resp.Body.Close()
		var body struct {
			Error string `json:"error"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&body)
		return resp.StatusCode, body.Error
	}
}

// readyzUntil probes until /readyz answers want, or d has passed; it
// returns the last answer.
func readyzUntil(t *testing.T, readyz func() (int, string), want int, d time.Duration) (int, string) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		st, why := readyz()
		if st == want || time.Now().After(deadline) {
			return st, why
		}
		<-time.After(50 * time.Millisecond)
	}
}

// TestReadyzKeepsTokenLookup: every probe of /readyz used to cost Vault a
// lookup-self of the broker's token. A success is now kept for a second
// (vault.DefaultTokenHealthTTL, and /readyz's whole answer is kept as
// long): a burst of probes costs one lookup per second at most, a later
// probe looks up again, and so with the token refused (the 503 is kept for
// the second too). Vault is behind a proxy that counts the lookups.
func TestReadyzKeepsTokenLookup(t *testing.T) {
	vp := harness.StartVault(t)
	sec, err := vp.Client.Auth().Token().Create(&vaultapi.TokenCreateRequest{Policies: []string{"root"}, TTL: "1h"})
	if err != nil {
		t.Fatal(err)
	}
	target, err := url.Parse(vp.Addr)
	if err != nil {
		t.Fatal(err)
	}
	var lookups atomic.Int64
	rp := httputil.NewSingleHostReverseProxy(target)
	px := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v1/auth/token/lookup-self" {
			lookups.Add(1)
		}
		rp.ServeHTTP(w, r)
	}))
	defer px.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addr, errc := startTestServer(t, ctx, px.URL, sec.Auth.ClientToken)
	readyz := readyzProbe(t, addr)

	const probes = 20
	before, start := lookups.Load(), time.Now()
	for i := range probes {
		if st, why := readyz(); st != 200 {
			t.Fatalf("probe %d: /readyz = %d %q, want 200", i, st, why)
		}
	}
	// One lookup per started second of the burst, plus one the broker's
	// login may make meanwhile.
	got, most := lookups.Load()-before, int64(time.Since(start)/time.Second)+2
	if got > most {
		t.Errorf("%d /readyz probes made %d lookup-self calls, want at most %d", probes, got, most)
	}
	// Past the second, a probe looks the token up again.
	n := lookups.Load()
	deadline := time.Now().Add(10 * time.Second)
	for lookups.Load() == n {
		if time.Now().After(deadline) {
			t.Fatalf("no lookup-self within 10s of probes after the burst")
		}
		if st, _ := readyz(); st != 200 {
			t.Fatalf("/readyz = %d, want 200", st)
		}
		<-time.After(100 * time.Millisecond)
	}

	// Refused: each probe asks Vault again.
	if err := vp.Client.Auth().Token().RevokeTree(sec.Auth.ClientToken); err != nil {
		t.Fatal(err)
	}
	if st, why := readyzUntil(t, readyz, 503, 10*time.Second); st != 503 || why != "vault unavailable" {
		t.Fatalf("/readyz with the broker's token revoked = %d %q, want 503 %q", st, why, "vault unavailable")
	}
	// /readyz keeps its whole answer, a 503 too, for a second: a burst
	// of probes with the token refused costs one lookup per second at
	// most, and a later probe asks again.
	before, start = lookups.Load(), time.Now()
	for i := range probes {
		if st, _ := readyz(); st != 503 {
			t.Fatalf("probe %d after the revocation: /readyz = %d, want 503", i, st)
		}
	}
	got, most = lookups.Load()-before, int64(time.Since(start)/time.Second)+2
	if got > most {
		t.Errorf("%d /readyz probes with a refused token made %d lookup-self calls, want at most %d", probes, got, most)
	}
	n = lookups.Load()
	deadline = time.Now().Add(10 * time.Second)
	for lookups.Load() == n {
		if time.Now().After(deadline) {
			t.Fatalf("no lookup-self within 10s of probes with the token refused")
		}
		if st, _ := readyz(); st != 503 {
			t.Fatalf("/readyz = %d, want 503", st)
		}
		<-time.After(100 * time.Millisecond)
	}
	cancel()
	if err := <-errc; err != nil {
		t.Fatalf("runServer() = %v", err)
	}
}
