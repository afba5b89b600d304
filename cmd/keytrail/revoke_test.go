package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/cobra"
)

// fakeAdmin answers POST /v1/admin/revoke with status and body, and records
// what it was sent.
type fakeAdmin struct {
	status int
	body   string
	got    map[string]any
	auth   string
}

func (f *fakeAdmin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != "POST" || r.URL.Path != "/v1/admin/revoke" || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "unexpected request", 500)
		return
	}
	f.auth = r.Header.Get("Authorization")
	raw, _ := io.ReadAll(r.Body)
	_ = json.Unmarshal(raw, &f.got)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(f.status)
	io.WriteString(w, f.body)
}

// revokeWithTokenFile runs `keytrail revoke --workload w --reason r` with
// the admin token file file (KEYTRAIL_ADMIN_TOKEN_FILE) against a broker
// that revokes, and returns the Authorization the broker got ("" when
// nothing was sent), what was written to stderr, and run's error.
func revokeWithTokenFile(t *testing.T, file string) (auth, stderr string, err error) {
	t.Helper()
	fa := &fakeAdmin{status: 200, body: receiptDone}
	srv := httptest.NewServer(fa)
	env := map[string]string{"KEYTRAIL_ADDR": srv.URL, "KEYTRAIL_ADMIN_TOKEN_FILE": file}
	var stdout, errOut bytes.Buffer
	err = run(context.Background(), []string{"revoke", "--workload", "w", "--reason", "r"}, func(k string) string { return env[k] }, &stdout, &errOut)
	srv.Close() // waits for the request, if one was made
	return fa.auth, errOut.String(), err
}

const (
	receiptDone    = `{"revocation_id":"rev_1","status":"revoked","matched":2,"revoked":["iss_a","iss_b"],"pending":[],"failed":[],"selector":{"workload":"payments-api"},"reason":"r","block":true}`
	receiptPending = `{"revocation_id":"rev_2","status":"pending","matched":1,"revoked":[],"pending":["iss_c"],"failed":[{"issuance_id":"iss_c","error":"backend revocation failed (vault_unavailable); retrying"}],"selector":{"issuance_id":"iss_c"},"reason":"r"}`
	receiptNoBlock = `{"revocation_id":"rev_3","status":"revoked","matched":0,"revoked":[],"pending":[],"failed":[],"selector":{"session_id":"ses_typo"},"reason":"r","block":true,"blocks":[]}`
	receiptBlocks  = `{"revocation_id":"rev_4","status":"revoked","matched":0,"revoked":[],"pending":[],"failed":[],"selector":{"owner":"team-data"},"reason":"r","block":true,"blocks":["batch","etl"]}`
	deniedBody     = `{"error":"access_denied","error_description":"this admin lacks the revoke role","request_id":"req_9"}`
)

