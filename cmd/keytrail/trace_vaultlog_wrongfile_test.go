package main

import (
	"strings"
	"testing"
)

// TestTraceVaultLogWithNoRequestIsAnError: resolving a whole Vault audit
// log that holds no Vault request entry (the wrong file: keytrail's own
// audit log, a binary, a log in another format) printed "0 request(s) ...
// no attribution gaps" and exited 0, an all-clear for an auditor when
// nothing had been checked. It is exit 1 now, naming the file and what
// its lines were, with nothing on stdout for a script to take as a report.
// An empty file is still read as one with nothing in it.
func TestTraceVaultLogWithNoRequestIsAnError(t *testing.T) {
	dir := t.TempDir()
	live := cliAuditLog(t, dir)
	for _, c := range []struct {
		name    string
		content string
		json    bool
		wantErr []string // substrings of the error; nil = success
	}{
		{"fail/keytrail-audit-log", "", false, []string{"none of its 1 line(s) is a Vault audit request entry", "0 malformed", "Vault's file audit device"}},
		{"fail/keytrail-audit-log-json", "", true, []string{"none of its 1 line(s) is a Vault audit request entry"}},
		{"fail/garbage", "not json\n\x00\x01\x02\n", false, []string{"none of its 2 line(s) is a Vault audit request entry", "2 malformed"}},
		{"fail/responses-only", `{"time":"2025-06-01T10:00:00Z","type":"response","auth":{"client_token":"hmac-sha256:1","accessor":"accCLI"},"request":{"id":"a","operation":"read","path":"x"}}` + "\n", false,
			[]string{"none of its 1 line(s) is a Vault audit request entry"}},
		{"ok/empty", "", false, nil},
	} {
		t.Run(c.name, func(t *testing.T) {
			vaultLog := live // keytrail's own audit file given in Vault's place
			if c.name != "fail/keytrail-audit-log" && c.name != "fail/keytrail-audit-log-json" {
				vaultLog = writeFile(t, t.TempDir(), "vault-audit.log", c.content)
			}
			args := []string{"trace", "--vault-audit-log", vaultLog, "--audit-log", live}
			if c.json {
				args = append(args, "--json")
			}
			out, _, err := runCLI(t, nil, args...)
			if c.wantErr == nil {
				if err != nil {
					t.Fatalf("keytrail %s = %v, want success", strings.Join(args, " "), err)
				}
				return
			}
			if code := exitCode(err); code != 1 && code != -1 { // -1: a plain error, exit 1
				t.Fatalf("keytrail %s = %v (exit %d), want exit 1\n%s", strings.Join(args, " "), err, exitCode(err), out)
			}
			for _, w := range append(c.wantErr, vaultLog) {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if out != "" {
				t.Errorf("stdout = %q, want nothing (no report to take for an all-clear)", out)
			}
		})
	}
}
