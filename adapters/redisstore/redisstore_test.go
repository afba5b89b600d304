package redisstore_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/keytrail/keytrail/adapters/redisstore"
	"github.com/keytrail/keytrail/adapters/storetest"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
)

// newStore connects a store to r under prefix with the suite's clock.
func newStore(t testing.TB, r *harness.Redis, o redisstore.Options) *redisstore.Store {
	t.Helper()
	if o.URL == "" && o.Universal == nil {
		o.URL = r.URL()
	}
	if o.Now == nil {
		o.Now = storetest.Epoch
	}
	s, err := redisstore.New(context.Background(), o)
	if err != nil {
		t.Fatalf("New(%s) = %v, want nil", r.URL(), err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func TestContract(t *testing.T) {
	r := harness.StartRedis(t)
	n := 0
	storetest.Run(t, func(t *testing.T) broker.Store {
		// One server; every subtest gets its own key space.
		n++
		return newStore(t, r, redisstore.Options{Prefix: fmt.Sprintf("{contract-%d}:", n)})
	})
}

func TestContractDefaultPrefixWithPersistence(t *testing.T) {
	r := harness.StartRedis(t, harness.WithPersistence())
	storetest.Run(t, func(t *testing.T) broker.Store {
		// The default prefix on a freshly emptied server.
		s := newStore(t, r, redisstore.Options{})
		if err := s.Client().FlushDB(t.Context()).Err(); err != nil {
			t.Fatalf("FLUSHDB = %v", err)
		}
		return s
	})
}

func TestMaxmemoryPolicy(t *testing.T) {
	for _, c := range []struct {
		name    string
		policy  string
		allow   bool
		wantErr bool
	}{
		{"ok/noeviction", "noeviction", false, false},
		{"fail/allkeys-lru", "allkeys-lru", false, true},
		{"fail/allkeys-random", "allkeys-random", false, true},
		{"fail/volatile-ttl", "volatile-ttl", false, true},
		{"fail/volatile-lru", "volatile-lru", false, true},
		{"ok/allkeys-lru-allowed", "allkeys-lru", true, false},
		{"ok/volatile-lfu-allowed", "volatile-lfu", true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := harness.StartRedis(t, harness.WithArgs("--maxmemory-policy", c.policy))
			var logs bytes.Buffer
			s, err := redisstore.New(t.Context(), redisstore.Options{
				URL: r.URL(), AllowEvictingPolicy: c.allow, Logger: slog.New(slog.NewTextHandler(&logs, nil)),
			})
			if s != nil {
				t.Cleanup(func() { _ = s.Close() })
			}
			if gotErr := err != nil; gotErr != c.wantErr {
				t.Fatalf("New(maxmemory-policy %s, allow=%v) = %v, want error=%v", c.policy, c.allow, err, c.wantErr)
			}
			if err != nil {
				for _, want := range []string{strconv.Quote(c.policy), "noeviction", "AllowEvictingPolicy"} {
					if !strings.Contains(err.Error(), want) {
						t.Errorf("New(maxmemory-policy %s) = %q, want it to mention %s", c.policy, err, want)
					}
				}
				return
			}
			if c.allow && !strings.Contains(logs.String(), c.policy) {
				t.Errorf("New(maxmemory-policy %s, allow) logged %q, want a warning naming the policy", c.policy, logs.String())
			}
			if err := s.Ping(t.Context()); err != nil {
				t.Errorf("Ping() = %v, want nil", err)
			}
		})
	}
}

func TestConfigNotPermitted(t *testing.T) {
	// Managed Redis often disables CONFIG: New warns and goes on.
	r := harness.StartRedis(t, harness.WithArgs("--rename-command", "CONFIG", ""))
	var logs bytes.Buffer
	s, err := redisstore.New(t.Context(), redisstore.Options{URL: r.URL(), Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatalf("New(CONFIG disabled) = %v, want nil", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	if !strings.Contains(logs.String(), "maxmemory-policy") || !strings.Contains(logs.String(), "level=WARN") {
		t.Errorf("New(CONFIG disabled) logged %q, want a warning about maxmemory-policy", logs.String())
	}
}

func TestNewOptions(t *testing.T) {
	for _, c := range []struct {
		name string
		o    redisstore.Options
		want string // substring of the error
	}{
		{"fail/neither-url-nor-universal", redisstore.Options{}, "exactly one of url and universal"},
		{"fail/both", redisstore.Options{URL: "redis://127.0.0.1:1", Universal: &redis.UniversalOptions{Addrs: []string{"127.0.0.1:1"}}}, "exactly one of url and universal"},
		{"fail/http-scheme", redisstore.Options{URL: "http://127.0.0.1:6379"}, "invalid URL scheme"},
		{"fail/unix-scheme", redisstore.Options{URL: "unix:///tmp/redis.sock"}, "must be redis:// or rediss://"},
		{"fail/negative-timeout", redisstore.Options{URL: "redis://127.0.0.1:1", Timeout: -time.Second}, "timeout: must be positive"},
		{"fail/negative-retention", redisstore.Options{URL: "redis://127.0.0.1:1", Retention: -time.Hour}, "retention: must be positive"},
		{"fail/cluster-without-hash-tag", redisstore.Options{Universal: &redis.UniversalOptions{Addrs: []string{"127.0.0.1:1"}, IsClusterMode: true}, Prefix: "keytrail:"}, "needs a hash tag"},
		{"fail/cluster-empty-hash-tag", redisstore.Options{Universal: &redis.UniversalOptions{Addrs: []string{"127.0.0.1:1", "127.0.0.1:2"}}, Prefix: "{}keytrail:"}, "needs a hash tag"},
		// A CA does not turn TLS on, in either form (the Universal one
		// used to, silently).
		{"fail/ca-without-tls-universal", redisstore.Options{Universal: &redis.UniversalOptions{Addrs: []string{"127.0.0.1:1"}}, RootCAs: x509.NewCertPool()}, "a CA was given but the universal options have no TLS config"},
		{"fail/ca-without-tls-url", redisstore.Options{URL: "redis://127.0.0.1:1", RootCAs: x509.NewCertPool()}, "a CA was given but the URL is not rediss://"},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, err := redisstore.New(t.Context(), c.o)
			if err == nil {
				_ = s.Close()
				t.Fatalf("New(%+v) = nil error, want %q", c.o, c.want)
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Errorf("New(%+v) = %q, want it to contain %q", c.o, err, c.want)
			}
		})
	}
}

func TestNewURLErrorHidesPassword(t *testing.T) {
	for _, u := range []string{
		"redis://user:s3cret@127.0.0.1:notaport/0",
		"redis://:s3cret@[::1/0",
		"redis://user:s3cret@127.0.0.1:6379/notadb",
		"redis://:s3cret@127.0.0.1:6379/0?dial_timeout=forever",
	} {
		_, err := redisstore.New(t.Context(), redisstore.Options{URL: u})
		if err == nil {
			t.Errorf("New(%q) = nil error, want an error", u)
			continue
		}
		if strings.Contains(err.Error(), "s3cret") {
			t.Errorf("New(%q) = %q, leaks the password", u, err)
		}
	}
}

func TestNewUnreachable(t *testing.T) {
	port := harness.FreePort(t) // nothing listens there
	start := time.Now()
	_, err := redisstore.New(t.Context(), redisstore.Options{URL: "redis://127.0.0.1:" + strconv.Itoa(port), Timeout: 300 * time.Millisecond})
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("New(unreachable) = %v, want %v", err, broker.ErrUnavailable)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("New(unreachable) took %s, want it bounded by the timeout", d)
	}
}

// calls are the store operations checked against a broken server.
func calls(s *redisstore.Store) map[string]func(ctx context.Context) error {
	return map[string]func(ctx context.Context) error{
		"ping": s.Ping,
		"put-issuance": func(ctx context.Context) error {
			return s.PutIssuance(ctx, storetest.SampleIssuance("iss_down", storetest.Epoch()))
		},
		"get-issuance": func(ctx context.Context) error { _, err := s.GetIssuance(ctx, "iss_up"); return err },
		"find-issuance": func(ctx context.Context) error {
			_, err := s.FindIssuance(ctx, broker.RefAccessor, "acc-iss_up")
			return err
		},
		"list-issuances": func(ctx context.Context) error {
			_, err := s.ListIssuances(ctx, broker.IssuanceFilter{Workload: "payments-api"})
			return err
		},
		"put-block":   func(ctx context.Context) error { return s.PutBlock(ctx, broker.Block{Workload: "w"}) },
		"list-blocks": func(ctx context.Context) error { _, err := s.ListBlocks(ctx); return err },
		"list-revocations": func(ctx context.Context) error {
			_, err := s.ListRevocations(ctx, broker.RevocationFilter{})
			return err
		},
		"publish": func(ctx context.Context) error { return s.Publish(ctx, broker.Notice{RevocationID: "rev_down"}) },
		// RevocationCache.Run subscribes again at every refresh while
		// Redis is down, under a context without a deadline.
		"subscribe": func(ctx context.Context) error { _, err := s.Subscribe(ctx); return err },
	}
}

func TestUnavailable(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, c := range []struct {
		name    string
		break_  func(r *harness.Redis)
		restore func(r *harness.Redis)
		keeps   bool // whether data written before survives restore
	}{
		{"fail/killed", (*harness.Redis).Kill, (*harness.Redis).Restart, false},
		{"fail/paused", (*harness.Redis).Pause, (*harness.Redis).Resume, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := harness.StartRedis(t)
			s := newStore(t, r, redisstore.Options{Timeout: timeout})
			if err := s.PutIssuance(t.Context(), storetest.SampleIssuance("iss_up", storetest.Epoch())); err != nil {
				t.Fatalf("PutIssuance(iss_up) = %v, want nil", err)
			}
			c.break_(r)
			for name, call := range calls(s) {
				start := time.Now()
				err := call(t.Context())
				elapsed := time.Since(start)
				if !errors.Is(err, broker.ErrUnavailable) {
					t.Errorf("%s on a %s Redis = %v, want %v", name, c.name, err, broker.ErrUnavailable)
				}
				var be *broker.Error
				if errors.As(err, &be) && (be.Reason != "store_unavailable" || be.RetryAfter <= 0) {
					t.Errorf("%s on a %s Redis = reason %q retry-after %s, want store_unavailable with a retry-after", name, c.name, be.Reason, be.RetryAfter)
				}
				// Bounded by the per-call timeout, with slack for a loaded machine.
				if elapsed > 10*timeout {
					t.Errorf("%s on a %s Redis took %s, want about the %s timeout", name, c.name, elapsed, timeout)
				}
			}
			c.restore(r)
			// The store recovers once the server is back, without a new client.
			_, err := s.GetIssuance(t.Context(), "iss_up")
			switch {
			case c.keeps && err != nil:
				t.Errorf("GetIssuance(iss_up) after recovery = %v, want nil", err)
			case !c.keeps && !errors.Is(err, broker.ErrNotFound):
				t.Errorf("GetIssuance(iss_up) after restart without persistence = %v, want %v", err, broker.ErrNotFound)
			}
		})
	}
}

// An auditor's trace query may be a raw credential (a database password
// found in a log): the store looks it up under every ref kind, and its
// error for an unreachable Redis, which the broker logs, must not quote it.
func TestFindIssuanceErrorHidesValue(t *testing.T) {
	const value = "db-password-MARKER-91f3"
	r := harness.StartRedis(t)
	s := newStore(t, r, redisstore.Options{Timeout: 300 * time.Millisecond})
	r.Kill()
	for _, kind := range []broker.RefKind{broker.RefAccessor, broker.RefUsername, broker.RefLeaseID, broker.RefJTI, broker.RefRequestID} {
		_, err := s.FindIssuance(t.Context(), kind, value)
		if !errors.Is(err, broker.ErrUnavailable) {
			t.Errorf("FindIssuance(%s) on a killed Redis = %v, want %v", kind, err, broker.ErrUnavailable)
			continue
		}
		if strings.Contains(err.Error(), value) {
			t.Errorf("FindIssuance(%s) = %q, quotes the looked-up value", kind, err)
		}
		if !strings.Contains(err.Error(), broker.Fingerprint(value)) {
			t.Errorf("FindIssuance(%s) = %q, want the value's fingerprint for the log", kind, err)
		}
	}
}

func TestPersistenceAcrossRestart(t *testing.T) {
	r := harness.StartRedis(t, harness.WithPersistence())
	s := newStore(t, r, redisstore.Options{})
	ctx := t.Context()
	if err := s.PutRevocation(ctx, &broker.Revocation{ID: "rev_1", CreatedAt: storetest.Epoch()}); err != nil {
		t.Fatalf("PutRevocation(rev_1) = %v", err)
	}
	if err := s.PutBlock(ctx, broker.Block{Workload: "w", CreatedAt: storetest.Epoch()}); err != nil {
		t.Fatalf("PutBlock(w) = %v", err)
	}
	r.Kill()
	r.Restart()
	if _, err := s.GetRevocation(ctx, "rev_1"); err != nil {
		t.Errorf("GetRevocation(rev_1) after kill and restart = %v, want nil", err)
	}
	if _, err := s.GetBlock(ctx, "w"); err != nil {
		t.Errorf("GetBlock(w) after kill and restart = %v, want nil", err)
	}
}

func TestPrefixIsolation(t *testing.T) {
	r := harness.StartRedis(t)
	a := newStore(t, r, redisstore.Options{Prefix: "{a}:"})
	b := newStore(t, r, redisstore.Options{Prefix: "{b}:"})
	ctx := t.Context()
	is := storetest.SampleIssuance("iss_a", storetest.Epoch())
	if err := a.PutIssuance(ctx, is); err != nil {
		t.Fatalf("a.PutIssuance = %v", err)
	}
	if err := a.PutRevocation(ctx, &broker.Revocation{ID: "rev_a"}); err != nil {
		t.Fatalf("a.PutRevocation = %v", err)
	}
	if err := a.PutBlock(ctx, broker.Block{Workload: "payments-api"}); err != nil {
		t.Fatalf("a.PutBlock = %v", err)
	}

	_, err := b.GetIssuance(ctx, is.ID)
	if !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("b.GetIssuance(%s) = %v, want %v", is.ID, err, broker.ErrNotFound)
	}
	_, err = b.FindIssuance(ctx, broker.RefAccessor, is.Refs.Accessor)
	if !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("b.FindIssuance(accessor) = %v, want %v", err, broker.ErrNotFound)
	}
	if l, err := b.ListIssuances(ctx, broker.IssuanceFilter{}); err != nil || len(l) != 0 {
		t.Errorf("b.ListIssuances() = %d, %v, want none", len(l), err)
	}
	if l, err := b.ListRevocations(ctx, broker.RevocationFilter{}); err != nil || len(l) != 0 {
		t.Errorf("b.ListRevocations() = %d, %v, want none", len(l), err)
	}
	if _, err := b.GetBlock(ctx, "payments-api"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("b.GetBlock(payments-api) = %v, want %v", err, broker.ErrNotFound)
	}
	if err := b.DeleteBlock(ctx, "payments-api", ""); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("b.DeleteBlock(payments-api) = %v, want %v", err, broker.ErrNotFound)
	}
	// a still sees its own data.
	if l, err := a.ListIssuances(ctx, broker.IssuanceFilter{}); err != nil || len(l) != 1 {
		t.Errorf("a.ListIssuances() = %d, %v, want 1", len(l), err)
	}
	if _, err := a.GetBlock(ctx, "payments-api"); err != nil {
		t.Errorf("a.GetBlock(payments-api) = %v, want nil", err)
	}
	// Every key a wrote starts with its prefix.
	keys, err := a.Client().Keys(ctx, "*").Result()
	if err != nil {
		t.Fatalf("KEYS * = %v", err)
	}
	for _, k := range keys {
		if !strings.HasPrefix(k, "{a}:") {
			t.Errorf("key %q does not start with prefix {a}:", k)
		}
	}
}

