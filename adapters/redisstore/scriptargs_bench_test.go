package redisstore

import (
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/storetest"
)

// BenchmarkIssuanceScriptArgs is a put's KEYS and ARGV (the record's JSON
// included) for storetest's sample issuance, whose times are UTC, without
// Redis.
func BenchmarkIssuanceScriptArgs(b *testing.B) {
	now := storetest.Epoch()
	s := &Store{prefix: "kt{a}:", retention: 24 * time.Hour, now: func() time.Time { return now }}
	is := storetest.SampleIssuance("iss_bench_args", now)
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, err := s.issuanceScriptArgs(is); err != nil {
			b.Fatal(err)
		}
	}
}
