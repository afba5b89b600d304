package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

const (
	cliSecret = "hvs.CLIFixtureToken0123456789abcdef"
	cliIssID  = "iss_01JXCLI00000000000000000AA"
)

// cliAuditLog writes a chain split across a rotated file and the live
// file, as the broker's rotation leaves it, and returns the live path.
func cliAuditLog(t *testing.T, dir string) string {
	t.Helper()
	t0 := time.Now().Add(-time.Minute).UTC()
	c := audit.NewChain("chn_cli")
	evs := []*audit.Event{
		{Type: audit.TypeIssue, RequestID: "req_1", IssuanceID: cliIssID, Workload: "payments-api", Owner: "team-payments", SessionID: "ses_1",
			Grant: "payments-vault", Kind: broker.KindVaultToken, Identity: &audit.Identity{Iss: "https://issuer.test", Sub: "system:serviceaccount:payments:api"},
			Source:     &audit.Source{IP: "10.1.2.3"},
			Credential: &audit.Credential{Fingerprint: broker.Fingerprint(cliSecret), Accessor: "accCLI", ExpiresAt: t0.Add(time.Hour).Format(time.RFC3339)},
			Outcome:    &audit.Outcome{Status: 200}},
		{Type: audit.TypeDeny, RequestID: "req_2", Identity: &audit.Identity{Iss: "https://issuer.test", Sub: "stranger"}, Grant: "payments-vault",
			Outcome: &audit.Outcome{Status: 403, Error: "access_denied", Reason: "no_workload"}},
		{Type: audit.TypeIntrospect, RequestID: "req_3", UseID: "use_3", IssuanceID: cliIssID, Workload: "payments-api", Owner: "team-payments",
			Credential: &audit.Credential{Fingerprint: broker.Fingerprint(cliSecret)}, Outcome: &audit.Outcome{Status: 200}},
	}
	var lines []string
	for i, ev := range evs {
		l, err := c.Seal(ev, t0.Add(time.Duration(i)*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, string(l)+"\n")
	}
	writeFile(t, dir, "audit.jsonl."+t0.Format(trace.RotatedLayout), lines[0]+lines[1])
	return writeFile(t, dir, "audit.jsonl", lines[2])
}

func TestTraceOffline(t *testing.T) {
	dir := t.TempDir()
	live := cliAuditLog(t, dir)
	vaultLog := writeFile(t, dir, "vault-audit.log", strings.Join([]string{
		`{"time":"2025-06-01T10:00:00Z","type":"request","auth":{"client_token":"hmac-sha256:1","accessor":"accCLI","display_name":"token-keytrail-payments-api","policies":["default"],"metadata":{"issuance_id":"` + cliIssID + `"}},"request":{"id":"a","operation":"read","path":"auth/token/lookup-self"}}`,
		`{"time":"2025-06-01T10:00:01Z","type":"request","auth":{"client_token":"hmac-sha256:2","accessor":"accOld","display_name":"token-legacy","policies":["default"]},"request":{"id":"b","operation":"read","path":"secret/data/x"}}`,
		`{"time":"2025-06-01T10:00:02Z","type":"request","auth":{"client_token":"hmac-sha256:3","accessor":"accRoot","display_name":"root","policies":["root"]},"request":{"id":"c","operation":"update","path":"auth/token/create"}}`,
	}, "\n")+"\n")
	cases := []struct {
		name    string
		args    []string
		want    []string // substrings of stdout
		wantErr string   // substring of the error; "" = success
	}{
		{"ok/raw-credential", []string{"trace", cliSecret, "--audit-log", live},
			[]string{"issuance " + cliIssID, "matched credential " + broker.Fingerprint(cliSecret), "payments-api", "team-payments", "10.1.2.3", "introspect", "audit chain", "chn_cli"}, ""},
		{"ok/accessor-in-directory", []string{"trace", "accCLI", "--audit-log", dir}, []string{"matched accessor accCLI", cliIssID}, ""},
		{"ok/with-vault-log", []string{"trace", cliIssID, "--audit-log", live, "--vault-audit-log", vaultLog},
			[]string{"vault audit log: 1 request(s) made with this credential", "read auth/token/lookup-self"}, ""},
		{"ok/vault-gaps", []string{"trace", "--vault-audit-log", vaultLog, "--audit-log", live},
			[]string{"3 request(s): 1 attributed to keytrail issuances, 1 with a root token, 0 unauthenticated, 1 in attribution gaps", "token-legacy", "accOld", "not_keytrail"}, ""},
		{"fail/not-found", []string{"trace", "hvs.NotIssuedByKeytrail000000000", "--audit-log", live}, nil, "no issuance matches the credential with fingerprint sha256:"},
		{"fail/vault-without-audit", []string{"trace", "--vault-audit-log", vaultLog, "--addr", "http://127.0.0.1:1"}, nil, "needs keytrail's audit files"},
		{"fail/nothing-to-do", []string{"trace", "--audit-log", live}, nil, "give a VALUE"},
		{"fail/missing-file", []string{"trace", "x", "--audit-log", filepath.Join(dir, "nope.jsonl")}, nil, "no such file"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := runCLI(t, nil, tc.args...)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("keytrail %s = %v, want error containing %q\n%s", strings.Join(tc.args, " "), err, tc.wantErr, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("keytrail %s output lacks %q:\n%s", tc.name, w, out)
				}
			}
			if strings.Contains(out, cliSecret) || (err != nil && strings.Contains(err.Error(), "hvs.NotIssued")) {
				t.Errorf("keytrail %s shows a raw credential", tc.name)
			}
		})
	}

	// --json: the same answer as the library gives.
	out, _, err := runCLI(t, nil, "trace", "use_3", "--audit-log", live, "--json")
	if err != nil {
		t.Fatal(err)
	}
	var got trace.Result
	if err := json.Unmarshal([]byte(out), &got); err != nil {
		t.Fatalf("--json output is not a trace result: %v\n%s", err, out)
	}
	if got.Issuance.ID != cliIssID || got.Query.Kind != trace.KindUseID || len(got.Uses) != 1 {
		t.Errorf("trace use_3 --json = %+v", got)
	}
	var ee exitError
	_, _, err = runCLI(t, nil, "trace", "iss_none", "--audit-log", live)
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Errorf("trace of an unknown value = %v, want exit status 1", err)
	}
}

