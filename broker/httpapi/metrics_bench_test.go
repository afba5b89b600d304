package httpapi_test

import (
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/httpapi"
)

// BenchmarkObserveExchange is what /v1/token records per successful
// exchange: keytrail_exchanges_total and keytrail_exchange_duration_seconds.
func BenchmarkObserveExchange(b *testing.B) {
	m, err := httpapi.NewMetrics(prometheus.NewRegistry())
	if err != nil {
		b.Fatal(err)
	}
	// A few grants, as a policy has them.
	for _, g := range []string{"a", "b", "c"} {
		m.ObserveExchange(g, broker.KindProxy, nil, time.Millisecond)
	}
	b.ReportAllocs()
	for b.Loop() {
		m.ObserveExchange("payments-vault", broker.KindVaultToken, nil, 700*time.Microsecond)
	}
}