func TestRevokeCommand(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("file-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		env        map[string]string
		status     int
		body       string
		wantCode   int // 0 ok, else exitError code, -1 plain error (exit 1)
		wantOut    []string
		wantNotOut string
		wantErr    string
		wantSent   map[string]any
		wantBearer string
	}{
		{name: "ok/workload-block-all-revoked", args: []string{"--workload", "payments-api", "--block", "--reason", "INC-1"},
			env: map[string]string{"KEYTRAIL_ADMIN_TOKEN": "env-token"}, status: 200, body: receiptDone,
			wantOut:  []string{"revocation rev_1 (workload payments-api, new credentials blocked)", "revoked 2 of 2 matched credential(s)", "revoked  iss_a"},
			wantSent: map[string]any{"workload": "payments-api", "reason": "INC-1", "block": true}, wantBearer: "Bearer env-token"},
		{name: "ok/block-found-nothing", args: []string{"--session", "ses_typo", "--block", "--reason", "r"},
			env: map[string]string{"KEYTRAIL_ADMIN_TOKEN": "t"}, status: 200, body: receiptNoBlock,
			wantOut: []string{"revocation rev_3 (session ses_typo, block asked for but no workload found to block: nothing blocked)"}, wantNotOut: "new credentials blocked"},
		{name: "ok/block-names-workloads", args: []string{"--owner", "team-data", "--block", "--reason", "r"},
			env: map[string]string{"KEYTRAIL_ADMIN_TOKEN": "t"}, status: 200, body: receiptBlocks,
			wantOut: []string{"revocation rev_4 (owner team-data, new credentials blocked for batch, etl)"}},
		{name: "ok/pending-exits-3", args: []string{"--issuance", "iss_c", "--reason", "r", "--token-file", tokenFile},
			env: map[string]string{"KEYTRAIL_ADMIN_TOKEN": "env-token"}, status: 202, body: receiptPending, wantCode: 3,
			wantOut: []string{"revoked 0 of 1", "pending 1: refused by keytrail but NOT yet revoked at their backend",
				"still works there until the server's retry succeeds", "iss_c  backend revocation failed (vault_unavailable); retrying", "GET /v1/admin/revocations/rev_2"},
			wantSent: map[string]any{"issuance_id": "iss_c", "reason": "r"}, wantBearer: "Bearer file-token"},
		{name: "ok/json", args: []string{"--owner", "team-data", "--reason", "r", "--json"},
			env: map[string]string{"KEYTRAIL_ADMIN_TOKEN_FILE": tokenFile}, status: 200, body: receiptDone,
			wantOut: []string{`"revocation_id": "rev_1"`, `"revoked": [`}, wantBearer: "Bearer file-token",
			wantSent: map[string]any{"owner": "team-data", "reason": "r"}},
		{name: "fail/denied-shows-oauth-error", args: []string{"--workload", "w", "--reason", "r"},
			env: map[string]string{"KEYTRAIL_ADMIN_TOKEN": "t"}, status: 403, body: deniedBody, wantCode: -1,
			wantErr: "revoke: 403 access_denied: this admin lacks the revoke role (request_id req_9)"},
		{name: "ok/force-sent", args: []string{"--workload", "not-deployed-yet", "--block", "--force", "--reason", "r"},
			env: map[string]string{"KEYTRAIL_ADMIN_TOKEN": "t"}, status: 200, body: receiptDone, wantBearer: "Bearer t",
			wantSent: map[string]any{"workload": "not-deployed-yet", "reason": "r", "block": true, "force": true}},
		{name: "fail/unknown-workload-refused", args: []string{"--workload", "Payments-API", "--block", "--reason", "r"},
			env: map[string]string{"KEYTRAIL_ADMIN_TOKEN": "t"}, status: 404, wantCode: -1,
			body:    `{"error":"not_found","error_description":"no workload named \"Payments-API\" in the policy in force and no issuance recorded for it (names are case-sensitive: did you mean \"payments-api\"?); nothing was revoked or blocked; to revoke or block this name anyway, send force (keytrail revoke --force)","request_id":"req_8"}`,
			wantErr: `revoke: 404 not_found: no workload named "Payments-API" in the policy in force`},
		{name: "fail/two-selectors", args: []string{"--workload", "w", "--owner", "o", "--reason", "r"},
			env: map[string]string{"KEYTRAIL_ADMIN_TOKEN": "t"}, wantCode: 2, wantErr: "exactly one of"},
		{name: "fail/no-reason", args: []string{"--workload", "w"},
			env: map[string]string{"KEYTRAIL_ADMIN_TOKEN": "t"}, wantCode: 2, wantErr: "--reason is required"},
		{name: "fail/no-token", args: []string{"--workload", "w", "--reason", "r"}, wantCode: -1, wantErr: "no admin token"},
		{name: "fail/plain-http-remote", args: []string{"--workload", "w", "--reason", "r", "--addr", "http://keytrail.example:7700"},
			env: map[string]string{"KEYTRAIL_ADMIN_TOKEN": "t"}, wantCode: -1, wantErr: "refusing to send the admin token over plain HTTP"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fa := &fakeAdmin{status: tt.status, body: tt.body}
			srv := httptest.NewServer(fa)
			defer srv.Close()
			env := map[string]string{"KEYTRAIL_ADDR": srv.URL}
			for k, v := range tt.env {
				env[k] = v
			}
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), append([]string{"revoke"}, tt.args...), func(k string) string { return env[k] }, &stdout, &stderr)
			var ee exitError
			switch {
			case tt.wantCode == 0 && err != nil:
				t.Fatalf("revoke %v = %v, want success", tt.args, err)
			case tt.wantCode > 0 && (!errors.As(err, &ee) || ee.code != tt.wantCode):
				t.Fatalf("revoke %v = %v, want exit %d", tt.args, err, tt.wantCode)
			case tt.wantCode == -1 && (err == nil || errors.As(err, &ee) || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("revoke %v = %v, want a plain error containing %q", tt.args, err, tt.wantErr)
			}
			for _, want := range tt.wantOut {
				if !strings.Contains(stdout.String(), want) {
					t.Errorf("output lacks %q:\n%s", want, stdout.String())
				}
			}
			if tt.wantNotOut != "" && strings.Contains(stdout.String(), tt.wantNotOut) {
				t.Errorf("output has %q:\n%s", tt.wantNotOut, stdout.String())
			}
			if tt.wantSent != nil {
				if diff := cmp.Diff(tt.wantSent, fa.got); diff != "" {
					t.Errorf("request body (-want +got):\n%s", diff)
				}
				if fa.auth != tt.wantBearer {
					t.Errorf("Authorization = %q, want %q", fa.auth, tt.wantBearer)
				}
			}
			if out := stdout.String() + stderr.String(); strings.Contains(out, "env-token") || strings.Contains(out, "file-token") {
				t.Errorf("the admin token was printed")
			}
		})
	}
}