// An issuance expiring as far away as a Duration reaches (a grant ttl near
// the largest a policy can write) is kept that long, not for the 1 s an
// overflow of the rounding made of it, gone before its credential expires.
func TestTTLFarFutureExpiry(t *testing.T) {
	r := harness.StartRedis(t)
	s := newStore(t, r, redisstore.Options{Prefix: "{far}:"})
	for _, c := range []struct {
		name string
		in   time.Duration // from the store's clock to the expiry
		want time.Duration // at least
	}{
		{"ok/retention-past-the-largest-duration", time.Duration(math.MaxInt64) - 24*time.Hour, 290 * 365 * 24 * time.Hour},
		{"ok/largest-duration", time.Duration(math.MaxInt64), 290 * 365 * 24 * time.Hour},
		{"ok/sub-second-rounded-up", 1500 * time.Millisecond, redisstore.DefaultRetention + time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			is := storetest.SampleIssuance("iss_far", storetest.Epoch())
			is.ExpiresAt = storetest.Epoch().Add(c.in)
			is.Refs.ExpiresAt = is.ExpiresAt
			if err := s.PutIssuance(t.Context(), is); err != nil {
				t.Fatalf("PutIssuance(expiring in %s) = %v, want nil", c.in, err)
			}
			for _, key := range []string{"{far}:iss:iss_far", "{far}:ref:accessor:acc-iss_far", "{far}:idx:all"} {
				if got, err := s.Client().PTTL(t.Context(), key).Result(); err != nil || got < c.want {
					t.Errorf("PTTL %s of an issuance expiring in %s = %v, %v; want at least %v", key, c.in, got, err, c.want)
				}
			}
		})
	}
}

