package redisstore_test

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"

	"github.com/keytrail/keytrail/adapters/redisstore"
	"github.com/keytrail/keytrail/adapters/storetest"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
)

// documentedKey matches the key layout of the package doc under the
// prefix "{lay}:"; the groups name the key's class.
var documentedKey = regexp.MustCompile(`^\{lay\}:(?:` +
	`(?P<iss>iss:[^:]+)|` +
	`(?P<ref>ref:(?:fingerprint|accessor|jti|lease_id|username|serial|request_id):.+)|` +
	`(?P<idx>idx:all|idx:(?:workload|owner|session):.+)|` +
	`(?P<call>unblock:.+|putrev:[^:]+)|` +
	`(?P<durable>rev:[^:]+|revs|revs:time|revs:pending|revs:version|revs:changes|block:.+|blocks|deployment|jwks:retiring))$`)

// keyClass is the class documentedKey gives key, "" when it is not
// documented.
func keyClass(key string) string {
	m := documentedKey.FindStringSubmatch(key)
	if m == nil {
		return ""
	}
	for i, name := range documentedKey.SubexpNames() {
		if name != "" && m[i] != "" {
			return name
		}
	}
	return ""
}

// scanKeys returns every key of the server with its PTTL.
func scanKeys(t *testing.T, c *redis.Client) map[string]time.Duration {
	t.Helper()
	out := map[string]time.Duration{}
	iter := c.Scan(t.Context(), 0, "*", 100).Iterator()
	for iter.Next(t.Context()) {
		ttl, err := c.PTTL(t.Context(), iter.Val()).Result()
		if err != nil {
			t.Fatalf("PTTL %s = %v", iter.Val(), err)
		}
		out[iter.Val()] = ttl
	}
	if err := iter.Err(); err != nil {
		t.Fatalf("SCAN = %v", err)
	}
	return out
}

