package main

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAuditVerifyReadErrorIsNotOK: when a file cannot be read to its end,
// verify has not checked it (nor the files after it): it must not print
// "OK", and the error names the file.
func TestAuditVerifyReadErrorIsNotOK(t *testing.T) {
	dir := t.TempDir()
	live := cliAuditLog(t, dir)
	sib, err := filepath.Glob(live + ".*")
	if err != nil || len(sib) != 1 {
		t.Fatalf("rotated sibling: %v, %v", sib, err)
	}
	unreadable := filepath.Join(dir, "sub.jsonl")
	if err := os.Mkdir(unreadable, 0o700); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, nil, "audit", "verify", "--exact", sib[0], unreadable, live)
	var ee exitError
	if err == nil || (errors.As(err, &ee) && ee.code == 0) {
		t.Fatalf("audit verify with an unreadable file = %v, want a failure\n%s", err, out)
	}
	if strings.Contains(out, "OK: the chain is intact") {
		t.Errorf("audit verify with an unreadable file printed OK:\n%s", out)
	}
	if !strings.Contains(err.Error(), unreadable) {
		t.Errorf("audit verify error %q does not name %s", err, unreadable)
	}
	if !strings.Contains(out, "not verified") {
		t.Errorf("audit verify output does not say the files were not all verified:\n%s", out)
	}
}
