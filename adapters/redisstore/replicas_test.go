package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keytrail/keytrail/adapters/redisstore"
	"github.com/keytrail/keytrail/adapters/storetest"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
)

// startReplicated starts a primary and one replica of it, and waits until
// the replica is in sync.
func startReplicated(t *testing.T) (primary, replica *harness.Redis) {
	t.Helper()
	// No delay before the first sync (default 5s, waiting for more replicas).
	primary = harness.StartRedis(t, harness.WithArgs("--repl-diskless-sync-delay", "0"))
	host, port, _ := net.SplitHostPort(primary.Addr())
	replica = harness.StartRedis(t, harness.WithArgs("--replicaof", host, port))
	// Until the replica's first ACK after the sync (up to a second), the
	// primary does not stream writes to it: wait until a write of this
	// connection is acknowledged.
	probe := redis.NewClient(&redis.Options{Addr: primary.Addr()})
	defer probe.Close()
	conn := probe.Conn()
	defer conn.Close()
	waitFor(t, 10*time.Second, "the replica acknowledges the primary's writes", func() bool {
		if err := conn.Incr(t.Context(), "{test}:replication-probe").Err(); err != nil {
			return false
		}
		n, err := conn.Wait(t.Context(), 1, 100*time.Millisecond).Result()
		return err == nil && n == 1
	})
	return primary, replica
}

func rawClient(t *testing.T, r *harness.Redis) *redis.Client {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// waitFor polls cond until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			t.Fatalf("after %s: want %s", d, what)
		case <-tick.C:
		}
	}
}

// durableWrite is one write MinReplicas applies to: run makes it, and
// written reports whether a server (primary or replica) has it.
type durableWrite struct {
	name    string
	run     func(ctx context.Context, s *redisstore.Store) error
	written func(ctx context.Context, c *redis.Client) bool
}

// durableWrites lists the writes under prefix; setup must run first, with
// the replica up.
func durableWrites(prefix string) (setup func(ctx context.Context, s *redisstore.Store) error, writes []durableWrite) {
	now := storetest.Epoch()
	has := func(key, part string) func(ctx context.Context, c *redis.Client) bool {
		return func(ctx context.Context, c *redis.Client) bool {
			v, err := c.Get(ctx, prefix+key).Result()
			return err == nil && strings.Contains(v, part)
		}
	}
	setup = func(ctx context.Context, s *redisstore.Store) error {
		return errors.Join(
			s.PutRevocation(ctx, &broker.Revocation{ID: "rev_old", CreatedAt: now}),
			s.PutBlock(ctx, broker.Block{Workload: "w-old", CreatedAt: now}),
			s.PutIssuance(ctx, storetest.SampleIssuance("iss_1", now)),
		)
	}
	writes = []durableWrite{
		{"put-revocation", func(ctx context.Context, s *redisstore.Store) error {
			return s.PutRevocation(ctx, &broker.Revocation{ID: "rev_new", CreatedAt: now})
		}, has("rev:rev_new", "rev_new")},
		{"update-revocation", func(ctx context.Context, s *redisstore.Store) error {
			_, err := s.UpdateRevocation(ctx, "rev_old", func(r *broker.Revocation) error { r.Reason = "updated"; return nil })
			return err
		}, has("rev:rev_old", "updated")},
		{"put-block", func(ctx context.Context, s *redisstore.Store) error {
			return s.PutBlock(ctx, broker.Block{Workload: "w-new", CreatedAt: now})
		}, has("block:w-new", "w-new")},
		{"delete-block", func(ctx context.Context, s *redisstore.Store) error {
			return s.DeleteBlock(ctx, "w-old", "")
		}, func(ctx context.Context, c *redis.Client) bool {
			n, err := c.Exists(ctx, prefix+"block:w-old").Result()
			return err == nil && n == 0
		}},
		{"mark-issuance-revoked", func(ctx context.Context, s *redisstore.Store) error {
			is := storetest.SampleIssuance("iss_1", now)
			is.RevokedAt, is.RevocationID = now, "rev_new"
			return s.PutIssuance(ctx, is)
		}, has("iss:iss_1", "rev_new")},
		{"create-deployment-id", func(ctx context.Context, s *redisstore.Store) error {
			_, err := s.DeploymentID(ctx)
			return err
		}, has("deployment", broker.PrefixDeployment)},
		{"put-retiring-key", func(ctx context.Context, s *redisstore.Store) error {
			return s.PutRetiringKey(ctx, "key-old", now.Add(time.Hour))
		}, func(ctx context.Context, c *redis.Client) bool {
			v, err := c.HGet(ctx, prefix+"jwks:retiring", "key-old").Result()
			return err == nil && v != ""
		}},
	}
	return setup, writes
}