// TestKeyLayoutAfterWorkloadAndRetention writes what the broker writes
// (issuances, an overwrite that moves one to other index values, revoked
// marks, revocations created and updated, blocks set and lifted), then
// checks against a real Redis that every key is one the package doc lists,
// with the TTL it documents; and, once the short-lived issuances are past
// retention, that nothing of them is left: no record, no ref, no index
// member, while revocations (one still pending on such an issuance) and
// blocks stay, without a TTL.
func TestKeyLayoutAfterWorkloadAndRetention(t *testing.T) {
	r := harness.StartRedis(t)
	s := newStore(t, r, redisstore.Options{Prefix: "{lay}:", Retention: time.Millisecond, Now: time.Now})
	c := rawClient(t, r)
	ctx := t.Context()
	now := time.Now()

	short := func(id, workload, session string) *broker.Issuance {
		is := storetest.SampleIssuance(id, now.Add(-15*time.Minute))
		is.Workload, is.SessionID = workload, session
		is.ExpiresAt = now.Add(100 * time.Millisecond)
		is.Refs.ExpiresAt = is.ExpiresAt
		return is
	}
	long := storetest.SampleIssuance("iss_long", now.Add(time.Hour)) // outlives the test
	a, b, moved := short("iss_a", "w1", "s1"), short("iss_b", "w1", "s2"), short("iss_m", "w1", "s2")
	for _, is := range []*broker.Issuance{long, a, b, moved} {
		if err := s.PutIssuance(ctx, is); err != nil {
			t.Fatalf("PutIssuance(%s) = %v", is.ID, err)
		}
	}
	moved.Workload, moved.Owner, moved.SessionID = "w2", "team-other", "s3"
	moved.Refs.Accessor = "acc-moved"
	moved.RevokedAt, moved.RevocationID = now, "rev_done"
	if err := s.PutIssuance(ctx, moved); err != nil {
		t.Fatalf("PutIssuance(%s, moved) = %v", moved.ID, err)
	}
	pending := &broker.Revocation{ID: "rev_pending", Selector: broker.RevokeSelector{IssuanceID: a.ID}, CreatedAt: now, Matched: 1, Pending: []string{a.ID}}
	done := &broker.Revocation{ID: "rev_done", Selector: broker.RevokeSelector{Workload: "w2"}, Block: true, CreatedAt: now, Blocks: []string{"w2"}}
	for _, rev := range []*broker.Revocation{pending, done} {
		if err := s.PutRevocation(ctx, rev); err != nil {
			t.Fatalf("PutRevocation(%s) = %v", rev.ID, err)
		}
	}
	if _, err := s.UpdateRevocation(ctx, done.ID, func(r *broker.Revocation) error {
		r.Revoked, r.CompletedAt = []string{moved.ID}, now
		return nil
	}); err != nil {
		t.Fatalf("UpdateRevocation(%s) = %v", done.ID, err)
	}
	for _, w := range []string{"w2", "w3"} {
		if err := s.PutBlock(ctx, broker.Block{Workload: w, RevocationID: done.ID, CreatedAt: now}); err != nil {
			t.Fatalf("PutBlock(%s) = %v", w, err)
		}
	}
	if err := s.DeleteBlock(ctx, "w3", done.ID); err != nil {
		t.Fatalf("DeleteBlock(w3) = %v", err)
	}
	if _, err := s.DeploymentID(ctx); err != nil {
		t.Fatalf("DeploymentID() = %v", err)
	}
	if err := s.PutRetiringKey(ctx, "key-old", now.Add(time.Hour)); err != nil {
		t.Fatalf("PutRetiringKey() = %v", err)
	}

	keys := scanKeys(t, c)
	for key, ttl := range keys {
		switch class := keyClass(key); class {
		case "":
			t.Errorf("key %s is not in the documented layout", key)
		case "durable":
			if ttl != -1 {
				t.Errorf("key %s has TTL %v, want none (revocations and blocks never expire)", key, ttl)
			}
		default:
			if ttl <= 0 {
				t.Errorf("key %s (%s) has TTL %v, want one", key, class, ttl)
			}
		}
	}
	for _, want := range []string{
		"{lay}:iss:iss_a", "{lay}:ref:accessor:acc-moved", "{lay}:ref:request_id:req-iss_a", "{lay}:idx:all",
		"{lay}:idx:workload:w2", "{lay}:idx:owner:team-other", "{lay}:idx:session:s3",
		"{lay}:rev:rev_pending", "{lay}:revs", "{lay}:revs:time", "{lay}:revs:pending", "{lay}:revs:version",
		"{lay}:revs:changes", "{lay}:block:w2", "{lay}:blocks", "{lay}:deployment", "{lay}:jwks:retiring",
	} {
		if _, ok := keys[want]; !ok {
			t.Errorf("key %s missing after the workload", want)
		}
	}
	if _, ok := keys["{lay}:block:w3"]; ok {
		t.Errorf("key {lay}:block:w3 still there after DeleteBlock")
	}

	// Past retention: Redis drops the short-lived records by their TTL;
	// the next put prunes the shared indexes.
	waitFor(t, 10*time.Second, "the short-lived issuance records expired", func() bool {
		n, err := c.Exists(ctx, "{lay}:iss:iss_a", "{lay}:iss:iss_b", "{lay}:iss:iss_m").Result()
		return err == nil && n == 0
	})
	fresh := storetest.SampleIssuance("iss_fresh", time.Now())
	fresh.Workload = "w1"
	if err := s.PutIssuance(ctx, fresh); err != nil {
		t.Fatalf("PutIssuance(%s) = %v", fresh.ID, err)
	}
	keys = scanKeys(t, c)
	for key := range keys {
		for _, gone := range []string{"iss_a", "iss_b", "iss_m", "acc-moved", ":s1", ":s2", ":s3", ":w2", "team-other"} {
			if strings.Contains(key, gone) && !strings.HasPrefix(key, "{lay}:block:") {
				t.Errorf("key %s left past retention", key)
			}
		}
		switch keyClass(key) {
		case "ref":
			id, err := c.Get(ctx, key).Result()
			if err != nil {
				t.Fatalf("GET %s = %v", key, err)
			}
			if _, ok := keys["{lay}:iss:"+id]; !ok {
				t.Errorf("ref %s names %s, which has no record", key, id)
			}
		case "idx":
			members, err := c.ZRange(ctx, key, 0, -1).Result()
			if err != nil {
				t.Fatalf("ZRANGE %s = %v", key, err)
			}
			for _, id := range members {
				if _, ok := keys["{lay}:iss:"+id]; !ok {
					t.Errorf("index %s lists %s, which has no record", key, id)
				}
			}
		}
	}
	for _, key := range []string{"{lay}:rev:rev_pending", "{lay}:rev:rev_done", "{lay}:block:w2"} {
		if ttl, ok := keys[key]; !ok || ttl != -1 {
			t.Errorf("%s past retention: present %v, TTL %v; want present without TTL", key, ok, ttl)
		}
	}
	got, err := s.ListRevocations(ctx, broker.RevocationFilter{Pending: true})
	if err != nil || len(got) != 1 || got[0].ID != pending.ID || !cmp.Equal(got[0].Pending, []string{a.ID}) {
		t.Errorf("pending revocations past retention = %+v, %v; want %s still pending on %s", got, err, pending.ID, a.ID)
	}
	if _, err := s.GetIssuance(ctx, a.ID); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("GetIssuance(%s) past retention = %v, want not found", a.ID, err)
	}
	// A retiring key past its until is removed by the next read; with the
	// last one, the hash is gone.
	if got, err := s.RetiringKeys(ctx, now.Add(2*time.Hour)); err != nil || len(got) != 0 {
		t.Errorf("RetiringKeys() past every until = %v, %v; want none", got, err)
	}
	if n, err := c.Exists(ctx, "{lay}:jwks:retiring").Result(); err != nil || n != 0 {
		t.Errorf("{lay}:jwks:retiring after its last key expired: exists %d, %v; want gone", n, err)
	}
}

