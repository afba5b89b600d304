// Package redisstore is the broker.Store that several broker instances share:
// issuances, revocations and blocks in Redis (standalone, Sentinel or Cluster,
// through go-redis' UniversalClient).
//
// Promises, beyond broker.Store's contract (checked by package storetest):
//
//   - every call has its own deadline (Options.Timeout), so a hung or killed
//     Redis yields broker.ErrUnavailable, never a hang; redis.Nil becomes
//     broker.ErrNotFound; the core never sees a go-redis error type;
//   - PutIssuance is one Lua script (one round trip) writing the record and
//     all its indexes atomically, unless the stored record is revoked (it
//     keeps the mark: go-redis may send a put again, see
//     putIssuanceScript); MarkRevoked is the same script returning the
//     record it leaves stored; PutRevocation is one script writing the
//     record, its indexes and its change number, once per call (sent again
//     by go-redis it writes nothing more, see createRevocationScript);
//     UpdateRevocation runs that script in a WATCH/MULTI/EXEC
//     compare-and-set retried on conflict;
//     DeleteBlock is one script that deletes the block only while it is
//     the named revocation's; DeploymentID is one script that creates the
//     id only where there is none; PutRetiringKey is one script that keeps
//     the later until, RetiringKeys one that lists the unexpired retiring
//     keys and removes the others;
//   - issuance records and their ref indexes live for Options.Retention after
//     the issuance expires (trace needs expired issuances), then Redis drops
//     them; revocations, blocks and the deployment id get no TTL at all;
//   - New refuses a server whose maxmemory-policy may evict keys (allkeys-*,
//     volatile-*) unless Options.AllowEvictingPolicy is set;
//   - with Options.MinReplicas set, a write of a revocation, a block, an
//     unblock, an issuance's revoked mark (unless MarkRevoked finds one
//     stored, and writes nothing), a retiring key or the deployment id (its
//     creation by DeploymentID) is acknowledged only once that many replicas
//     have it (WAIT on the write's connection, up to half of
//     Options.Timeout); fewer is broker.ErrUnavailable (reason
//     store_unreplicated): the write is on the primary but a failover may
//     lose it, so the caller retries.
//
// Key layout, all under Options.Prefix (default "{keytrail}:"):
//
//	iss:<id>               issuance JSON, TTL expiry+retention
//	ref:<kind>:<value>     issuance id, same TTL as the issuance
//	idx:all                sorted set of issuance ids scored by expiry (unix ms)
//	idx:workload:<w>       the same, per workload
//	idx:owner:<o>          the same, per owner
//	idx:session:<s>        the same, per session
//	rev:<id>               revocation JSON, no TTL
//	revs                   set of revocation ids
//	revs:time              sorted set of revocation ids scored by creation (unix ms)
//	revs:pending           set of revocation ids not completed
//	revs:version           change counter, incremented by every revocation write
//	revs:changes           sorted set of revocation ids scored by their last change
//	block:<workload>       block JSON, no TTL
//	blocks                 set of blocked workloads
//	unblock:<workload>     id of the DeleteBlock call that deleted its block, TTL 2×Timeout
//	                       (at least 1 s): the call sent again answers deleted
//	putrev:<id>            id of the PutRevocation call that wrote rev:<id>, TTL 2×Timeout
//	                       (at least 1 s): the call sent again writes nothing more
//	deployment             the deployment id (DeploymentID), no TTL
//	jwks:retiring          hash of transit key name -> until (unix ms) (PutRetiringKey), no TTL;
//	                       RetiringKeys removes the fields past their until
//	revocations            pub/sub channel of revocation notices (not a key)
//
// Index entries are written with the record but not removed when an
// overwrite moves a record to other index values (that would take a read
// first); instead every read checks the record it found against the index it
// came from, and stale sorted-set members are trimmed once their score is
// past retention by the next put to the same index. Sorted-set index keys
// carry a TTL as long as their longest lived member (a put raises it, never
// lowers it), so indexes of finished sessions disappear. New refuses a Redis
// older than 7.0, the oldest version the store is tested against.
//
// The default prefix is a Redis Cluster hash tag: every key of one store hashes
// to the same slot, which multi-key MULTI/EXEC and MGET require in Cluster. The
// trade-off is that one store's data lives on one shard: Cluster buys
// availability, not capacity, for keytrail. New refuses a Cluster client whose
// prefix has no hash tag.
package redisstore

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keytrail/keytrail/broker"
)

var (
	_ broker.Store        = (*Store)(nil)
	_ broker.ReplicaAcker = (*Store)(nil)
)

// Defaults of Options.
const (
	DefaultPrefix    = "{keytrail}:"
	DefaultTimeout   = 2 * time.Second
	DefaultRetention = 30 * 24 * time.Hour
)

// listBatch is how many values one MGET reads (issuances and revocations
// listed, issuances found by reference).
const listBatch = 256

// Options configure New. Exactly one of URL and Universal is set.
type Options struct {
	// URL is a redis:// or rediss:// URL of a standalone server, as
	// redis.ParseURL reads it (user, password, database, query options).
	URL string
	// Universal configures a Sentinel (MasterName set) or Cluster (several
	// Addrs, or IsClusterMode) client, or a standalone one.
	Universal *redis.UniversalOptions
	// Prefix starts every key; default DefaultPrefix. With Cluster it must
	// contain a hash tag ("{...}").
	Prefix string
	// Timeout bounds each store call; default DefaultTimeout. An
	// UpdateRevocation whose ctx has a deadline keeps it, later or not:
	// the Service sizes it by the record (broker's recordTimeout). A
	// PutRevocation gets one more Timeout per 4 MiB of its encoded record,
	// or its ctx's deadline if nearer.
	Timeout time.Duration
	// Retention is how long an issuance record is kept after it expires;
	// default DefaultRetention.
	Retention time.Duration
	// AllowEvictingPolicy lets New accept a maxmemory-policy that may evict
	// keytrail's keys (allkeys-*, volatile-*).
	AllowEvictingPolicy bool
	// MinReplicas is how many replicas must acknowledge a write of a
	// revocation, a block, an unblock or an issuance's revoked mark before
	// it succeeds (Redis WAIT, up to half of Timeout); 0, the default, does
	// not wait: Redis replicates asynchronously, and a failover right after
	// such a write can lose it.
	MinReplicas int
	// Now is the clock retention is measured from; default time.Now.
	Now func() time.Time
	// Logger receives warnings (CONFIG not permitted...); default
	// slog.Default().
	Logger *slog.Logger
	// RootCAs verify the server's certificate for rediss:// URLs (and for
	// Universal clients with a TLSConfig); nil uses the system roots. A CA
	// without TLS (a redis:// URL, a Universal without TLSConfig) is an
	// error: it does not turn TLS on.
	RootCAs *x509.CertPool
}

// Store is a broker.Store over Redis. It is safe for concurrent use.
type Store struct {
	client    redis.UniversalClient
	prefix    string
	timeout   time.Duration
	retention time.Duration
	now       func() time.Time
	log       *slog.Logger

	minReplicas int           // Options.MinReplicas
	waitFor     time.Duration // WAIT's timeout: half of timeout

	afterPage func() // tests: called between pagesByScore's pages
}

// New connects, pings, and checks the server's maxmemory-policy and version.
// A server it cannot reach is broker.ErrUnavailable; bad options and a
// refused server are plain errors naming the problem.
func New(ctx context.Context, o Options) (*Store, error) {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	var problems []error
	if (o.URL == "") == (o.Universal == nil) {
		problems = append(problems, errors.New("redisstore: exactly one of url and universal options must be set"))
	}
	if o.Timeout < 0 {
		problems = append(problems, fmt.Errorf("redisstore: timeout: must be positive, got %s", o.Timeout))
	}
	if o.Retention < 0 {
		problems = append(problems, fmt.Errorf("redisstore: retention: must be positive, got %s", o.Retention))
	}
	if o.MinReplicas < 0 {
		problems = append(problems, fmt.Errorf("redisstore: min replicas: must be 0 or more, got %d", o.MinReplicas))
	}
	var client redis.UniversalClient
	if len(problems) == 0 {
		var err error
		if client, err = newClient(o); err != nil {
			problems = append(problems, err)
		}
	}
	if _, isCluster := client.(*redis.ClusterClient); isCluster && !hasHashTag(o.Prefix) {
		problems = append(problems, fmt.Errorf("redisstore: prefix %q: a Redis Cluster needs a hash tag in the prefix, e.g. %q", o.Prefix, DefaultPrefix))
	}
	if err := errors.Join(problems...); err != nil {
		if client != nil {
			_ = client.Close()
		}
		return nil, err
	}

	s := &Store{client: client, prefix: o.Prefix, timeout: o.Timeout, retention: o.Retention, now: o.Now, log: o.Logger,
		minReplicas: o.MinReplicas, waitFor: max(o.Timeout/2, time.Millisecond)}
	if err := s.Ping(ctx); err != nil {
		_ = client.Close()
		return nil, err
	}
	if err := s.checkServer(ctx, o.AllowEvictingPolicy); err != nil {
		_ = client.Close()
		return nil, err
	}
	if err := s.reindexRevocations(ctx); err != nil {
		_ = client.Close()
		return nil, err
	}
	return s, nil
}

