package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/client"
)

// fakeTokenBroker answers POST /v1/token per grant (the audience) and
// records the subject tokens it saw.
type fakeTokenBroker struct {
	mu       sync.Mutex
	byGrant  map[string]tokenReply
	subjects []string
}

type tokenReply struct {
	status int
	body   string
}

func (f *fakeTokenBroker) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	raw, _ := io.ReadAll(r.Body)
	form, _ := url.ParseQuery(string(raw))
	if r.Method != "POST" || r.URL.Path != "/v1/token" || form.Get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange" {
		http.Error(w, "unexpected request", http.StatusTeapot)
		return
	}
	f.mu.Lock()
	f.subjects = append(f.subjects, form.Get("subject_token"))
	rep, ok := f.byGrant[form.Get("audience")]
	f.mu.Unlock()
	if !ok {
		rep = tokenReply{400, `{"error":"invalid_target","error_description":"unknown grant","request_id":"req_t"}`}
	}
	// As the broker's every answer (SPEC "HTTP API").
	w.Header().Set("X-Request-Id", "req_fake")
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rep.status)
	io.WriteString(w, rep.body)
}

const (
	vaultBody = `{"access_token":"hvs.it's-$secret","issued_token_type":"urn:ietf:params:oauth:token-type:access_token","token_type":"Bearer","expires_in":900,"issuance_id":"iss_V","workload":"payments-api","owner":"team-payments","session_id":"ses_1","grant":"payments-vault","kind":"vault_token","credential":{"accessor":"acc_1","policies":["a","b"],"lease-id":"x"}}` + "\n"
	dbBody    = `{"access_token":"db-token","token_type":"Bearer","expires_in":600,"issuance_id":"iss_D","grant":"payments-db","kind":"vault_dynamic","credential":{"username":"v-iss_D-user","password":"p@ss w'rd"}}` + "\n"
	pkiBody   = `{"access_token":"pki-token","expires_in":600,"issuance_id":"iss_P","grant":"tls","kind":"pki","credential":{"certificate":"-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----","ca_chain":["-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----"],"private_key":"-----BEGIN EC PRIVATE KEY-----\nKEY\n-----END EC PRIVATE KEY-----","serial_number":"1a"}}`
	deniedBdy = `{"error":"access_denied","error_description":"the workload is not allowed this grant","request_id":"req_403"}`
	rejectBdy = `{"error":"invalid_grant","error_description":"identity token rejected","request_id":"req_401"}`
)

func newFakeTokenBroker(t *testing.T) (*fakeTokenBroker, string) {
	t.Helper()
	f := &fakeTokenBroker{byGrant: map[string]tokenReply{
		"payments-vault": {200, vaultBody},
		"payments-db":    {200, dbBody},
		"tls":            {200, pkiBody},
		"denied":         {403, deniedBdy},
		"rejected":       {401, rejectBdy},
		"garbled":        {200, `{"token_type":"Bearer","expires_in":60}`},
	}}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv.URL
}

// runFetch runs `keytrail fetch args...` in process.
func runCmd(t *testing.T, ctx context.Context, addr string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	getenv := func(k string) string {
		if k == "KEYTRAIL_ADDR" {
			return addr
		}
		return ""
	}
	err = run(ctx, args, getenv, &out, &errb)
	return out.String(), errb.String(), err
}

func exitCode(err error) int {
	var ee exitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &ee):
		return ee.code
	default:
		return -1
	}
}

func TestFetchCommand(t *testing.T) {
	_, addr := newFakeTokenBroker(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantFiles  map[string]string // relative to the case's dir
		wantStdout string
		wantStderr []string
	}{
		{name: "ok/raw", args: []string{"--grant", "payments-vault", "--out", "{dir}/token"},
			wantFiles:  map[string]string{"token": "hvs.it's-$secret"},
			wantStderr: []string{"keytrail: payments-vault: issuance iss_V, expires in 15m0s, written to {dir}/token"}},
		{name: "ok/json-is-the-whole-response", args: []string{"--grant", "payments-vault", "--out", "{dir}/c.json", "--format", "json"},
			wantFiles: map[string]string{"c.json": vaultBody}},
		{name: "ok/env-shell-quoted", args: []string{"--grant", "payments-db", "--out", "{dir}/db.env", "--format", "env"},
			wantFiles: map[string]string{"db.env": "KEYTRAIL_ACCESS_TOKEN='db-token'\n" + "KEYTRAIL_EXPIRES_AT='{exp}'\n" +
				"KEYTRAIL_GRANT='payments-db'\nKEYTRAIL_ISSUANCE_ID='iss_D'\nKEYTRAIL_PASSWORD='p@ss w'\\''rd'\nKEYTRAIL_SESSION_ID=''\nKEYTRAIL_USERNAME='v-iss_D-user'\n"}},
		{name: "ok/pem", args: []string{"--grant", "tls", "--out", "{dir}/tls.pem", "--format", "pem"},
			wantFiles: map[string]string{"tls.pem": "-----BEGIN CERTIFICATE-----\nLEAF\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nCA\n-----END CERTIFICATE-----\n-----BEGIN EC PRIVATE KEY-----\nKEY\n-----END EC PRIVATE KEY-----\n"}},
		{name: "ok/out-dir-two-grants", args: []string{"--grant", "payments-vault", "--grant", "payments-db", "--out-dir", "{dir}/creds", "--format", "json"},
			wantFiles:  map[string]string{"creds/payments-vault.json": vaultBody, "creds/payments-db.json": dbBody},
			wantStderr: []string{"payments-vault: issuance iss_V", "payments-db: issuance iss_D, expires in 10m0s, written to {dir}/creds/payments-db.json"}},
		{name: "ok/stdout", args: []string{"--grant", "payments-db", "--out", "-"}, wantStdout: "db-token",
			wantStderr: []string{"payments-db: issuance iss_D, expires in 10m0s, written to stdout"}},
		{name: "fail/pem-without-certificate", args: []string{"--grant", "payments-db", "--out", "{dir}/x.pem", "--format", "pem"},
			wantCode: 1, wantStderr: []string{"returned no certificate: --format pem is for pki grants"}},
		{name: "fail/401-says-what-to-fix", args: []string{"--grant", "rejected", "--out", "{dir}/x"}, wantCode: 1,
			wantStderr: []string{"rejected: the identity token was rejected (keytrail broker: 401 invalid_grant: identity token rejected (request_id req_401)): check the token file " + tokenFile + ", its audience (keytrail) and expiry"}},
		{name: "fail/403-says-what-to-fix", args: []string{"--grant", "denied", "--out", "{dir}/x"}, wantCode: 1,
			wantStderr: []string{"403 access_denied", "keytrail policy explain --policy PATH --token FILE --grant G"}},
		{name: "fail/200-not-a-token-response-is-not-retried", args: []string{"--grant", "garbled", "--out", "{dir}/x", "--timeout", "3s"}, wantCode: 1,
			wantStderr: []string{"garbled: keytrail broker: token response without access_token: check that --addr (or $KEYTRAIL_ADDR) names a keytrail server"}},
		{name: "fail/unknown-grant", args: []string{"--grant", "nope", "--out", "{dir}/x"}, wantCode: 1,
			wantStderr: []string{"400 invalid_target", "check the grant name"}},
		{name: "fail/no-token-file", args: []string{"--grant", "payments-vault", "--out", "{dir}/x", "--identity-token-file", "{dir}/missing"}, wantCode: 1,
			wantStderr: []string{"cannot get the identity token: identity token from file {dir}/missing: no such file or directory: check --identity-token-file"}},
		{name: "fail/no-out", args: []string{"--grant", "payments-vault"}, wantCode: 2, wantStderr: []string{"--out or --out-dir is required"}},
		{name: "fail/out-with-two-grants", args: []string{"--grant", "a", "--grant", "b", "--out", "{dir}/x"}, wantCode: 2, wantStderr: []string{"use --out-dir"}},
		{name: "fail/bad-format", args: []string{"--grant", "a", "--out", "{dir}/x", "--format", "yaml"}, wantCode: 2, wantStderr: []string{"want raw, json, env or pem"}},
		{name: "fail/sub-second-ttl", args: []string{"--grant", "a", "--out", "{dir}/x", "--ttl", "1500ms"}, wantCode: 2, wantStderr: []string{"whole number of seconds"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cdir := t.TempDir()
			r := strings.NewReplacer("{dir}", cdir)
			args := []string{"fetch", "--identity-token-file", tokenFile}
			for _, a := range tc.args {
				args = append(args, r.Replace(a))
			}
			stdout, stderr, err := runCmd(t, context.Background(), addr, args...)
			if code := exitCode(err); code != tc.wantCode {
				t.Fatalf("fetch %v = %v (code %d), want code %d\nstderr: %s", tc.args, err, code, tc.wantCode, stderr)
			}
			var ee exitError
			if errors.As(err, &ee) {
				stderr += ee.msg
			}
			stderr = wholeMinuteExpiry(stderr)
			for _, w := range tc.wantStderr {
				if !strings.Contains(stderr, r.Replace(w)) {
					t.Errorf("stderr %q lacks %q", stderr, r.Replace(w))
				}
			}
			if stdout != tc.wantStdout {
				t.Errorf("stdout = %q, want %q", stdout, tc.wantStdout)
			}
			got := map[string]string{}
			filepath.WalkDir(cdir, func(p string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				rel, _ := filepath.Rel(cdir, p)
				data, _ := os.ReadFile(p)
				got[rel] = string(data)
				if fi, _ := d.Info(); fi.Mode().Perm() != 0o600 {
					t.Errorf("%s has mode %v, want 0600", rel, fi.Mode().Perm())
				}
				return nil
			})
			want := map[string]string{}
			for k, v := range tc.wantFiles {
				want[k] = strings.ReplaceAll(v, "{exp}", expiresAtIn(got[k]))
			}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("files written (-want +got):\n%s", diff)
			}
		})
	}
}