func TestTraceOnlineSendsNoRawCredential(t *testing.T) {
	var gotQ, gotAuth string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "GET" || r.URL.Path != "/v1/admin/trace" {
			http.Error(w, "unexpected", 500)
			return
		}
		gotQ, gotAuth = r.URL.Query().Get("q"), r.Header.Get("Authorization")
		w.Header().Set("Content-Type", "application/json")
		if gotQ == "iss_missing" {
			w.WriteHeader(404)
			fmt.Fprint(w, `{"error":"not_found","error_description":"no issuance matches this value","request_id":"req_x"}`)
			return
		}
		fmt.Fprintf(w, `{"query":{"kind":"credential","value":%q},"issuance":{"issuance_id":%q,"workload":"payments-api","owner":"team-payments"},"uses":[],"revocations":[],"from":"audit_log"}`, gotQ, cliIssID)
	}))
	defer srv.Close()
	env := map[string]string{"KEYTRAIL_ADDR": srv.URL, "KEYTRAIL_ADMIN_TOKEN": "admin-jwt"}
	out, _, err := runCLI(t, env, "trace", cliSecret)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{broker.Fingerprint(cliSecret), "Bearer admin-jwt"}, []string{gotQ, gotAuth}); diff != "" {
		t.Errorf("trace online sent (q, Authorization) = got, want want (-want +got):\n%s", diff)
	}
	if !strings.Contains(out, "issuance "+cliIssID) || !strings.Contains(out, "team-payments") {
		t.Errorf("trace online output:\n%s", out)
	}
	_, _, err = runCLI(t, env, "trace", "iss_missing")
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 || gotQ != "iss_missing" {
		t.Errorf("trace online of an unknown id = %v (q %q), want exit status 1", err, gotQ)
	}
	if _, _, err := runCLI(t, map[string]string{"KEYTRAIL_ADDR": srv.URL}, "trace", "x"); err == nil || !strings.Contains(err.Error(), "no admin token") {
		t.Errorf("trace online without a token = %v, want a no-admin-token error", err)
	}
}

