package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// runVerifyEnv runs the CLI with afterList as the hook verify calls
// between listing the audit files and opening them.
func runVerifyEnv(t *testing.T, afterList func(), args ...string) (string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{ctx: context.Background(), getenv: func(string) string { return "" }, stdout: &out, stderr: &errb,
		progressEvery: time.Hour, afterAuditList: afterList}
	root := newRootCmd(e)
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	err := root.ExecuteContext(context.Background())
	return out.String(), err
}

// liveSink opens a real sink on dir/audit.jsonl (it holds the file's lock
// until the test ends) and returns it with a function that appends one
// event and returns once the sink's writer is done with it (rotation
// included: Ping is answered by the writer after the batch).
func liveSink(t *testing.T, dir string, rotateBytes int64) (*auditfile.Sink, string, func()) {
	t.Helper()
	path := filepath.Join(dir, "audit.jsonl")
	s, err := auditfile.Open(auditfile.Options{Path: path, NoFsync: true, RotateBytes: rotateBytes})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	n := 0
	add := func() {
		t.Helper()
		n++
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Append(ctx, &audit.Event{Type: audit.TypeUse, RequestID: fmt.Sprintf("req_%04d", n)}); err != nil {
			t.Fatal(err)
		}
		if err := s.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
	return s, path, add
}

func appendBytes(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

// TestAuditVerifyLiveFileBeingWritten: a reader of a running broker's
// audit file can see half a batch at its end. verify reported it as "FAIL
// ... incomplete last line: a torn or cut write" (exit 1): a false alarm
// for an auditor verifying a live log. When a running sink holds the file,
// its incomplete last line is now reported as being written, not as a
// problem; a changed or missing line before it still is, and so is the
// incomplete line once no sink holds the file.
func TestAuditVerifyLiveFileBeingWritten(t *testing.T) {
	dir := t.TempDir()
	s, path, add := liveSink(t, dir, 0)
	for range 4 {
		add()
	}
	// The next batch, as a reader can see it while the sink writes it
	// (written here, at a known point, rather than raced).
	partial := []byte(`{"v":1,"seq":5,"time":"2026-`)
	appendBytes(t, path, partial)

	out, err := runVerifyEnv(t, nil, "audit", "verify", path)
	if err != nil || strings.Contains(out, "FAIL") || !strings.Contains(out, "OK: the chain is intact") {
		t.Errorf("audit verify of a live file ending in half a batch = %v, want OK:\n%s", err, out)
	}
	want := fmt.Sprintf("%s:5: being written by the running broker (incomplete last line, %d bytes so far)", path, len(partial))
	if !strings.Contains(out, want) || !strings.Contains(out, "4 line(s)") {
		t.Errorf("audit verify of a live file ending in half a batch printed:\n%s\nwant 4 lines and %q", out, want)
	}

	// A changed line of the live file is still found.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	changed := bytes.Replace(data, []byte("req_0002"), []byte("req_0X02"), 1)
	if err := os.WriteFile(path, changed, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = runVerifyEnv(t, nil, "audit", "verify", path)
	if ee := (exitError{}); !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, "FAIL "+path+":3 (seq 3): prev hash mismatch") {
		t.Errorf("audit verify of a live file with line 2 changed = %v, want exit 1 and line 3's prev hash mismatch:\n%s", err, out)
	}

	// A line missing in the middle is still found.
	lines := bytes.SplitAfter(data, []byte("\n"))
	gap := bytes.Join(append(append([][]byte{}, lines[:1]...), lines[2:]...), nil)
	if err := os.WriteFile(path, gap, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = runVerifyEnv(t, nil, "audit", "verify", path)
	if ee := (exitError{}); !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, "FAIL "+path+":2 (seq 3): seq gap: expected 2, got 3") {
		t.Errorf("audit verify of a live file with line 2 removed = %v, want exit 1 and a seq gap at line 2:\n%s", err, out)
	}

	// No sink holds the file any more: the incomplete line is a torn write.
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	out, err = runVerifyEnv(t, nil, "audit", "verify", path)
	if ee := (exitError{}); !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, "FAIL "+path+":5: incomplete last line") {
		t.Errorf("audit verify of a stopped broker's file ending in half a line = %v, want exit 1 naming line 5:\n%s", err, out)
	}
}

// TestAuditVerifyLiveRotationRace: a running broker can rotate its file
// after verify listed the files and before it opened them. verify then read
// the new live file in place of the one renamed away and reported the
// renamed file's lines as a seq gap (exit 1), a false alarm. It now lists
// the files again once they are open and, when the listing changed, starts
// over once. A rotated file really missing is still a seq gap.
func TestAuditVerifyLiveRotationRace(t *testing.T) {
	dir := t.TempDir()
	s, path, add := liveSink(t, dir, 600)
	rotateThenOne := func() {
		r := s.Stats().Rotations
		for s.Stats().Rotations == r {
			add()
		}
		add()
	}
	rotateThenOne() // audit.jsonl.<t1>, and one line in audit.jsonl
	raced := false
	out, err := runVerifyEnv(t, func() {
		if !raced {
			raced = true
			rotateThenOne() // audit.jsonl.<t2>, unlisted; a new audit.jsonl
		}
	}, "audit", "verify", path)
	if !raced {
		t.Fatal("verify did not call the hook")
	}
	if err != nil || strings.Contains(out, "FAIL") || !strings.Contains(out, "3 file(s)") {
		t.Errorf("audit verify racing a rotation = %v, want the 3 files listed again and OK:\n%s", err, out)
	}

	// A rotated file missing in the middle is not a race: still a gap.
	sib, err := filepath.Glob(path + ".*")
	if err != nil || len(sib) != 2 {
		t.Fatalf("rotated files: %v, %v", sib, err)
	}
	if err := os.Remove(sib[1]); err != nil {
		t.Fatal(err)
	}
	out, err = runVerifyEnv(t, nil, "audit", "verify", path)
	if ee := (exitError{}); !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, "FAIL "+path+":1") || !strings.Contains(out, "seq gap") {
		t.Errorf("audit verify with a rotated file removed = %v, want exit 1 and a seq gap at %s:1:\n%s", err, path, out)
	}
}