// wholeMinuteExpiry rounds each "expires in D" of a status line up to the
// whole minute when D is at most 5 s short of it: the line counts from the
// time it is printed, after the credential was written and fsynced, which
// on a loaded machine takes long enough to read 9m59s for a 600 s
// credential. Anything further from the broker's expires_in still differs.
func wholeMinuteExpiry(s string) string {
	return expiresInRE.ReplaceAllStringFunc(s, func(m string) string {
		d, err := time.ParseDuration(strings.TrimPrefix(m, "expires in "))
		if err != nil {
			return m
		}
		if up := d.Truncate(time.Minute) + time.Minute; up-d <= 5*time.Second {
			d = up
		}
		return "expires in " + d.String()
	})
}

var expiresInRE = regexp.MustCompile(`expires in [0-9hms.]+`)

// expiresAtIn takes KEYTRAIL_EXPIRES_AT out of an env file (it depends on
// the time of the run).
func expiresAtIn(envFile string) string {
	for _, l := range strings.Split(envFile, "\n") {
		if v, ok := strings.CutPrefix(l, "KEYTRAIL_EXPIRES_AT='"); ok {
			v = strings.TrimSuffix(v, "'")
			if _, err := time.Parse(time.RFC3339, v); err == nil {
				return v
			}
		}
	}
	return "<missing or not RFC 3339>"
}

// TestEmptyIdentityFlagsAreUsageErrors: an empty --identity-token-file,
// --identity-token-env or --audience (an unset shell variable, say) is a
// usage mistake, exit 2 before anything is asked. It used to stand for the
// default: the default token file was read instead of the variable, and the
// GitHub Actions token was requested for audience keytrail.
func TestEmptyIdentityFlagsAreUsageErrors(t *testing.T) {
	f, addr := newFakeTokenBroker(t)
	var ghRequests atomic.Int64
	gh := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ghRequests.Add(1)
		io.WriteString(w, `{"count":1,"value":"gh.identity.jwt"}`)
	}))
	t.Cleanup(gh.Close)
	getenv := func(k string) string {
		return map[string]string{
			"KEYTRAIL_ADDR":              addr,
			client.EnvGitHubRequestURL:   gh.URL + "/idtoken?api-version=2.0",
			client.EnvGitHubRequestToken: "request-token",
		}[k]
	}
	out := filepath.Join(t.TempDir(), "cred")
	for _, flags := range [][]string{
		{"--github-actions", "--audience", ""},
		{"--github-actions", "--audience", " "},
		{"--identity-token-env", ""},
		{"--identity-token-file", ""},
	} {
		for _, args := range [][]string{
			append([]string{"fetch", "--grant", "payments-vault", "--out", out}, flags...),
			append([]string{"exec", "--grant", "payments-vault", "--env", "T"}, append(flags, "--", "true")...),
		} {
			var stdout, stderr bytes.Buffer
			err := run(context.Background(), args, getenv, &stdout, &stderr)
			if got := exitCode(err); got != exitUsage || !strings.Contains(err.Error(), flags[len(flags)-2]+" must not be empty") {
				t.Errorf("keytrail %q: exit status %d (%v), want %d naming %s\nstderr: %s", args, got, err, exitUsage, flags[len(flags)-2], stderr.String())
			}
		}
	}
	if n := ghRequests.Load(); n != 0 {
		t.Errorf("the GitHub Actions token endpoint was asked %d time(s); want none", n)
	}
	if len(f.subjects) != 0 {
		t.Errorf("%d token exchange(s) reached the broker; want none", len(f.subjects))
	}
}