func newClient(o Options) (redis.UniversalClient, error) {
	if o.Universal != nil {
		u := *o.Universal
		u.ContextTimeoutEnabled = true
		if o.RootCAs != nil {
			// A CA does not turn TLS on (it did, silently, where the URL
			// form refuses a CA with redis://): TLS is the caller's choice.
			if u.TLSConfig == nil {
				return nil, errors.New("redisstore: a CA was given but the universal options have no TLS config (TLS is off)")
			}
			u.TLSConfig = u.TLSConfig.Clone()
			u.TLSConfig.RootCAs = o.RootCAs
		}
		return redis.NewUniversalClient(&u), nil
	}
	const want = "want redis://[user:password@]host:port/db or rediss://..."
	// url.Parse errors repeat the URL, and with an unescaped '/' or '@' in
	// the password they quote part of it as host or port: say nothing more.
	u, err := url.Parse(o.URL)
	if err != nil {
		return nil, errors.New("redisstore: url: cannot be parsed (" + want + "; escape special characters in the password)")
	}
	if u.User == nil && strings.Contains(o.URL, "@") {
		// An unescaped '/', '?' or '#' in the user name or password ended
		// the authority early: the user info is now in the path, query or
		// fragment, which go-redis's errors quote (or the host, which its
		// dial errors name). Say nothing of it.
		return nil, errors.New("redisstore: url: '@' after the host (" + want + "; escape '/', '?', '#' and '@' in the user name and password)")
	}
	ro, err := redis.ParseURL(o.URL)
	if err != nil {
		msg := err.Error()
		if pw, ok := u.User.Password(); ok && pw != "" {
			msg = strings.ReplaceAll(msg, pw, "REDACTED")
		}
		return nil, errors.New("redisstore: url: " + msg + " (" + want + ")")
	}
	if ro.Network != "tcp" {
		return nil, errors.New("redisstore: url: scheme must be redis:// or rediss://")
	}
	ro.ContextTimeoutEnabled = true
	if o.RootCAs != nil {
		if ro.TLSConfig == nil {
			return nil, errors.New("redisstore: a CA was given but the URL is not rediss://")
		}
		ro.TLSConfig.RootCAs = o.RootCAs
	}
	return redis.NewClient(ro), nil
}

// hasHashTag reports whether Redis Cluster would hash keys starting with
// prefix by a tag inside the prefix.
func hasHashTag(prefix string) bool {
	open := strings.IndexByte(prefix, '{')
	if open < 0 {
		return false
	}
	end := strings.IndexByte(prefix[open+1:], '}')
	return end > 0
}

// checkServer refuses an evicting maxmemory-policy and a Redis older than
// 7.0. Where CONFIG or INFO is not permitted (managed Redis), it warns and
// goes on.
func (s *Store) checkServer(ctx context.Context, allowEvicting bool) error {
	check := func(ctx context.Context, c redis.Cmdable) error {
		ctx, cancel := context.WithTimeout(ctx, s.timeout)
		defer cancel()
		if err := s.checkPolicy(ctx, c, allowEvicting); err != nil {
			return err
		}
		return s.checkVersion(ctx, c)
	}
	if cc, ok := s.client.(*redis.ClusterClient); ok {
		return cc.ForEachShard(ctx, func(ctx context.Context, c *redis.Client) error { return check(ctx, c) })
	}
	return check(ctx, s.client)
}

func (s *Store) checkPolicy(ctx context.Context, c redis.Cmdable, allowEvicting bool) error {
	m, err := c.ConfigGet(ctx, "maxmemory-policy").Result()
	if err != nil {
		var rerr redis.Error
		if errors.As(err, &rerr) {
			s.log.Warn("redisstore: CONFIG GET maxmemory-policy refused; cannot check that Redis will not evict keytrail's keys; make sure the policy is noeviction", "err", err)
			return nil
		}
		return s.fail("config get maxmemory-policy", err)
	}
	policy, ok := m["maxmemory-policy"]
	if !ok {
		s.log.Warn("redisstore: CONFIG GET maxmemory-policy returned nothing; cannot check that Redis will not evict keytrail's keys")
		return nil
	}
	if !strings.HasPrefix(policy, "allkeys-") && !strings.HasPrefix(policy, "volatile-") {
		return nil
	}
	if allowEvicting {
		s.log.Warn("redisstore: Redis maxmemory-policy may evict keytrail's keys; accepted because AllowEvictingPolicy is set", "policy", policy)
		return nil
	}
	return fmt.Errorf("redisstore: Redis maxmemory-policy is %q: under memory pressure it may evict keytrail's records "+
		"(volatile-* evicts issuance records and indexes, allkeys-* also revocations and blocks); "+
		"set `maxmemory-policy noeviction` on the server, or set AllowEvictingPolicy to accept the risk", policy)
}

func (s *Store) checkVersion(ctx context.Context, c redis.Cmdable) error {
	info, err := c.Info(ctx, "server").Result()
	if err != nil {
		var rerr redis.Error
		if errors.As(err, &rerr) {
			s.log.Warn("redisstore: INFO server refused; cannot check that Redis is 7.0 or later", "err", err)
			return nil
		}
		return s.fail("info server", err)
	}
	for line := range strings.Lines(info) {
		v, ok := strings.CutPrefix(strings.TrimSpace(line), "redis_version:")
		if !ok {
			continue
		}
		major, _, _ := strings.Cut(v, ".")
		if n, err := strconv.Atoi(major); err == nil && n < 7 {
			return fmt.Errorf("redisstore: Redis %s is too old: keytrail needs Redis 7.0 or later", v)
		}
		return nil
	}
	s.log.Warn("redisstore: INFO server has no redis_version; cannot check that Redis is 7.0 or later")
	return nil
}

// Client is the underlying client, for features built on the same
// connection (revocation announcements over pub/sub).
func (s *Store) Client() redis.UniversalClient { return s.client }

// Close closes the client.
func (s *Store) Close() error { return s.client.Close() }

// fail translates a go-redis error at the edge: redis.Nil is ErrNotFound,
// everything else (network, timeout, cancelled context, server error) is
// ErrUnavailable.
func (s *Store) fail(op string, err error) error {
	if errors.Is(err, redis.Nil) {
		return fmt.Errorf("redisstore: %s: %w", op, broker.ErrNotFound)
	}
	var u *unreplicated
	if errors.As(err, &u) {
		return broker.Unavailable(broker.ReasonStoreUnreplicated, time.Second, fmt.Errorf("redisstore: %s: %w", op, err))
	}
	return broker.Unavailable("store_unavailable", time.Second, fmt.Errorf("redisstore: %s: %w", op, err))
}

func invalid(what string) error {
	return fmt.Errorf("redisstore: %s: %w", what, broker.ErrInvalidRequest)
}

func notFound(what string) error {
	return fmt.Errorf("redisstore: %s: %w", what, broker.ErrNotFound)
}

// corrupt reports a stored value that does not decode.
func corrupt(what string, err error) error {
	return broker.Unavailable("store_corrupt", time.Second, fmt.Errorf("redisstore: decode %s: %w", what, err))
}

// ctx bounds one store call by the store's timeout, whatever later
// deadline the caller gives (a caller's minutes would let a hung Redis
// hold the call as long). A ctx whose deadline is already at least as
// near is the bound as it is (the Service makes its StoreTimeout, 2 s by
// default as this timeout, just before each of its store calls):
// context.WithTimeout would return a cancelable copy with the same
// deadline, 2 allocations and a registration with the parent per Redis
// call for nothing. Two calls are bounded otherwise: PutRevocation by
// recordTimeout, sized by the record it sends; UpdateRevocation by the
// caller's deadline (the Service sizes it by the record).
func (s *Store) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	return within(ctx, s.timeout)
}

// within bounds ctx by d from now, returning ctx as it is when its
// deadline is already at least as near (see Store.ctx).
func within(ctx context.Context, d time.Duration) (context.Context, context.CancelFunc) {
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) <= d {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, d)
}

