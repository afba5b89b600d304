package audit_test

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/audit"
)

// sinkFile is an audit file a test changes between two reads, as a
// running sink would: after the n-th ReadAt, after(n) runs.
type sinkFile struct {
	data  []byte
	reads int
	after func(n int)
}

func (f *sinkFile) ReadAt(p []byte, off int64) (int, error) {
	var n int
	if off < int64(len(f.data)) {
		n = copy(p, f.data[off:])
	}
	f.reads++
	if f.after != nil {
		f.after(f.reads)
	}
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// cutAndWrite cuts f back to size and appends s: a sink's rollback of a
// failed write, then its next batch.
func (f *sinkFile) cutAndWrite(size int, s string) {
	f.data = append(f.data[:size:size], s...)
}

func readAll(t *testing.T, r io.Reader) (string, error) {
	t.Helper()
	var out bytes.Buffer
	_, err := io.Copy(&out, r)
	return out.String(), err
}

// A torn write read in part, cut back and followed by a new batch: the
// part is not joined to the new bytes at its offset into one line the
// sink never wrote; the new lines are read whole.
func TestLineReaderDropsATornLineCutWhileRead(t *testing.T) {
	f := &sinkFile{data: []byte("line-1\n{\"torn\":")}
	f.after = func(n int) {
		if n == 1 {
			f.cutAndWrite(len("line-1\n"), "line-2-after-the-rollback\nline-3\n")
		}
	}
	got, err := readAll(t, audit.NewLineReader(f, 0))
	if err != nil {
		t.Fatal(err)
	}
	if want := "line-1\nline-2-after-the-rollback\nline-3\n"; got != want {
		t.Errorf("read %q, want %q (a plain reader gives line-1 and the spliced {\"torn\":r-the-rollback)", got, want)
	}
}

// Lines already handed out that the sink cuts (read after they were
// written, before the write failed): the reader fails with
// ErrCutBelowRead, whether the file is shorter or grew back past them.
func TestLineReaderCutBelowLinesRead(t *testing.T) {
	for _, tc := range []struct{ name, next string }{
		{"shorter", ""},
		{"grown-back", "other-line-2\nother-line-3\nother-line-4\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &sinkFile{data: []byte("line-1\nline-2\npart")}
			f.after = func(n int) {
				if n == 1 {
					f.cutAndWrite(len("line-1\n"), tc.next)
				}
			}
			got, err := readAll(t, audit.NewLineReader(f, 0))
			if !errors.Is(err, audit.ErrCutBelowRead) {
				t.Fatalf("err = %v, want ErrCutBelowRead", err)
			}
			if want := "line-1\nline-2\n"; got != want {
				t.Errorf("read %q before the error, want %q", got, want)
			}
			if !strings.Contains(err.Error(), "cut back below the lines already read") || !strings.Contains(err.Error(), "run the command again") {
				t.Errorf("error %q does not say what happened and what to do", err)
			}
		})
	}
}

// A line being written is joined to its rest when the rest follows it;
// at the end of the file the incomplete last line is handed out last, as
// the file then holds it, or not at all once it is cut.
func TestLineReaderGrowthAndTail(t *testing.T) {
	f := &sinkFile{data: []byte("line-1\nline-")}
	f.after = func(n int) {
		if n == 1 {
			f.data = append(f.data, "2\nline-3 being wri"...)
		}
	}
	got, err := readAll(t, audit.NewLineReader(f, 0))
	if err != nil {
		t.Fatal(err)
	}
	if want := "line-1\nline-2\nline-3 being wri"; got != want {
		t.Errorf("read %q, want %q", got, want)
	}

	f = &sinkFile{data: []byte("line-1\ntorn")}
	f.after = func(n int) {
		if n == 1 {
			f.cutAndWrite(len("line-1\n"), "")
		}
	}
	got, err = readAll(t, audit.NewLineReader(f, 0))
	if err != nil {
		t.Fatal(err)
	}
	if want := "line-1\n"; got != want {
		t.Errorf("read %q, want %q (the torn tail cut before the end was seen)", got, want)
	}
}

// From an offset, as trace.Live reads on from where it stopped.
func TestLineReaderFromOffset(t *testing.T) {
	f := &sinkFile{data: []byte("line-1\nline-2\nline-3\n")}
	got, err := readAll(t, audit.NewLineReader(f, 7))
	if err != nil {
		t.Fatal(err)
	}
	if want := "line-2\nline-3\n"; got != want {
		t.Errorf("read %q, want %q", got, want)
	}
}

// A file that does not change is read as it is, however its lines fall
// across reads, including lines longer than MaxLineBytes.
func TestLineReaderReadsAFileAsItIs(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 40; i++ {
		var b bytes.Buffer
		for b.Len() < 300<<10 {
			n := rng.IntN(2000)
			if rng.IntN(50) == 0 {
				n = rng.IntN(3 * audit.MaxLineBytes)
			}
			b.WriteString(strings.Repeat("x", n))
			b.WriteByte('\n')
		}
		if i%2 == 1 {
			b.WriteString("incomplete")
		}
		f := &sinkFile{data: b.Bytes()}
		got, err := readAll(t, audit.NewLineReader(f, 0))
		if err != nil {
			t.Fatal(err)
		}
		if got != b.String() {
			t.Fatalf("file %d: read %d bytes, differing from the file's %d", i, len(got), b.Len())
		}
	}
}

// A line longer than one read (but under MaxLineBytes) being written when
// the file is cut back: it is checked across several reads, and dropped
// (the complete line before it unchanged) or the read fails (changed).
func TestLineReaderLongLineCut(t *testing.T) {
	long := strings.Repeat("z", 300<<10)
	for _, tc := range []struct {
		name, rewrite, want string
		cut                 bool
	}{
		{"torn-long-line", "line-1\nnew-line\n", "line-1\nnew-line\n", false},
		{"below-lines-read", "LINE-X\nnew-line\n", "line-1\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := &sinkFile{data: []byte("line-1\n" + long[:100<<10])}
			f.after = func(n int) {
				switch n {
				case 1:
					f.data = append(f.data, long[100<<10:]...) // still no newline
				case 3:
					f.cutAndWrite(0, tc.rewrite)
				}
			}
			got, err := readAll(t, audit.NewLineReader(f, 0))
			if tc.cut != errors.Is(err, audit.ErrCutBelowRead) || !tc.cut && err != nil {
				t.Fatalf("err = %v, want ErrCutBelowRead: %v", err, tc.cut)
			}
			if got != tc.want {
				t.Errorf("read %q, want %q", got, tc.want)
			}
		})
	}
}
