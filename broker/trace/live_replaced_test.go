package trace_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/trace"
)

// replaceFile puts a new file holding lines at path (written to the side
// and renamed over it, as a restore or an editor does): a new inode under
// the same name, and no rotated file holding the old one.
func replaceFile(t *testing.T, path string, lines [][]byte) {
	t.Helper()
	tmp := writeLines(t, filepath.Dir(path), "replacement.tmp", lines)
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// TestLiveFileReplacedWithoutRotation: the live audit file was replaced by
// another file under its name, with no rotation (restored from a backup,
// or replaced by hand): Live took the new file for the next one of a
// rotation and indexed it after the old one's events, so the index held
// the events of a file no longer on disk, and a restored backup's events
// twice (every issuance, use and revocation of it shown, and counted by
// the report, two times). The file tailed, found neither under the name
// nor among the rotated files, while no rotated file appeared, now makes
// Live rebuild its index from the files: it holds what they hold.
func TestLiveFileReplacedWithoutRotation(t *testing.T) {
	lines := sealed(t, "chn_rep", 0, fixtureEvents())
	other := sealed(t, "chn_other", 0, fixtureEvents())
	for _, c := range []struct {
		name     string
		rotated  bool     // a rotated file read before, still there
		with     [][]byte // the new file
		appended [][]byte // written to the new file after the first refresh
	}{
		{"restored-backup", false, lines[:3], lines[3:7]},
		{"restored-backup-after-rotation", true, lines[:6], lines[6:9]},
		{"other-file", false, other[:4], other[4:6]},
		{"other-file-after-rotation", true, other[:12], other[12:]},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "audit.jsonl")
			if c.rotated {
				writeLines(t, dir, "audit.jsonl."+at(time.Hour).Format(trace.RotatedLayout), lines[:4])
				writeLines(t, dir, "audit.jsonl", lines[4:8])
			} else {
				writeLines(t, dir, "audit.jsonl", lines[:5])
			}
			live, err := trace.NewLive(trace.LiveOptions{Path: path})
			if err != nil {
				t.Fatal(err)
			}
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			replaceFile(t, path, c.with)
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			sameAsFreshRead(t, live, path, 0)
			appendLines(t, path, c.appended)
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			sameAsFreshRead(t, live, path, 0)
		})
	}
}

// TestLiveRotatedFileGoneBeforeRefresh: a rotation whose rotated file
// retention deleted before Live looked (no rotated files kept) leaves the
// same trace as a replacement: the file tailed is gone and no rotated file
// appeared. The index is rebuilt, and holds what the files hold (the old
// file's events are gone from the log); when another rotated file
// appeared meanwhile (TestLiveRefreshSkipsRotatedFileDeleted) there was a
// rotation, and the events read of the old file are kept, as for any
// rotated file deleted after it was read.
func TestLiveRotatedFileGoneBeforeRefresh(t *testing.T) {
	lines := sealed(t, "chn_gone", 0, fixtureEvents())
	dir := t.TempDir()
	path := writeLines(t, dir, "audit.jsonl", lines[:5])
	live, err := trace.NewLive(trace.LiveOptions{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	r := path + "." + at(time.Hour).Format(trace.RotatedLayout)
	if err := os.Rename(path, r); err != nil {
		t.Fatal(err)
	}
	writeLines(t, dir, "audit.jsonl", lines[5:9])
	if err := os.Remove(r); err != nil {
		t.Fatal(err)
	}
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	sameAsFreshRead(t, live, path, 0)
	if got := seqs(live.Index().Events()); slices.Contains(got, "chn_gone/2/issue") {
		t.Errorf("events %v: the deleted file's are still indexed", got)
	}
}
