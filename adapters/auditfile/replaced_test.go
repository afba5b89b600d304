package auditfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// replaceAt puts b at path as a new file (a new inode), the way a restore
// from a backup or a log shipper's copy-and-rename does.
func replaceAt(t *testing.T, path string, b []byte) {
	t.Helper()
	tmp := path + ".restore-tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// displacedFiles lists the copies the sink made of a file that was no longer
// at its path.
func displacedFiles(t *testing.T, path string) []string {
	t.Helper()
	m, err := filepath.Glob(path + ".displaced-*")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestReplacedFileFailsTheBatch: the audit file is replaced underneath the
// sink (restored from a backup) between two appends. The sink must not
// report an event durable that no reader at the path can see: the append
// fails as any sink failure does, the replacement is left as it is, and the
// events the sink had written to its own file are kept, byte for byte, in a
// sibling file the log names.
func TestReplacedFileFailsTheBatch(t *testing.T) {
	for _, journal := range []bool{false, true} {
		t.Run(map[bool]string{false: "fsync", true: "journal"}[journal], func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			var logs brokertest.SyncBuffer
			s := openT(t, Options{Path: path, Now: newClock().Now, Journal: journal, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, seams{tick: make(chan time.Time)})
			appendN(t, s, 2)
			backup := readFile(t, path)
			appendN(t, s, 1)
			own := readFile(t, path)
			replaceAt(t, path, backup)

			err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse})
			if !errors.Is(err, broker.ErrUnavailable) {
				t.Errorf("Append() after the file was replaced = %v, want ErrUnavailable (the event would be in a file no reader sees); the path holds %d lines", err, len(readLines(t, path)))
			}
			if got := readFile(t, path); !bytes.Equal(got, backup) {
				t.Errorf("the replacement at the path was changed: %q, want %q", got, backup)
			}
			d := displacedFiles(t, path)
			if len(d) != 1 {
				t.Fatalf("displaced copies = %v, want 1", d)
			}
			if got := readFile(t, d[0]); !bytes.Equal(got, own) {
				t.Errorf("displaced copy = %q, want the sink's own file %q", got, own)
			}
			if s.Stats().Healthy {
				t.Error("Stats().Healthy = true after the file was replaced")
			}
			if err := s.Ping(context.Background()); !errors.Is(err, broker.ErrUnavailable) {
				t.Errorf("Ping() = %v, want ErrUnavailable", err)
			}
			if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
				t.Errorf("second Append() = %v, want ErrUnavailable", err)
			}
			if got := readFile(t, path); !bytes.Equal(got, backup) {
				t.Errorf("the replacement at the path was changed by a later append: %q", got)
			}
			if n := strings.Count(logs.String(), "no longer names"); n != 1 {
				t.Errorf("logged the replacement %d times, want once:\n%s", n, logs.String())
			}
			if l := logs.String(); !strings.Contains(l, "found=\"another file\"") || !strings.Contains(l, d[0]) {
				t.Errorf("log does not say what was found and where the events are:\n%s", l)
			}
		})
	}
}

// TestReplacedFileDetectedOnTick: an idle sink notices on its ticker that
// the path names another file, keeps its own file's content and fails.
func TestReplacedFileDetectedOnTick(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	tick := make(chan time.Time)
	var logs brokertest.SyncBuffer
	s := openT(t, Options{Path: path, Now: newClock().Now, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, seams{tick: tick})
	appendN(t, s, 2)
	backup := readFile(t, path)
	appendN(t, s, 2)
	own := readFile(t, path)
	replaceAt(t, path, backup)

	tick <- time.Time{}
	tick <- time.Time{} // the writer has handled the first tick
	if s.Stats().Healthy {
		t.Error("Stats().Healthy = true after a tick with the file replaced")
	}
	d := displacedFiles(t, path)
	if len(d) != 1 {
		t.Fatalf("displaced copies after the tick = %v, want 1", d)
	}
	if got := readFile(t, d[0]); !bytes.Equal(got, own) {
		t.Errorf("displaced copy = %q, want the sink's own file %q", got, own)
	}
	if n := strings.Count(logs.String(), "no longer names"); n != 1 {
		t.Errorf("logged the replacement %d times over two ticks, want once:\n%s", n, logs.String())
	}
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Append() after the tick = %v, want ErrUnavailable", err)
	}
	if err := s.Ping(context.Background()); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Ping() = %v, want ErrUnavailable", err)
	}
	if got := readFile(t, path); !bytes.Equal(got, backup) {
		t.Errorf("the replacement at the path was changed: %q, want %q", got, backup)
	}
	if err := s.Close(); err != nil {
		t.Logf("Close() = %v", err)
	}
	if got := readFile(t, path); !bytes.Equal(got, backup) {
		t.Errorf("Close changed the replacement at the path: %q, want %q", got, backup)
	}
}

// TestReplacedFileKeptAtClose: the audit file is replaced underneath an
// idle sink, which then closes before its ticker noticed (a restore from a
// backup, then a restart). The sink's lines are only in its descriptor:
// Close must keep them in a copy, as the ticker would, not close the
// descriptor of an unlinked file and lose them.
func TestReplacedFileKeptAtClose(t *testing.T) {
	for _, journal := range []bool{false, true} {
		t.Run(map[bool]string{false: "fsync", true: "journal"}[journal], func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			s := openT(t, Options{Path: path, Now: newClock().Now, Journal: journal}, seams{tick: make(chan time.Time)})
			appendN(t, s, 2)
			backup := readFile(t, path)
			appendN(t, s, 2)
			own := readFile(t, path)
			replaceAt(t, path, backup)
			if err := s.Close(); err == nil {
				t.Errorf("Close() with the file replaced = nil, want an error")
			}
			d := displacedFiles(t, path)
			if len(d) != 1 {
				t.Fatalf("displaced copies after Close = %v, want 1", d)
			}
			if got := readFile(t, d[0]); !bytes.Equal(got, own) {
				t.Errorf("displaced copy = %q, want the sink's own file %q", got, own)
			}
			if got := readFile(t, path); !bytes.Equal(got, backup) {
				t.Errorf("Close changed the replacement at the path: %q, want %q", got, backup)
			}
		})
	}
}

// TestMissingFileDetectedOnTick: the file was moved away (a log shipper);
// the sink keeps a copy next to the path, fails, and does not put an empty
// file of its own at the path.
func TestMissingFileDetectedOnTick(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	tick := make(chan time.Time)
	var logs brokertest.SyncBuffer
	s := openT(t, Options{Path: path, Now: newClock().Now, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, seams{tick: tick})
	appendN(t, s, 3)
	own := readFile(t, path)
	if err := os.Rename(path, path+".shipped"); err != nil {
		t.Fatal(err)
	}
	tick <- time.Time{}
	tick <- time.Time{}
	d := displacedFiles(t, path)
	if len(d) != 1 {
		t.Fatalf("displaced copies after the tick = %v, want 1", d)
	}
	if got := readFile(t, d[0]); !bytes.Equal(got, own) {
		t.Errorf("displaced copy = %q, want %q", got, own)
	}
	if l := logs.String(); !strings.Contains(l, "found=missing") {
		t.Errorf("log does not say the file is missing:\n%s", l)
	}
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Append() = %v, want ErrUnavailable", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Lstat(path) = %v after a failed append, want it still missing", err)
	}
	if got := readFile(t, path+".shipped"); !bytes.Equal(got, own) {
		t.Errorf("the moved file was changed: %q", got)
	}
}