// recordBytesPerTimeout is how many bytes of an encoded revocation record
// PutRevocation is given one more Options.Timeout for, on top of the
// first. A record names every issuance its revocation matched (about 80
// bytes each pending with a failure: 100,000 issuances, some 8 MB), and
// the one command that sends it takes longer the larger it is; the
// Service's deadline sized by the record (broker's recordTimeout) would
// otherwise be cut to the store's Timeout.
const recordBytesPerTimeout = 4 << 20

// recordTimeout bounds PutRevocation of an encoded record of size bytes:
// Timeout, and one more per recordBytesPerTimeout bytes.
func (s *Store) recordTimeout(size int) time.Duration {
	return s.timeout + time.Duration(size/recordBytesPerTimeout)*s.timeout
}

// unreplicated is a write the primary applied but fewer than MinReplicas
// replicas acknowledged within the wait.
type unreplicated struct{ acked, want int64 }

func (u *unreplicated) Error() string {
	return fmt.Sprintf("written on the primary, but %d of the %d replicas required acknowledged it (store.min_replicas)", u.acked, u.want)
}

// durably runs write, then, with MinReplicas set, waits for the replicas
// (replicated). WAIT counts the replication of the writes of its own
// connection, so with MinReplicas set write runs on one connection to the
// primary of key's slot, held for both; without, on the pooled client.
func (s *Store) durably(ctx context.Context, key string, write func(c redis.Cmdable) error) error {
	return s.durablyIf(ctx, key, func(c redis.Cmdable) (bool, error) { return true, write(c) })
}

// durablyIf is durably for a write that may find nothing to write (wrote
// false): then it does not wait for replicas. WAIT confirms the writes of
// its own connection, so after none it would confirm nothing (not an
// earlier write of another connection), and would only fail, after its
// timeout, while the replicas are down.
func (s *Store) durablyIf(ctx context.Context, key string, write func(c redis.Cmdable) (wrote bool, err error)) error {
	if s.minReplicas == 0 {
		_, err := write(s.client)
		return err
	}
	var c *redis.Client
	switch cl := s.client.(type) {
	case *redis.Client: // standalone, or Sentinel's failover client
		c = cl
	case *redis.ClusterClient:
		var err error
		if c, err = cl.MasterForKey(ctx, key); err != nil {
			return err
		}
	default:
		return fmt.Errorf("a %T cannot wait for replicas", s.client)
	}
	conn := c.Conn()
	defer conn.Close()
	wrote, err := write(conn)
	if err != nil || !wrote {
		return err
	}
	return s.replicated(ctx, conn)
}

// waiter is a client pinned to one connection (redis.Conn, redis.Tx): the
// pooled clients have no WAIT.
type waiter interface {
	Wait(ctx context.Context, replicas int, timeout time.Duration) *redis.IntCmd
}

// replicated waits, on the connection that wrote, until MinReplicas
// replicas acknowledged its writes, at most half of Options.Timeout and of
// what ctx has left; unreplicated when fewer did.
func (s *Store) replicated(ctx context.Context, c waiter) error {
	if s.minReplicas == 0 {
		return nil
	}
	wait := s.waitFor
	if dl, ok := ctx.Deadline(); ok {
		// WAIT's answer must arrive before the deadline, which is also the
		// socket's: it gets at most half of what the write left, so a slow
		// write (a loaded machine) still ends as unreplicated, not as an
		// i/o timeout that says nothing about the replicas.
		wait = max(min(wait, time.Until(dl)/2), time.Millisecond)
	}
	n, err := c.Wait(ctx, s.minReplicas, wait).Result()
	if err != nil {
		return err
	}
	if n < int64(s.minReplicas) {
		return &unreplicated{acked: n, want: int64(s.minReplicas)}
	}
	return nil
}

// Keys.

func (s *Store) issKey(id string) string { return s.prefix + "iss:" + id }
func (s *Store) refKey(kind broker.RefKind, v string) string {
	return s.prefix + "ref:" + string(kind) + ":" + v
}
func (s *Store) idxKey(name, v string) string    { return s.prefix + "idx:" + name + ":" + v }
func (s *Store) allKey() string                  { return s.prefix + "idx:all" }
func (s *Store) revKey(id string) string         { return s.prefix + "rev:" + id }
func (s *Store) revsKey() string                 { return s.prefix + "revs" }
func (s *Store) revsByTimeKey() string           { return s.prefix + "revs:time" }    // id scored by creation ms
func (s *Store) revsPendingKey() string          { return s.prefix + "revs:pending" } // ids not completed
func (s *Store) revsVersionKey() string          { return s.prefix + "revs:version" } // change counter
func (s *Store) revsChangesKey() string          { return s.prefix + "revs:changes" } // id scored by change number
func (s *Store) blockKey(workload string) string { return s.prefix + "block:" + workload }
func (s *Store) blocksKey() string               { return s.prefix + "blocks" }
func (s *Store) deploymentKey() string           { return s.prefix + "deployment" }
func (s *Store) retiringKey() string             { return s.prefix + "jwks:retiring" }

// score is an issuance's position in the sorted-set indexes: its expiry in
// unix milliseconds (exact in a float64).
func score(exp time.Time) float64 { return float64(exp.UnixMilli()) }

// ttl is how long an issuance expiring at exp is kept: until exp+retention,
// in whole seconds rounded up, at least one. Sub saturates at the largest
// Duration (an expiry about 292 years away: a grant ttl near the largest
// a policy can write), which rounding up used to overflow into a 1 s TTL.
func (s *Store) ttl(exp time.Time) time.Duration {
	d := s.retention
	if !exp.IsZero() {
		d = exp.Add(s.retention).Sub(s.now())
	}
	whole := d.Truncate(time.Second)
	if whole < d && whole <= math.MaxInt64-time.Second {
		whole += time.Second
	}
	return max(whole, time.Second)
}

