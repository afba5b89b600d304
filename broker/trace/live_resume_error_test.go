package trace_test

import (
	"errors"
	"io"
	"math"
	"os"
	"slices"
	"testing"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

var errDisk = errors.New("injected: input/output error")

// failingReader fails every ReadAt while *broken.
type failingReader struct {
	r      io.ReaderAt
	broken *bool
}

func (f failingReader) ReadAt(b []byte, off int64) (int, error) {
	if *f.broken {
		return 0, errDisk
	}
	return f.r.ReadAt(b, off)
}

// TestLiveResumeReadErrorFailsRefresh: an I/O error while Live reads the
// file back after a cut (to find the last line it still holds) used to be
// taken for "holds none of them". With the recent lines at the file's
// start, Live then dropped every event of the file from the published
// index and read it again from its start (when that read failed too, the
// index readers use lacked every event of the file until the next call);
// further on, it read every file again (a rebuild). The refresh now fails
// with the error, nothing dropped, and the next call resumes from the last
// line held.
func TestLiveResumeReadErrorFailsRefresh(t *testing.T) {
	for _, tc := range []struct {
		name string
		n    int // issue events before the failed batch
		// every read of the file fails, not only resume's
		allReads bool
	}{
		{name: "recent-lines-from-the-start", n: 100, allReads: true},
		{name: "recent-lines-from-the-start-resume-read-only", n: 100},
		{name: "recent-lines-further-on", n: 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			durable, failed, next := bigLog(t, tc.n)
			dir := t.TempDir()
			path := writeLines(t, dir, "audit.jsonl", append(slices.Clone(durable), failed...))
			live := refreshedLive(t, trace.LiveOptions{Path: path})
			before := seqs(live.Index().Events())
			// The sink cuts the failed batch and writes the next one.
			writeLines(t, dir, "audit.jsonl", durable)
			appendLines(t, path, next)

			broken := true
			resumeReads := breakResumeReads(live, &broken)
			reads := &readsOf{from: map[string]int64{}}
			trace.SetReadWrapper(live, func(f *os.File) audit.File {
				w := reads.wrap(f)
				if tc.allReads {
					return failingReader{r: w, broken: &broken}
				}
				return w
			})
			err := live.Refresh()
			if *resumeReads == 0 {
				t.Fatal("fixture: the refresh did not read the file back after the cut")
			}
			if !errors.Is(err, errDisk) {
				t.Errorf("Refresh() with the read back after the cut failing = %v, want the I/O error", err)
			}
			if got := seqs(live.Index().Events()); !slices.Equal(got, before) {
				t.Errorf("the index after the refresh that failed holds %d events, not the %d it held (want nothing dropped, nothing read)", len(got), len(before))
			}
			if _, err := live.Index().Lookup("iss_big_0000"); err != nil {
				t.Errorf("Lookup(iss_big_0000), which the file holds, after the refresh that failed: %v", err)
			}
			if got := reads.lowest("audit.jsonl"); got != math.MaxInt64 {
				t.Errorf("the refresh that failed read the file from offset %d, want nothing read again", got)
			}

			broken = false
			resumesFromDurable(t, live, path, durable, []string{"iss_failed", "use_failed"}, []string{"iss_next1"})
		})
	}
}

// TestLiveResumeReadErrorWhileReading: the same when the cut is seen while
// the refresh reads (the audit.LineReader's re-check) and the read back
// fails: the refresh fails with the error rather than rebuilding, and the
// next call resumes from the last line held.
func TestLiveResumeReadErrorWhileReading(t *testing.T) {
	durable, failed, next := bigLog(t, 1000)
	dir := t.TempDir()
	path := writeLines(t, dir, "audit.jsonl", append(slices.Clone(durable), failed...))
	live := refreshedLive(t, trace.LiveOptions{Path: path})
	appendLines(t, path, next[:1])
	broken := true
	resumeReads := breakResumeReads(live, &broken)
	reads := &readsOf{from: map[string]int64{}}
	cut := false
	trace.SetReadWrapper(live, func(f *os.File) audit.File {
		w := reads.wrap(f).(*lowestRead)
		w.after = func(n int) {
			if n == 1 && !cut {
				cut = true
				writeLines(t, dir, "audit.jsonl", durable)
				appendLines(t, path, next)
			}
		}
		return w
	})
	err := live.Refresh()
	if !cut || *resumeReads == 0 {
		t.Fatalf("fixture: cut %v, %d reads back", cut, *resumeReads)
	}
	if !errors.Is(err, errDisk) {
		t.Errorf("Refresh() with the read back after the cut failing = %v, want the I/O error", err)
	}
	if got := reads.lowest("audit.jsonl"); got < size(durable) {
		t.Errorf("the refresh that failed read the file from offset %d, want none below %d (no rebuild)", got, size(durable))
	}
	if _, err := live.Index().Lookup("iss_big_0000"); err != nil {
		t.Errorf("Lookup(iss_big_0000), which the file holds, after the refresh that failed: %v", err)
	}

	broken = false
	resumesFromDurable(t, live, path, durable, []string{"iss_failed"}, nil)
}

// breakResumeReads makes each read back after a cut (resume's) fail while
// *broken, and returns the number of them made.
func breakResumeReads(live *trace.Live, broken *bool) *int {
	n := new(int)
	trace.SetResumeReadWrapper(live, func(r io.ReaderAt) io.ReaderAt {
		*n++
		return failingReader{r: r, broken: broken}
	})
	return n
}

// resumesFromDurable checks that the next refresh, the file reading again,
// reads it on from the end of durable (the last line it still holds) and
// leaves the index one read from scratch, without gone, with found.
func resumesFromDurable(t *testing.T, live *trace.Live, path string, durable [][]byte, gone, found []string) {
	t.Helper()
	reads := &readsOf{from: map[string]int64{}}
	trace.SetReadWrapper(live, reads.wrap)
	if err := live.Refresh(); err != nil {
		t.Fatalf("Refresh() once the file reads again = %v", err)
	}
	if got, want := reads.lowest("audit.jsonl"), size(durable); got != want {
		t.Errorf("read from offset %d after the cut, want %d (the end of the last line still there)", got, want)
	}
	likeFresh(t, live, path, gone, found)
}