// TestReplacedFileNotRotated: the file is replaced while a rotation is
// under way (after the last write, before the rename): the sink must not
// rename the replacement as its own rotated file, nor lose its own lines.
func TestReplacedFileNotRotated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clk := newClock()
	tick := make(chan time.Time)
	fl := &faults{}
	sm := faultSeams(fl)
	sm.tick = tick
	s := openT(t, Options{Path: path, Now: clk.Now, RotateEvery: time.Hour}, sm)
	appendN(t, s, 1)
	backup := readFile(t, path)
	appendN(t, s, 2)
	own := readFile(t, path)
	// The tick's own check passes; the file is replaced during the fsync
	// that precedes the rename.
	fl.set(func(fl *faults) { fl.onSync = func() { replaceAt(t, path, backup) } })
	clk.Advance(2 * time.Hour)
	tick <- time.Time{}
	tick <- time.Time{}
	if m, _ := filepath.Glob(path + ".2*"); len(m) != 0 {
		t.Errorf("rotated files = %v, want none: the file at the path was not the sink's", m)
	}
	if got := readFile(t, path); !bytes.Equal(got, backup) {
		t.Errorf("the replacement at the path = %q, want it untouched %q", got, backup)
	}
	d := displacedFiles(t, path)
	if len(d) != 1 {
		t.Fatalf("displaced copies = %v, want 1", d)
	}
	if got := readFile(t, d[0]); !bytes.Equal(got, own) {
		t.Errorf("displaced copy = %q, want %q", got, own)
	}
	if st := s.Stats(); st.Rotations != 0 || st.Healthy {
		t.Errorf("Stats() = %+v, want no rotation and unhealthy", st)
	}
}

// TestReplacedFileRecovery is the operator's way back (docs/RELIABILITY.md):
// move the stranger aside and the displaced copy back to the path; the sink
// recovers on its next probe and the chain goes on without a gap.
func TestReplacedFileRecovery(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	tick := make(chan time.Time)
	s := openT(t, Options{Path: path, Now: newClock().Now}, seams{tick: tick})
	appendN(t, s, 2)
	backup := readFile(t, path)
	appendN(t, s, 2)
	replaceAt(t, path, backup)
	tick <- time.Time{}
	tick <- time.Time{}
	if err := s.Ping(context.Background()); err == nil {
		t.Fatal("Ping() = nil with a stranger at the path")
	}
	d := displacedFiles(t, path)
	if len(d) != 1 {
		t.Fatalf("displaced copies = %v, want 1", d)
	}
	if err := os.Rename(path, path+".stranger"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(d[0], path); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(context.Background()); err != nil {
		t.Fatalf("Ping() after the copy was put back = %v, want recovered", err)
	}
	appendThenVerify(t, s, path, 5)
}

// TestDisplacedCopyRetried: when the copy cannot be made (disk full), the
// sink keeps its file open, writes nothing more to it, fails, and makes the
// copy on a later tick.
func TestDisplacedCopyRetried(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	tick := make(chan time.Time)
	var full atomic.Bool
	full.Store(true)
	sm := seams{tick: tick, createCopy: func(name string) (*os.File, error) {
		if full.Load() {
			return nil, syscall.ENOSPC
		}
		return createNew(name)
	}}
	var logs brokertest.SyncBuffer
	s := openT(t, Options{Path: path, Now: newClock().Now, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, sm)
	appendN(t, s, 1)
	backup := readFile(t, path)
	appendN(t, s, 2)
	own := readFile(t, path)
	replaceAt(t, path, backup)

	tick <- time.Time{}
	tick <- time.Time{}
	if d := displacedFiles(t, path); len(d) != 0 {
		t.Fatalf("displaced copies = %v with no room for one", d)
	}
	for range 2 {
		if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
			t.Errorf("Append() with the copy not made = %v, want ErrUnavailable", err)
		}
	}
	if err := s.Ping(context.Background()); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Ping() = %v, want ErrUnavailable", err)
	}
	full.Store(false)
	tick <- time.Time{}
	tick <- time.Time{}
	d := displacedFiles(t, path)
	if len(d) != 1 {
		t.Fatalf("displaced copies after a tick with room = %v, want 1", d)
	}
	if got := readFile(t, d[0]); !bytes.Equal(got, own) {
		t.Errorf("displaced copy = %q, want the sink's file as it was acknowledged %q", got, own)
	}
	if got := readFile(t, path); !bytes.Equal(got, backup) {
		t.Errorf("the replacement at the path was changed: %q", got)
	}
	if n := strings.Count(logs.String(), "no longer names"); n != 2 {
		t.Errorf("logged %d times, want the detection and the copy once each:\n%s", n, logs.String())
	}
}

// TestTickerWithoutSignerOrRotation: the path is checked on a ticker even
// when no checkpoint or rotation needs one.
func TestTickerWithoutSignerOrRotation(t *testing.T) {
	s := openT(t, Options{Path: filepath.Join(t.TempDir(), "audit.jsonl")}, seams{})
	if s.tick == nil || s.tickEvery > pathCheckEvery {
		t.Errorf("tick = %v every %v, want a ticker at most every %v", s.tick, s.tickEvery, pathCheckEvery)
	}
}

// BenchmarkCheckPath measures the check made before a batch is
// acknowledged: one stat of the path (docs/RELIABILITY.md).
func BenchmarkCheckPath(b *testing.B) {
	s, err := Open(Options{Path: filepath.Join(b.TempDir(), "audit.jsonl")})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	for b.Loop() {
		if found, err := s.checkPath(0); found != "" || err != nil {
			b.Fatal(found, err)
		}
	}
}

// TestMovedFileKeepsNoFailedBatch: the file is moved away (a log shipper's
// rename) and the next batch, written to it before the sink finds out,
// fails. Its lines must not stay in the moved file, as a failed write's do
// not (rollback): they are events the callers were told were not recorded,
// and they would keep the sink from taking its own file back when it is
// moved back to the path.
func TestMovedFileKeepsNoFailedBatch(t *testing.T) {
	for _, journal := range []bool{false, true} {
		t.Run(map[bool]string{false: "fsync", true: "journal"}[journal], func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			s := openT(t, Options{Path: path, Now: newClock().Now, Journal: journal}, seams{tick: make(chan time.Time)})
			appendN(t, s, 3)
			own := readFile(t, path)
			moved := path + ".shipped"
			if err := os.Rename(path, moved); err != nil {
				t.Fatal(err)
			}
			if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("Append() with the file moved away = %v, want ErrUnavailable", err)
			}
			if got := readFile(t, moved); !bytes.Equal(got, own) {
				t.Errorf("the moved file holds %d lines after the failed batch, want the %d acknowledged ones:\n%s", bytes.Count(got, []byte("\n")), bytes.Count(own, []byte("\n")), got)
			}
			// Moving it back is a way back too: it ends with the chain's head.
			if err := os.Rename(moved, path); err != nil {
				t.Fatal(err)
			}
			if err := s.Ping(context.Background()); err != nil {
				t.Fatalf("Ping() after the file was moved back = %v, want recovered", err)
			}
			appendThenVerify(t, s, path, 4)
		})
	}
}

