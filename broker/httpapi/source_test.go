package httpapi_test

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/httpapi"
	"github.com/keytrail/keytrail/policies"
)

// TestSourceMatchesAccessLog: a handler's Source (what audit records name)
// and the "http" access-log line's remote are the same address, the
// rightmost X-Forwarded-For entry of the last such header when the server
// trusts it (the middleware finds it once for both), and Source carries the
// User-Agent, cut at 256 bytes. Outside the middleware Source finds the
// address itself.
func TestSourceMatchesAccessLog(t *testing.T) {
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
	for _, trust := range []bool{false, true} {
		var proxies []netip.Prefix
		if trust {
			proxies = []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}
		}
		logs := &brokertest.SyncBuffer{}
		var got broker.Source
		var api *httpapi.Server
		api, err = httpapi.New(httpapi.Options{Service: svc, TrustedProxies: proxies,
			Logger: slog.New(slog.NewJSONHandler(logs, nil)),
			Extra: func(mux *http.ServeMux, s *httpapi.Server) {
				mux.HandleFunc("GET /x", func(w http.ResponseWriter, r *http.Request) { got = s.Source(r) })
			}})
		if err != nil {
			t.Fatal(err)
		}
		long := strings.Repeat("u", 300)
		r := httptest.NewRequest(http.MethodGet, "/x", nil)
		r.RemoteAddr = "192.0.2.1:4711"
		r.Header["X-Forwarded-For"] = []string{"127.0.0.1", "10.0.0.1, 198.51.100.4"}
		r.Header.Set("User-Agent", long)
		api.Routes().ServeHTTP(httptest.NewRecorder(), r)

		want := broker.Source{IP: "192.0.2.1", UserAgent: long[:256]}
		if trust {
			want.IP = "198.51.100.4"
		}
		if got != want {
			t.Errorf("trust %v: Source = %+v, want %+v", trust, got, want)
		}
		var remote any
		for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			var line map[string]any
			if err := json.Unmarshal([]byte(l), &line); err != nil {
				t.Fatalf("log line %q: %v", l, err)
			}
			if line["msg"] == "http" {
				remote = line["remote"]
			}
		}
		if remote != want.IP {
			t.Errorf("trust %v: access log remote = %v, want %q", trust, remote, want.IP)
		}
		if out := api.Source(r); out != want {
			t.Errorf("trust %v: Source outside the middleware = %+v, want %+v", trust, out, want)
		}
	}
}

// TestBearerTokenHeaderName: BearerToken finds the header whether its name
// is given in canonical form (as the broker gives it) or not, as
// Header.Get does, and takes the first of several lines.
func TestBearerTokenHeaderName(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	r.Header["Authorization"] = []string{"bearer  tok1 ", "Bearer tok2"}
	r.Header.Set("Proxy-Authorization", "Basic eA==")
	for _, tt := range []struct{ name, want string }{
		{"Authorization", "tok1"},
		{"authorization", "tok1"},
		{"AUTHORIZATION", "tok1"},
		{"Proxy-Authorization", ""},
		{"X-Missing", ""},
	} {
		if got := httpapi.BearerToken(r, tt.name); got != tt.want {
			t.Errorf("BearerToken(%q) = %q, want %q", tt.name, got, tt.want)
		}
	}
}
