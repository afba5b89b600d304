package trace_test

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// denyLines are n sealed deny events of chain chain.
func denyLines(t *testing.T, chain string, n int) [][]byte {
	t.Helper()
	evs := make([]*audit.Event, n)
	for i := range evs {
		evs[i] = &audit.Event{Type: audit.TypeDeny, RequestID: fmt.Sprintf("req_%04d", i), Outcome: &audit.Outcome{Status: 403, Error: "access_denied", Reason: "no_workload"}}
	}
	return sealed(t, chain, 0, evs)
}

// TestLiveOrdinaryRotationDoesNotRebuild: a rotation (the live file
// renamed to its rotated name, then a new live file created, then its
// first batch written) seen by a refresh at any point of it, with the
// rename before the refresh, between its listing of the rotated files and
// its open of the live file, or after that open, is read on: the rest of
// the old file from where the tail stopped, then the new file; never taken
// for a replacement of the live file (a rebuild, which reads every rotated
// file again from its start).
func TestLiveOrdinaryRotationDoesNotRebuild(t *testing.T) {
	lines := denyLines(t, "chn_rot", 20)
	for _, when := range []string{"before-refresh", "after-listing", "listed-before-pruning", "after-open"} {
		for _, state := range []string{"not-created", "empty", "first-batch"} {
			for _, retention := range []bool{false, true} {
				t.Run(fmt.Sprintf("%s/%s/retention=%v", when, state, retention), func(t *testing.T) {
					dir := t.TempDir()
					path := filepath.Join(dir, "audit.jsonl")
					r0 := path + "." + at(time.Hour).Format(trace.RotatedLayout)
					r1 := path + "." + at(2*time.Hour).Format(trace.RotatedLayout)
					writeLines(t, dir, filepath.Base(r0), lines[:3])
					writeLines(t, dir, "audit.jsonl", lines[3:6])
					live := refreshedLive(t, trace.LiveOptions{Path: path})
					reads := &readsOf{from: map[string]int64{}}
					trace.SetReadWrapper(live, reads.wrap)
					rotated := false
					rotate := func() {
						if rotated {
							return
						}
						rotated = true
						appendLines(t, path, lines[6:8])
						if err := os.Rename(path, r1); err != nil {
							t.Fatal(err)
						}
						if retention {
							if err := os.Remove(r0); err != nil {
								t.Fatal(err)
							}
						}
						switch state {
						case "empty":
							writeLines(t, dir, "audit.jsonl", nil)
						case "first-batch":
							writeLines(t, dir, "audit.jsonl", lines[8:10])
						}
					}
					switch when {
					case "before-refresh":
						rotate()
					case "after-listing":
						trace.SetAfterListHook(live, rotate)
					case "listed-before-pruning":
						trace.SetAfterListRotatedHook(live, func([]string) { rotate() })
					case "after-open":
						trace.SetAfterReadHook(live, rotate)
					}
					for range 2 {
						if err := live.Refresh(); err != nil {
							t.Fatal(err)
						}
					}
					if !rotated {
						t.Fatal("fixture: no rotation")
					}
					switch state {
					case "not-created":
						writeLines(t, dir, "audit.jsonl", lines[8:10])
					case "empty":
						appendLines(t, path, lines[8:10])
					}
					if err := live.Refresh(); err != nil {
						t.Fatal(err)
					}
					appendLines(t, path, lines[10:12])
					if err := live.Refresh(); err != nil {
						t.Fatal(err)
					}
					if got := reads.lowest(filepath.Base(r0)); !retention && got != math.MaxInt64 {
						t.Errorf("%s, read before, was read again from offset %d: a rebuild", filepath.Base(r0), got)
					}
					if got := reads.lowest(filepath.Base(r1)); got == 0 {
						t.Errorf("%s, the old live file, was read from its start: a rebuild", filepath.Base(r1))
					}
					if !retention {
						sameAsFreshRead(t, live, path, 0)
						return
					}
					// The events read of the file retention deleted stay.
					sameAsFreshRead(t, live, writeLines(t, t.TempDir(), "audit.jsonl", lines[:12]), 0)
				})
			}
		}
	}
}

