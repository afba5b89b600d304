package trace_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/trace"
)

// The file being tailed is rotated after a refresh listed the rotated
// files and before it looked at the audit file: the refresh finds a new
// file under the path. The rest of the old file (now under its rotated
// name) must be read from where the tail stopped, once, and in the same
// refresh: not re-read from its start at the next one (every event in it
// twice), and not left out of the answer the refresh served.
func TestLiveRotationRacingRefresh(t *testing.T) {
	dir := t.TempDir()
	lines := sealed(t, "chn_race", 0, fixtureEvents())
	path := writeLines(t, dir, "audit.jsonl", lines[:5])
	live := refreshedLive(t, trace.LiveOptions{Path: path})
	if st := live.Index().Stats(); st.Events != 4 {
		t.Fatalf("Stats() after the first 5 lines = %+v, want 4 kept events", st)
	}

	rotated := path + "." + at(time.Hour).Format(trace.RotatedLayout)
	raced := false
	trace.SetAfterListHook(live, func() {
		if raced {
			return
		}
		raced = true
		// The sink writes three more lines, rotates, and goes on in a
		// new file.
		appendLines(t, path, lines[5:8])
		if err := os.Rename(path, rotated); err != nil {
			t.Fatal(err)
		}
		writeLines(t, dir, "audit.jsonl", lines[8:])
	})
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	if !raced {
		t.Fatal("the refresh did not call the hook")
	}
	// 16 lines, of which a policy_load and an admin event are not kept.
	if st := live.Index().Stats(); st.Events != 14 || st.Skipped != 0 {
		t.Errorf("Stats() after the refresh the rotation raced = %+v, want every kept event once (14)", st)
	}
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	if st := live.Index().Stats(); st.Events != 14 || st.Skipped != 0 {
		t.Errorf("Stats() a refresh later = %+v, want every kept event once (14)", st)
	}
	res, err := live.Trace(context.Background(), "use_U1")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"use:use_U1", "use_result:use_U1", "shared_use_suspected:req_U2"}
	if diff := cmp.Diff(want, summarize(res).Uses); diff != "" {
		t.Errorf("Trace(use_U1).Uses = got, want want, each once (-want +got):\n%s", diff)
	}
}

// The first refresh, with no file tailed yet, raced by a rotation after
// it listed the rotated files: the old file, now under its rotated name,
// was read only at the next call, after the new file's lines.
func TestLiveRotationRacingFirstRefresh(t *testing.T) {
	dir := t.TempDir()
	lines := sealed(t, "chn_race", 0, fixtureEvents())
	path := writeLines(t, dir, "audit.jsonl", lines[:8])
	live, err := trace.NewLive(trace.LiveOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	raced := false
	trace.SetAfterListHook(live, func() {
		if raced {
			return
		}
		raced = true
		if err := os.Rename(path, path+"."+at(time.Hour).Format(trace.RotatedLayout)); err != nil {
			t.Fatal(err)
		}
		writeLines(t, dir, "audit.jsonl", lines[8:])
	})
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	if _, err := live.Index().Lookup("use_U1"); err != nil {
		t.Errorf("Lookup(use_U1), in the file rotated during the refresh: %v", err)
	}
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	sameAsFreshRead(t, live, path, 0)
}
