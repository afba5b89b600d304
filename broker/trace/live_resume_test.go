package trace_test

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// readsOf records, per file name, the lowest offset read through a
// Live's read wrapper (math.MaxInt64: none).
type readsOf struct {
	mu   sync.Mutex
	from map[string]int64
}

func (r *readsOf) wrap(f *os.File) audit.File {
	return &lowestRead{f: f, r: r, name: filepath.Base(f.Name())}
}

func (r *readsOf) lowest(name string) int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if v, ok := r.from[name]; ok {
		return v
	}
	return math.MaxInt64
}

type lowestRead struct {
	f    *os.File
	r    *readsOf
	name string
	// after, when set, is called once each ReadAt returns (n: its count).
	after func(n int)
	n     int
}

func (l *lowestRead) ReadAt(b []byte, off int64) (int, error) {
	n, err := l.f.ReadAt(b, off)
	l.r.mu.Lock()
	if v, ok := l.r.from[l.name]; !ok || off < v {
		l.r.from[l.name] = off
	}
	l.r.mu.Unlock()
	l.n++
	if l.after != nil {
		l.after(l.n)
	}
	return n, err
}

// bigLog is a log of n issue events (~300 KB for 1000), then the lines of
// a batch the sink will cut back (the issue of iss_failed and a use of the
// last issuance), and the next batch it writes in their place (longer).
func bigLog(t *testing.T, n int) (durable, failed, next [][]byte) {
	t.Helper()
	var evs []*audit.Event
	for i := range n {
		evs = append(evs, &audit.Event{Type: audit.TypeIssue, RequestID: fmt.Sprintf("req_%04d", i), IssuanceID: fmt.Sprintf("iss_big_%04d", i),
			Workload: "payments-api", Owner: "team-payments", Grant: "payments-vault", Kind: broker.KindVaultToken,
			Credential: &audit.Credential{Accessor: fmt.Sprintf("acc_%04d", i), ExpiresAt: rfc(at(time.Hour))}, Outcome: &audit.Outcome{Status: 200}})
	}
	evs = append(evs,
		&audit.Event{Type: audit.TypeIssue, RequestID: "req_failed", IssuanceID: "iss_failed", Workload: "payments-api", Kind: broker.KindVaultToken,
			Credential: &audit.Credential{Accessor: "acc_failed"}, Outcome: &audit.Outcome{Status: 200}},
		&audit.Event{Type: audit.TypeUse, RequestID: "req_failed_use", UseID: "use_failed", IssuanceID: fmt.Sprintf("iss_big_%04d", n-1), Workload: "payments-api"})
	lines := sealed(t, "chn_big", 0, evs)
	nextEvs := []*audit.Event{
		{Type: audit.TypeIssue, RequestID: "req_next1", IssuanceID: "iss_next1", Workload: "payments-api", Reason: strings.Repeat("n", 400),
			Credential: &audit.Credential{Accessor: "acc_next1"}},
		{Type: audit.TypeIssue, RequestID: "req_next2", IssuanceID: "iss_next2", Workload: "payments-api", Reason: strings.Repeat("n", 400)},
	}
	return lines[:n], lines[n:], sealed(t, "chn_big", time.Duration(n)*time.Second, nextEvs)
}

func size(lines [][]byte) int64 {
	var n int64
	for _, l := range lines {
		n += int64(len(l)) + 1
	}
	return n
}

// sameAsFresh checks that live's index holds what a Live that reads the
// files now from scratch holds, and that the lines cut are gone from it
// (every key of theirs), and the next batch in it.
func sameAsFresh(t *testing.T, live *trace.Live, path string) {
	t.Helper()
	likeFresh(t, live, path, []string{"iss_failed", "acc_failed", "req_failed", "use_failed", "req_failed_use"},
		[]string{"iss_next1", "acc_next1", "req_next2", "iss_big_0999", "acc_0999"})
	if st := live.Index().Stats(); st.Skipped != 0 {
		t.Errorf("Stats() = %+v, want no line skipped", st)
	}
	if res := live.Index().Issuance("iss_big_0999"); res == nil || len(res.Uses) != 0 {
		t.Errorf("Issuance(iss_big_0999) = %+v, want it without the use that was cut", res)
	}
}

// refreshedLive is a Live with options o that has read the files once.
func refreshedLive(t *testing.T, o trace.LiveOptions) *trace.Live {
	t.Helper()
	live, err := trace.NewLive(o)
	if err != nil {
		t.Fatal(err)
	}
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	return live
}

