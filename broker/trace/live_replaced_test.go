package trace_test

import (
	"bytes"
	"fmt"
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
			live := refreshedLive(t, trace.LiveOptions{Path: path})
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

// TestLiveRotatedFileGoneBeforeRefresh: rotations whose rotated files
// were deleted before Live looked (retention keeping no rotated file, or a
// shipper moving each one away as soon as it appears): the file tailed is
// gone and no rotated file appeared, as when the live file is replaced.
// Live took each for a replacement and rebuilt its index from the files:
// it dropped every event it had read, of the deleted file and of every
// earlier one, where a refresh made before the deletion keeps them, as it
// keeps those of any rotated file deleted after it was read
// (TestLiveRefreshSkipsRotatedFileDeleted): what the index held depended
// on which came first, the refresh or the deletion, and after a few
// rotations it held the live file only. The new file continues the chain
// of the last line read (its first line is of the same chain, with a
// later seq): it is the next file of a rotation, read on, whether it had
// its first batch or was still empty when Live looked.
func TestLiveRotatedFileGoneBeforeRefresh(t *testing.T) {
	const rounds, per = 3, 4
	lines := denyLines(t, "chn_gone", rounds*per+per)
	for _, state := range []string{"first-batch", "empty"} {
		for _, deletedFirst := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/deleted-before-refresh=%v", state, deletedFirst), func(t *testing.T) {
				dir := t.TempDir()
				path := writeLines(t, dir, "audit.jsonl", lines[:per])
				live := refreshedLive(t, trace.LiveOptions{Path: path})
				for i := 1; i <= rounds; i++ {
					r := path + "." + at(time.Duration(i)*time.Hour).Format(trace.RotatedLayout)
					if err := os.Rename(path, r); err != nil {
						t.Fatal(err)
					}
					next := lines[i*per : (i+1)*per]
					switch state {
					case "first-batch":
						writeLines(t, dir, "audit.jsonl", next)
					case "empty":
						writeLines(t, dir, "audit.jsonl", nil)
					}
					if !deletedFirst {
						if err := live.Refresh(); err != nil {
							t.Fatal(err)
						}
					}
					if err := os.Remove(r); err != nil {
						t.Fatal(err)
					}
					if err := live.Refresh(); err != nil {
						t.Fatal(err)
					}
					if state == "empty" {
						appendLines(t, path, next)
					}
					if err := live.Refresh(); err != nil {
						t.Fatal(err)
					}
				}
				sameAsFreshRead(t, live, writeLines(t, t.TempDir(), "audit.jsonl", lines[:(rounds+1)*per]), 0)
			})
		}
	}
}

// TestLiveFileReplacedNotContinuingChain: a new file under the audit
// file's name is read on as the next file of a rotation only when its
// first line continues the chain of the last line read (same chain, a
// later seq). A first line at or before that seq (a backup restored from
// the last line read on), or not an event, is a replacement: the index is
// rebuilt. While the new file holds no whole line (empty, or its first
// line being written) nothing tells which it is: the index is left as it
// is, and the next call decides.
func TestLiveFileReplacedNotContinuingChain(t *testing.T) {
	lines := denyLines(t, "chn_notcont", 12)
	for _, c := range []struct {
		name    string
		with    []byte // the new file at first
		then    []byte // appended before the next call
		skipped int64
	}{
		{name: "backup-from-last-line-read", with: joinLines(lines[4:7]), then: joinLines(lines[7:9])},
		{name: "not-an-event", with: []byte("not an audit line\n"), then: joinLines(lines[:2]), skipped: 1},
		{name: "empty", with: nil, then: joinLines(lines[:3])},
		{name: "first-line-being-written", with: lines[0][:20], then: append(append([]byte(nil), lines[0][20:]...), '\n')},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := writeLines(t, dir, "audit.jsonl", lines[:5])
			live := refreshedLive(t, trace.LiveOptions{Path: path})
			before := seqs(live.Index().Events())
			tmp := filepath.Join(dir, "replacement.tmp")
			if err := os.WriteFile(tmp, c.with, 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			if bytes.IndexByte(c.with, '\n') < 0 {
				if got := seqs(live.Index().Events()); !slices.Equal(got, before) {
					t.Errorf("with no whole line in the new file yet, events %v, want them as they were, %v", got, before)
				}
			} else {
				sameAsFreshRead(t, live, path, c.skipped)
			}
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(c.then); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			sameAsFreshRead(t, live, path, c.skipped)
		})
	}
}

// joinLines is lines, each with its newline, as one byte slice.
func joinLines(lines [][]byte) []byte {
	var b []byte
	for _, l := range lines {
		b = append(append(b, l...), '\n')
	}
	return b
}

// TestLiveRotationNewFileReusesInode: a rotation whose rotated file was
// deleted before the new file was created (or before a later rotation's):
// the file system may give the new file the inode the deleted one had
// (ext4 does, at once), and Live, which tells files apart by device and
// inode, took it for the file it tails cut back by the sink (the bytes
// before where it stopped no longer the line it read there): it dropped
// the events it had read of the file (or rebuilt its index, when another
// file had been read since), where a new inode keeps them
// (TestLiveRotatedFileGoneBeforeRefresh). A file whose first line
// continues the chain of the last line read is not the tailed file cut
// back (a cut keeps the file's first line, or writes it again with the
// same seq): it is read as the next file. The same inode is made for sure
// by writing the new file's lines over the old file's (O_TRUNC); the
// rename, remove and create of a real rotation gets it where the file
// system reuses inodes.
func TestLiveRotationNewFileReusesInode(t *testing.T) {
	lines := denyLines(t, "chn_reuse", 12)
	for _, c := range []struct {
		name    string
		rotated bool // an older rotated file, read after the tailed file's first line
		rotate  func(t *testing.T, path string, next [][]byte)
	}{
		{name: "same-inode", rotate: func(t *testing.T, path string, next [][]byte) {
			writeLines(t, filepath.Dir(path), filepath.Base(path), next)
		}},
		{name: "same-inode-after-rotated-file", rotated: true, rotate: func(t *testing.T, path string, next [][]byte) {
			writeLines(t, filepath.Dir(path), filepath.Base(path), next)
		}},
		{name: "rename-remove-create", rotate: func(t *testing.T, path string, next [][]byte) {
			r := path + "." + at(2*time.Hour).Format(trace.RotatedLayout)
			if err := os.Rename(path, r); err != nil {
				t.Fatal(err)
			}
			if err := os.Remove(r); err != nil {
				t.Fatal(err)
			}
			writeLines(t, filepath.Dir(path), filepath.Base(path), next)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			path := writeLines(t, dir, "audit.jsonl", lines[2:5])
			live := refreshedLive(t, trace.LiveOptions{Path: path})
			if c.rotated {
				// A rotated file older than the live file, listed late.
				writeLines(t, dir, "audit.jsonl."+at(time.Hour).Format(trace.RotatedLayout), lines[:2])
				if err := live.Refresh(); err != nil {
					t.Fatal(err)
				}
			}
			c.rotate(t, path, lines[5:8])
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			want := lines[2:8]
			if c.rotated {
				// The rotated file listed late does not continue the
				// chain of the last line read: the index was rebuilt
				// from the files then, in their order
				// (TestLiveRotatedFileMovedBack).
				want = lines[:8]
			}
			sameAsFreshRead(t, live, writeLines(t, t.TempDir(), "audit.jsonl", want), 0)
			appendLines(t, path, lines[8:10])
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			sameAsFreshRead(t, live, writeLines(t, t.TempDir(), "audit.jsonl", append(want, lines[8:10]...)), 0)
		})
	}
}