func TestEnvFormatSourcesInShell(t *testing.T) {
	c := &client.Credential{AccessToken: `a'b"c$d` + "`e\\f\ng", Grant: "g", ExpiresAt: time.Unix(0, 0),
		Fields: map[string]any{"pass word": "it's", "path": "/not/PATH", "n": 3.5}}
	f := filepath.Join(t.TempDir(), "c.env")
	if err := writeAtomic(f, renderEnv(c)); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("sh", "-c", `. "$1"; printf '%s|%s|%s|%s' "$KEYTRAIL_ACCESS_TOKEN" "$KEYTRAIL_PASS_WORD" "$KEYTRAIL_N" "$KEYTRAIL_PATH"`, "sh", f).CombinedOutput()
	if err != nil {
		t.Fatalf("sh: %v: %s", err, out)
	}
	want := c.AccessToken + "|it's|3.5|/not/PATH"
	if string(out) != want {
		t.Errorf("sourced env = %q, want %q", out, want)
	}
}

func TestWriteAtomicReplacesWithMode0600(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "cred")
	if err := os.WriteFile(p, []byte("old"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := writeAtomic(p, []byte("new")); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := os.ReadFile(p)
	entries, _ := os.ReadDir(dir)
	if string(data) != "new" || fi.Mode().Perm() != 0o600 || len(entries) != 1 {
		t.Errorf("after writeAtomic: %q mode %v, %d entries; want \"new\", 0600, 1", data, fi.Mode().Perm(), len(entries))
	}
	if err := writeAtomic(filepath.Join(dir, "missing-dir", "x"), []byte("x")); err == nil {
		t.Errorf("writeAtomic into a missing directory succeeded")
	}
}

func TestParseEnvSpec(t *testing.T) {
	one := []string{"db"}
	two := []string{"db", "vault"}
	tests := []struct {
		name   string
		in     string
		grants []string
		want   envSpec
		err    string
	}{
		{"ok/name-only", "TOKEN", one, envSpec{"TOKEN", "db", "access_token"}, ""},
		{"ok/field", "PGUSER=username", one, envSpec{"PGUSER", "db", "username"}, ""},
		{"ok/grant-field", "VAULT_TOKEN=vault:access_token", two, envSpec{"VAULT_TOKEN", "vault", "access_token"}, ""},
		{"fail/ambiguous-grant", "X=username", two, envSpec{}, "name one"},
		{"fail/unknown-grant", "X=other:username", two, envSpec{}, "not one of the --grant values"},
		{"fail/bad-name", "1X", one, envSpec{}, "not an environment variable name"},
		{"fail/empty-field", "X=", one, envSpec{}, "want NAME"},
		{"fail/empty-name", "=username", one, envSpec{}, "not an environment variable name"},
	}
	for _, tc := range tests {
		got, err := parseEnvSpec(tc.in, tc.grants)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseEnvSpec(%s: %q) = %v, want error %q", tc.name, tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("parseEnvSpec(%s: %q) = %+v, %v, want %+v", tc.name, tc.in, got, err, tc.want)
		}
	}
}

func TestParseOnRenew(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want string
	}{
		{"ok/restart", "restart", "restart"},
		{"ok/hup", "signal:HUP", "hangup"},
		{"ok/sighup", "signal:SIGHUP", "hangup"},
		{"ok/usr1-lower", "signal:usr1", "user defined signal 1"},
		{"fail/kill", "signal:KILL", "error"},
		{"fail/empty", "", "error"},
		{"fail/other", "reload", "error"},
	}
	for _, tc := range tests {
		a, err := parseOnRenew(tc.in)
		got := "error"
		switch {
		case err != nil:
		case a.restart:
			got = "restart"
		default:
			got = a.sig.String()
		}
		if got != tc.want {
			t.Errorf("parseOnRenew(%s: %q) = %s, want %s", tc.name, tc.in, got, tc.want)
		}
	}
}

func TestExecCommand(t *testing.T) {
	_, addr := newFakeTokenBroker(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "identity")
	os.WriteFile(tokenFile, []byte("identity.jwt"), 0o600)
	t.Setenv("PGUSER", "inherited-must-be-overridden")
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantStdout string
		wantErr    string
	}{
		{"ok/env-and-exit-status", []string{"--grant", "payments-db", "--env", "PGUSER=username", "--env", "PGPASSWORD=password", "--env", "TOKEN", "--env", "ISS=issuance_id",
			"--", "sh", "-c", `printf '%s|%s|%s|%s' "$PGUSER" "$PGPASSWORD" "$TOKEN" "$ISS"; exit 7`},
			7, "v-iss_D-user|p@ss w'rd|db-token|iss_D", ""},
		{"ok/two-grants", []string{"--grant", "payments-db", "--grant", "payments-vault", "--env", "A=payments-vault:accessor", "--env", "B=payments-db:username",
			"--", "sh", "-c", `printf '%s|%s' "$A" "$B"`}, 0, "acc_1|v-iss_D-user", ""},
		{"ok/killed-by-signal-is-128-plus", []string{"--grant", "payments-db", "--env", "T", "--", "sh", "-c", `kill -KILL $$`}, 137, "", ""},
		{"fail/unknown-field", []string{"--grant", "payments-db", "--env", "X=nope", "--", "true"}, 1, "", `has no field "nope"; it has access_token, issuance_id, session_id, expires_in and password, username`},
		{"fail/command-not-found", []string{"--grant", "payments-db", "--env", "T", "--", "/nonexistent/cmd"}, 127, "", "no such file"},
		{"fail/denied-before-start", []string{"--grant", "denied", "--env", "T", "--", "sh", "-c", "echo started"}, 1, "", "403 access_denied"},
		{"fail/no-env", []string{"--grant", "payments-db", "--", "true"}, 2, "", "give --env"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"exec", "--quiet", "--identity-token-file", tokenFile}, tc.args...)
			stdout, stderr, err := runCmd(t, context.Background(), addr, args...)
			if code := exitCode(err); code != tc.wantCode {
				t.Fatalf("exec = %v (code %d), want %d\nstderr: %s", err, code, tc.wantCode, stderr)
			}
			if stdout != tc.wantStdout {
				t.Errorf("child stdout = %q, want %q", stdout, tc.wantStdout)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("exec error = %v, want %q", err, tc.wantErr)
			}
		})
	}
}

func TestExecStopsChildOnCancel(t *testing.T) {
	_, addr := newFakeTokenBroker(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "identity")
	os.WriteFile(tokenFile, []byte("identity.jwt"), 0o600)
	started := filepath.Join(dir, "started")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		_, _, err := runCmd(t, ctx, addr, "exec", "--quiet", "--identity-token-file", tokenFile, "--grant", "payments-db", "--env", "T",
			"--", "sh", "-c", `trap 'exit 42' TERM; : > "$1"; while :; do sleep 0.05; done`, "sh", started)
		done <- err
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := os.Stat(started); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("child did not start")
		}
		<-time.After(10 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if code := exitCode(err); code != 42 {
			t.Errorf("exec after cancel = %v (code %d), want the child's 42 (it got SIGTERM)", err, code)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("exec did not end after cancel")
	}
}

