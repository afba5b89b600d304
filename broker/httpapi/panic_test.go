package httpapi_test

import (
	"encoding/json"
	"io"
	"log"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/policies"
)

// TestHandlerPanic: a handler's panic is answered, before anything of the
// response went out, with the stable 503 temporarily_unavailable body
// (reason internal in the log), no stack trace in the body or the logs;
// after the status and part of the body went out, the response is cut off
// (the connection aborted, as http.ErrAbortHandler does), so that the
// client does not take a body cut short for a complete one.
func TestHandlerPanic(t *testing.T) {
	pol := testPolicy(t, "", "")
	svc, err := broker.NewService(broker.Deps{
		Policy: func() *policies.Policy { return pol },
		Authn:  func() broker.Authenticator { return brokertest.Authn{} },
		Store:  memstore.New(time.Now),
		Audit:  brokertest.DiscardSink{},
	})
	if err != nil {
		t.Fatal(err)
	}
	var logs, serverLogs brokertest.SyncBuffer
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example",
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		Extra: func(mux *http.ServeMux, s *httpapi.Server) {
			mux.HandleFunc("GET /before", func(w http.ResponseWriter, r *http.Request) {
				var m map[string]int
				m["x"] = 1 // a nil map: a runtime error
			})
			mux.HandleFunc("GET /after", func(w http.ResponseWriter, r *http.Request) {
				w.WriteHeader(http.StatusOK) // no length: a chunked body
				_, _ = io.WriteString(w, "partial")
				http.NewResponseController(w).Flush()
				panic("boom")
			})
		}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(api.Routes())
	srv.Config.ErrorLog = log.New(&serverLogs, "", 0)
	srv.Start()
	defer srv.Close()

	res, err := http.Get(srv.URL + "/before")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(res.Body)
	res.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	var eb struct {
		Error     string `json:"error"`
		RequestID string `json:"request_id"`
	}
	if err := json.Unmarshal(body, &eb); err != nil {
		t.Fatalf("panic before the response: body %q is not the error shape: %v", body, err)
	}
	if res.StatusCode != http.StatusServiceUnavailable || eb.Error != "temporarily_unavailable" || eb.RequestID == "" || res.Header.Get("Retry-After") == "" {
		t.Errorf("panic before the response: %d %q (Retry-After %q), want 503 temporarily_unavailable with a request id and Retry-After", res.StatusCode, body, res.Header.Get("Retry-After"))
	}
	if strings.Contains(string(body), "goroutine") || strings.Contains(string(body), ".go:") || strings.Contains(string(body), "nil map") {
		t.Errorf("panic before the response: body %q shows the panic", body)
	}

	res, err = http.Get(srv.URL + "/after")
	if err != nil {
		t.Fatal(err)
	}
	body, err = io.ReadAll(res.Body)
	res.Body.Close()
	if err == nil {
		t.Errorf("panic after the status: body %q read to a clean end, want it cut off (an error)", body)
	}

	for name, l := range map[string]string{"broker log": logs.String(), "server log": serverLogs.String()} {
		if strings.Contains(l, "goroutine ") || strings.Contains(l, ".go:") {
			t.Errorf("%s holds a stack trace:\n%s", name, l)
		}
	}
}
