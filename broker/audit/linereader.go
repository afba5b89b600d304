package audit

import (
	"bytes"
	"errors"
	"io"
	"slices"
)

// ErrCutBelowRead is returned by a LineReader whose file no longer holds
// the lines it has handed out: a running broker's sink cut the file back
// to its last durable line (a failed or torn write rolled back) after the
// lines past that point were read. What was read of them is no longer in
// the file; reading again from the start sees the file as it is now.
var ErrCutBelowRead = errors.New("the file was cut back below the lines already read (a running broker dropped a write that failed after it was read): run the command again")

// lineChunk is how much a LineReader reads at a time.
const lineChunk = 64 << 10

// LineReader reads an audit file that a running broker may be writing, as
// an io.Reader that hands out a line only once its newline is read, and
// only while the file still holds what was read before it.
//
// A sink appends lines and, when a write fails or is torn, cuts the file
// back to its last durable line and writes on from there (adapters/
// auditfile). A plain reader that has read part of a line (a write in
// progress, or the torn bytes) and reads on after such a cut gets the new
// bytes at its offset: the middle of a new line, which it joins to its
// part into one line the broker never wrote (a false chain problem for
// audit verify, an unreadable line for trace). So after each read past
// what it has (and at the end of the file) a LineReader reads again the
// bytes it holds back, the incomplete line and the last complete line
// before it, and compares them with what it read there:
//
//   - all the same: the new bytes follow them; lines they complete are
//     handed out;
//   - the complete line the same, the incomplete one not (the torn bytes
//     were cut, the line written again, or not yet): the incomplete line
//     is dropped and read again from its start, which the file still
//     holds;
//   - the complete line changed or cut: the file was cut back below
//     lines already handed out, and Read fails with ErrCutBelowRead.
//
// At the end of the file, the incomplete last line (a write in progress)
// is handed out last, as the file holds it then, without a newline:
// readers that treat such a line as being written (Verify with
// Input.Live) or skip it (trace) see it as before. A line longer than
// MaxLineBytes is handed out as it comes, unchecked: its readers skip it
// however it ends. The bytes a LineReader holds back are those of one line
// and the one before it (at most 2×MaxLineBytes, plus a read); it reads
// at least as many as it holds at a time, so a long line is rechecked a
// few times, not once per 64 KiB.
//
// What this guarantees, for a file that is only appended to and cut back
// to the end of a line (what a sink does), each cut made between two reads
// of the LineReader (ReadAt calls), not during one:
//
//   - no line handed out joins bytes read before a cut to bytes read
//     after it: the held bytes of a line that spans two reads are read
//     again after the second and compared;
//   - a cut below a line handed out, made before the last of these
//     re-reads (the one at the end of the file), makes Read fail with
//     ErrCutBelowRead once the lines read before it are handed out: it
//     also cuts the last complete line handed out, which is held and read
//     again at every read (unless the sink wrote the very same bytes
//     there again).
//
// And what it does not:
//
//   - one read is not atomic against a cut: a cut and the writes after it
//     made while a read is under way can give that read bytes from before
//     and after them, and a line wholly inside it, before its last
//     complete line, is handed out without being read again (only the held
//     bytes are);
//   - a line longer than MaxLineBytes is not checked at all (above);
//   - nothing before the offset the LineReader starts at is checked: a
//     reader that goes on from where an earlier one stopped (trace.Live,
//     the reconcile index) checks the line before it itself;
//   - once Read has returned io.EOF nothing more is checked: the file may
//     be cut below what was handed out at any time after.
type LineReader struct {
	f File
	// buf holds the file's bytes [base, end): from the start of the last
	// complete line handed out (or where reading began) to where the next
	// read starts.
	buf  []byte
	base int64
	end  int64
	out  int64 // handed out up to here
	nl   int64 // the complete lines end here (base ≤ nl ≤ end)
	long bool  // [nl, end) is part of a line longer than MaxLineBytes
	eof  bool  // the end of the file was read: [nl, end) is the last line
	err  error
	old  []byte // scratch for the re-read (lineChunk)
}