func TestKeyLayoutAndTTL(t *testing.T) {
	r := harness.StartRedis(t)
	const retention = 48 * time.Hour
	s := newStore(t, r, redisstore.Options{Prefix: "{kt}:", Retention: retention})
	ctx := t.Context()
	is := storetest.SampleIssuance("iss_ttl", storetest.Epoch()) // expires Epoch+15m
	if err := s.PutIssuance(ctx, is); err != nil {
		t.Fatalf("PutIssuance = %v", err)
	}
	if err := s.PutRevocation(ctx, &broker.Revocation{ID: "rev_ttl"}); err != nil {
		t.Fatalf("PutRevocation = %v", err)
	}
	if err := s.PutBlock(ctx, broker.Block{Workload: "payments-api"}); err != nil {
		t.Fatalf("PutBlock = %v", err)
	}
	wantTTL := retention + 15*time.Minute
	for _, c := range []struct {
		key     string
		wantTTL time.Duration // -1: no TTL
	}{
		{"{kt}:iss:iss_ttl", wantTTL},
		{"{kt}:ref:accessor:acc-iss_ttl", wantTTL},
		{"{kt}:ref:fingerprint:sha256:fp-iss_ttl", wantTTL},
		{"{kt}:ref:jti:jti-iss_ttl", wantTTL},
		{"{kt}:ref:lease_id:database/creds/payments/lease-iss_ttl", wantTTL},
		{"{kt}:ref:username:v-keytrail-iss_ttl", wantTTL},
		{"{kt}:ref:serial:serial-iss_ttl", wantTTL},
		{"{kt}:ref:request_id:req-iss_ttl", wantTTL},
		{"{kt}:idx:all", wantTTL},
		{"{kt}:idx:workload:payments-api", wantTTL},
		{"{kt}:idx:owner:team-payments", wantTTL},
		{"{kt}:idx:session:ses_iss_ttl", wantTTL},
		{"{kt}:rev:rev_ttl", -1},
		{"{kt}:revs", -1},
		{"{kt}:revs:time", -1},
		{"{kt}:revs:pending", -1},
		{"{kt}:block:payments-api", -1},
		{"{kt}:blocks", -1},
	} {
		got, err := s.Client().TTL(ctx, c.key).Result()
		if err != nil {
			t.Fatalf("TTL %s = %v", c.key, err)
		}
		if c.wantTTL < 0 {
			if got != -1 {
				t.Errorf("TTL %s = %v, want none (-1)", c.key, got)
			}
			continue
		}
		if got > c.wantTTL || got < c.wantTTL-time.Minute {
			t.Errorf("TTL %s = %v, want about %v", c.key, got, c.wantTTL)
		}
	}
	// A later, longer-lived issuance extends the shared index's TTL; an
	// earlier one does not shorten it.
	long := storetest.SampleIssuance("iss_long", storetest.Epoch().Add(time.Hour))
	short := storetest.SampleIssuance("iss_short", storetest.Epoch().Add(-time.Hour))
	for _, x := range []*broker.Issuance{long, short} {
		if err := s.PutIssuance(ctx, x); err != nil {
			t.Fatalf("PutIssuance(%s) = %v", x.ID, err)
		}
	}
	got, err := s.Client().TTL(ctx, "{kt}:idx:workload:payments-api").Result()
	if want := wantTTL + time.Hour; err != nil || got > want || got < want-time.Minute {
		t.Errorf("TTL idx:workload after longer and shorter issuances = %v, %v, want about %v", got, err, want)
	}
}