// TestDisplacedCopyKeepsMode: the copy is what the operator moves back to
// the path (docs/RELIABILITY.md), so it has the audit file's permissions
// and group (a log shipper's read access), not the sink's 0600 for a new
// file.
func TestDisplacedCopyKeepsMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	tick := make(chan time.Time)
	s := openT(t, Options{Path: path, Now: newClock().Now}, seams{tick: tick})
	appendN(t, s, 2)
	if err := os.Chmod(path, 0o640); err != nil {
		t.Fatal(err)
	}
	// Another group where the test may give one (as root); else its own.
	_ = os.Chown(path, -1, 4242)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	wantGid := fi.Sys().(*syscall.Stat_t).Gid
	if err := os.Rename(path, path+".shipped"); err != nil {
		t.Fatal(err)
	}
	tick <- time.Time{}
	tick <- time.Time{}
	d := displacedFiles(t, path)
	if len(d) != 1 {
		t.Fatalf("displaced copies = %v, want 1", d)
	}
	ci, err := os.Stat(d[0])
	if err != nil {
		t.Fatal(err)
	}
	if ci.Mode().Perm() != 0o640 {
		t.Errorf("the copy's mode = %v, want the audit file's -rw-r-----", ci.Mode().Perm())
	}
	if gid := ci.Sys().(*syscall.Stat_t).Gid; gid != wantGid {
		t.Errorf("the copy's group = %d, want the audit file's %d", gid, wantGid)
	}
}

// TestDisplacedCopyNamedWhenComplete: the copy is written under a name that
// says it is incomplete and takes its own name only once complete and
// synced, so that a crash during the copy (of a large file) leaves nothing
// an operator would take for the sink's lines and move back to the path.
func TestDisplacedCopyNamedWhenComplete(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	tick := make(chan time.Time)
	var atCreate []string // complete-looking copies when the copy's file was created
	sm := seams{tick: tick, createCopy: func(name string) (*os.File, error) {
		f, err := createNew(name)
		if err == nil {
			for _, d := range displacedFiles(t, path) {
				if !strings.HasSuffix(d, ".partial") {
					atCreate = append(atCreate, d)
				}
			}
		}
		return f, err
	}}
	s := openT(t, Options{Path: path, Now: newClock().Now}, sm)
	appendN(t, s, 3)
	own := readFile(t, path)
	if err := os.Rename(path, path+".shipped"); err != nil {
		t.Fatal(err)
	}
	tick <- time.Time{}
	tick <- time.Time{}
	if len(atCreate) != 0 {
		t.Errorf("before a byte was copied, %v already had a complete copy's name: a crash then leaves an empty file an operator would move back", atCreate)
	}
	d := displacedFiles(t, path)
	if len(d) != 1 || strings.HasSuffix(d[0], ".partial") {
		t.Fatalf("displaced copies = %v, want 1 complete", d)
	}
	if got := readFile(t, d[0]); !bytes.Equal(got, own) {
		t.Errorf("displaced copy = %q, want %q", got, own)
	}
}

// TestDisplacedBatchAfterCrash: the batch that found the path replaced is
// failed whole (a deferred event in it is told too), is not counted, and
// its journal frame is withdrawn: after a crash, with the copy put back, Open
// replays only the acknowledged batches and the chain goes on from the last
// acknowledged line.
func TestDisplacedBatchAfterCrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openCrashable(t, Options{Path: path, Now: newClock().Now, Journal: true, DeferFor: time.Hour}, seams{})
	appendN(t, s, 1)
	backup := readFile(t, path)
	appendN(t, s, 1)
	replaceAt(t, path, backup)
	deferred := make(chan error, 1)
	s.AppendDeferred(&audit.Event{Type: audit.TypeUseResult}, func(err error) { deferred <- err })
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append() = %v, want ErrUnavailable", err)
	}
	if err := <-deferred; !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("the deferred event of the failed batch was told %v, want ErrUnavailable", err)
	}
	if st := s.Stats(); st.Events != 2 || st.Seq != 2 {
		t.Errorf("Stats() = %+v, want 2 events up to seq 2", st)
	}
	if js := journalOf(t, path); len(js.frames) != 2 {
		t.Errorf("journal frames = %d, want the 2 acknowledged batches", len(js.frames))
	}
	d := displacedFiles(t, path)
	if len(d) != 1 {
		t.Fatalf("displaced copies = %v, want 1", d)
	}
	// The broker dies; the operator puts the copy back before the restart.
	if err := os.Rename(d[0], path); err != nil {
		t.Fatal(err)
	}
	s2 := openT(t, Options{Path: path, Journal: true}, seams{tick: make(chan time.Time)})
	ev := &audit.Event{Type: audit.TypeUse}
	if err := s2.Append(context.Background(), ev); err != nil || ev.Seq != 3 {
		t.Fatalf("Append() after the restart = %v, seq %d; want nil, 3", err, ev.Seq)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if rep, err := verify(t, nil, false, path); err != nil || rep.Chains[0].LastSeq != 3 {
		t.Errorf("Verify() = %v, %+v; want one chain up to seq 3", err, rep)
	}
	if n := len(readLines(t, path)); n != 3 {
		t.Errorf("the file has %d lines, want 3", n)
	}
}

// TestStrandedFileMovedBack: the copy cannot be made (no room for a second
// copy of the file, the likely reason), so the sink holds its file open,
// stranded; the operator moves the file back to the path. The path names
// the sink's file again: no copy is needed, and the sink must take writes
// again instead of failing until there is room for one.
func TestStrandedFileMovedBack(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	tick := make(chan time.Time)
	sm := seams{tick: tick, createCopy: func(string) (*os.File, error) { return nil, syscall.ENOSPC }}
	s := openT(t, Options{Path: path, Now: newClock().Now}, sm)
	appendN(t, s, 3)
	moved := path + ".shipped"
	if err := os.Rename(path, moved); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append() with the file moved away = %v, want ErrUnavailable", err)
	}
	tick <- time.Time{}
	tick <- time.Time{}
	if err := os.Rename(moved, path); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(context.Background()); err != nil {
		t.Fatalf("Ping() with the sink's own file back at the path = %v, want recovered", err)
	}
	ev := &audit.Event{Type: audit.TypeUse}
	if err := s.Append(context.Background(), ev); err != nil || ev.Seq != 4 {
		t.Fatalf("Append() = %v, seq %d; want nil, 4", err, ev.Seq)
	}
	tick <- time.Time{}
	tick <- time.Time{}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if rep, err := verify(t, nil, false, path); err != nil || rep.Chains[0].LastSeq != 4 {
		t.Errorf("Verify() = %v, %+v; want one chain up to seq 4", err, rep)
	}
	if d := displacedFiles(t, path); len(d) != 0 {
		t.Errorf("displaced copies = %v, want none", d)
	}
}

