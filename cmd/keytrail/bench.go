package main

// `keytrail bench`: the performance figures of docs/PERFORMANCE.md, each
// measured next to its baseline in the same run (issue #9, and item 9 of
// issue #3). See bench_env.go for what it starts, bench_load.go for how it
// measures and bench_scenarios.go for what.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
)

// allScenarios are the scenario letters, in the report's order.
var allScenarios = []string{"A", "B", "C", "D", "E"}

// benchFsyncProbes is how many fsyncs the machine probe times.
const benchFsyncProbes = 2000

// runOrder is the order the scenarios run in. B runs after the scenarios
// that keep Vault out of the loop: it leaves tens of thousands of live
// tokens behind (15-minute TTL), and when B ran before C and D Vault kept
// using CPU on the same two cores during them (6-11 µs of Vault CPU per
// exchange in C, against 0-1 when C ran alone). E, which revokes through
// Vault, comes last. The report lists the scenarios by letter.
var runOrder = []string{"A", "C", "D", "B", "E"}

// defaultWorkers are the closed-loop concurrency levels. A throughput
// measured at one level is the maximum only if that level saturates the
// machine: 16 clients leave it partly idle on paths that wait on an fsync
// or an upstream (scenario D1 at 16 workers: 6,649/s without fsync, 4,615/s
// with group commit; at 64: 8,533/s and 7,062/s), and more clients than
// needed only queue. Each variant's maximum is the best of the levels.
var defaultWorkers = []int{16, 64}