func TestStaleRefAfterOverwriteIgnored(t *testing.T) {
	// The old accessor's index key still exists after an overwrite; Find
	// must not follow it to a record that no longer carries the accessor.
	r := harness.StartRedis(t)
	s := newStore(t, r, redisstore.Options{Prefix: "{st}:"})
	ctx := t.Context()
	is := storetest.SampleIssuance("iss_st", storetest.Epoch())
	if err := s.PutIssuance(ctx, is); err != nil {
		t.Fatalf("PutIssuance = %v", err)
	}
	is.Refs.Accessor = "acc-new"
	if err := s.PutIssuance(ctx, is); err != nil {
		t.Fatalf("PutIssuance = %v", err)
	}
	if n, err := s.Client().Exists(ctx, "{st}:ref:accessor:acc-iss_st").Result(); err != nil || n != 1 {
		t.Fatalf("EXISTS old ref = %d, %v, want the stale key to exist for this test", n, err)
	}
	if _, err := s.FindIssuance(ctx, broker.RefAccessor, "acc-iss_st"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("FindIssuance(accessor, acc-iss_st) = %v, want %v", err, broker.ErrNotFound)
	}
}

// TestIndexPrunedPastRetention: a put drops index entries of issuances that
// expired more than the retention ago, from every sorted set it touches, and
// keeps the rest.
func TestIndexPrunedPastRetention(t *testing.T) {
	r := harness.StartRedis(t)
	now := storetest.Epoch()
	s := newStore(t, r, redisstore.Options{Prefix: "{prune}:", Retention: time.Hour, Now: func() time.Time { return now }})
	ctx := t.Context()
	old := storetest.SampleIssuance("iss_old", storetest.Epoch())                      // expires Epoch+15m
	recent := storetest.SampleIssuance("iss_recent", storetest.Epoch().Add(time.Hour)) // expires Epoch+1h15m
	for _, is := range []*broker.Issuance{old, recent} {
		if err := s.PutIssuance(ctx, is); err != nil {
			t.Fatal(err)
		}
	}
	now = storetest.Epoch().Add(2 * time.Hour) // cutoff Epoch+1h: past old's expiry, not recent's
	if err := s.PutIssuance(ctx, storetest.SampleIssuance("iss_new", now)); err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"{prune}:idx:all", "{prune}:idx:workload:payments-api", "{prune}:idx:owner:team-payments"} {
		members, err := s.Client().ZRange(ctx, key, 0, -1).Result()
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff([]string{"iss_recent", "iss_new"}, members); d != "" {
			t.Errorf("%s members (-want +got):\n%s", key, d)
		}
	}
}