// TestMinReplicasWaitsForReplica: with MinReplicas 1, each revocation,
// block, unblock and revoked-mark write is acknowledged only once the
// replica has it. The replica is paused: the write reaches the primary and
// then blocks in WAIT on its connection, unanswered; once the replica
// resumes, the write returns and the replica has it. Without the setting
// the write returned as soon as the primary had it.
func TestMinReplicasWaitsForReplica(t *testing.T) {
	primary, replica := startReplicated(t)
	pc, rc := rawClient(t, primary), rawClient(t, replica)
	const prefix = "{durable}:"
	s := newStore(t, primary, redisstore.Options{Prefix: prefix, MinReplicas: 1, Timeout: 20 * time.Second})
	setup, writes := durableWrites(prefix)
	if err := setup(t.Context(), s); err != nil {
		t.Fatalf("setup with the replica up = %v, want nil", err)
	}
	for _, w := range writes {
		t.Run("ok/"+w.name, func(t *testing.T) {
			ctx := t.Context()
			replica.Pause()
			t.Cleanup(replica.Resume) // also after a failure; a second SIGCONT is harmless
			done := make(chan error, 1)
			go func() { done <- w.run(ctx, s) }()
			waitFor(t, 5*time.Second, "the write on the primary", func() bool { return w.written(ctx, pc) })
			waitFor(t, 5*time.Second, "a connection blocked in WAIT", func() bool {
				list, err := pc.ClientList(ctx).Result()
				if err != nil {
					return false
				}
				for line := range strings.Lines(list) {
					if strings.Contains(line, " flags=b ") && strings.Contains(line, " cmd=wait ") {
						return true
					}
				}
				return false
			})
			select {
			case err := <-done:
				t.Fatalf("%s returned %v while the replica was paused, want it to wait for the replica", w.name, err)
			default:
			}
			replica.Resume()
			if err := <-done; err != nil {
				t.Fatalf("%s once the replica resumed = %v, want nil", w.name, err)
			}
			if !w.written(ctx, rc) {
				t.Errorf("%s returned, but the replica does not have it", w.name)
			}
		})
	}
}

