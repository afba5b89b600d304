package httpapi_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/audit"
)

// TestFormBodyLimit pins the README's "Limits": a form body over 64 KiB on
// POST /v1/token and POST /v1/introspect is refused with 400
// invalid_request before it is parsed (the exchange's deny event says
// body_too_large), and one just under it is parsed; sent with its length
// or chunked (no length: readForm reads the body through its
// MaxBytesReader without ParseForm since 5a8d999).
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
		for _, chunked := range []bool{false, true} {
			name := tt.name
			if chunked {
				name += "-chunked"
			}
			t.Run(name, func(t *testing.T) {
				f := newFixture(t)
				var resp *http.Response
				var body map[string]any
				if chunked {
					resp, body = postChunked(t, f.srv.URL+tt.path, tt.body)
				} else {
					resp, body = f.post(t, tt.path, "application/x-www-form-urlencoded", tt.body)
				}
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
}

// postChunked posts a form body without a length (Transfer-Encoding:
// chunked).
func postChunked(t *testing.T, url, body string) (*http.Response, map[string]any) {
	t.Helper()
	// A reader whose length NewRequest cannot tell: ContentLength 0 with
	// a body, which the client sends chunked.
	req, err := http.NewRequest(http.MethodPost, url, io.MultiReader(strings.NewReader(body)))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("body is not JSON: %q", raw)
	}
	return resp, m
}
