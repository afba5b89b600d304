package auditfile

import (
	"bytes"
	"context"
	"path/filepath"
	"testing"

	"github.com/keytrail/keytrail/broker/audit"
)

// TestAddedLineAfterCheckpointRecordedConsistently: a line added to the
// file after the sink's own last checkpoint (one that does not parse, or
// one longer than any a broker writes) is counted among the lines adopted
// at Open. The range's first seq was then counted back from the last
// line's seq past the checkpoint ({first 4, last 6, lines 3, checkpoint
// 4}: no broker writes it), and audit verify blamed the genuine start
// event that recorded it ("changed, or not written by a keytrail broker")
// besides the added line. The range starts right after the checkpoint,
// the count keeps the added line, and verify reports only the added line.
func TestAddedLineAfterCheckpointRecordedConsistently(t *testing.T) {
	for _, tc := range []struct {
		name    string
		added   []byte
		tooLong int
	}{
		{"garbage", []byte("not an audit line\n"), 0},
		{"too-long", append(bytes.Repeat([]byte("x"), audit.MaxLineBytes+10), '\n'), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			signer, keys := newSigner(t)
			clk := newClock()
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			o := Options{Path: path, Now: clk.Now, Signer: signer}
			c := closedChain(t, o, 3) // the checkpoint at seq 4
			appendFile(t, path, sealUses(t, c, 1, clk.Now()))
			appendFile(t, path, tc.added) // line 6 of the file
			appendFile(t, path, sealUses(t, c, 1, clk.Now()))

			o.RecordResumed = true
			s := openT(t, o, seams{})
			r := s.UnsignedResumed()
			want := UnsignedRange{FirstSeq: 5, LastSeq: 6, Lines: 3, LastCheckpointSeq: 4, TooLongLines: tc.tooLong}
			if r == nil {
				t.Fatal("UnsignedResumed() = nil")
			}
			if *r != want {
				t.Errorf("UnsignedResumed() = %+v, want %+v", r, want)
			}
			// The broker's start event records it (cmd/keytrail's
			// unsignedResumedDetail).
			d := map[string]any{"first_seq": r.FirstSeq, "last_seq": r.LastSeq, "lines": r.Lines, "last_checkpoint_seq": r.LastCheckpointSeq}
			if r.TooLongLines > 0 {
				d["too_long_lines"] = r.TooLongLines
			}
			start := &audit.Event{Type: audit.TypePolicyLoad, Details: map[string]any{"trigger": "start", audit.DetailUnsignedResumed: d}}
			if err := s.Append(context.Background(), start); err != nil {
				t.Fatal(err)
			}
			s.ResumedRecorded()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}

			rep, err := audit.VerifyFiles([]string{path}, audit.VerifyOptions{Keys: keys})
			if rep == nil {
				t.Fatal(err) // a report with problems comes with an error too
			}
			if len(rep.Problems) != 1 || rep.Problems[0].Line != 6 {
				t.Fatalf("verify problems = %v, want one, the added line (line 6)", rep.Problems)
			}
			if cr := rep.Chains[0]; len(cr.UnsignedResumed) != 1 || cr.UnsignedResumed[0].FirstSeq != 5 || len(cr.UnrecordedResumed) != 0 {
				t.Errorf("verify chain report: unsigned_resumed %+v, unrecorded_resumed %+v; want the range from seq 5, nothing unrecorded", cr.UnsignedResumed, cr.UnrecordedResumed)
			}
		})
	}
}