func TestListSkipsRecordsPastRetention(t *testing.T) {
	// A record Redis dropped (TTL) while its index entry remains is skipped.
	r := harness.StartRedis(t)
	s := newStore(t, r, redisstore.Options{Prefix: "{ret}:"})
	ctx := t.Context()
	for _, id := range []string{"iss_1", "iss_2"} {
		if err := s.PutIssuance(ctx, storetest.SampleIssuance(id, storetest.Epoch())); err != nil {
			t.Fatalf("PutIssuance(%s) = %v", id, err)
		}
	}
	if err := s.Client().Del(ctx, "{ret}:iss:iss_1").Err(); err != nil {
		t.Fatalf("DEL = %v", err)
	}
	got, err := s.ListIssuances(ctx, broker.IssuanceFilter{Workload: "payments-api"})
	if err != nil {
		t.Fatalf("ListIssuances() = %v", err)
	}
	var ids []string
	for _, is := range got {
		ids = append(ids, is.ID)
	}
	if d := cmp.Diff([]string{"iss_2"}, ids); d != "" {
		t.Errorf("ListIssuances() ids (-want +got):\n%s", d)
	}
}

func TestListPagesThroughLargeIndex(t *testing.T) {
	// More entries than one ZRANGE batch, half of them filtered out.
	r := harness.StartRedis(t)
	s := newStore(t, r, redisstore.Options{Prefix: "{page}:"})
	ctx := t.Context()
	const n = 600
	for i := range n {
		is := storetest.SampleIssuance(fmt.Sprintf("iss_%04d", i), storetest.Epoch().Add(time.Duration(i)*time.Second))
		if i%2 == 1 {
			is.Owner = "other"
		}
		if err := s.PutIssuance(ctx, is); err != nil {
			t.Fatalf("PutIssuance = %v", err)
		}
	}
	for _, c := range []struct {
		name string
		f    broker.IssuanceFilter
		want int
		last string
	}{
		{"ok/all", broker.IssuanceFilter{}, n, "iss_0599"},
		{"ok/owner-filtered-in-go", broker.IssuanceFilter{Workload: "payments-api", Owner: "other"}, n / 2, "iss_0599"},
		{"ok/limit-beyond-first-batch", broker.IssuanceFilter{Workload: "payments-api", Owner: "team-payments", Limit: 200}, 200, "iss_0398"},
		{"ok/active-at", broker.IssuanceFilter{ActiveAt: storetest.Epoch().Add(15*time.Minute + 500*time.Second)}, 99, "iss_0599"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := s.ListIssuances(ctx, c.f)
			if err != nil {
				t.Fatalf("ListIssuances(%+v) = %v", c.f, err)
			}
			if len(got) != c.want || got[len(got)-1].ID != c.last {
				t.Errorf("ListIssuances(%+v) = %d ending %s, want %d ending %s", c.f, len(got), got[len(got)-1].ID, c.want, c.last)
			}
		})
	}
}

// TestReindexLegacyRevocations: revocations written before the creation-time
// index and the pending set existed (layout 1), or before the change index
// existed (layout 2), are indexed by New, so the filtered listings and the
// changed-after reads find them.
func TestReindexLegacyRevocations(t *testing.T) {
	r := harness.StartRedis(t)
	for _, layout := range []int{1, 2} {
		t.Run(fmt.Sprintf("layout-%d", layout), func(t *testing.T) {
			ctx := t.Context()
			prefix := fmt.Sprintf("{legacy%d}:", layout)
			old := newStore(t, r, redisstore.Options{Prefix: prefix})
			c := old.Client()
			for i, completed := range []bool{false, true, false} {
				rev := &broker.Revocation{ID: fmt.Sprintf("rev_%d", i), CreatedAt: storetest.Epoch().Add(time.Duration(i) * time.Hour)}
				if completed {
					rev.CompletedAt = rev.CreatedAt.Add(time.Second)
				}
				raw, err := json.Marshal(rev)
				if err != nil {
					t.Fatal(err)
				}
				// Layout 1: the record and the set only.
				if err := c.Set(ctx, prefix+"rev:"+rev.ID, raw, 0).Err(); err != nil {
					t.Fatal(err)
				}
				if err := c.SAdd(ctx, prefix+"revs", rev.ID).Err(); err != nil {
					t.Fatal(err)
				}
				if layout == 2 { // and the creation-time index and pending set
					if err := c.ZAdd(ctx, prefix+"revs:time", redis.Z{Score: float64(rev.CreatedAt.UnixMilli()), Member: rev.ID}).Err(); err != nil {
						t.Fatal(err)
					}
					if !completed {
						if err := c.SAdd(ctx, prefix+"revs:pending", rev.ID).Err(); err != nil {
							t.Fatal(err)
						}
					}
				}
			}
			s := newStore(t, r, redisstore.Options{Prefix: prefix})
			ids := func(f broker.RevocationFilter) []string {
				list, err := s.ListRevocations(ctx, f)
				if err != nil {
					t.Fatal(err)
				}
				out := []string{}
				for _, x := range list {
					out = append(out, x.ID)
				}
				return out
			}
			if d := cmp.Diff([]string{"rev_1", "rev_2"}, ids(broker.RevocationFilter{Since: storetest.Epoch().Add(time.Hour)})); d != "" {
				t.Errorf("since Epoch+1h (-want +got):\n%s", d)
			}
			if d := cmp.Diff([]string{"rev_0", "rev_2"}, ids(broker.RevocationFilter{Pending: true})); d != "" {
				t.Errorf("pending (-want +got):\n%s", d)
			}
			// Each indexed revocation got its own change number (the last
			// one is the version).
			v, err := s.RevocationVersion(ctx)
			if err != nil || v == 0 {
				t.Fatalf("RevocationVersion() = %d, %v; want the last reindexed revocation's number", v, err)
			}
			if d := cmp.Diff([]string{"rev_0", "rev_1", "rev_2"}, ids(broker.RevocationFilter{ChangedAfter: 0})); d != "" {
				t.Errorf("all (-want +got):\n%s", d)
			}
			if got := ids(broker.RevocationFilter{ChangedAfter: v - 1}); len(got) != 1 {
				t.Errorf("changed after version-1 = %v, want the one revocation indexed last", got)
			}
			if err := s.PutRevocation(ctx, &broker.Revocation{ID: "rev_3", CreatedAt: storetest.Epoch()}); err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff([]string{"rev_3"}, ids(broker.RevocationFilter{ChangedAfter: v})); d != "" {
				t.Errorf("changed after the version (-want +got):\n%s", d)
			}
		})
	}
}