// TestMinReplicasReplicaDown: with MinReplicas 1 and the replica stopped,
// each such write fails with ErrUnavailable (store_unreplicated) within
// the store's timeout, not hanging; an issuance that is not revoked (the
// token exchange's write) does not wait.
func TestMinReplicasReplicaDown(t *testing.T) {
	// Not shorter: under a loaded CI machine the writes before WAIT took
	// most of a 1 s timeout, and the answer came after the deadline.
	const timeout = 2 * time.Second
	primary, replica := startReplicated(t)
	const prefix = "{down}:"
	s := newStore(t, primary, redisstore.Options{Prefix: prefix, MinReplicas: 1, Timeout: timeout})
	setup, writes := durableWrites(prefix)
	if err := setup(t.Context(), s); err != nil {
		t.Fatalf("setup with the replica up = %v, want nil", err)
	}
	replica.Stop()
	for _, w := range writes {
		t.Run("fail/"+w.name, func(t *testing.T) {
			start := time.Now()
			err := w.run(t.Context(), s)
			elapsed := time.Since(start)
			var be *broker.Error
			if !errors.As(err, &be) || !errors.Is(err, broker.ErrUnavailable) || be.Reason != "store_unreplicated" || be.RetryAfter <= 0 {
				t.Fatalf("%s with the replica down = %v, want %v with reason store_unreplicated and a retry-after", w.name, err, broker.ErrUnavailable)
			}
			// Bounded by the store's timeout, with slack for a loaded machine.
			if elapsed > 3*timeout {
				t.Errorf("%s with the replica down took %s, want within about the %s timeout", w.name, elapsed, timeout)
			}
		})
	}
	t.Run("ok/unrevoked-issuance-does-not-wait", func(t *testing.T) {
		start := time.Now()
		if err := s.PutIssuance(t.Context(), storetest.SampleIssuance("iss_2", storetest.Epoch())); err != nil {
			t.Fatalf("PutIssuance(unrevoked) with the replica down = %v, want nil", err)
		}
		if elapsed := time.Since(start); elapsed >= timeout/2 {
			t.Errorf("PutIssuance(unrevoked) took %s, want no wait for replicas", elapsed)
		}
	})
}

// TestContractMinReplicas runs the contract suite with MinReplicas 1 and a
// replica in sync: waiting changes no result.
func TestContractMinReplicas(t *testing.T) {
	primary, _ := startReplicated(t)
	n := 0
	storetest.Run(t, func(t *testing.T) broker.Store {
		n++
		return newStore(t, primary, redisstore.Options{Prefix: fmt.Sprintf("{replicated-%d}:", n), MinReplicas: 1})
	})
}

func TestNewMinReplicasNegative(t *testing.T) {
	r := harness.StartRedis(t)
	_, err := redisstore.New(t.Context(), redisstore.Options{URL: r.URL(), MinReplicas: -1})
	if err == nil || !strings.Contains(err.Error(), "min replicas") {
		t.Fatalf("New(MinReplicas: -1) = %v, want an error naming min replicas", err)
	}
}

// TestMinReplicasThroughSentinel: through Sentinel's failover client
// (store.addrs + store.master_name), each write waits for the replica on
// its own connection to the primary: once it returns, the replica has it;
// with the replica stopped, it fails with store_unreplicated.
func TestMinReplicasThroughSentinel(t *testing.T) {
	primary, replica := startReplicated(t)
	sen := harness.StartSentinel(t, primary)
	rc := rawClient(t, replica)
	const prefix = "{sentinel-durable}:"
	s := newStore(t, primary, redisstore.Options{
		Universal:   &redis.UniversalOptions{Addrs: []string{sen.Addr}, MasterName: sen.MasterName},
		Prefix:      prefix,
		MinReplicas: 1,
		Timeout:     time.Second,
	})
	setup, writes := durableWrites(prefix)
	if err := setup(t.Context(), s); err != nil {
		t.Fatalf("setup with the replica up = %v, want nil", err)
	}
	for _, w := range writes {
		if err := w.run(t.Context(), s); err != nil {
			t.Fatalf("%s with the replica up = %v, want nil", w.name, err)
		}
		if !w.written(t.Context(), rc) {
			t.Errorf("%s returned, but the replica does not have it", w.name)
		}
	}
	replica.Stop()
	err := s.PutRevocation(t.Context(), &broker.Revocation{ID: "rev_down", CreatedAt: storetest.Epoch()})
	var be *broker.Error
	if !errors.As(err, &be) || be.Reason != broker.ReasonStoreUnreplicated {
		t.Fatalf("PutRevocation with the replica down = %v, want reason %s", err, broker.ReasonStoreUnreplicated)
	}
}

