package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
)

// TestReadyzNotReadyLogNamesTheRequest: the "not ready" line a failing
// /readyz logs carries the request id its response (X-Request-Id) and its
// "http" access-log line carry, so an operator can join the probe's 503
// with the reason the broker logged.
func TestReadyzNotReadyLogNamesTheRequest(t *testing.T) {
	svc := readyzService(t)
	logs := &brokertest.SyncBuffer{}
	api, err := httpapi.New(httpapi.Options{Service: svc, Logger: slog.New(slog.NewJSONHandler(logs, nil)),
		Ready: func(ctx context.Context) error {
			return errors.Join(httpapi.ReadyError{Component: "store"}, errors.New("dial tcp: connection refused"))
		}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(api.Routes())
	t.Cleanup(srv.Close)
	resp, err := http.Get(srv.URL + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	id := resp.Header.Get("X-Request-Id")
	if resp.StatusCode != http.StatusServiceUnavailable || id == "" {
		t.Fatalf("readyz = %d, X-Request-Id %q; want 503 with a request id", resp.StatusCode, id)
	}
	var found bool
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var line map[string]any
		if err := json.Unmarshal([]byte(l), &line); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		if line["msg"] != "not ready" {
			continue
		}
		found = true
		if line["request_id"] != id {
			t.Errorf("\"not ready\" line request_id = %v, want %s (the response's X-Request-Id):\n%s", line["request_id"], id, l)
		}
	}
	if !found {
		t.Fatalf("no \"not ready\" line; log:\n%s", logs.String())
	}
}
