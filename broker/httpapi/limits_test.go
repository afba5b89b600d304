package httpapi_test

import (
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/audit"
)

// TestFormBodyLimit pins the README's "Limits": a form body over 64 KiB on
// POST /v1/token and POST /v1/introspect is refused with 400
// invalid_request before it is parsed (the exchange's deny event says
// body_too_large), and one just under it is parsed.
func TestFormBodyLimit(t *testing.T) {
	pad := func(n int) string { return "&pad=" + strings.Repeat("x", n) }
	tests := []struct {
		name, path, body string
		status           int
		code             string
	}{
		{"fail/token-over-64KiB", "/v1/token", form().Encode() + pad(64<<10), 400, "invalid_request"},
		{"fail/introspect-over-64KiB", "/v1/introspect", "token=x" + pad(64<<10), 400, "invalid_request"},
		{"ok/token-under-64KiB", "/v1/token", form().Encode() + pad(60<<10), 200, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			resp, body := f.post(t, tt.path, "application/x-www-form-urlencoded", tt.body)
			if resp.StatusCode != tt.status || (tt.code != "" && body["error"] != tt.code) {
				t.Fatalf("POST %s = %d %v, want %d %s", tt.path, resp.StatusCode, body, tt.status, tt.code)
			}
			if tt.path != "/v1/token" || tt.status == 200 {
				return
			}
			evs := f.sink.Events()
			if len(evs) != 1 || evs[0].Type != audit.TypeDeny || evs[0].Outcome.Reason != "body_too_large" {
				t.Errorf("audit events = %v, want one deny with reason body_too_large", f.sink.Types())
			}
		})
	}
}