// TestReplayRefusesAnotherFile: the sink found its path replaced, kept its
// lines in a copy, and then the broker died. Its journal still holds the
// batches of its own file, and the next start must not write them into
// whatever file is at the path now (a stranger, or an edited copy whose
// edit is the evidence), whatever offset the journal's epoch starts at:
// Open refuses, naming the path and the journal and saying what to do, and
// leaves the file as it is. The sink's own copy put back is replayed into
// as after any crash.
func TestReplayRefusesAnotherFile(t *testing.T) {
	tests := []struct {
		name string
		// firstRun: a clean run before the crashed one, so that the
		// journal's epoch starts after its lines (base > 0).
		firstRun bool
		// stranger is what is put at the path, given the sink's file.
		stranger func(own []byte) []byte
	}{
		{name: "stranger-base-0", stranger: func([]byte) []byte {
			return bytes.Repeat([]byte(`{"v":1,"type":"unrelated","note":"another program's log line"}`+"\n"), 15)
		}},
		{name: "edited-after-base", firstRun: true, stranger: func(own []byte) []byte {
			b := bytes.Clone(own)
			i := bytes.LastIndex(b, []byte(`"req_2"`))
			b[i+5] = '9' // req_2 -> req_9, in the crashed run's lines
			return b
		}},
		{name: "edited-base-0", stranger: func(own []byte) []byte {
			b := bytes.Clone(own)
			i := bytes.Index(b, []byte(`"req_1"`))
			b[i+5] = '9'
			return b
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			o := Options{Path: path, Now: newClock().Now, Journal: true}
			if tt.firstRun {
				s := openT(t, o, seams{tick: make(chan time.Time)})
				appendIDs(t, s, "req_a", "req_b")
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
			}
			s := openCrashable(t, o, seams{})
			appendIDs(t, s, "req_1", "req_2")
			own := readFile(t, path)
			stranger := tt.stranger(own)
			replaceAt(t, path, stranger)
			if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("Append() with the file replaced = %v, want ErrUnavailable", err)
			}
			d := displacedFiles(t, path)
			if len(d) != 1 {
				t.Fatalf("displaced copies = %v, want 1", d)
			}
			if js := journalOf(t, path); len(js.frames) == 0 || (js.base == 0) == tt.firstRun {
				t.Fatalf("journal before the crash: base %d, %d frames; want frames and base 0 = %v", js.base, len(js.frames), !tt.firstRun)
			}
			// The broker dies here and starts again.
			if _, err := CheckJournal(path); err == nil || !strings.Contains(err.Error(), JournalPath(path)) {
				t.Errorf("CheckJournal() with another file at the path = %v, want an error naming the journal", err)
			}
			s2, err := Open(o)
			if err == nil {
				_ = s2.Close()
			}
			if err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), JournalPath(path)) || !strings.Contains(err.Error(), "displaced") {
				t.Errorf("Open() with another file at the path = %v, want an error naming the file, the journal and the way back", err)
			}
			if got := readFile(t, path); !bytes.Equal(got, stranger) {
				t.Errorf("the file at the path was changed by the start: %d bytes, want the %d it had:\n%s", len(got), len(stranger), got)
			}
			// The way back: the stranger aside, the copy at the path.
			if err := os.Rename(path, path+".stranger"); err != nil {
				t.Fatal(err)
			}
			if err := os.Rename(d[0], path); err != nil {
				t.Fatal(err)
			}
			s3 := openT(t, o, seams{tick: make(chan time.Time)})
			ev := &audit.Event{Type: audit.TypeUse, RequestID: "req_3"}
			if err := s3.Append(context.Background(), ev); err != nil {
				t.Fatalf("Append() after the copy was put back = %v", err)
			}
			if err := s3.Close(); err != nil {
				t.Fatal(err)
			}
			if rep, err := verify(t, nil, false, path); err != nil || rep.Chains[0].LastSeq != ev.Seq {
				t.Errorf("Verify() = %v, %+v; want one chain up to seq %d", err, rep, ev.Seq)
			}
		})
	}
}

// copyTruncate does what logrotate's copytruncate does: copies the file to
// <path>.1, then truncates the file in place (the same inode, so the path
// still names the sink's file).
func copyTruncate(t *testing.T, path string, size int64) []byte {
	t.Helper()
	b := readFile(t, path)
	if err := os.WriteFile(path+".1", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestTruncatedFileFailsTheBatch: the audit file is truncated underneath
// the sink (logrotate's copytruncate). The lines it had acknowledged are
// gone from the file readers find at the path, and a batch appended now
// would land at its start, after nothing it links to: the batch fails as
// for a displaced file, one ERROR says the file was truncated and the
// truncated lines are not kept by the sink, and the truncated file is left
// as it was (the failed batch's lines removed, nothing written over it).
// Putting logrotate's copy back is a way back.
func TestTruncatedFileFailsTheBatch(t *testing.T) {
	for _, journal := range []bool{false, true} {
		t.Run(map[bool]string{false: "fsync", true: "journal"}[journal], func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			var logs brokertest.SyncBuffer
			s := openT(t, Options{Path: path, Now: newClock().Now, Journal: journal, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, seams{tick: make(chan time.Time)})
			appendN(t, s, 3)
			copyTruncate(t, path, 0)

			err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse})
			if !errors.Is(err, broker.ErrUnavailable) {
				t.Errorf("Append() after the file was truncated = %v, want ErrUnavailable; the path holds %d lines", err, len(readLines(t, path)))
			}
			if got := readFile(t, path); len(got) != 0 {
				t.Errorf("the truncated file holds %q after the failed batch, want it empty as it was left", got)
			}
			if s.Stats().Healthy {
				t.Error("Stats().Healthy = true after the file was truncated")
			}
			if err := s.Ping(context.Background()); !errors.Is(err, broker.ErrUnavailable) {
				t.Errorf("Ping() = %v, want ErrUnavailable", err)
			}
			if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
				t.Errorf("second Append() = %v, want ErrUnavailable", err)
			}
			if got := readFile(t, path); len(got) != 0 {
				t.Errorf("the truncated file holds %q after a later append, want it empty", got)
			}
			l := logs.String()
			if n := strings.Count(l, "found=truncated"); n != 1 || !strings.Contains(l, "level=ERROR msg=\"audit: the audit file was truncated underneath") || !strings.Contains(l, "cannot copy them") {
				t.Errorf("want one ERROR saying the file was truncated (found=truncated) and its lines not kept, logged %d:\n%s", n, l)
			}
			if d := displacedFiles(t, path); len(d) != 0 {
				t.Errorf("displaced copies = %v, want none (the truncated lines are not the sink's to copy any more)", d)
			}
			// The way back: logrotate's copy, which ends with the chain's
			// last line, back at the path.
			if err := os.Rename(path+".1", path); err != nil {
				t.Fatal(err)
			}
			if err := s.Ping(context.Background()); err != nil {
				t.Fatalf("Ping() with the copy back at the path = %v, want recovered", err)
			}
			appendThenVerify(t, s, path, 4)
		})
	}
}