const cliPolicy = `version: 1
issuers:
  - name: test
    issuer: https://issuer.test
    jwks_url: https://issuer.test/jwks.json
    audiences: [keytrail]
    algorithms: [ES256]
workloads:
  - name: payments-api
    owner: team-payments
    match: {issuer: test, subject: "system:serviceaccount:payments:api"}
    grants: [payments-vault]
  - name: batch
    owner: team-data
    match: {issuer: test, subject: batch}
    grants: [payments-vault]
grants:
  - name: payments-vault
    kind: vault_token
    ttl: 15m
    vault_token: {policies: [payments-read]}
`

func TestReportOffline(t *testing.T) {
	dir := t.TempDir()
	live := cliAuditLog(t, dir)
	pol := writeFile(t, dir, "policy.yaml", cliPolicy)
	out, _, err := runCLI(t, nil, "report", "--audit-log", live, "--policy", pol)
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"WORKLOADS (2)", "payments-api", "team-payments", "batch (team-data): never issued", "iss=https://issuer.test sub=stranger: 1 deny(s)", "no_workload"} {
		if !strings.Contains(out, w) {
			t.Errorf("report text lacks %q:\n%s", w, out)
		}
	}
	out, _, err = runCLI(t, nil, "report", "--audit-log", dir, "--policy", pol, "--format", "json")
	if err != nil {
		t.Fatal(err)
	}
	var rep trace.Report
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("report --format json: %v\n%s", err, out)
	}
	var names []string
	for _, w := range rep.Workloads {
		names = append(names, fmt.Sprintf("%s/%s issued=%d uses=%d", w.Name, w.Owner, w.Issued, w.Uses))
	}
	if diff := cmp.Diff([]string{"batch/team-data issued=0 uses=0", "payments-api/team-payments issued=1 uses=1"}, names); diff != "" {
		t.Errorf("report json workloads = got, want want (-want +got):\n%s", diff)
	}
	htmlPath := filepath.Join(dir, "r.html")
	if _, _, err := runCLI(t, nil, "report", "--audit-log", live, "--format", "html", "--out", htmlPath); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(htmlPath)
	if err != nil || !strings.Contains(string(b), "<h1>keytrail report</h1>") || !strings.Contains(string(b), "payments-api") {
		t.Errorf("report --format html --out wrote %d bytes (%v)", len(b), err)
	}
	if fi, err := os.Stat(htmlPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("report --out file mode = %v, %v, want 0600", fi.Mode(), err)
	}
	for _, args := range [][]string{{"report", "--format", "pdf", "--audit-log", live}, {"report", "--policy", pol}} {
		if _, _, err := runCLI(t, nil, args...); err == nil {
			t.Errorf("keytrail %s = nil error, want a usage error", strings.Join(args, " "))
		}
	}
}

func TestAuditVerifyFindsRotatedSiblings(t *testing.T) {
	dir := t.TempDir()
	live := cliAuditLog(t, dir)
	out, _, err := runCLI(t, nil, "audit", "verify", live)
	if err != nil {
		t.Fatalf("audit verify %s = %v\n%s", live, err, out)
	}
	if !strings.Contains(out, "2 file(s), 3 line(s), 1 chain(s)") || !strings.Contains(out, "files, in order: "+filepath.Join(dir, "audit.jsonl.")) {
		t.Errorf("audit verify did not read the rotated sibling first:\n%s", out)
	}
	if out, _, err := runCLI(t, nil, "audit", "verify", dir); err != nil || !strings.Contains(out, "2 file(s), 3 line(s)") {
		t.Errorf("audit verify DIR = %v\n%s", err, out)
	}
	// Without the sibling the chain does not start at seq 1.
	out, _, err = runCLI(t, nil, "audit", "verify", "--exact", live)
	if err == nil {
		t.Errorf("audit verify --exact on the live file alone = nil error, want a failure (its chain starts mid-way)\n%s", out)
	}
}

