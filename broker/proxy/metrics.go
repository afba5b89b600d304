package proxy

import (
	"errors"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/broker/httpapi"
)

// Metrics are the proxy's Prometheus metrics. Label values are bounded:
// grant is a grant of the policy in force (or "" for requests that name no
// known grant), status an HTTP status code.
type Metrics struct {
	Requests  *prometheus.CounterVec   // keytrail_proxy_requests_total{grant,status}
	Duration  *prometheus.HistogramVec // keytrail_proxy_duration_seconds{grant}
	SharedUse *prometheus.CounterVec   // keytrail_shared_use_suspected_total{grant}

	// series holds the children of Requests and Duration observe has used,
	// by grant and status (httpapi.SeriesCache): WithLabelValues would
	// also have the status formatted for it each time.
	series httpapi.SeriesCache[seriesKey, *seriesChildren]
}

// seriesKey is the labels of one keytrail_proxy_requests_total series.
type seriesKey struct {
	grant  string
	status int
}

// seriesChildren are the series one proxied request's end updates.
type seriesChildren struct {
	count   prometheus.Counter  // Requests{grant, status}
	seconds prometheus.Observer // Duration{grant}
}

// newMetrics creates the metrics and registers them with reg when it is not
// nil.
func newMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		Requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_proxy_requests_total",
			Help: "Requests to /v1/proxy by grant and the status returned to the caller.",
		}, []string{"grant", "status"}),
		Duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keytrail_proxy_duration_seconds",
			Help:    "Time from a proxied request's arrival to the end of its response, by grant.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"grant"}),
		SharedUse: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_shared_use_suspected_total",
			Help: "Proxy credentials seen from a source address other than the one they were issued to, by grant.",
		}, []string{"grant"}),
	}
	if reg == nil {
		return m, nil
	}
	var errs []error
	for _, c := range []prometheus.Collector{m.Requests, m.Duration, m.SharedUse} {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return m, nil
}

func (m *Metrics) observe(grant string, status int, d time.Duration) {
	c := m.series.Get(seriesKey{grant: grant, status: status}, m.seriesChildrenOf)
	c.count.Inc()
	c.seconds.Observe(d.Seconds())
}

// seriesChildrenOf returns the series of k, looked up in the vectors.
func (m *Metrics) seriesChildrenOf(k seriesKey) *seriesChildren {
	return &seriesChildren{
		count:   m.Requests.WithLabelValues(k.grant, strconv.Itoa(k.status)),
		seconds: m.Duration.WithLabelValues(k.grant),
	}
}
