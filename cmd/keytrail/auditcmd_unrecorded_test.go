package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/adapters/auditfile"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestAuditVerifyChecksUnsignedResumed: audit verify computes, from the
// files, the lines no verified checkpoint covers before a start event, and
// compares them with what it records. It trusted the record: a start event
// that records nothing (a broker before the record) passed in silence, and
// one whose record leaves lines out (naming a checkpoint that is not one)
// passed with a notice. The first is now a WARNING (exit 0, the OK line
// not NOT SIGNED), the second a failure (exit 1).
func TestAuditVerifyChecksUnsignedResumed(t *testing.T) {
	for _, forged := range []bool{false, true} {
		t.Run(fmt.Sprintf("forged=%v", forged), func(t *testing.T) {
			path, pubFile, c, cpSeq := writeResumedAudit(t, 2, func(_ *auditfile.Sink, cpSeq uint64) any {
				if !forged {
					return nil
				}
				// The last added line only, "after the checkpoint" the
				// first added line is not.
				return map[string]any{"first_seq": cpSeq + 2, "last_seq": cpSeq + 2, "lines": 1, "last_checkpoint_seq": cpSeq + 1}
			})
			out, _, err := runCLI(t, nil, "audit", "verify", "--key", pubFile, "--require-checkpoint", "--exact", path)
			if forged {
				want := fmt.Sprintf("no verified checkpoint covers seq %d..%d before them either", cpSeq+1, cpSeq+1)
				if err == nil || !strings.Contains(out, "FAIL") || !strings.Contains(out, want) {
					t.Errorf("audit verify of a record that leaves a line out = %v, want exit 1 with %q\n%s", err, want, out)
				}
				return
			}
			want := fmt.Sprintf("WARNING: chain %s: seq %d..%d (2 line(s)), after the checkpoint at seq %d, are covered by no verified checkpoint before the start event at seq %d, which does not record them", c.ID(), cpSeq+1, cpSeq+2, cpSeq, cpSeq+3)
			if err != nil || !strings.Contains(out, want) || !strings.Contains(out, "OK: the chain is intact up to its last line (seq above)\n") {
				t.Errorf("audit verify = %v, want success with %q and a signed OK\n%s", err, want, out)
			}
			rep, _, stderr := verifyJSON(t, pubFile, path)
			wantRange := audit.ResumedRange{AtSeq: cpSeq + 3, FirstSeq: cpSeq + 1, LastSeq: cpSeq + 2, Lines: 2, LastCheckpointSeq: cpSeq}
			checkOneRange(t, rep, "unrecorded_resumed", func(c audit.ChainReport) []audit.ResumedRange { return c.UnrecordedResumed }, wantRange)
			if !strings.Contains(stderr, "keytrail: warning: chain "+c.ID()) {
				t.Errorf("audit verify --json stderr = %q, want the warning", stderr)
			}
		})
	}
}

// TestResumedNoticeNamesVerifiedCheckpoint: a checkpoint inside a recorded
// range that verified (the broker could not check it as its own: a key
// before a change of key) is named in the notice.
func TestResumedNoticeNamesVerifiedCheckpoint(t *testing.T) {
	rep := &audit.Report{Chains: []audit.ChainReport{{Chain: "chn_x", UnsignedResumed: []audit.ResumedRange{
		{AtSeq: 6, FirstSeq: 1, LastSeq: 5, Lines: 5, VerifiedCheckpointSeq: 3, VerifiedCheckpointKeyID: "ed25519:0011223344556677"},
	}}}}
	got := strings.Join(resumedNotices(rep), "\n")
	for _, want := range []string{"the checkpoint at seq 3 among them verified with key ed25519:0011223344556677", "change of checkpoint key"} {
		if !strings.Contains(got, want) {
			t.Errorf("resumedNotices() = %q, want it to contain %q", got, want)
		}
	}
}

// TestResumedNoticeNamesTheCheckCap: a broker stops checking checkpoint
// signatures at start-up past 100 lines typed checkpoint that did not verify
// (auditfile maxFailedChecks) and counts the checkpoints before them in the
// range, its own too: 100 forged lines after its last checkpoint make the
// range reach back to the file's first line, that checkpoint inside it
// verified with the broker's own key. The notice gave a change of key as the
// only cause, sending the operator to look for a key change nobody made; it
// names the cap too (the forged lines are problems of their own).
func TestResumedNoticeNamesTheCheckCap(t *testing.T) {
	for _, r := range []audit.ResumedRange{
		{AtSeq: 155, FirstSeq: 1, LastSeq: 154, Lines: 154, VerifiedCheckpointSeq: 4, VerifiedCheckpointKeyID: "ed25519:0011223344556677"},
		{AtSeq: 155, FirstSeq: 1, LastSeq: 154, Lines: 154},
	} {
		rep := &audit.Report{Chains: []audit.ChainReport{{Chain: "chn_x", UnsignedResumed: []audit.ResumedRange{r}}}}
		got := strings.Join(resumedNotices(rep), "\n")
		for _, want := range []string{"change of checkpoint key", "more than 100 lines typed checkpoint"} {
			if !strings.Contains(got, want) {
				t.Errorf("resumedNotices(%+v) = %q, want it to contain %q", r, got, want)
			}
		}
	}
}