// TestAuditVerifyUnreplayedJournal: after an unclean stop the audit file can
// be short of acknowledged events that only its journal holds; verify says
// so (and fails) until a broker has replayed them, and leaves a running
// broker's journal alone.
func TestAuditVerifyUnreplayedJournal(t *testing.T) {
	live := filepath.Join(t.TempDir(), "audit.jsonl")
	o := auditfile.Options{Path: live, Journal: true}
	appendUse := func(s *auditfile.Sink, n int) {
		for range n {
			if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse, Workload: "w"}); err != nil {
				t.Fatal(err)
			}
		}
	}
	s, err := auditfile.Open(o)
	if err != nil {
		t.Fatal(err)
	}
	appendUse(s, 2)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	synced, err := os.ReadFile(live)
	if err != nil {
		t.Fatal(err)
	}
	if s, err = auditfile.Open(o); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	appendUse(s, 3)
	if out, _, err := runCLI(t, nil, "audit", "verify", live); err != nil {
		t.Errorf("audit verify of a file a running broker writes = %v, want OK (its journal is live)\n%s", err, out)
	}

	// What a power loss may leave: the journal, and the file as last synced.
	crashed := filepath.Join(t.TempDir(), "audit.jsonl")
	journal, err := os.ReadFile(auditfile.JournalPath(live))
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Dir(crashed), filepath.Base(auditfile.JournalPath(crashed)), string(journal))
	writeFile(t, filepath.Dir(crashed), "audit.jsonl", string(synced))
	out, _, err := runCLI(t, nil, "audit", "verify", crashed)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, crashed+":3: 3 acknowledged batch(es)") {
		t.Errorf("audit verify after an unclean stop = %v, want exit 1 naming 3 batches from line 3\n%s", err, out)
	}

	// A broker started on it replays the journal; then the file is whole.
	s2, err := auditfile.Open(auditfile.Options{Path: crashed, Journal: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if out, _, err := runCLI(t, nil, "audit", "verify", crashed); err != nil || !strings.Contains(out, "5 line(s)") {
		t.Errorf("audit verify after the replay = %v, want OK with 5 lines\n%s", err, out)
	}

	// A journal that does not continue its file (another file's) is named.
	writeFile(t, filepath.Dir(crashed), filepath.Base(auditfile.JournalPath(crashed)), string(journal))
	writeFile(t, filepath.Dir(crashed), "audit.jsonl", string(synced[:len(synced)/2]))
	if out, _, err := runCLI(t, nil, "audit", "verify", crashed); err == nil || !strings.Contains(out, "move the journal away") {
		t.Errorf("audit verify with a journal that does not continue the file = %v, want a failure naming the journal\n%s", err, out)
	}
}

// A credential copied with its "Bearer " prefix or its quotes is still a
// credential: the CLI sends its fingerprint, and a not-found message does
// not repeat it.
func TestTraceOnlineWrappedCredential(t *testing.T) {
	var gotQ string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		gotQ = r.URL.Query().Get("q")
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(404)
		fmt.Fprint(w, `{"error":"not_found","error_description":"no issuance matches this value"}`)
	}))
	defer srv.Close()
	env := map[string]string{"KEYTRAIL_ADDR": srv.URL, "KEYTRAIL_ADMIN_TOKEN": "admin-jwt"}
	const legacy = "s.LegacyVaultToken0123456789"
	for _, tc := range []struct{ v, secret string }{{"Bearer " + cliSecret, cliSecret}, {`"` + legacy + `"`, legacy}} {
		v := tc.v
		_, _, err := runCLI(t, env, "trace", v)
		if want := broker.Fingerprint(tc.secret); gotQ != want {
			t.Errorf("trace %q online sent q=%q, want the credential's fingerprint %q", v, gotQ, want)
		}
		if err == nil || strings.Contains(err.Error(), tc.secret) {
			t.Errorf("trace %q online = %v, want a not-found error that does not show the credential", v, err)
		}
	}
}

