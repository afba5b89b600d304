package e2e

// Soak (issue #8): a mixed load (exchange, proxy, revoke) against one broker
// over a real Vault and Redis, for KEYTRAIL_SOAK_DURATION (default 30m),
// sampling the broker's resident memory and goroutines every
// KEYTRAIL_SOAK_SAMPLE (default 30s). Not run in CI; scripts/soak.sh runs it:
//
//	go test ./e2e -run '^$' -bench Soak -benchtime 1x -timeout 2h -v

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
)

func BenchmarkSoak(b *testing.B) {
	dur, sample := 30*time.Minute, 30*time.Second
	if d, err := time.ParseDuration(os.Getenv("KEYTRAIL_SOAK_DURATION")); err == nil && d > 0 {
		dur = d
	}
	if d, err := time.ParseDuration(os.Getenv("KEYTRAIL_SOAK_SAMPLE")); err == nil && d > 0 {
		sample = d
	}
	for b.Loop() {
		c := startCluster(b, 1)
		base := c.nodes[0].URL
		var (
			ops      = map[string]int{}
			bad      = map[string]int{}
			samples  []string
			firstRSS float64
		)
		record := func(elapsed time.Duration) {
			m := metrics(b, base)
			rss, gor := metricValue(m, "process_resident_memory_bytes"), metricValue(m, "go_goroutines")
			if firstRSS == 0 {
				firstRSS = rss
			}
			line := fmt.Sprintf("t=%-8v rss=%6.1fMiB goroutines=%5.0f exchanges=%d proxied=%d revokes=%d failures=%v",
				elapsed.Round(time.Second), rss/(1<<20), gor, ops["exchange"], ops["proxy"], ops["revoke"], bad)
			samples = append(samples, line)
			b.Log(line)
		}
		start := time.Now()
		next := start
		for i := 0; time.Since(start) < dur; i++ {
			if time.Now().After(next) {
				record(time.Since(start))
				next = next.Add(sample)
			}
			session := fmt.Sprintf("soak-%d", i)
			if st, _ := c.exchange(b, 0, "system:serviceaccount:payments:api", session, "payments-vault"); st == 200 {
				ops["exchange"]++
			} else {
				bad[fmt.Sprintf("exchange-%d", st)]++
			}
			st, px := c.exchange(b, 0, "system:serviceaccount:payments:api", session, "pay-proxy")
			if st != 200 {
				bad[fmt.Sprintf("proxy-exchange-%d", st)]++
				continue
			}
			for range 3 {
				if ps := c.proxyStatus(b, 0, px.AccessToken); ps == 200 {
					ops["proxy"]++
				} else {
					bad[fmt.Sprintf("proxy-%d", ps)]++
				}
			}
			if i%10 == 0 {
				if rs, _ := c.revoke(b, 0, fmt.Sprintf(`{"issuance_id": %q, "reason": "soak"}`, px.IssuanceID)); rs == 200 {
					ops["revoke"]++
				} else {
					bad[fmt.Sprintf("revoke-%d", rs)]++
				}
				if ps := c.proxyStatus(b, 0, px.AccessToken); ps == 200 {
					b.Errorf("a revoked proxy credential still works (issuance %s)", px.IssuanceID)
				}
			}
		}
		record(time.Since(start))
		b.Logf("soak summary (%v):\n%s", dur, strings.Join(samples, "\n"))
		// Nothing crashed, so the reconciliation (every 5 minutes) must
		// not have revoked anything: every Vault token the soak made is
		// recorded and audited.
		if orphans := orphanReasons(b, c.audits[0]); len(orphans) > 0 {
			b.Errorf("orphan_revoked events in a soak without crashes, by reason: %v", orphans)
		}
		b.ReportMetric(float64(ops["exchange"]+ops["proxy"]+ops["revoke"])/time.Since(start).Seconds(), "ops/s")
	}
}

// orphanReasons counts the orphan_revoked events of an audit log by reason.
func orphanReasons(tb testing.TB, path string) map[string]int {
	tb.Helper()
	out := map[string]int{}
	eachAuditEvent(tb, path, func(ev *audit.Event) {
		if ev.Type == audit.TypeOrphanRevoked {
			out[ev.Reason]++
		}
	})
	return out
}
