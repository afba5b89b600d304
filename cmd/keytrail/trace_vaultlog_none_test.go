package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// A trace given a Vault audit log in which the credential made no request
// and a trace given none looked alike: vault_total (omitempty) was absent
// from both JSON answers, and the text said nothing of Vault in either. A
// searched log now always has vault_total (0 here) and its text line; no
// log given, neither.
func TestTraceVaultLogWithNoMatchSaysSo(t *testing.T) {
	dir := t.TempDir()
	live := cliAuditLog(t, dir)
	// A request of another token: nothing of cliIssID.
	vaultLog := writeFile(t, dir, "vault-audit.log",
		`{"time":"2025-06-01T10:00:00Z","type":"request","auth":{"client_token":"hmac-sha256:other","accessor":"accOther","display_name":"token-other","policies":["default"],"metadata":{"issuance_id":"iss_01SOMEONEELSE"}},"request":{"id":"r1","operation":"read","path":"auth/token/lookup-self"}}`+"\n")

	for _, tc := range []struct {
		name      string
		args      []string
		wantTotal bool
	}{
		{"searched", []string{"--vault-audit-log", vaultLog}, true},
		{"not-given", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"trace", cliIssID, "--audit-log", live}, tc.args...)
			stdout, stderr, err := runCLI(t, nil, append(args, "--json")...)
			if err != nil {
				t.Fatalf("trace --json = %v\n%s", err, stderr)
			}
			var got map[string]json.RawMessage
			if err := json.Unmarshal([]byte(stdout), &got); err != nil {
				t.Fatal(err)
			}
			total, ok := got["vault_total"]
			switch {
			case tc.wantTotal && (!ok || string(total) != "0"):
				t.Errorf("trace --json with a Vault log where nothing matched: vault_total = %s (present %v), want 0", total, ok)
			case !tc.wantTotal && ok:
				t.Errorf("trace --json without a Vault log: vault_total = %s, want absent", total)
			}
			if _, ok := got["vault_dropped"]; ok {
				t.Errorf("trace --json: vault_dropped = %s, want absent (nothing was left out)", got["vault_dropped"])
			}

			stdout, stderr, err = runCLI(t, nil, args...)
			if err != nil {
				t.Fatalf("trace = %v\n%s", err, stderr)
			}
			const line = "vault audit log: 0 request(s) made with this credential"
			if has := strings.Contains(stdout, line); has != tc.wantTotal {
				t.Errorf("trace: stdout has %q: %v, want %v:\n%s", line, has, tc.wantTotal, stdout)
			}
		})
	}
}
