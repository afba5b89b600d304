package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/e2e/harness"
)

// benchChildEnv makes this test binary act as the keytrail binary when
// `keytrail bench` starts brokers from it (os.Executable is the test
// binary under go test).
const benchChildEnv = "KEYTRAIL_BENCH_TEST_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(benchChildEnv) == "1" {
		main()
		return
	}
	code := m.Run()
	harness.RemoveBinary() // built by TestServersDieWithTheBinary
	os.Exit(code)
}

// TestBenchSmoke runs scenario A briefly against real Vault, Redis and a
// broker process, and checks the report has the proxied and direct figures
// and their ratio, in text and in JSON.
func TestBenchSmoke(t *testing.T) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	jsonPath := filepath.Join(dir, "bench.json")
	var out, errb bytes.Buffer
	e := &env{ctx: context.Background(), getenv: os.Getenv, stdout: &out, stderr: &errb}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = runBench(ctx, e, benchOptions{
		scenarios: []string{"A", "C"}, duration: 200 * time.Millisecond, reps: 1, workers: []int{2, 4}, revocations: 1,
		jsonOut: jsonPath, vaultBin: os.Getenv("KEYTRAIL_VAULT_BIN"), keytrailBin: self,
		dir: filepath.Join(dir, "work"), childEnv: []string{benchChildEnv + "=1"},
	})
	if err != nil {
		t.Fatalf("runBench() = %v\nstderr:\n%s", err, errb.String())
	}
	raw, err := os.ReadFile(jsonPath)
	if err != nil {
		t.Fatal(err)
	}
	var rep benchReport
	if err := json.Unmarshal(raw, &rep); err != nil {
		t.Fatalf("JSON report: %v", err)
	}
	if rep.GoVersion == "" || rep.CPUModel == "" || rep.GOMAXPROCS < 1 || rep.NumCPU < 1 {
		t.Errorf("report machine = %q %q %d %d, want all set", rep.GoVersion, rep.CPUModel, rep.GOMAXPROCS, rep.NumCPU)
	}
	if c := rep.Calibration; c == nil || c.FsyncSamples != benchFsyncProbes || c.FsyncP50us <= 0 || c.ECDSAVerifyUs <= 0 {
		t.Errorf("report calibration = %+v, want the fsync and ECDSA probes' figures", c)
	}
	// The journal probe has figures wherever the brokers' sinks journal.
	_, _, noDirect := auditfile.ProbeJournal(t.TempDir(), []byte("x\n"), 1)
	if c := rep.Calibration; c != nil && (c.JournalP50us > 0 && c.JournalCPUus > 0) != (noDirect == nil) {
		t.Errorf("report calibration journal p50 %vµs, CPU %vµs; direct I/O here: %v", c.JournalP50us, c.JournalCPUus, noDirect)
	}
	if _, ok := machineCPU(); ok && (rep.StealPct == nil || *rep.StealPct < 0 || *rep.StealPct > 100) {
		t.Errorf("report steal = %v, want a share in [0, 100] where /proc/stat is readable", rep.StealPct)
	}
	var ids []string
	for _, s := range rep.Scenarios {
		for _, c := range s.Comparisons {
			ids = append(ids, c.ID)
			// Every run says how much CPU time the hypervisor took.
			for _, r := range c.Runs {
				if st, ok := r.CPUusPerOp["steal"]; !ok || st < 0 {
					t.Errorf("%s %s %s run: steal CPU per op = %v (present %v), want >= 0", c.ID, r.Variant, r.Mode, st, ok)
				}
			}
			// Each variant ran at both levels; its maximum is the better.
			for _, v := range c.Variants {
				if len(v.ClosedByWorkers) != 2 || v.ClosedByWorkers[0].Workers != 2 || v.ClosedByWorkers[1].Workers != 4 {
					t.Errorf("%s %s closed loop by workers = %+v, want levels 2 and 4", c.ID, v.Variant, v.ClosedByWorkers)
					continue
				}
				top := max(v.ClosedByWorkers[0].Throughput, v.ClosedByWorkers[1].Throughput)
				if v.Closed.Throughput != top || (v.ClosedWorkers != 2 && v.ClosedWorkers != 4) {
					t.Errorf("%s %s max/s = %v at %d workers, want the best level's %v (%+v)", c.ID, v.Variant, v.Closed.Throughput, v.ClosedWorkers, top, v.ClosedByWorkers)
				}
			}
			if c.ID == "C1" {
				for _, v := range c.Variants {
					if v.Closed.Throughput <= 0 || v.Closed.Errors+v.Open.Errors != 0 || v.Closed.CPUusPerOp["broker"] <= 0 {
						t.Errorf("C1 %s = %+v, want throughput, broker CPU and no errors", v.Variant, v)
					}
				}
				continue
			}
			for _, name := range []string{"direct", "proxied"} {
				v := c.variant(name)
				if v.Closed.Throughput <= 0 || v.Open.P50us <= 0 || v.Open.P99us < v.Open.P50us {
					t.Errorf("%s %s = %+v, want throughput and open-loop latencies", c.ID, name, v)
				}
				if v.Light == nil || v.Light.P50us <= 0 {
					t.Errorf("%s %s light load = %+v, want open-loop latencies", c.ID, name, v.Light)
				}
				if v.Closed.Errors+v.Open.Errors != 0 {
					t.Errorf("%s %s: %d errors", c.ID, name, v.Closed.Errors+v.Open.Errors)
				}
			}
			// Every proxied request makes its use event durable: a share
			// of a write each (use and use_result: at most two, plus a
			// rare write of the sink's own, such as a timed checkpoint,
			// in a light-load run of a few dozen requests); the direct
			// requests never reach the broker.
			px, dr := c.variant("proxied"), c.variant("direct")
			for mode, w := range map[string]float64{"closed": px.Closed.AuditWritesPerOp, "open": px.Open.AuditWritesPerOp, "light": px.Light.AuditWritesPerOp} {
				if w <= 0 || w > 2.5 {
					t.Errorf("%s proxied audit writes per op (%s loop) = %v, want in (0, 2.5]", c.ID, mode, w)
				}
			}
			// and those writes were timed (the sync histogram moved).
			for mode, us := range map[string]float64{"closed": px.Closed.AuditSyncMeanUs, "open": px.Open.AuditSyncMeanUs, "light": px.Light.AuditSyncMeanUs} {
				if us <= 0 {
					t.Errorf("%s proxied audit durable-write mean (%s loop) = %vµs, want > 0", c.ID, mode, us)
				}
			}
			if w := dr.Closed.AuditWritesPerOp; w > 0.05 {
				t.Errorf("%s direct audit writes per op = %v, want about 0", c.ID, w)
			}
			if r := c.variant("proxied").ThroughputRatio; r <= 0 {
				t.Errorf("%s proxied throughput ratio = %v, want > 0", c.ID, r)
			}
			if c.OpenRate <= 0 || c.LightRate <= 0 || c.LightRate >= c.OpenRate {
				t.Errorf("%s open-loop rates = %v, light %v, want 0 < light < half", c.ID, c.OpenRate, c.LightRate)
			}
		}
	}
	if diff := cmp.Diff([]string{"A1", "A2", "C1"}, ids); diff != "" {
		t.Errorf("comparisons (-want +got):\n%s", diff)
	}
	text := out.String()
	if !regexp.MustCompile(`proxied [0-9.]+ / [0-9.]+ / [0-9.]+ \(durable in [0-9.]+[µm]?s / [0-9.]+[µm]?s / [0-9.]+[µm]?s each\)`).MatchString(text) {
		t.Errorf("text report lacks the proxied audit writes with their write+fsync times:\n%s", text)
	}
	for _, want := range []string{"A1 trivial upstream", "A2 upstream taking 1 ms", "direct", "proxied", "x  |", "light load (open loop at", "targets:", "CPU time taken by the hypervisor (steal): ", "machine: fsync after a 400-byte append p50 ", "on this disk one audit journal write alone takes p50 ", "audit journal write p50 ", "audit writes per operation (closed / open / light; ", "(durable in ", "A1: under this run's load each durable audit write took ", "closed loop with 2 and 4 workers (each variant's best)", "(max/s: closed loop, the best of 2 and 4 workers: direct "} {
		if !strings.Contains(text, want) {
			t.Errorf("text report lacks %q:\n%s", want, text)
		}
	}
	if t.Failed() {
		t.Logf("stderr:\n%s", errb.String())
	}
}