// TestReindexManyLegacyRevocations: New indexes a long history of
// revocations written before the indexes existed (each one a script call,
// about 0.1 ms of Redis time here) page by page, each page under its own
// deadline. Indexing them all under one Options.Timeout failed New with
// "context deadline exceeded" at every start, so a broker upgraded onto
// such a store could not start at all.
func TestReindexManyLegacyRevocations(t *testing.T) {
	r := harness.StartRedis(t)
	ctx := t.Context()
	const prefix, n = "{legacymany}:", 30000
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	var pending, since []string
	pipe := c.Pipeline()
	for i := range n {
		rev := &broker.Revocation{ID: fmt.Sprintf("rev_%05d", i), Selector: broker.RevokeSelector{Workload: "w"}, Reason: "rotation",
			CreatedAt: storetest.Epoch().Add(time.Duration(i) * time.Second), Revoked: []string{"iss_1", "iss_2"}}
		if i%3 == 0 {
			rev.CompletedAt = rev.CreatedAt.Add(time.Second)
		} else {
			pending = append(pending, rev.ID)
		}
		if i >= n-100 {
			since = append(since, rev.ID)
		}
		raw, err := json.Marshal(rev)
		if err != nil {
			t.Fatal(err)
		}
		pipe.Set(ctx, prefix+"rev:"+rev.ID, raw, 0) // layout 1: the record and the set only
		pipe.SAdd(ctx, prefix+"revs", rev.ID)
		if pipe.Len() >= 2000 || i == n-1 {
			if _, err := pipe.Exec(ctx); err != nil {
				t.Fatalf("writing legacy revocations: %v", err)
			}
		}
	}
	s, err := redisstore.New(ctx, redisstore.Options{URL: r.URL(), Prefix: prefix, Now: storetest.Epoch})
	if err != nil {
		t.Fatalf("New(%d revocations without indexes) = %v, want nil", n, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	ids := func(f broker.RevocationFilter) []string {
		t.Helper()
		list, err := s.ListRevocations(ctx, f)
		if err != nil {
			t.Fatalf("ListRevocations(%+v) = %v", f, err)
		}
		out := []string{}
		for _, x := range list {
			out = append(out, x.ID)
		}
		return out
	}
	if d := cmp.Diff(pending, ids(broker.RevocationFilter{Pending: true})); d != "" {
		t.Errorf("pending (-want +got):\n%s", d)
	}
	if d := cmp.Diff(since, ids(broker.RevocationFilter{Since: storetest.Epoch().Add((n - 100) * time.Second)})); d != "" {
		t.Errorf("since the last 100 (-want +got):\n%s", d)
	}
	if got := len(ids(broker.RevocationFilter{ChangedAfter: 1})); got != n {
		t.Errorf("changed after 1: %d revocations, want all %d", got, n)
	}
}

// BenchmarkListRevocations: the revocation cache's full refresh (revocations
// of the last 24 h), its incremental one (two written since; or only the
// version read when none was) and the retry worker's pass (pending ones)
// against a history of 10,000 completed revocations older than that, next
// to reading them all (what both did before the indexes).
func BenchmarkListRevocations(b *testing.B) {
	r := harness.StartRedis(b)
	s := newStore(b, r, redisstore.Options{Prefix: "{bench-revs}:"})
	ctx := context.Background()
	now := storetest.Epoch().Add(48 * time.Hour)
	for i := range 10_000 {
		at := storetest.Epoch().Add(time.Duration(i) * time.Second)
		rev := &broker.Revocation{ID: fmt.Sprintf("rev_old_%05d", i), CreatedAt: at, CompletedAt: at.Add(time.Second),
			Selector: broker.RevokeSelector{SessionID: "ses_x"}, Revoked: []string{"iss_" + strconv.Itoa(i)}}
		if err := s.PutRevocation(ctx, rev); err != nil {
			b.Fatal(err)
		}
	}
	var before2 uint64 // the version before the last two puts
	for i := range 10 {
		if i == 8 {
			v, err := s.RevocationVersion(ctx)
			if err != nil {
				b.Fatal(err)
			}
			before2 = v
		}
		rev := &broker.Revocation{ID: fmt.Sprintf("rev_new_%d", i), CreatedAt: now.Add(-time.Hour), Revoked: []string{"iss_n"}}
		if err := s.PutRevocation(ctx, rev); err != nil {
			b.Fatal(err)
		}
	}
	last, err := s.RevocationVersion(ctx)
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		f    broker.RevocationFilter
		want int
	}{
		{"all", broker.RevocationFilter{}, 10_010},
		{"last-24h", broker.RevocationFilter{Since: now.Add(-24 * time.Hour)}, 10},
		{"pending", broker.RevocationFilter{Pending: true}, 10},
		{"changed-after-last-2", broker.RevocationFilter{Since: now.Add(-24 * time.Hour), ChangedAfter: before2}, 2},
	} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				list, err := s.ListRevocations(ctx, c.f)
				if err != nil || len(list) != c.want {
					b.Fatalf("ListRevocations(%s) = %d, %v, want %d", c.name, len(list), err, c.want)
				}
			}
		})
	}
	// What a refresh costs when nothing was written since the last one.
	b.Run("version", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if v, err := s.RevocationVersion(ctx); err != nil || v != last {
				b.Fatalf("RevocationVersion() = %d, %v, want %d", v, err, last)
			}
		}
	})
}

