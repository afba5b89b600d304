package trace_test

import (
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
			// What a refresh that starts now reads of the file.
			fresh, err := trace.NewLive(trace.LiveOptions{Path: path})
			if err != nil {
				t.Fatal(err)
			}
			if err := fresh.Refresh(); err != nil {
				t.Fatal(err)
			}
			if got, want := live.Index().Stats(), fresh.Index().Stats(); got != want || got.Skipped != 0 {
				t.Errorf("Stats() = %+v, want %+v: every kept event of the file as it is, once, and no unreadable line", got, want)
			}
			if got, want := seqs(live.Index().Events()), seqs(fresh.Index().Events()); !slices.Equal(got, want) {
				t.Errorf("events (chain/seq/type) = %v, want %v", got, want)
			}
		})
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