// workerLevels checks and sorts the --workers levels.
func workerLevels(ws []int) ([]int, error) {
	if len(ws) == 0 {
		return nil, errors.New("bench: --workers needs at least one level")
	}
	out := slices.Clone(ws)
	for _, w := range out {
		if w < 1 || w > 1024 {
			return nil, fmt.Errorf("bench: --workers %d: each level must be between 1 and 1024", w)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// benchOptions are the command's flags.
type benchOptions struct {
	scenarios   []string
	duration    time.Duration // per measurement
	reps        int
	workers     []int // closed-loop concurrency levels, ascending
	revocations int   // per repetition, scenario E
	jsonOut     string
	vaultBin    string
	keytrailBin string
	dir         string
	pprof       bool // brokers serve net/http/pprof on a free loopback port
	// childEnv is appended to the brokers' environment (tests).
	childEnv []string
}

func newBenchCmd(e *env) *cobra.Command {
	var (
		o         benchOptions
		scenarios string
	)
	c := &cobra.Command{
		Use:   "bench [--scenarios A,B,C,D,E] [--duration 2s] [--reps 5] [--json-out FILE]",
		Short: "Measure keytrail against its baselines (proxy vs direct, exchange vs raw Vault, ...)",
		Long: `bench starts its own Vault dev server, redis-server, identity issuer, two
upstream APIs (one answering at once, one after 1 ms) and keytrail brokers
(as child processes, so that their CPU time can be read from /proc), then
measures each scenario next to its baseline in the same run:

  A  a request proxied through keytrail vs the same request sent directly
  B  an exchange vs the raw Vault call it makes (token create, transit sign)
  C  the broker's own ceiling: CPU per exchange with Vault out of the loop
  D  audit without fsync vs group commit (journal, fsync) vs fsync per
     record; revocation checks against the in-memory store vs Redis
  E  revocation propagation across three instances

Variants alternate (A B A B ...) for --reps repetitions of --duration each;
figures are medians over the repetitions. Throughput is measured closed-loop
at each --workers level (concurrent clients); a variant's maximum is its
best level. Latency is measured open-loop at half the slowest variant's
maximum rate, from each request's intended send time. Progress goes
to stderr, the report to stdout, and with --json-out to a JSON file too.
Everything started is stopped on exit and on Ctrl-C. See docs/PERFORMANCE.md.
The Vault binary comes from --vault-bin, else $KEYTRAIL_VAULT_BIN, else
bin/vault in the repository (built if missing or older than
e2e/vaultserver/go.sum).

Exit status: 0 every scenario ran; 1 something could not be started, a
measurement failed or the run was interrupted; 2 usage.`,
		Example: `  keytrail bench --json-out bench.json
  keytrail bench --scenarios A,B --reps 3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			var err error
			if o.scenarios, err = parseScenarios(scenarios); err != nil {
				return exitError{code: exitUsage, msg: err.Error()}
			}
			if o.duration <= 0 || o.reps < 1 || o.revocations < 1 {
				return exitError{code: exitUsage, msg: "bench: --duration, --reps and --revocations must be positive"}
			}
			if o.workers, err = workerLevels(o.workers); err != nil {
				return exitError{code: exitUsage, msg: err.Error()}
			}
			if o.vaultBin == "" {
				o.vaultBin = e.getenv("KEYTRAIL_VAULT_BIN")
			}
			if o.keytrailBin == "" {
				if o.keytrailBin, err = os.Executable(); err != nil {
					return fmt.Errorf("bench: finding the keytrail binary: %w (use --keytrail-bin)", err)
				}
			}
			return runBench(cmd.Context(), e, o)
		},
	}
	f := c.Flags()
	f.StringVar(&scenarios, "scenarios", strings.Join(allScenarios, ","), "scenarios to run, comma-separated letters")
	f.DurationVar(&o.duration, "duration", 2*time.Second, "length of one measurement")
	f.IntVar(&o.reps, "reps", 5, "repetitions of each measurement (medians are reported)")
	f.IntSliceVar(&o.workers, "workers", defaultWorkers, "concurrency levels of the closed-loop (throughput) runs, comma-separated; a variant's maximum is its best level")
	f.IntVar(&o.revocations, "revocations", 20, "revocations per repetition in scenario E")
	f.StringVar(&o.jsonOut, "json-out", "", "also write the report as JSON to this file")
	f.StringVar(&o.vaultBin, "vault-bin", "", "Vault binary (default $KEYTRAIL_VAULT_BIN, else bin/vault, built if missing or older than e2e/vaultserver/go.sum)")
	f.StringVar(&o.keytrailBin, "keytrail-bin", "", "keytrail binary for the broker processes (default: this one)")
	f.BoolVar(&o.pprof, "pprof", false, "brokers serve net/http/pprof on a free loopback port (printed with their start), for profiling a run")
	f.StringVar(&o.dir, "dir", "", "keep configs, audit logs and process logs here (default: a temporary directory, removed)")
	return c
}

// parseScenarios reads "A,c, D" into ["A","C","D"] in running order
// (runOrder).
func parseScenarios(s string) ([]string, error) {
	seen := map[string]bool{}
	for _, part := range strings.Split(s, ",") {
		p := strings.ToUpper(strings.TrimSpace(part))
		if p == "" {
			continue
		}
		if !slices.Contains(allScenarios, p) {
			return nil, fmt.Errorf("bench: unknown scenario %q (want letters among %s)", part, strings.Join(allScenarios, ","))
		}
		seen[p] = true
	}
	var out []string
	for _, l := range runOrder {
		if seen[l] {
			out = append(out, l)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("bench: --scenarios names no scenario")
	}
	return out, nil
}

// benchReport is the whole result, as printed and as written to JSON.
type benchReport struct {
	Keytrail   string    `json:"keytrail_version"`
	GoVersion  string    `json:"go_version"`
	OS         string    `json:"os"`
	Arch       string    `json:"arch"`
	CPUModel   string    `json:"cpu_model"`
	NumCPU     int       `json:"num_cpu"`
	GOMAXPROCS int       `json:"gomaxprocs"`
	StartedAt  time.Time `json:"started_at"`
	Seconds    float64   `json:"seconds"`
	Duration   string    `json:"duration_per_run"`
	Reps       int       `json:"reps"`
	Workers    []int     `json:"workers"` // closed-loop concurrency levels
	// LoadAvg is /proc/loadavg at the start and at the end: other work on
	// the machine shows here.
	LoadAvgStart string `json:"loadavg_start,omitempty"`
	LoadAvgEnd   string `json:"loadavg_end,omitempty"`
	// StealPct is the share of the machine's CPU time the hypervisor took
	// (/proc/stat steal) over the whole bench, in per cent; each run's
	// stolen time per operation is its "steal" CPU figure.
	StealPct    *float64          `json:"steal_pct,omitempty"`
	Calibration *calibration      `json:"calibration,omitempty"`
	Scenarios   []*scenarioResult `json:"scenarios"`
}

// scenarioResult is one lettered scenario.
type scenarioResult struct {
	ID          string              `json:"id"`
	Title       string              `json:"title"`
	Comparisons []*comparisonResult `json:"comparisons,omitempty"`
	Propagation *propagationResult  `json:"propagation,omitempty"`
	Targets     []targetResult      `json:"targets,omitempty"`
	Notes       []string            `json:"notes,omitempty"`
}

// targetResult is one target of the issue, met or not.
type targetResult struct {
	What string `json:"what"`
	Want string `json:"want"`
	Got  string `json:"got"`
	Met  bool   `json:"met"`
}

// fellBehind is the share of an open loop's rate under which a run is said
// to have fallen behind: its requests queued, so its latencies measure the
// queue, not the path at that rate.
const fellBehind = 0.95

// phaseSummary are the medians of one variant's runs in one mode.
type phaseSummary struct {
	Throughput float64            `json:"throughput"`
	P50us      float64            `json:"p50_us"`
	P90us      float64            `json:"p90_us"`
	P99us      float64            `json:"p99_us"`
	Errors     int                `json:"errors"` // summed over the runs
	CPUusPerOp map[string]float64 `json:"cpu_us_per_op,omitempty"`
	// AuditWritesPerOp and AuditSyncMeanUs: see benchRun; medians over
	// the runs whose audit metrics were read. AuditUnreadRuns counts the
	// others.
	AuditWritesPerOp float64 `json:"audit_writes_per_op,omitempty"`
	AuditSyncMeanUs  float64 `json:"audit_sync_mean_us,omitempty"`
	AuditUnreadRuns  int     `json:"audit_unread_runs,omitempty"`
	// FellBehindRuns counts the open-loop runs that completed less than
	// fellBehind of their rate (their latencies measure a queue);
	// SlowestRunThroughput is the lowest throughput among them.
	FellBehindRuns       int     `json:"fell_behind_runs,omitempty"`
	SlowestRunThroughput float64 `json:"slowest_run_throughput,omitempty"`
}

// variantResult is one variant next to the baseline.
type variantResult struct {
	Variant string       `json:"variant"`
	Closed  phaseSummary `json:"closed_loop"`
	Open    phaseSummary `json:"open_loop"`
	// ClosedWorkers is the concurrency level whose median throughput was
	// the highest: Closed summarizes the runs at that level.
	ClosedWorkers int `json:"closed_loop_workers"`
	// ClosedByWorkers is the median throughput at each level.
	ClosedByWorkers []levelThroughput `json:"closed_loop_by_workers,omitempty"`
	// Throughput over the baseline's (closed loop); latency differences
	// with the baseline (open loop, same rate).
	ThroughputRatio float64 `json:"throughput_ratio"`
	AddedP50us      float64 `json:"added_p50_us"`
	AddedP90us      float64 `json:"added_p90_us"`
	AddedP99us      float64 `json:"added_p99_us"`
	// Light is the open loop at LightRate (comparisons with a light phase):
	// what the path costs when the machine is not busy.
	Light           *phaseSummary `json:"light_load,omitempty"`
	LightAddedP50us float64       `json:"light_added_p50_us,omitempty"`
	LightAddedP99us float64       `json:"light_added_p99_us,omitempty"`
}

// levelThroughput is a variant's median closed-loop throughput at one
// concurrency level.
type levelThroughput struct {
	Workers    int     `json:"workers"`
	Throughput float64 `json:"throughput"`
}

// comparisonResult is variants measured against a baseline.
type comparisonResult struct {
	ID       string  `json:"id"`
	Title    string  `json:"title"`
	Baseline string  `json:"baseline"`
	Workers  []int   `json:"workers"` // closed-loop concurrency levels
	OpenRate float64 `json:"open_loop_rate"`
	// LightRate is the light-load open-loop rate (a twentieth of the
	// slowest variant's maximum), when measured.
	LightRate float64         `json:"light_load_rate,omitempty"`
	Variants  []variantResult `json:"variants"`
	Runs      []benchRun      `json:"runs"`
}

func (c *comparisonResult) variant(name string) *variantResult {
	for i := range c.Variants {
		if c.Variants[i].Variant == name {
			return &c.Variants[i]
		}
	}
	return &variantResult{Variant: name}
}

// benchVariant is one side of a comparison.
type benchVariant struct {
	name string
	op   benchOp
	// prepare, when set, runs before each measured run, outside it, with
	// the number of operations the run may send (its requests' inputs made
	// ahead, e.g. identity tokens signed).
	prepare func(n int) error
	// audit, when set, counts the audit writes of this variant's broker
	// instead of the comparison's.
	audit *auditWrites
}

// comparisonSpec says what to compare.
type comparisonSpec struct {
	id, title string
	variants  []benchVariant // the first is the baseline
	probes    []cpuProbe
	// audit, when set, counts the brokers' audit writes per operation.
	audit *auditWrites
	// workers, when set, is the only closed-loop concurrency level
	// (instead of --workers).
	workers int
	// light adds an open loop at a twentieth of the maximum rate, so the
	// report shows the added latency without CPU contention too.
	light bool
}

// auditFor is where the audit writes of v's runs are counted: its own
// broker when it names one, else the comparison's brokers.
func (s comparisonSpec) auditFor(v benchVariant) *auditWrites {
	if v.audit != nil {
		return v.audit
	}
	return s.audit
}

// runBench sets up the environment, runs the scenarios and reports.
func runBench(ctx context.Context, e *env, o benchOptions) error {
	progress := func(format string, args ...any) {
		fmt.Fprintf(e.stderr, "keytrail bench: "+format+"\n", args...)
	}
	start := time.Now()
	rep := &benchReport{
		Keytrail: version, GoVersion: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH,
		CPUModel: cpuModel(), NumCPU: runtime.NumCPU(), GOMAXPROCS: runtime.GOMAXPROCS(0),
		StartedAt: start.UTC(), Duration: o.duration.String(), Reps: o.reps, Workers: o.workers,
		LoadAvgStart: loadAvg(),
	}
	machineStart, machineOK := machineCPU()
	env, err := setupBenchEnv(ctx, o, progress)
	if err != nil {
		return err
	}
	defer func() {
		progress("stopping everything it started")
		env.close()
	}()
	progress("measuring the machine: %d fsyncs in %s, ECDSA verifications", benchFsyncProbes, env.dir)
	if rep.Calibration, err = calibrate(env.dir, benchFsyncProbes); err != nil {
		return err
	}
	progress("%s", rep.Calibration.line())
	b := &benchRunner{env: env, o: o, progress: progress, report: rep}
	for _, s := range o.scenarios {
		var res *scenarioResult
		var err error
		switch s {
		case "A":
			res, err = b.scenarioA(ctx)
		case "B":
			res, err = b.scenarioB(ctx)
		case "C":
			res, err = b.scenarioC(ctx)
		case "D":
			res, err = b.scenarioD(ctx)
		case "E":
			res, err = b.scenarioE(ctx)
		}
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("bench interrupted during scenario %s", s)
			}
			return fmt.Errorf("bench: scenario %s: %w", s, err)
		}
		res.Notes = append(res.Notes, fellBehindNotes(res.Comparisons, o.reps)...)
		rep.Scenarios = append(rep.Scenarios, res)
	}
	vaultKindsNote(rep.Scenarios)
	slices.SortStableFunc(rep.Scenarios, func(a, b *scenarioResult) int { return strings.Compare(a.ID, b.ID) })
	rep.Seconds = round1(time.Since(start).Seconds())
	rep.LoadAvgEnd = loadAvg()
	if machineEnd, ok := machineCPU(); ok && machineOK {
		pct := stealPct(machineStart, machineEnd)
		rep.StealPct = &pct
	}
	printBenchReport(e.stdout, rep)
	if o.jsonOut != "" {
		raw, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(o.jsonOut, append(raw, '\n'), 0o644); err != nil {
			return fmt.Errorf("bench: --json-out: %w", err)
		}
		progress("report written to %s", o.jsonOut)
	}
	return nil
}

// benchRunner runs scenarios in one environment.
type benchRunner struct {
	env      *benchEnv
	o        benchOptions
	progress func(string, ...any)
	report   *benchReport
}

// compare measures spec's variants, interleaved, o.reps times in each mode:
// closed loop for maximum throughput, then open loop at half the slowest
// variant's median maximum for latency.
func (b *benchRunner) compare(ctx context.Context, spec comparisonSpec) (*comparisonResult, error) {
	levels := b.o.workers
	if spec.workers > 0 {
		levels = []int{spec.workers}
	}
	res := &comparisonResult{ID: spec.id, Title: spec.title, Baseline: spec.variants[0].name, Workers: levels}
	warm := min(b.o.duration/2, time.Second)
	// fastest is each variant's highest closed-loop rate so far, which
	// sizes what prepare makes ahead of a closed-loop run.
	fastest := map[string]float64{}
	prepare := func(v benchVariant, rate float64, d time.Duration) error {
		if v.prepare == nil {
			return nil
		}
		if err := v.prepare(int(rate*d.Seconds()) + 256); err != nil {
			return fmt.Errorf("%s %s: preparing a run: %w", spec.id, v.name, err)
		}
		return nil
	}
	for _, v := range spec.variants {
		if err := prepare(v, 10000, warm); err != nil {
			return nil, err
		}
		r := closedLoop(ctx, v.op, levels[len(levels)-1], warm, nil)
		if r.OK == 0 {
			return nil, fmt.Errorf("%s %s: every request failed while warming up: %s", spec.id, v.name, r.FirstError)
		}
		fastest[v.name] = r.Throughput
	}
	closedRuns := map[levelKey][]benchRun{}
	for rep := 1; rep <= b.o.reps; rep++ {
		for _, v := range spec.variants {
			for _, w := range levels {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				if err := prepare(v, 1.5*fastest[v.name], b.o.duration); err != nil {
					return nil, err
				}
				r := withAuditWrites(ctx, spec.auditFor(v), func() benchRun { return closedLoop(ctx, v.op, w, b.o.duration, spec.probes) })
				fastest[v.name] = max(fastest[v.name], r.Throughput)
				r.Variant, r.Rep = v.name, rep
				b.progress("%s closed loop rep %d/%d %-22s %3d workers %s", spec.id, rep, b.o.reps, v.name, w, runLine(r))
				res.Runs = append(res.Runs, r)
				closedRuns[levelKey{v.name, w}] = append(closedRuns[levelKey{v.name, w}], r)
			}
		}
	}
	best, byWorkers := bestLevels(closedRuns, levels)
	slowest := -1.0
	for _, v := range spec.variants {
		top := median(closedRuns[levelKey{v.name, best[v.name]}], func(r benchRun) float64 { return r.Throughput })
		if slowest < 0 || top < slowest {
			slowest = top
		}
	}
	res.OpenRate = round1(slowest / 2)
	openRuns := map[string][]benchRun{}
	for rep := 1; rep <= b.o.reps; rep++ {
		for _, v := range spec.variants {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if err := prepare(v, res.OpenRate, b.o.duration); err != nil {
				return nil, err
			}
			r := withAuditWrites(ctx, spec.auditFor(v), func() benchRun { return openLoop(ctx, v.op, res.OpenRate, b.o.duration, 1024, spec.probes) })
			r.Variant, r.Rep = v.name, rep
			b.progress("%s open loop   rep %d/%d %-22s %s", spec.id, rep, b.o.reps, v.name, runLine(r))
			res.Runs = append(res.Runs, r)
			openRuns[v.name] = append(openRuns[v.name], r)
		}
	}
	lightRuns := map[string][]benchRun{}
	if spec.light {
		res.LightRate = round1(max(slowest/20, 1))
		for rep := 1; rep <= b.o.reps; rep++ {
			for _, v := range spec.variants {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				if err := prepare(v, res.LightRate, b.o.duration); err != nil {
					return nil, err
				}
				r := withAuditWrites(ctx, spec.auditFor(v), func() benchRun { return openLoop(ctx, v.op, res.LightRate, b.o.duration, 1024, spec.probes) })
				r.Variant, r.Rep = v.name+" (light load)", rep
				b.progress("%s light load rep %d/%d %-22s %s", spec.id, rep, b.o.reps, v.name, runLine(r))
				res.Runs = append(res.Runs, r)
				lightRuns[v.name] = append(lightRuns[v.name], r)
			}
		}
	}
	var base variantResult
	for i, v := range spec.variants {
		vr := variantResult{Variant: v.name, Closed: summarize(closedRuns[levelKey{v.name, best[v.name]}]), Open: summarize(openRuns[v.name]), ClosedWorkers: best[v.name]}
		if len(levels) > 1 {
			vr.ClosedByWorkers = byWorkers[v.name]
		}
		if spec.light {
			l := summarize(lightRuns[v.name])
			vr.Light = &l
		}
		if i == 0 {
			base = vr
		}
		if vr.Light != nil && base.Light != nil {
			vr.LightAddedP50us = round1(vr.Light.P50us - base.Light.P50us)
			vr.LightAddedP99us = round1(vr.Light.P99us - base.Light.P99us)
		}
		if base.Closed.Throughput > 0 {
			vr.ThroughputRatio = math2(vr.Closed.Throughput / base.Closed.Throughput)
		}
		vr.AddedP50us = round1(vr.Open.P50us - base.Open.P50us)
		vr.AddedP90us = round1(vr.Open.P90us - base.Open.P90us)
		vr.AddedP99us = round1(vr.Open.P99us - base.Open.P99us)
		res.Variants = append(res.Variants, vr)
	}
	return res, nil
}

// levelKey names a variant's closed-loop runs at one concurrency level.
type levelKey struct {
	variant string
	workers int
}

// bestLevels returns, per variant, the level with the highest median
// throughput (the lower level on a tie: fewer clients queue less) and the
// median at every level, in levels' order.
func bestLevels(runs map[levelKey][]benchRun, levels []int) (map[string]int, map[string][]levelThroughput) {
	best := map[string]int{}
	by := map[string][]levelThroughput{}
	top := map[string]float64{}
	for _, w := range levels {
		for k, rs := range runs {
			if k.workers != w {
				continue
			}
			t := round1(median(rs, func(r benchRun) float64 { return r.Throughput }))
			by[k.variant] = append(by[k.variant], levelThroughput{Workers: w, Throughput: t})
			if cur, ok := top[k.variant]; !ok || t > cur {
				top[k.variant], best[k.variant] = t, w
			}
		}
	}
	return best, by
}

func runLine(r benchRun) string {
	s := fmt.Sprintf("%8.0f/s p50 %s p99 %s errors %d", r.Throughput, fmtUs(r.P50us), fmtUs(r.P99us), r.Errors)
	if r.FirstError != "" {
		s += " (first: " + truncate(r.FirstError, 120) + ")"
	}
	return s
}

// summarize takes the median of every figure over runs.
func summarize(runs []benchRun) phaseSummary {
	s := phaseSummary{
		Throughput: round1(median(runs, func(r benchRun) float64 { return r.Throughput })),
		P50us:      round1(median(runs, func(r benchRun) float64 { return r.P50us })),
		P90us:      round1(median(runs, func(r benchRun) float64 { return r.P90us })),
		P99us:      round1(median(runs, func(r benchRun) float64 { return r.P99us })),
	}
	read := slices.DeleteFunc(slices.Clone(runs), func(r benchRun) bool { return r.AuditUnread })
	s.AuditUnreadRuns = len(runs) - len(read)
	s.AuditWritesPerOp = median(read, func(r benchRun) float64 { return r.AuditWritesPerOp })
	s.AuditSyncMeanUs = round1(median(read, func(r benchRun) float64 { return r.AuditSyncMeanUs }))
	keys := map[string]bool{}
	for _, r := range runs {
		s.Errors += r.Errors
		if r.Mode == "open" && r.Throughput < fellBehind*r.TargetRate {
			if s.FellBehindRuns == 0 || r.Throughput < s.SlowestRunThroughput {
				s.SlowestRunThroughput = r.Throughput
			}
			s.FellBehindRuns++
		}
		for k := range r.CPUusPerOp {
			keys[k] = true
		}
	}
	if len(keys) > 0 {
		s.CPUusPerOp = map[string]float64{}
		for k := range keys {
			s.CPUusPerOp[k] = round1(median(runs, func(r benchRun) float64 { return r.CPUusPerOp[k] }))
		}
	}
	return s
}

// median of f over runs (the mean of the middle two for an even count).
func median(runs []benchRun, f func(benchRun) float64) float64 {
	if len(runs) == 0 {
		return 0
	}
	v := make([]float64, len(runs))
	for i, r := range runs {
		v[i] = f(r)
	}
	slices.Sort(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func math2(f float64) float64 { return float64(int64(f*100+0.5)) / 100 }

// fmtUs prints microseconds as µs or ms.
func fmtUs(v float64) string {
	if v >= 10000 || v <= -10000 {
		return fmt.Sprintf("%.1fms", v/1000)
	}
	if v >= 1000 || v <= -1000 {
		return fmt.Sprintf("%.2fms", v/1000)
	}
	return fmt.Sprintf("%.0fµs", v)
}

func fmtSigned(v float64) string {
	if v >= 0 {
		return "+" + fmtUs(v)
	}
	return fmtUs(v)
}

func metStr(ok bool) string {
	if ok {
		return "met"
	}
	return "NOT MET"
}

// printBenchReport writes the human-readable report.
func printBenchReport(w io.Writer, r *benchReport) {
	fmt.Fprintf(w, "keytrail bench (%s): %s %s/%s, CPU %s, %d CPUs, GOMAXPROCS %d\n",
		r.Keytrail, r.GoVersion, r.OS, r.Arch, r.CPUModel, r.NumCPU, r.GOMAXPROCS)
	fmt.Fprintf(w, "%d repetitions of %s per measurement, medians; closed loop with %s workers (each variant's best); started %s, took %.0fs\n",
		r.Reps, r.Duration, joinInts(r.Workers, " and "), r.StartedAt.Format(time.RFC3339), r.Seconds)
	if r.LoadAvgStart != "" {
		fmt.Fprintf(w, "load average (1, 5, 15 min): %s at the start, %s at the end\n", r.LoadAvgStart, r.LoadAvgEnd)
	}
	if r.StealPct != nil {
		fmt.Fprintf(w, "CPU time taken by the hypervisor (steal): %.1f%% over the whole bench; per operation in each run's 'steal' CPU figure\n", *r.StealPct)
	}
	if r.Calibration != nil {
		fmt.Fprintln(w, r.Calibration.line())
	}
	for _, s := range r.Scenarios {
		fmt.Fprintf(w, "\n== %s. %s\n", s.ID, s.Title)
		for _, c := range s.Comparisons {
			fmt.Fprintf(w, "\n%s %s (baseline: %s)\n", c.ID, c.Title, c.Baseline)
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintf(tw, "variant\tmax/s\tratio\t|\tp50\tp90\tp99\tadded p50\tadded p99\terrors\t|\tbroker CPU/op\tother CPU/op\t\n")
			for _, v := range c.Variants {
				ratio := "-"
				if v.Variant != c.Baseline {
					ratio = fmt.Sprintf("%.2fx", v.ThroughputRatio)
				}
				added50, added99 := "-", "-"
				if v.Variant != c.Baseline {
					added50, added99 = fmtSigned(v.AddedP50us), fmtSigned(v.AddedP99us)
				}
				fmt.Fprintf(tw, "%s\t%.0f\t%s\t|\t%s\t%s\t%s\t%s\t%s\t%d\t|\t%s\t%s\t\n", v.Variant, v.Closed.Throughput, ratio,
					fmtUs(v.Open.P50us), fmtUs(v.Open.P90us), fmtUs(v.Open.P99us), added50, added99,
					v.Closed.Errors+v.Open.Errors, cpuCell(v, "broker"), otherCPU(v))
			}
			tw.Flush()
			fmt.Fprintf(w, "  (max/s: closed loop, %s; latencies: open loop at %.0f/s, from the intended send time; CPU/op: closed loop at max/s / open loop)\n", workersNote(c), c.OpenRate)
			if c.LightRate > 0 {
				for _, v := range c.Variants {
					if v.Light == nil {
						continue
					}
					line := fmt.Sprintf("  light load (open loop at %.0f/s): %-16s p50 %s p99 %s", c.LightRate, v.Variant, fmtUs(v.Light.P50us), fmtUs(v.Light.P99us))
					if v.Variant != c.Baseline {
						line += fmt.Sprintf(", added p50 %s p99 %s", fmtSigned(v.LightAddedP50us), fmtSigned(v.LightAddedP99us))
					}
					fmt.Fprintln(w, line)
				}
			}
			if line := auditWritesLine(c); line != "" {
				fmt.Fprintln(w, line)
			}
		}
		if p := s.Propagation; p != nil {
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintf(tw, "\nmeasured\tn\tp50\tp99\tmax\t\n")
			for _, l := range p.Lines {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t\n", l.Name, l.N, fmtUs(l.P50us), fmtUs(l.P99us), fmtUs(l.MaxUs))
			}
			tw.Flush()
			fmt.Fprintf(w, "  errors %d\n", p.Errors)
		}
		if len(s.Targets) > 0 {
			fmt.Fprintf(w, "targets:\n")
			for _, t := range s.Targets {
				fmt.Fprintf(w, "  %-7s %s: want %s, got %s\n", metStr(t.Met), t.What, t.Want, t.Got)
			}
		}
		for _, n := range s.Notes {
			fmt.Fprintf(w, "  note: %s\n", n)
		}
	}
}

// auditWritesLine says, for the variants whose broker wrote its audit log,
// how many audit writes (group-commit batches, each made durable by one
// journal write, or an fsync with audit.journal off, unless audit.fsync is
// off) each operation cost in each mode: what the CPU per operation pays
// for durability (the machine line's CPU per write times this), and why it
// rises when fewer requests share a batch. With each, the mean time a
// batch took to become durable under the run's load: the disk's part of a
// durable event's wait (the machine line times the same on an idle
// machine).
func auditWritesLine(c *comparisonResult) string {
	modes := "closed / open"
	if c.LightRate > 0 {
		modes += " / light"
	}
	var parts []string
	unread := 0
	for _, v := range c.Variants {
		unread += v.Closed.AuditUnreadRuns + v.Open.AuditUnreadRuns
		light := 0.0
		if v.Light != nil {
			light = v.Light.AuditWritesPerOp
			unread += v.Light.AuditUnreadRuns
		}
		if v.Closed.AuditWritesPerOp < 0.0005 && v.Open.AuditWritesPerOp < 0.0005 && light < 0.0005 {
			continue
		}
		p := fmt.Sprintf("%s %.3f / %.3f", v.Variant, v.Closed.AuditWritesPerOp, v.Open.AuditWritesPerOp)
		sync := fmtUs(v.Closed.AuditSyncMeanUs) + " / " + fmtUs(v.Open.AuditSyncMeanUs)
		if v.Light != nil {
			p += fmt.Sprintf(" / %.3f", light)
			sync += " / " + fmtUs(v.Light.AuditSyncMeanUs)
		}
		if v.Closed.AuditSyncMeanUs > 0 || v.Open.AuditSyncMeanUs > 0 {
			p += " (durable in " + sync + " each)"
		}
		parts = append(parts, p)
	}
	if unread > 0 {
		parts = append(parts, fmt.Sprintf("the brokers' metrics could not be read around %d runs, left out of these medians", unread))
	}
	if len(parts) == 0 {
		return ""
	}
	return "  audit writes per operation (" + modes + "; each write is made durable by one journal write, or one fsync with audit.journal off, unless audit.fsync is off): " + strings.Join(parts, "; ")
}

// workersNote says at which concurrency each variant reached its maximum.
func workersNote(c *comparisonResult) string {
	if len(c.Workers) == 1 {
		return fmt.Sprintf("%d workers", c.Workers[0])
	}
	var parts []string
	for _, v := range c.Variants {
		var ls []string
		for _, l := range v.ClosedByWorkers {
			ls = append(ls, fmt.Sprintf("%.0f/s at %d", l.Throughput, l.Workers))
		}
		parts = append(parts, fmt.Sprintf("%s %s", v.Variant, strings.Join(ls, ", ")))
	}
	return "the best of " + joinInts(c.Workers, " and ") + " workers: " + strings.Join(parts, "; ")
}

func joinInts(xs []int, sep string) string {
	s := make([]string, len(xs))
	for i, x := range xs {
		s[i] = strconv.Itoa(x)
	}
	return strings.Join(s, sep)
}

func cpuCell(v variantResult, key string) string {
	c, okc := v.Closed.CPUusPerOp[key]
	o, oko := v.Open.CPUusPerOp[key]
	if !okc && !oko {
		return "-"
	}
	return fmt.Sprintf("%.0f/%.0fµs", c, o)
}

func otherCPU(v variantResult) string {
	var parts []string
	for _, k := range []string{"vault", "redis", "bench", "steal"} {
		if c := cpuCell(v, k); c != "-" {
			parts = append(parts, k+" "+c)
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, " ")
}

// loadAvg is the first three fields of /proc/loadavg ("" without /proc).
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