// benchWindowRevs is KEYTRAIL_BENCH_REVS (default 50,000: about one
// revocation every 2 s for a day).
func benchWindowRevs(b *testing.B) int {
	n := 50_000
	if v := os.Getenv("KEYTRAIL_BENCH_REVS"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n <= 0 {
			b.Fatalf("KEYTRAIL_BENCH_REVS=%q: want a positive count", v)
		}
	}
	return n
}

// putWindowRevocations writes n completed revocations spread over the 24 h
// before now, each naming 4 issuances, from 16 writers.
func putWindowRevocations(b *testing.B, s *redisstore.Store, now time.Time, n int) {
	ctx := context.Background()
	ids := make(chan int)
	errs := make(chan error, 16)
	for range 16 {
		go func() {
			var err error
			for i := range ids {
				at := now.Add(-time.Duration(i) * (24 * time.Hour / time.Duration(n)))
				rev := &broker.Revocation{ID: fmt.Sprintf("rev_%07d", i), CreatedAt: at, CompletedAt: at.Add(time.Second), Admin: "secops:alice",
					Reason: "rotation", Selector: broker.RevokeSelector{SessionID: "ses_" + strconv.Itoa(i)}, Matched: 4,
					Revoked: []string{"iss_a" + strconv.Itoa(i), "iss_b" + strconv.Itoa(i), "iss_c" + strconv.Itoa(i), "iss_d" + strconv.Itoa(i)}}
				if err == nil {
					err = s.PutRevocation(ctx, rev)
				}
			}
			errs <- err
		}()
	}
	for i := range n {
		ids <- i
	}
	close(ids)
	for range 16 {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkListRevocationsWindow: the revocation cache's full read when
// the window holds many revocations (KEYTRAIL_BENCH_REVS). The read is
// paged, each round trip with its own deadline.
func BenchmarkListRevocationsWindow(b *testing.B) {
	n := benchWindowRevs(b)
	r := harness.StartRedis(b)
	s := newStore(b, r, redisstore.Options{Prefix: "{bench-window}:"})
	now := storetest.Epoch().Add(24 * time.Hour)
	putWindowRevocations(b, s, now, n)
	b.ReportAllocs()
	for b.Loop() {
		list, err := s.ListRevocations(context.Background(), broker.RevocationFilter{Since: now.Add(-24 * time.Hour)})
		if err != nil || len(list) != n {
			b.Fatalf("ListRevocations(last 24h) = %d, %v, want %d", len(list), err, n)
		}
	}
}

// BenchmarkRevocationCacheFullRead: a revocation cache's full read over
// Redis with KEYTRAIL_BENCH_REVS revocations in its window, while another
// goroutine makes the hot path's check (Revoked) every 100 µs; reports the
// longest check seen (max-check-µs). The full read builds the new set
// without the cache's lock, so checks are not held up by it.
func BenchmarkRevocationCacheFullRead(b *testing.B) {
	n := benchWindowRevs(b)
	r := harness.StartRedis(b)
	s := newStore(b, r, redisstore.Options{Prefix: "{bench-cache}:", Now: time.Now})
	putWindowRevocations(b, s, time.Now(), n)
	// The cache's clock moves an hour per Refresh, so that each one is a
	// full read (they are spaced by 100x their duration); the window is
	// long enough to keep every revocation.
	var hours atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(hours.Load()) * time.Hour) }
	c, err := broker.NewRevocationCache(s, broker.CacheOptions{Now: clock, Window: 1000 * time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	stop, done := make(chan struct{}), make(chan time.Duration)
	go func() {
		var longest time.Duration
		for {
			select {
			case <-stop:
				done <- longest
				return
			case <-time.After(100 * time.Microsecond):
			}
			t0 := time.Now()
			c.Revoked("iss_none")
			longest = max(longest, time.Since(t0))
		}
	}()
	b.ReportAllocs()
	for b.Loop() {
		hours.Add(1)
		if err := c.Refresh(context.Background()); err != nil {
			b.Fatalf("Refresh() = %v", err)
		}
	}
	close(stop)
	b.ReportMetric(float64((<-done).Microseconds()), "max-check-µs")
	if !c.Revoked("iss_a1") {
		b.Error("Revoked(iss_a1) = false after a full read, want true")
	}
}

func BenchmarkPutIssuance(b *testing.B) {
	r := harness.StartRedis(b)
	storetest.BenchPutIssuance(b, newStore(b, r, redisstore.Options{}))
}

func BenchmarkGetIssuance(b *testing.B) {
	r := harness.StartRedis(b)
	storetest.BenchGetIssuance(b, newStore(b, r, redisstore.Options{}))
}

func BenchmarkFindAccessors(b *testing.B) {
	r := harness.StartRedis(b)
	storetest.BenchFindAccessors(b, newStore(b, r, redisstore.Options{}))
}

// TestContractThroughSentinel runs the contract suite through go-redis'
// universal client in Sentinel mode (store.addrs + store.master_name).
func TestContractThroughSentinel(t *testing.T) {
	r := harness.StartRedis(t)
	sen := harness.StartSentinel(t, r)
	n := 0
	storetest.Run(t, func(t *testing.T) broker.Store {
		n++
		return newStore(t, r, redisstore.Options{
			Universal: &redis.UniversalOptions{Addrs: []string{sen.Addr}, MasterName: sen.MasterName},
			Prefix:    fmt.Sprintf("{sentinel-%d}:", n),
		})
	})
}

// TestRevocationVersionAfterFailover: a replica promoted after missing the
// primary's last write must not hand out change numbers readers already
// saw (they list ChangedAfter what they saw, and would skip the new
// revocations until their next full read). With a plain counter it did:
// 3 again, then 4. Found in review.
func TestRevocationVersionAfterFailover(t *testing.T) {
	master := harness.StartRedis(t)
	replica := harness.StartRedis(t)
	ctx := t.Context()
	host, port, _ := net.SplitHostPort(master.Addr())

	m := newStore(t, master, redisstore.Options{Prefix: "{fo}:"})
	rc := newStore(t, replica, redisstore.Options{Prefix: "{other}:"}).Client()
	if err := rc.ReplicaOf(ctx, host, port).Err(); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if err := m.PutRevocation(ctx, &broker.Revocation{ID: fmt.Sprintf("rev_%d", i), CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	// WAIT returns once the replica has acknowledged every write so far.
	if n, err := m.Client().Do(ctx, "WAIT", 1, 10000).Int(); err != nil || n != 1 {
		t.Fatalf("WAIT for the replica = %d, %v; want 1 replica caught up", n, err)
	}
	// The link breaks; the primary takes one more write the replica never gets.
	if err := rc.ReplicaOf(ctx, "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	if err := m.PutRevocation(ctx, &broker.Revocation{ID: "rev_lost", CreatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	seen, err := m.RevocationVersion(ctx) // a reader's last version
	if err != nil {
		t.Fatal(err)
	}
	// Failover: the replica is the new primary.
	p := newStore(t, replica, redisstore.Options{Prefix: "{fo}:"})
	for _, id := range []string{"rev_new_a", "rev_new_b"} {
		if err := p.PutRevocation(ctx, &broker.Revocation{ID: id, CreatedAt: time.Now()}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := p.ListRevocations(ctx, broker.RevocationFilter{ChangedAfter: seen})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, r := range got {
		ids[r.ID] = true
	}
	now, _ := p.RevocationVersion(ctx)
	for _, id := range []string{"rev_new_a", "rev_new_b"} {
		if !ids[id] {
			t.Errorf("revocation %s written after RevocationVersion returned %d (now %d) is not listed by ChangedAfter %d: its change number was reused", id, seen, now, seen)
		}
	}
}

// TestUpdateRevocationConflict: a write by another client between
// UpdateRevocation's read and its EXEC fails the transaction; the update
// starts again from the record that write left (keeping it), and gives up
// with ErrUnavailable when every try is raced.
func TestUpdateRevocationConflict(t *testing.T) {
	r := harness.StartRedis(t)
	a := newStore(t, r, redisstore.Options{Prefix: "{conflict}:"})
	b := newStore(t, r, redisstore.Options{Prefix: "{conflict}:"})
	rev := &broker.Revocation{ID: "rev_x", CreatedAt: storetest.Epoch(), Revoked: []string{}, Failed: []broker.RevokeFailure{}}
	if err := a.PutRevocation(t.Context(), rev); err != nil {
		t.Fatal(err)
	}
	// other writes the record from another connection, as another instance
	// would: it adds id to Revoked.
	other := func(id string) {
		cur, err := b.GetRevocation(t.Context(), "rev_x")
		if err != nil {
			t.Fatalf("GetRevocation() = %v", err)
		}
		cur.Revoked = append(cur.Revoked, id)
		if err := b.PutRevocation(t.Context(), cur); err != nil {
			t.Fatalf("PutRevocation() = %v", err)
		}
	}

	t.Run("ok/retried-from-the-fresh-record", func(t *testing.T) {
		calls := 0
		got, err := a.UpdateRevocation(t.Context(), "rev_x", func(r *broker.Revocation) error {
			calls++
			if calls == 1 {
				other("iss_b")
			}
			r.Pending = append(r.Pending, "iss_a")
			return nil
		})
		if err != nil {
			t.Fatalf("UpdateRevocation() = %v, want nil", err)
		}
		if calls != 2 {
			t.Errorf("fn ran %d times, want 2 (once more after the conflict)", calls)
		}
		stored, err := a.GetRevocation(t.Context(), "rev_x")
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []*broker.Revocation{got, stored} {
			if d := cmp.Diff([]string{"iss_b"}, r.Revoked); d != "" {
				t.Errorf("revoked: the other client's write was lost (-want +got):\n%s", d)
			}
			if d := cmp.Diff([]string{"iss_a"}, r.Pending); d != "" {
				t.Errorf("pending (-want +got):\n%s", d)
			}
		}
	})
	t.Run("fail/always-raced", func(t *testing.T) {
		calls := 0
		_, err := a.UpdateRevocation(t.Context(), "rev_x", func(r *broker.Revocation) error {
			calls++
			other(fmt.Sprintf("iss_race%d", calls))
			r.Pending = append(r.Pending, "iss_never")
			return nil
		})
		if !errors.Is(err, broker.ErrUnavailable) {
			t.Errorf("UpdateRevocation(always raced) = %v, want ErrUnavailable", err)
		}
		stored, err := a.GetRevocation(t.Context(), "rev_x")
		if err != nil {
			t.Fatal(err)
		}
		if len(stored.Revoked) != 1+calls || slices.Contains(stored.Pending, "iss_never") {
			t.Errorf("after %d raced tries: revoked %v, pending %v; want every other write kept and none of ours",
				calls, stored.Revoked, stored.Pending)
		}
	})
}

// KeepDeploymentID puts the id back after a loss, and leaves one stored.
func TestKeepDeploymentID(t *testing.T) {
	r := harness.StartRedis(t)
	s := newStore(t, r, redisstore.Options{Prefix: "{keep}:"})
	ctx := context.Background()
	id, err := s.DeploymentID(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := s.KeepDeploymentID(ctx, "dep_other"); err != nil || got != id {
		t.Fatalf("KeepDeploymentID over a stored id = %q, %v; want %q, left as it is", got, err, id)
	}
	rdb := redis.NewClient(&redis.Options{Addr: r.Addr()})
	defer rdb.Close()
	if err := rdb.FlushAll(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if got, err := s.KeepDeploymentID(ctx, id); err != nil || got != id {
		t.Fatalf("KeepDeploymentID after a loss = %q, %v; want %q", got, err, id)
	}
	if again, err := s.DeploymentID(ctx); err != nil || again != id {
		t.Errorf("DeploymentID after KeepDeploymentID = %q, %v; want %q", again, err, id)
	}
}
