package main

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// fileReads is what the index read of one file (by name) through wrapRead:
// the bytes ReadAt returned and the lowest offset read.
type fileReads struct {
	bytes int64
	from  int64
}

// countReads wraps x's reads, counting them per file name.
func countReads(x *auditIssueIndex) map[string]*fileReads {
	var mu sync.Mutex
	reads := map[string]*fileReads{}
	x.wrapRead = func(f *os.File) audit.File {
		mu.Lock()
		defer mu.Unlock()
		name := filepath.Base(f.Name())
		if reads[name] == nil {
			reads[name] = &fileReads{from: math.MaxInt64}
		}
		return &countingRead{f: f, r: reads[name], mu: &mu}
	}
	return reads
}

type countingRead struct {
	f  *os.File
	r  *fileReads
	mu *sync.Mutex
}

func (c *countingRead) ReadAt(b []byte, off int64) (int, error) {
	n, err := c.f.ReadAt(b, off)
	c.mu.Lock()
	c.r.bytes += int64(n)
	c.r.from = min(c.r.from, off)
	c.mu.Unlock()
	return n, err
}

// issueLines returns the issue lines of n issuances named prefix_0000...,
// and their ids.
func issueLines(prefix string, n int) (string, []string) {
	var b strings.Builder
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("iss_%s_%04d", prefix, i)
		b.WriteString(issueLine(ids[i], 20+i%13))
	}
	return b.String(), ids
}

func appendTo(t *testing.T, path, data string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(data); err != nil {
		t.Fatal(err)
	}
}

// TestAuditIssueIndexRotationReadsOnlyAppended: the reconciliation's audit
// index kept how far it had read each file by name. When the sink rotated
// the live file (renamed it to a rotated sibling and started a new one),
// the next run found the rotated name new and read the whole file again
// from its start, although it had read all of it but the last lines as the
// live file (a soak wrote ~300 MB per 5 minutes). It now recognises the
// file under its rotated name (os.SameFile) and reads on from where it
// stopped; every issuance is indexed as before, and a cut back of the live
// file before the rotation is still found (tail hash, rewind).
func TestAuditIssueIndexRotationReadsOnlyAppended(t *testing.T) {
	const (
		rot1 = "audit.jsonl.20260301T100000.000000000Z"
		rot2 = "audit.jsonl.20260301T110000.000000000Z"
		// slack covers what an audit.LineReader reads again of the lines
		// it holds back (the last one or two) at each read.
		slack = 8 << 10
	)
	first, firstIDs := issueLines("first", 10000) // ~650 KB, read as the live file by the first run
	appended, appendedIDs := issueLines("appended", 200)
	newLive, newLiveIDs := issueLines("newlive", 100)
	between, betweenIDs := issueLines("between", 100)
	for _, tc := range []struct {
		name string
		// rotate changes the files after the first run; during, when set,
		// runs at the second run's first listing.
		rotate, during func(t *testing.T, dir string)
		ids            []string
		// want is the lowest offset read and the bytes to read of each file
		// by the second run.
		want map[string][2]int64
	}{
		{
			name: "between-runs",
			rotate: func(t *testing.T, dir string) {
				appendTo(t, filepath.Join(dir, "audit.jsonl"), appended)
				rename(t, dir, "audit.jsonl", rot1)
				appendTo(t, filepath.Join(dir, "audit.jsonl"), newLive)
			},
			ids: concat(firstIDs, appendedIDs, newLiveIDs),
			want: map[string][2]int64{
				rot1:          {int64(len(first)), int64(len(appended))},
				"audit.jsonl": {0, int64(len(newLive))},
			},
		},
		{
			name: "nothing-appended",
			rotate: func(t *testing.T, dir string) {
				rename(t, dir, "audit.jsonl", rot1)
				appendTo(t, filepath.Join(dir, "audit.jsonl"), newLive)
			},
			ids:  concat(firstIDs, newLiveIDs),
			want: map[string][2]int64{"audit.jsonl": {0, int64(len(newLive))}},
		},
		{
			name: "no-new-live-file-yet",
			rotate: func(t *testing.T, dir string) {
				appendTo(t, filepath.Join(dir, "audit.jsonl"), appended)
				rename(t, dir, "audit.jsonl", rot1)
			},
			ids:  concat(firstIDs, appendedIDs),
			want: map[string][2]int64{rot1: {int64(len(first)), int64(len(appended))}},
		},
		{
			name: "during-run",
			rotate: func(t *testing.T, dir string) {
				appendTo(t, filepath.Join(dir, "audit.jsonl"), appended)
			},
			during: func(t *testing.T, dir string) {
				rename(t, dir, "audit.jsonl", rot1)
				appendTo(t, filepath.Join(dir, "audit.jsonl"), newLive)
			},
			ids: concat(firstIDs, appendedIDs, newLiveIDs),
			want: map[string][2]int64{
				rot1:          {int64(len(first)), int64(len(appended))},
				"audit.jsonl": {0, int64(len(newLive))},
			},
		},
		{
			name: "twice-between-runs",
			rotate: func(t *testing.T, dir string) {
				appendTo(t, filepath.Join(dir, "audit.jsonl"), appended)
				rename(t, dir, "audit.jsonl", rot1)
				appendTo(t, filepath.Join(dir, "audit.jsonl"), between)
				rename(t, dir, "audit.jsonl", rot2)
				appendTo(t, filepath.Join(dir, "audit.jsonl"), newLive)
			},
			ids: concat(firstIDs, appendedIDs, betweenIDs, newLiveIDs),
			want: map[string][2]int64{
				rot1:          {int64(len(first)), int64(len(appended))},
				rot2:          {0, int64(len(between))},
				"audit.jsonl": {0, int64(len(newLive))},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "audit.jsonl")
			appendTo(t, path, first)
			x := newAuditIssueIndex(path)
			if got := issuedSet(t, x, firstIDs...); len(got) != len(firstIDs) {
				t.Fatalf("first run: %d issuances indexed, want %d", len(got), len(firstIDs))
			}
			tc.rotate(t, dir)
			if tc.during != nil {
				done := false
				x.listed = func() {
					if !done {
						done = true
						tc.during(t, dir)
					}
				}
			}
			reads := countReads(x)
			got := issuedSet(t, x, tc.ids...)
			var missing []string
			for _, id := range tc.ids {
				if !got[id] {
					missing = append(missing, id)
				}
			}
			if len(missing) > 0 {
				t.Errorf("after the rotation: %d of %d issuances not indexed (first: %s)", len(missing), len(tc.ids), missing[0])
			}
			for name, w := range tc.want {
				r := reads[name]
				if r == nil {
					t.Errorf("%s: not read, want its bytes from %d (%d bytes)", name, w[0], w[1])
					continue
				}
				if r.from != w[0] || r.bytes < w[1] || r.bytes > w[1]+slack {
					t.Errorf("%s: read %d bytes from offset %d, want %d (+ at most %d read again) from %d", name, r.bytes, r.from, w[1], slack, w[0])
				}
			}
			for name, r := range reads {
				if _, ok := tc.want[name]; !ok {
					t.Errorf("%s: read %d bytes from offset %d, want none", name, r.bytes, r.from)
				}
			}
			for p, o := range x.offsets {
				if p != path && o.recent != nil {
					t.Errorf("%s: keeps %d bytes of its last lines, want none (only the live file is cut back)", filepath.Base(p), len(o.recent))
				}
			}
		})
	}
}

