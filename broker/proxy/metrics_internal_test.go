package proxy

import (
	"maps"
	"math"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestObserveSeries: observe keeps the series it used
// (keytrail_proxy_requests_total by grant and status, the duration by
// grant) between calls; every call, the first of its labels or not, from
// any goroutine, lands in the series the vectors name, as WithLabelValues
// on each call did.
func TestObserveSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	calls := []struct {
		grant  string
		status int
		d      time.Duration
	}{
		{"stripe", 200, 2 * time.Millisecond},
		{"stripe", 502, time.Millisecond},
		{"github", 200, 300 * time.Microsecond},
		{"", 401, 50 * time.Microsecond}, // a request that named no known grant
		{"github", 99, 7 * time.Millisecond},
	}
	const workers, rounds = 4, 50
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				for _, c := range calls {
					m.observe(c.grant, c.status, c.d)
				}
			}
		}()
	}
	wg.Wait()
	const n = workers * rounds
	wantCount := map[string]float64{}
	type hist struct {
		count uint64
		sum   float64
	}
	wantSeconds := map[string]hist{}
	for _, c := range calls {
		wantCount[c.grant+"/"+strconv.Itoa(c.status)] += n
		h := wantSeconds[c.grant]
		h.count += n
		h.sum += n * c.d.Seconds()
		wantSeconds[c.grant] = h
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	gotCount := map[string]float64{}
	gotSeconds := map[string]hist{}
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range mt.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			switch mf.GetName() {
			case "keytrail_proxy_requests_total":
				gotCount[l["grant"]+"/"+l["status"]] = mt.GetCounter().GetValue()
			case "keytrail_proxy_duration_seconds":
				h := mt.GetHistogram()
				gotSeconds[l["grant"]] = hist{h.GetSampleCount(), h.GetSampleSum()}
			}
		}
	}
	if !maps.Equal(gotCount, wantCount) {
		t.Errorf("keytrail_proxy_requests_total = %v, want %v", gotCount, wantCount)
	}
	if len(gotSeconds) != len(wantSeconds) {
		t.Errorf("duration series %v, want %v", gotSeconds, wantSeconds)
	}
	for g, want := range wantSeconds {
		got, ok := gotSeconds[g]
		if !ok || got.count != want.count || math.Abs(got.sum-want.sum) > 1e-9 {
			t.Errorf("duration{grant=%q}: %+v, want %+v", g, got, want)
		}
	}
}

// TestObserveAllocs: a request's metrics, once its grant and status have
// been seen, allocate nothing (WithLabelValues formatted the status and
// boxed the labels on every request).
func TestObserveAllocs(t *testing.T) {
	m, err := newMetrics(nil)
	if err != nil {
		t.Fatal(err)
	}
	m.observe("stripe", 200, time.Millisecond)
	if n := testing.AllocsPerRun(100, func() { m.observe("stripe", 200, time.Millisecond) }); n != 0 {
		t.Errorf("observe: %v allocations per call, want 0", n)
	}
}
