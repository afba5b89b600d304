package httpapi_test

import (
	"maps"
	"math"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/httpapi"
)

// TestExchangeDurationBucketsPastMintTimeout: an exchange that ran into the
// default mint timeout (5s) and then recorded its failure lands in a finite
// bucket of keytrail_exchange_duration_seconds, not only in +Inf, so a
// dashboard can tell timed-out exchanges from ones that hung far longer.
func TestExchangeDurationBucketsPastMintTimeout(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := httpapi.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	timedOut := broker.Unavailable("mint_timeout", time.Second, broker.ErrUnavailable)
	m.ObserveExchange("g", broker.KindVaultToken, timedOut, 5*time.Second+300*time.Millisecond)
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var bounds []float64
	finite := false
	for _, mf := range mfs {
		if mf.GetName() != "keytrail_exchange_duration_seconds" {
			continue
		}
		for _, b := range mf.GetMetric()[0].GetHistogram().GetBucket() {
			bounds = append(bounds, b.GetUpperBound())
			if b.GetCumulativeCount() == 1 {
				finite = true
			}
		}
	}
	if bounds == nil {
		t.Fatal("keytrail_exchange_duration_seconds not gathered")
	}
	if !finite {
		t.Errorf("a 5.3s exchange is in no finite bucket (buckets %v); want one above the 5s mint timeout", bounds)
	}
}

// TestObserveExchangeSeries: ObserveExchange keeps the series it used
// (keytrail_exchanges_total by grant, kind and outcome, the duration by
// outcome) between calls; every call, the first of its labels or not, from
// any goroutine, lands in the series the vectors name, as
// WithLabelValues on each call did.
func TestObserveExchangeSeries(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := httpapi.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	denied := broker.Errorf(broker.ErrDenied, "no_matching_workload", "no workload matches", nil)
	calls := []struct {
		grant, kind string
		err         error
		d           time.Duration
	}{
		{"payments", broker.KindVaultToken, nil, 2 * time.Millisecond},
		{"billing", broker.KindProxy, nil, 300 * time.Microsecond},
		{"payments", broker.KindVaultToken, denied, time.Millisecond},
		{"billing", broker.KindVaultToken, nil, 7 * time.Millisecond}, // same grant, another kind
	}
	const workers, rounds = 4, 50
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				for _, c := range calls {
					m.ObserveExchange(c.grant, c.kind, c.err, c.d)
				}
			}
		}()
	}
	wg.Wait()
	const n = workers * rounds
	wantCount := map[string]float64{
		"payments/" + broker.KindVaultToken + "/ok":                                       n,
		"billing/" + broker.KindProxy + "/ok":                                             n,
		"payments/" + broker.KindVaultToken + "/" + broker.CodeOf(broker.AsError(denied)): n,
		"billing/" + broker.KindVaultToken + "/ok":                                        n,
	}
	wantSeconds := map[string]struct {
		count uint64
		sum   float64
	}{
		"ok":                                  {3 * n, n * (0.002 + 0.0003 + 0.007)},
		broker.CodeOf(broker.AsError(denied)): {n, n * 0.001},
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	gotCount := map[string]float64{}
	seconds := 0
	for _, mf := range mfs {
		for _, mt := range mf.GetMetric() {
			l := map[string]string{}
			for _, lp := range mt.GetLabel() {
				l[lp.GetName()] = lp.GetValue()
			}
			switch mf.GetName() {
			case "keytrail_exchanges_total":
				gotCount[l["grant"]+"/"+l["kind"]+"/"+l["outcome"]] = mt.GetCounter().GetValue()
			case "keytrail_exchange_duration_seconds":
				seconds++
				h := mt.GetHistogram()
				want, ok := wantSeconds[l["outcome"]]
				if !ok {
					t.Errorf("unexpected duration series %v", l)
					continue
				}
				if h.GetSampleCount() != want.count || math.Abs(h.GetSampleSum()-want.sum) > 1e-9 {
					t.Errorf("duration{outcome=%q}: count %d sum %g, want %d and %g", l["outcome"], h.GetSampleCount(), h.GetSampleSum(), want.count, want.sum)
				}
			}
		}
	}
	if !maps.Equal(gotCount, wantCount) {
		t.Errorf("keytrail_exchanges_total = %v, want %v", gotCount, wantCount)
	}
	if seconds != len(wantSeconds) {
		t.Errorf("%d duration series, want %d", seconds, len(wantSeconds))
	}
}
