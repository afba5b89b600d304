package trace_test

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// rebuildFixture is a bounded Live (MaxEvents 400) over a rotated file of
// 300 issue events and a live file of 300 more and a failed batch, read
// once: its index compacted while it read the live file, so a cut of the
// live file below its recent lines makes it rebuild (no resume can put the
// index back as it was). cut makes that cut: the live file then holds its
// first 200 lines (the compaction at its line 201 is cut) and the next batch.
type rebuildFixture struct {
	dir, path, rotated string
	live               *trace.Live
	cut                func()
}

const rebuildMax = 400

func newRebuildFixture(t *testing.T) *rebuildFixture {
	t.Helper()
	return newRebuildFixtureWait(t, 0)
}

// newRebuildFixtureWait is newRebuildFixture with LiveOptions.RefreshWait
// wait (0: the default).
func newRebuildFixtureWait(t *testing.T, wait time.Duration) *rebuildFixture {
	t.Helper()
	durable, failed, next := bigLog(t, 600)
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	rotated := path + "." + at(time.Hour).Format(trace.RotatedLayout)
	writeLines(t, dir, filepath.Base(rotated), durable[:300])
	writeLines(t, dir, "audit.jsonl", append(slices.Clone(durable[300:]), failed...))
	live := refreshedLive(t, trace.LiveOptions{Path: path, MaxEvents: rebuildMax, RefreshWait: wait})
	if st := live.Index().Stats(); st.Dropped == 0 {
		t.Fatalf("fixture: the index did not compact: %+v", st)
	}
	return &rebuildFixture{dir: dir, path: path, rotated: rotated, live: live, cut: func() {
		writeLines(t, dir, "audit.jsonl", durable[300:500])
		appendLines(t, path, next)
	}}
}

// heldBeforeCut checks that idx answers as an index of the files up to the
// cut point does: at least the events the bound keeps of them (300 of the
// 500 issue events), and the issuances of the last 100 lines before it.
func heldBeforeCut(idx *trace.Index) error {
	if st := idx.Stats(); st.Events < rebuildMax-rebuildMax/4 {
		return fmt.Errorf("the index holds %d events, want at least %d (the files held 500 before the cut point)", st.Events, rebuildMax-rebuildMax/4)
	}
	for i := 400; i < 500; i++ {
		if _, err := idx.Lookup(fmt.Sprintf("iss_big_%04d", i)); err != nil {
			return fmt.Errorf("Lookup(iss_big_%04d), issued before the cut point: %v", i, err)
		}
	}
	return nil
}

// TestLiveRebuildPublishesCompleteIndex: when Live rebuilds its index (here
// a cut of the live file across a compaction), it used to publish an empty
// index and fill it: a trace or report served meanwhile (one that loaded
// the index after its own refresh, while another call rebuilt) answered
// from a partial index, an issuance made long before "not found". The new
// index is now built to the side and published once complete: a reader
// looking at every read of the rebuild sees the old index or the new one,
// each holding what the files held before the cut point.
func TestLiveRebuildPublishesCompleteIndex(t *testing.T) {
	f := newRebuildFixture(t)
	if err := heldBeforeCut(f.live.Index()); err != nil {
		t.Fatalf("fixture: %v", err)
	}
	f.cut()
	reads := &readsOf{from: map[string]int64{}}
	var seen int
	var bad error
	trace.SetReadWrapper(f.live, func(file *os.File) audit.File {
		w := reads.wrap(file).(*lowestRead)
		w.after = func(int) {
			seen++
			if err := heldBeforeCut(f.live.Index()); err != nil && bad == nil {
				bad = fmt.Errorf("read %d of the refresh (%s): %w", seen, filepath.Base(file.Name()), err)
			}
		}
		return w
	})
	trace.SetAfterReadHook(f.live, func() {
		if err := heldBeforeCut(f.live.Index()); err != nil && bad == nil {
			bad = fmt.Errorf("after a file read in the refresh: %w", err)
		}
	})
	if err := f.live.Refresh(); err != nil {
		t.Fatal(err)
	}
	if reads.lowest(filepath.Base(f.rotated)) != 0 {
		t.Fatal("fixture: the refresh did not rebuild (the rotated file was not read again)")
	}
	if bad != nil {
		t.Errorf("a reader during the rebuild saw a partial index: %v", bad)
	}
	likeFresh(t, f.live, f.path, []string{"iss_failed", "use_failed", "iss_big_0500"}, []string{"iss_next1", "iss_next2", "iss_big_0499"})
}