// Vault's audit log HMACs tokens and accessors by default and names each
// request by its own id: a value copied from it (an HMAC'd accessor or
// client token, a request id) traces, with --vault-audit-log, through the
// entry that carries it to the issuance its token names.
func TestTraceValueFromVaultAuditLog(t *testing.T) {
	dir := t.TempDir()
	live := cliAuditLog(t, dir)
	vaultLog := writeFile(t, dir, "vault-audit.log", strings.Join([]string{
		// The broker creates the token: the response carries the new token's auth.
		`{"time":"2025-06-01T09:59:59Z","type":"request","auth":{"client_token":"hmac-sha256:broker","accessor":"hmac-sha256:brokeracc","display_name":"token-keytrail-broker","policies":["keytrail"]},"request":{"id":"6f1c-create","operation":"update","path":"auth/token/create-orphan","client_token":"hmac-sha256:broker","client_token_accessor":"hmac-sha256:brokeracc"}}`,
		`{"time":"2025-06-01T09:59:59Z","type":"response","auth":{"client_token":"hmac-sha256:tok1","accessor":"hmac-sha256:acc1","display_name":"token-keytrail-payments-api","policies":["default"],"metadata":{"issuance_id":"` + cliIssID + `"}},"request":{"id":"6f1c-create","operation":"update","path":"auth/token/create-orphan"}}`,
		// The workload uses it.
		`{"time":"2025-06-01T10:00:00Z","type":"request","auth":{"client_token":"hmac-sha256:tok1","accessor":"hmac-sha256:acc1","display_name":"token-keytrail-payments-api","policies":["default"],"metadata":{"issuance_id":"` + cliIssID + `"}},"request":{"id":"9a2e-read","operation":"read","path":"secret/data/x","client_token":"hmac-sha256:tok1","client_token_accessor":"hmac-sha256:acc1"}}`,
	}, "\n")+"\n")
	for _, v := range []string{"hmac-sha256:acc1", "hmac-sha256:tok1", "9a2e-read", "6f1c-create"} {
		out, _, err := runCLI(t, nil, "trace", v, "--audit-log", live, "--vault-audit-log", vaultLog)
		if err != nil {
			t.Errorf("trace %s --vault-audit-log = %v, want issuance %s", v, err, cliIssID)
			continue
		}
		if !strings.Contains(out, "issuance "+cliIssID) || !strings.Contains(out, "vault audit log: 1 request(s)") {
			t.Errorf("trace %s --vault-audit-log output:\n%s", v, out)
		}
	}
	var ee exitError
	if _, _, err := runCLI(t, nil, "trace", "hmac-sha256:brokeracc", "--audit-log", live, "--vault-audit-log", vaultLog); !errors.As(err, &ee) || ee.code != 1 {
		t.Errorf("trace of the broker's own accessor = %v, want not found (exit 1)", err)
	}
}

// TestAuditLogSeveralFiles: SPEC "CLI" writes trace's and report's
// offline files as --audit-log FILE...: each of --audit-log A --audit-log B,
// --audit-log A,B and a directory reads both files, and "--audit-log A B"
// (a shell glob after one flag) is a usage error (exit 2) that says how to
// name several files instead of only counting arguments.
func TestAuditLogSeveralFiles(t *testing.T) {
	dir := t.TempDir()
	live := cliAuditLog(t, dir)
	other := writeFile(t, t.TempDir(), "other.jsonl", "")
	for _, args := range [][]string{
		{"trace", cliIssID, "--audit-log", other, "--audit-log", live},
		{"trace", cliIssID, "--audit-log", other + "," + live},
		{"trace", cliIssID, "--audit-log", dir},
	} {
		if out, _, err := runCLI(t, nil, args...); err != nil || !strings.Contains(out, "issuance "+cliIssID) {
			t.Errorf("keytrail %s = %v, want the issuance\n%s", strings.Join(args, " "), err, out)
		}
	}
	const hint = "name several audit files as --audit-log A --audit-log B, --audit-log A,B or their directory"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"trace", cliIssID, "--audit-log", other, live}, "trace: takes one VALUE, got 2 arguments; " + hint},
		{[]string{"report", "--audit-log", other, live}, "report: unexpected argument \"" + live + "\": takes no arguments; " + hint},
		{[]string{"trace", "connection", "authorized:", "user=kt-iss-x"}, "trace: takes one VALUE, got 3 arguments; quote a VALUE that has spaces"},
	} {
		_, _, err := runCLI(t, nil, tc.args...)
		if exitCode(err) != exitUsage || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("keytrail %s = %v (exit %d), want exit 2 saying %q", strings.Join(tc.args, " "), err, exitCode(err), tc.want)
		}
	}
}

