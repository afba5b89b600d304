package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
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

// TestOfflineTraceAndReportRotationWhileReading: offline trace and report
// listed the audit files, then opened each only when its turn came. A
// running broker that rotated its file while the older files were read
// renamed the file it was writing away: the path then named the new file,
// the renamed one's lines were left out of the answer, and the chain check
// reported the seq gap as "the audit files do NOT verify". They now open
// every file before reading any, as audit verify does.
func TestOfflineTraceAndReportRotationWhileReading(t *testing.T) {
	issID := func(n int) string { return fmt.Sprintf("iss_01JXROT00000000000000%03d", n) }
	event := func(n int) *audit.Event {
		return &audit.Event{Type: audit.TypeIssue, RequestID: fmt.Sprintf("req_%d", n), IssuanceID: issID(n),
			Workload: "payments-api", Owner: "team-payments", Grant: "payments-vault", Kind: broker.KindVaultToken,
			Identity: &audit.Identity{Iss: "https://issuer.test", Sub: "api"}, Outcome: &audit.Outcome{Status: 200}}
	}
	// sink opens a sink on dir/audit.jsonl that rotates its file at
	// rotate bytes, and returns a function that appends event n and
	// returns once the writer is done with it (rotation included).
	sink := func(dir string, rotate int64) (string, func(n int)) {
		path := filepath.Join(dir, "audit.jsonl")
		s, err := auditfile.Open(auditfile.Options{Path: path, NoFsync: true, RotateBytes: rotate})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		return path, func(n int) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			if err := s.Append(ctx, event(n)); err != nil {
				t.Fatal(err)
			}
			if err := s.Ping(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Two events fill a file: a bit less than the size of the first two.
	p, add := sink(t.TempDir(), 0)
	add(1)
	add(2)
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	rotate := fi.Size() - 10

	for _, args := range [][]string{
		{"trace", issID(4)},
		{"report", "--format", "json"},
	} {
		t.Run(args[0], func(t *testing.T) {
			path, add := sink(t.TempDir(), rotate)
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

// TestAuditFilesRemovedWhileReading: trace, report and audit verify hold
// one audit file open at a time (TestAuditFilesBeyondTheOpenFileLimit), so
// a file removed after it was identified and before its turn came can no
// longer be read. That must fail the command naming the file (exit 1: run
// it again), not pass for a seq gap ("the audit files do NOT verify",
// which would say lines were removed from the chain) nor leave the file's
// lines out silently.
func TestAuditFilesRemovedWhileReading(t *testing.T) {
	for _, args := range [][]string{
		{"trace", cliIssID},
		{"report", "--format", "json"},
		{"audit", "verify"},
	} {
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
			e := &env{ctx: context.Background(), getenv: func(string) string { return "" }, stdout: &out, stderr: errb,
				progressEvery: time.Nanosecond}
			root := newRootCmd(e)
			if args[0] == "audit" {
				root.SetArgs(append(args, live))
			} else {
				root.SetArgs(append(args, "--audit-log", live))
			}
			root.SetOut(&out)
			root.SetErr(errb)
			err := root.ExecuteContext(context.Background())
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