// TestParseMachineStat: the "cpu" line's steal (the 8th figure) and total
// (the first eight; guest time is already in user), and the share stolen
// between two readings.
func TestParseMachineStat(t *testing.T) {
	a, ok := parseMachineStat("cpu  100 1 50 800 10 0 9 30 7 0\ncpu0 50 0 25 400 5 0 4 15 0 0\nintr 1 2\n")
	if !ok {
		t.Fatal("parseMachineStat rejected a /proc/stat")
	}
	tick := time.Second / clockTicks
	if want := (machineTimes{steal: 30 * tick, total: 1000 * tick}); a != want {
		t.Errorf("parseMachineStat = %+v, want %+v", a, want)
	}
	b, _ := parseMachineStat("cpu  150 1 70 880 10 0 9 80 7 0\n")
	if got := stealPct(a, b); got != 25 {
		t.Errorf("stealPct = %v, want 25 (50 of 200 ticks)", got)
	}
	if got := stealPct(b, b); got != 0 {
		t.Errorf("stealPct over no time = %v, want 0", got)
	}
	for _, bad := range []string{"", "cpu0 1 2 3 4 5 6 7 8\n", "cpu 1 2 3\n", "cpu 1 2 3 4 5 6 7 x\n"} {
		if _, ok := parseMachineStat(bad); ok {
			t.Errorf("parseMachineStat(%q) accepted", bad)
		}
	}
}

