package httpapi_test

import (
	"encoding/json"
	"net/url"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestAdminTargetBoundedInAudit: a caller whose identity token verifies but
// who is no admin (any token of a trusted issuer: with a public CI issuer,
// anyone's) sends tens of KiB of its own text as an admin call's target.
// The admin event records the target once the caller is authenticated; a
// value no selector, workload, owner or session id can be (over 256 bytes)
// must be recorded by its length and SHA-256, not whole, so that one call
// cannot write tens of KiB into the audit log.
func TestAdminTargetBoundedInAudit(t *testing.T) {
	long := strings.Repeat("w", 40<<10)
	revokeBody, _ := json.Marshal(map[string]string{"workload": long, "reason": "x"})
	tests := []struct {
		name, method, path, contentType, body string
	}{
		{"fail/unblock-long-workload", "DELETE", "/v1/admin/blocks/" + long, "", ""},
		{"fail/issuances-long-workload", "GET", "/v1/admin/issuances?workload=" + url.QueryEscape(long), "", ""},
		{"fail/revoke-long-workload", "POST", "/v1/admin/revoke", jsonCT, string(revokeBody)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newAdminFixture(t)
			status, body, _ := f.do(t, tt.method, tt.path, "nobody", tt.contentType, tt.body)
			if status != 403 {
				t.Fatalf("%s %s = %d %v, want 403", tt.method, tt.name, status, body)
			}
			var ev *audit.Event
			for _, e := range f.sink.Events() {
				if e.Type == audit.TypeAdmin {
					ev = e
				}
			}
			if ev == nil {
				t.Fatal("no admin event")
			}
			line, err := json.Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			if len(line) > 2<<10 {
				t.Errorf("admin event is %d bytes, want at most 2 KiB: %.300s...", len(line), line)
			}
			if want := broker.Fingerprint(long); !strings.Contains(string(line), want) {
				t.Errorf("admin event %.600s does not name the value by its SHA-256 %s", line, want)
			}
		})
	}
}
