package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBadAddressNamesWhereItCameFrom: KEYTRAIL_ADDR=127.0.0.1:7700 (no
// scheme, as a first-time user writes a host:port) made every client
// command fail with "client: broker address: not a URL" (fetch, exec) or
// "server address: not a URL" (revoke, unblock, trace, report): neither
// the variable or flag that held it nor what a URL needs. The error now
// names --addr or KEYTRAIL_ADDR and says to write the scheme, still
// without quoting the value (it may hold a password).
func TestBadAddressNamesWhereItCameFrom(t *testing.T) {
	dir := t.TempDir()
	tok := filepath.Join(dir, "id.jwt")
	if err := os.WriteFile(tok, []byte("x.y.z"), 0o600); err != nil {
		t.Fatal(err)
	}
	const bad = "127.0.0.1:7700"
	for _, c := range [][]string{
		{"fetch", "--grant", "g", "--identity-token-file", tok, "--out", filepath.Join(dir, "out")},
		{"exec", "--grant", "g", "--identity-token-file", tok, "--env", "X", "--", "true"},
		{"revoke", "--workload", "w", "--reason", "r"},
		{"unblock", "--workload", "w", "--reason", "r"},
		{"trace", "iss_01JTEST"},
		{"report"},
	} {
		for _, src := range []string{"--addr", "KEYTRAIL_ADDR"} {
			env := map[string]string{"KEYTRAIL_ADMIN_TOKEN": "admin-token"}
			args := c
			if src == "--addr" {
				args = append([]string{c[0], "--addr", bad}, c[1:]...)
			} else {
				env["KEYTRAIL_ADDR"] = bad
			}
			_, stderr, err := runCLI(t, env, args...)
			if err == nil {
				t.Errorf("%s with %s=%s: nil error", c[0], src, bad)
				continue
			}
			msg := err.Error() + stderr
			if !strings.Contains(msg, src) || !strings.Contains(msg, "https://") {
				t.Errorf("%s with %s=%s: %q, want it to name %s and the scheme to write", c[0], src, bad, msg, src)
			}
		}
	}
}