// TestFetchFailsFastOnPermanentRefusalOfOneGrant: docs/WORKLOADS.md says
// permanent refusals (403 ...) are not retried: the command exits 1 with a
// message saying what to fix. With two grants, one refused for good and one
// the broker keeps answering 503 for, fetch and exec must say so at once,
// not after --timeout (with --timeout 0, never) while the other grant
// retries.
func TestFetchFailsFastOnPermanentRefusalOfOneGrant(t *testing.T) {
	f, addr := newFakeTokenBroker(t)
	f.byGrant["busy"] = tokenReply{503, `{"error":"temporarily_unavailable","error_description":"vault down","request_id":"req_503"}`}
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt"), 0o600); err != nil {
		t.Fatal(err)
	}
	grants := []string{"--identity-token-file", tokenFile, "--grant", "busy", "--grant", "denied", "--grant", "payments-vault", "--timeout", "0"}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"fetch", append(append([]string{"fetch"}, grants...), "--out-dir", filepath.Join(dir, "out"))},
		{"exec", append(append([]string{"exec", "--quiet"}, grants...), "--env", "T=payments-vault:access_token", "--", "sh", "-c", "echo started")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The busy grant retries until this context ends: a command
			// still running then waited for it.
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			stdout, stderr, err := runCmd(t, ctx, addr, tc.args...)
			if ctx.Err() != nil {
				t.Fatalf("%s returned only when the test's context ended (%v): it kept retrying the busy grant after the 403\nstderr: %s", tc.name, err, stderr)
			}
			if code := exitCode(err); code != 1 || !strings.Contains(err.Error(), "denied: keytrail broker: 403 access_denied") {
				t.Fatalf("%s = %v (code %d), want exit 1 naming the 403 of grant denied\nstderr: %s", tc.name, err, code, stderr)
			}
			if stdout != "" {
				t.Errorf("%s stdout = %q, want nothing (the command must not start)", tc.name, stdout)
			}
		})
	}
}

func FuzzParseEnvSpec(f *testing.F) {
	for _, s := range []string{"TOKEN", "PGUSER=username", "VAULT_TOKEN=vault:access_token", "X=username", "X=other:username", "1X", "X=", "=username", "A=b:c:d"} {
		f.Add(s)
	}
	grants := []string{"db", "vault"}
	f.Fuzz(func(t *testing.T, s string) {
		sp, err := parseEnvSpec(s, grants)
		if err != nil {
			return
		}
		if !envNameRE.MatchString(sp.Name) || !slices.Contains(grants, sp.Grant) || !envFieldRE.MatchString(sp.Field) {
			t.Fatalf("parseEnvSpec(%q) = %+v: accepted an invalid spec", s, sp)
		}
	})
}

func FuzzParseOnRenew(f *testing.F) {
	for _, s := range []string{"restart", "signal:HUP", "signal:SIGHUP", "signal:usr1", "signal:KILL", "", "reload"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := parseOnRenew(s)
		if err != nil {
			return
		}
		if !a.restart && a.sig == 0 {
			t.Fatalf("parseOnRenew(%q) = %+v: neither restart nor a signal", s, a)
		}
		if a.sig == syscall.SIGKILL || a.sig == syscall.SIGSTOP {
			t.Fatalf("parseOnRenew(%q) accepted %v", s, a.sig)
		}
	})
}

// TestEnvFormatFieldNameClashIsDeterministic: two credential fields whose
// variable names clash (lease-id and lease_id are both KEYTRAIL_LEASE_ID)
// render the same file on every run, not whichever field Go's map order
// happens to visit first.
func TestEnvFormatFieldNameClashIsDeterministic(t *testing.T) {
	c := &client.Credential{AccessToken: "tok", Grant: "g", ExpiresAt: time.Unix(0, 0),
		Fields: map[string]any{"lease-id": "dash", "lease_id": "underscore", "a": "1", "b": "2", "c": "3"}}
	first := string(renderEnv(c))
	for i := 0; i < 50; i++ {
		if got := string(renderEnv(c)); got != first {
			t.Fatalf("renderEnv differs between runs:\n%s\nthen\n%s", first, got)
		}
	}
	if !strings.Contains(first, "KEYTRAIL_LEASE_ID='dash'\n") {
		t.Errorf("renderEnv = %q, want the first field name in sorted order (lease-id) to win", first)
	}
}

// An identity token file that exists but is empty (its helper has not
// written it yet, or is rewriting it in place) is waited for up to
// --timeout, and the failure then names it rather than the broker.
func TestFetchWaitsForEmptyTokenFileThenNamesIt(t *testing.T) {
	f, addr := newFakeTokenBroker(t)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "identity")
	if err := os.WriteFile(tokenFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	_, stderr, err := runCmd(t, context.Background(), addr, "fetch", "--identity-token-file", tokenFile,
		"--grant", "payments-vault", "--out", filepath.Join(dir, "x"), "--timeout", "1s")
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("fetch with an empty token file = %v, want exit 1 after --timeout\nstderr: %s", err, stderr)
	}
	want := "payments-vault: no credential after 1s; last failure: identity token from file " + tokenFile + ": empty"
	if ee.msg != want {
		t.Errorf("message = %q, want %q", ee.msg, want)
	}
	if !strings.Contains(stderr, "identity token from file "+tokenFile+": empty; retrying in") {
		t.Errorf("stderr %q lacks the retry line", stderr)
	}
	f.mu.Lock()
	n := len(f.subjects)
	f.mu.Unlock()
	if n != 0 {
		t.Errorf("broker saw %d requests, want none", n)
	}
}

// Where the credential would go is checked before the broker is asked: a
// credential minted and then thrown away for want of a directory is an
// issuance for nothing.
func TestOutputCheckedBeforeExchange(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	outDir := filepath.Join(dir, "outdir")
	if err := os.Mkdir(outDir, 0o700); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"fail/fetch-out-in-missing-directory", []string{"fetch", "--grant", "payments-vault", "--out", dir + "/nope/token"},
			"fetch: --out " + dir + "/nope/token: cannot write in " + dir + "/nope: no such file or directory"},
		{"fail/fetch-out-is-a-directory", []string{"fetch", "--grant", "payments-vault", "--out", outDir},
			"fetch: --out " + outDir + ": is a directory (use --out-dir)"},
		{"fail/exec-out-in-missing-directory", []string{"exec", "--grant", "payments-vault", "--out", dir + "/nope/token", "--", "true"},
			"exec: --out " + dir + "/nope/token: cannot write in " + dir + "/nope: no such file or directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f, addr := newFakeTokenBroker(t)
			args := append([]string{tc.args[0], "--identity-token-file", tokenFile}, tc.args[1:]...)
			_, stderr, err := runCmd(t, context.Background(), addr, args...)
			var ee exitError
			if !errors.As(err, &ee) || ee.code != 1 || ee.msg != tc.want {
				t.Errorf("%v = %v, want exit 1 with %q\nstderr: %s", tc.args, err, tc.want, stderr)
			}
			f.mu.Lock()
			n := len(f.subjects)
			f.mu.Unlock()
			if n != 0 {
				t.Errorf("broker was asked %d times, want none", n)
			}
		})
	}
}

