package httpapi_test

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
)

// TestStartingLogsNoWarnings: a broker that starts answers every route
// 503 "starting" with Retry-After: 1, so clients come back each second
// until it serves. That is the expected state of every start, not a fault:
// its answers are logged at INFO (the access line and the reason), never
// at WARN, which a start-up with many clients would flood.
func TestStartingLogsNoWarnings(t *testing.T) {
	logs := &brokertest.SyncBuffer{}
	srv := httptest.NewServer(httpapi.Starting(slog.New(slog.NewJSONHandler(logs, nil)), nil))
	t.Cleanup(srv.Close)
	for _, c := range []struct{ method, path string }{
		{http.MethodPost, "/v1/token"}, {http.MethodGet, "/v1/admin/issuances"}, {http.MethodGet, "/metrics"},
		{http.MethodGet, "/readyz"}, {http.MethodGet, "/healthz"},
	} {
		req, err := http.NewRequest(c.method, srv.URL+c.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if want := http.StatusServiceUnavailable; c.path == "/healthz" && resp.StatusCode != http.StatusOK || c.path != "/healthz" && resp.StatusCode != want {
			t.Errorf("%s %s = %d", c.method, c.path, resp.StatusCode)
		}
	}
	var reasons int
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var line map[string]any
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if line["level"] != "INFO" {
			t.Errorf("a starting answer logged at %v, want INFO: %s", line["level"], l)
		}
		if line["msg"] == "request failed" && line["reason"] == httpapi.ReasonStarting {
			reasons++
		}
	}
	if reasons != 3 {
		t.Errorf("%d \"request failed\" lines with reason %q, want 3 (one per 503 but /readyz's)\n%s", reasons, httpapi.ReasonStarting, logs.String())
	}
}

// TestStartingMethodNotAllowed: once serving, a method /healthz and
// /readyz do not serve gets 405 with Allow: GET, HEAD (the broker's
// routes). During start-up the catch-all answered it 503 "starting" with
// Retry-After: a client (or a probe misconfigured with POST) was told to
// retry what will never succeed. The starting handler answers it as the
// broker's routes will; every other route stays 503 "starting".
func TestStartingMethodNotAllowed(t *testing.T) {
	srv := httptest.NewServer(httpapi.Starting(nil, nil))
	t.Cleanup(srv.Close)
	for _, c := range []struct {
		method, path string
		want         int
		allow        string
	}{
		{http.MethodPost, "/healthz", http.StatusMethodNotAllowed, "GET, HEAD"},
		{http.MethodDelete, "/readyz", http.StatusMethodNotAllowed, "GET, HEAD"},
		{http.MethodHead, "/healthz", http.StatusOK, ""},
		{http.MethodPost, "/v1/token", http.StatusServiceUnavailable, ""},
		{http.MethodGet, "/v1/token", http.StatusServiceUnavailable, ""},
	} {
		req, err := http.NewRequest(c.method, srv.URL+c.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want || resp.Header.Get("Allow") != c.allow {
			t.Errorf("%s %s during start-up = %d (Allow %q), want %d (Allow %q)", c.method, c.path, resp.StatusCode, resp.Header.Get("Allow"), c.want, c.allow)
		}
		if c.want == http.StatusMethodNotAllowed && resp.Header.Get("Retry-After") != "" {
			t.Errorf("%s %s during start-up: Retry-After %q on a 405", c.method, c.path, resp.Header.Get("Retry-After"))
		}
	}
}
