package main

import (
	"bytes"
	"context"
	"crypto/elliptic"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/broker/audit"
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

// resumeAuditFile is the content of the audit file at path and its chain
// resumed from its last line, as a writer that appends to it would.
func resumeAuditFile(t *testing.T, path string) ([]byte, *audit.Chain) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	all := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	c, err := audit.ResumeChain(all[len(all)-1])
	if err != nil {
		t.Fatal(err)
	}
	return data, c
}

// TestAuditVerifyWarnsUnsignedLinesMayBeForged: lines after the last
// verified checkpoint are covered by no signature. Whoever can write the
// file can add (or change) them, correctly linked; verify cannot tell, and
// its warning must say so, not only that truncation cannot be ruled out.
func TestAuditVerifyWarnsUnsignedLinesMayBeForged(t *testing.T) {
	dir := t.TempDir()
	signer, pubFile := devCheckpointSigner(t, dir)
	path, lines := writeSignedAudit(t, dir, signer)

	// The attacker appends an issuance, linked to the final checkpoint.
	data, c := resumeAuditFile(t, path)
	forged, err := c.Seal(&audit.Event{Type: audit.TypeIssue, RequestID: "req_forged", IssuanceID: "iss_FORGED", Workload: "payments-api", Owner: "someone-else"}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(append(data, forged...), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}

	out, _, err := runCLI(t, nil, "audit", "verify", "--key", pubFile, "--exact", path)
	if err != nil {
		t.Fatalf("audit verify = %v, want success (nothing signed was changed)\n%s", err, out)
	}
	if !strings.Contains(out, "1 line(s) after the last verified checkpoint") || !strings.Contains(out, "added or changed") {
		t.Errorf("audit verify does not warn that the unsigned line may have been added or changed:\n%s", out)
	}
	out, _, err = runCLI(t, nil, "audit", "verify", "--key", pubFile, "--exact", "--require-checkpoint", path)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, fmt.Sprintf("%s:%d (seq %d): 1 line(s)", path, lines+1, lines+1)) || !strings.Contains(out, "added or changed") {
		t.Errorf("audit verify --require-checkpoint = %v, want exit 1 naming line %d as possibly added or changed\n%s", err, lines+1, out)
	}
}

// TestAuditVerifyCutAfterCheckpointNamesTheEnd: a log cut right after a
// checkpoint (the lines after it removed) verifies, as nothing in the files
// shows the cut. verify must not just call it intact: it prints the chain's
// last seq and time and says that such a cut leaves no trace.
func TestAuditVerifyCutAfterCheckpointNamesTheEnd(t *testing.T) {
	dir := t.TempDir()
	signer, pubFile := devCheckpointSigner(t, dir)
	path, _ := writeSignedAudit(t, dir, signer)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	all := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	cut := -1 // the first checkpoint that is not the last line
	for i, l := range all[:len(all)-1] {
		if ev, err := audit.ParseLine(l); err == nil && ev.Type == audit.TypeCheckpoint {
			cut = i
			break
		}
	}
	if cut < 0 {
		t.Fatalf("no checkpoint before the last line in %s", data)
	}
	last, err := audit.ParseLine(all[cut])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, append(bytes.Join(all[:cut+1], []byte("\n")), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, nil, "audit", "verify", "--key", pubFile, "--exact", "--require-checkpoint", path)
	if err != nil {
		t.Fatalf("audit verify (cut after a checkpoint) = %v, want success (nothing shows the cut)\n%s", err, out)
	}
	if want := fmt.Sprintf("seq 1..%d, last line at %s", last.Seq, last.Time); !strings.Contains(out, want) {
		t.Errorf("audit verify does not name the chain's end (%q):\n%s", want, out)
	}
	if !strings.Contains(out, "removed from the end up to a checkpoint") || !strings.Contains(out, "leave no trace") {
		t.Errorf("audit verify does not say that a cut after a checkpoint leaves no trace:\n%s", out)
	}
}

