package redisstore

import (
	"context"
	"encoding/json"
	"errors"
	"math/rand"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
)

// revokedAtScript runs keepRevoked's revokedAt on ARGV[1] and returns
// {value}, or nil when it finds no top-level revoked_at.
var revokedAtScript = func() *redis.Script {
	src := keepRevoked("0")
	return redis.NewScript(src[:strings.Index(src, "local cur")] +
		"local v = revokedAt(ARGV[1])\nif v == nil then return false end\nreturn {v}\n")
}()

// deepest is a value nested past cjson's 1,000 levels, arrays and objects
// alternating, with keys spelling the mark.
func deepest(n int) any {
	var v any = `"revoked_at":"x"`
	for i := range n {
		if i%2 == 0 {
			v = []any{v}
		} else {
			v = map[string]any{"revoked_at": v}
		}
	}
	return v
}

// TestRevokedAtScan checks, on a real Redis, that the script's revokedAt
// reads a record's top-level revoked_at as Go does where cjson refuses
// (claims nested past 1,000 levels, so the scan runs): hand-made records
// with look-alikes (escaped quotes, a value spelling the mark, whitespace,
// arrays inside objects, the mark after the deep claim) and random
// issuances as json.Marshal writes them.
func TestRevokedAtScan(t *testing.T) {
	r := harness.StartRedis(t)
	c := redis.NewClient(&redis.Options{Addr: r.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	deep := `"deep":` + strings.Repeat("[", 1100) + strings.Repeat("]", 1100)
	run := func(t *testing.T, raw string) (string, bool) {
		t.Helper()
		v, err := revokedAtScript.Run(context.Background(), c, nil, raw).Result()
		if errors.Is(err, redis.Nil) {
			return "", false
		}
		if err != nil {
			t.Fatalf("revokedAt(%.100q) = %v", raw, err)
		}
		return v.([]any)[0].(string), true
	}
	for _, tc := range []struct{ body, want string }{
		{`"a":"\"revoked_at\":\"x\"","b":1`, ""},
		{`"a":"\u0022revoked_at\u0022:\u0022x"`, ""},
		{`"a":"x\\","revoked_at":"T"`, "T"},
		{`"a":"\\\"","revoked_at":"T"`, "T"},
		{`"a" : "b" , "revoked_at" : "T" `, "T"},
		{"\n\t\"revoked_at\"\t:\n\"T\"", "T"},
		{`"a":[{"revoked_at":"no"},"revoked_at"],"revoked_at":"T"`, "T"},
		{`"a":{"b":[1,{"c":"]"}]},"revoked_at":"T"`, "T"},
		{`"a":[[["x"]]],"b":{"revoked_at":"no"}`, ""},
		{`"a":"é\"ü{[","revoked_at":"T"`, "T"},
	} {
		for _, raw := range []string{"{" + deep + "," + tc.body + "}", "{" + tc.body + "," + deep + "}"} {
			if got, ok := run(t, raw); got != tc.want || ok != (tc.want != "") {
				t.Errorf("revokedAt(%.40q...%q) = %q, %v; want %q", raw, tc.body, got, ok, tc.want)
			}
		}
	}

	rng := rand.New(rand.NewSource(1))
	bits := []string{`"`, `\`, `{`, `}`, `[`, `]`, `:`, `,`, ` `, "revoked_at", `"revoked_at":"x"`, "é", "\u2028", "<", "\x00", `\u`, "\xff", "a"}
	str := func() string {
		var b strings.Builder
		for n := rng.Intn(8); n > 0; n-- {
			b.WriteString(bits[rng.Intn(len(bits))])
		}
		return b.String()
	}
	var value func(depth int) any
	value = func(depth int) any {
		switch k := rng.Intn(6); {
		case depth > 3 || k == 0:
			return str()
		case k == 1:
			return rng.Float64()
		case k == 2:
			m := map[string]any{}
			for n := rng.Intn(4); n > 0; n-- {
				m[str()] = value(depth + 1)
			}
			return m
		case k == 3:
			a := []any{}
			for n := rng.Intn(4); n > 0; n-- {
				a = append(a, value(depth+1))
			}
			return a
		default:
			return nil
		}
	}
	for range 300 {
		is := broker.Issuance{ID: str(), Workload: str(), Owner: str(), SessionID: str(), Grant: str(), Kind: str(),
			RequestID: str(), AuditChain: str(), RevocationID: str(), Claims: map[string]any{str(): deepest(1001 + rng.Intn(10))}}
		for n := rng.Intn(5); n > 0; n-- {
			is.Claims[str()] = value(0)
		}
		want := ""
		if rng.Intn(2) == 0 {
			is.RevokedAt = time.UnixMilli(rng.Int63n(1e13)).UTC()
			want = is.RevokedAt.Format(time.RFC3339Nano)
		}
		raw, err := json.Marshal(&is)
		if err != nil {
			t.Fatal(err)
		}
		if got, ok := run(t, string(raw)); got != want || ok != (want != "") {
			t.Errorf("revokedAt(%.200q) = %q, %v; want %q", raw, got, ok, want)
		}
	}
}