// TestTruncatedThenWriteFails: the audit file is truncated underneath
// (copytruncate) and the next batch's write fails. The rollback must not cut
// the file "back" to the last acknowledged line's end, which lies past the
// truncated file's end: that fills it with zeros up to where the lines were,
// and hides the truncation from the size check, so that the next batch
// would be acknowledged in a file that holds none of the lines it links to.
func TestTruncatedThenWriteFails(t *testing.T) {
	for _, c := range []struct{ journal, big bool }{{false, false}, {true, false}, {false, true}, {true, true}} {
		journal, big := c.journal, c.big
		t.Run(fmt.Sprintf("journal=%v/big=%v", journal, big), func(t *testing.T) {
			fl := &faults{}
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			sm := faultSeams(fl)
			sm.tick = make(chan time.Time)
			s := openT(t, Options{Path: path, Now: newClock().Now, Journal: journal}, sm)
			appendN(t, s, 3)
			copyTruncate(t, path, 0)
			fl.set(func(f *faults) { f.writeHalf = true })
			failed := &audit.Event{Type: audit.TypeUse}
			if big {
				// Half of it is longer than the three lines were: the
				// size alone cannot tell.
				failed.Reason = strings.Repeat("r", 8192)
			}
			if err := s.Append(context.Background(), failed); !errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("Append(write fails) = %v, want ErrUnavailable", err)
			}
			fl.set(func(f *faults) { f.writeHalf = false })
			if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
				got := readFile(t, path)
				t.Errorf("Append() after the file was truncated = %v, want ErrUnavailable; the path holds %d bytes, %d of them zeros", err, len(got), bytes.Count(got, []byte{0}))
			}
			if got := readFile(t, path); len(got) != 0 {
				t.Errorf("the truncated file holds %d bytes (%d zeros), want it empty as it was left", len(got), bytes.Count(got, []byte{0}))
			}
		})
	}
}

// TestTruncatedFileDetectedOnTick: an idle sink notices on its ticker that
// its file is shorter than what it acknowledged (cut to any size, not only
// emptied), fails, and writes nothing to it, not even on Close.
func TestTruncatedFileDetectedOnTick(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	tick := make(chan time.Time)
	var logs brokertest.SyncBuffer
	s := openT(t, Options{Path: path, Now: newClock().Now, Journal: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, seams{tick: tick})
	appendN(t, s, 4)
	own := copyTruncate(t, path, 100)
	tick <- time.Time{}
	tick <- time.Time{}
	if s.Stats().Healthy {
		t.Error("Stats().Healthy = true after a tick with the file truncated")
	}
	if n := strings.Count(logs.String(), "found=truncated"); n != 1 {
		t.Errorf("logged the truncation %d times over two ticks, want once:\n%s", n, logs.String())
	}
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Append() after the tick = %v, want ErrUnavailable", err)
	}
	if err := s.Close(); err != nil {
		t.Logf("Close() = %v", err)
	}
	if got := readFile(t, path); !bytes.Equal(got, own[:100]) {
		t.Errorf("the truncated file = %q, want it as it was left %q", got, own[:100])
	}
}

// TestTruncatedCopyShortRestart: a batch acknowledged between logrotate's
// copy and its truncation is in neither file. The sink refuses the copy
// (its last line is not the chain's last); a restart with the copy at the
// path puts the batch back from the journal (docs/RELIABILITY.md).
func TestTruncatedCopyShortRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Journal: true}
	s := openT(t, o, seams{tick: make(chan time.Time)})
	appendN(t, s, 3)
	short := readFile(t, path)
	appendN(t, s, 1) // after logrotate's copy
	if err := os.WriteFile(path+".1", short, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append() after the truncation = %v, want ErrUnavailable", err)
	}
	if err := os.Rename(path, path+".truncated"); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(path+".1", path); err != nil {
		t.Fatal(err)
	}
	if err := s.Ping(context.Background()); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Ping() with a copy short of the last acknowledged line = %v, want ErrUnavailable", err)
	}
	if err := s.Close(); err != nil {
		t.Logf("Close() = %v", err)
	}
	s2 := openT(t, o, seams{tick: make(chan time.Time)})
	ev := &audit.Event{Type: audit.TypeUse}
	if err := s2.Append(context.Background(), ev); err != nil || ev.Seq != 5 {
		t.Fatalf("Append() after the restart = %v, seq %d; want nil, 5 (seq 4 put back from the journal)", err, ev.Seq)
	}
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if rep, err := verify(t, nil, false, path); err != nil || rep.Chains[0].LastSeq != 5 {
		t.Errorf("Verify() = %v, %+v; want one chain up to seq 5", err, rep)
	}
}

// TestTruncatedMidLine: a file cut to a size other than 0 (mid-line) is
// detected by the next batch too; the failed batch, appended after the cut,
// is left there (cutting it off again could write zeros into a file cut
// further meanwhile), and the ERROR says so and gives the size the cut left.
func TestTruncatedMidLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	var logs brokertest.SyncBuffer
	s := openT(t, Options{Path: path, Now: newClock().Now, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, seams{tick: make(chan time.Time)})
	appendN(t, s, 3)
	copyTruncate(t, path, 100)
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append() after a cut to 100 bytes = %v, want ErrUnavailable", err)
	}
	left := len(readFile(t, path)) - 100
	if l := logs.String(); !strings.Contains(l, "found=truncated size=100 ") || !strings.Contains(l, fmt.Sprintf("failed_batch_left_at_end=%d", left)) || left <= 0 {
		t.Errorf("want the ERROR to give the cut's size (100) and the failed batch's %d bytes left at the end:\n%s", left, l)
	}
}

// TestStrandedCopiedAtClose: the copy of a displaced file could not be made
// (stranded); by Close there is room for it. Close's retry makes the copy
// and lets go of the file: Close must report the displacement, not crash
// the writer on the file it just closed, and leave the copy whole.
func TestStrandedCopiedAtClose(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	tick := make(chan time.Time)
	var full atomic.Bool
	full.Store(true)
	sm := seams{tick: tick, createCopy: func(name string) (*os.File, error) {
		if full.Load() {
			return nil, syscall.ENOSPC
		}
		return createNew(name)
	}}
	s, err := open(Options{Path: path, Now: newClock().Now}, sm)
	if err != nil {
		t.Fatal(err)
	}
	appendN(t, s, 2)
	own := readFile(t, path)
	replaceAt(t, path, []byte("{}\n"))
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append() with the path replaced = %v, want ErrUnavailable", err)
	}
	if d := displacedFiles(t, path); len(d) != 0 {
		t.Fatalf("displaced copies = %v with no room for one", d)
	}
	full.Store(false)
	if err := s.Close(); err == nil {
		t.Error("Close() = nil with the path naming another file, want the displacement reported")
	}
	d := displacedFiles(t, path)
	if len(d) != 1 {
		t.Fatalf("displaced copies after Close = %v, want 1", d)
	}
	if got := readFile(t, d[0]); !bytes.Equal(got, own) {
		t.Errorf("displaced copy = %q, want %q", got, own)
	}
	if got := readFile(t, path); string(got) != "{}\n" {
		t.Errorf("the file at the path was changed: %q", got)
	}
}