// TestConnectionFailureInPlainWords: the causes a connection to the broker
// fails with, said with the address and without Go's operation noise.
func TestConnectionFailureInPlainWords(t *testing.T) {
	const addr = "https://keytrail.internal:7700"
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fmt.Errorf("keytrail broker unreachable: Post %s/v1/token: %w", addr, refused),
			"cannot reach the broker at " + addr + ": connection refused"},
		{fmt.Errorf("keytrail broker unreachable: Post %s/v1/token: %w", addr, &net.OpError{Op: "dial", Net: "tcp",
			Err: &net.DNSError{Err: "no such host", Name: "keytrail.internal", IsNotFound: true}}),
			"cannot reach the broker at " + addr + ": host keytrail.internal not found"},
		{fmt.Errorf("x: %w", &net.OpError{Op: "dial", Net: "tcp", Err: &net.DNSError{Err: "server misbehaving", Name: "keytrail.internal", IsTemporary: true}}),
			"cannot reach the broker at " + addr + ": looking up host keytrail.internal failed: server misbehaving"},
		{fmt.Errorf("x: %w", &net.OpError{Op: "dial", Net: "tcp", Err: os.NewSyscallError("connect", syscall.EHOSTUNREACH)}),
			"cannot reach the broker at " + addr + ": no route to host"},
		{fmt.Errorf("keytrail broker: reading response: %w", &net.OpError{Op: "read", Net: "tcp", Err: os.NewSyscallError("read", syscall.ECONNRESET)}),
			"the connection to the broker at " + addr + " failed: connection reset by peer"},
		{fmt.Errorf("x: %w", context.DeadlineExceeded), "no answer from the broker at " + addr + " within 30s"},
	} {
		if got := retryReason(tc.err, addr+"/"); got != tc.want {
			t.Errorf("retryReason(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
	// Not a connection's: as it is.
	if got := retryReason(errors.New("keytrail broker: response larger than 1 bytes"), addr); got != "keytrail broker: response larger than 1 bytes" {
		t.Errorf("retryReason = %q", got)
	}
}

// TestFetchBrokerNotRunning: with nothing listening at the broker address,
// fetch and exec retried until --timeout and then said only "last failure:
// ... connect: connection refused". The final message now says what to
// check: whether the broker runs at that address, and how to give it
// (--addr, KEYTRAIL_ADDR). Exit 1, nothing written, CMD not run.
func TestFetchBrokerNotRunning(t *testing.T) {
	addr := "http://" + closedLoopbackAddrs(t, 1)[0]
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(dir, "ran")
	for _, args := range [][]string{
		{"fetch", "--grant", "g", "--identity-token-file", tokenFile, "--out", filepath.Join(dir, "cred"), "--timeout", "1s"},
		{"exec", "--grant", "g", "--identity-token-file", tokenFile, "--env", "T", "--timeout", "1s", "--", "touch", marker},
	} {
		_, stderr, err := runCmd(t, context.Background(), addr, args...)
		if exitCode(err) != 1 {
			t.Fatalf("keytrail %v = %v, want exit 1", args, err)
		}
		want := "g: no credential after 1s; last failure: cannot reach the broker at " + addr +
			": connection refused; is the broker running at that address? Give its URL with --addr or KEYTRAIL_ADDR"
		if msg := err.Error(); !strings.HasSuffix(msg, want) {
			t.Errorf("keytrail %v = %q, want %q", args, msg, want)
		}
		// Each retry's line says the address and the cause, without the
		// Go error's request, operation and resolved address.
		line := "keytrail: g: cannot reach the broker at " + addr + ": connection refused; retrying in "
		if !strings.HasPrefix(stderr, line) {
			t.Errorf("keytrail %v: stderr %q, want lines starting %q", args, stderr, line)
		}
		for _, noise := range []string{"dial tcp", "connect:", "Post ", "/v1/token"} {
			if strings.Contains(err.Error()+stderr, noise) {
				t.Errorf("keytrail %v says %q: %q (stderr %q)", args, noise, err, stderr)
			}
		}
		if strings.Contains(err.Error()+stderr, "identity.jwt") {
			t.Errorf("keytrail %v quotes the identity token: %q (stderr %q)", args, err, stderr)
		}
	}
	for _, f := range []string{"cred", "ran"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Errorf("%s exists (stat: %v): nothing should be written or run", f, err)
		}
	}
}

// TestConnectionFailureThroughAProxy: with HTTPS_PROXY (or HTTP_PROXY)
// set, a proxy that cannot be reached was reported as the broker's own
// failure, 'cannot reach the broker at https://keytrail.internal:7700:
// connection refused; is the broker running at that address?', hiding the
// proxy, which Go's error named ("proxyconnect tcp: dial tcp ..."). It now
// names the proxy by its address, never its URL (which may hold a
// password), and the final message asks about the proxy, not the broker.
func TestConnectionFailureThroughAProxy(t *testing.T) {
	const addr = "https://keytrail.internal:7700"
	proxyAddr := closedLoopbackAddrs(t, 1)[0]
	proxyURL, err := url.Parse("http://user:s3cret@" + proxyAddr)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	xerr := exchangeThroughProxy(t, addr, proxyURL, tokenFile)
	if xerr == nil || !strings.Contains(xerr.Error(), "proxyconnect") {
		t.Fatalf("Exchange through a closed proxy = %v, want a proxyconnect error", xerr)
	}
	want := "cannot reach the proxy at " + proxyAddr + " (HTTPS_PROXY) for the broker at " + addr + ": connection refused"
	if got := retryReason(xerr, addr); got != want {
		t.Errorf("retryReason = %q, want %q", got, want)
	}
	if got := retryReason(xerr, addr); strings.Contains(got, "s3cret") {
		t.Errorf("retryReason = %q shows the proxy's password", got)
	}
	if got := refusedHint(xerr); !strings.Contains(got, "is the proxy running") {
		t.Errorf("refusedHint = %q, want it to ask about the proxy", got)
	}
}

// TestTLSHandshakeTimeoutIsNotTheClientTimeout: net/http's "TLS handshake
// timeout" (10 s by default, a broker port that accepts but does not
// answer the handshake) is a timeout too, and e365a8c reported it as 'no
// answer from the broker at X within 30s': the wrong duration, and the
// handshake that hung not named. Only the client's own timeout says that
// now; the handshake's reads as Go's error does.
func TestTLSHandshakeTimeoutIsNotTheClientTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		// Accept, never answer: the handshake hangs.
		var conns []net.Conn
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns = append(conns, c)
		}
	}()
	addr := "https://" + ln.Addr().String()
	tokenFile := filepath.Join(t.TempDir(), "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cl, err := client.New(client.Options{Addr: addr, HTTPClient: &http.Client{Transport: &http.Transport{TLSHandshakeTimeout: 50 * time.Millisecond}}})
	if err != nil {
		t.Fatal(err)
	}
	_, xerr := cl.Exchange(context.Background(), "g", client.ExchangeOptions{Identity: client.FileIdentity{Path: tokenFile}})
	if xerr == nil || !strings.Contains(xerr.Error(), "TLS handshake timeout") {
		t.Fatalf("Exchange = %v, want a TLS handshake timeout", xerr)
	}
	if got := retryReason(xerr, addr); !strings.Contains(got, "TLS handshake timeout") || strings.Contains(got, "within 30s") {
		t.Errorf("retryReason = %q, want the TLS handshake timeout named, not the client's 30s", got)
	}
}

