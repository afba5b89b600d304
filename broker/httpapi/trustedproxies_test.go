package httpapi_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
)

// TestDirectPeerCannotChooseItsSource: the fixture trusts X-Forwarded-For
// from its front proxy 10.0.0.1 only. A caller reaching the broker
// directly, sending an X-Forwarded-For of its own (a fresh address each
// time), is audited under its own address and spends one refusal budget:
// it cannot name another source.ip for the auditors, nor dodge the limit.
// Through the proxy, the address the proxy appended is the source.
func TestDirectPeerCannotChooseItsSource(t *testing.T) {
	f := newRefusalFixture(t, &broker.RefusalLimits{PerSecond: 1, Burst: 3, SummaryEvery: time.Minute})
	direct := func(xff string) *httptest.ResponseRecorder {
		r := httptest.NewRequest(http.MethodPost, "/v1/token", strings.NewReader(form("subject_token", "garbage").Encode()))
		r.RemoteAddr = "203.0.113.66:40000"
		r.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		r.Header.Set("X-Forwarded-For", xff)
		w := httptest.NewRecorder()
		f.h.ServeHTTP(w, r)
		return w
	}
	var codes []int
	for i := range 5 {
		codes = append(codes, direct(fmt.Sprintf("198.51.100.%d", i+1)).Code)
	}
	if diff := cmp.Diff([]int{401, 401, 401, 429, 429}, codes); diff != "" {
		t.Errorf("direct caller, a fresh X-Forwarded-For each time: statuses (-want +got):\n%s", diff)
	}
	if w := f.badToken("198.51.100.1"); w.Code != http.StatusUnauthorized {
		t.Errorf("through the proxy, for 198.51.100.1 = %d, want 401 (a budget of its own)", w.Code)
	}
	want := []string{"deny bad_signature 203.0.113.66", "deny bad_signature 203.0.113.66", "deny bad_signature 203.0.113.66", "deny bad_signature 198.51.100.1"}
	if diff := cmp.Diff(want, f.events()); diff != "" {
		t.Errorf("audit events (-want +got):\n%s", diff)
	}
}
