package auditfile

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// appendOrCreate appends b to the file at path, creating it, as a sink
// that crashed after writing b would have left it.
func appendOrCreate(t *testing.T, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// sealLines seals n use events in c and returns them, newline-terminated.
func sealLines(t *testing.T, c *audit.Chain, clk *clock, n int) []byte {
	t.Helper()
	var b []byte
	for range n {
		line, err := c.Seal(&audit.Event{Type: audit.TypeUse, RequestID: "req_after"}, clk.Now())
		if err != nil {
			t.Fatal(err)
		}
		b = append(append(b, line...), '\n')
	}
	return b
}

// rotatedOnce writes one event through a sink that rotates after every
// batch (the rotated file ends with its checkpoint, the live file is left
// empty) and returns the rotated file's last line, parsed.
func rotatedOnce(t *testing.T, o Options) (rotated string, cp *audit.Event, c *audit.Chain) {
	t.Helper()
	o.RotateBytes = 1
	s := openT(t, o, seams{})
	appendN(t, s, 1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	files := rotatedFiles(t, o.Path)
	if len(files) != 1 {
		t.Fatalf("rotated files = %v, want 1", files)
	}
	lines := readLines(t, files[0])
	last := lines[len(lines)-1]
	cp, err := audit.ParseLine(last)
	if err != nil || cp.Type != audit.TypeCheckpoint {
		t.Fatalf("rotated file's last line = %v, %v; want a checkpoint", cp, err)
	}
	if c, err = audit.ResumeChain(last); err != nil {
		t.Fatal(err)
	}
	return files[0], cp, c
}

// TestResumeAfterRotationNamesRotatedCheckpoint: a crash right after a
// rotation leaves the live file with lines but no checkpoint, and the
// rotated file ending with the sink's own. The lines no checkpoint covers
// are the live file's, after that checkpoint: the range (and the
// checkpoint seq the metric exports) must name it, not 0 ("none in the
// file").
func TestResumeAfterRotationNamesRotatedCheckpoint(t *testing.T) {
	signer, keys := newSigner(t)
	clk := newClock()
	t.Run("ends-with-checkpoint", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		o := Options{Path: path, Now: clk.Now, Signer: signer}
		rotated, cp, c := rotatedOnce(t, o)
		appendOrCreate(t, path, sealLines(t, c, clk, 2)) // then a crash

		s := openT(t, o, seams{})
		want := &UnsignedRange{FirstSeq: cp.Seq + 1, LastSeq: cp.Seq + 2, Lines: 2, LastCheckpointSeq: cp.Seq}
		if d := cmp.Diff(want, s.UnsignedResumed()); d != "" {
			t.Errorf("UnsignedResumed() after a crash right after a rotation (-want +got):\n%s", d)
		}
		if got := s.Stats().CheckpointSeq; got != cp.Seq {
			t.Errorf("Stats().CheckpointSeq = %d, want %d (the rotated file's last line)", got, cp.Seq)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := verify(t, keys, true, rotated, path); err != nil {
			t.Errorf("Verify() = %v", err)
		}
	})
	t.Run("lines-after-rotated-checkpoint", func(t *testing.T) {
		// Lines after the rotated file's checkpoint (added while no
		// sink held it) are in the range too.
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		o := Options{Path: path, Now: clk.Now, Signer: signer}
		rotated, cp, c := rotatedOnce(t, o)
		appendOrCreate(t, rotated, sealLines(t, c, clk, 1))
		appendOrCreate(t, path, sealLines(t, c, clk, 2))
		want := &UnsignedRange{FirstSeq: cp.Seq + 1, LastSeq: cp.Seq + 3, Lines: 3, LastCheckpointSeq: cp.Seq}
		if d := cmp.Diff(want, openResumed(t, o)); d != "" {
			t.Errorf("UnsignedResumed() (-want +got):\n%s", d)
		}
	})
	t.Run("rotated-file-of-another-chain", func(t *testing.T) {
		// A live file that does not continue the rotated file (another
		// chain) is counted from its own first line, as before.
		path := filepath.Join(t.TempDir(), "audit.jsonl")
		o := Options{Path: path, Now: clk.Now, Signer: signer}
		rotatedOnce(t, o)
		other := audit.NewChain("chn_other")
		appendOrCreate(t, path, sealLines(t, other, clk, 2))
		want := &UnsignedRange{FirstSeq: 1, LastSeq: 2, Lines: 2, LastCheckpointSeq: 0}
		if d := cmp.Diff(want, openResumed(t, o)); d != "" {
			t.Errorf("UnsignedResumed() (-want +got):\n%s", d)
		}
	})
}

// TestResumeSkipsOverLongLine: an over-long line among the lines Open reads
// back (one no broker writes: a corrupted or added line) must not stop the
// broker from starting; it is counted among the adopted lines, as a line
// that does not parse is, said in an ERROR and in the range, and audit
// verify still reports it.
func TestResumeSkipsOverLongLine(t *testing.T) {
	for _, tt := range []struct {
		name    string
		longLen int
	}{
		{name: "just-over", longLen: audit.MaxLineBytes + 1},
		{name: "several-reads-long", longLen: 3*audit.MaxLineBytes + 12345},
	} {
		t.Run(tt.name, func(t *testing.T) {
			signer, keys := newSigner(t)
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			clk := newClock()
			o := Options{Path: path, Now: clk.Now, Signer: signer}
			c := closedChain(t, o, 2) // seq 1, 2 and the checkpoint, 3
			var tail []byte
			tail = append(tail, sealLines(t, c, clk, 1)...) // seq 4
			sealLines(t, c, clk, 1)                         // seq 5, replaced by:
			tail = append(append(tail, bytes.Repeat([]byte{'x'}, tt.longLen)...), '\n')
			tail = append(tail, sealLines(t, c, clk, 1)...) // seq 6
			appendFile(t, path, tail)

			var logs brokertest.SyncBuffer
			o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			s, err := open(o, seams{})
			if err != nil {
				t.Fatalf("Open() with an over-long line after the last checkpoint = %v, want it to start", err)
			}
			want := &UnsignedRange{FirstSeq: 4, LastSeq: 6, Lines: 3, LastCheckpointSeq: 3, TooLongLines: 1}
			if d := cmp.Diff(want, s.UnsignedResumed()); d != "" {
				t.Errorf("UnsignedResumed() (-want +got):\n%s", d)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			got := logs.String()
			for _, w := range []string{"level=ERROR", "longer than", "too_long_lines=1"} {
				if !strings.Contains(got, w) {
					t.Errorf("Open() logged %q, want it to contain %q", got, w)
				}
			}
			rep, err := verify(t, keys, false, path)
			if !errors.Is(err, audit.ErrTampered) || len(rep.Problems) != 1 || rep.Problems[0].Line != 5 || !strings.Contains(rep.Problems[0].Why, "long") {
				t.Errorf("Verify() = %v, problems %+v; want ErrTampered, one problem: line 5 too long", err, rep.Problems)
			}
		})
	}
}

// TestResumeOverLongFirstLine: an over-long line that is the file's first,
// with no checkpoint after it, is counted too.
func TestResumeOverLongFirstLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clk := newClock()
	c := audit.NewChain("chn_long")
	sealLines(t, c, clk, 1) // seq 1, replaced by:
	b := append(bytes.Repeat([]byte{'y'}, 2*audit.MaxLineBytes), '\n')
	appendOrCreate(t, path, append(b, sealLines(t, c, clk, 2)...))
	signer, _ := newSigner(t)
	want := &UnsignedRange{FirstSeq: 1, LastSeq: 3, Lines: 3, LastCheckpointSeq: 0, TooLongLines: 1}
	if d := cmp.Diff(want, openResumed(t, Options{Path: path, Now: clk.Now, Signer: signer})); d != "" {
		t.Errorf("UnsignedResumed() (-want +got):\n%s", d)
	}
}
