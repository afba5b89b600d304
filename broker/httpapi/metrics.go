package httpapi

import (
	"errors"
	"maps"
	"sync"
	"sync/atomic"
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
	// RefusalsSuppressed counts the refusals answered with no audit event
	// of their own by the bucket that suppressed them: the 429s
	// source_rate_limited (broker.RefusalScopeSource, RefusalScopeGlobal)
	// and authenticated callers' 429s rate_limited past
	// RefusalLimits.PerIdentity (RefusalScopeIdentity).
	RefusalsSuppressed *prometheus.CounterVec

	// exchangeSeries holds the children of Exchanges and ExchangeSeconds
	// ObserveExchange has used, by their labels (SeriesCache).
	exchangeSeries SeriesCache[exchangeKey, *exchangeChildren]
}

// SeriesCache holds the children of metric vectors a hot path updates, by
// their labels: WithLabelValues checks, hashes and looks up its labels
// under the vector's lock on every call. The map is replaced, never
// changed (copy on write, under a mutex): a new label set is rare, a
// look-up takes no lock and allocates nothing. Nothing deletes series from
// the vectors, so a child held here is the one WithLabelValues would
// return. The zero value is empty, ready for use.
type SeriesCache[K comparable, V any] struct {
	series atomic.Pointer[map[K]V]
	mu     sync.Mutex
}

// Get returns the children of k, made by children(k) the first time k is
// asked for (under the cache's mutex: once per k).
func (c *SeriesCache[K, V]) Get(k K, children func(K) V) V {
	if cur := c.series.Load(); cur != nil {
		if v, ok := (*cur)[k]; ok {
			return v
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var next map[K]V
	if cur := c.series.Load(); cur != nil {
		if v, ok := (*cur)[k]; ok {
			return v
		}
		next = maps.Clone(*cur)
	} else {
		next = make(map[K]V, 1)
	}
	v := children(k)
	next[k] = v
	c.series.Store(&next)
	return v
}

// exchangeKey is the labels of one keytrail_exchanges_total series.
type exchangeKey struct{ grant, kind, outcome string }

// exchangeChildren are the series one exchange outcome updates.
type exchangeChildren struct {
	count   prometheus.Counter  // Exchanges{grant, kind, outcome}
	seconds prometheus.Observer // ExchangeSeconds{outcome}
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
		RefusalsSuppressed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keytrail_refusals_suppressed_total",
			Help: "Refusals answered with no audit event of their own, by the bucket that suppressed them: unauthenticated ones (429 source_rate_limited; source, global), authenticated callers' 429s and refusals past refusal_limit.per_identity (identity; a refusal answered as itself, not 429).",
		}, []string{"scope"}),
	}
	// Every series exists from the start, so that a rate over them is 0
	// rather than absent before the first flood.
	for _, scope := range []string{broker.RefusalScopeSource, broker.RefusalScopeGlobal, broker.RefusalScopeIdentity} {
		m.RefusalsSuppressed.WithLabelValues(scope)
	}
	for _, c := range []prometheus.Collector{m.Exchanges, m.ExchangeSeconds, m.Denies, m.RateLimited, m.RefusalsSuppressed} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// ObserveRefusal records a request to another endpoint than POST /v1/token
// (endpoint: "proxy", "introspect", "admin") refused with err:
// keytrail_denies_total by its reason, and keytrail_rate_limited_total when
// it was a 429 slow_down, and keytrail_refusals_suppressed_total by scope
// when it has no audit event of its own (a 429 that suppressed an
// unauthenticated refusal; a 429 or refusal past its caller's
// RefusalLimits.PerIdentity).
func (m *Metrics) ObserveRefusal(endpoint string, err error) {
	m.observeDeny(endpoint, broker.AsError(err))
}

// observeDeny records e, a refusal of endpoint, in keytrail_denies_total,
// keytrail_rate_limited_total and keytrail_refusals_suppressed_total.
func (m *Metrics) observeDeny(endpoint string, e *broker.Error) {
	m.Denies.WithLabelValues(e.Reason).Inc()
	if errors.Is(e, broker.ErrRateLimited) {
		m.RateLimited.WithLabelValues(endpoint).Inc()
	}
	if scope := broker.SuppressedScope(e); scope != "" {
		m.RefusalsSuppressed.WithLabelValues(scope).Inc()
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
		m.observeDeny("token", e)
	}
	c := m.exchangeSeries.Get(exchangeKey{grant: grant, kind: kind, outcome: outcome}, m.exchangeChildrenOf)
	c.count.Inc()
	c.seconds.Observe(d.Seconds())
}

// exchangeChildrenOf returns the series of k, looked up in the vectors.
func (m *Metrics) exchangeChildrenOf(k exchangeKey) *exchangeChildren {
	return &exchangeChildren{
		count:   m.Exchanges.WithLabelValues(k.grant, k.kind, k.outcome),
		seconds: m.ExchangeSeconds.WithLabelValues(k.outcome),
	}
}
