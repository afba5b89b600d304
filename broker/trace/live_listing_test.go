package trace_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/trace"
)

// TestLiveKeepsRotatedFileMissedByListing: a listing of the audit
// directory left out a rotated file still there (NFS and some FUSE file
// systems can). Live took the name missing for a file deleted by
// retention and forgot it had read it: the next listing, naming it again,
// made it read the whole file again. It now forgets a name only once the
// file is gone, and still forgets one retention deleted.
func TestLiveKeepsRotatedFileMissedByListing(t *testing.T) {
	dir := t.TempDir()
	lines := sealed(t, "chn_miss", 0, fixtureEvents())
	path := writeLines(t, dir, "audit.jsonl", lines[:5])
	live := refreshedLive(t, trace.LiveOptions{Path: path})
	r1 := path + "." + at(time.Hour).Format(trace.RotatedLayout)
	appendLines(t, path, lines[5:8])
	if err := os.Rename(path, r1); err != nil {
		t.Fatal(err)
	}
	writeLines(t, dir, "audit.jsonl", lines[8:12])
	if err := live.Refresh(); err != nil { // reads r1's rest, then the new live file
		t.Fatal(err)
	}
	if n := trace.DoneFiles(live); n != 1 {
		t.Fatalf("fixture: Live remembers %d rotated files read, want 1 (%s)", n, filepath.Base(r1))
	}

	missed := 0
	trace.SetRotatedListingHook(live, func(listed []string) []string {
		if !slices.Contains(listed, r1) {
			t.Fatalf("fixture: the refresh listed %v, not %s", listed, r1)
		}
		missed++
		return slices.DeleteFunc(slices.Clone(listed), func(p string) bool { return p == r1 })
	})
	appendLines(t, path, lines[12:14])
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	if missed == 0 {
		t.Fatal("fixture: the refresh did not list the rotated files")
	}
	if n := trace.DoneFiles(live); n != 1 {
		t.Errorf("after a listing that missed %s, still there, Live remembers %d rotated files read, want 1", filepath.Base(r1), n)
	}

	// The next listing names it again: it is not read again.
	trace.SetRotatedListingHook(live, nil)
	reads := &readsOf{from: map[string]int64{}}
	trace.SetReadWrapper(live, reads.wrap)
	appendLines(t, path, lines[14:])
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	if off := reads.lowest(filepath.Base(r1)); off != reads.lowest("none") {
		t.Errorf("the refresh after the listing read %s again from offset %d, want it not read", filepath.Base(r1), off)
	}
	want := writeLines(t, t.TempDir(), "audit.jsonl", lines)
	sameAsFreshRead(t, live, want, 0)

	// Deleted by retention: forgotten (a name per rotation is not kept for
	// the life of the process).
	if err := os.Remove(r1); err != nil {
		t.Fatal(err)
	}
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	if n := trace.DoneFiles(live); n != 0 {
		t.Errorf("after retention deleted %s, Live remembers %d rotated files read, want 0", filepath.Base(r1), n)
	}
}