// TestLiveCutResumesFromLastHeldLine: when the sink cut the live file back
// (a failed batch) below the last line Live had read, Live threw its index
// away and read every file again from its start (a live file can grow for
// weeks: rotation is off by default). It now drops from its index the
// events of the lines that are gone and reads on from the last line it had
// read that the file still holds; the index is the same as one read from
// scratch. Whether the cut is seen before reading (the last line read is
// gone), under the file's rotated name, or while reading (the
// audit.LineReader's re-check).
func TestLiveCutResumesFromLastHeldLine(t *testing.T) {
	const rotatedName = "audit.jsonl.20250601T110000.000000000Z"
	durable, failed, next := bigLog(t, 1000)
	for _, tc := range []struct {
		name string
		// cut changes the files after the first refresh, or returns a
		// function the second refresh's first read of the file calls.
		cut func(t *testing.T, dir, path string) func()
		// the file the rest of the old live file is read under
		file string
	}{
		{
			name: "before-reading",
			cut: func(t *testing.T, dir, path string) func() {
				writeLines(t, dir, "audit.jsonl", durable)
				appendLines(t, path, next)
				return nil
			},
			file: "audit.jsonl",
		},
		{
			name: "then-rotated",
			cut: func(t *testing.T, dir, path string) func() {
				writeLines(t, dir, "audit.jsonl", durable)
				appendLines(t, path, next)
				if err := os.Rename(path, filepath.Join(dir, rotatedName)); err != nil {
					t.Fatal(err)
				}
				writeLines(t, dir, "audit.jsonl", sealed(t, "chn_new", time.Hour, fixtureEvents()[1:4]))
				return nil
			},
			file: rotatedName,
		},
		{
			name: "while-reading",
			cut: func(t *testing.T, dir, path string) func() {
				// More lines since the first refresh; the second reads
				// them, and after its first read the sink cuts them and
				// the failed batch away, and writes the next batch.
				appendLines(t, path, next[:1])
				return func() {
					writeLines(t, dir, "audit.jsonl", durable)
					appendLines(t, path, next)
				}
			},
			file: "audit.jsonl",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := writeLines(t, dir, "audit.jsonl", append(slices.Clone(durable), failed...))
			live := refreshedLive(t, trace.LiveOptions{Path: path})
			if _, err := live.Index().Lookup("iss_failed"); err != nil {
				t.Fatalf("fixture: the failed batch was not read: %v", err)
			}
			during := tc.cut(t, dir, path)
			reads := &readsOf{from: map[string]int64{}}
			called := false
			trace.SetReadWrapper(live, func(f *os.File) audit.File {
				w := reads.wrap(f).(*lowestRead)
				if during != nil && filepath.Base(f.Name()) == "audit.jsonl" {
					w.after = func(n int) {
						if n == 1 && !called {
							called = true
							during()
						}
					}
				}
				return w
			})
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			if during != nil && !called {
				t.Fatal("fixture: the cut during the read was not made")
			}
			if got, want := reads.lowest(tc.file), size(durable); got != want {
				t.Errorf("%s read from offset %d after the cut, want %d (the end of the last line still there; not the whole file again)", tc.file, got, want)
			}
			sameAsFresh(t, live, path)
		})
	}
}

// TestLiveCutBelowRecentRebuilds: a cut below every line Live keeps of the
// live file (the file replaced by a shorter one) makes it read the files
// again from their start, as before.
func TestLiveCutBelowRecentRebuilds(t *testing.T) {
	durable, failed, next := bigLog(t, 1000)
	dir := t.TempDir()
	path := writeLines(t, dir, "audit.jsonl", append(slices.Clone(durable), failed...))
	live := refreshedLive(t, trace.LiveOptions{Path: path})
	writeLines(t, dir, "audit.jsonl", durable[:100])
	appendLines(t, path, next)
	reads := &readsOf{from: map[string]int64{}}
	trace.SetReadWrapper(live, reads.wrap)
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	if got := reads.lowest("audit.jsonl"); got != 0 {
		t.Errorf("read from offset %d after a cut below the lines kept, want 0", got)
	}
	if res, err := live.Index().Lookup("acc_0999"); !errors.Is(err, broker.ErrNotFound) {
		t.Errorf("Lookup(acc_0999) of a line cut = %+v, %v, want not found", res, err)
	}
	if _, err := live.Index().Lookup("iss_next2"); err != nil {
		t.Errorf("Lookup(iss_next2) = %v, want found", err)
	}
}

// TestLiveCutWithBoundedIndex: the cut lines' events are dropped from an
// index that compacted meanwhile (MaxEvents), as one read from scratch
// would hold them.
func TestLiveCutWithBoundedIndex(t *testing.T) {
	durable, failed, next := bigLog(t, 1000)
	dir := t.TempDir()
	path := writeLines(t, dir, "audit.jsonl", append(slices.Clone(durable), failed...))
	live := refreshedLive(t, trace.LiveOptions{Path: path, MaxEvents: 400})
	writeLines(t, dir, "audit.jsonl", durable)
	appendLines(t, path, next)
	reads := &readsOf{from: map[string]int64{}}
	trace.SetReadWrapper(live, reads.wrap)
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	if got, want := reads.lowest("audit.jsonl"), size(durable); got != want {
		t.Errorf("read from offset %d after the cut, want %d", got, want)
	}
	sameAsFresh(t, live, path)
}

