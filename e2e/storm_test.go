package e2e

// Start-up storm (issue #8): many distinct workload identities exchange
// their identity tokens within a few seconds against one broker with a real
// Vault and a real Redis. BenchmarkStartupStorm is the full measurement (not
// run in CI):
//
//	go test ./e2e -run '^$' -bench StartupStorm -benchtime 1x -timeout 20m -v
//
// with KEYTRAIL_STORM_N (default 10000) identities spread over
// KEYTRAIL_STORM_SECONDS (default 10). TestStartupStormSmoke runs 200 in CI.

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/e2e/harness"
)

type stormResult struct {
	n             int
	wall          time.Duration
	statuses      map[int]int
	noRetryAfter  int // 429 or 503 without Retry-After
	connErrors    int
	p50, p99, max time.Duration
	jwksFetches   int64
	peakRSSKB     int64 // VmHWM of the broker process, 0 when unknown
	issueEvents   int
}

func (r stormResult) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "identities %d in %v\n", r.n, r.wall.Round(time.Millisecond))
	fmt.Fprintf(&b, "  200 %d, 429 %d, 503 %d, other %d, connection errors %d, 429/503 without Retry-After %d\n",
		r.statuses[200], r.statuses[429], r.statuses[503], r.other(), r.connErrors, r.noRetryAfter)
	fmt.Fprintf(&b, "  latency p50 %v, p99 %v, max %v\n", r.p50, r.p99, r.max)
	fmt.Fprintf(&b, "  JWKS fetches (one issuer) %d\n", r.jwksFetches)
	fmt.Fprintf(&b, "  broker peak RSS (VmHWM) %d KiB\n", r.peakRSSKB)
	fmt.Fprintf(&b, "  audit issue events %d vs successes %d\n", r.issueEvents, r.statuses[200])
	return b.String()
}

func (r stormResult) other() int {
	n := 0
	for st, c := range r.statuses {
		if st != 200 && st != 429 && st != 503 {
			n += c
		}
	}
	return n
}

// runStorm starts Vault, Redis and one broker, then makes n distinct
// identities exchange, spread evenly over `over`.
func runStorm(tb testing.TB, n int, over time.Duration) stormResult {
	v := harness.StartVault(tb)
	setupVaultPolicies(tb, v)
	rd := harness.StartRedis(tb)
	s := startFaultStack(tb, v, faultOptions{redisURL: rd.URL()})

	tokens := make([]string, n)
	now := time.Now()
	for i := range tokens {
		tok, err := s.issuer.Sign(jwt.MapClaims{"iss": s.issuer.url, "aud": "keytrail", "sub": "app-storm-" + strconv.Itoa(i),
			"iat": now.Unix(), "exp": now.Add(time.Hour).Unix()})
		if err != nil {
			tb.Fatal(err)
		}
		tokens[i] = tok
	}
	fetchesBefore := s.issuer.JWKSFetches()

	client := &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024}}
	var (
		mu   sync.Mutex
		res  = stormResult{n: n, statuses: map[int]int{}}
		lats = make([]time.Duration, 0, n)
		wg   sync.WaitGroup
	)
	sem := make(chan struct{}, 512)
	step := over / time.Duration(n)
	start := time.Now()
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * step)); d > 0 {
			timer := time.NewTimer(d)
			<-timer.C
		}
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			t0 := time.Now()
			st, retryAfter, err := postExchange(client, s.url, tokens[i])
			lat := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				res.connErrors++
				return
			}
			res.statuses[st]++
			if (st == 429 || st == 503) && retryAfter == "" {
				res.noRetryAfter++
			}
			lats = append(lats, lat)
		}()
	}
	wg.Wait()
	res.wall = time.Since(start)
	sort.Slice(lats, func(i, j int) bool { return lats[i] < lats[j] })
	if len(lats) > 0 {
		res.p50 = lats[len(lats)/2]
		res.p99 = lats[min(len(lats)-1, len(lats)*99/100)]
		res.max = lats[len(lats)-1]
	}
	res.jwksFetches = s.issuer.JWKSFetches() - fetchesBefore
	res.peakRSSKB = brokerPeakRSS(tb, s.broker.Config)
	for _, ev := range auditEvents(tb, s.auditPath) {
		if ev.Type == audit.TypeIssue {
			res.issueEvents++
		}
	}
	return res
}

func postExchange(c *http.Client, base, subjectToken string) (int, string, error) {
	form := "grant_type=" + "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange" +
		"&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&audience=app-vault&subject_token=" + subjectToken
	resp, err := c.Post(base+"/v1/token", "application/x-www-form-urlencoded", strings.NewReader(form))
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode, resp.Header.Get("Retry-After"), nil
}

// brokerPeakRSS finds the broker process by its config path and reads its
// VmHWM from /proc.
func brokerPeakRSS(tb testing.TB, cfgPath string) int64 {
	tb.Helper()
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		raw, err := os.ReadFile(p)
		if err != nil || !strings.Contains(string(raw), cfgPath) || !strings.Contains(string(raw), "server") {
			continue
		}
		status, err := os.ReadFile(filepath.Join(filepath.Dir(p), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
				return kb
			}
		}
	}
	tb.Logf("storm: broker process for %s not found in /proc", cfgPath)
	return 0
}

// checkStorm asserts what the issue requires of any storm.
func checkStorm(tb testing.TB, r stormResult) {
	tb.Helper()
	if r.other() != 0 || r.connErrors != 0 {
		tb.Errorf("storm: %d answers other than 200/429/503 (%v) and %d connection errors, want none", r.other(), r.statuses, r.connErrors)
	}
	if r.noRetryAfter != 0 {
		tb.Errorf("storm: %d 429/503 answers without Retry-After, want none", r.noRetryAfter)
	}
	if r.issueEvents != r.statuses[200] {
		tb.Errorf("storm: audit issue events %d, successes %d, want equal", r.issueEvents, r.statuses[200])
	}
	if r.jwksFetches > 1 {
		tb.Errorf("storm: the issuer's JWKS was fetched %d times during the storm, want at most one", r.jwksFetches)
	}
}

func TestStartupStormSmoke(t *testing.T) {
	r := runStorm(t, 200, time.Second)
	t.Logf("storm:\n%s", r)
	checkStorm(t, r)
	if r.statuses[200] == 0 {
		t.Errorf("storm: no exchange succeeded")
	}
}

func BenchmarkStartupStorm(b *testing.B) {
	n, secs := 10000, 10
	if v, err := strconv.Atoi(os.Getenv("KEYTRAIL_STORM_N")); err == nil && v > 0 {
		n = v
	}
	if v, err := strconv.Atoi(os.Getenv("KEYTRAIL_STORM_SECONDS")); err == nil && v > 0 {
		secs = v
	}
	for b.Loop() {
		r := runStorm(b, n, time.Duration(secs)*time.Second)
		b.Logf("storm:\n%s", r)
		checkStorm(b, r)
		b.ReportMetric(float64(r.statuses[200]), "ok")
		b.ReportMetric(float64(r.statuses[429]), "429s")
		b.ReportMetric(float64(r.statuses[503]), "503s")
		b.ReportMetric(float64(r.p50.Milliseconds()), "p50-ms")
		b.ReportMetric(float64(r.p99.Milliseconds()), "p99-ms")
		b.ReportMetric(float64(r.peakRSSKB), "peak-rss-KiB")
	}
}