// exchangeThroughProxy makes one exchange with the broker at addr through
// the proxy at proxyURL, with fetch's and exec's transport, and returns its
// error.
func exchangeThroughProxy(t *testing.T, addr string, proxyURL *url.URL, tokenFile string) error {
	t.Helper()
	tr := workloadTransport()
	tr.Proxy = http.ProxyURL(proxyURL)
	cl, err := client.New(client.Options{Addr: addr, HTTPClient: &http.Client{Timeout: client.DefaultTimeout, Transport: tr}})
	if err != nil {
		t.Fatal(err)
	}
	_, xerr := cl.Exchange(context.Background(), "g", client.ExchangeOptions{Identity: client.FileIdentity{Path: tokenFile}})
	return xerr
}

// TestProxyFailuresNameTheProxy: through HTTPS_PROXY, a proxy whose host
// cannot be resolved read 'cannot reach the proxy for the broker at X:
// host ... not found' without the proxy's address (the failed dial had
// none), and a proxy that refused CONNECT (407, 403) gave net/http's bare
// status text ('Proxy Authentication Required'), naming neither the proxy
// nor that it refused. Both now name the proxy's host:port (never its user
// info) and, for a refusal, its status.
func TestProxyFailuresNameTheProxy(t *testing.T) {
	const addr = "https://keytrail.internal:7700"
	tokenFile := filepath.Join(t.TempDir(), "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		status int
		want   string
	}{
		{"407", http.StatusProxyAuthRequired, "refused the tunnel to the broker at " + addr + ": it answered 407 Proxy Authentication Required"},
		{"403", http.StatusForbidden, "refused the tunnel to the broker at " + addr + ": it answered 403 Forbidden"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var connects atomic.Int32
			proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.Method == http.MethodConnect {
					connects.Add(1)
				}
				w.Header().Set("Proxy-Authenticate", `Basic realm="proxy"`)
				w.WriteHeader(c.status)
			}))
			defer proxy.Close()
			proxyURL, err := url.Parse(proxy.URL)
			if err != nil {
				t.Fatal(err)
			}
			proxyURL.User = url.UserPassword("PROXY-USER-MARKER", "PROXY-PW-MARKER")
			xerr := exchangeThroughProxy(t, addr, proxyURL, tokenFile)
			if xerr == nil || connects.Load() == 0 {
				t.Fatalf("Exchange through a refusing proxy = %v (%d CONNECTs), want it refused", xerr, connects.Load())
			}
			want := "the proxy at " + proxyURL.Host + " (HTTPS_PROXY) " + c.want
			got := retryReason(xerr, addr)
			if got != want {
				t.Errorf("retryReason = %q, want %q", got, want)
			}
			if strings.Contains(got, "MARKER") {
				t.Errorf("retryReason = %q shows the proxy's user info", got)
			}
		})
	}
	t.Run("host-not-resolved", func(t *testing.T) {
		proxyURL := &url.URL{Scheme: "http", User: url.UserPassword("PROXY-USER-MARKER", "PROXY-PW-MARKER"), Host: "keytrail-test-proxy.invalid:3128"}
		xerr := exchangeThroughProxy(t, addr, proxyURL, tokenFile)
		if xerr == nil {
			t.Fatal("Exchange through an unresolvable proxy succeeded")
		}
		got := retryReason(xerr, addr)
		// "host ... not found", or the look-up's failure where no resolver
		// answers: either way after the proxy's host:port.
		want := "cannot reach the proxy at keytrail-test-proxy.invalid:3128 (HTTPS_PROXY) for the broker at " + addr + ": "
		if !strings.HasPrefix(got, want) || !strings.Contains(got[len(want):], "keytrail-test-proxy.invalid") {
			t.Errorf("retryReason = %q, want %q and the look-up's failure", got, want)
		}
		if strings.Contains(got, "MARKER") {
			t.Errorf("retryReason = %q shows the proxy's user info", got)
		}
	})
}

// runKeytrailProcess runs this test binary as the keytrail binary (TestMain,
// benchChildEnv) with args, in an environment without proxy or CA settings
// of its own plus env; it returns stdout, stderr and the exit status. The
// real process is what reads HTTPS_PROXY, NO_PROXY and SSL_CERT_FILE
// (net/http and crypto/x509 read them once per process).
func runKeytrailProcess(t *testing.T, env []string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(self, args...)
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(name) {
		case "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "ALL_PROXY", "REQUEST_METHOD", "SSL_CERT_FILE", "SSL_CERT_DIR", "KEYTRAIL_ADDR":
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(append(cmd.Env, benchChildEnv+"=1"), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("running keytrail %v: %v", args, err)
	}
	return out.String(), errb.String(), code
}

// testProxy is an HTTP proxy: it answers every request with status when
// status is not 0, else tunnels every CONNECT to target whatever host it
// names. It records each request's method and host.
type testProxy struct {
	*httptest.Server
	mu       sync.Mutex
	requests []string
	conns    []net.Conn
}

func newTestProxy(t *testing.T, target string, status int) *testProxy {
	t.Helper()
	p := &testProxy{}
	p.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		p.requests = append(p.requests, r.Method+" "+r.Host)
		p.mu.Unlock()
		if status != 0 || r.Method != http.MethodConnect {
			if status == 0 {
				status = http.StatusBadGateway
			}
			w.Header().Set("Proxy-Authenticate", `Basic realm="proxy"`)
			w.WriteHeader(status)
			return
		}
		up, err := net.Dial("tcp", target)
		if err != nil {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		down, buf, err := http.NewResponseController(w).Hijack()
		if err != nil {
			up.Close()
			return
		}
		p.mu.Lock()
		p.conns = append(p.conns, up, down)
		p.mu.Unlock()
		_, _ = down.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
		go func() { _, _ = io.Copy(up, buf); up.Close() }()
		go func() { _, _ = io.Copy(down, up); down.Close() }()
	}))
	t.Cleanup(func() {
		p.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			c.Close()
		}
	})
	return p
}

func (p *testProxy) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.requests)
}

// withUserinfo is p's URL with user info that must never be shown.
func (p *testProxy) withUserinfo() string {
	return strings.Replace(p.URL, "http://", "http://PROXY-USER-MARKER:PROXY-PW-MARKER@", 1)
}

