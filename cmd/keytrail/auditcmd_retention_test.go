package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestAuditFilesRotatedDeletedWhileListing: retention deletes the oldest
// rotated files one by one, and trace, report and audit verify list the
// audit files just before it deletes one, and again just before it
// deletes the next. They took the first file gone for a rotation's rename
// and listed the files again, once; the second failed the command with
// "open <file>: no such file or directory". A listed rotated file that no
// longer exists when it is identified (before any file is read) is now
// left out, as a listing made after the deletion would leave it: its lines
// are gone from the log (a rotated file is not renamed again).
func TestAuditFilesRotatedDeletedWhileListing(t *testing.T) {
	issID := func(n int) string { return fmt.Sprintf("iss_01JXRET00000000000000%03d", n) }
	rotate := rotateAfterTwo(t, issID)
	for _, args := range [][]string{
		{"trace", issID(3)},
		{"report", "--format", "json"},
		{"audit", "verify", "--allow-trimmed-start"},
	} {
		t.Run(args[0], func(t *testing.T) {
			_, path, add := issueSink(t, t.TempDir(), rotate, issID)
			// Events 1 to 6 in three rotated files, 7 in the live file.
			for n := 1; n <= 7; n++ {
				add(n)
			}
			rotated, _ := filepath.Glob(path + ".*")
			if len(rotated) != 3 {
				t.Fatalf("fixture: rotated files %v, want three", rotated)
			}
			deleted := 0
			out, err := runVerifyEnv(t, func() {
				// After each listing, retention deletes the oldest
				// rotated file left.
				if deleted < 2 {
					if err := os.Remove(rotated[deleted]); err != nil {
						t.Error(err)
					}
					deleted++
				}
			}, withAuditLog(args, path)...)
			if deleted == 0 {
				t.Fatal("fixture: the command did not call the hook")
			}
			if err != nil {
				t.Fatalf("%s with rotated files deleted by retention after each listing = %v, want them left out:\n%s", args[0], err, out)
			}
			switch args[0] {
			case "trace":
				if !strings.Contains(out, issID(3)) {
					t.Errorf("trace %s:\n%s\nwant it found in %s", issID(3), out, rotated[1])
				}
			case "report":
				if !strings.Contains(out, `"events": 5,`) { // 3 to 7
					t.Errorf("report:\n%s\nwant the 5 events of the files left", out)
				}
			case "audit":
				if !strings.Contains(out, "OK: the chain is intact") || strings.Contains(out, "FAIL") {
					t.Errorf("audit verify --allow-trimmed-start:\n%s\nwant OK", out)
				}
			}
		})
	}
}

// TestAuditFilesNamedRotatedFileDeletedWhileListing: a rotated file named
// on the command line is not left out when it is gone: the command fails,
// naming it.
func TestAuditFilesNamedRotatedFileDeletedWhileListing(t *testing.T) {
	dir := t.TempDir()
	cliAuditLog(t, dir)
	rotated, _ := filepath.Glob(filepath.Join(dir, "audit.jsonl.*"))
	if len(rotated) != 1 {
		t.Fatalf("fixture: rotated files %v, want one", rotated)
	}
	out, err := runVerifyEnv(t, func() { _ = os.Remove(rotated[0]) }, "trace", cliIssID, "--audit-log", rotated[0])
	if err == nil || !strings.Contains(err.Error(), rotated[0]) {
		t.Errorf("trace --audit-log %s, deleted after the listing = %v, want an error naming it:\n%s", rotated[0], err, out)
	}
}

// TestAuditFilesMiddleRotatedDeletedWhileListing: a rotated file left out
// because it was gone when it was identified is left out as a listing made
// after its deletion leaves it out, not hidden: one in the middle of the
// chain (not the oldest, which is what retention deletes) is a seq gap
// that audit verify reports (exit 1), and trace and report run with
// --require-verified too (exit 3), as when it was deleted before the
// listing.
func TestAuditFilesMiddleRotatedDeletedWhileListing(t *testing.T) {
	issID := func(n int) string { return fmt.Sprintf("iss_01JXMID00000000000000%03d", n) }
	rotate := rotateAfterTwo(t, issID)
	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"trace", issID(5), "--require-verified"}, exitNotVerified},
		{[]string{"report", "--format", "json", "--require-verified"}, exitNotVerified},
		{[]string{"audit", "verify", "--allow-trimmed-start"}, 1},
	} {
		t.Run(c.args[0], func(t *testing.T) {
			_, path, add := issueSink(t, t.TempDir(), rotate, issID)
			// Events 1 to 6 in three rotated files, 7 in the live file.
			for n := 1; n <= 7; n++ {
				add(n)
			}
			rotated, _ := filepath.Glob(path + ".*")
			if len(rotated) != 3 {
				t.Fatalf("fixture: rotated files %v, want three", rotated)
			}
			deleted := false
			out, err := runVerifyEnv(t, func() {
				if !deleted {
					deleted = true
					if err := os.Remove(rotated[1]); err != nil { // events 3 and 4
						t.Error(err)
					}
				}
			}, withAuditLog(c.args, path)...)
			if !deleted {
				t.Fatal("fixture: the command did not call the hook")
			}
			var ee exitError
			if !errors.As(err, &ee) || ee.code != c.code || !strings.Contains(err.Error()+out, "seq gap: expected 3, got 5") {
				t.Errorf("%s with %s deleted after the listing = %v, want exit %d naming the seq gap:\n%s", c.args[0], rotated[1], err, c.code, out)
			}
		})
	}
}