func TestParseScenarios(t *testing.T) {
	tests := []struct {
		name, in string
		want     []string
		wantErr  bool
	}{
		{name: "ok/all-vault-heavy-b-after-c-and-d", in: "A,B,C,D,E", want: []string{"A", "C", "D", "B", "E"}},
		{name: "ok/reordered-lower-spaces-dup", in: " e, a ,A,", want: []string{"A", "E"}},
		{name: "fail/unknown", in: "A,F", wantErr: true},
		{name: "fail/empty", in: " , ", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseScenarios(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("parseScenarios(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("parseScenarios(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func FuzzParseScenarios(f *testing.F) {
	for _, s := range []string{"A,B,C,D,E", " e, a ,A,", "A,F", " , "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := parseScenarios(s)
		if err != nil {
			return
		}
		if len(got) == 0 || len(got) > len(allScenarios) {
			t.Fatalf("parseScenarios(%q) = %v", s, got)
		}
		for _, l := range got {
			if !strings.Contains("ABCDE", l) || len(l) != 1 {
				t.Fatalf("parseScenarios(%q) = %v: %q is not a scenario", s, got, l)
			}
		}
	})
}

const statLine = "4242 (keytrail server) S 1 4242 4242 0 -1 4194560 2500 0 0 0 150 37 0 0 20 0 12 0 3600 1950580 9642 18446744073709551615"

func TestParseProcStat(t *testing.T) {
	tests := []struct {
		name   string
		in     string
		want   time.Duration
		wantOK bool
	}{
		{name: "ok/utime-plus-stime", in: statLine, want: 1870 * time.Millisecond, wantOK: true},
		{name: "ok/name-with-parens", in: "7 (a) b) S 1 7 7 0 -1 0 0 0 0 0 3 4 0 0", want: 70 * time.Millisecond, wantOK: true},
		{name: "fail/truncated", in: "7 (x) S 1 7 7", wantOK: false},
		{name: "fail/no-name", in: "7 x S", wantOK: false},
		{name: "fail/not-a-number", in: "7 (x) S 1 7 7 0 -1 0 0 0 0 0 u 4 0 0", wantOK: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := parseProcStat(tt.in)
			if got != tt.want || ok != tt.wantOK {
				t.Fatalf("parseProcStat(%q) = %v, %v, want %v, %v", tt.in, got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func FuzzParseProcStat(f *testing.F) {
	for _, s := range []string{statLine, "7 (a) b) S 1 7 7 0 -1 0 0 0 0 0 3 4 0 0", "7 (x) S 1 7 7", "7 x S"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if d, ok := parseProcStat(s); ok && d < 0 {
			t.Fatalf("parseProcStat(%q) = %v, negative", s, d)
		}
	})
}

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		var out []time.Duration
		for _, x := range v {
			out = append(out, time.Duration(x)*time.Millisecond)
		}
		return out
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		q      float64
		want   time.Duration
	}{
		{name: "ok/empty", sorted: nil, q: 0.5, want: 0},
		{name: "ok/p50-of-4-nearest-rank", sorted: ms(1, 2, 3, 4), q: 0.5, want: 2 * time.Millisecond},
		{name: "ok/p99-of-100", sorted: ms(seq(100)...), q: 0.99, want: 99 * time.Millisecond},
		{name: "ok/p100", sorted: ms(1, 2, 3), q: 1, want: 3 * time.Millisecond},
		{name: "ok/p0-is-first", sorted: ms(5, 6), q: 0, want: 5 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.q); got != tt.want {
				t.Fatalf("percentile(%v, %v) = %v, want %v", tt.sorted, tt.q, got, tt.want)
			}
		})
	}
}

func seq(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i + 1
	}
	return out
}

// throughputRuns makes runs with the given throughputs.
func throughputRuns(v ...float64) []benchRun {
	var out []benchRun
	for _, x := range v {
		out = append(out, benchRun{Throughput: x})
	}
	return out
}

func TestMedian(t *testing.T) {
	runs := throughputRuns
	tests := []struct {
		name string
		runs []benchRun
		want float64
	}{
		{name: "ok/empty", want: 0},
		{name: "ok/odd", runs: runs(5, 1, 3), want: 3},
		{name: "ok/even-mean-of-middle", runs: runs(4, 1, 3, 10), want: 3.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := median(tt.runs, func(r benchRun) float64 { return r.Throughput }); got != tt.want {
				t.Fatalf("median(%v) = %v, want %v", tt.runs, got, tt.want)
			}
		})
	}
}

// TestLoops checks the load generator's counting: the open loop sends on
// schedule and counts failures; the closed loop counts every answer.
func TestLoops(t *testing.T) {
	boom := errors.New("boom")
	buf := make([]byte, 64<<10)
	ok := func(context.Context) error { sha256.Sum256(buf); return nil } // takes tens of µs
	bad := func(context.Context) error { return boom }
	tests := []struct {
		name       string
		run        func() benchRun
		wantOK     func(n int) bool
		wantErrors func(n int) bool
	}{
		{name: "ok/open-loop-sends-the-schedule", run: func() benchRun {
			return openLoop(context.Background(), ok, 1000, 100*time.Millisecond, 100, nil)
		}, wantOK: func(n int) bool { return n == 100 }, wantErrors: func(n int) bool { return n == 0 }},
		{name: "ok/open-loop-sends-at-least-one", run: func() benchRun {
			return openLoop(context.Background(), ok, 1, 200*time.Millisecond, 100, nil)
		}, wantOK: func(n int) bool { return n == 1 }, wantErrors: func(n int) bool { return n == 0 }},
		{name: "fail/open-loop-counts-errors", run: func() benchRun {
			return openLoop(context.Background(), bad, 1000, 50*time.Millisecond, 100, nil)
		}, wantOK: func(n int) bool { return n == 0 }, wantErrors: func(n int) bool { return n == 50 }},
		{name: "ok/closed-loop", run: func() benchRun {
			return closedLoop(context.Background(), ok, 2, 20*time.Millisecond, nil)
		}, wantOK: func(n int) bool { return n > 0 }, wantErrors: func(n int) bool { return n == 0 }},
		{name: "fail/closed-loop-counts-errors", run: func() benchRun {
			return closedLoop(context.Background(), bad, 2, 20*time.Millisecond, nil)
		}, wantOK: func(n int) bool { return n == 0 }, wantErrors: func(n int) bool { return n > 0 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.run()
			if !tt.wantOK(r.OK) || !tt.wantErrors(r.Errors) {
				t.Fatalf("run = ok %d errors %d (first %q), not as expected", r.OK, r.Errors, r.FirstError)
			}
			if r.OK > 0 && (r.P50us <= 0 || r.P99us < r.P50us || r.MaxUs < r.P99us) {
				t.Fatalf("run latencies p50 %v p99 %v max %v, want 0 < p50 <= p99 <= max", r.P50us, r.P99us, r.MaxUs)
			}
		})
	}
}

// TestVaultKindsNote: C's report carries B's broker CPU per exchange, though
// B runs after C.
func TestVaultKindsNote(t *testing.T) {
	exchange := func(closed, open float64) variantResult {
		return variantResult{Variant: "exchange",
			Closed: phaseSummary{CPUusPerOp: map[string]float64{"broker": closed}},
			Open:   phaseSummary{CPUusPerOp: map[string]float64{"broker": open}}}
	}
	b := &scenarioResult{ID: "B", Comparisons: []*comparisonResult{
		{ID: "B1", Title: "vault_token grant vs ...", Variants: []variantResult{{Variant: "raw token create"}, exchange(390, 648)}},
		{ID: "B2", Title: "jwt grant (ES256) vs ...", Variants: []variantResult{{Variant: "raw transit sign"}, exchange(389, 673)}},
	}}
	c := &scenarioResult{ID: "C", Notes: []string{"c's own"}}
	vaultKindsNote([]*scenarioResult{{ID: "A"}, c, {ID: "D"}, b, {ID: "E"}})
	want := []string{
		"c's own",
		"B1 vault_token: broker CPU per exchange (Vault wait excluded: CPU time, not wall time) 390µs at max rate, 648µs at half rate",
		"B2 jwt: broker CPU per exchange (Vault wait excluded: CPU time, not wall time) 389µs at max rate, 673µs at half rate",
	}
	if diff := cmp.Diff(want, c.Notes); diff != "" {
		t.Errorf("C's notes (-want +got):\n%s", diff)
	}
	alone := &scenarioResult{ID: "C"}
	vaultKindsNote([]*scenarioResult{alone})
	if len(alone.Notes) != 0 {
		t.Errorf("C alone got notes %q, want none", alone.Notes)
	}
}

func TestTokenPool(t *testing.T) {
	var signed atomic.Int64
	p := &tokenPool{sign: func() (string, error) { return fmt.Sprint("tok-", signed.Add(1)), nil }}
	if err := p.fill(100); err != nil {
		t.Fatal(err)
	}
	if err := p.fill(40); err != nil { // already holds more
		t.Fatal(err)
	}
	if got := signed.Load(); got != 100 {
		t.Fatalf("fill(100), fill(40) signed %d tokens, want 100", got)
	}
	seen := map[string]bool{}
	for range 100 {
		tok, err := p.take()
		if err != nil || seen[tok] {
			t.Fatalf("take() = %q, %v; want a token not taken before", tok, err)
		}
		seen[tok] = true
	}
	if n := p.inline.Load(); n != 0 {
		t.Fatalf("%d tokens signed by take while the pool held some", n)
	}
	tok, err := p.take()
	if err != nil || seen[tok] || p.inline.Load() != 1 || signed.Load() != 101 {
		t.Fatalf("take() from an empty pool = %q, %v (inline %d, signed %d); want a new token signed there and counted",
			tok, err, p.inline.Load(), signed.Load())
	}
	failing := &tokenPool{sign: func() (string, error) { return "", errors.New("no key") }}
	if err := failing.fill(3); err == nil || len(failing.toks) != 0 {
		t.Fatalf("fill with a failing signer = %v (%d tokens), want the error and nothing", err, len(failing.toks))
	}
}

// TestComparePrepares: a variant's prepare runs before every run of it,
// outside the measurement, sized so that an open-loop run never outlasts
// what it made.
func TestComparePrepares(t *testing.T) {
	var avail, dry atomic.Int64
	var calls []int
	op := func(context.Context) error {
		if avail.Add(-1) < 0 {
			dry.Add(1)
		}
		return nil
	}
	var dryOf []int64 // per run of the prepared variant, in order
	prepare := func(n int) error {
		if len(calls) > 0 {
			dryOf = append(dryOf, dry.Swap(0))
		}
		calls = append(calls, n)
		avail.Store(int64(n))
		return nil
	}
	b := &benchRunner{o: benchOptions{duration: 100 * time.Millisecond, reps: 2, workers: []int{2}}, progress: func(string, ...any) {}}
	res, err := b.compare(context.Background(), comparisonSpec{id: "T", light: true, variants: []benchVariant{
		{name: "base", op: func(context.Context) error { return nil }},
		{name: "prepared", op: op, prepare: prepare},
	}})
	if err != nil {
		t.Fatal(err)
	}
	dryOf = append(dryOf, dry.Swap(0))
	if len(calls) != 1+3*2 { // warm-up, then each rep of closed, open and light
		t.Fatalf("prepare called %d times (%v), want 7", len(calls), calls)
	}
	openRuns := 0
	for _, r := range res.Runs {
		if r.Variant != "prepared" && r.Variant != "prepared (light load)" || r.Mode != "open" {
			continue
		}
		openRuns++
		if r.OK+r.Errors == 0 {
			t.Errorf("open-loop run %+v sent nothing", r)
		}
	}
	if openRuns != 4 {
		t.Fatalf("%d open-loop runs of the prepared variant, want 4", openRuns)
	}
	for i, n := range calls[3:] {
		rate := res.OpenRate
		if i >= 2 {
			rate = res.LightRate
		}
		if want := int(rate * 0.1); n < want {
			t.Errorf("open-loop prepare %d: n = %d, want ≥ %d (rate %v for 100ms)", i, n, want, rate)
		}
	}
	// Runs: warm-up, closed ×2, open ×2, light ×2. An open loop sends
	// rate × duration requests, all of them prepared. (A closed loop of
	// this trivial op may outrun 1.5× its warm-up: not checked.)
	if diff := cmp.Diff([]int64{0, 0, 0, 0}, dryOf[3:]); diff != "" {
		t.Errorf("open-loop operations that found nothing prepared (-want +got):\n%s", diff)
	}
}

func TestCalibrate(t *testing.T) {
	dir := t.TempDir()
	c, err := calibrate(dir, 50)
	if err != nil {
		t.Fatal(err)
	}
	if c.FsyncSamples != 50 || c.FsyncP50us <= 0 || c.FsyncP99us < c.FsyncP50us || c.ECDSAVerifyUs <= 0 {
		t.Errorf("calibrate() = %+v, want 50 fsyncs timed, p99 ≥ p50 > 0, a verification time", c)
	}
	if left, _ := os.ReadDir(dir); len(left) != 0 {
		t.Errorf("calibrate left %d files in its directory, want none", len(left))
	}
	if _, err := calibrate(filepath.Join(dir, "missing"), 5); err == nil {
		t.Error("calibrate() in a missing directory succeeded, want an error")
	}
}

// TestAuditWrites: the writes counter is read from /metrics before and
// after a run and divided by the run's operations.
func TestAuditWrites(t *testing.T) {
	var writes, syncs, syncMicros atomic.Int64
	histogram := true
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bad" {
			fmt.Fprintf(w, "keytrail_audit_writes_total{ 3\n")
			return
		}
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprintf(w, "# TYPE keytrail_audit_writes_total_other counter\nkeytrail_audit_writes_total_other 7\n")
		fmt.Fprintf(w, "# HELP keytrail_audit_writes_total x\n# TYPE keytrail_audit_writes_total counter\nkeytrail_audit_writes_total %d\n", writes.Load())
		if histogram {
			n, sum := syncs.Load(), float64(syncMicros.Load())/1e6
			fmt.Fprintf(w, "# TYPE keytrail_audit_sync_duration_seconds histogram\n")
			fmt.Fprintf(w, "keytrail_audit_sync_duration_seconds_bucket{le=\"0.001\"} %d\nkeytrail_audit_sync_duration_seconds_bucket{le=\"+Inf\"} %d\n", n, n)
			fmt.Fprintf(w, "keytrail_audit_sync_duration_seconds_sum %g\nkeytrail_audit_sync_duration_seconds_count %d\n", sum, n)
		}
	}))
	defer srv.Close()
	ctx := context.Background()
	a := &auditWrites{client: srv.Client(), urls: []string{srv.URL, srv.URL}} // two brokers: summed
	writes.Store(40)
	syncs.Store(40)
	syncMicros.Store(40 * 900) // before the run: 900 µs each
	r := withAuditWrites(ctx, a, func() benchRun {
		writes.Add(3) // counted twice, once per URL
		syncs.Add(3)
		syncMicros.Add(3 * 250) // the run's: 250 µs each
		return benchRun{OK: 10, Errors: 2}
	})
	if r.AuditWritesPerOp != 0.5 || r.AuditSyncMeanUs != 250 {
		t.Errorf("writes per op = %v, sync mean = %vµs; want 0.5 (2×3 writes over 12 operations) and 250µs (the run's writes only)", r.AuditWritesPerOp, r.AuditSyncMeanUs)
	}
	histogram = false // a broker without the sync histogram: writes still counted
	r = withAuditWrites(ctx, a, func() benchRun { writes.Add(1); return benchRun{OK: 4} })
	if r.AuditWritesPerOp != 0.5 || r.AuditSyncMeanUs != 0 {
		t.Errorf("without the histogram: writes per op = %v, sync mean = %v; want 0.5 and 0", r.AuditWritesPerOp, r.AuditSyncMeanUs)
	}
	if r := withAuditWrites(ctx, nil, func() benchRun { return benchRun{OK: 1} }); r.AuditWritesPerOp != 0 || r.AuditUnread {
		t.Errorf("without brokers: writes per op = %v, unread %v; want 0, false", r.AuditWritesPerOp, r.AuditUnread)
	}
	// A broker whose metrics cannot be read: the figures are unknown, and
	// the medians leave the run out instead of counting a zero.
	gone := &auditWrites{client: srv.Client(), urls: []string{srv.URL + "/gone"}}
	if r := withAuditWrites(ctx, gone, func() benchRun { return benchRun{OK: 4} }); !r.AuditUnread || r.AuditWritesPerOp != 0 {
		t.Errorf("metrics unreadable: writes per op = %v, unread %v; want unread", r.AuditWritesPerOp, r.AuditUnread)
	}
	s := summarize([]benchRun{{OK: 1, AuditWritesPerOp: 0.5, AuditSyncMeanUs: 300}, {OK: 1, AuditUnread: true}, {OK: 1, AuditWritesPerOp: 0.7, AuditSyncMeanUs: 500}})
	if s.AuditWritesPerOp != 0.6 || s.AuditSyncMeanUs != 400 || s.AuditUnreadRuns != 1 {
		t.Errorf("summarize with an unread run = writes %v, sync %v, unread %d; want 0.6, 400 (the read runs' medians), 1", s.AuditWritesPerOp, s.AuditSyncMeanUs, s.AuditUnreadRuns)
	}
	line := auditWritesLine(&comparisonResult{Variants: []variantResult{{Variant: "proxied", Closed: s, Open: s}}})
	if !strings.Contains(line, "could not be read around 2 runs") {
		t.Errorf("audit writes line = %q, want the unread runs named", line)
	}
	fams, err := metricsFromURL(ctx, srv.Client(), srv.URL+"/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := counterValue(fams, "keytrail_audit_events_total"); err == nil {
		t.Error("counterValue found a metric the page lacks")
	}
	if _, err := metricsFromURL(ctx, srv.Client(), srv.URL+"/other"); err == nil {
		t.Error("metricsFromURL accepted a 404")
	}
	if _, err := metricsFromURL(ctx, srv.Client(), srv.URL+"/bad"); err == nil {
		t.Error("metricsFromURL accepted a malformed exposition")
	}
}