// TestResyncCutRewriteNotTruncated: a rotation's fsync fails with the
// journal holding frames (resync), and the rewrite of those frames is cut
// short by a failed write, so the sink's file is shorter than its last
// acknowledged line until the rewrite is made again. That is the sink's
// own state, not a truncation underneath: the tick's size check must not
// take it for one (found=truncated would let go of the file), and the
// sink goes on, rewriting and rotating, once the disk works again.
func TestResyncCutRewriteNotTruncated(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	tick := make(chan time.Time)
	fl := &faults{}
	sm := faultSeams(fl)
	sm.tick = tick
	clk := newClock()
	var logs brokertest.SyncBuffer
	s := openT(t, Options{Path: path, Now: clk.Now, Journal: true, RotateEvery: time.Hour, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, sm)
	appendN(t, s, 3)
	good := int64(len(readFile(t, path)))
	clk.Advance(2 * time.Hour)
	fl.set(func(fl *faults) { fl.sync = true })
	tick <- time.Time{} // rotation: its fsync fails (resync)
	fl.set(func(fl *faults) { fl.writeHalf = true })
	tick <- time.Time{} // rotation again: the rewrite is cut short
	writerIdle(t, s)
	if fi, err := os.Stat(path); err != nil || fi.Size() >= good {
		t.Fatalf("file after the cut rewrite: %v, %v; want shorter than %d", fi, err, good)
	}
	fl.set(func(fl *faults) { fl.writeHalf = false })
	tick <- time.Time{} // the size check with the rewrite pending
	writerIdle(t, s)
	if strings.Contains(logs.String(), "found="+foundTruncated) {
		t.Fatalf("the sink's own cut rewrite taken for a truncation underneath:\n%s", logs.String())
	}
	fl.set(func(fl *faults) { fl.sync = false })
	ev := &audit.Event{Type: audit.TypeUse}
	if err := s.Append(context.Background(), ev); err != nil || ev.Seq != 4 {
		t.Fatalf("Append() once the disk works = %v, seq %d; want nil, 4\n%s", err, ev.Seq, logs.String())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, nil, false, append(rotatedFiles(t, path), path)...); err != nil {
		t.Errorf("Verify() = %v", err)
	}
}

// TestReopenCreatesNoFile: the sink, failing because its path names
// another file, reopens the path on the next append; that file is moved
// away between the sink's check that the path exists and its open. A file
// with lines is reopened, never created: no empty file may appear at the
// path, where it would pass for an emptied audit log.
func TestReopenCreatesNoFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	var removeFirst atomic.Bool
	sm := seams{tick: make(chan time.Time), openFile: func(p string, create bool) (file, error) {
		if removeFirst.Load() {
			if err := os.Rename(p, p+".aside"); err != nil {
				return nil, err
			}
		}
		return openOSFile(p, create)
	}}
	s := openT(t, Options{Path: path, Now: newClock().Now}, sm)
	appendN(t, s, 2)
	replaceAt(t, path, []byte("{}\n"))
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append() with the path replaced = %v, want ErrUnavailable", err)
	}
	removeFirst.Store(true)
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append() with the path emptied during the reopen = %v, want ErrUnavailable", err)
	}
	if fi, err := os.Stat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the reopen left a file at the path (%v, %v), want none", fi, err)
	}
}

// TestResyncReopenTakesOnlyItsFile: an fsync failed with the journal
// holding frames (resync), and the sink then had to close its file (its
// truncate failed too). While the rewrite of the frames is pending, a
// reopen accepts a file cut anywhere after the epoch's base; that must be
// the sink's own file. Another file put at the path meanwhile (the epoch
// starting at byte 0, so that no line before it tells them apart) is not
// taken: the rewrite would cut it and write the frames over it.
func TestResyncReopenTakesOnlyItsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	tick := make(chan time.Time)
	fl := &faults{}
	sm := faultSeams(fl)
	sm.tick = tick
	clk := newClock()
	s := openT(t, Options{Path: path, Now: clk.Now, Journal: true, RotateEvery: time.Hour}, sm)
	appendN(t, s, 2)
	clk.Advance(2 * time.Hour)
	fl.set(func(fl *faults) { fl.sync = true })
	tick <- time.Time{} // rotation: its fsync fails (resync)
	fl.set(func(fl *faults) { fl.truncate = true })
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append() with fsync and truncate failing = %v, want ErrUnavailable", err)
	}
	if s.f != nil || !s.resync {
		t.Fatalf("after the failures: file open %v, resync %v; want closed, pending", s.f != nil, s.resync)
	}
	stranger := []byte("{\"not\":\"ours\"}\n")
	replaceAt(t, path, stranger)
	fl.set(func(fl *faults) { fl.sync, fl.truncate = false, false })
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Append() with another file at the path = %v, want ErrUnavailable", err)
	}
	if got := readFile(t, path); !bytes.Equal(got, stranger) {
		t.Errorf("the file at the path was changed: %q, want %q", got, stranger)
	}
}

// TestStrandedWithRewritePending: the sink's file is cut short by a
// rewrite of the journal's frames that failed (resync pending) when it is
// moved away; its copy cannot be made (stranded). Moved back, it is the
// sink's own file in the sink's own state, not one truncated underneath:
// the sink takes writes again, rewriting the frames first.
func TestStrandedWithRewritePending(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	tick := make(chan time.Time)
	fl := &faults{}
	sm := faultSeams(fl)
	sm.tick = tick
	sm.createCopy = func(string) (*os.File, error) { return nil, syscall.ENOSPC }
	clk := newClock()
	var logs brokertest.SyncBuffer
	s := openT(t, Options{Path: path, Now: clk.Now, Journal: true, RotateEvery: time.Hour, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, sm)
	appendN(t, s, 3)
	good := int64(len(readFile(t, path)))
	clk.Advance(2 * time.Hour)
	fl.set(func(fl *faults) { fl.sync = true })
	tick <- time.Time{} // rotation: its fsync fails (resync)
	fl.set(func(fl *faults) { fl.writeHalf = true })
	tick <- time.Time{} // rotation again: the rewrite is cut short
	writerIdle(t, s)
	if fi, err := os.Stat(path); err != nil || fi.Size() >= good {
		t.Fatalf("file after the cut rewrite: %v, %v; want shorter than %d", fi, err, good)
	}
	fl.set(func(fl *faults) { fl.writeHalf = false })
	moved := path + ".shipped"
	if err := os.Rename(path, moved); err != nil {
		t.Fatal(err)
	}
	tick <- time.Time{} // found missing; no copy: stranded
	reply := make(chan error, 1)
	s.probes <- reply // after the tick's work: the writer is idle
	if err := <-reply; !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("probe with the file moved away = %v, want ErrUnavailable", err)
	}
	if !strings.Contains(logs.String(), "could not be copied") {
		t.Fatalf("not stranded after the file moved away with no room for a copy:\n%s", logs.String())
	}
	if err := os.Rename(moved, path); err != nil {
		t.Fatal(err)
	}
	tick <- time.Time{} // the path names the sink's file again
	tick <- time.Time{}
	if strings.Contains(logs.String(), "found="+foundTruncated) {
		t.Errorf("the sink's own cut rewrite taken for a truncation underneath:\n%s", logs.String())
	}
	fl.set(func(fl *faults) { fl.sync = false })
	ev := &audit.Event{Type: audit.TypeUse}
	if err := s.Append(context.Background(), ev); err != nil || ev.Seq != 4 {
		t.Fatalf("Append() with the sink's file back = %v, seq %d; want nil, 4\n%s", err, ev.Seq, logs.String())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, nil, false, append(rotatedFiles(t, path), path)...); err != nil {
		t.Errorf("Verify() = %v", err)
	}
}