// PutIssuance writes the record and all its indexes in one round trip
// (putIssuanceScript), unless the stored record is revoked already: then it
// writes nothing (a put sent again by go-redis after a revocation marked
// the record keeps the mark). A revoked is's write waits for replicas as
// MarkRevoked's does; a mark found stored waits for none.
func (s *Store) PutIssuance(ctx context.Context, is *broker.Issuance) error {
	if is == nil || is.ID == "" {
		return invalid("issuance without id")
	}
	keys, args, revoked, err := s.issuanceScriptArgs(is)
	if err != nil {
		return err
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if !revoked {
		err = putIssuanceScript.Run(ctx, s.client, keys, args...).Err()
	} else {
		// A revoked mark: with MinReplicas, acknowledged once replicated.
		err = s.durablyIf(ctx, keys[0], func(rc redis.Cmdable) (bool, error) {
			wrote, err := putIssuanceScript.Run(ctx, rc, keys, args...).Int64()
			return err == nil && wrote == 1, err
		})
	}
	if err != nil {
		return s.fail("put issuance "+is.ID, err)
	}
	return nil
}

// MarkRevoked writes the revoked mark (a revocation's, or a withdrawal's
// without RevocationID) with markRevokedScript: the record
// and its indexes as PutIssuance writes them, unless the stored record is
// revoked already, in one atomic script; acknowledged, with MinReplicas,
// once replicated. It returns the record the script leaves stored. A mark
// found stored is returned without waiting for replicas: nothing was
// written (as the revocation flow skips an issuance it reads revoked), and
// WAIT on this connection would not confirm the earlier write. A later
// write the replicas confirm does (Redis replicates in order, and a
// replica's acknowledged offset covers every earlier write): the
// revocation flow's progress write.
func (s *Store) MarkRevoked(ctx context.Context, is *broker.Issuance) (*broker.Issuance, error) {
	if is == nil || is.ID == "" || is.RevokedAt.IsZero() {
		return nil, invalid("revoked mark without issuance id or revocation time")
	}
	keys, args, _, err := s.issuanceScriptArgs(is)
	if err != nil {
		return nil, err
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var raw string
	err = s.durablyIf(ctx, keys[0], func(rc redis.Cmdable) (bool, error) {
		var err error
		raw, err = markRevokedScript.Run(ctx, rc, keys, args...).Text()
		// The script returns ARGV[1], the JSON sent, when it wrote it.
		return err == nil && raw == string(args[0].([]byte)), err
	})
	if err != nil {
		return nil, s.fail("mark issuance "+is.ID+" revoked", err)
	}
	return decodeIssuance(raw)
}

// issuanceScriptArgs are putIssuanceScript's (and markRevokedScript's)
// KEYS and ARGV for is, and whether is is revoked.
//
// They are built in one scriptArgs and one string: a key and an ARGV value
// each cost an allocation of their own before (about 17 per exchange). The
// keys are cut from one string written as issKey, refKey, allKey and
// idxKey write them; ARGV's id, score, TTL and cutoff are pointers into
// the scriptArgs, which go-redis writes as it writes the values
// (TestIssuanceScriptArgs compares both with the one-by-one forms).
//
// The record's times are written in UTC. is is encoded as it is when its
// times are at a zero offset from UTC already (the broker's clock in a
// process whose local zone is UTC): time.Time's JSON is then the same as
// its UTC()'s, 'Z' and all (TestIssuanceJSONWithoutCopy). Only another
// offset costs a copy of is with its times made UTC.
func (s *Store) issuanceScriptArgs(is *broker.Issuance) (keys []string, args []any, revoked bool, err error) {
	enc := is
	if !zeroOffset(is.IssuedAt) || !zeroOffset(is.ExpiresAt) || !zeroOffset(is.RevokedAt) || !zeroOffset(is.Refs.ExpiresAt) {
		c := *is
		c.IssuedAt, c.ExpiresAt, c.RevokedAt = c.IssuedAt.UTC(), c.ExpiresAt.UTC(), c.RevokedAt.UTC()
		c.Refs.ExpiresAt = c.Refs.ExpiresAt.UTC()
		enc = &c
	}
	raw, err := json.Marshal(enc)
	if err != nil {
		return nil, nil, false, invalid(fmt.Sprintf("issuance %s cannot be encoded: %v", is.ID, err))
	}
	a := &scriptArgs{id: is.ID}
	exp := is.ExpiresAt.UTC() // without its monotonic reading, as the copy's
	a.ttl = s.ttl(exp).Milliseconds()
	a.score = int64(score(exp))

	var buf [512]byte
	b := buf[:0]
	var ends [len(scriptArgs{}.keys) + 1]int
	n := 0
	end := func() { ends[n] = len(b); n++ }
	b = append(append(append(b, s.prefix...), "iss:"...), is.ID...)
	end()
	for _, kind := range broker.RefKinds() {
		if v, _ := is.RefValue(kind); v != "" {
			b = append(append(append(append(append(b, s.prefix...), "ref:"...), kind...), ':'), v...)
			end()
		}
	}
	refs := n - 1
	b = append(append(b, s.prefix...), "idx:all"...)
	end()
	for _, ix := range [...]struct{ name, v string }{{"workload", is.Workload}, {"owner", is.Owner}, {"session", is.SessionID}} {
		if ix.v != "" {
			b = append(append(append(append(append(b, s.prefix...), "idx:"...), ix.name...), ':'), ix.v...)
			end()
		}
	}
	b = strconv.AppendInt(append(b, '('), s.now().Add(-s.retention).UnixMilli(), 10)
	end()
	all := string(b)
	from := 0
	for i := range n - 1 {
		a.keys[i] = all[from:ends[i]]
		from = ends[i]
	}
	a.cutoff = all[from:ends[n-1]]

	a.args = [...]any{raw, &a.ttl, refs, &a.id, &a.score, &a.cutoff}
	return a.keys[:n-1], a.args[:], !is.RevokedAt.IsZero(), nil
}

// zeroOffset reports whether t is at a zero offset from UTC in its own
// location: time.Time writes its RFC 3339 form from that offset and the
// clock time it gives, so such a t and t.UTC() encode alike.
func zeroOffset(t time.Time) bool {
	_, off := t.Zone()
	return off == 0
}

// scriptArgs holds what issuanceScriptArgs returns, in one allocation.
type scriptArgs struct {
	id     string                // the issuance's id (ARGV[4])
	keys   [1 + 7 + 1 + 3]string // the issuance, its refs (broker.RefKinds), idx:all and three indexes
	args   [6]any
	ttl    int64 // ms
	score  int64
	cutoff string
}

// putIssuanceBody writes an issuance, its ref index entries and its
// sorted-set index memberships in one round trip, atomically (a Lua script
// runs alone, as MULTI/EXEC did; one command instead of about twenty halves
// the client's CPU per exchange, issue #9). In a Redis Cluster every key
// carries the prefix's hash tag, so they share one slot.
//
// KEYS: the issuance, then ARGV[3] ref keys, then the sorted sets.
// ARGV: JSON, TTL in ms, ref count, issuance id, score, prune cutoff.
// Each sorted set drops members scored before the cutoff, gains the
// issuance, and its expiry is raised to the TTL if lower or unset.
const putIssuanceBody = `
local ttl = tonumber(ARGV[2])
local refs = tonumber(ARGV[3])
redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
for i = 2, 1 + refs do
  redis.call('SET', KEYS[i], ARGV[4], 'PX', ttl)
end
for i = 2 + refs, #KEYS do
  local k = KEYS[i]
  redis.call('ZREMRANGEBYSCORE', k, '-inf', ARGV[6])
  redis.call('ZADD', k, ARGV[5], ARGV[4])
  if redis.call('PTTL', k) < ttl then
    redis.call('PEXPIRE', k, ttl)
  end
end
`

// putIssuanceScript is putIssuanceBody unless the stored issuance is
// revoked already: then it writes nothing and returns 0, else 1. PutIssuance
// writes an issuance's first record, but go-redis sends a command again
// after a network error (MaxRetries): a put that ran, its reply lost, sent
// again after a revocation marked the record (MarkRevoked) would otherwise
// overwrite the mark with the unrevoked record and undo the revocation.
var putIssuanceScript = redis.NewScript(keepRevoked("0") + putIssuanceBody + "return 1\n")

// markRevokedScript is putIssuanceBody unless the stored issuance is
// revoked already; it returns the issuance JSON left stored, the one
// found or the one written.
var markRevokedScript = redis.NewScript(keepRevoked("cur") + putIssuanceBody + "return ARGV[1]\n")

// keepRevoked is the start of a script whose KEYS[1] is an issuance: when
// the stored issuance is revoked (its JSON has a top-level revoked_at: the
// field is omitted while zero), the script returns found; cur is the
// stored JSON. Where there is no record (a new issuance) it costs one GET.
//
// The record's claims come from an identity token and may nest deeper
// than cjson decodes (1,000 levels; Go reads 10,000): then every mark of
// the issuance failed. Where cjson refuses, the script finds the top-level
// revoked_at without decoding: keeping every position, escapes become
// "__", string contents '_' and nested objects and arrays '_' (%b, which
// does not recurse), so the top level's "key":"value" pairs are the only
// quoted pairs left, read back from the record at the same positions.
// cjson stays the first try: it costs a third of the scan (about 23 µs
// against 78 µs per mark found, measured with INFO commandstats).
func keepRevoked(found string) string {
	return `
local function revokedAt(raw)
  local ok, rec = pcall(cjson.decode, raw)
  if ok then
    return rec['revoked_at']
  end
  local function blank(m) return string.rep('_', #m) end
  local s = string.gsub(raw, '\\.', '__')
  s = string.gsub(s, '"[^"]*"', function(m) return '"' .. string.rep('_', #m - 2) .. '"' end)
  s = '{' .. string.gsub(string.gsub(string.sub(s, 2, -2), '%b{}', blank), '%b[]', blank) .. '}'
  local init = 1
  while true do
    local _, e, k1, k2, v1, v2 = string.find(s, '[{,]%s*()"_*"()%s*:%s*()"_*"()', init)
    if not e then
      return nil
    end
    if string.sub(raw, k1, k2 - 1) == '"revoked_at"' then
      return string.sub(raw, v1 + 1, v2 - 2)
    end
    init = e
  end
end
local cur = redis.call('GET', KEYS[1])
if cur then
  local at = revokedAt(cur)
  if type(at) == 'string' and at ~= '' then
    return ` + found + `
  end
end
`
}

func decodeIssuance(raw string) (*broker.Issuance, error) {
	var is broker.Issuance
	if err := json.Unmarshal([]byte(raw), &is); err != nil {
		return nil, corrupt("issuance", err)
	}
	return &is, nil
}

// GetIssuance reads one issuance.
func (s *Store) GetIssuance(ctx context.Context, id string) (*broker.Issuance, error) {
	if id == "" {
		return nil, invalid("empty issuance id")
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	raw, err := s.client.Get(ctx, s.issKey(id)).Result()
	if err != nil {
		return nil, s.fail("get issuance "+id, err)
	}
	return decodeIssuance(raw)
}

// FindIssuance follows the ref index to the issuance and checks that the
// issuance still carries value (an overwrite may have moved it).
func (s *Store) FindIssuance(ctx context.Context, kind broker.RefKind, value string) (*broker.Issuance, error) {
	if _, ok := (&broker.Issuance{}).RefValue(kind); !ok {
		return nil, invalid(fmt.Sprintf("unknown ref kind %q", kind))
	}
	if value == "" {
		return nil, invalid(fmt.Sprintf("empty %s", kind))
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	// value may be a raw credential (a trace query: SPEC, "hashed on
	// arrival"): errors name its fingerprint, never the value (computed
	// only when there is an error to name it in).
	what := func() string {
		shown := value
		if kind != broker.RefFingerprint {
			shown = broker.Fingerprint(value)
		}
		return fmt.Sprintf("find issuance by %s %s", kind, shown)
	}
	id, err := s.client.Get(ctx, s.refKey(kind, value)).Result()
	if err != nil {
		return nil, s.fail(what(), err)
	}
	raw, err := s.client.Get(ctx, s.issKey(id)).Result()
	if err != nil {
		return nil, s.fail(what(), err)
	}
	is, err := decodeIssuance(raw)
	if err != nil {
		return nil, err
	}
	if v, _ := is.RefValue(kind); v != value {
		return nil, notFound(what())
	}
	return is, nil
}

// FindIssuances follows the ref index of each value like FindIssuance,
// listBatch values at a time: two MGETs per batch (the ref keys, then the
// records they name), each batch under its own deadline.
func (s *Store) FindIssuances(ctx context.Context, kind broker.RefKind, values []string) ([]*broker.Issuance, error) {
	if _, ok := (&broker.Issuance{}).RefValue(kind); !ok {
		return nil, invalid(fmt.Sprintf("unknown ref kind %q", kind))
	}
	if slices.Contains(values, "") {
		return nil, invalid(fmt.Sprintf("empty %s", kind))
	}
	out := make([]*broker.Issuance, len(values))
	for start := 0; start < len(values); start += listBatch {
		chunk := values[start:min(start+listBatch, len(values))]
		if err := s.findChunk(ctx, kind, chunk, out[start:]); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// findChunk fills out[i] with the issuance indexed under values[i].
func (s *Store) findChunk(ctx context.Context, kind broker.RefKind, values []string, out []*broker.Issuance) error {
	what := fmt.Sprintf("find issuances by %s", kind)
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	keys := make([]string, len(values))
	for i, v := range values {
		keys[i] = s.refKey(kind, v)
	}
	ids, err := s.client.MGet(ctx, keys...).Result()
	if err != nil {
		return s.fail(what, err)
	}
	var at []int // positions in values whose ref key named an issuance
	keys = keys[:0]
	for i, id := range ids {
		if id, ok := id.(string); ok {
			at = append(at, i)
			keys = append(keys, s.issKey(id))
		}
	}
	if len(keys) == 0 {
		return nil
	}
	raws, err := s.client.MGet(ctx, keys...).Result()
	if err != nil {
		return s.fail(what, err)
	}
	for j, raw := range raws {
		raw, ok := raw.(string)
		if !ok {
			continue // expired between the two reads
		}
		is, err := decodeIssuance(raw)
		if err != nil {
			return err // store_corrupt, not Redis being unavailable
		}
		if v, _ := is.RefValue(kind); v == values[at[j]] { // an overwrite may have moved it
			out[at[j]] = is
		}
	}
	return nil
}

// ListIssuances walks the most selective sorted-set index in (expiry, id)
// order, from f.ActiveAt on when set, and checks every record against f.
func (s *Store) ListIssuances(ctx context.Context, f broker.IssuanceFilter) ([]*broker.Issuance, error) {
	if f.Limit < 0 {
		return nil, invalid("negative limit")
	}
	key := s.allKey()
	switch {
	case f.SessionID != "":
		key = s.idxKey("session", f.SessionID)
	case f.Workload != "":
		key = s.idxKey("workload", f.Workload)
	case f.Owner != "":
		key = s.idxKey("owner", f.Owner)
	}
	// Active means ActiveAt < ExpiresAt, so the expiry's millisecond is at
	// least ActiveAt's; the same for UnexpiredAt.
	minScore := "-inf"
	if from := laterOf(f.ActiveAt, f.UnexpiredAt); !from.IsZero() {
		minScore = strconv.FormatInt(from.UnixMilli(), 10)
	}

	// The index is paged by score (pagesByScore): every put prunes its
	// oldest members while it is read.
	out := []*broker.Issuance{}
	var decodeErr error // a record that does not decode: reported as such
	err := s.pagesByScore(ctx, key, minScore, func(ids []string) (bool, error) {
		raws, err := s.values(ctx, ids, s.issKey) // an id dropped after retention has no value
		if err != nil {
			return false, err
		}
		for _, raw := range raws {
			is, err := decodeIssuance(raw)
			if err != nil {
				decodeErr = err
				return false, err
			}
			if !matches(is, f) {
				continue
			}
			out = append(out, is)
			if f.Limit > 0 && len(out) == f.Limit {
				return true, nil
			}
		}
		return false, nil
	})
	if decodeErr != nil {
		return nil, decodeErr
	}
	if err != nil {
		return nil, s.fail("list issuances", err)
	}
	return out, nil
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func matches(is *broker.Issuance, f broker.IssuanceFilter) bool {
	return (f.Workload == "" || is.Workload == f.Workload) &&
		(f.Owner == "" || is.Owner == f.Owner) &&
		(f.SessionID == "" || is.SessionID == f.SessionID) &&
		(f.ActiveAt.IsZero() || is.Active(f.ActiveAt)) &&
		(f.UnexpiredAt.IsZero() || f.UnexpiredAt.Before(is.ExpiresAt))
}

// PutRevocation writes the revocation (no TTL) and adds it to the set.
//
// go-redis sends a command again after a network error lost its reply
// (MaxRetries): the script ran, and the resent one would write the record
// again, over an UpdateRevocation made in between (an unblock's time, which
// the sweep needs, or the worker's progress). So each call has an id of its
// own, which the script leaves in putrev:<id> for unblockTTL: the same
// command sent again finds it and writes nothing more.
func (s *Store) PutRevocation(ctx context.Context, r *broker.Revocation) error {
	if r == nil || r.ID == "" {
		return invalid("revocation without id")
	}
	raw, c, err := encodeRevocation(r)
	if err != nil {
		return err
	}
	// Sized by the record, within a nearer caller deadline; never the
	// caller's later one (the revocation cache's write-back gives minutes).
	bound := s.recordTimeout(len(raw))
	keys, args := s.putRevocationArgs(c, raw, rand.Text(), bound)
	ctx, cancel := within(ctx, bound)
	defer cancel()
	err = s.durably(ctx, keys[0], func(rc redis.Cmdable) error {
		return createRevocationScript.Run(ctx, rc, keys, args...).Err()
	})
	if err != nil {
		return s.fail("put revocation "+c.ID, err)
	}
	return nil
}

// encodeRevocation is the stored form of r (times in UTC) and the copy it
// encodes.
func encodeRevocation(r *broker.Revocation) ([]byte, *broker.Revocation, error) {
	c := *r
	c.CreatedAt, c.SweepAt, c.CompletedAt, c.ResultOwed = c.CreatedAt.UTC(), c.SweepAt.UTC(), c.CompletedAt.UTC(), c.ResultOwed.UTC()
	raw, err := json.Marshal(&c)
	if err != nil {
		return nil, nil, invalid(fmt.Sprintf("revocation %s cannot be encoded: %v", r.ID, err))
	}
	return raw, &c, nil
}

// maxUpdateTries bounds the optimistic transactions of one
// UpdateRevocation: each conflict means another writer's update landed.
const maxUpdateTries = 16

// UpdateRevocation is a compare-and-set: it WATCHes the record, reads it,
// applies fn and writes the result with exactly PutRevocation's script in
// MULTI/EXEC, so the write happens only if the record was not written
// meanwhile; on a conflict it starts again from a fresh read (up to
// maxUpdateTries times, all within one Options.Timeout, or ctx's deadline
// when it has one: an update reads, decodes, encodes and writes the whole
// record, and one naming 100,000 issuances may take longer than the 2 s
// default, so the Service sizes its deadline by the record). Every key is
// under the prefix's hash tag, so the transaction stays on one Cluster slot.
func (s *Store) UpdateRevocation(ctx context.Context, id string, fn func(*broker.Revocation) error) (*broker.Revocation, error) {
	if id == "" || fn == nil {
		return nil, invalid("update revocation without id or function")
	}
	cancel := context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
	}
	defer cancel()
	key := s.revKey(id)
	for range maxUpdateTries {
		var out *broker.Revocation
		var own error // fn's error, or a record that does not decode: returned as is
		err := s.client.Watch(ctx, func(tx *redis.Tx) error {
			raw, err := tx.Get(ctx, key).Result()
			if err != nil {
				return err
			}
			r, err := decodeRevocation(raw)
			if err != nil {
				own = err
				return err
			}
			if err := fn(r); err != nil {
				own = err
				return err
			}
			if r.ID != id {
				own = invalid(fmt.Sprintf("update of revocation %s changed its id to %q", id, r.ID))
				return own
			}
			enc, c, err := encodeRevocation(r)
			if err != nil {
				own = err
				return err
			}
			_, err = tx.TxPipelined(ctx, func(p redis.Pipeliner) error {
				// EVAL, not EVALSHA: a script missing from the cache
				// would fail the whole transaction only at EXEC.
				keys, args := s.revocationScriptArgs(id, enc, c.CreatedAt, c.Listed())
				putRevocationScript.Eval(ctx, p, keys, args...)
				return nil
			})
			if err != nil {
				return err
			}
			// On the connection that wrote: WAIT counts its writes.
			if err := s.replicated(ctx, tx); err != nil {
				return err
			}
			// What GetRevocation now returns.
			out, own = decodeRevocation(string(enc))
			return own
		}, key)
		switch {
		case own != nil:
			return nil, own
		case errors.Is(err, redis.TxFailedErr):
			continue
		case err != nil:
			return nil, s.fail("update revocation "+id, err)
		}
		return out, nil
	}
	return nil, s.fail("update revocation "+id, fmt.Errorf("%d conflicting writes in a row", maxUpdateTries))
}

// indexRevocation writes one revocation (the record, unless raw is nil) and
// its index entries: the set of all revocations, the creation-time index,
// the pending set, and the change index under a new change number, in one
// atomic script (so a reader that saw the number sees the entries).
func (s *Store) indexRevocation(ctx context.Context, c redis.Scripter, id string, raw []byte, created time.Time, pending bool) *redis.Cmd {
	keys, args := s.revocationScriptArgs(id, raw, created, pending)
	return putRevocationScript.Run(ctx, c, keys, args...)
}

// revocationScriptArgs are putRevocationScript's KEYS and ARGV.
func (s *Store) revocationScriptArgs(id string, raw []byte, created time.Time, pending bool) ([]string, []any) {
	p := "0"
	if pending {
		p = "1"
	}
	keys := []string{s.revKey(id), s.revsKey(), s.revsByTimeKey(), s.revsPendingKey(), s.revsVersionKey(), s.revsChangesKey()}
	return keys, []any{raw, id, strconv.FormatInt(created.UnixMilli(), 10), p}
}

// putRevocationArgs are createRevocationScript's KEYS and ARGV for one
// PutRevocation call of c (encoded as raw), call its id.
func (s *Store) putRevocationArgs(c *broker.Revocation, raw []byte, call string, bound time.Duration) ([]string, []any) {
	keys, args := s.revocationScriptArgs(c.ID, raw, c.CreatedAt, c.Listed())
	return append(keys, s.prefix+"putrev:"+c.ID), append(args, call, s.putrevTTL(bound).Milliseconds())
}

// putRevocationScript (putRevocationBody): KEYS as in indexRevocation; ARGV: JSON (empty: keep
// the record), id, creation ms, "1" when pending. Returns the change number:
// the counter plus one, but at least the server's time in µs. A replica
// promoted after missing the last writes has a lower counter; a plain
// counter would then hand out numbers readers already saw (they read
// ChangedAfter what they saw and would skip the new revocations); the clock
// keeps new numbers above every earlier one (up to clock differences
// between primaries). Numbers stay below 2^53, exact as sorted-set scores.
const putRevocationBody = `
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[2])
if ARGV[4] == '1' then
  redis.call('SADD', KEYS[4], ARGV[2])
else
  redis.call('SREM', KEYS[4], ARGV[2])
end
local n = redis.call('INCR', KEYS[5])
local t = redis.call('TIME')
local us = tonumber(t[1]) * 1000000 + tonumber(t[2])
if us > n then
  n = us
  redis.call('SET', KEYS[5], string.format('%.0f', n))
end
redis.call('ZADD', KEYS[6], n, ARGV[2])
return n
`

var putRevocationScript = redis.NewScript(putRevocationBody)

// createRevocationScript is PutRevocation's: putRevocationScript's KEYS
// and ARGV, then KEYS[7] putrev:<id>, ARGV[5] the call's id, ARGV[6]
// unblockTTL in ms. When putrev:<id> holds the call's id the run is
// go-redis sending the command again after the first run: it writes
// nothing but the id again (a write its connection's WAIT confirms with
// the record before it) and returns 0; otherwise it leaves the id there
// and runs putRevocationScript.
var createRevocationScript = redis.NewScript(`
if redis.call('GET', KEYS[7]) == ARGV[5] then
  redis.call('SET', KEYS[7], ARGV[5], 'PX', ARGV[6])
  return 0
end
redis.call('SET', KEYS[7], ARGV[5], 'PX', ARGV[6])
` + putRevocationBody)

// RevocationVersion reads the change counter PutRevocation increments.
func (s *Store) RevocationVersion(ctx context.Context) (uint64, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	v, err := s.client.Get(ctx, s.revsVersionKey()).Uint64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, s.fail("revocation version", err)
	}
	return v, nil
}

// reindexRevocations builds the creation-time, pending and change indexes
// for revocations written before they existed (the set of all revocations is
// their superset). It runs at New, once there is anything to do; the
// revocations it indexes get new change numbers, so readers read them once
// more. It reads and indexes indexPage revocations at a time, each read and
// each write its own round trip with its own deadline: a long history (each
// revocation is one script call) does not have to fit in one
// Options.Timeout, which would fail New at every start.
func (s *Store) reindexRevocations(ctx context.Context) error {
	cctx, cancel := s.ctx(ctx)
	defer cancel()
	all, err := s.client.SCard(cctx, s.revsKey()).Result()
	if err != nil {
		return s.fail("count revocations", err)
	}
	byTime, err := s.client.ZCard(cctx, s.revsByTimeKey()).Result()
	if err != nil {
		return s.fail("count revocations", err)
	}
	changed, err := s.client.ZCard(cctx, s.revsChangesKey()).Result()
	if err != nil {
		return s.fail("count revocations", err)
	}
	if byTime >= all && changed >= all {
		return nil
	}
	if err := putRevocationScript.Load(cctx, s.client).Err(); err != nil {
		return s.fail("reindex revocations", err)
	}
	n := 0
	for cursor := uint64(0); ; {
		sctx, cancel := s.ctx(ctx)
		ids, next, err := s.client.SScan(sctx, s.revsKey(), cursor, "", indexPage).Result()
		cancel()
		if err != nil {
			return s.fail("reindex revocations", err)
		}
		raws, err := s.values(ctx, ids, s.revKey)
		if err != nil {
			return s.fail("reindex revocations", err)
		}
		if len(raws) > 0 {
			wctx, cancel := s.ctx(ctx)
			pipe := s.client.Pipeline()
			for _, raw := range raws {
				r, err := decodeRevocation(raw)
				if err != nil {
					cancel()
					return err
				}
				s.indexRevocation(wctx, pipe, r.ID, nil, r.CreatedAt, r.Listed())
			}
			_, err = pipe.Exec(wctx)
			cancel()
			if err != nil {
				return s.fail("reindex revocations", err)
			}
			n += len(raws)
		}
		if next == 0 {
			break
		}
		cursor = next
	}
	s.log.Info("redisstore: indexed revocations by creation time, pending state and change", "revocations", n)
	return nil
}

func decodeRevocation(raw string) (*broker.Revocation, error) {
	var r broker.Revocation
	if err := json.Unmarshal([]byte(raw), &r); err != nil {
		return nil, corrupt("revocation", err)
	}
	return &r, nil
}

// GetRevocation reads one revocation.
//
// The read of the record is bounded as PutRevocation's write: by its size
// (recordTimeout of its length, read first with STRLEN within Timeout),
// within a nearer caller deadline and never a later one. A record names
// every issuance its revocation matched (some 8 MB for 100,000), and the
// Service gives the worker's reads of a large one a deadline sized by it;
// cut to Timeout, every such read failed on a loaded Redis.
func (s *Store) GetRevocation(ctx context.Context, id string) (*broker.Revocation, error) {
	if id == "" {
		return nil, invalid("empty revocation id")
	}
	key := s.revKey(id)
	lctx, lcancel := s.ctx(ctx)
	size, err := s.client.StrLen(lctx, key).Result()
	lcancel()
	if err != nil {
		return nil, s.fail("get revocation "+id, err)
	}
	gctx, cancel := within(ctx, s.recordTimeout(int(size)))
	defer cancel()
	raw, err := s.client.Get(gctx, key).Result()
	if err != nil {
		return nil, s.fail("get revocation "+id, err)
	}
	return decodeRevocation(raw)
}

// members reads a set's members and the values of their keys.
func (s *Store) members(ctx context.Context, set string, key func(string) string) ([]string, error) {
	names, err := s.client.SMembers(ctx, set).Result()
	if err != nil {
		return nil, err
	}
	return s.values(ctx, names, key)
}

// values reads the keys of names in batches, each its own round trip with
// its own deadline; missing keys are skipped.
func (s *Store) values(ctx context.Context, names []string, key func(string) string) ([]string, error) {
	var out []string
	for chunk := range slices.Chunk(names, listBatch) {
		keys := make([]string, len(chunk))
		for i, n := range chunk {
			keys[i] = key(n)
		}
		bctx, cancel := s.ctx(ctx)
		vals, err := s.client.MGet(bctx, keys...).Result()
		cancel()
		if err != nil {
			return nil, err
		}
		for _, v := range vals {
			if raw, ok := v.(string); ok {
				out = append(out, raw)
			}
		}
	}
	return out, nil
}

// ListRevocations returns the revocations f keeps, ordered by creation
// time, then id. With ChangedAfter it reads the change index from there on,
// with Pending the pending set, with Since the creation-time index from
// Since on, so the revocation cache's refresh and the retry worker cost what
// is recent, changed or unfinished, not the history. The indexes are read a
// page (revPage ids) at a time, each page and each batch of values its own
// round trip with its own deadline, so a large window neither holds Redis
// for long in one command nor needs to fit in one timeout.
func (s *Store) ListRevocations(ctx context.Context, f broker.RevocationFilter) ([]*broker.Revocation, error) {
	out := []*broker.Revocation{}
	if err := s.ListRevocationPages(ctx, f, func(page []*broker.Revocation) error {
		out = append(out, page...)
		return nil
	}); err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b *broker.Revocation) int {
		return cmp.Or(a.CreatedAt.Compare(b.CreatedAt), cmp.Compare(a.ID, b.ID))
	})
	return out, nil
}

// ListRevocationPages is ListRevocations a page of the index at a time
// (broker.RevocationPager): fn gets the revocations f keeps of each page
// (up to indexPage, in index order, each once), decoded for it alone, so
// that a caller that keeps less than the decoded records (the revocation
// cache's full read) never holds the Window's all at once. An error from
// fn stops it and is returned as is; a record that does not decode stops
// it too (after fn saw the pages before it).
func (s *Store) ListRevocationPages(ctx context.Context, f broker.RevocationFilter, fn func([]*broker.Revocation) error) error {
	var stopErr error // fn's, or a record that does not decode: returned as is, not as Redis unavailable
	add := func(ids []string) (bool, error) {
		raws, err := s.values(ctx, ids, s.revKey)
		if err != nil {
			return false, err
		}
		page := make([]*broker.Revocation, 0, len(raws))
		for _, raw := range raws {
			r, err := decodeRevocation(raw)
			if err != nil {
				stopErr = err
				return false, err
			}
			if f.Match(r) {
				page = append(page, r)
			}
		}
		if len(page) > 0 {
			if err := fn(page); err != nil {
				stopErr = err
				return false, err
			}
		}
		return false, nil
	}
	var err error
	switch {
	case f.ChangedAfter > 0:
		err = s.pagesByScore(ctx, s.revsChangesKey(), "("+strconv.FormatUint(f.ChangedAfter, 10), add)
	case !f.Since.IsZero() && !f.Pending:
		err = s.pagesByScore(ctx, s.revsByTimeKey(), strconv.FormatInt(max(f.Since.UnixMilli(), 0), 10), add)
	default:
		key := s.revsKey()
		if f.Pending {
			key = s.revsPendingKey()
		}
		var ids []string
		sctx, cancel := s.ctx(ctx)
		ids, err = s.client.SMembers(sctx, key).Result()
		cancel()
		for chunk := range slices.Chunk(ids, indexPage) {
			if err != nil {
				break
			}
			_, err = add(chunk)
		}
	}
	if stopErr != nil {
		return stopErr
	}
	if err != nil {
		return s.fail("list revocations", err)
	}
	return nil
}

// indexPage is how many sorted-set members one round trip of pagesByScore
// reads.
const indexPage = 1024

// pagesByScore calls fn with the members of the sorted set key scored at or
// above min (a Redis score bound: "-inf", "123", or "(123" for above), in
// score order, up to indexPage (and the rest of the last page's score) at a
// time, each member once, until fn returns stop or the set is exhausted.
// Each round trip has its own deadline.
//
// The cursor is the last score read, never a rank or an offset: these
// indexes change while they are read. Puts prune issuance indexes from the
// low end, and a revocation's update moves it to a higher change number; a
// rank counted before such a change would skip as many members as moved
// or were removed. A page that ends inside the members of one score is
// completed with all of them, so the next page can start after that score;
// a member that moved up past the cursor is passed once only.
func (s *Store) pagesByScore(ctx context.Context, key, min string, fn func(ids []string) (stop bool, err error)) error {
	seen := map[string]struct{}{}
	for start := min; ; {
		page, next, err := s.scorePage(ctx, key, start)
		if err != nil {
			return err
		}
		fresh := make([]string, 0, len(page))
		for _, id := range page {
			if _, ok := seen[id]; !ok {
				seen[id] = struct{}{}
				fresh = append(fresh, id)
			}
		}
		if len(fresh) > 0 {
			if stop, err := fn(fresh); stop || err != nil {
				return err
			}
		}
		if next == "" {
			return nil
		}
		start = next
		if s.afterPage != nil {
			s.afterPage()
		}
	}
}

// scorePage reads one page of pagesByScore from start, completed with every
// member of its last score (some of them twice); next is where the
// following page starts ("" after the last).
func (s *Store) scorePage(ctx context.Context, key, start string) (ids []string, next string, err error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	page, err := s.client.ZRangeArgsWithScores(ctx, redis.ZRangeArgs{
		Key: key, Start: start, Stop: "+inf", ByScore: true, Count: indexPage,
	}).Result()
	if err != nil {
		return nil, "", err
	}
	ids = make([]string, 0, len(page))
	for _, z := range page {
		if id, ok := z.Member.(string); ok {
			ids = append(ids, id)
		}
	}
	if len(page) < indexPage {
		return ids, "", nil
	}
	last := strconv.FormatFloat(page[len(page)-1].Score, 'f', -1, 64)
	ties, err := s.client.ZRangeArgs(ctx, redis.ZRangeArgs{Key: key, Start: last, Stop: last, ByScore: true}).Result()
	if err != nil {
		return nil, "", err
	}
	// The page's own members of that score come again here; pagesByScore
	// passes each member once.
	return append(ids, ties...), "(" + last, nil
}

// PutBlock writes the block (no TTL) and adds it to the set.
//
// It is a MULTI/EXEC transaction, which go-redis does not send again once
// written (a lost reply is an error, ErrUnavailable): a resend could block
// the workload again after an unblock, or put this block over another
// revocation's made in between. A script would be resent; making it one
// needs a per-call id as DeleteBlock's (TestPutBlockLostReplyNotSentAgain).
func (s *Store) PutBlock(ctx context.Context, b broker.Block) error {
	if b.Workload == "" {
		return invalid("block without workload")
	}
	b.CreatedAt = b.CreatedAt.UTC()
	raw, err := json.Marshal(b)
	if err != nil {
		return invalid(fmt.Sprintf("block %s cannot be encoded: %v", b.Workload, err))
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	err = s.durably(ctx, s.blockKey(b.Workload), func(c redis.Cmdable) error {
		_, err := c.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			pipe.Set(ctx, s.blockKey(b.Workload), raw, 0)
			pipe.SAdd(ctx, s.blocksKey(), b.Workload)
			return nil
		})
		return err
	})
	if err != nil {
		return s.fail("put block "+b.Workload, err)
	}
	return nil
}

// DeleteBlock removes the block of workload if it is still revocationID's:
// one script compares the stored block's revocation id and deletes it in the
// same atomic step, so a block another revocation put since the caller read
// it stays (ErrBlockChanged). ErrNotFound when the workload is not blocked.
//
// go-redis sends a command again after a network error lost its reply
// (MaxRetries): the script ran, the block is gone, and the resent one would
// answer ErrNotFound, or ErrBlockChanged when a revocation blocked the
// workload again in between, though this call deleted the block. So each
// call has an id of its own, which the deleting script leaves in
// unblock:<workload> for unblockTTL: the same command sent again finds it
// and answers deleted; another call (another id) is told what it finds.
func (s *Store) DeleteBlock(ctx context.Context, workload, revocationID string) error {
	if workload == "" {
		return invalid("empty workload")
	}
	keys, args := s.deleteBlockArgs(workload, revocationID, rand.Text())
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	var res int64
	err := s.durably(ctx, keys[0], func(c redis.Cmdable) error {
		var err error
		res, err = deleteBlockScript.Run(ctx, c, keys, args...).Int64()
		return err
	})
	switch {
	case err != nil:
		return s.fail("delete block "+workload, err)
	case res == 0:
		return notFound("block of " + workload)
	case res < 0:
		return fmt.Errorf("redisstore: block of %s is not %q's: %w", workload, revocationID, broker.ErrBlockChanged)
	}
	return nil
}

// unblockTTL is how long unblock:<workload> keeps the id of the DeleteBlock
// call that deleted the block, and putrev:<id> that of the PutRevocation
// call that wrote the record (putrevTTL: longer for a large record):
// longer than any resend of the call, which go-redis makes only within
// the call's deadline (at most the timeout).
func (s *Store) unblockTTL() time.Duration { return max(2*s.timeout, time.Second) }

// putrevTTL is how long putrev:<id> keeps the id of a PutRevocation call
// bounded by bound (recordTimeout, past the timeout for a large record):
// unblockTTL, and at least twice the bound, as its resends are within it.
func (s *Store) putrevTTL(bound time.Duration) time.Duration {
	return max(s.unblockTTL(), 2*bound)
}

// deleteBlockArgs are deleteBlockScript's KEYS and ARGV for one DeleteBlock
// call, call its id.
func (s *Store) deleteBlockArgs(workload, revocationID, call string) ([]string, []any) {
	return []string{s.blockKey(workload), s.blocksKey(), s.prefix + "unblock:" + workload},
		[]any{workload, revocationID, call, s.unblockTTL().Milliseconds()}
}

// deleteBlockScript: KEYS block:<workload>, blocks, unblock:<workload>;
// ARGV workload, the revocation id the block must have ("" for none), the
// call's id, unblockTTL in ms. Returns 1 when deleted, by this run or by
// an earlier run of the same call (unblock:<workload> holds its id: the
// run is go-redis sending the command again, and it rewrites the id, a
// write its connection's WAIT confirms with the delete before it), 0 when
// there is no block, -1 when the block is another revocation's (it stays).
// A stored block that does not decode fails the script.
var deleteBlockScript = redis.NewScript(`
if redis.call('GET', KEYS[3]) == ARGV[3] then
  redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
  return 1
end
local raw = redis.call('GET', KEYS[1])
if not raw then
  redis.call('SREM', KEYS[2], ARGV[1])
  return 0
end
local rid = cjson.decode(raw)['revocation_id']
if type(rid) ~= 'string' then
  rid = ''
end
if rid ~= ARGV[2] then
  return -1
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('SET', KEYS[3], ARGV[3], 'PX', ARGV[4])
return 1
`)

func decodeBlock(raw string) (*broker.Block, error) {
	var b broker.Block
	if err := json.Unmarshal([]byte(raw), &b); err != nil {
		return nil, corrupt("block", err)
	}
	return &b, nil
}

// GetBlock reads the block of workload; ErrNotFound when it is not blocked.
func (s *Store) GetBlock(ctx context.Context, workload string) (*broker.Block, error) {
	if workload == "" {
		return nil, invalid("empty workload")
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	raw, err := s.client.Get(ctx, s.blockKey(workload)).Result()
	if err != nil {
		return nil, s.fail("get block of "+workload, err)
	}
	return decodeBlock(raw)
}

// ListBlocks returns every block, ordered by workload.
func (s *Store) ListBlocks(ctx context.Context) ([]broker.Block, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	raws, err := s.members(ctx, s.blocksKey(), s.blockKey)
	if err != nil {
		return nil, s.fail("list blocks", err)
	}
	out := make([]broker.Block, 0, len(raws))
	for _, raw := range raws {
		b, err := decodeBlock(raw)
		if err != nil {
			return nil, err
		}
		out = append(out, *b)
	}
	slices.SortFunc(out, func(a, b broker.Block) int { return cmp.Compare(a.Workload, b.Workload) })
	return out, nil
}

// DeploymentID reads the deployment id under the prefix, creating it on
// the first call (deploymentScript: one atomic step, so instances starting
// together agree on the first one written). With MinReplicas set, the
// answer waits for the replicas, as a block's write does: an id a failover
// lost would be created again, different. Every instance configured with
// this Redis and prefix gets the same id, whatever address it reaches
// Redis by. An id already stored is read without waiting for replicas
// (a read writes nothing WAIT could confirm), so an instance starts while
// the replicas are down, as it serves token exchanges then.
func (s *Store) DeploymentID(ctx context.Context) (string, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	key := s.deploymentKey()
	id, err := s.client.Get(ctx, key).Result()
	if err == nil {
		return id, nil
	}
	if !errors.Is(err, redis.Nil) {
		return "", s.fail("deployment id", err)
	}
	err = s.durably(ctx, key, func(c redis.Cmdable) error {
		var err error
		id, err = deploymentScript.Run(ctx, c, []string{key}, broker.NewID(broker.PrefixDeployment)).Text()
		return err
	})
	if err != nil {
		return "", s.fail("deployment id", err)
	}
	return id, nil
}

// KeepDeploymentID puts id back as the deployment id when the store has
// none (its data was lost while this instance ran: the revocation cache
// writes back the blocks and revocations, and this the id, so that an
// instance restarted later does not take the loss for one no instance ran
// through), and returns the id stored: id, or the one another instance
// created meanwhile. As DeploymentID's creation, it waits for the replicas
// with MinReplicas set.
func (s *Store) KeepDeploymentID(ctx context.Context, id string) (string, error) {
	if id == "" {
		return "", invalid("empty deployment id")
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	key := s.deploymentKey()
	var got string
	err := s.durably(ctx, key, func(c redis.Cmdable) error {
		var err error
		got, err = deploymentScript.Run(ctx, c, []string{key}, id).Text()
		return err
	})
	if err != nil {
		return "", s.fail("keep deployment id", err)
	}
	return got, nil
}

// deploymentScript: KEYS deployment; ARGV a new id. Returns the stored id,
// storing ARGV[1] (no TTL) when there is none.
var deploymentScript = redis.NewScript(`
local id = redis.call('GET', KEYS[1])
if id then
  return id
end
redis.call('SET', KEYS[1], ARGV[1])
return ARGV[1]
`)

// PutRetiringKey records name's until in the retiring hash, keeping the
// later of it and the one stored (retireScript, one atomic step).
func (s *Store) PutRetiringKey(ctx context.Context, name string, until time.Time) error {
	if name == "" || until.IsZero() {
		return invalid("retiring key without name or until")
	}
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	key := s.retiringKey()
	err := s.durably(ctx, key, func(c redis.Cmdable) error {
		return retireScript.Run(ctx, c, []string{key}, name, broker.RetireMillis(until)).Err()
	})
	if err != nil {
		return s.fail("put retiring key "+name, err)
	}
	return nil
}

// retireScript: KEYS jwks:retiring; ARGV name, until (unix ms). Sets the
// field unless it holds a later or equal until; returns 1 when it did.
var retireScript = redis.NewScript(`
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if cur and cur >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
`)

// RetiringKeys lists the retiring keys whose until is after now and removes
// the others (retiringScript, one atomic step).
func (s *Store) RetiringKeys(ctx context.Context, now time.Time) (map[string]time.Time, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	res, err := retiringScript.Run(ctx, s.client, []string{s.retiringKey()}, now.UnixMilli()).StringSlice()
	if err != nil {
		return nil, s.fail("list retiring keys", err)
	}
	out := make(map[string]time.Time, len(res)/2)
	for i := 0; i+1 < len(res); i += 2 {
		ms, err := strconv.ParseInt(res[i+1], 10, 64)
		if err != nil {
			return nil, corrupt("retiring key "+res[i], err)
		}
		out[res[i]] = time.UnixMilli(ms).UTC()
	}
	return out, nil
}

// retiringScript: KEYS jwks:retiring; ARGV now (unix ms). Returns name,
// until pairs of the fields whose until is after now, and deletes the
// fields whose until is not (a field that is not a number is returned,
// for the caller to report).
var retiringScript = redis.NewScript(`
local all = redis.call('HGETALL', KEYS[1])
local now = tonumber(ARGV[1])
local out = {}
for i = 1, #all, 2 do
  local u = tonumber(all[i + 1])
  if u and u <= now then
    redis.call('HDEL', KEYS[1], all[i])
  else
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
return out
`)

// AcksReplicas reports whether writes wait for replicas to acknowledge
// them: Options.MinReplicas above 0 (broker.ReplicaAcker).
func (s *Store) AcksReplicas() bool { return s.minReplicas > 0 }

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	if err := s.client.Ping(ctx).Err(); err != nil {
		return s.fail("ping", err)
	}
	return nil
}
