package httpapi_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker"
)

// rawDo sends one request as written (target unnormalised, method as
// given) over its own connection and returns the status, the Location
// header and the body.
func rawDo(t *testing.T, addr, method, target, header, body string) (int, string, string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: %s\r\n%sContent-Length: %d\r\nConnection: close\r\n\r\n%s",
		method, target, addr, header, len(body), body)
	resp, err := http.ReadResponse(bufio.NewReader(c), &http.Request{Method: method})
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header.Get("Location"), string(b)
}

// TestAdminPathTricks: no spelling of an admin path and no method reaches
// an admin handler (or any 2xx) without the admin check, and each one that
// the mux routes is answered by the check and recorded as an admin event
// (SPEC "every admin call is audited, denied ones too"). Percent-encoded
// slashes and letters, a trailing slash, a matrix parameter and an
// absolute-form target all reach the check; dot segments and doubled
// slashes are only redirected (307, nothing run, nothing recorded) to the
// clean path, which then gets the check; another case of "admin" is no
// route at all.
func TestAdminPathTricks(t *testing.T) {
	f := newAdminFixture(t)
	addr := strings.TrimPrefix(f.srv.URL, "http://")
	checked := []string{
		"/v1/admin", "/v1/admin/", "/v1/admin/blocks", "/v1/admin/blocks/", "/v1/admin/blocks/x", "/v1/admin/blocks/x/",
		"/v1/admin/revoke", "/v1/admin/revoke/", "/v1/admin/issuances", "/v1/admin/revocations/x", "/v1/admin/revocations/",
		"/v1/admin%2Fblocks", "/v1%2Fadmin%2Fblocks", "/v1/%61dmin/blocks", "/v1/admin/%62locks", "/v1/admin/Blocks",
		"/v1/admin/blocks%00", "/v1/admin/blocks;x", "/v1/admin/blocks/%2e%2e", "/v1/admin/..%2Fadmin/blocks",
		"http://" + addr + "/v1/admin/blocks",
	}
	redirected := map[string]string{
		"//v1/admin/blocks": "/v1/admin/blocks", "/v1//admin/blocks": "/v1/admin/blocks",
		"/v1/admin/./blocks": "/v1/admin/blocks", "/v1/admin/x/../blocks": "/v1/admin/blocks",
		"/v1/admin/blocks/..": "/v1/admin", "/v1/./admin/revoke": "/v1/admin/revoke",
	}
	noRoute := []string{"/V1/admin/blocks", "/v1/ADMIN/blocks", "/v1/Admin/revoke"}
	methods := []string{"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "FOO", "get"}
	for _, tok := range []struct{ header, code string }{
		{"", "missing_admin_token"},
		{"Authorization: Bearer nobody\r\n", "not_admin"},
		{"Authorization: Bearer workload\r\n", "not_admin"},
	} {
		want := http.StatusUnauthorized
		if tok.header != "" {
			want = http.StatusForbidden
		}
		for _, m := range methods {
			for _, p := range checked {
				before := len(f.sink.Events())
				status, _, body := rawDo(t, addr, m, p, tok.header, "")
				evs := f.sink.Events()[before:]
				if status != want || len(evs) != 1 || evs[0].Type != "admin" || evs[0].Outcome == nil || evs[0].Outcome.Reason != tok.code {
					t.Errorf("%s %s (%q) = %d %.80s, %d events; want %d and one admin event with reason %s", m, p, tok.header, status, body, len(evs), want, tok.code)
				}
			}
			for p, loc := range redirected {
				before := len(f.sink.Events())
				status, gotLoc, _ := rawDo(t, addr, m, p, tok.header, "")
				if status != http.StatusTemporaryRedirect || gotLoc != loc || len(f.sink.Events()) != before {
					t.Errorf("%s %s = %d Location %q with %d events; want 307 to %s and nothing run", m, p, status, gotLoc, len(f.sink.Events())-before, loc)
				}
			}
			for _, p := range noRoute {
				before := len(f.sink.Events())
				status, _, _ := rawDo(t, addr, m, p, tok.header, "")
				if status != http.StatusNotFound || len(f.sink.Events()) != before {
					t.Errorf("%s %s = %d with %d events; want 404 no_route", m, p, status, len(f.sink.Events())-before)
				}
			}
		}
	}
}

// TestSecretsInURLRefusedAndNotLogged: /v1/token and /v1/introspect refuse
// parameters in the URL, also when the body repeats them (RFC 6749 §3.2
// and §3.1: parameters in the body, none twice), before anything is
// minted or looked up; neither the answer nor any log line (the access
// log, the "request failed" line) carries the secret, and a path with a
// newline stays one log line.
func TestSecretsInURLRefusedAndNotLogged(t *testing.T) {
	f := newAdminFixture(t)
	addr := strings.TrimPrefix(f.srv.URL, "http://")
	const secret = "hvs.SECRETinTheURL0123456789"
	const formCT = "Content-Type: application/x-www-form-urlencoded\r\n"
	body := url.Values{
		"grant_type": {broker.GrantTypeTokenExchange}, "subject_token": {"workload"},
		"subject_token_type": {broker.TokenTypeJWT}, "audience": {"deploy-vault"},
	}.Encode()
	for _, tt := range []struct{ name, target, header, body string }{
		{"token/query-and-body", "/v1/token?subject_token=" + secret, formCT, body},
		{"token/query-only", "/v1/token?subject_token=" + secret + "&grant_type=x", formCT, ""},
		{"token/actor-in-query", "/v1/token?actor_token=" + secret, formCT, body},
		{"introspect/query", "/v1/introspect?token=" + secret, formCT + "Authorization: Bearer workload\r\n", ""},
		{"introspect/query-and-body", "/v1/introspect?token=" + secret, formCT + "Authorization: Bearer workload\r\n", "token=x"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := len(f.sink.Events())
			status, _, rbody := rawDo(t, addr, "POST", tt.target, tt.header, tt.body)
			var eb map[string]any
			if err := json.Unmarshal([]byte(rbody), &eb); err != nil || status != http.StatusBadRequest || eb["error"] != "invalid_request" {
				t.Fatalf("POST %s = %d %s, want 400 invalid_request", tt.target, status, rbody)
			}
			if strings.Contains(rbody, secret) {
				t.Errorf("the answer carries the secret: %s", rbody)
			}
			for _, ev := range f.sink.Events()[before:] {
				if ev.Type == "issue" || ev.Type == "introspect" && ev.Outcome != nil && ev.Outcome.Status == 200 {
					t.Errorf("a %s event with outcome %+v: the request was served", ev.Type, ev.Outcome)
				}
			}
		})
	}
	rawDo(t, addr, "GET", "/v1/x%0A{\"level\":\"ERROR\",\"msg\":\"forged\"}", "", "")
	logs := f.logs.String()
	if strings.Contains(logs, secret) {
		t.Errorf("the log carries the secret:\n%s", logs)
	}
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil || m["msg"] == "forged" {
			t.Errorf("log line %q is not one JSON record of the broker's: %v", line, err)
		}
	}
}