// TestFetchThroughAProxyVerifiesWithSSLCertFile: workloadTransport (fetch's
// and exec's transport since 95d1984) must keep what the client's default
// transport did: HTTPS_PROXY from the environment, and the broker's
// certificate verified against the system roots, SSL_CERT_FILE included
// (the way to trust a private CA). An https broker with a private CA is
// reached through a CONNECT proxy and verified with that CA, and without
// the CA it is not trusted; without a proxy it is reached directly.
func TestFetchThroughAProxyVerifiesWithSSLCertFile(t *testing.T) {
	fake := &fakeTokenBroker{byGrant: map[string]tokenReply{"payments-vault": {200, vaultBody}}}
	broker := httptest.NewTLSServer(fake)
	defer broker.Close()
	dir := t.TempDir()
	caFile, tokenFile := filepath.Join(dir, "ca.pem"), filepath.Join(dir, "identity")
	ca := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: broker.Certificate().Raw})
	if err := os.WriteFile(caFile, ca, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte("identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	proxy := newTestProxy(t, broker.Listener.Addr().String(), 0)
	fetch := func(addr string, env ...string) (string, string, int) {
		return runKeytrailProcess(t, env, "fetch", "--grant", "payments-vault", "--identity-token-file", tokenFile,
			"--addr", addr, "--out", "-", "--timeout", "1s")
	}
	// httptest's certificate is for example.com (and loopback): the proxy
	// tunnels the CONNECT to example.com:443 to the broker.
	stdout, stderr, code := fetch("https://example.com", "HTTPS_PROXY="+proxy.URL, "SSL_CERT_FILE="+caFile)
	if code != 0 || stdout != "hvs.it's-$secret" {
		t.Errorf("fetch through the proxy with SSL_CERT_FILE: exit %d, stdout %q, stderr %q; want the token", code, stdout, stderr)
	}
	if got, want := proxy.seen(), []string{"CONNECT example.com:443"}; !slices.Equal(got, want) {
		t.Errorf("the proxy saw %q, want %q", got, want)
	}

	_, stderr, code = fetch("https://example.com", "HTTPS_PROXY="+proxy.URL)
	if code != 1 || !strings.Contains(stderr, "certificate signed by unknown authority") {
		t.Errorf("fetch through the proxy without the CA: exit %d, stderr %q; want the certificate refused", code, stderr)
	}

	stdout, stderr, code = fetch(broker.URL, "SSL_CERT_FILE="+caFile)
	if code != 0 || stdout != "hvs.it's-$secret" {
		t.Errorf("fetch without a proxy: exit %d, stdout %q, stderr %q; want the token", code, stdout, stderr)
	}
	// A loopback broker is never reached through the proxy (net/http's
	// rule, as NO_PROXY): HTTPS_PROXY set changes nothing.
	before := len(proxy.seen())
	stdout, stderr, code = fetch(broker.URL, "SSL_CERT_FILE="+caFile, "HTTPS_PROXY="+proxy.URL)
	if code != 0 || stdout != "hvs.it's-$secret" || len(proxy.seen()) != before {
		t.Errorf("fetch from a loopback broker with HTTPS_PROXY: exit %d, stdout %q, stderr %q, proxy saw %q; want the token, directly", code, stdout, stderr, proxy.seen())
	}
}

// TestProxyRefusalIsNotRetried: a proxy that refuses the tunnel to the
// broker (407: its credentials in HTTPS_PROXY are missing or wrong; 403:
// its policy) was retried with backoff until --timeout, as if the broker
// were down, though nothing changes between tries. fetch and exec now fail
// at once, saying that the proxy refused and what to check, without the
// proxy's user info.
func TestProxyRefusalIsNotRetried(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const addr = "https://keytrail.example"
	for _, c := range []struct {
		status int
		text   string
	}{{http.StatusProxyAuthRequired, "407 Proxy Authentication Required"}, {http.StatusForbidden, "403 Forbidden"}} {
		for _, cmd := range [][]string{
			{"fetch", "--grant", "g", "--identity-token-file", tokenFile, "--addr", addr, "--out", filepath.Join(dir, "cred"), "--timeout", "3s"},
			{"exec", "--grant", "g", "--identity-token-file", tokenFile, "--addr", addr, "--env", "T", "--timeout", "3s", "--", "touch", filepath.Join(dir, "ran")},
		} {
			proxy := newTestProxy(t, "", c.status)
			_, stderr, code := runKeytrailProcess(t, []string{"HTTPS_PROXY=" + proxy.withUserinfo()}, cmd...)
			want := "keytrail: g: the proxy at " + proxy.Listener.Addr().String() + " (HTTPS_PROXY) refused the tunnel to the broker at " + addr + ": it answered " + c.text
			if code != 1 || !strings.HasPrefix(stderr, want) || !strings.Contains(stderr, "NO_PROXY") || strings.Contains(stderr, "retrying") {
				t.Errorf("keytrail %s through a proxy answering %d: exit %d, stderr %q; want exit 1 at once with %q", cmd[0], c.status, code, stderr, want)
			}
			if got := proxy.seen(); !slices.Equal(got, []string{"CONNECT keytrail.example:443"}) {
				t.Errorf("keytrail %s: the proxy saw %q, want one CONNECT", cmd[0], got)
			}
			if strings.Contains(stderr, "MARKER") {
				t.Errorf("keytrail %s shows the proxy's user info: %q", cmd[0], stderr)
			}
		}
	}
	for _, f := range []string{"cred", "ran"} {
		if _, err := os.Stat(filepath.Join(dir, f)); !os.IsNotExist(err) {
			t.Errorf("%s exists (stat: %v): nothing should be written or run", f, err)
		}
	}
}

// TestPlainHTTPBrokerThroughAProxyAnswering407: to a plain-http broker a
// proxy (HTTP_PROXY) forwards the request itself, no CONNECT, so its 407
// came back as the broker's answer: 'keytrail broker: 407: Proxy
// Authentication Required: the broker refused the request', blaming the
// broker and naming no proxy. Only a proxy answers 407: it now reads as the
// proxy's refusal, by the proxy's host:port (never its user info) and the
// variable it came from, and fails at once.
func TestPlainHTTPBrokerThroughAProxyAnswering407(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	const addr = "http://keytrail.example:7700"
	proxy := newTestProxy(t, "", http.StatusProxyAuthRequired)
	_, stderr, code := runKeytrailProcess(t, []string{"HTTP_PROXY=" + proxy.withUserinfo()},
		"fetch", "--grant", "g", "--identity-token-file", tokenFile, "--addr", addr, "--allow-insecure-http", "--out", filepath.Join(dir, "cred"), "--timeout", "3s")
	want := "keytrail: g: the proxy at " + proxy.Listener.Addr().String() + " (HTTP_PROXY) refused to forward the request to the broker at " + addr + ": it answered 407 Proxy Authentication Required: check the proxy's user name and password"
	if code != 1 || !strings.HasPrefix(stderr, want) || strings.Contains(stderr, "retrying") || strings.Contains(stderr, "MARKER") {
		t.Errorf("fetch through a proxy answering 407: exit %d, stderr %q; want exit 1 at once with %q", code, stderr, want)
	}
	if got := proxy.seen(); !slices.Equal(got, []string{"POST keytrail.example:7700"}) {
		t.Errorf("the proxy saw %q, want the one POST", got)
	}
}

// TestSOCKSProxyFailureNamesTheProxy: with HTTPS_PROXY=socks5://..., a
// SOCKS proxy that refused the handshake or could not connect to the
// broker read 'the connection to the broker at X failed: username/password
// authentication failed' (or 'unknown error connection refused'), as if the
// broker had answered. It now names the SOCKS proxy by its host:port (never
// its user info) and says what it answered.
func TestSOCKSProxyFailureNamesTheProxy(t *testing.T) {
	const addr = "https://keytrail.internal:7700"
	tokenFile := filepath.Join(t.TempDir(), "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name  string
		reply func(net.Conn) // after the client's greeting
		cause string
	}{
		{"no-acceptable-auth", func(c net.Conn) { _, _ = c.Write([]byte{5, 0xff}) }, "no acceptable authentication methods"},
		{"bad-password", func(c net.Conn) {
			_, _ = c.Write([]byte{5, 2})
			_, _ = c.Read(make([]byte, 600))
			_, _ = c.Write([]byte{1, 1})
		}, "username/password authentication failed"},
		{"broker-refused", func(c net.Conn) {
			_, _ = c.Write([]byte{5, 2})
			_, _ = c.Read(make([]byte, 600))
			_, _ = c.Write([]byte{1, 0})
			_, _ = c.Read(make([]byte, 600))
			_, _ = c.Write([]byte{5, 5, 0, 1, 0, 0, 0, 0, 0, 0})
		}, "connection refused"},
	} {
		t.Run(c.name, func(t *testing.T) {
			socks := brokertest.SOCKSProxy(t, c.reply)
			proxyURL := &url.URL{Scheme: "socks5", User: url.UserPassword("PROXY-USER-MARKER", "PROXY-PW-MARKER"), Host: socks}
			xerr := exchangeThroughProxy(t, addr, proxyURL, tokenFile)
			if xerr == nil {
				t.Fatal("Exchange through a refusing SOCKS proxy succeeded")
			}
			want := "the SOCKS proxy at " + socks + " (HTTPS_PROXY) for the broker at " + addr + " failed: " + c.cause
			if got := retryReason(xerr, addr); got != want {
				t.Errorf("retryReason = %q, want %q", got, want)
			}
			if strings.Contains(retryReason(xerr, addr), "MARKER") {
				t.Errorf("retryReason shows the proxy's user info")
			}
		})
	}
}

// TestExecOutputFlags: exec offers fetch's --out, --out-dir and --format,
// and uses them (the files are written, and rewritten at each renewal, for
// a CMD that re-reads them), but --format without --out/--out-dir did
// nothing, silently, even when it was not a format at all; and --out's
// help said "- for stdout", which exec refuses. --format alone is now a
// usage error naming what it is for, before the broker is asked, and
// exec's help says what the three do for it.
func TestExecOutputFlags(t *testing.T) {
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f, addr := newFakeTokenBroker(t)
	for _, format := range []string{"json", "bogus", "raw"} {
		args := []string{"exec", "--identity-token-file", tokenFile, "--grant", "payments-vault", "--env", "T", "--format", format, "--", "true"}
		_, stderr, err := runCmd(t, context.Background(), addr, args...)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != exitUsage || !strings.Contains(ee.msg, "exec: --format applies only with --out or --out-dir") {
			t.Errorf("%q = %v, want a usage error (exit %d) saying --format applies only with --out or --out-dir\nstderr: %s", args, err, exitUsage, stderr)
		}
	}
	f.mu.Lock()
	n := len(f.subjects)
	f.mu.Unlock()
	if n != 0 {
		t.Errorf("usage errors sent %d token exchange(s) to the broker", n)
	}

	// With --out, --format is the file's format.
	out := filepath.Join(dir, "cred.json")
	if _, stderr, err := runCmd(t, context.Background(), addr, "exec", "--quiet", "--identity-token-file", tokenFile, "--grant", "payments-vault",
		"--out", out, "--format", "json", "--", "true"); err != nil {
		t.Fatalf("exec --out --format json = %v\nstderr: %s", err, stderr)
	}
	data, err := os.ReadFile(out)
	if err != nil || !json.Valid(data) || !strings.Contains(string(data), `"access_token"`) {
		t.Errorf("exec --out %s --format json wrote %q (%v), want the JSON response", out, data, err)
	}

	help, _, err := runCmd(t, context.Background(), addr, "exec", "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"--out FILE or --out-dir DIR", "--format applies only with them"} {
		if !strings.Contains(help, want) {
			t.Errorf("exec --help lacks %q:\n%s", want, help)
		}
	}
	for _, line := range strings.Split(help, "\n") {
		if strings.Contains(line, "--out string") && strings.Contains(line, "stdout") {
			t.Errorf("exec --help offers --out - (stdout), which exec refuses: %s", line)
		}
	}
}

// TestBrokerFailureShowsNoAddressPath: broker/client's transport errors
// show the broker address's scheme and host only (a token pasted into its
// path would otherwise be printed, to CI logs), but fetch and exec said
// the failure in their own words with the address as given, path and all:
// "cannot reach the broker at http://H/PATH: connection refused", and a
// certificate that does not verify as "... of the broker at https://H/PATH".
// They show its scheme and host only now.
func TestBrokerFailureShowsNoAddressPath(t *testing.T) {
	tokenFile := filepath.Join(t.TempDir(), "identity")
	if err := os.WriteFile(tokenFile, []byte("identity.jwt\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	id := client.FileIdentity{Path: tokenFile}
	exchange := func(addr string) error {
		t.Helper()
		cl, err := client.New(client.Options{Addr: addr})
		if err != nil {
			t.Fatal(err)
		}
		_, err = cl.Exchange(context.Background(), "g", client.ExchangeOptions{Identity: id})
		if err == nil {
			t.Fatalf("Exchange with %s succeeded", addr)
		}
		return err
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String()
	ln.Close()
	addr := closed + "/PATH-MARKER-s3cr3t/"
	got := retryReason(exchange(addr), addr)
	if want := "cannot reach the broker at " + closed + ": connection refused"; got != want {
		t.Errorf("retryReason (connection refused) = %q, want %q", got, want)
	}

	srv := httptest.NewUnstartedServer(http.NotFoundHandler())
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the handshake refused below
	srv.StartTLS()                                   // its certificate is not trusted
	defer srv.Close()
	addr = srv.URL + "/PATH-MARKER-s3cr3t"
	perr := permanentError("g", id, exchange(addr), addr)
	if msg := perr.Error(); strings.Contains(msg, "MARKER") || !strings.Contains(msg, "the broker at "+srv.URL+":") {
		t.Errorf("permanentError (certificate) = %q, want the broker named as %s, without the address's path", msg, srv.URL)
	}
}
