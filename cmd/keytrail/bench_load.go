package main

// The load generator of `keytrail bench`: closed-loop runs (N workers, each
// sending its next request when the last one answered) find the maximum
// throughput; open-loop runs (requests sent on a fixed schedule whatever
// the answers) measure latency from each request's intended send time, so
// a slow answer cannot hide the requests that should have gone out
// meanwhile (no coordinated omission).

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// benchOp sends one request and reports whether it failed.
type benchOp func(ctx context.Context) error

// cpuProbe reads the CPU time used so far by the processes a figure is
// about (the broker, Vault, Redis).
type cpuProbe struct {
	name string
	pids func() []int
	// total, when set, replaces pids: a machine-wide counter (steal).
	total func() time.Duration
}

func (p cpuProbe) read() time.Duration {
	if p.total != nil {
		return p.total()
	}
	var sum time.Duration
	for _, pid := range p.pids() {
		if d, ok := procCPU(pid); ok {
			sum += d
		}
	}
	return sum
}

// benchRun is one measurement: one variant, one repetition, one mode.
type benchRun struct {
	Variant    string  `json:"variant"`
	Rep        int     `json:"rep"`
	Mode       string  `json:"mode"` // closed or open
	Workers    int     `json:"workers,omitempty"`
	TargetRate float64 `json:"target_rate,omitempty"`
	Seconds    float64 `json:"seconds"`
	OK         int     `json:"ok"`
	Errors     int     `json:"errors"`
	// Dropped counts open-loop sends skipped because too many requests
	// were already outstanding (also counted in Errors).
	Dropped    int     `json:"dropped,omitempty"`
	Throughput float64 `json:"throughput"` // successful operations per second
	P50us      float64 `json:"p50_us"`
	P90us      float64 `json:"p90_us"`
	P99us      float64 `json:"p99_us"`
	MaxUs      float64 `json:"max_us"`
	// CPUusPerOp is, per process group probed, CPU microseconds used
	// during the run divided by the operations sent.
	CPUusPerOp map[string]float64 `json:"cpu_us_per_op,omitempty"`
	// AuditWritesPerOp is the brokers' audit writes (group-commit batches,
	// each made durable by a journal write or an fsync unless audit.fsync
	// is off) during the run divided by the operations sent; for
	// comparisons that hit brokers.
	AuditWritesPerOp float64 `json:"audit_writes_per_op,omitempty"`
	// AuditSyncMeanUs is the brokers' mean time to make one audit batch
	// durable during the run, in µs.
	AuditSyncMeanUs float64 `json:"audit_sync_mean_us,omitempty"`
	// AuditUnread: the brokers' /metrics could not be read around the
	// run, so the two figures above are unknown (not zero); the medians
	// leave the run out.
	AuditUnread bool   `json:"audit_unread,omitempty"`
	FirstError  string `json:"first_error,omitempty"`
}

// recorder collects latencies and errors of one run.
type recorder struct {
	mu       sync.Mutex
	lat      []time.Duration
	errors   int
	dropped  int
	firstErr string
}

func (r *recorder) add(d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err != nil {
		r.errors++
		if r.firstErr == "" {
			r.firstErr = err.Error()
		}
		return
	}
	r.lat = append(r.lat, d)
}

func (r *recorder) merge(lat []time.Duration, errs int, first string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lat = append(r.lat, lat...)
	r.errors += errs
	if r.firstErr == "" {
		r.firstErr = first
	}
}

// finish turns the recorder into a benchRun.
func (r *recorder) finish(run *benchRun, elapsed time.Duration, cpu map[string]time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	slices.Sort(r.lat)
	run.Seconds = elapsed.Seconds()
	run.OK, run.Errors, run.Dropped, run.FirstError = len(r.lat), r.errors+r.dropped, r.dropped, r.firstErr
	if elapsed > 0 {
		run.Throughput = float64(len(r.lat)) / elapsed.Seconds()
	}
	run.P50us = us(percentile(r.lat, 0.50))
	run.P90us = us(percentile(r.lat, 0.90))
	run.P99us = us(percentile(r.lat, 0.99))
	if n := len(r.lat); n > 0 {
		run.MaxUs = us(r.lat[n-1])
	}
	if ops := len(r.lat) + r.errors; ops > 0 && len(cpu) > 0 {
		run.CPUusPerOp = map[string]float64{}
		for k, d := range cpu {
			run.CPUusPerOp[k] = round1(us(d) / float64(ops))
		}
	}
}