// TestTraceEmptyValue: an empty VALUE (a shell variable not set: trace
// "$ACCESSOR") was sent to the server, or looked up offline once every
// audit file had been read, and came back as "invalid request (bad_query):
// invalid request: empty query", exit 1. It is a usage mistake: exit 2,
// before any file is read or the server is asked.
func TestTraceEmptyValue(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		http.Error(w, `{"error":"invalid_request","error_description":"invalid request: empty query"}`, http.StatusBadRequest)
	}))
	defer srv.Close()
	addr := srv.URL
	for _, args := range [][]string{
		{"trace", ""},
		{"trace", "  ", "--json"},
		{"trace", "", "--audit-log", filepath.Join(t.TempDir(), "missing.jsonl")},
	} {
		_, _, err := runCLI(t, map[string]string{"KEYTRAIL_ADDR": addr, "KEYTRAIL_ADMIN_TOKEN": "admin-token"}, args...)
		var ee exitError
		want := "trace: VALUE is empty (a shell variable not set?) (see keytrail trace --help)"
		if !errors.As(err, &ee) || ee.code != 2 || ee.msg != want {
			t.Errorf("keytrail %q = %v, want exit 2 with %q", args, err, want)
		}
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("the server was asked %d times, want none", n)
	}
}

// TestOfflineTraceAndReportRequireVerified: --require-verified makes an
// offline trace or report over audit files that do not verify exit 3
// (exitNotVerified), after the answer or report is written; over intact
// files it changes nothing. It exited 1, as a trace that finds nothing
// does: a script could not tell "not found" from "not verified". Not found
// over intact files stays 1; not found over files that do not verify is 3
// (the not-found line still printed), as the missing issuance may be the
// lines removed.
func TestOfflineTraceAndReportRequireVerified(t *testing.T) {
	dir := t.TempDir()
	live := cliAuditLog(t, dir)
	vaultLog := writeFile(t, dir, "vault-audit.log", `{"time":"2025-06-01T10:00:00Z","type":"request","auth":{"client_token":"hmac-sha256:1","accessor":"accCLI","display_name":"token-keytrail-payments-api","policies":["default"],"metadata":{"issuance_id":"`+cliIssID+`"}},"request":{"id":"a","operation":"read","path":"auth/token/lookup-self"}}`+"\n")
	outFile := filepath.Join(t.TempDir(), "report.json")
	cases := [][]string{
		{"trace", cliIssID, "--audit-log", live, "--require-verified"},
		{"trace", cliIssID, "--audit-log", live, "--require-verified", "--json"},
		{"trace", "--vault-audit-log", vaultLog, "--audit-log", live, "--require-verified"},
		{"report", "--audit-log", live, "--require-verified", "--format", "json"},
		{"report", "--audit-log", live, "--require-verified", "--out", outFile},
	}
	const unknown = "iss_01JXNOSUCHISSUANCE000000000"
	notFound := [][]string{
		{"trace", unknown, "--audit-log", live, "--require-verified"},
		{"trace", unknown, "--audit-log", live, "--require-verified", "--json"},
	}
	// written is what the command wrote: stdout, or the --out file.
	written := func(args []string, stdout string) string {
		if slices.Contains(args, "--out") {
			b, err := os.ReadFile(outFile)
			if err != nil {
				t.Fatalf("%v: --out not written: %v", args, err)
			}
			return string(b)
		}
		return stdout
	}
	want := func(args []string) string {
		switch {
		case args[0] == "report":
			return "payments-api"
		case slices.Contains(args, "--vault-audit-log"):
			return "attributed to keytrail issuances"
		}
		return cliIssID
	}
	for _, args := range cases {
		_ = os.Remove(outFile)
		out, stderr, err := runCLI(t, nil, args...)
		if err != nil || strings.Contains(stderr, "do NOT verify") || !strings.Contains(written(args, out), want(args)) {
			t.Errorf("%v over intact files = %v\nstdout:\n%s\nstderr:\n%s\nwant success with the answer", args, err, out, stderr)
		}
	}
	for _, args := range notFound {
		_, stderr, err := runCLI(t, nil, args...)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, "no issuance matches") || strings.Contains(stderr, "do NOT verify") {
			t.Errorf("%v (nothing matches) over intact files = %v\nstderr:\n%s\nwant exit 1, no issuance matches", args, err, stderr)
		}
	}

	m, _ := filepath.Glob(filepath.Join(dir, "audit.jsonl.*"))
	if len(m) != 1 {
		t.Fatalf("fixture: rotated files %v, want one", m)
	}
	data, err := os.ReadFile(m[0])
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(data), `"sub":"stranger"`, `"sub":"someone"`, 1)
	if changed == string(data) {
		t.Fatalf("fixture: no deny of \"stranger\" in %s", data)
	}
	if err := os.WriteFile(m[0], []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	first := live + ":1 (seq 3): prev hash mismatch"
	for _, args := range cases {
		_ = os.Remove(outFile)
		out, stderr, err := runCLI(t, nil, args...)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 3 || !strings.Contains(ee.msg, "--require-verified: the audit files do NOT verify: 1 problem(s), the first at "+first) {
			t.Errorf("%v over a changed file = %v, want exit 3 naming %q", args, err, first)
		}
		if !strings.Contains(written(args, out), want(args)) || !strings.Contains(stderr, "keytrail: warning: the audit files do NOT verify") {
			t.Errorf("%v over a changed file:\nstdout:\n%s\nstderr:\n%s\nwant the answer written first, and the warning", args, out, stderr)
		}
		// Without the flag, the exit status is unchanged.
		noFlag := slices.DeleteFunc(slices.Clone(args), func(a string) bool { return a == "--require-verified" })
		_ = os.Remove(outFile)
		if _, _, err := runCLI(t, nil, noFlag...); err != nil {
			t.Errorf("%v over a changed file = %v, want success (a warning only)", noFlag, err)
		}
	}
	for _, args := range notFound {
		out, stderr, err := runCLI(t, nil, args...)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 3 || !strings.Contains(ee.msg, "trace: --require-verified: the audit files do NOT verify: 1 problem(s), the first at "+first) {
			t.Errorf("%v (nothing matches) over a changed file = %v, want exit 3 naming %q", args, err, first)
		}
		if out != "" || !strings.Contains(stderr, "keytrail: no issuance matches \""+unknown+"\"") || !strings.Contains(stderr, "keytrail: warning: the audit files do NOT verify") {
			t.Errorf("%v (nothing matches) over a changed file:\nstdout:\n%s\nstderr:\n%s\nwant nothing on stdout, the not-found line and the warning on stderr", args, out, stderr)
		}
		// Without the flag: not found, exit 1, as before.
		noFlag := slices.DeleteFunc(slices.Clone(args), func(a string) bool { return a == "--require-verified" })
		if _, _, err := runCLI(t, nil, noFlag...); !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(ee.msg, "no issuance matches") {
			t.Errorf("%v (nothing matches) over a changed file = %v, want exit 1, no issuance matches", noFlag, err)
		}
	}

	for _, args := range [][]string{
		{"trace", cliIssID, "--audit-log", live, "--require-verified", "--no-verify"},
		{"report", "--audit-log", live, "--require-verified", "--no-verify"},
	} {
		_, _, err := runCLI(t, nil, args...)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != exitUsage || !strings.Contains(ee.msg, "--require-verified needs the hash chain check that --no-verify skips") {
			t.Errorf("%v = %v, want a usage error", args, err)
		}
	}
	for _, args := range [][]string{
		{"trace", cliIssID, "--require-verified", "--addr", "http://127.0.0.1:1"},
		{"report", "--require-verified", "--addr", "http://127.0.0.1:1"},
	} {
		_, _, err := runCLI(t, nil, args...)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != exitUsage || !strings.Contains(ee.msg, "--require-verified fails on audit files that do not verify (with --audit-log)") {
			t.Errorf("%v without --audit-log = %v, want a usage error", args, err)
		}
	}
}