// TestLiveRebuildFailureKeepsIndex: a rebuild that fails (here a read error
// of the rotated file) used to leave the partial new index published; it
// now returns the error and keeps the old index, and Live's state with it:
// the next call rebuilds again, and its index is one read from scratch.
func TestLiveRebuildFailureKeepsIndex(t *testing.T) {
	f := newRebuildFixture(t)
	before := f.live.Index()
	st := before.Stats()
	f.cut()
	errDisk := errors.New("disk on fire")
	failing := true
	trace.SetReadWrapper(f.live, func(file *os.File) audit.File {
		if failing && filepath.Base(file.Name()) == filepath.Base(f.rotated) {
			return failingFile{errDisk}
		}
		return file
	})
	if err := f.live.Refresh(); !errors.Is(err, errDisk) {
		t.Fatalf("Refresh() = %v, want the read error", err)
	}
	if got := f.live.Index(); got != before || got.Stats() != st {
		t.Errorf("after a failed rebuild, Index() = %p with %+v, want the old index %p with %+v", got, got.Stats(), before, st)
	}
	if _, err := f.live.Index().Lookup("iss_big_0000"); !errors.Is(err, broker.ErrNotFound) {
		// The old index compacted it away: still so.
		t.Errorf("Lookup(iss_big_0000) = %v, want not found, as in the old index", err)
	}
	failing = false
	if err := f.live.Refresh(); err != nil {
		t.Fatal(err)
	}
	likeFresh(t, f.live, f.path, []string{"iss_failed", "use_failed", "iss_big_0500"}, []string{"iss_next1", "iss_next2", "iss_big_0499"})
}

type failingFile struct{ err error }

func (f failingFile) ReadAt([]byte, int64) (int, error) { return 0, f.err }

// likeFresh checks that live's index is one read from scratch of the files
// as they are, and finds none of gone (values of the lines cut) and every
// one of found.
func likeFresh(t *testing.T, live *trace.Live, path string, gone, found []string) {
	t.Helper()
	fresh := refreshedLive(t, trace.LiveOptions{Path: path, MaxEvents: live.Index().Stats().Max})
	if got, want := live.Index().Stats(), fresh.Index().Stats(); got != want {
		t.Errorf("Stats() = %+v, want %+v (a read from scratch)", got, want)
	}
	if got, want := seqs(live.Index().Events()), seqs(fresh.Index().Events()); !slices.Equal(got, want) {
		t.Errorf("events: %d, want the %d of a read from scratch", len(got), len(want))
	}
	for _, q := range gone {
		if _, err := live.Index().Lookup(q); !errors.Is(err, broker.ErrNotFound) {
			t.Errorf("Lookup(%s) of a line cut = %v, want not found", q, err)
		}
	}
	for _, q := range found {
		if _, err := live.Index().Lookup(q); err != nil {
			t.Errorf("Lookup(%s) = %v, want found", q, err)
		}
	}
}

// TestLiveCutOfFirstLinesRereadsLiveFileOnly: a cut of the live file
// below the first line Live read of it, all its recent lines (the first
// batch after a rotation failed: the file is cut back to nothing), made
// Live rebuild its index from every file, re-reading the rotated ones,
// which had not changed. It now drops the events of the live file only
// (from where it began in the index) and reads that file again from its
// start; the index is one read from scratch, and a reader during the
// refresh sees every event the files held before the cut point. A cut
// below recent lines that do not start at the file's start still
// rebuilds: dropping the live file's events would leave readers without
// those of its lines before the cut point until it is read again.
func TestLiveCutOfFirstLinesRereadsLiveFileOnly(t *testing.T) {
	durable, failed, next := bigLog(t, 1000)
	for _, tc := range []struct {
		name             string
		rotated, current [][]byte // the files before the cut
		held             [][]byte // what the live file holds after it (then next)
		before           int      // the events of the files before the cut point
		gone             []string // values of the lines cut
		rebuilds         bool     // the rotated file is read again
	}{
		{name: "first-batch-after-rotation", rotated: durable, current: failed, before: 1000,
			gone: []string{"iss_failed", "acc_failed", "use_failed"}},
		{name: "first-lines-rewritten", rotated: durable[:900], current: append(slices.Clone(durable[900:]), failed...),
			held: failed[1:], before: 900, gone: []string{"iss_failed", "iss_big_0900", "acc_0999"}},
		{name: "below-recent-lines", rotated: durable[:500], current: append(slices.Clone(durable[500:]), failed...), held: durable[500:600], before: 600,
			gone: []string{"iss_failed", "use_failed", "iss_big_0600", "acc_0999"}, rebuilds: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "audit.jsonl")
			rotated := filepath.Base(path + "." + at(time.Hour).Format(trace.RotatedLayout))
			writeLines(t, dir, rotated, tc.rotated)
			writeLines(t, dir, "audit.jsonl", tc.current)
			live := refreshedLive(t, trace.LiveOptions{Path: path})
			if _, err := live.Index().Lookup("iss_failed"); err != nil {
				t.Fatalf("fixture: the failed batch was not read: %v", err)
			}
			writeLines(t, dir, "audit.jsonl", tc.held)
			appendLines(t, path, next)
			held := tc.before
			last := fmt.Sprintf("iss_big_%04d", held-1)
			reads := &readsOf{from: map[string]int64{}}
			var bad error
			trace.SetReadWrapper(live, func(f *os.File) audit.File {
				w := reads.wrap(f).(*lowestRead)
				w.after = func(int) {
					idx := live.Index()
					if st := idx.Stats(); st.Events < held && bad == nil {
						bad = fmt.Errorf("the index holds %d events, want at least the %d before the cut point", st.Events, held)
					}
					for _, q := range []string{"iss_big_0000", last} {
						if _, err := idx.Lookup(q); err != nil && bad == nil {
							bad = fmt.Errorf("Lookup(%s), before the cut point: %v", q, err)
						}
					}
				}
				return w
			})
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			if bad != nil {
				t.Errorf("a reader during the refresh: %v", bad)
			}
			if got := reads.lowest(rotated); !tc.rebuilds && got != math.MaxInt64 {
				t.Errorf("the rotated file, unchanged, was read again (from offset %d)", got)
			} else if tc.rebuilds && got != 0 {
				t.Errorf("the rotated file was read from offset %d, want 0 (a rebuild)", got)
			}
			if got := reads.lowest("audit.jsonl"); got != 0 {
				t.Errorf("the live file was read from offset %d after the cut, want 0", got)
			}
			likeFresh(t, live, path, tc.gone, []string{"iss_big_0000", last, "iss_next1", "acc_next1", "iss_next2"})
		})
	}
}

