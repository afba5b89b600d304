package redisstore

import (
	"encoding/json"
	"math"
	"reflect"
	"runtime"
	"strconv"
	"testing"
	"time"
	"unsafe"

	"github.com/keytrail/keytrail/broker"
)

// oneByOneScriptArgs is how issuanceScriptArgs built KEYS and ARGV before
// they shared one allocation: each key from its function, each value boxed.
func oneByOneScriptArgs(s *Store, is *broker.Issuance) (keys []string, args []any) {
	c := *is
	c.IssuedAt, c.ExpiresAt, c.RevokedAt = c.IssuedAt.UTC(), c.ExpiresAt.UTC(), c.RevokedAt.UTC()
	c.Refs.ExpiresAt = c.Refs.ExpiresAt.UTC()
	raw, err := json.Marshal(&c)
	if err != nil {
		panic(err)
	}
	ttl := s.ttl(c.ExpiresAt)
	cutoff := "(" + strconv.FormatInt(s.now().Add(-s.retention).UnixMilli(), 10)
	keys = []string{s.issKey(c.ID)}
	for _, kind := range broker.RefKinds() {
		if v, _ := c.RefValue(kind); v != "" {
			keys = append(keys, s.refKey(kind, v))
		}
	}
	refs := len(keys) - 1
	keys = append(keys, s.allKey())
	for _, ix := range []struct{ name, v string }{{"workload", c.Workload}, {"owner", c.Owner}, {"session", c.SessionID}} {
		if ix.v != "" {
			keys = append(keys, s.idxKey(ix.name, ix.v))
		}
	}
	return keys, []any{raw, ttl.Milliseconds(), refs, c.ID, strconv.FormatInt(int64(score(c.ExpiresAt)), 10), cutoff}
}

// asWritten is an ARGV value as go-redis writes it: a *string as its
// string, an *int64 as its int64 (proto.Writer.WriteArg), and an int64 in
// decimal, as a string holding those digits is written.
func asWritten(v any) any {
	switch v := v.(type) {
	case *string:
		return *v
	case *int64:
		return strconv.FormatInt(*v, 10)
	case int64:
		return strconv.FormatInt(v, 10)
	case int:
		return strconv.Itoa(v)
	}
	return v
}

// issuanceScriptArgs gives the KEYS and, as go-redis writes them, the ARGV
// that each key's function and each value boxed on its own gave, for
// issuances with every ref, none, long values, no owner or session, revoked.
func TestIssuanceScriptArgs(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.FixedZone("X", 3600))
	s := &Store{prefix: "kt{a}:", retention: 24 * time.Hour, now: func() time.Time { return now }}
	long := string(make([]byte, 700))
	full := &broker.Issuance{ID: "iss_1", Workload: "w", Owner: "o", SessionID: "ses_1", Grant: "g", Kind: "vault_token",
		IssuedAt: now, ExpiresAt: now.Add(15 * time.Minute),
		Refs:      broker.CredentialRefs{Fingerprint: "sha256:ab", Accessor: "acc", JTI: "j", LeaseID: "l", Username: "u", Serial: "s", ExpiresAt: now.Add(time.Minute)},
		RequestID: "req_1"}
	if n := len(broker.RefKinds()); n != len(scriptArgs{}.keys)-5 {
		t.Fatalf("%d ref kinds: scriptArgs.keys holds %d", n, len(scriptArgs{}.keys)-5)
	}
	bare := &broker.Issuance{ID: "iss_2", Workload: "w2"}
	longs := *full
	longs.Workload, longs.Refs.Accessor = long, long
	revoked := *full
	revoked.RevokedAt, revoked.RevocationID = now, "rev_1"
	// The same times in other locations: UTC, the local zone with a
	// monotonic reading (the broker's clock), a zone at offset 0 that is
	// not UTC, and UTC mixed with another offset.
	inZone := func(is *broker.Issuance, f func(time.Time) time.Time) *broker.Issuance {
		c := *is
		c.IssuedAt, c.ExpiresAt, c.RevokedAt, c.Refs.ExpiresAt = f(c.IssuedAt), f(c.ExpiresAt), f(c.RevokedAt), f(c.Refs.ExpiresAt)
		return &c
	}
	zero := time.FixedZone("Z0", 0)
	mono := time.Now()
	cases := map[string]*broker.Issuance{"full": full, "bare": bare, "long": &longs, "revoked": &revoked,
		"utc":         inZone(&revoked, time.Time.UTC),
		"utc-bare":    inZone(bare, time.Time.UTC),
		"local":       inZone(&revoked, func(t time.Time) time.Time { return mono.Add(t.Sub(now)) }),
		"zero-offset": inZone(&revoked, func(t time.Time) time.Time { return t.In(zero) }),
	}
	mixed := *cases["utc"]
	mixed.Refs.ExpiresAt = full.Refs.ExpiresAt
	cases["mixed"] = &mixed
	for name, is := range cases {
		wantKeys, wantArgs := oneByOneScriptArgs(s, is)
		keys, args, rev, err := s.issuanceScriptArgs(is)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(keys, wantKeys) {
			t.Errorf("%s: KEYS %q, want %q", name, keys, wantKeys)
		}
		if len(args) != len(wantArgs) {
			t.Fatalf("%s: %d ARGV, want %d", name, len(args), len(wantArgs))
		}
		for i := range args {
			if got, want := asWritten(args[i]), asWritten(wantArgs[i]); !reflect.DeepEqual(got, want) {
				t.Errorf("%s: ARGV[%d] written as %q, want %q", name, i+1, got, want)
			}
		}
		if rev != !is.RevokedAt.IsZero() {
			t.Errorf("%s: revoked %v", name, rev)
		}
	}
	utc := cases["utc"]
	n := testing.AllocsPerRun(100, func() { _, _, _, _ = s.issuanceScriptArgs(utc) })
	// The scriptArgs, the keys' string, ARGV[1]'s box and json.Marshal's own
	// (measured once: under -race two measurements may differ, raceSlack).
	// Times at another offset than UTC's cost one more: the UTC copy.
	m := marshalAllocs(utc)
	if n > float64(3+m+raceSlack) {
		t.Errorf("issuanceScriptArgs: %v allocations, json.Marshal %d of them: want at most 3 more", n, m)
	} else {
		t.Logf("issuanceScriptArgs: %v allocations, json.Marshal %d of them", n, m)
	}
}