// TestLiveCutWithConcurrentReaders: the events of cut lines are dropped
// from the index readers use (no new index is swapped in), while they
// read it: under -race, readers and refreshes that cut and read on
// interleave, and the index ends as one read from scratch.
func TestLiveCutWithConcurrentReaders(t *testing.T) {
	durable, failed, next := bigLog(t, 1000)
	dir := t.TempDir()
	path := writeLines(t, dir, "audit.jsonl", durable)
	live := refreshedLive(t, trace.LiveOptions{Path: path})
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				idx := live.Index()
				_, _ = idx.Lookup("iss_big_0999")
				_, _ = idx.Lookup("iss_failed")
				_ = idx.Issuance("iss_next1")
				_ = idx.Events()
				_ = idx.Stats()
			}
		}()
	}
	reads := &readsOf{from: map[string]int64{}}
	trace.SetReadWrapper(live, reads.wrap)
	held := slices.Clone(durable)
	for i := range 20 {
		appendLines(t, path, failed)
		if err := live.Refresh(); err != nil {
			t.Fatal(err)
		}
		batch := sealed(t, fmt.Sprintf("chn_%d", i), 0, []*audit.Event{{Type: audit.TypeIssue, IssuanceID: fmt.Sprintf("iss_batch_%d", i), Reason: strings.Repeat("b", 300)}})
		held = append(held, batch...)
		writeLines(t, dir, "audit.jsonl", held)
		if err := live.Refresh(); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	if got := reads.lowest("audit.jsonl"); got < size(durable) {
		t.Errorf("read from offset %d during the cuts, want none below %d (each cut resumed from the last line held)", got, size(durable))
	}
	appendLines(t, path, next)
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	sameAsFresh(t, live, path)
}

// TestLiveCutAfterLongLine: a line longer than audit.MaxLineBytes, read in
// two refreshes (the first stopped in it: its bytes are consumed, not
// kept), is not among the recent lines Live resumes from; the lines after
// it are, where they are in the file, and a cut below the last of them is
// resumed from the last one still there.
func TestLiveCutAfterLongLine(t *testing.T) {
	durable, failed, next := bigLog(t, 1000)
	long := strings.Repeat("a", audit.MaxLineBytes+100<<10)
	after := sealed(t, "chn_after", time.Hour, fixtureEvents()[1:4])
	dir := t.TempDir()
	path := writeLines(t, dir, "audit.jsonl", durable)
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(long); err != nil {
		t.Fatal(err)
	}
	f.Close()
	live := refreshedLive(t, trace.LiveOptions{Path: path})
	appendLines(t, path, [][]byte{{'a'}})
	appendLines(t, path, after)
	appendLines(t, path, failed)
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	held := append(append(slices.Clone(durable), []byte(long+"a")), after...)
	writeLines(t, dir, "audit.jsonl", held)
	appendLines(t, path, next)
	reads := &readsOf{from: map[string]int64{}}
	trace.SetReadWrapper(live, reads.wrap)
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	if got, want := reads.lowest("audit.jsonl"), size(held); got != want {
		t.Errorf("read from offset %d after the cut, want %d (the end of the last line still there)", got, want)
	}
	likeFresh(t, live, path, []string{"iss_failed"}, nil)
}

// TestLiveCutAcrossCompaction: when a line that was cut made the bounded
// index compact (MaxEvents), the index can no longer be put back as it was
// after the last line the file still holds: the compaction dropped older
// events the file holds, which a read from scratch keeps. Live used to
// drop the cut events all the same and read on, and its index then lacked
// those events (a quarter of the bound) until the sink had written as
// many events again; it now reads the files again, as for a cut below its
// recent lines.
func TestLiveCutAcrossCompaction(t *testing.T) {
	const max = 400
	durable, failed, _ := bigLog(t, max) // the first failed line is the event past the bound
	dir := t.TempDir()
	path := writeLines(t, dir, "audit.jsonl", append(slices.Clone(durable), failed...))
	live := refreshedLive(t, trace.LiveOptions{Path: path, MaxEvents: max})
	if st := live.Index().Stats(); st.Dropped == 0 {
		t.Fatalf("fixture: the failed batch did not make the index compact: %+v", st)
	}
	writeLines(t, dir, "audit.jsonl", durable)
	if err := live.Refresh(); err != nil {
		t.Fatal(err)
	}
	// iss_big_0000: the file holds it and the index has room.
	likeFresh(t, live, path, []string{"iss_failed"}, []string{"iss_big_0000"})
}
