package httpapi

import (
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/broker"
)

// Metrics are the broker's Prometheus metrics recorded at the HTTP layer.
type Metrics struct {
	Exchanges       *prometheus.CounterVec
	ExchangeSeconds *prometheus.HistogramVec
	Denies          *prometheus.CounterVec
	RateLimited     *prometheus.CounterVec
}

// NewMetrics registers the metrics with reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		Exchanges: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_exchanges_total",
			Help: "Token exchanges by grant, kind and outcome (ok, the OAuth error code, or client_gone).",
		}, []string{"grant", "kind", "outcome"}),
		// The buckets go past the mint timeout (5 s by default, up to 60 s
		// with a longer vault.timeout): an exchange that timed out also
		// waited for its store write and audit event, within the server's
		// 90 s write timeout.
		ExchangeSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keytrail_exchange_duration_seconds",
			Help:    "Latency of POST /v1/token by outcome.",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 90},
		}, []string{"outcome"}),
		Denies: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_denies_total",
			Help: "Requests the broker refused (token exchanges, proxied requests before anything went upstream, introspections, admin calls), 503s of its backends included, by stable reason.",
		}, []string{"reason"}),
		RateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_rate_limited_total",
			Help: "Requests refused with 429 slow_down, by endpoint.",
		}, []string{"endpoint"}),
	}
	for _, c := range []prometheus.Collector{m.Exchanges, m.ExchangeSeconds, m.Denies, m.RateLimited} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// ObserveRefusal records a request to another endpoint than POST /v1/token
// (endpoint: "proxy", "introspect", "admin") refused with err:
// keytrail_denies_total by its reason, and keytrail_rate_limited_total when
// it was a 429 slow_down.
func (m *Metrics) ObserveRefusal(endpoint string, err error) {
	e := broker.AsError(err)
	m.Denies.WithLabelValues(e.Reason).Inc()
	if errors.Is(e, broker.ErrRateLimited) {
		m.RateLimited.WithLabelValues(endpoint).Inc()
	}
}

// ObserveExchange records one exchange.
func (m *Metrics) ObserveExchange(grant, kind string, err error, d time.Duration) {
	outcome := "ok"
	if err != nil {
		e := broker.AsError(err)
		outcome = broker.CodeOf(e)
		if e.Reason == broker.OrphanClientGone {
			outcome = broker.OrphanClientGone // the caller left: no OAuth answer was sent
		}
		m.Denies.WithLabelValues(e.Reason).Inc()
		if errors.Is(e, broker.ErrRateLimited) {
			m.RateLimited.WithLabelValues("token").Inc()
		}
	}
	m.Exchanges.WithLabelValues(grant, kind, outcome).Inc()
	m.ExchangeSeconds.WithLabelValues(outcome).Observe(d.Seconds())
}