// TestReadsRecordsOfEarlierVersions: records as an earlier version wrote
// them, without the fields added since (an issuance's credential mount and
// audit chain; a revocation's sweep time, blocks and unblock times), read
// through every path and update like new ones.
func TestReadsRecordsOfEarlierVersions(t *testing.T) {
	r := harness.StartRedis(t)
	s := newStore(t, r, redisstore.Options{Prefix: "{old}:"})
	c := rawClient(t, r)
	ctx := t.Context()
	exp := storetest.Epoch().Add(15 * time.Minute)
	oldIssuance := `{"issuance_id":"iss_old","workload":"payments-api","owner":"team-payments","session_id":"ses_old",` +
		`"grant":"payments-cert","kind":"pki","identity":{"iss":"https://k8s.example","sub":"sa"},"source":{"ip":"10.0.0.7"},` +
		`"issued_at":"2030-01-02T03:04:05.123456789Z","expires_at":"2030-01-02T03:19:05.123456789Z",` +
		`"credential":{"fingerprint":"sha256:old","serial":"3d:0a:80","expires_at":"2030-01-02T03:19:05.123456789Z"},` +
		`"request_id":"req-old"}`
	oldRevocation := `{"revocation_id":"rev_old","selector":{"workload":"payments-api"},"reason":"leak","block":true,` +
		`"created_at":"2030-01-02T03:04:05Z","matched":1,"revoked":null,"pending":["iss_old"],"failed":null}`
	ttl := 24 * time.Hour
	for key, val := range map[string]string{
		"{old}:iss:iss_old":                oldIssuance,
		"{old}:ref:fingerprint:sha256:old": "iss_old",
		"{old}:ref:serial:3d:0a:80":        "iss_old",
		"{old}:ref:request_id:req-old":     "iss_old",
		"{old}:rev:rev_old":                oldRevocation,
		"{old}:block:payments-api":         `{"workload":"payments-api","reason":"leak","created_at":"2030-01-02T03:04:05Z"}`,
	} {
		d := ttl
		if strings.Contains(key, ":rev:") || strings.Contains(key, ":block:") {
			d = 0
		}
		if err := c.Set(ctx, key, val, d).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, key := range []string{"{old}:idx:all", "{old}:idx:workload:payments-api", "{old}:idx:owner:team-payments", "{old}:idx:session:ses_old"} {
		if err := c.ZAdd(ctx, key, redis.Z{Score: float64(exp.UnixMilli()), Member: "iss_old"}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.SAdd(ctx, "{old}:revs", "rev_old").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.SAdd(ctx, "{old}:blocks", "payments-api").Err(); err != nil {
		t.Fatal(err)
	}
	s = newStore(t, r, redisstore.Options{Prefix: "{old}:"}) // indexes the old revocation

	var want broker.Issuance
	if err := json.Unmarshal([]byte(oldIssuance), &want); err != nil {
		t.Fatal(err)
	}
	reads := map[string]func() (*broker.Issuance, error){
		"get":         func() (*broker.Issuance, error) { return s.GetIssuance(ctx, "iss_old") },
		"find-serial": func() (*broker.Issuance, error) { return s.FindIssuance(ctx, broker.RefSerial, "3d:0a:80") },
		"find-many": func() (*broker.Issuance, error) {
			l, err := s.FindIssuances(ctx, broker.RefFingerprint, []string{"sha256:old"})
			if err != nil || len(l) != 1 {
				return nil, err
			}
			return l[0], nil
		},
		"list-active-session": func() (*broker.Issuance, error) {
			l, err := s.ListIssuances(ctx, broker.IssuanceFilter{SessionID: "ses_old", ActiveAt: storetest.Epoch()})
			if err != nil || len(l) != 1 {
				return nil, err
			}
			return l[0], nil
		},
	}
	for name, read := range reads {
		got, err := read()
		if err != nil || got == nil {
			t.Errorf("%s of an earlier version's issuance = %v, %v; want it", name, got, err)
			continue
		}
		if d := cmp.Diff(&want, got); d != "" || got.Refs.Mount != "" || got.AuditChain != "" {
			t.Errorf("%s of an earlier version's issuance (-want +got):\n%s", name, d)
		}
	}
	if got, err := s.ListRevocations(ctx, broker.RevocationFilter{Pending: true, Since: storetest.Epoch().Add(-time.Hour)}); err != nil || len(got) != 1 || !got[0].SweepAt.IsZero() || got[0].Unblocked != nil {
		t.Errorf("pending revocations = %+v, %v; want rev_old, no sweep time, no unblock times", got, err)
	}
	upd, err := s.UpdateRevocation(ctx, "rev_old", func(r *broker.Revocation) error {
		r.Revoked, r.Pending, r.CompletedAt = append(r.Revoked, r.Pending...), nil, storetest.Epoch().Add(time.Minute)
		return nil
	})
	if err != nil || !cmp.Equal(upd.Revoked, []string{"iss_old"}) || upd.CompletedAt.IsZero() {
		t.Errorf("UpdateRevocation(rev_old) = %+v, %v; want it completed with iss_old revoked", upd, err)
	}
	if got, err := s.ListRevocations(context.Background(), broker.RevocationFilter{Pending: true}); err != nil || len(got) != 0 {
		t.Errorf("pending after completing rev_old = %+v, %v; want none", got, err)
	}
	if b, err := s.GetBlock(ctx, "payments-api"); err != nil || b.RevocationID != "" {
		t.Errorf("GetBlock(payments-api) = %+v, %v; want the block without revocation id", b, err)
	}
}