// File is what a LineReader reads: an audit file (an *os.File).
type File interface {
	io.ReaderAt
}

// NewLineReader returns a LineReader of f from offset off, which must be
// the start of a line (0, or just after a newline).
func NewLineReader(f File, off int64) *LineReader {
	return &LineReader{f: f, base: off, end: off, out: off, nl: off}
}

// Read hands out complete lines (and, at the end of the file, the
// incomplete last line) as described on LineReader. It returns
// ErrCutBelowRead, or an error reading the file, once every byte that
// may be handed out has been.
func (r *LineReader) Read(p []byte) (int, error) {
	for {
		ready := r.nl
		if r.eof || r.long {
			ready = r.end
		}
		if r.out < ready {
			n := copy(p, r.buf[r.out-r.base:ready-r.base])
			r.out += int64(n)
			return n, nil
		}
		if r.err != nil {
			return 0, r.err
		}
		if r.eof {
			return 0, io.EOF
		}
		r.err = r.fill()
	}
}

// fill reads what follows end and checks, as described on LineReader,
// that the file still holds the bytes before it. It sets eof when there
// was nothing more.
func (r *LineReader) fill() error {
	r.compact()
	for {
		start := len(r.buf)
		// At least as much as is held: a long line then takes a few
		// reads, each rechecking what is held, not one per lineChunk.
		want := max(lineChunk, start)
		r.buf = slices.Grow(r.buf, want)[:start+want]
		n, err := r.f.ReadAt(r.buf[start:], r.end)
		r.buf = r.buf[:start+n]
		if err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		if start > 0 {
			res, err := r.recheck(start)
			if err != nil {
				return err
			}
			switch res {
			case tailChanged:
				// Read the incomplete line again from its start.
				r.buf, r.end, r.long = r.buf[:r.nl-r.base], r.nl, false
				continue
			case cut:
				r.buf = r.buf[:start]
				return ErrCutBelowRead
			}
		}
		if n == 0 {
			r.eof = true
			return nil
		}
		r.end += int64(n)
		if i := bytes.LastIndexByte(r.buf[start:], '\n'); i >= 0 {
			r.nl, r.long = r.end-int64(n)+int64(i)+1, false
		}
		if !r.long && r.end-r.nl > MaxLineBytes {
			r.long = true // handed out as it comes
		}
		return nil
	}
}

// compact drops what is handed out, except the last complete line (kept
// for recheck), and a long line's bytes.
func (r *LineReader) compact() {
	keep := r.nl
	if r.long {
		keep = r.end
	} else if r.nl > r.base {
		keep = r.base + int64(bytes.LastIndexByte(r.buf[:r.nl-r.base-1], '\n')+1)
	}
	if keep > r.base {
		r.buf = r.buf[:copy(r.buf, r.buf[keep-r.base:])]
		r.base = keep
	}
}

type recheckResult int

const (
	same recheckResult = iota
	tailChanged
	cut
)

// recheck reads the file's bytes [base, end) again (the first held bytes
// of buf), lineChunk at a time, and compares them with buf.
func (r *LineReader) recheck(held int) (recheckResult, error) {
	if r.old == nil {
		r.old = make([]byte, lineChunk)
	}
	complete := int(r.nl - r.base)
	for pos := 0; pos < held; {
		old := r.old[:min(lineChunk, held-pos)]
		n, err := r.f.ReadAt(old, r.base+int64(pos))
		if err != nil && !errors.Is(err, io.EOF) {
			return same, err
		}
		if i := mismatch(old[:n], r.buf[pos:pos+n]); i >= 0 || n < len(old) {
			if i < 0 {
				i = n // the file ends there
			}
			if pos+i < complete {
				return cut, nil
			}
			return tailChanged, nil
		}
		pos += n
	}
	return same, nil
}

// mismatch returns the index of the first byte where a and b (of the same
// length) differ, -1 when they do not.
func mismatch(a, b []byte) int {
	if bytes.Equal(a, b) {
		return -1
	}
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}
