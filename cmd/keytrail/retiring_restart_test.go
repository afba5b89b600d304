package main

import (
	"context"
	"io"
	"log/slog"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	vaultad "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/jwks"
	"github.com/keytrail/keytrail/e2e/harness"
)

// retiringPolicy is reloadJWKSPolicy whose orders-jwt grant (ttl 5m) signs
// with the transit key key.
func retiringPolicy(key string) string {
	return strings.NewReplacer("{ISS}", "http://127.0.0.1:1", "{GRANTS}", "orders-jwt", "{EXTRA}", "",
		"transit_key: keytrail-signing", "transit_key: "+key).Replace(reloadJWKSPolicy)
}

// testClock is a clock tests move by hand.
type testClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *testClock) Now() time.Time  { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *testClock) Set(t time.Time) { c.mu.Lock(); c.now = t; c.mu.Unlock() }

// servedKIDs is what /.well-known/jwks.json of rt serves, by kid.
func servedKIDs(t *testing.T, rt *brokerRuntime) map[string]broker.PublicKey {
	t.Helper()
	keys, err := rt.keys.PublicKeys(context.Background())
	if err != nil {
		t.Fatalf("JWKS: %v", err)
	}
	out := map[string]broker.PublicKey{}
	for _, k := range keys {
		out[k.KID] = k
	}
	return out
}

