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
// client does not take a body cut short for a complete one. Each panic is
// logged once. Over HTTP/1.1 and HTTP/2 (a reset stream).
func TestHandlerPanic(t *testing.T) {
	for _, h2 := range []bool{false, true} {
		name := "http1"
		if h2 {
			name = "http2"
		}
		t.Run(name, func(t *testing.T) { testHandlerPanic(t, h2) })
	}
}

// testHandlerPanic is TestHandlerPanic over HTTP/1.1 or, h2, HTTP/2 (which
// the server speaks over TLS): there a cut response is a reset stream.
func testHandlerPanic(t *testing.T, h2 bool) {
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
	srv.EnableHTTP2 = h2
	if h2 {
		srv.StartTLS()
	} else {
		srv.Start()
	}
	defer srv.Close()
	client := srv.Client()

	res, err := client.Get(srv.URL + "/before")
	if err != nil {
		t.Fatal(err)
	}
	if want := map[bool]int{false: 1, true: 2}[h2]; res.ProtoMajor != want {
		t.Fatalf("served over %s, want HTTP/%d", res.Proto, want)
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

	res, err = client.Get(srv.URL + "/after")
	if err != nil {
		t.Fatal(err)
	}
	body, err = io.ReadAll(res.Body)
	res.Body.Close()
	if err == nil {
		t.Errorf("panic after the status: body %q read to a clean end, want it cut off (an error)", body)
	}

	// Logged once each: one ERROR per panic and one access line per
	// request (the cut one marked aborted); nothing from the server.
	if n, m := strings.Count(logs.String(), `msg="handler panic"`), strings.Count(logs.String(), "msg=http "); n != 2 || m != 2 ||
		strings.Count(logs.String(), "aborted=true") != 1 || serverLogs.String() != "" {
		t.Errorf("two panics: %d handler panic lines, %d access lines, want 2 and 2, one aborted, and no server log; broker log:\n%s\nserver log:\n%s",
			n, m, logs.String(), serverLogs.String())
	}
	for name, l := range map[string]string{"broker log": logs.String(), "server log": serverLogs.String()} {
		if strings.Contains(l, "goroutine ") || strings.Contains(l, ".go:") {
			t.Errorf("%s holds a stack trace:\n%s", name, l)
		}
	}
}
