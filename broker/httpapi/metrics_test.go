package httpapi_test

import (
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
