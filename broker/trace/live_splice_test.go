package trace_test

import (
	"bytes"
	"fmt"
	"os"
	"slices"
	"testing"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// afterReads calls after(n) once each read of f (Read or ReadAt) returns.
type afterReads struct {
	f     *os.File
	n     int
	after func(n int)
}

func (a *afterReads) Read(p []byte) (int, error) {
	n, err := a.f.Read(p)
	a.n++
	a.after(a.n)
	return n, err
}

func (a *afterReads) ReadAt(p []byte, off int64) (int, error) {
	n, err := a.f.ReadAt(p, off)
	a.n++
	a.after(a.n)
	return n, err
}

// The refresh has read the first lines and part of the next one (a torn
// write); the sink then cuts the file back to its last durable line and
// writes its next batch, which grows the file past what was read. The part
// must not be joined to the new bytes at its offset into one line the
// sink never wrote (an unreadable line, and the event of the line the new
// bytes belong to lost); the new lines are indexed whole. And when the
// cut goes below lines already indexed, the index is rebuilt from the
// file as it is.
func TestLiveTornTailCutWhileReading(t *testing.T) {
	lines := sealed(t, "chn_torn", 0, fixtureEvents())
	other := sealed(t, "chn_other", 0, fixtureEvents())
	for _, tc := range []struct {
		name string
		read int      // whole lines in the file when the refresh reads it
		keep int      // whole lines the cut leaves
		next [][]byte // the sink's next batch
	}{
		{name: "torn-tail", read: 5, keep: 5, next: lines[5:]},
		// The lines from the fourth on were read, then cut (a write that
		// failed after they were in the file); the next batch is other
		// lines.
		{name: "below-lines-read", read: 5, keep: 3, next: lines[4:]},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := writeLines(t, dir, "audit.jsonl", lines[:tc.read])
			torn := other[tc.read][:len(other[tc.read])/2]
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(torn); err != nil {
				t.Fatal(err)
			}
			f.Close()
			live, err := trace.NewLive(trace.LiveOptions{Path: path})
			if err != nil {
				t.Fatal(err)
			}
			cut := false
			trace.SetReadWrapper(live, func(f *os.File) audit.File {
				return &afterReads{f: f, after: func(n int) {
					if n != 1 || cut {
						return
					}
					cut = true
					// The sink's rollback, then its next batch.
					writeLines(t, dir, "audit.jsonl", lines[:tc.keep])
					appendLines(t, path, tc.next)
				}}
			})
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			if !cut {
				t.Fatal("the refresh did not read through the wrapper")
			}
			sameAsFreshRead(t, live, path, 0)
		})
	}
}

// sameAsFreshRead checks that live's index is what a refresh that starts
// now makes of the file at path (every kept event of the file as it is,
// once) with skipped unreadable lines.
func sameAsFreshRead(t *testing.T, live *trace.Live, path string, skipped int64) {
	t.Helper()
	fresh, err := trace.NewLive(trace.LiveOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if err := fresh.Refresh(); err != nil {
		t.Fatal(err)
	}
	if got, want := live.Index().Stats(), fresh.Index().Stats(); got != want || got.Skipped != skipped {
		t.Errorf("Stats() = %+v, want %+v: every kept event of the file as it is, once, and %d unreadable lines", got, want, skipped)
	}
	if got, want := seqs(live.Index().Events()), seqs(fresh.Index().Events()); !slices.Equal(got, want) {
		t.Errorf("events (chain/seq/type) = %v, want %v", got, want)
	}
}

// seqs names each event by its chain, seq and type.
func seqs(evs []*audit.Event) []string {
	out := make([]string, len(evs))
	for i, ev := range evs {
		out[i] = fmt.Sprintf("%s/%d/%s", ev.Chain, ev.Seq, ev.Type)
	}
	return out
}

// The sink cuts the file back below the lines a refresh has just read and
// grows it again past them, right after the read. The next refresh must
// see that the file no longer holds the last line read (and rebuild the
// index): Live used to hash that line by reading it back from the file
// after the read, which then hashed the new bytes, so the next refresh
// took the file for unchanged, kept the lines that were cut and read on
// from the middle of a new line.
func TestLiveCutAndRegrownJustAfterRead(t *testing.T) {
	lines := sealed(t, "chn_read", 0, fixtureEvents())
	other := sealed(t, "chn_other", 0, fixtureEvents())
	dir := t.TempDir()
	path := writeLines(t, dir, "audit.jsonl", lines[:5])
	read, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	live, err := trace.NewLive(trace.LiveOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	cut := false
	trace.SetAfterReadHook(live, func() {
		if cut {
			return
		}
		cut = true
		// The sink's rollback to its third line, then a batch that grows
		// the file past what was read.
		writeLines(t, dir, "audit.jsonl", lines[:3])
		appendLines(t, path, other[2:])
	})
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	if !cut {
		t.Fatal("fixture: the hook was not called")
	}
	if fi, err := os.Stat(path); err != nil || fi.Size() <= read.Size() {
		t.Fatalf("fixture: the file did not grow back past what was read (%v)", err)
	}
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	sameAsFreshRead(t, live, path, 0)
}

// The last line read is longer than audit.MaxLineBytes (skipped as
// unreadable); the file is then rewritten with, in its place, an event
// line followed by the rest of it (the same bytes from its last MiB on),
// and written on: the next refresh must see the change (the whole line
// is compared, not its last MiB) and rebuild the index, which then holds
// the event.
func TestLiveLongLastLineReplaced(t *testing.T) {
	lines := sealed(t, "chn_long", 0, fixtureEvents())
	long := bytes.Repeat([]byte("a"), audit.MaxLineBytes+200<<10)
	dir := t.TempDir()
	path := writeLines(t, dir, "audit.jsonl", append(slices.Clone(lines[:3]), long))
	live := refreshedLive(t, trace.LiveOptions{Path: path})
	if st := live.Index().Stats(); st.Skipped != 1 {
		t.Fatalf("fixture: Stats() = %+v, want the long line skipped", st)
	}
	other := sealed(t, "chn_other", 0, fixtureEvents())[1] // an issue event
	copy(long, append(slices.Clone(other), '\n'))
	writeLines(t, dir, "audit.jsonl", append(slices.Clone(lines[:3]), long))
	appendLines(t, path, lines[3:])
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	// The rest of the long line is still longer than audit.MaxLineBytes.
	sameAsFreshRead(t, live, path, 1)
}