// TestDisplacedWithRewritePending: the sink's file is cut short by a
// rewrite of the journal's frames that failed (resync pending) when it is
// moved away. The copy the sink keeps must hold every acknowledged line:
// those past the cut are in the journal's frames, not in the file. Put
// back at the path, the copy is taken and the chain goes on.
func TestDisplacedWithRewritePending(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	tick := make(chan time.Time)
	fl := &faults{}
	sm := faultSeams(fl)
	sm.tick = tick
	clk := newClock()
	var logs brokertest.SyncBuffer
	s := openT(t, Options{Path: path, Now: clk.Now, Journal: true, RotateEvery: time.Hour, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, sm)
	appendN(t, s, 3)
	own := readFile(t, path)
	clk.Advance(2 * time.Hour)
	fl.set(func(fl *faults) { fl.sync = true })
	tick <- time.Time{} // rotation: its fsync fails (resync)
	fl.set(func(fl *faults) { fl.writeHalf = true })
	tick <- time.Time{} // rotation again: the rewrite is cut short
	writerIdle(t, s)
	if fi, err := os.Stat(path); err != nil || fi.Size() >= int64(len(own)) {
		t.Fatalf("file after the cut rewrite: %v, %v; want shorter than %d", fi, err, len(own))
	}
	fl.set(func(fl *faults) { fl.writeHalf, fl.sync = false, false })
	if err := os.Rename(path, filepath.Join(filepath.Dir(path), "shipped")); err != nil {
		t.Fatal(err)
	}
	tick <- time.Time{} // found missing: the copy
	tick <- time.Time{}
	d := displacedFiles(t, path)
	if len(d) != 1 {
		t.Fatalf("displaced copies = %v, want 1\n%s", d, logs.String())
	}
	if got := readFile(t, d[0]); !bytes.Equal(got, own) {
		t.Fatalf("displaced copy = %q, want every acknowledged line %q", got, own)
	}
	if err := os.Rename(d[0], path); err != nil {
		t.Fatal(err)
	}
	ev := &audit.Event{Type: audit.TypeUse}
	if err := s.Append(context.Background(), ev); err != nil || ev.Seq != 4 {
		t.Fatalf("Append() with the copy back = %v, seq %d; want nil, 4\n%s", err, ev.Seq, logs.String())
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, nil, false, append(rotatedFiles(t, path), path)...); err != nil {
		t.Errorf("Verify() = %v", err)
	}
}

// TestProbeChecksThePath: a failed write leaves the sink unhealthy with its
// file still open; the file is then replaced underneath. Ping's recovery
// must not report healthy without the path check the tick and each batch
// make: readiness would say OK for a file no reader sees.
func TestProbeChecksThePath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	fl := &faults{}
	sm := faultSeams(fl)
	sm.tick = make(chan time.Time)
	s := openT(t, Options{Path: path, Now: newClock().Now}, sm)
	appendN(t, s, 2)
	backup := readFile(t, path)
	appendN(t, s, 1)
	own := readFile(t, path)
	fl.set(func(f *faults) { f.writeHalf = true })
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append() with the write failing = %v, want ErrUnavailable", err)
	}
	fl.set(func(f *faults) { f.writeHalf = false })
	replaceAt(t, path, backup)

	if err := s.Ping(context.Background()); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Ping() with the file replaced = %v, want ErrUnavailable", err)
	}
	if s.Stats().Healthy {
		t.Error("Stats().Healthy = true with the file replaced")
	}
	d := displacedFiles(t, path)
	if len(d) != 1 {
		t.Fatalf("displaced copies after Ping = %v, want 1", d)
	}
	if got := readFile(t, d[0]); !bytes.Equal(got, own) {
		t.Errorf("displaced copy = %q, want the sink's own file %q", got, own)
	}
	if got := readFile(t, path); !bytes.Equal(got, backup) {
		t.Errorf("the replacement at the path was changed: %q, want %q", got, backup)
	}
}

// TestDisplacedNoCheckpointPerTick: while the sink has no file (displaced),
// a checkpoint cannot be written until the operator acts; the ticks must
// not try one each, counting a failure and logging an ERROR every tick.
// Once the file is back, the next tick writes the checkpoint.
func TestDisplacedNoCheckpointPerTick(t *testing.T) {
	signer, keys := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clk := newClock()
	tick := make(chan time.Time)
	var logs brokertest.SyncBuffer
	s := openT(t, Options{Path: path, Now: clk.Now, Signer: signer, CheckpointInterval: time.Minute,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))}, seams{tick: tick})
	appendN(t, s, 2)
	moved := path + ".shipped"
	if err := os.Rename(path, moved); err != nil {
		t.Fatal(err)
	}
	tick <- time.Time{} // finds the file missing: displaced
	clk.Advance(2 * time.Minute)
	before := s.Stats().Failures
	for range 4 {
		tick <- time.Time{} // a checkpoint is due
	}
	tick <- time.Time{} // the ticks before were handled
	if got := s.Stats().Failures; got != before {
		t.Errorf("Failures went from %d to %d over ticks while displaced, want unchanged", before, got)
	}
	if n := strings.Count(logs.String(), "level=ERROR"); n != 1 {
		t.Errorf("logged %d ERRORs, want one (the displacement):\n%s", n, logs.String())
	}
	if err := os.Rename(moved, path); err != nil {
		t.Fatal(err)
	}
	tick <- time.Time{} // reopens it and writes the checkpoint due
	tick <- time.Time{}
	if d := cmp.Diff([]string{"1:use", "2:use", "3:checkpoint"}, types(t, path)); d != "" {
		t.Errorf("after recovery (-want +got):\n%s", d)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, keys, true, path); err != nil {
		t.Errorf("Verify() = %v", err)
	}
}

