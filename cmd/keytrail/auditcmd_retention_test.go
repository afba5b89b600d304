package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
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

// TestOfflineTraceAndReportAfterRetention: offline trace and report checked
// the chain without allowing a trimmed start, so over a log whose oldest
// rotated files retention had removed (normal) they always warned "the
// audit files do NOT verify ... chain starts at seq N", and
// --require-verified always exited 3. A trimmed start is now a note (the
// chain starts at seq N in the files; what the lines before it recorded is
// not in the answer), checked from there as audit verify
// --allow-trimmed-start does, while a gap in the middle or a broken hash
// is still the loud failure it was.
func TestOfflineTraceAndReportAfterRetention(t *testing.T) {
	issID := func(n int) string { return fmt.Sprintf("iss_01JXTRM00000000000000%03d", n) }
	rotate := rotateAfterTwo(t, issID)
	// log writes events 1 to 7: 1-2, 3-4 and 5-6 in three rotated files,
	// 7 in the live file; breaks, given the rotated files, breaks them.
	log := func(t *testing.T, breaks func(rotated []string)) string {
		s, path, add := issueSink(t, t.TempDir(), rotate, issID)
		for n := 1; n <= 7; n++ {
			add(n)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		rotated, _ := filepath.Glob(path + ".*")
		if len(rotated) != 3 {
			t.Fatalf("fixture: rotated files %v, want three", rotated)
		}
		breaks(rotated)
		return path
	}
	remove := func(i ...int) func([]string) {
		return func(rotated []string) {
			for _, i := range i {
				if err := os.Remove(rotated[i]); err != nil {
					t.Fatal(err)
				}
			}
		}
	}
	const trimmed = "starts at seq 3 in the audit files: seq 1..2 are not in them"
	for _, tc := range []struct {
		name     string
		breaks   func([]string)
		find     int
		trimmed  bool // the note is printed
		verifies bool // no "do NOT verify"
		want     string
	}{
		{name: "retention", breaks: remove(0), find: 3, trimmed: true, verifies: true},
		{name: "middle-file-removed", breaks: remove(1), find: 1, want: "seq gap: expected 3, got 5"},
		{name: "retention-and-middle-file-removed", breaks: remove(0, 2), find: 3, trimmed: true, want: "seq gap: expected 5, got 7"},
		{name: "retention-and-line-changed", find: 3, trimmed: true, want: "prev hash mismatch", breaks: func(rotated []string) {
			remove(0)(rotated)
			data, err := os.ReadFile(rotated[1])
			if err != nil {
				t.Fatal(err)
			}
			changed := strings.Replace(string(data), `"req_3"`, `"req_X"`, 1)
			if changed == string(data) {
				t.Fatal("fixture: req_3 not in the first file left")
			}
			if err := os.WriteFile(rotated[1], []byte(changed), 0o600); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := log(t, tc.breaks)
			for _, args := range [][]string{
				{"trace", issID(tc.find), "--audit-log", path},
				{"report", "--format", "json", "--audit-log", path},
			} {
				for _, strict := range []bool{false, true} {
					args := args
					if strict {
						args = append(slices.Clone(args), "--require-verified")
					}
					out, stderr, err := runCLI(t, nil, args...)
					all := out + stderr
					switch {
					case tc.verifies && err != nil:
						t.Errorf("%q = %v, want success:\nstdout: %s\nstderr: %s", args, err, out, stderr)
					case !tc.verifies && strict && exitCode(err) != exitNotVerified:
						t.Errorf("%q = %v, want exit %d:\nstdout: %s\nstderr: %s", args, err, exitNotVerified, out, stderr)
					case !tc.verifies && !strict && err != nil:
						t.Errorf("%q = %v, want the answer, exit 0 (a warning on stderr):\nstdout: %s\nstderr: %s", args, err, out, stderr)
					}
					if args[0] == "trace" && !strings.Contains(out, issID(tc.find)) {
						t.Errorf("%q: stdout lacks %s:\n%s", args, issID(tc.find), out)
					}
					if got := strings.Contains(all, "do NOT verify"); got == tc.verifies {
						t.Errorf("%q: says \"do NOT verify\": %v, want %v:\nstdout: %s\nstderr: %s", args, got, !tc.verifies, out, stderr)
					}
					if strings.Contains(all, "chain starts at seq") {
						t.Errorf("%q: a trimmed start is a problem:\nstdout: %s\nstderr: %s", args, out, stderr)
					}
					if tc.want != "" && !strings.Contains(stderr, tc.want) {
						t.Errorf("%q: stderr lacks %q:\n%s", args, tc.want, stderr)
					}
					if got := strings.Contains(stderr, trimmed); got != tc.trimmed {
						t.Errorf("%q: stderr has the trimmed-start note %q: %v, want %v:\n%s", args, trimmed, got, tc.trimmed, stderr)
					}
					if args[0] == "report" && strings.Contains(out, trimmed) != tc.trimmed {
						t.Errorf("%q: the report's notes have the trimmed-start note: %v, want %v:\n%s", args, !tc.trimmed, tc.trimmed, out)
					}
				}
			}
		})
	}
}
