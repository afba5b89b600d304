package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestAuditVerifyNoticesUnsignedResumed: lines added to a stopped
// broker's audit file, after its last checkpoint, are signed by the next
// checkpoint of the broker that resumes the chain, and nothing then tells
// them from its own. The start event records the range the sink adopted
// (unsignedResumedDetail), and audit verify reports it, text and --json,
// as a notice: the log still verifies (a crash leaves such lines too).
func TestAuditVerifyNoticesUnsignedResumed(t *testing.T) {
	// While no broker holds the file, a line is added, linked to the
	// final checkpoint. The broker starts again: its start event records
	// what it adopted.
	path, pubFile, c, cpSeq := writeResumedAudit(t, 1, func(sink *auditfile.Sink, _ uint64) any {
		r := sink.UnsignedResumed()
		if r == nil {
			t.Fatal("UnsignedResumed() = nil after a line was added past the last checkpoint")
		}
		return unsignedResumedDetail(r)
	})

	want := fmt.Sprintf("notice: chain %s: seq %d (1 line(s)), after the checkpoint at seq %d, were signed only after the broker restarted (its start event, seq %d, records them)", c.ID(), cpSeq+1, cpSeq, cpSeq+2)
	out, _, err := runCLI(t, nil, "audit", "verify", "--key", pubFile, "--require-checkpoint", "--exact", path)
	if err != nil || !strings.Contains(out, want) || !strings.Contains(out, "OK: the chain is intact") {
		t.Errorf("audit verify = %v, want success with %q\n%s", err, want, out)
	}

	rep, out, stderr := verifyJSON(t, pubFile, path)
	wantRange := audit.ResumedRange{AtSeq: cpSeq + 2, FirstSeq: cpSeq + 1, LastSeq: cpSeq + 1, Lines: 1, LastCheckpointSeq: cpSeq}
	checkOneRange(t, rep, "unsigned_resumed", func(c audit.ChainReport) []audit.ResumedRange { return c.UnsignedResumed }, wantRange)
	if !strings.Contains(out, `"unsigned_resumed": [`) {
		t.Errorf("audit verify --json does not name unsigned_resumed:\n%s", out)
	}
	if !strings.Contains(stderr, "keytrail: notice: chain "+c.ID()) {
		t.Errorf("audit verify --json stderr = %q, want the notice", stderr)
	}
}

// writeResumedAudit writes a signed audit file in a new temporary folder
// (pubFile: its checkpoint key's public key) to which, while no broker
// holds it, n lines are added, linked to its final checkpoint (chain c, at
// seq cpSeq); then a broker opens it again and writes its start event,
// whose details record record(sink, cpSeq) as audit.DetailUnsignedResumed
// (nil: no record, as a broker before the record wrote).
func writeResumedAudit(t *testing.T, n int, record func(sink *auditfile.Sink, cpSeq uint64) any) (path, pubFile string, c *audit.Chain, cpSeq uint64) {
	t.Helper()
	dir := t.TempDir()
	signer, pubFile := devCheckpointSigner(t, dir)
	path, _ = writeSignedAudit(t, dir, signer)
	data, c := resumeAuditFile(t, path)
	cpSeq, _ = c.Head()
	for i := range n {
		added, err := c.Seal(&audit.Event{Type: audit.TypeIssue, RequestID: fmt.Sprintf("req_added%d", i), IssuanceID: "iss_ADDED"}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		data = append(append(data, added...), '\n')
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	sink, err := auditfile.Open(auditfile.Options{Path: path, Signer: signer, NoFsync: true})
	if err != nil {
		t.Fatal(err)
	}
	details := map[string]any{"trigger": "start"}
	if r := record(sink, cpSeq); r != nil {
		details[audit.DetailUnsignedResumed] = r
	}
	if err := sink.Append(context.Background(), &audit.Event{Type: audit.TypePolicyLoad, Details: details}); err != nil {
		t.Fatal(err)
	}
	if err := sink.Close(); err != nil {
		t.Fatal(err)
	}
	return path, pubFile, c, cpSeq
}

// verifyJSON is the report of audit verify --json --exact of path (key
// pubFile), and its output and error output.
func verifyJSON(t *testing.T, pubFile, path string) (rep audit.Report, out, stderr string) {
	t.Helper()
	out, stderr, err := runCLI(t, nil, "audit", "verify", "--key", pubFile, "--json", "--exact", path)
	if err != nil {
		t.Fatalf("audit verify --json = %v\n%s", err, stderr)
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("audit verify --json: %v\n%s", err, out)
	}
	return rep, out, stderr
}

// checkOneRange checks that rep has one chain, whose ranges (named field
// in --json) are want alone.
func checkOneRange(t *testing.T, rep audit.Report, field string, ranges func(audit.ChainReport) []audit.ResumedRange, want audit.ResumedRange) {
	t.Helper()
	if len(rep.Chains) != 1 || len(ranges(rep.Chains[0])) != 1 || ranges(rep.Chains[0])[0] != want {
		t.Errorf("audit verify --json chains = %+v, want one with %s [%+v]", rep.Chains, field, want)
	}
}

// TestResumedNoticeWithoutOwnCheckpointNamesKeyChange: a range the broker
// found no checkpoint of its own key before (last_checkpoint_seq 0) is, after
// a deliberate change of checkpoint key, lines a clean stop left under the
// old key's checkpoints (auditfile ownCheckpoint). The notice said "with no
// checkpoint in the N line(s) before them", untrue then: it now says no
// checkpoint the broker could check, and names the change of key.
func TestResumedNoticeWithoutOwnCheckpointNamesKeyChange(t *testing.T) {
	rep := &audit.Report{Chains: []audit.ChainReport{{Chain: "chn_x", UnsignedResumed: []audit.ResumedRange{
		{AtSeq: 1002, FirstSeq: 2, LastSeq: 1001, Lines: 1000},
	}}}}
	got := strings.Join(resumedNotices(rep), "\n")
	for _, want := range []string{"seq 2..1001 (1000 line(s))", "with no checkpoint the broker could check as its own before them in its file", "change of checkpoint key"} {
		if !strings.Contains(got, want) {
			t.Errorf("resumedNotices() = %q, want it to contain %q", got, want)
		}
	}
}