// TestBestLevels: a variant's maximum is the level with the highest median
// throughput, the lower level on a tie.
func TestBestLevels(t *testing.T) {
	runs := throughputRuns
	best, by := bestLevels(map[levelKey][]benchRun{
		{"a", 16}: runs(100, 120, 110),
		{"a", 64}: runs(200, 90, 210), // median 200
		{"b", 16}: runs(300, 301, 299),
		{"b", 64}: runs(250, 400, 300), // median 300: a tie
		{"c", 16}: runs(50, 60, 55),
		{"c", 64}: runs(40, 45, 41),
	}, []int{16, 64})
	if diff := cmp.Diff(map[string]int{"a": 64, "b": 16, "c": 16}, best); diff != "" {
		t.Errorf("best levels (-want +got):\n%s", diff)
	}
	want := map[string][]levelThroughput{
		"a": {{16, 110}, {64, 200}},
		"b": {{16, 300}, {64, 300}},
		"c": {{16, 55}, {64, 41}},
	}
	if diff := cmp.Diff(want, by); diff != "" {
		t.Errorf("throughput by level (-want +got):\n%s", diff)
	}
}

func TestWorkerLevels(t *testing.T) {
	got, err := workerLevels([]int{64, 16, 16})
	if err != nil || !slices.Equal(got, []int{16, 64}) {
		t.Errorf("workerLevels(64,16,16) = %v, %v; want [16 64]", got, err)
	}
	for _, bad := range [][]int{nil, {0}, {16, -1}, {2000}} {
		if _, err := workerLevels(bad); err == nil {
			t.Errorf("workerLevels(%v) accepted", bad)
		}
	}
}

