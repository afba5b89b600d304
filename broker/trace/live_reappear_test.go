package trace_test

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/trace"
)

// TestLiveRotatedFileMovedBack: a rotated file Live had read was moved out
// of the directory (a shipper, an operator) and Live forgot its name (it
// was no longer there: retention, as far as it could tell); moved back
// under the same name, Live took it for a new rotated file and read it
// again, after the live file's lines: every event of it twice in the index
// (each issuance's uses shown, and counted by the report, two times). A
// file read from its start, once Live has read the files, must continue
// the chain of the last event read (same chain, a later seq), as the next
// file of a rotation does; one that does not makes Live rebuild its index
// from the files, which then holds what they hold.
func TestLiveRotatedFileMovedBack(t *testing.T) {
	lines := sealed(t, "chn_back", 0, fixtureEvents())
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	rotated := writeLines(t, dir, "audit.jsonl."+at(time.Hour).Format(trace.RotatedLayout), lines[:6])
	writeLines(t, dir, "audit.jsonl", lines[6:10])
	live := refreshedLive(t, trace.LiveOptions{Path: path})
	away := filepath.Join(t.TempDir(), "shipped")
	if err := os.Rename(rotated, away); err != nil {
		t.Fatal(err)
	}
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	if n := trace.DoneFiles(live); n != 0 {
		t.Fatalf("fixture: Live remembers %d rotated file(s) after the only one was moved away, want 0", n)
	}
	if err := os.Rename(away, rotated); err != nil {
		t.Fatal(err)
	}
	appendLines(t, path, lines[10:12])
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	sameAsFreshRead(t, live, path, 0)
	appendLines(t, path, lines[12:])
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	sameAsFreshRead(t, live, path, 0)
}

// TestLiveFileReplacedWithRotation: the live audit file was replaced under
// its name (a backup restored, another log) and a rotation came before
// Live looked again, so that a rotated file appeared: Live's check for a
// replacement (the file tailed gone, and no rotated file appeared) did not
// apply, and it read the replacement after the events of the file it
// replaced (a backup's twice). Either way round: the replacement rotated
// away (it is the new rotated file), or the file tailed rotated normally
// and the new live file replaced. The first: a rotated file not read
// before, while the file tailed has not rotated, must continue the chain
// of the last line read, as the next file of a rotation whose rotated file
// was deleted does; the replacement does not: the index is rebuilt from
// the files. The second already held what the files hold (the rotated
// file, then the replacement, as a read from scratch has them): a guard.
func TestLiveFileReplacedWithRotation(t *testing.T) {
	lines := sealed(t, "chn_rr", 0, fixtureEvents())
	other := sealed(t, "chn_rr_other", 0, fixtureEvents())
	for _, c := range []struct {
		name string
		with [][]byte // the replacement
		// replacedFirst: the file tailed is replaced, then the
		// replacement rotated away and a new file (the sink's next lines)
		// created; else the file tailed rotates, then the new live file
		// is replaced.
		replacedFirst bool
	}{
		{"backup-then-rotated", lines[:3], true},
		{"other-log-then-rotated", other[:5], true},
		{"rotated-then-backup", lines[:4], false},
		{"rotated-then-other-log", other[:5], false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := writeLines(t, dir, "audit.jsonl", lines[:6])
			live := refreshedLive(t, trace.LiveOptions{Path: path})
			rotated := path + "." + at(time.Hour).Format(trace.RotatedLayout)
			if c.replacedFirst {
				replaceFile(t, path, c.with)
				if err := os.Rename(path, rotated); err != nil {
					t.Fatal(err)
				}
				writeLines(t, dir, "audit.jsonl", lines[8:10])
			} else {
				appendLines(t, path, lines[6:8])
				if err := os.Rename(path, rotated); err != nil {
					t.Fatal(err)
				}
				replaceFile(t, path, c.with)
			}
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			sameAsFreshRead(t, live, path, 0)
			appendLines(t, path, slices.Clone(lines[10:12]))
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			sameAsFreshRead(t, live, path, 0)
		})
	}
}