// percentile is the nearest-rank percentile of sorted durations (0 when
// empty).
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

func us(d time.Duration) float64 { return round1(float64(d) / float64(time.Microsecond)) }

func round1(f float64) float64 { return math.Round(f*10) / 10 }

// cpuSnapshot reads every probe.
func cpuSnapshot(probes []cpuProbe) map[string]time.Duration {
	m := make(map[string]time.Duration, len(probes))
	for _, p := range probes {
		m[p.name] = p.read()
	}
	return m
}

func cpuSince(probes []cpuProbe, before map[string]time.Duration) map[string]time.Duration {
	m := make(map[string]time.Duration, len(probes))
	for _, p := range probes {
		m[p.name] = p.read() - before[p.name]
	}
	return m
}

// closedLoop runs op from workers goroutines back to back for d.
func closedLoop(ctx context.Context, op benchOp, workers int, d time.Duration, probes []cpuProbe) benchRun {
	run := benchRun{Mode: "closed", Workers: workers}
	var rec recorder
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second) // bounds a hung request
	defer cancel()
	before := cpuSnapshot(probes)
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat := make([]time.Duration, 0, 1024)
			errs, first := 0, ""
			for ctx.Err() == nil {
				t0 := time.Now()
				if !t0.Before(end) {
					break
				}
				if err := op(ctx); err != nil {
					errs++
					if first == "" {
						first = err.Error()
					}
					continue
				}
				lat = append(lat, time.Since(t0))
			}
			rec.merge(lat, errs, first)
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	rec.finish(&run, elapsed, cpuSince(probes, before))
	return run
}

// openLoop sends op at rate per second for d, each request from its own
// goroutine at its intended send time, and measures each latency from that
// intended time. At most maxInFlight requests are outstanding; a send that
// would exceed it is dropped and counted as an error.
func openLoop(ctx context.Context, op benchOp, rate float64, d time.Duration, maxInFlight int, probes []cpuProbe) benchRun {
	run := benchRun{Mode: "open", TargetRate: math.Round(rate)}
	var rec recorder
	if rate <= 0 {
		rec.finish(&run, 0, nil)
		return run
	}
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	// At least one request: a run too short for its rate (a light-load
	// loop at 1/s in a 200 ms smoke run on a busy machine) would otherwise
	// measure nothing.
	n := max(1, int(rate*d.Seconds()))
	interval := time.Duration(float64(time.Second) / rate)
	var inflight atomic.Int64
	var wg sync.WaitGroup
	before := cpuSnapshot(probes)
	start := time.Now()
	func() {
		p := newPacer()
		defer p.close()
		for i := range n {
			if ctx.Err() != nil {
				return
			}
			intended := start.Add(time.Duration(i) * interval)
			p.until(intended)
			if inflight.Load() >= int64(maxInFlight) {
				rec.mu.Lock()
				rec.dropped++
				if rec.firstErr == "" {
					rec.firstErr = "too many requests outstanding: send dropped"
				}
				rec.mu.Unlock()
				continue
			}
			inflight.Add(1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer inflight.Add(-1)
				err := op(ctx)
				rec.add(time.Since(intended), err)
			}()
		}
	}()
	wg.Wait()
	elapsed := time.Since(start)
	rec.finish(&run, elapsed, cpuSince(probes, before))
	// Throughput of an open-loop run is the rate achieved over the
	// schedule, not over the tail of the last answers.
	if d > 0 {
		run.Throughput = round1(float64(run.OK) / max(d.Seconds(), elapsed.Seconds()))
	}
	return run
}

// clockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat;
// 100 on every Linux architecture Go supports.
const clockTicks = 100

// parseProcStat reads utime and stime (fields 14 and 15) from a
// /proc/<pid>/stat line. The command name (field 2) is in parentheses and
// may hold spaces, so fields are counted from the last ')'.
func parseProcStat(s string) (time.Duration, bool) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, false
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): utime is field 14 = f[11], stime f[12].
	if len(f) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return time.Duration(u+st) * time.Second / clockTicks, true
}

// machineTimes are the whole machine's CPU times from the "cpu" line of
// /proc/stat: steal is the time the hypervisor ran something else while
// this virtual machine's CPUs had work (always 0 on bare metal), total all
// of it (user to steal).
type machineTimes struct{ steal, total time.Duration }

