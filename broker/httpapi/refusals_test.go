package httpapi_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/policies"
)

type refusalFixture struct {
	svc  *broker.Service
	h    http.Handler
	sink *brokertest.Sink
	reg  *prometheus.Registry
	mu   sync.Mutex
	now  time.Time
}

func (f *refusalFixture) clock() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

func (f *refusalFixture) advance(d time.Duration) {
	f.mu.Lock()
	f.now = f.now.Add(d)
	f.mu.Unlock()
}

func newRefusalFixture(t *testing.T, limits *broker.RefusalLimits) *refusalFixture {
	t.Helper()
	// The workload has no rate of its own.
	return newRefusalFixtureWith(t, limits, testPolicy(t, "", ""), broker.IntrospectLimits{})
}

// newRefusalFixtureWith is newRefusalFixture with policy pol and
// introspection limits il; callerToken is a trusted identity that matches
// no workload.
func newRefusalFixtureWith(t *testing.T, limits *broker.RefusalLimits, pol *policies.Policy, il broker.IntrospectLimits) *refusalFixture {
	t.Helper()
	f := &refusalFixture{sink: &brokertest.Sink{}, reg: prometheus.NewRegistry(),
		now: time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)}
	authn := brokertest.Authn{goodToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "repo:acme/deploy",
		Claims: map[string]any{"sub": "repo:acme/deploy"}},
		callerToken: {IssuerName: "ci", Iss: "https://ci.example", Sub: "repo:acme/verifier", JTI: "caller-jti-1",
			Claims: map[string]any{"sub": "repo:acme/verifier"}}}
	minter := &brokertest.Minter{}
	svc, err := broker.NewService(broker.Deps{
		Policy:        func() *policies.Policy { return pol },
		Authn:         func() broker.Authenticator { return authn },
		Minters:       map[string]broker.Minter{broker.KindVaultToken: minter},
		Revokers:      map[string]broker.Revoker{broker.KindVaultToken: minter},
		Store:         memstore.New(f.clock),
		Audit:         f.sink,
		Now:           f.clock,
		RefusalLimits: limits,
		// 0: the defaults.
		IntrospectLimits: il,
	})
	if err != nil {
		t.Fatal(err)
	}
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example",
		TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32")}, Registry: f.reg, Extra: httpapi.RegisterAdmin})
	if err != nil {
		t.Fatal(err)
	}
	f.svc, f.h = svc, api.Routes()
	return f
}

