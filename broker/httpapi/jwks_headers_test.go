package httpapi_test

import (
	"net/http"
	"testing"
)

// The JWKS is JSON like every other answer of the API, and carries the
// same X-Content-Type-Options: nosniff (it was the one JSON answer
// without it: its handler set its own headers, for its public cache
// time, rather than writeJSON's).
func TestJWKSAnswerIsNosniff(t *testing.T) {
	f := newFixture(t)
	for _, path := range []string{"/.well-known/jwks.json", "/.well-known/openid-configuration", "/healthz"} {
		resp, err := http.Get(f.srv.URL + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s = %d, want 200", path, resp.StatusCode)
		}
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options = %q, want nosniff", path, got)
		}
		if got := resp.Header.Get("Content-Type"); got != "application/json" {
			t.Errorf("GET %s: Content-Type = %q, want application/json", path, got)
		}
	}
	resp, err := http.Get(f.srv.URL + "/.well-known/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if got := resp.Header.Get("Cache-Control"); got != "public, max-age=60" {
		t.Errorf("GET /.well-known/jwks.json: Cache-Control = %q, want public, max-age=60 (verifiers may cache the keys)", got)
	}
}
