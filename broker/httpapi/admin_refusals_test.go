package httpapi_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestNonAdminAdminCallsBounded: a workload's valid identity token on the
// admin routes is refused 403 not_admin, each with an admin event, up to
// refusal_limit.per_identity per span; past it the same 403 (no 429: a
// client would retry it) with no event of its own
// (keytrail_refusals_suppressed_total scope identity), counted by one
// summary. An admin is never limited. (Every refusal was a durable event:
// 1000 calls, 1000 events.)
func TestNonAdminAdminCallsBounded(t *testing.T) {
	const calls, perIdentity = 1000, 20
	f := newRefusalFixtureWith(t, &broker.RefusalLimits{PerIdentity: perIdentity}, testPolicy(t, "", `
admins:
  - name: secops
    match: {issuer: ci, subject: repo:acme/verifier}
    roles: [revoke]
`), broker.IntrospectLimits{})
	const a = "203.0.113.7"
	refused := 0
	var first string
	for i := range calls {
		w := f.do(http.MethodGet, "/v1/admin/blocks", a, goodToken, "")
		var body struct {
			Error            string `json:"error"`
			ErrorDescription string `json:"error_description"`
		}
		_ = json.Unmarshal(w.Body.Bytes(), &body)
		got := fmt.Sprintf("%d %s %q WWW-Authenticate %q", w.Code, body.Error, body.ErrorDescription, w.Header().Get("WWW-Authenticate"))
		if i == 0 {
			first = got
		}
		if w.Code != http.StatusForbidden || got != first || w.Header().Get("Retry-After") != "" || !strings.Contains(w.Body.String(), "this identity is not an admin") {
			t.Fatalf("admin call %d of a workload = %s Retry-After %q, want as the first (%s), no Retry-After", i+1, got, w.Header().Get("Retry-After"), first)
		}
		refused++
	}
	events := 0
	for _, ev := range f.sink.Events() {
		if ev.Type == audit.TypeAdmin && ev.Outcome != nil && ev.Outcome.Reason == "not_admin" {
			events++
		}
	}
	if refused != calls || events != perIdentity {
		t.Errorf("%d admin calls of a workload: %d answered 403, %d not_admin events; want %d, %d",
			calls, refused, events, calls, perIdentity)
	}
	if got := suppressedOf(t, f.reg, broker.RefusalScopeIdentity); got != calls-perIdentity {
		t.Errorf("keytrail_refusals_suppressed_total{scope=identity} = %v, want %d", got, calls-perIdentity)
	}
	f.svc.FlushRefusalSummaries(context.Background(), true)
	n := 0
	for _, ev := range f.sink.Events() {
		if ev.Type == audit.TypeAdmin && ev.Details["scope"] == broker.RefusalScopeIdentity {
			s, _ := ev.Details["suppressed"].(int)
			n += s
		}
	}
	if n != calls-perIdentity {
		t.Errorf("admin summaries count %d, want %d", n, calls-perIdentity)
	}
	for i := range 2 * perIdentity {
		if w := f.do(http.MethodGet, "/v1/admin/blocks", a, callerToken, ""); w.Code != http.StatusOK {
			t.Fatalf("admin call %d of the admin = %d %s, want 200", i+1, w.Code, w.Body)
		}
		if w := f.do(http.MethodGet, "/v1/admin/issuances", a, callerToken, ""); w.Code != http.StatusForbidden {
			t.Fatalf("admin call %d of the admin without the role = %d %s, want 403", i+1, w.Code, w.Body)
		}
	}
}
