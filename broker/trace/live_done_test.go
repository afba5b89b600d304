package trace_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// TestLiveForgetsRotatedFilesDeleted: Live remembers the rotated files it
// has read (so that it reads each once), and used to remember every one
// for the life of the process: one name per rotation, never dropped,
// although retention deletes the files. It now forgets the names a
// listing no longer holds, and still reads each file once: over many
// rotations, with retention keeping the two newest rotated files (each
// listed by several refreshes after it was read), it remembers at most
// those, and the index holds every event written exactly once.
func TestLiveForgetsRotatedFilesDeleted(t *testing.T) {
	const rounds, keep = 40, 2
	evs := make([]*audit.Event, 3*rounds)
	for i := range evs {
		evs[i] = &audit.Event{Type: audit.TypeDeny, RequestID: fmt.Sprintf("req_%04d", i), Outcome: &audit.Outcome{Status: 403, Error: "access_denied", Reason: "no_workload"}}
	}
	lines := sealed(t, "chn_done", 0, evs)
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	live, err := trace.NewLive(trace.LiveOptions{Path: path, MaxEvents: len(evs)})
	if err != nil {
		t.Fatal(err)
	}
	var rotated []string
	written, maxDone := 0, 0
	write := func(n int) {
		appendLines(t, path, lines[written:written+n])
		written += n
	}
	for i := range rounds {
		write(1)
		// The refresh reads the live file's first line.
		if err := live.Refresh(); err != nil {
			t.Fatal(err)
		}
		write(1)
		r := path + "." + at(time.Duration(i)*time.Hour).Format(trace.RotatedLayout)
		if err := os.Rename(path, r); err != nil {
			t.Fatal(err)
		}
		rotated = append(rotated, r)
		// The new live file; the refresh reads the rest of r, then it.
		write(1)
		if err := live.Refresh(); err != nil {
			t.Fatal(err)
		}
		for len(rotated) > keep { // retention
			if err := os.Remove(rotated[0]); err != nil {
				t.Fatal(err)
			}
			rotated = rotated[1:]
		}
		if err := live.Refresh(); err != nil {
			t.Fatal(err)
		}
		maxDone = max(maxDone, trace.DoneFiles(live))
	}
	if n := trace.DoneFiles(live); maxDone > keep {
		t.Errorf("after %d rotations with %d rotated files kept, Live remembers %d rotated files read (at most %d), want at most %d", rounds, keep, n, maxDone, keep)
	}
	want := make([]string, len(lines))
	for i, ev := range evs {
		want[i] = fmt.Sprintf("chn_done/%d/%s", i+1, ev.Type)
	}
	if got := seqs(live.Index().Events()); !slices.Equal(got, want) {
		t.Errorf("events after %d rotations = %v, want each of the %d written once, in order", rounds, got, len(want))
	}
	if st := live.Index().Stats(); st.Events != len(evs) || st.Dropped != 0 || st.Skipped != 0 {
		t.Errorf("Stats() = %+v, want %d events", st, len(evs))
	}
}