func TestRevokeHelp(t *testing.T) {
	var stdout bytes.Buffer
	if err := run(context.Background(), []string{"revoke", "--help"}, func(string) string { return "" }, &stdout, &stdout); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--issuance", "--session", "--workload", "--owner", "--reason", "--block", "--force", "--json",
		"KEYTRAIL_ADDR", "KEYTRAIL_ADMIN_TOKEN_FILE", "KEYTRAIL_ADMIN_TOKEN", "Exit status", "3  revoked in keytrail"} {
		if !strings.Contains(stdout.String(), want) {
			t.Errorf("keytrail revoke --help lacks %q", want)
		}
	}
}

// An admin server address refused as unusable must not be quoted whole:
// its user info or query may hold a password or token.
func TestAdminAddressErrorHidesSecrets(t *testing.T) {
	const secret = "ADMIN-ADDR-MARKER-3"
	for _, addr := range []string{
		"htps://admin:" + secret + "@keytrail.internal",
		"https://admin:" + secret + "@keytrail.internal:notaport",
		"keytrail.internal?token=" + secret,
		// Well-formed, but the admin token would go with a password or a
		// token in the URL: refused as the workload client refuses it.
		"https://admin:" + secret + "@keytrail.internal",
		"https://keytrail.internal/?token=" + secret,
	} {
		for _, args := range [][]string{
			{"revoke", "--workload", "w", "--reason", "r", "--addr", addr},
			{"unblock", "--workload", "w", "--reason", "r", "--addr", addr},
			{"trace", "--addr", addr, "iss_01JTEST"},
			{"report", "--addr", addr},
		} {
			_, stderr, err := runCLI(t, map[string]string{"KEYTRAIL_ADMIN_TOKEN": "admin-token"}, args...)
			if err == nil {
				t.Errorf("keytrail %s: nil error, want the address refused", strings.Join(args, " "))
				continue
			}
			if strings.Contains(err.Error(), secret) || strings.Contains(stderr, secret) {
				t.Errorf("keytrail %s = %q (stderr %q), quotes the secret", strings.Join(args, " "), err, stderr)
			}
			// Refused before any request: the address is checked as the
			// workload client checks it, not reached and failed.
			if !strings.Contains(err.Error(), "server address") {
				t.Errorf("keytrail %s = %q, want the server address refused before any request", strings.Join(args, " "), err)
			}
		}
	}
}

// An admin token file others can read (or anyone but its owner can write)
// draws a warning on stderr naming the file and its mode; the command
// still runs. Group read alone (0640, a Vault agent sink's default) is a
// deliberate sharing and passes quietly.
func TestAdminTokenFilePermissionsWarn(t *testing.T) {
	tests := []struct {
		name string
		mode os.FileMode
		warn string
	}{
		{"ok/owner-only", 0o600, ""},
		{"ok/group-read", 0o640, ""},
		{"warn/world-readable", 0o644, "keytrail: warning: admin token file {file} has mode 0644: others can read or change it; chmod 600 {file}\n"},
		{"warn/group-writable", 0o660, "keytrail: warning: admin token file {file} has mode 0660: others can read or change it; chmod 600 {file}\n"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			file := filepath.Join(t.TempDir(), "admin-token")
			if err := os.WriteFile(file, []byte("file-token\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(file, tc.mode); err != nil {
				t.Fatal(err)
			}
			auth, stderr, err := revokeWithTokenFile(t, file)
			if err != nil {
				t.Fatalf("revoke with a mode %#o token file = %v, want it to run", tc.mode, err)
			}
			if auth != "Bearer file-token" {
				t.Errorf("Authorization = %q, want the file's token", auth)
			}
			if want := strings.ReplaceAll(tc.warn, "{file}", file); stderr != want {
				t.Errorf("stderr = %q, want %q", stderr, want)
			}
		})
	}
}