// TestLiveCutOfFirstLinesAfterAnotherFile: when the index got events of
// another file after the live file's first line (a rotated file that
// appeared late, older than the others), dropping the live file's events
// from where it began would drop that file's too: a cut of the live file's
// first lines then rebuilds the index, as a read from scratch.
func TestLiveCutOfFirstLinesAfterAnotherFile(t *testing.T) {
	durable, failed, next := bigLog(t, 1000)
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	writeLines(t, dir, filepath.Base(path+"."+at(2*time.Hour).Format(trace.RotatedLayout)), durable)
	writeLines(t, dir, "audit.jsonl", failed)
	live := refreshedLive(t, trace.LiveOptions{Path: path})
	writeLines(t, dir, filepath.Base(path+"."+at(time.Hour).Format(trace.RotatedLayout)), sealed(t, "chn_late", 0, fixtureEvents()[1:4]))
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	if _, err := live.Index().Lookup(idA); err != nil {
		t.Fatalf("fixture: the late rotated file was not read: %v", err)
	}
	writeLines(t, dir, "audit.jsonl", nil)
	appendLines(t, path, next)
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	likeFresh(t, live, path, []string{"iss_failed", "use_failed"}, []string{idA, idC, "iss_big_0000", "iss_big_0999", "iss_next1"})
}

// TestLiveRotationDuringRebuild: the live file is rotated while Live
// rebuilds its index, after the rebuild listed the rotated files and before
// it opened the audit file. The rebuild's read state has no file being
// tailed, so the old live file, now under its rotated name, was neither
// listed nor recognised as the one tailed: the rebuild published an index
// without any of its events (every line held before the cut point in the
// live file "not found"), and the next call appended them after those of
// the new live file. With the new file created or not yet.
func TestLiveRotationDuringRebuild(t *testing.T) {
	for _, created := range []bool{true, false} {
		t.Run(fmt.Sprintf("new-file-created=%v", created), func(t *testing.T) {
			f := newRebuildFixture(t)
			f.cut()
			newLines := sealed(t, "chn_new", 3*time.Hour, fixtureEvents())
			lists := 0
			trace.SetAfterListHook(f.live, func() {
				if lists++; lists != 2 { // the second: the rebuild's
					return
				}
				if err := os.Rename(f.path, f.path+"."+at(2*time.Hour).Format(trace.RotatedLayout)); err != nil {
					t.Fatal(err)
				}
				if created {
					writeLines(t, f.dir, "audit.jsonl", newLines)
				}
			})
			reads := &readsOf{from: map[string]int64{}}
			trace.SetReadWrapper(f.live, reads.wrap)
			if err := f.live.Refresh(); err != nil {
				t.Fatal(err)
			}
			if lists < 2 || reads.lowest(filepath.Base(f.rotated)) != 0 {
				t.Fatalf("fixture: the refresh did not rebuild (%d listings)", lists)
			}
			if err := heldBeforeCut(f.live.Index()); err != nil {
				t.Errorf("the index the rebuild published: %v", err)
			}
			if _, err := f.live.Index().Lookup("iss_next1"); err != nil {
				t.Errorf("Lookup(iss_next1), written before the rotation: %v", err)
			}
			trace.SetAfterListHook(f.live, nil)
			if !created {
				writeLines(t, f.dir, "audit.jsonl", newLines)
			}
			if err := f.live.Refresh(); err != nil {
				t.Fatal(err)
			}
			likeFresh(t, f.live, f.path, []string{"iss_failed", "use_failed", "iss_big_0500"}, []string{"iss_next1", "iss_big_0499", idA})
		})
	}
}
