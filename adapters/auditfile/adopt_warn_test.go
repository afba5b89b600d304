package auditfile

import (
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/brokertest"
)

// TestResumeWarnSaysWhatWasRead: the start-up WARN on adopted lines
// explained "last_checkpoint_seq 0: none in the file ..." whatever the
// seq, and named a checkpoint by a key the sink cannot check in the newest
// rotated file (unchecked_checkpoint_seq) when that file was read but did
// not continue the range (no checkpoint of the sink's in it: the range is
// the live file's, after that checkpoint). The WARN says only what holds.
func TestResumeWarnSaysWhatWasRead(t *testing.T) {
	t.Run("after-own-checkpoint", func(t *testing.T) {
		signer, _ := newSigner(t)
		clk := newClock()
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		o := Options{Path: path, Now: clk.Now, Signer: signer}
		c := closedChain(t, o, 3) // the checkpoint at seq 4
		appendFile(t, path, sealUses(t, c, 2, clk.Now()))
		got := openLogs(t, o)
		if !strings.Contains(got, "resuming after lines no checkpoint covers") || !strings.Contains(got, "last_checkpoint_seq=4") {
			t.Fatalf("Open() logged %q, want the resume WARN naming last_checkpoint_seq=4", got)
		}
		if strings.Contains(got, "last_checkpoint_seq 0") {
			t.Errorf("Open() after the checkpoint at seq 4 logged %q, want no explanation of last_checkpoint_seq 0", got)
		}
	})
	t.Run("rotated-file-not-continuing-the-range", func(t *testing.T) {
		ed, _ := newSigner(t)
		clk := newClock()
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		// The rotated file ends with a checkpoint by a key the sink
		// does not check (before a change of key): the range is the
		// live file's lines, after it.
		_, cp, c := rotatedOnce(t, Options{Path: path, Now: clk.Now, Signer: otherKid{ed}})
		appendOrCreate(t, path, sealLines(t, c, clk, 2))
		var logs brokertest.SyncBuffer
		o := Options{Path: path, Now: clk.Now, Signer: selfChecking{ed}, Logger: slog.New(slog.NewTextHandler(&logs, nil))}
		s := openT(t, o, seams{})
		want := &UnsignedRange{FirstSeq: cp.Seq + 1, LastSeq: cp.Seq + 2, Lines: 2}
		if d := cmp.Diff(want, s.UnsignedResumed()); d != "" {
			t.Errorf("UnsignedResumed() (-want +got):\n%s", d)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		got := logs.String()
		if !strings.Contains(got, "resuming after lines no checkpoint covers") {
			t.Fatalf("Open() logged %q, want the resume WARN", got)
		}
		if strings.Contains(got, "unchecked_checkpoint_seq") || strings.Contains(got, "unchecked_key_id") {
			t.Errorf("Open() logged %q, naming the rotated file's checkpoint (seq %d, before the range's first line %d)", got, cp.Seq, cp.Seq+1)
		}
	})
}

// openLogs opens a sink with o and closes it, and returns what it logged.
func openLogs(t *testing.T, o Options) string {
	t.Helper()
	var logs brokertest.SyncBuffer
	o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	s := openT(t, o, seams{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return logs.String()
}