// do sends one request through the front proxy 10.0.0.1, which appended
// xff (the caller's address, perhaps after the caller's own entries).
func (f *refusalFixture) do(method, path, xff, bearer, body string) *httptest.ResponseRecorder {
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	r.RemoteAddr = "10.0.0.1:5555"
	r.Header.Set("X-Forwarded-For", xff)
	if body != "" {
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	if bearer != "" {
		r.Header.Set("Authorization", "Bearer "+bearer)
	}
	w := httptest.NewRecorder()
	f.h.ServeHTTP(w, r)
	return w
}

func (f *refusalFixture) badToken(xff string) *httptest.ResponseRecorder {
	return f.do(http.MethodPost, "/v1/token", xff, "", form("subject_token", "garbage").Encode())
}

// events returns the recorded events as "type reason ip" lines.
func (f *refusalFixture) events() []string {
	var out []string
	for _, ev := range f.sink.Events() {
		line := ev.Type
		if ev.Outcome != nil && ev.Outcome.Reason != "" {
			line += " " + ev.Outcome.Reason
		}
		if ev.Source != nil {
			line += " " + ev.Source.IP
		}
		out = append(out, line)
	}
	return out
}

// TestUnauthenticatedRefusalFlood: a source refused before it
// authenticated is audited per request for its burst, then answered 429
// slow_down with Retry-After and no event, on /v1/token, /v1/introspect and
// the admin routes alike, until one summary event counts what was
// suppressed. Entries the caller put left of its proxy's in
// X-Forwarded-For do not move it to another budget; another source and an
// authenticated workload from the same address are not limited.
func TestUnauthenticatedRefusalFlood(t *testing.T) {
	f := newRefusalFixture(t, &broker.RefusalLimits{PerSecond: 1, Burst: 3, SummaryEvery: time.Minute})
	const a, b = "203.0.113.7", "198.51.100.9"

	for i := range 3 {
		if w := f.badToken(a); w.Code != http.StatusUnauthorized {
			t.Fatalf("bad token %d within the burst = %d, want 401", i+1, w.Code)
		}
	}
	flood := []func() *httptest.ResponseRecorder{
		func() *httptest.ResponseRecorder { return f.badToken(a) },
		func() *httptest.ResponseRecorder { return f.badToken(b + ", " + a) }, // b is the caller's own text
		func() *httptest.ResponseRecorder {
			return f.do(http.MethodPost, "/v1/token", a, "", "grant_type=nope") // malformed, before the Service
		},
		func() *httptest.ResponseRecorder {
			return f.do(http.MethodPost, "/v1/introspect", a, "garbage", "token=x")
		},
		func() *httptest.ResponseRecorder { return f.do(http.MethodGet, "/v1/admin/blocks", a, "garbage", "") },
		func() *httptest.ResponseRecorder { return f.do(http.MethodGet, "/v1/admin/blocks", a, "", "") },
		func() *httptest.ResponseRecorder { return f.do(http.MethodGet, "/v1/admin/nowhere", a, "garbage", "") },
	}
	for i, req := range flood {
		w := req()
		if w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "1" || !strings.Contains(w.Body.String(), `"slow_down"`) {
			t.Fatalf("flood request %d = %d Retry-After %q %s, want 429 slow_down Retry-After 1", i, w.Code, w.Header().Get("Retry-After"), w.Body)
		}
	}
	want := []string{"deny bad_signature " + a, "deny bad_signature " + a, "deny bad_signature " + a}
	if got := f.events(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events after the flood = %q, want the burst's %q only", got, want)
	}
	// Every endpoint's suppressed refusal is counted by the bucket that
	// suppressed it: the source's.
	if got := fmt.Sprint(suppressedOf(t, f.reg, "source"), " ", suppressedOf(t, f.reg, "global")); got != fmt.Sprint(len(flood), " 0") {
		t.Errorf("keytrail_refusals_suppressed_total{scope=source, global} = %s, want %d 0", got, len(flood))
	}

	// Another source has its own budget; a workload that authenticates
	// from the flooding address is not limited.
	if w := f.badToken(b); w.Code != http.StatusUnauthorized {
		t.Errorf("bad token from another source = %d, want 401", w.Code)
	}
	if w := f.do(http.MethodPost, "/v1/token", a, "", form().Encode()); w.Code != http.StatusOK {
		t.Errorf("valid exchange from the flooding source = %d %s, want 200", w.Code, w.Body)
	}
	want = append(want, "deny bad_signature "+b, "issue "+a)
	if got := f.events(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events = %q, want %q", got, want)
	}

	// The summary waits for its span to end, then counts the flood.
	f.svc.FlushRefusalSummaries(context.Background(), false)
	if got := len(f.sink.Events()); got != len(want) {
		t.Fatalf("a summary was written before its span ended: %q", f.events())
	}
	f.advance(time.Minute)
	f.svc.FlushRefusalSummaries(context.Background(), false)
	f.svc.FlushRefusalSummaries(context.Background(), false) // once only
	evs := f.sink.Events()
	if len(evs) != len(want)+1 {
		t.Fatalf("events after the span = %q, want one summary more than %q", f.events(), want)
	}
	sum := evs[len(evs)-1]
	start := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC).Format(audit.TimeFormat)
	wantSum := fmt.Sprint(audit.TypeDeny, " 429 slow_down ", broker.ReasonRefusalsSuppressed, " ", a, " source ", len(flood), " ", start, " ", start)
	gotSum := fmt.Sprint(sum.Type, " ", sum.Outcome.Status, " ", sum.Outcome.Error, " ", sum.Outcome.Reason, " ", sum.Source.IP, " ",
		sum.Details["scope"], " ", sum.Details["suppressed"], " ", sum.Details["first"], " ", sum.Details["last"])
	if gotSum != wantSum {
		t.Errorf("summary = %s, want %s", gotSum, wantSum)
	}

	if got := deniesOf(t, f.reg, broker.ReasonSourceRateLimited); got != float64(len(flood)) {
		t.Errorf("keytrail_denies_total{reason=%q} = %v, want %d", broker.ReasonSourceRateLimited, got, len(flood))
	}
}