// TestOfflineTraceAndReportCheckTheChain: offline trace and report check the
// hash chain of the audit files in the same pass as they read them. Over
// intact files they say nothing; over files with a changed line they still
// answer, and warn (report: also a note in the report) naming the first
// problem; --no-verify skips the check; and --no-verify without
// --audit-log is a usage mistake.
func TestOfflineTraceAndReportCheckTheChain(t *testing.T) {
	dir := t.TempDir()
	live := cliAuditLog(t, dir)
	m, _ := filepath.Glob(filepath.Join(dir, "audit.jsonl.*"))
	if len(m) != 1 {
		t.Fatalf("fixture: rotated files %v, want one", m)
	}
	rotated := m[0]

	for _, args := range [][]string{
		{"trace", cliIssID, "--audit-log", live},
		{"report", "--audit-log", live, "--format", "json"},
	} {
		out, stderr, err := runCLI(t, nil, args...)
		if err != nil || strings.Contains(stderr, "do NOT verify") || strings.Contains(out, "do NOT verify") {
			t.Errorf("%s over intact files = %v\nstdout:\n%s\nstderr:\n%s\nwant success, no chain warning", args[0], err, out, stderr)
		}
	}

	// The deny on line 2 of the rotated file, changed: line 1 of the live
	// file no longer links to it.
	data, err := os.ReadFile(rotated)
	if err != nil {
		t.Fatal(err)
	}
	changed := strings.Replace(string(data), `"sub":"stranger"`, `"sub":"someone"`, 1)
	if changed == string(data) {
		t.Fatalf("fixture: no deny of \"stranger\" in %s", data)
	}
	if err := os.WriteFile(rotated, []byte(changed), 0o600); err != nil {
		t.Fatal(err)
	}
	first := live + ":1 (seq 3): prev hash mismatch"

	out, stderr, err := runCLI(t, nil, "trace", cliIssID, "--audit-log", live)
	if err != nil || !strings.Contains(out, cliIssID) {
		t.Fatalf("trace over a changed file = %v\n%s\nwant the answer still", err, out)
	}
	if !strings.Contains(stderr, "keytrail: warning: the audit files do NOT verify: 1 problem(s), the first at "+first) {
		t.Errorf("trace over a changed file: stderr\n%s\nwant a warning naming %q", stderr, first)
	}

	out, stderr, err = runCLI(t, nil, "report", "--audit-log", live, "--format", "json")
	if err != nil {
		t.Fatalf("report over a changed file = %v\n%s", err, out)
	}
	var rep struct {
		Notes []string `json:"notes"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("report --format json: %v\n%s", err, out)
	}
	found := false
	for _, n := range rep.Notes {
		found = found || strings.Contains(n, "do NOT verify") && strings.Contains(n, first)
	}
	if !found || !strings.Contains(stderr, "keytrail: warning: the audit files do NOT verify") {
		t.Errorf("report over a changed file: notes %q, stderr\n%s\nwant a note and a warning naming %q", rep.Notes, stderr, first)
	}

	for _, args := range [][]string{
		{"trace", cliIssID, "--audit-log", live, "--no-verify"},
		{"report", "--audit-log", live, "--no-verify"},
	} {
		out, stderr, err := runCLI(t, nil, args...)
		if err != nil || strings.Contains(stderr, "do NOT verify") || strings.Contains(out, "do NOT verify") {
			t.Errorf("%s --no-verify = %v\nstdout:\n%s\nstderr:\n%s\nwant success, no chain check", args[0], err, out, stderr)
		}
	}
	for _, args := range [][]string{
		{"trace", cliIssID, "--no-verify", "--addr", "http://127.0.0.1:1"},
		{"report", "--no-verify", "--addr", "http://127.0.0.1:1"},
	} {
		_, _, err := runCLI(t, nil, args...)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != exitUsage || !strings.Contains(err.Error(), "--no-verify skips the hash chain check") {
			t.Errorf("%s --no-verify without --audit-log = %v, want a usage error", args[0], err)
		}
	}
}

// The server's not-found answer says which audit log it searched and where
// ids of other instances are found: the CLI's text says it too, not just
// "no issuance matches"; a server that says nothing more gets the plain
// message.
func TestTraceOnlineNotFoundSaysWhatWasSearched(t *testing.T) {
	const detail = " in the broker's audit log on the instance that answered (its audit.file and rotated files)" +
		"; ids of uses, revocations and requests made through another instance are only in that other instance's audit log"
	desc := "no issuance matches this value" + detail
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(404)
		d := desc
		if r.URL.Query().Get("q") == "use_plain" {
			d = "no issuance matches this value"
		}
		fmt.Fprintf(w, `{"error":"not_found","error_description":%q,"request_id":"req_x"}`, d)
	}))
	defer srv.Close()
	env := map[string]string{"KEYTRAIL_ADDR": srv.URL, "KEYTRAIL_ADMIN_TOKEN": "admin-jwt"}
	for q, want := range map[string]string{
		"use_01OTHER": `no issuance matches "use_01OTHER"` + detail,
		"use_plain":   `no issuance matches "use_plain"`,
	} {
		_, _, err := runCLI(t, env, "trace", q)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 1 || ee.msg != want {
			t.Errorf("trace %s online = %#v, want exit 1 %q", q, err, want)
		}
	}
}