// TestAdminAllowInsecureHTTPFlag: the admin commands take the name the
// workload commands use (--allow-insecure-http, as fetch and exec), and
// still accept their older --insecure-http (hidden), both setting one flag.
func TestAdminAllowInsecureHTTPFlag(t *testing.T) {
	e := &env{stdout: io.Discard, stderr: io.Discard, getenv: func(string) string { return "" }}
	for _, c := range []*cobra.Command{newRevokeCmd(e), newUnblockCmd(e), newTraceCmd(e), newReportCmd(e)} {
		for _, name := range []string{"allow-insecure-http", "insecure-http"} {
			_ = c.Flags().Set("allow-insecure-http", "false")
			if err := c.ParseFlags([]string{"--" + name}); err != nil {
				t.Errorf("%s --%s: %v", c.Name(), name, err)
				continue
			}
			for _, other := range []string{"allow-insecure-http", "insecure-http"} {
				if v, err := c.Flags().GetBool(other); err != nil || !v {
					t.Errorf("%s --%s: --%s = %v, %v; want both names set", c.Name(), name, other, v, err)
				}
			}
		}
		if f := c.Flags().Lookup("allow-insecure-http"); f == nil || f.Hidden {
			t.Errorf("%s: --allow-insecure-http missing or hidden from --help", c.Name())
		}
		if f := c.Flags().Lookup("insecure-http"); f == nil || !f.Hidden {
			t.Errorf("%s: the older --insecure-http should be accepted but hidden", c.Name())
		}
	}
}

// TestAdminServerNotRunning: with no server at the address, the admin
// commands said "POST 127.0.0.1:7798: dial tcp 127.0.0.1:7798: connect:
// connection refused": Go's dialer text, without the scheme, where the
// address came from or what to do. They now name the URL, its source
// (--addr, KEYTRAIL_ADDR or the default) and the fix, exit 1, and never
// quote the admin token.
func TestAdminServerNotRunning(t *testing.T) {
	addr := "http://" + closedLoopbackAddrs(t, 1)[0]
	const token = "ADMIN-TOKEN-MARKER-7"
	for _, viaFlag := range []bool{false, true} {
		env := map[string]string{"KEYTRAIL_ADMIN_TOKEN": token}
		var extra []string
		src := "(from KEYTRAIL_ADDR)"
		if viaFlag {
			extra, src = []string{"--addr", addr}, "(from --addr)"
		} else {
			env["KEYTRAIL_ADDR"] = addr
		}
		for _, args := range [][]string{
			{"revoke", "--workload", "w", "--reason", "r"},
			{"unblock", "--workload", "w", "--reason", "r"},
			{"trace", "iss_01JTEST"},
			{"report"},
		} {
			args = append(args, extra...)
			_, stderr, err := runCLI(t, env, args...)
			if err == nil {
				t.Fatalf("keytrail %s: nil error with no server at %s", strings.Join(args, " "), addr)
			}
			if c := exitCode(err); c != -1 && c != 1 {
				t.Errorf("keytrail %s: exit %d, want 1", strings.Join(args, " "), c)
			}
			msg := err.Error()
			want := "no keytrail server at " + addr + " " + src + ": connection refused; start it there, or give the running server's URL with --addr or KEYTRAIL_ADDR"
			if !strings.Contains(msg, want) {
				t.Errorf("keytrail %s = %q, want it to say %q", strings.Join(args, " "), msg, want)
			}
			if strings.Contains(msg, "dial tcp") || strings.Contains(msg+stderr, token) {
				t.Errorf("keytrail %s = %q (stderr %q): Go's dialer text or the admin token", strings.Join(args, " "), msg, stderr)
			}
		}
	}
}