// TestAuditIssueIndexRotatedAfterCut: the sink cut the live file back
// (a failed batch) after the index read past the cut, wrote on, then
// rotated it: the run after that finds the file under its rotated name,
// sees the cut (the last line it read is gone) and reads on from the last
// line it still holds, not from its start, indexing what was written after
// the cut.
func TestAuditIssueIndexRotatedAfterCut(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	durable, ids := issueLines("durable", 3000)
	if err := os.WriteFile(path, []byte(durable+issueLine("iss_failed1", 10)+issueLine("iss_failed2", 10)), 0o600); err != nil {
		t.Fatal(err)
	}
	x := newAuditIssueIndex(path)
	if got := issuedSet(t, x, ids...); len(got) != len(ids) {
		t.Fatalf("first run: %d issuances indexed, want %d", len(got), len(ids))
	}
	next := issueLine("iss_next1", 40) + issueLine("iss_next2", 40)
	if err := os.WriteFile(path, []byte(durable+next), 0o600); err != nil {
		t.Fatal(err)
	}
	rename(t, dir, "audit.jsonl", "audit.jsonl.20260301T100000.000000000Z")
	reads := countReads(x)
	got := issuedSet(t, x, "iss_durable_0000", "iss_durable_2999", "iss_next1", "iss_next2")
	if len(got) != 4 {
		t.Errorf("after the cut and the rotation: indexed %v, want all four", got)
	}
	r := reads["audit.jsonl.20260301T100000.000000000Z"]
	if r == nil || r.from != int64(len(durable)) {
		t.Errorf("the rotated file was read %+v, want from %d (the end of the last line still there)", r, len(durable))
	}
}

