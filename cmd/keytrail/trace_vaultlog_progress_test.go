package main

import (
	"fmt"
	"strings"
	"testing"
)

// TestTraceVaultLogPrintsProgress: trace --vault-audit-log reads the whole
// of Vault's audit log (many GiB where every request is logged) and
// printed nothing until the end, while the keytrail audit files read
// before it had progress lines. Its reads now print the same lines,
// naming the Vault log, and the answer is unchanged.
func TestTraceVaultLogPrintsProgress(t *testing.T) {
	dir := t.TempDir()
	live := cliAuditLog(t, dir)
	var b strings.Builder
	for i := range 800 { // about 200 KiB: several reads, under trace.MaxVaultEntries
		fmt.Fprintf(&b, `{"time":"2025-06-01T10:00:00Z","type":"request","auth":{"client_token":"hmac-sha256:%d","accessor":"accCLI","display_name":"token-keytrail-payments-api","policies":["default"],"metadata":{"issuance_id":"%s"}},"request":{"id":"r%d","operation":"read","path":"auth/token/lookup-self"}}`+"\n", i, cliIssID, i)
	}
	vaultLog := writeFile(t, dir, "vault-audit.log", b.String())
	size := fmt.Sprintf(" of %.1f KiB read", float64(b.Len())/1024)
	for _, tt := range []struct {
		name    string
		args    []string
		wantOut string
	}{
		{"ok/whole-log", []string{"trace", "--vault-audit-log", vaultLog, "--audit-log", live}, "800 request(s): 800 attributed"},
		{"ok/value", []string{"trace", cliIssID, "--vault-audit-log", vaultLog, "--audit-log", live}, "vault audit log: 800 request(s) made with this credential"},
		{"ok/through-vault-log", []string{"trace", "r7", "--vault-audit-log", vaultLog, "--audit-log", live}, "issuance " + cliIssID},
	} {
		t.Run(tt.name, func(t *testing.T) {
			stdout, stderr, err := runEveryRead(t, tt.args...)
			if err != nil {
				t.Fatalf("keytrail %s = %v\n%s", strings.Join(tt.args, " "), err, stderr)
			}
			var got int
			for _, l := range strings.Split(stderr, "\n") {
				if strings.HasPrefix(l, "keytrail trace: "+vaultLog+": ") && strings.HasSuffix(l, size) {
					got++
				}
			}
			if got < 2 {
				t.Errorf("stderr = %q, want progress lines 'keytrail trace: %s: ...%s'", stderr, vaultLog, size)
			}
			if !strings.Contains(stdout, tt.wantOut) {
				t.Errorf("stdout lacks %q:\n%s", tt.wantOut, stdout)
			}
		})
	}
}