// TestAuditVerifyExpectSeq: the cut of TestAuditVerifyCutAfterCheckpointNamesTheEnd
// fails verification once the operator gives the seq the chain was seen to
// reach (--expect-seq, from keytrail_audit_last_seq), naming the lines
// removed; a log that reaches it passes and says so.
func TestAuditVerifyExpectSeq(t *testing.T) {
	dir := t.TempDir()
	signer, pubFile := devCheckpointSigner(t, dir)
	path, _ := writeSignedAudit(t, dir, signer)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	all := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	last, err := audit.ParseLine(all[len(all)-1])
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, nil, "audit", "verify", "--key", pubFile, "--exact", "--expect-seq", fmt.Sprint(last.Seq), path)
	if err != nil || !strings.Contains(out, fmt.Sprintf("chain %s reaches seq %d, as expected", last.Chain, last.Seq)) {
		t.Fatalf("audit verify --expect-seq %d (the whole log) = %v, want success saying so\n%s", last.Seq, err, out)
	}
	// SEQ alone names no chain: the output says the id was not checked.
	if !strings.Contains(out, "names no chain: it was checked against the only chain in the files, whatever its id") {
		t.Errorf("audit verify --expect-seq %d does not say the chain id was not checked\n%s", last.Seq, out)
	}
	out, _, err = runCLI(t, nil, "audit", "verify", "--key", pubFile, "--exact", "--expect-seq", fmt.Sprintf("%s=%d", last.Chain, last.Seq), path)
	if err != nil || strings.Contains(out, "names no chain") {
		t.Errorf("audit verify --expect-seq CHAIN=%d = %v, want success without the note on SEQ alone\n%s", last.Seq, err, out)
	}
	cut := -1 // the first checkpoint that is not the last line
	for i, l := range all[:len(all)-1] {
		if ev, err := audit.ParseLine(l); err == nil && ev.Type == audit.TypeCheckpoint {
			cut = i
			break
		}
	}
	if cut < 0 {
		t.Fatalf("no checkpoint before the last line in %s", data)
	}
	if err := os.WriteFile(path, append(bytes.Join(all[:cut+1], []byte("\n")), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, flag := range []string{fmt.Sprint(last.Seq), last.Chain + "=" + fmt.Sprint(last.Seq)} {
		out, _, err = runCLI(t, nil, "audit", "verify", "--key", pubFile, "--exact", "--require-checkpoint", "--expect-seq", flag, path)
		var ee exitError
		want := fmt.Sprintf("the chain ends at seq %d, before seq %d, which it was seen to reach: lines %d..%d were removed", cut+1, last.Seq, cut+2, last.Seq)
		if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, want) || strings.Contains(out, "OK:") {
			t.Errorf("audit verify --expect-seq %s (cut after seq %d) = %v, want exit 1 saying %q\n%s", flag, cut+1, err, want, out)
		}
	}
	for _, bad := range []string{"0", "x", "chn_a=", "has space=3"} {
		_, _, err := runCLI(t, nil, "audit", "verify", "--exact", "--expect-seq", bad, path)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != exitUsage || !strings.Contains(err.Error(), "--expect-seq") {
			t.Errorf("audit verify --expect-seq %q = %v, want a usage error (exit %d) naming the flag", bad, err, exitUsage)
		}
	}
}