// TestMinReplicasDeploymentIDReadDoesNotWait: with MinReplicas 1, reading
// a deployment id the store already holds is no write and does not wait
// for replicas: a broker restarted while the replica is down (it still
// serves token exchanges) gets the id, not store_unreplicated.
func TestMinReplicasDeploymentIDReadDoesNotWait(t *testing.T) {
	const timeout = 2 * time.Second
	primary, replica := startReplicated(t)
	const prefix = "{dep-read}:"
	s := newStore(t, primary, redisstore.Options{Prefix: prefix, MinReplicas: 1, Timeout: timeout})
	created, err := s.DeploymentID(t.Context())
	if err != nil {
		t.Fatalf("DeploymentID with the replica up = %v, want nil", err)
	}
	replica.Stop()
	// A second instance (a restart) reads the id the first one created.
	s2 := newStore(t, primary, redisstore.Options{Prefix: prefix, MinReplicas: 1, Timeout: timeout})
	for name, st := range map[string]*redisstore.Store{"creator": s, "restarted": s2} {
		start := time.Now()
		got, err := st.DeploymentID(t.Context())
		if err != nil || got != created {
			t.Fatalf("%s: DeploymentID with the replica down = %q, %v, want %q, nil (the id exists)", name, got, err, created)
		}
		if elapsed := time.Since(start); elapsed >= timeout/2 {
			t.Errorf("%s: DeploymentID took %s, want no wait for replicas", name, elapsed)
		}
	}
}

// TestMinReplicasMarkRevokedFoundDoesNotWait: with MinReplicas 1, a
// MarkRevoked that finds the issuance revoked already writes nothing, so it
// does not wait for replicas: with the replica down it returns the stored
// mark at once, not store_unreplicated after half the timeout (WAIT on a
// connection that wrote nothing confirms nothing about the earlier mark).
// A mark that does write still waits and fails.
func TestMinReplicasMarkRevokedFoundDoesNotWait(t *testing.T) {
	const timeout = 2 * time.Second
	primary, replica := startReplicated(t)
	const prefix = "{mark-found}:"
	s := newStore(t, primary, redisstore.Options{Prefix: prefix, MinReplicas: 1, Timeout: timeout})
	now := storetest.Epoch()
	first := storetest.SampleIssuance("iss_1", now)
	first.RevokedAt, first.RevocationID = now, "rev_first"
	if _, err := s.MarkRevoked(t.Context(), first); err != nil {
		t.Fatalf("MarkRevoked with the replica up = %v, want nil", err)
	}
	if err := s.PutIssuance(t.Context(), storetest.SampleIssuance("iss_2", now)); err != nil {
		t.Fatal(err)
	}
	replica.Stop()

	second := storetest.SampleIssuance("iss_1", now)
	second.RevokedAt, second.RevocationID = now.Add(time.Second), "rev_second"
	start := time.Now()
	got, err := s.MarkRevoked(t.Context(), second)
	if err != nil || got.RevocationID != "rev_first" {
		t.Fatalf("MarkRevoked(already revoked) with the replica down = %+v, %v; want the stored rev_first mark", got, err)
	}
	if elapsed := time.Since(start); elapsed >= timeout/2 {
		t.Errorf("MarkRevoked(already revoked) took %s, want no wait for replicas", elapsed)
	}

	other := storetest.SampleIssuance("iss_2", now)
	other.RevokedAt, other.RevocationID = now, "rev_second"
	var be *broker.Error
	if _, err := s.MarkRevoked(t.Context(), other); !errors.As(err, &be) || be.Reason != broker.ReasonStoreUnreplicated {
		t.Errorf("MarkRevoked(unrevoked) with the replica down = %v, want reason %s", err, broker.ReasonStoreUnreplicated)
	}
}