func deniesOf(t *testing.T, reg *prometheus.Registry, reason string) float64 {
	t.Helper()
	return counterOf(t, reg, "keytrail_denies_total", "reason", reason)
}

// suppressedOf is keytrail_refusals_suppressed_total{scope}.
func suppressedOf(t *testing.T, reg *prometheus.Registry, scope string) float64 {
	t.Helper()
	return counterOf(t, reg, "keytrail_refusals_suppressed_total", "scope", scope)
}

// counterOf is the counter name{label=value} (0 when it is not there).
func counterOf(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == label && l.GetValue() == value {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// TestRefusalSourcesBounded: the sources tracked never exceed MaxSources
// however many addresses refusals come from; an IPv6 /64 is one source;
// a source whose bucket is full again and has nothing pending is dropped
// by the sweep.
func TestRefusalSourcesBounded(t *testing.T) {
	f := newRefusalFixture(t, &broker.RefusalLimits{PerSecond: 1, Burst: 2, MaxSources: 8, SummaryEvery: time.Minute})
	for i := range 500 {
		f.badToken(fmt.Sprintf("192.0.2.%d", i%250))
		if n := f.svc.RefusalSources(); n > 8 {
			t.Fatalf("after %d sources: %d tracked, want at most 8", i+1, n)
		}
	}
	for i, want := range []int{http.StatusUnauthorized, http.StatusUnauthorized, http.StatusTooManyRequests} {
		if w := f.badToken(fmt.Sprintf("2001:db8:1:2::%x", i+1)); w.Code != want {
			t.Errorf("IPv6 refusal %d of one /64 = %d, want %d", i+1, w.Code, want)
		}
	}
	f.advance(time.Hour)
	f.svc.FlushRefusalSummaries(context.Background(), false)
	if n := f.svc.RefusalSources(); n != 0 {
		t.Errorf("after an idle hour: %d sources tracked, want 0", n)
	}
}

// TestRefusalLimitsOff: without RefusalLimits every refusal is audited.
func TestRefusalLimitsOff(t *testing.T) {
	f := newRefusalFixture(t, nil)
	for i := range 50 {
		if w := f.badToken("203.0.113.7"); w.Code != http.StatusUnauthorized {
			t.Fatalf("bad token %d = %d, want 401", i+1, w.Code)
		}
	}
	if n := len(f.sink.Events()); n != 50 {
		t.Errorf("%d events, want 50", n)
	}
}

// syncDeferredSink is a brokertest.Sink that is a broker.DeferredAuditSink
// answering at once, so a deferred summary's outcome is known when the
// request that wrote it returns.
type syncDeferredSink struct{ *brokertest.Sink }

func (s syncDeferredSink) AppendDeferred(ev *audit.Event, done func(error)) {
	done(s.Append(context.Background(), ev))
}

// TestRefusalSummaryWriteFails: a summary whose own audit write fails
// (not pending: it will not land) is not lost: its count is pending again
// and written by a later flush, whether it was handed out deferred (its
// source dropped to make room, then kept aside, the guard being full) or
// waited for (its span ended).
func TestRefusalSummaryWriteFails(t *testing.T) {
	f := newRefusalFixture(t, nil)
	sink := syncDeferredSink{f.sink}
	var failing atomic.Bool
	f.sink.Fail = func(ev *audit.Event) bool {
		return failing.Load() && ev.Outcome != nil && ev.Outcome.Reason == broker.ReasonRefusalsSuppressed
	}
	svc, err := broker.NewService(broker.Deps{
		Policy:        func() *policies.Policy { return testPolicy(t, "", "") },
		Authn:         func() broker.Authenticator { return brokertest.Authn{} },
		Store:         memstore.New(f.clock),
		Audit:         sink,
		Now:           f.clock,
		RefusalLimits: &broker.RefusalLimits{PerSecond: 1, Burst: 1, MaxSources: 1, SummaryEvery: time.Minute},
	})
	if err != nil {
		t.Fatal(err)
	}
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example", TrustedProxies: []netip.Prefix{netip.MustParsePrefix("10.0.0.1/32")}})
	if err != nil {
		t.Fatal(err)
	}
	f.svc, f.h = svc, api.Routes()
	const a, b = "203.0.113.7", "198.51.100.9"
	for i, want := range []int{http.StatusUnauthorized, http.StatusTooManyRequests, http.StatusTooManyRequests} {
		if w := f.badToken(a); w.Code != want {
			t.Fatalf("bad token %d from a = %d, want %d", i+1, w.Code, want)
		}
	}
	failing.Store(true)
	// b takes a's place: a's summary (2) is handed out and its write fails.
	for i, want := range []int{http.StatusUnauthorized, http.StatusTooManyRequests} {
		if w := f.badToken(b); w.Code != want {
			t.Fatalf("bad token %d from b = %d, want %d", i+1, w.Code, want)
		}
	}
	f.advance(time.Minute)
	f.svc.FlushRefusalSummaries(context.Background(), false) // fails again
	failing.Store(false)
	f.svc.FlushRefusalSummaries(context.Background(), false)
	var got []string
	for _, ev := range f.sink.Events() {
		if ev.Outcome != nil && ev.Outcome.Reason == broker.ReasonRefusalsSuppressed {
			got = append(got, fmt.Sprint(ev.Source.IP, " ", ev.Details["suppressed"]))
		}
	}
	sort.Strings(got)
	if want := []string{b + " 1", a + " 2"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("summaries once the audit log works again = %q, want %q", got, want)
	}
}

// TestRefusalGlobalCeiling: refusals from many sources, each within its
// own burst (an IPv6 /48 holds 65,536 /64s), are audited only up to the
// global bucket; past it they are answered 429 slow_down with no event of
// their own and counted by one summary event that names no source (not an
// address: a SIEM typing source.ip as one would reject "*") and says its
// scope, details.scope "global"; a workload
// that authenticates from one of those sources is not limited.
func TestRefusalGlobalCeiling(t *testing.T) {
	f := newRefusalFixture(t, &broker.RefusalLimits{PerSecond: 1, Burst: 3, SummaryEvery: time.Minute,
		GlobalPerSecond: 1, GlobalBurst: 5})
	const sources = 40
	for i := range sources {
		w := f.badToken(fmt.Sprintf("2001:db8:%x::1", i))
		switch {
		case i < 5 && w.Code != http.StatusUnauthorized:
			t.Fatalf("refusal %d within the global burst = %d, want 401", i+1, w.Code)
		case i >= 5 && (w.Code != http.StatusTooManyRequests || w.Header().Get("Retry-After") != "1" || !strings.Contains(w.Body.String(), `"slow_down"`)):
			t.Fatalf("refusal %d past the global burst = %d Retry-After %q %s, want 429 slow_down Retry-After 1", i+1, w.Code, w.Header().Get("Retry-After"), w.Body)
		}
	}
	if n := len(f.sink.Events()); n != 5 {
		t.Fatalf("%d events after refusals from %d sources, want the global burst's 5: %q", n, sources, f.events())
	}
	if w := f.do(http.MethodPost, "/v1/token", "2001:db8:7::1", "", form().Encode()); w.Code != http.StatusOK {
		t.Errorf("valid exchange from a source past the global bucket = %d %s, want 200", w.Code, w.Body)
	}
	f.advance(time.Minute)
	f.svc.FlushRefusalSummaries(context.Background(), false)
	var sums []string
	for _, ev := range f.sink.Events() {
		if ev.Outcome != nil && ev.Outcome.Reason == broker.ReasonRefusalsSuppressed {
			sums = append(sums, fmt.Sprintf("%+v %v %v", ev.Source, ev.Details["scope"], ev.Details["suppressed"]))
		}
	}
	if want := []string{"<nil> global 35"}; fmt.Sprint(sums) != fmt.Sprint(want) {
		t.Errorf("summaries = %q, want %q", sums, want)
	}
	if got := deniesOf(t, f.reg, broker.ReasonSourceRateLimited); got != sources-5 {
		t.Errorf("keytrail_denies_total{reason=%q} = %v, want %d", broker.ReasonSourceRateLimited, got, sources-5)
	}
	// The same reason, told apart by the bucket that suppressed them.
	if got := fmt.Sprint(suppressedOf(t, f.reg, "global"), " ", suppressedOf(t, f.reg, "source")); got != fmt.Sprint(sources-5, " 0") {
		t.Errorf("keytrail_refusals_suppressed_total{scope=global, source} = %s, want %d 0", got, sources-5)
	}
}
