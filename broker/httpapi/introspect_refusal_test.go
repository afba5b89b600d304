package httpapi_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// TestIntrospectMalformedAudited: /v1/introspect's requests refused before
// the Service (a wrong Content-Type, a repeated token, parameters in the
// URL) are audited as /v1/token's are, and count against the source's
// RefusalLimits: past the burst they are answered 429 slow_down with no
// event of their own.
func TestIntrospectMalformedAudited(t *testing.T) {
	f := newRefusalFixture(t, &broker.RefusalLimits{PerSecond: 1, Burst: 3, SummaryEvery: time.Minute})
	const a = "203.0.113.7"
	reqs := []func() *httptest.ResponseRecorder{
		func() *httptest.ResponseRecorder {
			r := httptest.NewRequest(http.MethodPost, "/v1/introspect", strings.NewReader("token=x"))
			r.RemoteAddr = "10.0.0.1:5555"
			r.Header.Set("X-Forwarded-For", a)
			r.Header.Set("Content-Type", "text/plain")
			r.Header.Set("Authorization", "Bearer "+goodToken)
			w := httptest.NewRecorder()
			f.h.ServeHTTP(w, r)
			return w
		},
		func() *httptest.ResponseRecorder {
			return f.do(http.MethodPost, "/v1/introspect", a, goodToken, "token=x&token=y")
		},
		func() *httptest.ResponseRecorder {
			return f.do(http.MethodPost, "/v1/introspect?token=x", a, goodToken, "token=x")
		},
	}
	for i, req := range reqs {
		if w := req(); w.Code != http.StatusBadRequest || !strings.Contains(w.Body.String(), `"invalid_request"`) {
			t.Fatalf("malformed introspection %d = %d %s, want 400 invalid_request", i+1, w.Code, w.Body)
		}
	}
	want := []string{"deny bad_content_type " + a, "deny repeated_param " + a, "deny query_params " + a}
	if got := f.events(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events = %q, want %q", got, want)
	}
	if w := reqs[1](); w.Code != http.StatusTooManyRequests || !strings.Contains(w.Body.String(), `"slow_down"`) {
		t.Fatalf("malformed introspection past the burst = %d %s, want 429 slow_down", w.Code, w.Body)
	}
	if got := f.events(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("events after the burst = %q, want %q", got, want)
	}
}