// TestIssuanceJSONWithoutCopy: an issuance whose times are UTC already
// is encoded as it is, without the copy (with its times made UTC) that one
// at another offset needs, and to the same bytes (TestIssuanceScriptArgs).
func TestIssuanceJSONWithoutCopy(t *testing.T) {
	now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	s := &Store{prefix: "kt{a}:", retention: 24 * time.Hour, now: func() time.Time { return now }}
	utc := &broker.Issuance{ID: "iss_1", Workload: "w", Owner: "o", SessionID: "ses_1", Grant: "g", Kind: "proxy",
		IssuedAt: now, ExpiresAt: now.Add(15 * time.Minute),
		Refs:      broker.CredentialRefs{Fingerprint: "sha256:ab", ExpiresAt: now.Add(15 * time.Minute)},
		RequestID: "req_1"}
	other := *utc
	other.IssuedAt = other.IssuedAt.In(time.FixedZone("X", 3600))
	// The least of three rounds: a goroutine left by another test may
	// allocate during one.
	bytesPerCall := func(is *broker.Issuance) int64 {
		const calls = 1000
		least := int64(math.MaxInt64)
		for range 3 {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range calls {
				_, _, _, _ = s.issuanceScriptArgs(is)
			}
			runtime.ReadMemStats(&after)
			least = min(least, int64(after.TotalAlloc-before.TotalAlloc)/calls)
		}
		return least
	}
	u, o := bytesPerCall(utc), bytesPerCall(&other)
	// Half the issuance's size: the other call's JSON differs too (its
	// offset), and under -race with other packages' tests running the
	// difference came out 472 B for the 480 B copy; the copy's absence is
	// what is asserted (0 B apart on the code that copied).
	if size := int64(unsafe.Sizeof(broker.Issuance{})); u > o-size/2 {
		t.Errorf("issuanceScriptArgs allocates %d B per UTC issuance, %d B for one at +01:00: want at least half the issuance's %d B fewer (no copy)", u, o, size)
	} else {
		t.Logf("%d B per UTC issuance, %d B at +01:00", u, o)
	}
}

func marshalAllocs(is *broker.Issuance) int {
	c := *is
	return int(testing.AllocsPerRun(100, func() { _, _ = json.Marshal(&c) }))
}