// TestMovedBackAfterFailedDrop: the file is moved away, the batch written
// to it fails (the path no longer names it) and dropping the batch from it
// fails too: the file ends with the failed batch's bytes. Moving it back
// must be a way back, as when the drop succeeds: the reopen drops those
// bytes, not refuse the file for good as "another writer?".
func TestMovedBackAfterFailedDrop(t *testing.T) {
	for _, journal := range []bool{false, true} {
		t.Run(map[bool]string{false: "fsync", true: "journal"}[journal], func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			fl := &faults{}
			sm := faultSeams(fl)
			sm.tick = make(chan time.Time)
			s := openT(t, Options{Path: path, Now: newClock().Now, Journal: journal}, sm)
			appendN(t, s, 3)
			own := readFile(t, path)
			moved := path + ".shipped"
			if err := os.Rename(path, moved); err != nil {
				t.Fatal(err)
			}
			fl.set(func(f *faults) { f.truncate = true })
			if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("Append() with the file moved away = %v, want ErrUnavailable", err)
			}
			fl.set(func(f *faults) { f.truncate = false })
			if got := readFile(t, moved); len(got) <= len(own) {
				t.Fatalf("the moved file holds %d bytes, want the failed batch after the %d acknowledged (the drop failed)", len(got), len(own))
			}
			if err := os.Rename(moved, path); err != nil {
				t.Fatal(err)
			}
			if err := s.Ping(context.Background()); err != nil {
				t.Fatalf("Ping() after the file was moved back = %v, want recovered", err)
			}
			appendThenVerify(t, s, path, 4)
		})
	}
}

// appendThenVerify appends a use event to s, which must take it as seq
// (the chain goes on where it was), closes s, and verifies that path's
// chain runs up to seq.
func appendThenVerify(t *testing.T, s *Sink, path string, seq uint64) {
	t.Helper()
	ev := &audit.Event{Type: audit.TypeUse}
	if err := s.Append(context.Background(), ev); err != nil || ev.Seq != seq {
		t.Fatalf("Append() = %v, seq %d; want nil, %d", err, ev.Seq, seq)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if rep, err := verify(t, nil, false, path); err != nil || rep.Chains[0].LastSeq != seq {
		t.Errorf("Verify() = %v, %+v; want one chain up to seq %d", err, rep, seq)
	}
}

// TestDisplacedCopyPutBackStartsAnEpoch: the journal's epoch continued the
// file the sink let go of; once the copy is put back at the path and taken
// (checkReopened), the next batch starts a new epoch at the copy's end
// instead of adding a frame to the old epoch, which described another file.
func TestDisplacedCopyPutBackStartsAnEpoch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, Now: newClock().Now, Journal: true}, seams{tick: make(chan time.Time)})
	appendN(t, s, 1)
	backup := readFile(t, path)
	appendN(t, s, 1)
	replaceAt(t, path, backup)
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append() = %v, want ErrUnavailable", err)
	}
	d := displacedFiles(t, path)
	if len(d) != 1 {
		t.Fatalf("displaced copies = %v, want 1", d)
	}
	kept := int64(len(readFile(t, d[0])))
	if err := os.Rename(d[0], path); err != nil {
		t.Fatal(err)
	}
	ev := &audit.Event{Type: audit.TypeUse}
	if err := s.Append(context.Background(), ev); err != nil || ev.Seq != 3 {
		t.Fatalf("Append() after the copy was put back = %v, seq %d; want nil, 3", err, ev.Seq)
	}
	if js := journalOf(t, path); js.base != kept || len(js.frames) != 1 {
		t.Errorf("journal: epoch from byte %d with %d frames; want a new epoch from the copy's end (%d) with the one batch since", js.base, len(js.frames), kept)
	}
}

// TestStrandedMovedBackAfterFailedDrop: as TestMovedBackAfterFailedDrop,
// with no room for the copy (stranded) while the file is away: it ends
// with the failed batch's bytes when it is moved back. Moving it back must
// be a way back here too, with still no room for a copy: the sink drops
// those bytes, as a reopen does, and takes the file back (settleStranded),
// instead of retrying the copy until there is room for one. The chain goes
// on where it was.
func TestStrandedMovedBackAfterFailedDrop(t *testing.T) {
	for _, journal := range []bool{false, true} {
		t.Run(map[bool]string{false: "fsync", true: "journal"}[journal], func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			fl := &faults{}
			sm := faultSeams(fl)
			sm.tick = make(chan time.Time)
			sm.createCopy = func(string) (*os.File, error) { return nil, syscall.ENOSPC }
			s := openT(t, Options{Path: path, Now: newClock().Now, Journal: journal}, sm)
			appendN(t, s, 3)
			own := readFile(t, path)
			moved := path + ".shipped"
			if err := os.Rename(path, moved); err != nil {
				t.Fatal(err)
			}
			fl.set(func(f *faults) { f.truncate = true })
			if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse}); !errors.Is(err, broker.ErrUnavailable) {
				t.Fatalf("Append() with the file moved away = %v, want ErrUnavailable", err)
			}
			fl.set(func(f *faults) { f.truncate = false })
			if got := readFile(t, moved); len(got) <= len(own) {
				t.Fatalf("the moved file holds %d bytes, want the failed batch after the %d acknowledged (the drop failed)", len(got), len(own))
			}
			if err := os.Rename(moved, path); err != nil {
				t.Fatal(err)
			}
			if err := s.Ping(context.Background()); err != nil {
				t.Fatalf("Ping() after the file was moved back = %v, want recovered (no copy needed)", err)
			}
			if d := displacedFiles(t, path); len(d) != 0 {
				t.Errorf("displaced copies = %v, want none", d)
			}
			appendThenVerify(t, s, path, 4)
		})
	}
}

// TestStrandedMovedBackChangedSaysSo: the sink's file, stranded (moved
// away, no room for a copy), comes back to the path with a line appended
// by someone else, so it cannot be taken back as it is (settleStranded).
// The error must say what the path holds now (the sink's file, changed),
// not what it held when the file was stranded ("missing").
func TestStrandedMovedBackChangedSaysSo(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	sm := seams{tick: make(chan time.Time), createCopy: func(string) (*os.File, error) { return nil, syscall.ENOSPC }}
	s := openT(t, Options{Path: path, Now: newClock().Now}, sm)
	appendN(t, s, 3)
	moved := path + ".shipped"
	if err := os.Rename(path, moved); err != nil {
		t.Fatal(err)
	}
	err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse})
	if !errors.Is(err, broker.ErrUnavailable) || !strings.Contains(err.Error(), "the path has missing now") {
		t.Fatalf("Append() with the file moved away = %v, want ErrUnavailable saying the path has missing", err)
	}
	f, err := os.OpenFile(moved, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"v":1,"type":"unrelated"}` + "\n"); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(moved, path); err != nil {
		t.Fatal(err)
	}
	err = s.Ping(context.Background())
	if err == nil {
		t.Fatal("Ping() with the sink's file back, changed, = nil; want a failure")
	}
	if msg := err.Error(); strings.Contains(msg, "missing") || !strings.Contains(msg, "the path has the sink's file again") {
		t.Errorf("Ping() = %q; want it to say the path has the sink's file again, not missing", msg)
	}
}