// TestAuditVerifyRenamedAwayWhileOpening: between a rotation's rename and
// the new file's creation, the listed live file does not exist. verify
// failed with "open ...: no such file or directory"; it now lists the
// files again (once) and verifies the renamed file.
func TestAuditVerifyRenamedAwayWhileOpening(t *testing.T) {
	dir := t.TempDir()
	live := cliAuditLog(t, dir)
	renamed := false
	out, err := runVerifyEnv(t, func() {
		if !renamed {
			renamed = true
			if err := os.Rename(live, live+"."+time.Now().UTC().Format(trace.RotatedLayout)); err != nil {
				t.Fatal(err)
			}
		}
	}, "audit", "verify", live)
	if err != nil || !strings.Contains(out, "2 file(s), 3 line(s)") || !strings.Contains(out, "OK: the chain is intact") {
		t.Errorf("audit verify with the live file renamed away while opening = %v, want its 2 files listed again and OK:\n%s", err, out)
	}
}

// onFirstWrite is a stderr that runs hook once, at the first line written
// to it (a progress line, with progressEvery at a nanosecond: the first
// read of the first file).
type onFirstWrite struct {
	bytes.Buffer
	hook func()
}

func (w *onFirstWrite) Write(b []byte) (int, error) {
	if h := w.hook; h != nil {
		w.hook = nil
		h()
	}
	return w.Buffer.Write(b)
}