// TestMinReplicasFoundMarkConfirmedByLaterWrite pins down what the
// revocation flow counts on after a MarkRevoked that finds a mark stored
// (and so waits for no replica, bf0a5c5): a mark whose own write the
// replica did not acknowledge (the replica frozen) is on the replica once
// a later write of the finder, on another key, is acknowledged. Redis
// replicates in order, so the later write's WAIT covers the earlier mark
// (broker.Store's MarkRevoked contract; broker/revoke.go unconfirmedMarks).
func TestMinReplicasFoundMarkConfirmedByLaterWrite(t *testing.T) {
	primary, replica := startReplicated(t)
	const prefix = "{mark-later}:"
	s := newStore(t, primary, redisstore.Options{Prefix: prefix, MinReplicas: 1, Timeout: 2 * time.Second})
	now := storetest.Epoch()
	if err := s.PutIssuance(t.Context(), storetest.SampleIssuance("iss_1", now)); err != nil {
		t.Fatal(err)
	}
	finder := &broker.Revocation{ID: "rev_second", Reason: "x", CreatedAt: now, Revoked: []string{}, Pending: []string{"iss_1"}, Failed: []broker.RevokeFailure{}}
	if err := s.PutRevocation(t.Context(), finder); err != nil {
		t.Fatal(err)
	}

	replica.Pause()
	paused := true
	t.Cleanup(func() {
		if paused {
			replica.Resume()
		}
	})
	first := storetest.SampleIssuance("iss_1", now)
	first.RevokedAt, first.RevocationID = now, "rev_first"
	var be *broker.Error
	if _, err := s.MarkRevoked(t.Context(), first); !errors.As(err, &be) || be.Reason != broker.ReasonStoreUnreplicated {
		t.Fatalf("MarkRevoked(rev_first) with the replica frozen = %v, want reason %s", err, broker.ReasonStoreUnreplicated)
	}
	second := storetest.SampleIssuance("iss_1", now)
	second.RevokedAt, second.RevocationID = now.Add(time.Second), "rev_second"
	got, err := s.MarkRevoked(t.Context(), second)
	if err != nil || got.RevocationID != "rev_first" {
		t.Fatalf("MarkRevoked(rev_second) = %+v, %v; want rev_first's mark, found stored", got, err)
	}

	replica.Resume()
	paused = false
	// The finder's progress write, acknowledged by the replica (retried
	// while the replica catches up after its freeze).
	var uerr error
	waitFor(t, 10*time.Second, "the progress write acknowledged by the replica", func() bool {
		_, uerr = s.UpdateRevocation(t.Context(), "rev_second", func(r *broker.Revocation) error {
			r.Pending, r.Revoked, r.Failed = []string{}, []string{"iss_1"}, []broker.RevokeFailure{}
			return nil
		})
		return uerr == nil
	})
	// Read once, at once: the acknowledged write covers the mark.
	raw, err := rawClient(t, replica).Get(t.Context(), prefix+"iss:iss_1").Result()
	if err != nil || !strings.Contains(raw, `"revocation_id":"rev_first"`) {
		t.Errorf("the replica's iss_1 after the later acknowledged write = %s, %v; want rev_first's mark", raw, err)
	}
}

// TestAcksReplicas: the store says its writes wait for replicas
// (broker.ReplicaAcker) exactly when MinReplicas is set; the revocation flow
// then confirms a mark found stored with a later acknowledged write, and
// otherwise counts it as revoked at once.
func TestAcksReplicas(t *testing.T) {
	r := harness.StartRedis(t)
	for _, c := range []struct {
		minReplicas int
		want        bool
	}{{0, false}, {1, true}, {2, true}} {
		s := newStore(t, r, redisstore.Options{Prefix: fmt.Sprintf("{acks-%d}:", c.minReplicas), MinReplicas: c.minReplicas})
		var st broker.Store = s
		a, ok := st.(broker.ReplicaAcker)
		if !ok {
			t.Fatalf("redisstore.Store is not a broker.ReplicaAcker")
		}
		if got := a.AcksReplicas(); got != c.want {
			t.Errorf("AcksReplicas() with MinReplicas %d = %v, want %v", c.minReplicas, got, c.want)
		}
	}
}
