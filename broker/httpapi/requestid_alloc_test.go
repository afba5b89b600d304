package httpapi_test

import (
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

// Every request gets a request id: in its X-Request-Id response header and
// from RequestID in the handler, the same. The middleware's share of a
// request allocates 4 times (the id, the status writer, the context with
// it and the request with that context), not 6: the id boxed into the
// context and the header's value each had an allocation of their own.
func TestRequestIDAllocs(t *testing.T) {
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
	var seen string
	api, err := httpapi.New(httpapi.Options{Service: svc, PublicURL: "https://keytrail.example",
		Extra: func(mux *http.ServeMux, s *httpapi.Server) {
			mux.HandleFunc("GET /x", func(w http.ResponseWriter, r *http.Request) { seen = httpapi.RequestID(r) })
		}})
	if err != nil {
		t.Fatal(err)
	}
	h := api.Routes()
	r := httptest.NewRequest(http.MethodGet, "/x", nil)
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	if got := w.Header().Get("X-Request-Id"); !strings.HasPrefix(got, broker.PrefixRequest) || got != seen {
		t.Fatalf("X-Request-Id %q, RequestID %q: want the same req_ id", got, seen)
	}
	if got := httpapi.RequestID(r); got != "" {
		t.Errorf("RequestID outside the middleware = %q, want empty", got)
	}
	n := testing.AllocsPerRun(200, func() {
		clear(w.Header())
		h.ServeHTTP(w, r)
	})
	if n > 4 {
		t.Errorf("a request through the middleware to a handler that allocates nothing: %v allocations, want at most 4", n)
	}
}