// TestAuditForVariant: a variant that names its broker's audit metrics is
// counted there, not in the comparison's brokers together.
func TestAuditForVariant(t *testing.T) {
	all, own := &auditWrites{urls: []string{"a", "b"}}, &auditWrites{urls: []string{"b"}}
	spec := comparisonSpec{audit: all}
	if got := spec.auditFor(benchVariant{name: "v"}); got != all {
		t.Errorf("auditFor(variant without its own) = %v, want the comparison's", got)
	}
	if got := spec.auditFor(benchVariant{name: "v", audit: own}); got != own {
		t.Errorf("auditFor(variant with its own) = %v, want its own", got)
	}
}

// TestStartProcRelativeBinary: children run in the bench's directory, but a
// relative binary path (--keytrail-bin ./keytrail) names the file relative
// to the directory the bench was started from.
func TestStartProcRelativeBinary(t *testing.T) {
	cwd := t.TempDir()
	if err := os.MkdirAll(filepath.Join(cwd, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	script := "#!/bin/sh\necho started with \"$1\"\n"
	if err := os.WriteFile(filepath.Join(cwd, "bin", "child"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(cwd)
	e := &benchEnv{dir: t.TempDir()}
	p, err := e.startProc("child", filepath.Join("bin", "child"), nil, "arg1")
	if err != nil {
		t.Fatalf("startProc with a relative binary: %v", err)
	}
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.stop(time.Second)
		t.Fatal("child did not exit")
	}
	if got, want := strings.TrimSpace(p.logTail()), "started with arg1"; got != want {
		t.Errorf("child log = %q, want %q", got, want)
	}
}

// TestFellBehindNotes: summarize counts the open-loop runs that completed
// less than 95 % of their rate (closed-loop runs and runs that kept up do
// not count), and the report names those variants.
func TestFellBehindNotes(t *testing.T) {
	open := func(rate, got float64) benchRun {
		return benchRun{Mode: "open", TargetRate: rate, Throughput: got}
	}
	closed := summarize([]benchRun{{Mode: "closed", Workers: 64, Throughput: 10}})
	exchange := summarize([]benchRun{open(437, 387.4), open(437, 436.9), open(437, 413.3), open(437, 415.2), open(437, 398.5)})
	if exchange.FellBehindRuns != 3 || exchange.SlowestRunThroughput != 387.4 {
		t.Errorf("summarize: %d runs fell behind, slowest %v/s; want 3, 387.4/s", exchange.FellBehindRuns, exchange.SlowestRunThroughput)
	}
	kept := summarize([]benchRun{open(437, 436.5), open(437, 430)})
	light := summarize([]benchRun{open(44, 43.4), open(44, 30)})
	b1 := &comparisonResult{ID: "B1", OpenRate: 437, LightRate: 44, Variants: []variantResult{
		{Variant: "raw token create", Closed: closed, Open: kept, Light: &kept},
		{Variant: "exchange", Closed: closed, Open: exchange, Light: &light},
	}}
	a1 := &comparisonResult{ID: "A1", OpenRate: 2000, Variants: []variantResult{{Variant: "proxied", Closed: closed, Open: summarize([]benchRun{open(2000, 1990)})}}}
	got := fellBehindNotes([]*comparisonResult{a1, b1}, 5)
	want := []string{
		"B1 exchange: the open loop fell behind its rate in 3 of 5 runs (the slowest completed 387/s of 437/s): their latencies include the queue that built up, and the medians mix them with the runs that kept up",
		"B1 exchange: the light-load open loop fell behind its rate in 1 of 5 runs (the slowest completed 30/s of 44/s): their latencies include the queue that built up, and the medians mix them with the runs that kept up",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("fellBehindNotes (-want +got):\n%s", diff)
	}
	if closed.FellBehindRuns != 0 || kept.FellBehindRuns != 0 {
		t.Errorf("closed-loop runs or runs that kept up counted as behind: %d, %d", closed.FellBehindRuns, kept.FellBehindRuns)
	}
}