// TestLiveFailedRebuildAfterPruningKeepsDone: retention deleted a rotated
// file Live had read (its next listing forgets it), then the live file was
// replaced without a rotation, and the rebuild that followed failed. Live
// goes on from the published index's state, names of the rotated files
// read included: when the original live file is back under its name (the
// replacement undone), the next refresh reads on, and reads none of the
// rotated files again.
func TestLiveFailedRebuildAfterPruningKeepsDone(t *testing.T) {
	lines := denyLines(t, "chn_prune", 20)
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	r0 := writeLines(t, dir, "audit.jsonl."+at(time.Hour).Format(trace.RotatedLayout), lines[:3])
	r1 := writeLines(t, dir, "audit.jsonl."+at(2*time.Hour).Format(trace.RotatedLayout), lines[3:6])
	writeLines(t, dir, "audit.jsonl", lines[6:9])
	live := refreshedLive(t, trace.LiveOptions{Path: path})
	if err := os.Remove(r0); err != nil {
		t.Fatal(err)
	}
	if err := live.Refresh(); err != nil { // forgets r0
		t.Fatal(err)
	}
	if n := trace.DoneFiles(live); n != 1 {
		t.Fatalf("fixture: Live remembers %d rotated files, want 1", n)
	}
	before := live.Index()
	st := before.Stats()
	aside := filepath.Join(dir, "aside")
	if err := os.Rename(path, aside); err != nil {
		t.Fatal(err)
	}
	writeLines(t, dir, "audit.jsonl", lines[:2]) // the replacement
	errDisk := errors.New("disk on fire")
	failing := true
	reads := &readsOf{from: map[string]int64{}}
	trace.SetReadWrapper(live, func(f *os.File) audit.File {
		if failing && f.Name() == r1 {
			return failingFile{errDisk}
		}
		return reads.wrap(f)
	})
	if err := live.Refresh(); !errors.Is(err, errDisk) {
		t.Fatalf("Refresh() after the replacement, the rebuild failing = %v, want the read error", err)
	}
	if got := live.Index(); got != before || got.Stats() != st {
		t.Fatalf("after the failed rebuild: Index() = %p with %+v, want the old one %p with %+v", got, got.Stats(), before, st)
	}
	failing = false
	if err := os.Rename(aside, path); err != nil { // the replacement undone
		t.Fatal(err)
	}
	appendLines(t, path, lines[9:11])
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	if got := reads.lowest(filepath.Base(r1)); got != math.MaxInt64 {
		t.Errorf("%s, read before, was read again from offset %d", filepath.Base(r1), got)
	}
	sameAsFreshRead(t, live, writeLines(t, t.TempDir(), "audit.jsonl", lines[:11]), 0)
}

// TestLiveFileCreatedLate: no live file yet (a broker not started, or one
// whose new file after a rotation is not created yet, with or without
// rotated files): the file that then appears is read as the next one, not
// taken for a replacement.
func TestLiveFileCreatedLate(t *testing.T) {
	lines := denyLines(t, "chn_late", 20)
	for _, rotatedFirst := range []bool{false, true} {
		t.Run(fmt.Sprintf("rotated=%v", rotatedFirst), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "audit.jsonl")
			r0 := path + "." + at(time.Hour).Format(trace.RotatedLayout)
			if rotatedFirst {
				writeLines(t, dir, filepath.Base(r0), lines[:3])
			}
			live := refreshedLive(t, trace.LiveOptions{Path: path})
			reads := &readsOf{from: map[string]int64{}}
			trace.SetReadWrapper(live, reads.wrap)
			writeLines(t, dir, "audit.jsonl", nil)
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			appendLines(t, path, lines[3:6])
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			if got := reads.lowest(filepath.Base(r0)); got != math.MaxInt64 {
				t.Errorf("%s was read again from offset %d: a rebuild", filepath.Base(r0), got)
			}
			want := lines[3:6]
			if rotatedFirst {
				want = lines[:6]
			}
			sameAsFreshRead(t, live, writeLines(t, t.TempDir(), "audit.jsonl", want), 0)
		})
	}
}

// TestLiveRotationDuringReplacementRebuild: the rebuild a replacement of
// the live file starts is raced by a rotation (after the rebuild listed
// the rotated files, before it opened the live file), with the new file
// created or not yet: the index it publishes holds the replacement's
// lines too (read under the rotated name), as a read from scratch does.
func TestLiveRotationDuringReplacementRebuild(t *testing.T) {
	lines := denyLines(t, "chn_reprot", 20)
	for _, created := range []bool{true, false} {
		t.Run(fmt.Sprintf("new-file-created=%v", created), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "audit.jsonl")
			writeLines(t, dir, "audit.jsonl."+at(time.Hour).Format(trace.RotatedLayout), lines[:3])
			writeLines(t, dir, "audit.jsonl", lines[3:6])
			live := refreshedLive(t, trace.LiveOptions{Path: path})
			replaceFile(t, path, lines[3:5])
			calls := 0
			trace.SetAfterListHook(live, func() {
				if calls++; calls != 2 { // the second: the rebuild's
					return
				}
				appendLines(t, path, lines[5:8])
				if err := os.Rename(path, path+"."+at(2*time.Hour).Format(trace.RotatedLayout)); err != nil {
					t.Fatal(err)
				}
				if created {
					writeLines(t, dir, "audit.jsonl", lines[8:10])
				}
			})
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			if calls != 2 {
				t.Fatalf("fixture: %d refreshes, want the replacement's rebuild", calls)
			}
			want := lines[:8]
			if created {
				want = lines[:10]
			}
			sameAsFreshRead(t, live, writeLines(t, t.TempDir(), "audit.jsonl", want), 0)
			if !created {
				writeLines(t, dir, "audit.jsonl", lines[8:10])
			}
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			sameAsFreshRead(t, live, path, 0)
		})
	}
}
