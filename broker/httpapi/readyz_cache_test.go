package httpapi_test

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/policies"
)

// TestReadyzConcurrentProbesShareOneCheck: /readyz is unauthenticated, so
// a flood of probes must not become as many backend checks: probes that
// come while a check runs wait for it and get its answer, and so do those
// right after it.
func TestReadyzConcurrentProbesShareOneCheck(t *testing.T) {
	svc := readyzService(t)
	var checks atomic.Int32
	started := make(chan struct{}, 1)
	release := make(chan struct{})
	api, err := httpapi.New(httpapi.Options{Service: svc, Ready: func(ctx context.Context) error {
		checks.Add(1)
		select {
		case started <- struct{}{}:
		default:
		}
		<-release
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	routes := api.Routes()
	// arrived counts the probes handed to the routes.
	var arrived atomic.Int32
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		routes.ServeHTTP(w, r)
	})

	const n = 32
	codes := make([]int, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
			codes[i] = w.Code
		}()
	}
	<-started // one check runs, and holds until released
	for arrived.Load() < n {
		select {
		case <-time.After(time.Millisecond):
		case <-t.Context().Done():
			t.Fatal("probes did not arrive")
		}
	}
	close(release)
	wg.Wait()
	for i, c := range codes {
		if c != http.StatusOK {
			t.Errorf("probe %d = %d, want 200", i, c)
		}
	}
	if got := checks.Load(); got != 1 {
		t.Errorf("%d concurrent /readyz probes made %d backend checks, want 1", n, got)
	}
}

// TestReadyzAnswerKept: /readyz's answer, a failure as a success, is kept
// for ReadyCacheFor after its check ended, then checked again.
func TestReadyzAnswerKept(t *testing.T) {
	svc := readyzService(t)
	var checks atomic.Int32
	var down atomic.Bool
	api, err := httpapi.New(httpapi.Options{Service: svc, Ready: func(ctx context.Context) error {
		checks.Add(1)
		if down.Load() {
			return httpapi.ReadyError{Component: "store"}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	var clock atomic.Int64
	api.SetReadyClock(func() time.Time { return time.Unix(0, clock.Load()) })
	h := api.Routes()
	probe := func() int {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		return w.Code
	}
	step := func(name string, advance time.Duration, wantCode int, wantChecks int32) {
		t.Helper()
		clock.Add(int64(advance))
		if got := probe(); got != wantCode {
			t.Errorf("%s: /readyz = %d, want %d", name, got, wantCode)
		}
		if got := checks.Load(); got != wantChecks {
			t.Errorf("%s: %d backend checks in all, want %d", name, got, wantChecks)
		}
	}
	step("first probe", 0, http.StatusOK, 1)
	down.Store(true)
	step("within the window", httpapi.ReadyCacheFor-1, http.StatusOK, 1)
	step("window over", 1, http.StatusServiceUnavailable, 2)
	down.Store(false)
	step("failure kept", httpapi.ReadyCacheFor/2, http.StatusServiceUnavailable, 2)
	step("failure's window over", httpapi.ReadyCacheFor/2, http.StatusOK, 3)
}

// TestReadyzCallerGoneDoesNotAnswerOthers: the probe whose check is in
// flight goes away (its context ends, cutting the check short); a probe
// waiting for that check runs its own instead of answering with the
// cancellation.
func TestReadyzCallerGoneDoesNotAnswerOthers(t *testing.T) {
	svc := readyzService(t)
	var checks atomic.Int32
	first := make(chan struct{})
	api, err := httpapi.New(httpapi.Options{Service: svc, Ready: func(ctx context.Context) error {
		if checks.Add(1) == 1 {
			close(first)
			<-ctx.Done() // held until its caller goes away
			return ctx.Err()
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	var arrived atomic.Int32
	routes := api.Routes()
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		arrived.Add(1)
		routes.ServeHTTP(w, r)
	})
	ctx, cancel := context.WithCancel(context.Background())
	gone := make(chan struct{})
	go func() {
		defer close(gone)
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/readyz", nil).WithContext(ctx))
	}()
	<-first
	other := make(chan int)
	go func() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		other <- w.Code
	}()
	for arrived.Load() < 2 {
		select {
		case <-time.After(time.Millisecond):
		case <-t.Context().Done():
			t.Fatal("the second probe did not arrive")
		}
	}
	cancel()
	<-gone
	if code := <-other; code != http.StatusOK {
		t.Errorf("the waiting probe = %d after the first went away, want 200 (its own check)", code)
	}
	if got := checks.Load(); got != 2 {
		t.Errorf("%d backend checks, want 2", got)
	}
}

// TestReadyzNotReadyLoggedPerCheck: a failing answer kept for
// readyCacheFor answers many probes; the "not ready" warning is logged by
// the check that found it, not once per probe (a probe flood during an
// outage must not flood the log).
func TestReadyzNotReadyLoggedPerCheck(t *testing.T) {
	svc := readyzService(t)
	logged := &brokertest.SyncBuffer{}
	log := slog.New(slog.NewTextHandler(logged, nil))
	api, err := httpapi.New(httpapi.Options{Service: svc, Logger: log, Ready: func(ctx context.Context) error {
		return httpapi.ReadyError{Component: "store"}
	}})
	if err != nil {
		t.Fatal(err)
	}
	var clock atomic.Int64
	api.SetReadyClock(func() time.Time { return time.Unix(0, clock.Load()) })
	h := api.Routes()
	for i := range 20 {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/readyz", nil))
		if w.Code != http.StatusServiceUnavailable {
			t.Fatalf("probe %d: /readyz = %d, want 503", i, w.Code)
		}
	}
	n := strings.Count(logged.String(), "not ready")
	if n != 1 {
		t.Errorf("20 probes answered by one failed check logged %d \"not ready\" lines, want 1:\n%s", n, logged.String())
	}
}

// readyzService is a Service the /readyz tests' servers need (they only
// probe readiness).
func readyzService(t *testing.T) *broker.Service {
	t.Helper()
	pol := testPolicy(t, "", "")
	svc, err := broker.NewService(broker.Deps{
		Policy: func() *policies.Policy { return pol },
		Authn:  func() broker.Authenticator { return brokertest.Authn{} },
		Store:  memstore.New(time.Now),
		Audit:  &brokertest.Sink{},
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}