// TestAuditVerifyAfterRetention: once the oldest rotated files of a chain
// are removed (retention), the files left start mid-chain. verify reported
// "chain starts at seq N, not 1" and failed, with no way to verify the rest;
// --allow-trimmed-start verifies it from the first line present and says so,
// and without it the failure says how to proceed.
func TestAuditVerifyAfterRetention(t *testing.T) {
	dir := t.TempDir()
	signer, pubFile := devCheckpointSigner(t, dir)
	path := filepath.Join(dir, "audit.jsonl")
	sink, err := auditfile.Open(auditfile.Options{Path: path, Signer: signer, RotateBytes: 1, NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 { // each event rotates the file, after a checkpoint
		if err := sink.Append(context.Background(), &audit.Event{Type: audit.TypeUse, RequestID: fmt.Sprint("req_", i)}); err != nil {
			t.Fatal(err)
		}
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	rotated, err := filepath.Glob(path + ".*")
	if err != nil || len(rotated) < 3 {
		t.Fatalf("rotated files = %v, %v; want several", rotated, err)
	}
	if err := os.Remove(rotated[0]); err != nil { // retention: the oldest goes
		t.Fatal(err)
	}
	evs, err := os.ReadFile(rotated[1])
	if err != nil {
		t.Fatal(err)
	}
	first, err := audit.ParseLine(bytes.SplitN(evs, []byte("\n"), 2)[0])
	if err != nil {
		t.Fatal(err)
	}

	out, _, err := runCLI(t, nil, "audit", "verify", "--key", pubFile, "--require-checkpoint", path)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, fmt.Sprintf("chain starts at seq %d, not 1", first.Seq)) || !strings.Contains(out, "--allow-trimmed-start") {
		t.Errorf("audit verify (oldest file removed) = %v, want exit 1 naming the start and --allow-trimmed-start\n%s", err, out)
	}
	out, _, err = runCLI(t, nil, "audit", "verify", "--key", pubFile, "--require-checkpoint", "--allow-trimmed-start", path)
	if err != nil {
		t.Fatalf("audit verify --allow-trimmed-start = %v, want success\n%s", err, out)
	}
	if want := fmt.Sprintf("verified from seq %d (seq 1..%d are not in the files", first.Seq, first.Seq-1); !strings.Contains(out, want) || !strings.Contains(out, "OK:") {
		t.Errorf("audit verify --allow-trimmed-start does not say %q:\n%s", want, out)
	}
}

// TestAuditVerifyES256FinalCheckpointSignatureMalleable pins a documented
// limit (README "Checkpoints"): an ECDSA signature (r, s) is also valid as
// (r, n-s), and Vault's are not normalised, so the signature on the last
// line of a chain signed by an ecdsa-p256 transit key can be swapped for its
// twin unseen. The signed head cannot be changed.
func TestAuditVerifyES256FinalCheckpointSignatureMalleable(t *testing.T) {
	_, ecS := newFakeTransitSigners(t)
	dir := t.TempDir()
	jwks := writeFile(t, dir, "jwks.json", string(jwksJSON(t, jwkJSON(t, ecS.kid, "ES256", ecS.public()))))
	path, _ := writeSignedAudit(t, dir, ecS)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	all := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	last := all[len(all)-1]
	ev, err := audit.ParseLine(last)
	if err != nil || ev.Checkpoint == nil {
		t.Fatalf("last line is not a checkpoint: %s", last)
	}
	sig, err := base64.StdEncoding.DecodeString(ev.Checkpoint.Signature)
	if err != nil || len(sig) != 64 {
		t.Fatalf("signature: %d bytes, %v", len(sig), err)
	}
	s := new(big.Int).SetBytes(sig[32:])
	new(big.Int).Sub(elliptic.P256().Params().N, s).FillBytes(sig[32:])
	twin := bytes.Replace(last, []byte(ev.Checkpoint.Signature), []byte(base64.StdEncoding.EncodeToString(sig)), 1)
	if bytes.Equal(twin, last) {
		t.Fatal("the twin signature is the same line")
	}
	all[len(all)-1] = twin
	if err := os.WriteFile(path, append(bytes.Join(all, []byte("\n")), '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, _, err := runCLI(t, nil, "audit", "verify", "--jwks", jwks, "--require-checkpoint", "--exact", path); err != nil {
		t.Errorf("audit verify with the twin ES256 signature on the last checkpoint = %v, want OK (a documented limit)\n%s", err, out)
	}
}

// TestAuditVerifyEmptyLogIsNotOK: an empty audit log (every line removed)
// verified "OK: the chain is intact", even with --require-checkpoint. A
// broker writes at least its policy_load event when it starts.
func TestAuditVerifyEmptyLogIsNotOK(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, nil, "audit", "verify", "--exact", path)
	if err != nil {
		t.Fatalf("audit verify of an empty log = %v, want exit 0 with a warning\n%s", err, out)
	}
	if strings.Contains(out, "OK: the chain is intact") || !strings.Contains(out, "NOTHING VERIFIED") {
		t.Errorf("audit verify of an empty log printed:\n%s\nwant NOTHING VERIFIED, not OK", out)
	}
	out, _, err = runCLI(t, nil, "audit", "verify", "--exact", "--require-checkpoint", path)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Errorf("audit verify --require-checkpoint of an empty log = %v, want exit 1\n%s", err, out)
	}
	if !strings.Contains(out, "no audit lines") {
		t.Errorf("audit verify --require-checkpoint of an empty log does not say why:\n%s", out)
	}
}

// progressAuditLog writes an intact audit log of over half a MiB (several
// 64 KiB reads) and returns its path and the end of the progress lines
// about it (" of 566.1 KiB read").
func progressAuditLog(t *testing.T) (path, ofSize string) {
	t.Helper()
	c := audit.NewChain("chn_progress")
	t0 := time.Now().Add(-time.Hour).UTC()
	var b strings.Builder
	for i := range 2000 {
		l, err := c.Seal(&audit.Event{Type: audit.TypeDeny, RequestID: fmt.Sprintf("req_%d", i), Grant: "payments-vault",
			Outcome: &audit.Outcome{Status: 403, Error: "access_denied", Reason: "no_workload"}}, t0.Add(time.Duration(i)*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		b.Write(l)
		b.WriteByte('\n')
	}
	return writeFile(t, t.TempDir(), "audit.jsonl", b.String()), fmt.Sprintf(" of %.1f KiB read", float64(b.Len())/1024)
}

// runEveryRead runs the CLI with a progress line due at every read.
func runEveryRead(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &env{ctx: context.Background(), getenv: func(string) string { return "" }, stdout: &out, stderr: &errb, progressEvery: time.Nanosecond}
	root := newRootCmd(e)
	root.SetArgs(args)
	root.SetOut(&out)
	root.SetErr(&errb)
	err = root.ExecuteContext(context.Background())
	return out.String(), errb.String(), err
}

// TestAuditVerifyPrintsProgress: verifying a large log takes minutes (about
// 30 s per GiB on 2 cores) and printed nothing until the end. While it reads,
// audit verify now prints a progress line on stderr every progressEvery
// (5 s; here as often as it reads), and the report is unchanged.
func TestAuditVerifyPrintsProgress(t *testing.T) {
	log, size := progressAuditLog(t)
	stdout, stderr, err := runEveryRead(t, "audit", "verify", log)
	if err != nil {
		t.Fatalf("audit verify = %v\n%s%s", err, stdout, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	if len(lines) < 2 || !strings.HasPrefix(lines[0], "keytrail audit verify: "+log+": ") || !strings.HasSuffix(lines[0], size) {
		t.Errorf("stderr = %q, want progress lines 'keytrail audit verify: %s: ...%s'", stderr, log, size)
	}
	if !strings.Contains(stdout, "2000 line(s)") || !strings.Contains(stdout, "OK: the chain is intact") {
		t.Errorf("stdout = %q, want the report of 2000 intact lines", stdout)
	}
}

// TestOfflineTraceAndReportPrintProgress: an offline report or trace reads
// the whole log first (a 1.7 GiB log took over 4 minutes under load for
// report) and printed nothing meanwhile; they print the progress lines of
// audit verify, and their output is unchanged.
func TestOfflineTraceAndReportPrintProgress(t *testing.T) {
	log, size := progressAuditLog(t)
	for _, tt := range []struct {
		args    []string
		what    string
		wantOut string
	}{
		{[]string{"report", "--audit-log", log}, "keytrail report", "covers 2000 event(s)"},
		{[]string{"trace", "iss_nope", "--audit-log", log}, "keytrail trace", `no issuance matches "iss_nope"`},
	} {
		stdout, stderr, err := runEveryRead(t, tt.args...)
		lines := strings.Split(strings.TrimSpace(stderr), "\n")
		if len(lines) < 2 || !strings.HasPrefix(lines[0], tt.what+": "+log+": ") || !strings.HasSuffix(lines[0], size) {
			t.Errorf("%s: stderr = %q, want progress lines '%s: %s: ...%s'", tt.what, stderr, tt.what, log, size)
		}
		if got := fmt.Sprint(stdout, err); !strings.Contains(got, tt.wantOut) {
			t.Errorf("%s = %v, want %q in its output:\n%s", tt.what, err, tt.wantOut, stdout)
		}
	}
}

// TestOfflineTraceAndReportNameSkippedLines: a line of the audit files that
// is not a well-formed event (a torn or edited line) was left out of an
// offline report or trace without a word, so the report covered less than
// the files it named. The report now carries a note and trace a warning
// pointing to audit verify, which names the line.
func TestOfflineTraceAndReportNameSkippedLines(t *testing.T) {
	dir := t.TempDir()
	live := cliAuditLog(t, dir)
	f, err := os.OpenFile(live, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString("{\"v\":1,\"seq\":\n"); err != nil {
		t.Fatal(err)
	}
	f.Close()
	const note = "1 audit line(s) are not well-formed events and were left out (keytrail audit verify names each by file and line)"
	out, _, err := runCLI(t, nil, "report", "--audit-log", live)
	if err != nil || !strings.Contains(out, "note: "+note) {
		t.Errorf("report = %v, want a note %q:\n%s", err, note, out)
	}
	out, stderr, err := runCLI(t, nil, "trace", cliIssID, "--audit-log", live)
	if err != nil || !strings.Contains(stderr, "keytrail: warning: "+note) || !strings.Contains(out, cliIssID) {
		t.Errorf("trace = %v, want the issuance and a warning %q\nstdout: %s\nstderr: %s", err, note, out, stderr)
	}
	// audit verify does name it.
	out, _, _ = runCLI(t, nil, "audit", "verify", live)
	if !strings.Contains(out, "FAIL "+live+":2: malformed audit line") {
		t.Errorf("audit verify does not name the line:\n%s", out)
	}
}

// TestAuditVerifyExactSameFileTwice: --exact with one file named twice
// (twice the same path, or another spelling of it) read the file twice and
// reported every line of the second reading as duplicated. It is now read
// once, as without --exact (trace.LogFiles).
func TestAuditVerifyExactSameFileTwice(t *testing.T) {
	log, _ := progressAuditLog(t)
	other := filepath.Join(filepath.Dir(log), ".", filepath.Base(log))
	for _, args := range [][]string{{log, log}, {log, other}} {
		out, _, err := runCLI(t, nil, append([]string{"audit", "verify", "--exact"}, args...)...)
		if err != nil || !strings.Contains(out, "1 file(s), 2000 line(s)") || !strings.Contains(out, "OK: the chain is intact") {
			t.Errorf("audit verify --exact %q = %v, want the file read once and OK:\n%s", args, err, out)
		}
	}
}

// TestAuditVerifyJournalProblemNamesJournal: a journal verify cannot
// compare with its audit file was reported as "FAIL <journal>:0: ...", a
// line 0 that does not exist. It is now reported as the journal file, the
// audit file it belongs to and what is wrong with it, with no line.
func TestAuditVerifyJournalProblemNamesJournal(t *testing.T) {
	log, _ := progressAuditLog(t)
	journal := auditfile.JournalPath(log)
	if err := os.WriteFile(journal, bytes.Repeat([]byte("x"), 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _, err := runCLI(t, nil, "audit", "verify", log)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Errorf("audit verify with a broken journal = %v, want exit 1\n%s", err, out)
	}
	want := "FAIL " + journal + ": the journal of " + log + " cannot be compared with it: not a keytrail audit journal"
	if !strings.Contains(out, want) || strings.Contains(out, ":0:") {
		t.Errorf("audit verify with a broken journal printed:\n%s\nwant a line %q and no line 0", out, want)
	}
	out, _, _ = runCLI(t, nil, "audit", "verify", "--json", log)
	var rep struct {
		Problems []map[string]any `json:"problems"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Problems) != 1 {
		t.Fatalf("audit verify --json = %v, %s; want one problem", err, out)
	}
	if p := rep.Problems[0]; p["file"] != journal || p["line"] != nil {
		t.Errorf("audit verify --json problem = %v, want file %s and no line", p, journal)
	}
}

// devCheckpointSigner makes a checkpoint key pair in dir as dev does
// (PKCS#8 private key, PKIX public key) and returns its signer and the
// public key's file.
func devCheckpointSigner(t *testing.T, dir string) (*audit.Ed25519Signer, string) {
	t.Helper()
	keyFile, pubFile := filepath.Join(dir, "checkpoint.key"), filepath.Join(dir, "checkpoint.pub")
	if _, err := ensureEd25519Key(keyFile, pubFile); err != nil {
		t.Fatal(err)
	}
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := audit.NewEd25519Signer(keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return signer, pubFile
}

// TestAuditVerifyCheckpointTime: a log cut at an older checkpoint whose
// time is then moved forward to the time of the removed end must not look
// as recent as the uncut log. A version 2 checkpoint, as the broker writes
// it, signs its own time: moved, it does not verify. A version 1
// checkpoint (brokers before) signs the line before it only: the log
// verifies, and verify prints, next to the last line's time, the newest
// signed one (the head's) and says the checkpoint's own is not signed.
func TestAuditVerifyCheckpointTime(t *testing.T) {
	dir := t.TempDir()
	signer, pubFile := devCheckpointSigner(t, dir)
	path, _ := writeSignedAudit(t, dir, signer)
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	all := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	cut := -1 // the first checkpoint that is not the last line
	for i, l := range all[:len(all)-1] {
		if ev, err := audit.ParseLine(l); err == nil && ev.Type == audit.TypeCheckpoint {
			cut = i
			break
		}
	}
	if cut < 1 {
		t.Fatalf("no checkpoint after the first line and before the last in %s", data)
	}
	head, err := audit.ParseLine(all[cut-1])
	if err != nil {
		t.Fatal(err)
	}
	cp, err := audit.ParseLine(all[cut])
	if err != nil {
		t.Fatal(err)
	}
	if cp.Checkpoint.Version != 2 {
		t.Fatalf("the broker wrote a checkpoint of version %d, want 2: %s", cp.Checkpoint.Version, all[cut])
	}
	moved := time.Now().UTC().Add(time.Hour).Format(audit.TimeFormat)
	write := func(cp *audit.Event) {
		t.Helper()
		line, err := json.Marshal(cp)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, append(append(bytes.Join(all[:cut], []byte("\n")), '\n'), append(line, '\n')...), 0o600); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("version-2-time-moved", func(t *testing.T) {
		write(cp)
		out, _, err := runCLI(t, nil, "audit", "verify", "--key", pubFile, "--exact", path)
		if err != nil {
			t.Fatalf("audit verify (cut at a checkpoint) = %v, want success\n%s", err, out)
		}
		if want := fmt.Sprintf("signed up to seq %d at %s\n", cp.Seq, cp.Time); !strings.Contains(out, want) {
			t.Errorf("audit verify does not print the checkpoint's own, signed time (%q):\n%s", want, out)
		}
		m := *cp
		m.Time = moved
		write(&m)
		out, _, err = runCLI(t, nil, "audit", "verify", "--key", pubFile, "--exact", path)
		if err == nil || !strings.Contains(out, fmt.Sprintf("FAIL %s:%d (seq %d): checkpoint signature does not verify", path, cut+1, cp.Seq)) {
			t.Errorf("audit verify (version 2 checkpoint's time moved) = %v, want a FAIL at line %d\n%s", err, cut+1, out)
		}
	})

	t.Run("version-1-time-moved", func(t *testing.T) {
		// The checkpoint as a broker before version 2 wrote it.
		v1 := *cp
		c1 := *cp.Checkpoint
		v1.Checkpoint = &c1
		c1.Version = 0
		sig, err := signer.Sign(context.Background(), audit.CheckpointSigningInput(v1.Chain, c1.HeadSeq, c1.HeadHash))
		if err != nil {
			t.Fatal(err)
		}
		c1.Signature = base64.StdEncoding.EncodeToString(sig)
		v1.Time = moved
		write(&v1)
		out, _, err := runCLI(t, nil, "audit", "verify", "--key", pubFile, "--exact", "--require-checkpoint", path)
		if err != nil {
			t.Fatalf("audit verify (version 1, cut, checkpoint time moved) = %v, want success (a version 1 checkpoint does not sign its time)\n%s", err, out)
		}
		if want := fmt.Sprintf("last line at %s", moved); !strings.Contains(out, want) {
			t.Errorf("audit verify does not print the last line's time as written (%q):\n%s", want, out)
		}
		if want := fmt.Sprintf("signed up to seq %d at %s (the last checkpoint, of version 1, does not sign its own time and request_id)", head.Seq, head.Time); !strings.Contains(out, want) {
			t.Errorf("audit verify does not print the newest signed time (%q):\n%s", want, out)
		}
		out, _, err = runCLI(t, nil, "audit", "verify", "--key", pubFile, "--exact", "--json", path)
		if err != nil {
			t.Fatalf("audit verify --json = %v\n%s", err, out)
		}
		var rep struct {
			Chains []struct {
				LastTime   string `json:"last_time"`
				SignedSeq  uint64 `json:"signed_seq"`
				SignedTime string `json:"signed_time"`
			} `json:"chains"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			t.Fatalf("audit verify --json: %v\n%s", err, out)
		}
		if len(rep.Chains) != 1 || rep.Chains[0].LastTime != moved || rep.Chains[0].SignedSeq != head.Seq || rep.Chains[0].SignedTime != head.Time {
			t.Errorf("audit verify --json chains = %+v, want last_time %s, signed_seq %d, signed_time %s", rep.Chains, moved, head.Seq, head.Time)
		}
	})
}

// TestAuditVerifyWarnsOfAnUnsignedChain: a chain planted whole (written,
// hash chain and all, by whoever can write the file, with no checkpoint a
// key verifies) passes the chain checks: verify must say, prominently,
// that nothing in it is signed, and the OK line must not read as a clean
// result; --require-checkpoint makes it a failure. The same when no key is
// given at all. With --json the warning goes to stderr.
func TestAuditVerifyWarnsOfAnUnsignedChain(t *testing.T) {
	dir := t.TempDir()
	_, pubFile := devCheckpointSigner(t, dir)
	c := audit.NewChain("chn_planted")
	var file []byte
	for i := range 3 {
		line, err := c.Seal(&audit.Event{Type: audit.TypeUse, RequestID: fmt.Sprint("req_", i)}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		file = append(append(file, line...), '\n')
	}
	path := filepath.Join(dir, "audit.jsonl")
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}

	out, _, err := runCLI(t, nil, "audit", "verify", "--exact", "--key", pubFile, path)
	if err != nil {
		t.Fatalf("audit verify (planted chain) = %v, want exit 0 (the chain holds)\n%s", err, out)
	}
	for _, want := range []string{
		"WARNING: chain chn_planted has no verified checkpoint: no signature covers any of its 3 line(s)",
		"--require-checkpoint makes this a failure",
		"OK: the chain is intact up to its last line (seq above), but NOT SIGNED (see the WARNING above)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("audit verify (planted chain) does not print %q:\n%s", want, out)
		}
	}
	out, _, err = runCLI(t, nil, "audit", "verify", "--exact", "--key", pubFile, "--require-checkpoint", path)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, "FAIL "+path+":1 (seq 1): 3 line(s) from here to the end of the chain are not covered by a verified checkpoint") {
		t.Errorf("audit verify --require-checkpoint (planted chain) = %v, want exit 1 and a FAIL at line 1\n%s", err, out)
	}
	out, _, err = runCLI(t, nil, "audit", "verify", "--exact", path)
	if err != nil || !strings.Contains(out, "WARNING: checkpoint signatures not checked (no --key or --jwks given)") || !strings.Contains(out, "but NOT SIGNED") {
		t.Errorf("audit verify without a key = %v, want exit 0 and the warning\n%s", err, out)
	}
	// Unsigned, the OK line still comes with what --expect-seq confirmed
	// and the note on lines removed from the end.
	out, _, err = runCLI(t, nil, "audit", "verify", "--exact", "--expect-seq", "3", path)
	for _, want := range []string{"but NOT SIGNED", "chain chn_planted reaches seq 3, as expected (--expect-seq)", "note: lines removed from the end"} {
		if err != nil || !strings.Contains(out, want) {
			t.Errorf("audit verify --expect-seq 3 without a key = %v, want exit 0 and %q\n%s", err, want, out)
		}
	}
	out, stderr, err := runCLI(t, nil, "audit", "verify", "--exact", "--json", "--key", pubFile, path)
	if err != nil || !json.Valid([]byte(out)) || !strings.Contains(stderr, "keytrail: warning: chain chn_planted has no verified checkpoint") {
		t.Errorf("audit verify --json (planted chain) = %v\nstdout:\n%s\nstderr:\n%s\nwant JSON on stdout, the warning on stderr", err, out, stderr)
	}

	// A signed log says nothing of the kind.
	signer, pub2 := devCheckpointSigner(t, t.TempDir())
	signed, _ := writeSignedAudit(t, t.TempDir(), signer)
	out, _, err = runCLI(t, nil, "audit", "verify", "--exact", "--key", pub2, signed)
	if err != nil || strings.Contains(out, "WARNING") || strings.Contains(out, "NOT SIGNED") {
		t.Errorf("audit verify (signed log) = %v, want no warning\n%s", err, out)
	}

	// A checkpoint by a key not given: where to find it.
	out, _, err = runCLI(t, nil, "audit", "verify", "--exact", "--key", pubFile, signed)
	if !errors.As(err, &ee) || ee.code != 1 || !strings.Contains(out, "hint: no key given has checkpoint key(s) "+signer.KeyID()+": a key the broker no longer serves") {
		t.Errorf("audit verify (another key) = %v, want exit 1 and a hint naming %s\n%s", err, signer.KeyID(), out)
	}
	// With --json the hint goes to stderr, as the warnings do.
	out, stderr, err = runCLI(t, nil, "audit", "verify", "--exact", "--json", "--key", pubFile, signed)
	if !errors.As(err, &ee) || ee.code != 1 || !json.Valid([]byte(out)) || !strings.Contains(stderr, "keytrail: hint: no key given has checkpoint key(s) "+signer.KeyID()+": a key the broker no longer serves") {
		t.Errorf("audit verify --json (another key) = %v, want exit 1, JSON on stdout and the hint naming %s on stderr\nstdout:\n%s\nstderr:\n%s", err, signer.KeyID(), out, stderr)
	}
}