// parseMachineStat reads the "cpu" line of /proc/stat: user nice system
// idle iowait irq softirq steal [guest guest_nice], in clock ticks (guest
// time is already counted in user).
func parseMachineStat(s string) (machineTimes, bool) {
	line, _, _ := strings.Cut(s, "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return machineTimes{}, false
	}
	var t [8]uint64
	var sum uint64
	for i := range t {
		v, err := strconv.ParseUint(f[1+i], 10, 64)
		if err != nil {
			return machineTimes{}, false
		}
		t[i], sum = v, sum+v
	}
	tick := func(n uint64) time.Duration { return time.Duration(n) * time.Second / clockTicks }
	return machineTimes{steal: tick(t[7]), total: tick(sum)}, true
}

// stealPct is the share of the machine's CPU time stolen between a and b,
// in per cent.
func stealPct(a, b machineTimes) float64 {
	if b.total <= a.total {
		return 0
	}
	return round1(100 * float64(b.steal-a.steal) / float64(b.total-a.total))
}

// auditWrites reads keytrail_audit_writes_total from brokers' /metrics:
// one per group-commit batch, each made durable by one journal write (or
// fsync). Writes per operation say how many operations shared each. It also
// reads keytrail_audit_sync_duration_seconds, how long the batches took to
// become durable under the run's load (the machine line times it idle).
type auditWrites struct {
	client *http.Client
	urls   []string
}

// auditCounters are the audit figures of /metrics, summed over brokers.
type auditCounters struct {
	writes float64
	// syncSeconds and syncs are the sync histogram's sum and count; both
	// 0 when a broker does not export it (an older --keytrail-bin).
	syncSeconds, syncs float64
}

const (
	metricAuditWrites = "keytrail_audit_writes_total"
	metricAuditSync   = "keytrail_audit_sync_duration_seconds"
)

// read returns the sum over the brokers.
func (a *auditWrites) read(ctx context.Context) (auditCounters, error) {
	var sum auditCounters
	for _, u := range a.urls {
		fams, err := metricsFromURL(ctx, a.client, u+"/metrics")
		if err != nil {
			return auditCounters{}, err
		}
		v, err := counterValue(fams, metricAuditWrites)
		if err != nil {
			return auditCounters{}, fmt.Errorf("GET %s/metrics: %w", u, err)
		}
		sum.writes += v
		if f, ok := fams[metricAuditSync]; ok && len(f.GetMetric()) == 1 && f.GetMetric()[0].GetHistogram() != nil {
			h := f.GetMetric()[0].GetHistogram()
			sum.syncSeconds += h.GetSampleSum()
			sum.syncs += float64(h.GetSampleCount())
		}
	}
	return sum, nil
}

// metricsFromURL fetches and parses a Prometheus text exposition.
func metricsFromURL(ctx context.Context, c *http.Client, u string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", u, resp.Status)
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("GET %s: %w", u, err)
	}
	return families, nil
}

// counterValue returns the value of the counter or gauge named name (a
// metric without labels).
func counterValue(families map[string]*dto.MetricFamily, name string) (float64, error) {
	if f, ok := families[name]; ok && len(f.GetMetric()) == 1 {
		switch m := f.GetMetric()[0]; {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), nil
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), nil
		case m.GetUntyped() != nil:
			return m.GetUntyped().GetValue(), nil
		}
	}
	return 0, fmt.Errorf("no single counter or gauge %s", name)
}

// withAuditWrites runs measure and, when a is set, adds the brokers' audit
// writes per operation and the mean time a batch took to become durable to
// its result (or marks it AuditUnread when /metrics could not be read). The
// metrics are read just before and just after the run: a use_result event
// of the run's last requests may still be held (audit.defer_for) and be
// counted with the next run.
func withAuditWrites(ctx context.Context, a *auditWrites, measure func() benchRun) benchRun {
	if a == nil {
		return measure()
	}
	before, err := a.read(ctx)
	r := measure()
	if err != nil {
		r.AuditUnread = true
		return r
	}
	after, err := a.read(ctx)
	if err != nil {
		r.AuditUnread = true
		return r
	}
	if ops := r.OK + r.Errors; ops > 0 {
		r.AuditWritesPerOp = math.Round((after.writes-before.writes)/float64(ops)*1000) / 1000
	}
	if n := after.syncs - before.syncs; n > 0 {
		r.AuditSyncMeanUs = round1((after.syncSeconds - before.syncSeconds) / n * 1e6)
	}
	return r
}
