package trace_test

import (
	"os"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/trace"
)

// TestLiveRebuildSkipsRotatedFileDeleted: retention deleted a rotated file
// after a rebuild listed the rotated files and before it opened that one.
// The rebuild used to fail (the call that needed it answered 503
// audit_unreadable; the next one, listing again, succeeded); the file's
// events are gone from the log, so it is now skipped and the rebuild
// publishes what the files hold.
func TestLiveRebuildSkipsRotatedFileDeleted(t *testing.T) {
	f := newRebuildFixture(t)
	f.cut()
	lists := 0
	deleted := false
	trace.SetAfterListRotatedHook(f.live, func(listed []string) {
		if lists++; lists != 2 { // the second: the rebuild's
			return
		}
		if !slices.Contains(listed, f.rotated) {
			t.Fatalf("fixture: the rebuild listed %v, not %s", listed, f.rotated)
		}
		if err := os.Remove(f.rotated); err != nil {
			t.Fatal(err)
		}
		deleted = true
	})
	reads := &readsOf{from: map[string]int64{}}
	trace.SetReadWrapper(f.live, reads.wrap)
	if err := f.live.Refresh(); err != nil {
		t.Fatalf("Refresh() with a rotated file deleted by retention during the rebuild = %v, want it skipped", err)
	}
	if !deleted || reads.lowest("audit.jsonl") != 0 {
		t.Fatalf("fixture: the refresh did not rebuild after deleting %s (%d listings)", f.rotated, lists)
	}
	likeFresh(t, f.live, f.path, []string{"iss_failed", "use_failed", "iss_big_0500"}, []string{"iss_next1", "iss_big_0300", "iss_big_0499"})
	trace.SetAfterListRotatedHook(f.live, nil)
	if err := f.live.Refresh(); err != nil {
		t.Fatal(err)
	}
	likeFresh(t, f.live, f.path, nil, []string{"iss_next1"})
}

// TestLiveRefreshSkipsRotatedFileDeleted: the same on a refresh that reads
// on (no rebuild): the live file was rotated twice since the last call,
// and retention deleted the first rotated file (the old live file, whose
// rest was not read yet) after the refresh listed it. The refresh used to
// fail; it now reads the files still there, and the lines of the deleted
// one it had not read are not in the index.
func TestLiveRefreshSkipsRotatedFileDeleted(t *testing.T) {
	dir := t.TempDir()
	lines := sealed(t, "chn_ret", 0, fixtureEvents())
	path := writeLines(t, dir, "audit.jsonl", lines[:5])
	live := refreshedLive(t, trace.LiveOptions{Path: path})
	r1 := path + "." + at(time.Hour).Format(trace.RotatedLayout)
	r2 := path + "." + at(2*time.Hour).Format(trace.RotatedLayout)
	appendLines(t, path, lines[5:8])
	if err := os.Rename(path, r1); err != nil {
		t.Fatal(err)
	}
	writeLines(t, dir, "audit.jsonl", lines[8:12])
	if err := os.Rename(path, r2); err != nil {
		t.Fatal(err)
	}
	writeLines(t, dir, "audit.jsonl", lines[12:])
	deleted := false
	trace.SetAfterListRotatedHook(live, func(listed []string) {
		if deleted {
			return
		}
		if !slices.Equal(listed, []string{r1, r2}) {
			t.Fatalf("fixture: the refresh listed %v, want %s and %s", listed, r1, r2)
		}
		if err := os.Remove(r1); err != nil {
			t.Fatal(err)
		}
		deleted = true
	})
	if err := live.Refresh(); err != nil {
		t.Fatalf("Refresh() with a rotated file deleted by retention after the listing = %v, want it skipped", err)
	}
	if !deleted {
		t.Fatal("fixture: the refresh did not list the rotated files")
	}
	// The index holds what was read of the old live file before, then the
	// files still there: as one file of those lines read from scratch.
	want := writeLines(t, t.TempDir(), "audit.jsonl", append(slices.Clone(lines[:5]), lines[8:]...))
	sameAsFreshRead(t, live, want, 0)
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	sameAsFreshRead(t, live, want, 0)
}