// issueSink opens a sink on dir/audit.jsonl that rotates its file at
// rotate bytes (0: never), and returns it with a function that appends an
// issue event n (issuance issID(n)) and returns once it is written. A
// rotation after it is done once the next event is written too (Ping
// answers at once while the sink is healthy).
func issueSink(t *testing.T, dir string, rotate int64, issID func(int) string) (*auditfile.Sink, string, func(n int)) {
	t.Helper()
	path := filepath.Join(dir, "audit.jsonl")
	s, err := auditfile.Open(auditfile.Options{Path: path, NoFsync: true, RotateBytes: rotate})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s, path, func(n int) {
		t.Helper()
		ev := &audit.Event{Type: audit.TypeIssue, RequestID: fmt.Sprintf("req_%d", n), IssuanceID: issID(n),
			Workload: "payments-api", Owner: "team-payments", Grant: "payments-vault", Kind: broker.KindVaultToken,
			Identity: &audit.Identity{Iss: "https://issuer.test", Sub: "api"}, Outcome: &audit.Outcome{Status: 200}}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Append(ctx, ev); err != nil {
			t.Fatal(err)
		}
		if err := s.Ping(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// rotateAfterTwo is a rotation size at which the files of an issueSink hold
// two events: a bit less than the size of the first two.
func rotateAfterTwo(t *testing.T, issID func(int) string) int64 {
	t.Helper()
	_, p, add := issueSink(t, t.TempDir(), 0, issID)
	add(1)
	add(2)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size() - 10
}

// TestOfflineTraceAndReportRotationWhileReading: offline trace and report
// listed the audit files, then opened each only when its turn came. A
// running broker that rotated its file while the older files were read
// renamed the file it was writing away: the path then named the new file,
// the renamed one's lines were left out of the answer, and the chain check
// reported the seq gap as "the audit files do NOT verify". They now open
// every file before reading any, as audit verify does.
func TestOfflineTraceAndReportRotationWhileReading(t *testing.T) {
	issID := func(n int) string { return fmt.Sprintf("iss_01JXROT00000000000000%03d", n) }
	rotate := rotateAfterTwo(t, issID)

	for _, args := range [][]string{
		{"trace", issID(4)},
		{"report", "--format", "json"},
	} {
		t.Run(args[0], func(t *testing.T) {
			_, path, add := issueSink(t, t.TempDir(), rotate, issID)
			// Events 1 and 2 are rotated away, 3 is in the live file.
			for n := 1; n <= 3; n++ {
				add(n)
			}
			if m, _ := filepath.Glob(path + ".*"); len(m) != 1 {
				t.Fatalf("fixture: rotated files %v, want one", m)
			}
			var out bytes.Buffer
			// While the rotated file is read, the broker writes event 4,
			// which rotates the live file (events 3 and 4), and event 5
			// into a new live file.
			errb := &onFirstWrite{hook: func() { add(4); add(5) }}
			e := &env{ctx: context.Background(), getenv: func(string) string { return "" }, stdout: &out, stderr: errb,
				progressEvery: time.Nanosecond}
			root := newRootCmd(e)
			root.SetArgs(append(args, "--audit-log", path))
			root.SetOut(&out)
			root.SetErr(errb)
			err := root.ExecuteContext(context.Background())
			if m, _ := filepath.Glob(path + ".*"); len(m) != 2 {
				t.Fatalf("fixture: rotated files %v after the read began, want two", m)
			}
			if err != nil || strings.Contains(errb.String(), "do NOT verify") || strings.Contains(out.String(), "do NOT verify") {
				t.Errorf("%s while the broker rotated its file = %v\nstdout:\n%s\nstderr:\n%s\nwant success and no chain warning", args[0], err, out.String(), errb.String())
			}
		})
	}
}

// runOnAuditLog runs the CLI command args (trace, report or audit verify)
// over the audit log at path, with a progress line on stderr at each read.
func runOnAuditLog(stdout *bytes.Buffer, stderr *onFirstWrite, args []string, path string) error {
	e := &env{ctx: context.Background(), getenv: func(string) string { return "" }, stdout: stdout, stderr: stderr,
		progressEvery: time.Nanosecond}
	root := newRootCmd(e)
	root.SetArgs(withAuditLog(args, path))
	root.SetOut(stdout)
	root.SetErr(stderr)
	return root.ExecuteContext(context.Background())
}

// withAuditLog is the command line of args (trace, report or audit
// verify) reading the audit log at path.
func withAuditLog(args []string, path string) []string {
	if args[0] == "audit" {
		return append(slices.Clone(args), path)
	}
	return append(slices.Clone(args), "--audit-log", path)
}

// auditFileReaders are the commands that read audit files offline: trace
// of q, report and audit verify.
func auditFileReaders(q string) [][]string {
	return [][]string{{"trace", q}, {"report", "--format", "json"}, {"audit", "verify"}}
}

// TestAuditFilesRemovedWhileReading: trace, report and audit verify hold
// one audit file open at a time (TestAuditFilesBeyondTheOpenFileLimit), so
// a file removed after it was identified and before its turn came can no
// longer be read. That must fail the command naming the file (exit 1: run
// it again), not pass for a seq gap ("the audit files do NOT verify",
// which would say lines were removed from the chain) nor leave the file's
// lines out silently.
func TestAuditFilesRemovedWhileReading(t *testing.T) {
	for _, args := range auditFileReaders(cliIssID) {
		t.Run(args[0], func(t *testing.T) {
			dir := t.TempDir()
			live := cliAuditLog(t, dir)
			// While the rotated file is read (the first progress line), the
			// live file is removed.
			errb := &onFirstWrite{hook: func() {
				if err := os.Remove(live); err != nil {
					t.Error(err)
				}
			}}
			var out bytes.Buffer
			err := runOnAuditLog(&out, errb, args, live)
			if _, serr := os.Stat(live); !errors.Is(serr, os.ErrNotExist) {
				t.Fatalf("fixture: %s not removed during the read (%v)", live, serr)
			}
			var ee exitError
			if err == nil || errors.As(err, &ee) && ee.code != 1 || !strings.Contains(err.Error(), live+": no longer the file that was there when the reading began") {
				t.Errorf("%s with %s removed while reading = %v\nstdout:\n%s\nstderr:\n%s\nwant exit 1 naming it", args[0], live, err, out.String(), errb.String())
			}
			if strings.Contains(errb.String(), "do NOT verify") || strings.Contains(out.String(), "seq gap") {
				t.Errorf("%s with %s removed while reading:\nstdout:\n%s\nstderr:\n%s\nwant no chain problem for it", args[0], live, out.String(), errb.String())
			}
		})
	}
}

// TestAuditFilesLiveTornTailDroppedWhileReading: a running broker's sink
// truncates its live file back to its last durable line when a write fails
// (rollback, or a reopen dropping a failed write's bytes; at start-up, a
// crash's torn line). trace, report and audit verify identify every file
// before reading any and required each, when its turn came, to be no
// shorter than identified: a live file identified while a torn write sat
// at its end, and cut back before it was read, failed the command with
// "no longer the file that was there when the reading began", although
// nothing durable had changed. A file a running broker held when it was
// identified, or holds when it is read, may now be shorter than identified
// (it is read as it is), also once a rotation renamed it after the cut; a
// shorter file no broker held either time still fails the command.
func TestAuditFilesLiveTornTailDroppedWhileReading(t *testing.T) {
	issID := func(n int) string { return fmt.Sprintf("iss_01JXTRN00000000000000%03d", n) }
	rotate := rotateAfterTwo(t, issID)
	// A torn batch write, longer than an event (so that the file is still
	// shorter than identified once an event is added after the cut).
	torn := append([]byte(`{"v":1,"seq":4,"time":"2026-`), bytes.Repeat([]byte("x"), int(rotate))...)

	for _, cmd := range auditFileReaders(issID(1)) {
		for _, c := range []struct {
			name   string
			live   bool // a sink holds the file when the command starts
			after  string
			refuse bool
		}{
			{"live", true, "", false},
			{"live-then-rotated", true, "rotate", false}, // the sink rotates the file after the cut
			{"live-then-stopped", true, "stop", false},   // the sink stops after the cut
			{"started", false, "", false},                // a sink starts: it drops a crash's torn line
			{"stopped", false, "", true},                 // no sink: the file is truncated, refused
		} {
			t.Run(cmd[0]+"/"+c.name, func(t *testing.T) {
				s, path, add := issueSink(t, t.TempDir(), rotate, issID)
				// Events 1 and 2 are rotated away, 3 is in the live file,
				// followed by a torn write.
				for n := 1; n <= 3; n++ {
					add(n)
				}
				if m, _ := filepath.Glob(path + ".*"); len(m) != 1 {
					t.Fatalf("fixture: rotated files %v, want one", m)
				}
				durable, err := os.Stat(path)
				if err != nil {
					t.Fatal(err)
				}
				if !c.live {
					if err := s.Close(); err != nil {
						t.Fatal(err)
					}
				}
				appendBytes(t, path, torn)
				// While the rotated file is read (the first progress
				// line), the torn write is cut off the live file, as the
				// sink's rollback does (or a sink started on the file, at
				// start-up, unless the file is to be refused); then the
				// sink may write event 4, which rotates the file (still
				// shorter than identified), and event 5 into a new live
				// file, or stop.
				errb := &onFirstWrite{hook: func() {
					if c.live || c.refuse {
						if err := os.Truncate(path, durable.Size()); err != nil {
							t.Error(err)
						}
					} else {
						s2, err := auditfile.Open(auditfile.Options{Path: path, NoFsync: true})
						if err != nil {
							t.Error(err)
							return
						}
						t.Cleanup(func() { _ = s2.Close() })
						if fi, err := os.Stat(path); err != nil || fi.Size() != durable.Size() {
							t.Errorf("fixture: the sink started did not drop the torn line (%v, %v)", fi.Size(), err)
						}
					}
					switch c.after {
					case "rotate":
						add(4)
						add(5) // written after event 4's rotation: it is done
						if m, _ := filepath.Glob(path + ".*"); len(m) != 2 {
							t.Errorf("fixture: rotated files %v after event 4, want two", m)
						}
					case "stop":
						if err := s.Close(); err != nil {
							t.Error(err)
						}
					}
				}}
				var out bytes.Buffer
				err = runOnAuditLog(&out, errb, cmd, path)
				if errb.hook != nil {
					t.Fatal("fixture: the hook did not run (no progress line)")
				}
				if c.refuse {
					var ee exitError
					if err == nil || errors.As(err, &ee) && ee.code != 1 || !strings.Contains(err.Error(), path+": no longer the file that was there when the reading began") {
						t.Errorf("%s with %s (no broker holds it) cut short while reading = %v\nstdout:\n%s\nstderr:\n%s\nwant exit 1 naming it", cmd[0], path, err, out.String(), errb.String())
					}
					return
				}
				if err != nil || strings.Contains(errb.String(), "do NOT verify") || strings.Contains(out.String(), "FAIL") {
					t.Errorf("%s with the torn write cut off the live file while reading = %v\nstdout:\n%s\nstderr:\n%s\nwant success and no chain problem", cmd[0], err, out.String(), errb.String())
				}
				if cmd[0] == "audit" && !strings.Contains(out.String(), "OK: the chain is intact") {
					t.Errorf("audit verify with the torn write cut off the live file while reading:\n%s\nwant OK", out.String())
				}
			})
		}
	}
}