// TestRetiringKeyServedAfterRestart: a policy reload that moves a jwt grant
// from transit key A to B keeps A in the JWKS until A's JWTs can have
// expired. That was only in the memory of the instance that reloaded: the
// same broker restarted (on the same Redis) served B alone, and relying
// parties refused the live JWTs A signed (unknown kid) until they expired.
// The reload now records A and its time in the store, and the new instance
// serves it from start-up until that time, then drops it. Real Vault and
// Redis, the real start-up (wire); time moves by the injected clock.
func TestRetiringKeyServedAfterRestart(t *testing.T) {
	vp := harness.StartVault(t) // builds Vault if needed; fails, never skips
	r := harness.StartRedis(t)
	dir := t.TempDir()
	polFile := filepath.Join(dir, "policy.yaml")
	writePol := func(key string) {
		t.Helper()
		writeAtomically(t, polFile, retiringPolicy(key))
	}
	keyA, keyB := harness.VaultEd25519Key, harness.VaultSigningKey
	kidA, kidB := keyA+":1", keyB+":1"
	// Transit versions are signed with once Vault created them 2 minutes
	// ago (DefaultPublishDelay): the clock starts past that.
	writePol(keyA)
	clock := &testClock{now: time.Now().Add(10 * time.Minute).UTC()}
	cfg := &Config{Listen: "127.0.0.1:0", PublicURL: "http://127.0.0.1:7700", Policy: polFile,
		Vault: VaultConfig{Address: vp.Addr}, Audit: AuditConfig{File: filepath.Join(dir, "audit.jsonl")},
		Store: StoreConfig{RedisURL: r.URL()}, Log: LogConfig{Level: "error", Format: "text"}}
	cfg.applyDefaults()
	if err := cfg.validate("test config"); err != nil {
		t.Fatal(err)
	}
	e := &env{ctx: context.Background(), stdout: io.Discard, stderr: io.Discard, getenv: func(k string) string {
		if k == "VAULT_TOKEN" {
			return vp.RootToken
		}
		return ""
	}}
	start := func() *brokerRuntime {
		t.Helper()
		rt := &brokerRuntime{cfg: cfg, log: slog.New(slog.DiscardHandler), now: clock.Now}
		if err := rt.wire(t.Context(), e); err != nil {
			_ = rt.close()
			t.Fatalf("start: %v", err)
		}
		return rt
	}

	first := start()
	minter, err := vaultad.NewJWTMinter(vaultad.JWTMinterOptions{Client: first.vault, PublicURL: cfg.PublicURL,
		Published: first.keys, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	g, ok := first.state.Load().pol.Grant("orders-jwt")
	if !ok {
		t.Fatal("no grant orders-jwt")
	}
	cred, err := minter.Mint(t.Context(), broker.MintRequest{IssuanceID: "iss_restart", Workload: "payments-api",
		Grant: *g, TTL: 5 * time.Minute, Now: clock.Now()})
	if err != nil {
		t.Fatalf("Mint with key A: %v", err)
	}
	if cred.Fields["kid"] != kidA {
		t.Fatalf("JWT kid %v, want %s", cred.Fields["kid"], kidA)
	}

	writePol(keyB)
	reloadedAt := clock.Now()
	if err := first.reloadPolicy(t.Context(), "sighup"); err != nil {
		t.Fatalf("reload to key B: %v", err)
	}
	// A's time, as the store keeps it: at least orders-jwt's ttl plus the
	// leeway after the reload, at most two JWKS refreshes more (the first
	// instance recorded A as in use at start-up).
	stored, err := first.store.RetiringKeys(t.Context(), clock.Now())
	if err != nil {
		t.Fatal(err)
	}
	until := stored[keyA]
	if least := reloadedAt.Add(5*time.Minute + jwks.RetireLeeway); until.Before(least) || until.After(least.Add(2*jwks.RefreshEvery+time.Millisecond)) {
		t.Fatalf("store after the reload: %s until %v, want from %v to %v", keyA, until, least, least.Add(2*jwks.RefreshEvery))
	}
	if kids := servedKIDs(t, first); kids[kidA].Key == nil || kids[kidB].Key == nil {
		t.Fatalf("JWKS after the reload (same instance) = %v, want %s and %s", slices.Sorted(maps.Keys(kids)), kidA, kidB)
	}
	if err := first.close(); err != nil {
		t.Fatalf("close: %v", err)
	}

	// The restart, a minute later.
	clock.Set(reloadedAt.Add(time.Minute))
	second := start()
	defer func() { _ = second.close() }()
	kids := servedKIDs(t, second)
	if kids[kidA].Key == nil || kids[kidB].Key == nil {
		t.Fatalf("JWKS of the restarted broker = %v, want %s (JWTs it signed live until %v) and %s",
			slices.Sorted(maps.Keys(kids)), kidA, until, kidB)
	}
	// The live JWT verifies with what the restarted broker serves.
	if _, err := jwt.Parse(cred.AccessToken, func(tok *jwt.Token) (any, error) { return kids[tok.Header["kid"].(string)].Key, nil },
		jwt.WithValidMethods([]string{"EdDSA"}), jwt.WithTimeFunc(clock.Now), jwt.WithAudience("orders-api")); err != nil {
		t.Errorf("the JWT key A signed before the restart does not verify with the restarted broker's JWKS: %v", err)
	}

	clock.Set(until.Add(-time.Millisecond))
	if kids := servedKIDs(t, second); kids[kidA].Key == nil {
		t.Errorf("JWKS just before %v = %v, want %s still served", until, slices.Sorted(maps.Keys(kids)), kidA)
	}
	clock.Set(until)
	if kids := servedKIDs(t, second); kids[kidA].Key != nil || kids[kidB].Key == nil {
		t.Errorf("JWKS at %v = %v, want %s alone (A's JWTs have expired)", until, slices.Sorted(maps.Keys(kids)), kidB)
	}
	// The next reload reads the store: the expired entry is removed, and
	// A is no longer read from Vault.
	if err := second.reloadPolicy(t.Context(), "sighup"); err != nil {
		t.Fatalf("reload at %v: %v", until, err)
	}
	if stored, err := second.store.RetiringKeys(t.Context(), reloadedAt); err != nil || !stored[keyA].IsZero() {
		t.Errorf("store's retiring keys after %v = %v, %v; want %s's expired entry removed", until, stored, err, keyA)
	}
	if names := second.keys.Names(); !slices.Equal(names, []string{keyB}) {
		t.Errorf("key names after the reload at %v = %q, want [%s]", until, names, keyB)
	}
}