// TestAuditIssueIndexForgetsDeletedFiles: the index kept the offset of
// every file it had read, forever, though rotated files are deleted by
// retention (a week of rotations at a soak's rate is thousands of files).
// It now forgets the files that are gone.
func TestAuditIssueIndexForgetsDeletedFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	var ids []string
	for i := range 4 {
		lines, id := issueLines(fmt.Sprintf("r%d", i), 3)
		ids = append(ids, id...)
		appendTo(t, path, lines)
		if _, err := newAuditIssueIndex(path).Snapshot(t.Context()); err != nil {
			t.Fatal(err)
		}
		rename(t, dir, "audit.jsonl", fmt.Sprintf("audit.jsonl.20260301T10%02d00.000000000Z", i))
	}
	appendTo(t, path, issueLine("iss_live", 10))
	x := newAuditIssueIndex(path)
	if got := issuedSet(t, x, append(ids, "iss_live")...); len(got) != len(ids)+1 {
		t.Fatalf("first run: %d issuances indexed, want %d", len(got), len(ids)+1)
	}
	if len(x.offsets) != 5 {
		t.Fatalf("offsets of %d files, want 5", len(x.offsets))
	}
	for i := range 3 {
		if err := os.Remove(filepath.Join(dir, fmt.Sprintf("audit.jsonl.20260301T10%02d00.000000000Z", i))); err != nil {
			t.Fatal(err)
		}
	}
	// Rotated and a new live file: the old live file's offset moves to
	// its rotated name.
	appendTo(t, path, issueLine("iss_live2", 10))
	rename(t, dir, "audit.jsonl", "audit.jsonl.20260301T110000.000000000Z")
	appendTo(t, path, issueLine("iss_live3", 10))
	if got := issuedSet(t, x, "iss_live", "iss_live2", "iss_live3", "iss_r0_0000"); len(got) != 4 {
		t.Errorf("indexed %v, want all four (issuances of deleted files are kept until they expire)", got)
	}
	var names []string
	for p := range x.offsets {
		names = append(names, filepath.Base(p))
	}
	if len(names) != 3 {
		t.Errorf("after 3 rotated files were deleted: offsets of %q, want the 3 files left", names)
	}
}

func rename(t *testing.T, dir, from, to string) {
	t.Helper()
	if err := os.Rename(filepath.Join(dir, from), filepath.Join(dir, to)); err != nil {
		t.Fatal(err)
	}
}

func concat(s ...[]string) []string {
	var out []string
	for _, x := range s {
		out = append(out, x...)
	}
	return out
}

// TestAuditIssueIndexWithdrawnAcrossRotation: an issuance withdrawn (its
// orphan_revoked event) just after a rotation has its issue event in the
// rotated file and its orphan_revoked event in the new live file. The
// index reads the live file first (its name sorts before its rotated
// siblings'; and a rotation during a run lists the rotated name only in
// the next listing), so the issue event, read after, put the issuance
// back: it looked audited, and the reconciliation left its token
// (revoke_failed: still live, handed to nobody) until it expired. The
// issuances withdrawn are now remembered until a Snapshot has read every
// file, and an issue event read after their orphan_revoked event is
// ignored: whether the index read the rotated file from its start or the
// rest of it from where it stopped.
func TestAuditIssueIndexWithdrawnAcrossRotation(t *testing.T) {
	for _, tc := range []struct {
		name string
		// firstRun: the index read the live file before the rotation;
		// during: the rotation comes after the run's first listing.
		firstRun, during bool
	}{
		{name: "first-run"},
		{name: "between-runs", firstRun: true},
		{name: "during-run", firstRun: true, during: true},
		{name: "during-first-run", during: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "audit.jsonl")
			withdrawn, kept := broker.NewID(broker.PrefixIssuance), broker.NewID(broker.PrefixIssuance)
			lines, ids := issueLines("old", 50)
			appendTo(t, path, lines)
			x := newAuditIssueIndex(path)
			if tc.firstRun {
				if got := issuedSet(t, x, ids...); len(got) != len(ids) {
					t.Fatalf("first run: %d issuances indexed, want %d", len(got), len(ids))
				}
			}
			appendTo(t, path, issueLine(withdrawn, 10)+issueLine(kept, 10))
			rotate := func() {
				rename(t, dir, "audit.jsonl", "audit.jsonl.20260301T100000.000000000Z")
				appendTo(t, path, `{"v":1,"time":"2026-11-26T10:00:01Z","type":"orphan_revoked","issuance_id":"`+withdrawn+
					`","reason":"store_failed","credential":{"accessor":"acc-w"},"outcome":{"status":503,"error":"temporarily_unavailable","reason":"revoke_failed"}}`+"\n")
			}
			if tc.during {
				done := false
				x.listed = func() {
					if !done {
						done = true
						rotate()
					}
				}
			} else {
				rotate()
			}
			got := issuedSet(t, x, withdrawn, kept, ids[0])
			if got[withdrawn] {
				t.Errorf("Issued(%s) = true after its orphan_revoked event (in the live file, its issue event in the rotated one), want false", withdrawn)
			}
			if !got[kept] || !got[ids[0]] {
				t.Errorf("indexed %v, want %s and %s", got, kept, ids[0])
			}
		})
	}
}
