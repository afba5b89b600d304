package auditfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// openCrashable opens a sink that the test abandons instead of closing, as
// a crash would leave it: no final sync, no journal reset, and no lock held
// (the kernel drops a dead process's). Its writer stays parked (no ticker)
// once it has finished the work an append started (appendIDs waits for
// that: a rotation runs after the batch's callers are released), so it
// never touches the files again.
func openCrashable(t *testing.T, o Options, sm seams) *Sink {
	t.Helper()
	if sm.tick == nil {
		sm.tick = make(chan time.Time)
	}
	sm.noLock = true
	s, err := open(o, sm)
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	return s
}

// journalOf returns the journal's current state as Open would read it.
func journalOf(t *testing.T, path string) journalState {
	t.Helper()
	b, err := os.ReadFile(JournalPath(path))
	if err != nil {
		t.Fatal(err)
	}
	js, err := readJournal(b)
	if err != nil {
		t.Fatalf("readJournal() = %v", err)
	}
	return js
}

// requestIDs lists the request ids of a file's events.
func requestIDs(t *testing.T, path string) []string {
	t.Helper()
	var ids []string
	for _, ev := range readEvents(t, path) {
		ids = append(ids, ev.RequestID)
	}
	return ids
}

// appendIDs appends an event per id and returns once the writer is idle.
func appendIDs(t *testing.T, s *Sink, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse, RequestID: id}); err != nil {
			t.Fatalf("Append(%s) = %v", id, err)
		}
	}
	writerIdle(t, s)
}

// crashReopen is a machine crash and a restart: the audit file keeps its
// first size bytes (what an fsync made durable), a sink opens on it, and
// the file then holds the events want (by request id); what says what
// happened before, in the failure message.
func crashReopen(t *testing.T, o Options, size int64, want []string, what string) {
	t.Helper()
	if err := os.Truncate(o.Path, size); err != nil {
		t.Fatal(err)
	}
	openT(t, o, seams{})
	if d := cmp.Diff(want, requestIDs(t, o.Path)); d != "" {
		t.Errorf("%s (-want +got):\n%s", what, d)
	}
}

// writerIdle returns once the writer goroutine has finished what it was
// doing: Append returns when its batch is durable, and the writer may then
// still rotate the file. A test that abandons the sink (a crash) and opens
// the same file again must not race that. The writer serves a health probe
// only between batches; a healthy sink's probe touches nothing.
func writerIdle(t *testing.T, s *Sink) {
	t.Helper()
	reply := make(chan error, 1)
	s.probes <- reply
	if err := <-reply; err != nil {
		t.Fatalf("writer probe = %v", err)
	}
}

// TestJournalReplay: a crash loses some of what the file was given without
// an fsync; Open puts back every acknowledged batch from the journal.
func TestJournalReplay(t *testing.T) {
	// lose changes the audit file the way a crash may have: base is where
	// it was last synced, size its size at the crash.
	tests := []struct {
		name string
		lose func(t *testing.T, path string, base, size int64)
	}{
		{name: "nothing-lost", lose: func(*testing.T, string, int64, int64) {}},
		{name: "all-unsynced-lost", lose: func(t *testing.T, path string, base, _ int64) {
			if err := os.Truncate(path, base); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "torn-mid-line", lose: func(t *testing.T, path string, base, size int64) {
			if err := os.Truncate(path, base+(size-base)/2+3); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "tail-zeroed", lose: func(t *testing.T, path string, base, size int64) {
			f, err := os.OpenFile(path, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			if _, err := f.WriteAt(make([]byte, (size-base)/3), size-(size-base)/3); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "file-gone", lose: func(t *testing.T, path string, _, _ int64) {
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			signer, keys := newSigner(t)
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			clk := newClock()
			o := Options{Path: path, Now: clk.Now, Journal: true}
			if tt.name != "file-gone" {
				// A first run that ends cleanly: the second run's journal
				// continues a synced, non-empty file.
				o.Signer = signer
				s := openT(t, o, seams{})
				appendIDs(t, s, "req_a", "req_b")
				if err := s.Close(); err != nil {
					t.Fatal(err)
				}
				o.Signer = nil
			}
			var base int64
			if fi, err := os.Stat(path); err == nil {
				base = fi.Size()
			}

			s := openCrashable(t, o, seams{})
			appendIDs(t, s, "req_1", "req_2", "req_3")
			s.AppendDeferred(&audit.Event{Type: audit.TypeUseResult, RequestID: "req_4"}, nil) // rides with req_5
			appendIDs(t, s, "req_5")
			want := requestIDs(t, path)
			if js := journalOf(t, path); js.base != base || len(js.frames) != 4 {
				t.Fatalf("journal before the crash: base %d, %d frames; want base %d (the synced size), 4 frames", js.base, len(js.frames), base)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			tt.lose(t, path, base, fi.Size())

			var logs brokertest.SyncBuffer
			o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
			o.Signer = signer
			s2 := openT(t, o, seams{})
			if d := cmp.Diff(want, requestIDs(t, path)); d != "" {
				t.Errorf("events after replay (-acknowledged +file):\n%s", d)
			}
			if !strings.Contains(logs.String(), "replayed the journal") || !strings.Contains(logs.String(), "batches=4") {
				t.Errorf("Open() logged %q, want the replay of 4 batches", logs.String())
			}
			appendIDs(t, s2, "req_6")
			if err := s2.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := verify(t, keys, true, path); err != nil {
				t.Errorf("Verify() after replay = %v", err)
			}
			if js := journalOf(t, path); len(js.frames) != 0 {
				t.Errorf("journal after Close has %d frames, want none (file synced)", len(js.frames))
			}
		})
	}
}

// TestJournalTornFrame: a frame torn by the crash was never acknowledged;
// replay stops before it.
func TestJournalTornFrame(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Journal: true}
	s := openCrashable(t, o, seams{})
	appendIDs(t, s, "req_1", "req_2", "req_3")
	// Tear the third frame: its last payload byte differs.
	jf, err := os.OpenFile(JournalPath(path), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	js := journalOf(t, path)
	third := journalBlock + frameLen(len(js.frames[0].batch)) + frameLen(len(js.frames[1].batch))
	if _, err := jf.WriteAt([]byte{'X'}, third+frameHeaderLen+int64(len(js.frames[2].batch))-2); err != nil {
		t.Fatal(err)
	}
	_ = jf.Close()
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	s2 := openT(t, o, seams{})
	if d := cmp.Diff([]string{"req_1", "req_2"}, requestIDs(t, path)); d != "" {
		t.Errorf("events after replaying a torn journal (-want +got):\n%s", d)
	}
	ev := &audit.Event{Type: audit.TypeUse}
	if err := s2.Append(context.Background(), ev); err != nil || ev.Seq != 3 {
		t.Errorf("Append() after replay = %v, seq %d; want seq 3 after the replayed tail", err, ev.Seq)
	}
}

// TestJournalFailedWriteNotReplayed: a batch whose file write failed was
// reported failed; a crash right after must not bring it back.
func TestJournalFailedWriteNotReplayed(t *testing.T) {
	fl := &faults{}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Journal: true}
	s := openCrashable(t, o, faultSeams(fl))
	appendIDs(t, s, "req_1")
	fl.set(func(f *faults) { f.writeHalf = true })
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse, RequestID: "req_failed"}); err == nil {
		t.Fatal("Append(failing write) = nil, want an error")
	}
	// The crash loses what was not synced.
	crashReopen(t, o, journalOf(t, path).base, []string{"req_1"}, "events after a failed write and a crash")
}

// TestJournalFailedFsyncKeepsFrames: when the fsync of a full journal's
// audit file fails, Linux may have dropped the file's pages it could not
// write and reports success for the next fsync without writing them. The
// acknowledged batches are then only in the journal: the sink must not start
// a new epoch over them until it has written them to the file again and an
// fsync of that succeeded, or a machine crash loses them.
func TestJournalFailedFsyncKeepsFrames(t *testing.T) {
	fl := &faults{}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Journal: true, JournalBytes: MinJournalBytes} // 3 frames
	s := openCrashable(t, o, faultSeams(fl))
	appendIDs(t, s, "req_1", "req_2", "req_3") // the journal is full
	fl.set(func(f *faults) { f.sync = true })
	err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse, RequestID: "req_failed"})
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append(fsync fails) = %v, want ErrUnavailable", err)
	}
	fl.set(func(f *faults) { f.sync = false })
	appendIDs(t, s, "req_4", "req_5")
	// The machine crashes: the file keeps what an fsync made durable.
	crashReopen(t, o, fl.durableSize(), []string{"req_1", "req_2", "req_3", "req_4", "req_5"}, "acknowledged events after a failed fsync and a crash")
}

// TestJournalFailedWriteNotReplayedWhenSyncFails: a batch whose file write
// failed was reported failed; when the rollback's fsync fails too, so that no
// new epoch can start, a crash must still not bring the batch back.
func TestJournalFailedWriteNotReplayedWhenSyncFails(t *testing.T) {
	fl := &faults{}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Journal: true}
	s := openCrashable(t, o, faultSeams(fl))
	appendIDs(t, s, "req_1")
	fl.set(func(f *faults) { f.writeHalf, f.sync = true, true })
	err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse, RequestID: "req_failed"})
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append(failing write and fsync) = %v, want ErrUnavailable", err)
	}
	// The crash loses what was not synced.
	crashReopen(t, o, journalOf(t, path).base, []string{"req_1"}, "events after a failed write, a failed fsync and a crash")
}

// TestJournalReplayAfterFailedFsync: a broker whose fsync of the audit file
// failed dies before it has written the journal's batches to the file again.
// The kernel still shows the file whole (the pages it failed to write, kept
// and marked clean), so the restarted broker must write every frame again,
// not only those that look missing, before its journal moves on; otherwise
// a later machine crash loses acknowledged events.
func TestJournalReplayAfterFailedFsync(t *testing.T) {
	fl := &faults{}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Journal: true, JournalBytes: MinJournalBytes} // 3 frames
	s := openCrashable(t, o, faultSeams(fl))
	appendIDs(t, s, "req_1", "req_2", "req_3") // the journal is full
	fl.set(func(f *faults) { f.sync = true })
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse, RequestID: "req_failed"}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append(fsync fails) = %v, want ErrUnavailable", err)
	}
	// The process dies; the disk works again; the broker restarts.
	fl.set(func(f *faults) { f.sync = false })
	sm := faultSeams(fl)
	sm.openReplay = func(p string) (replayFile, error) {
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return nil, err
		}
		return &faultReplay{File: f, fl: fl}, nil
	}
	s2 := openCrashable(t, o, sm)
	appendIDs(t, s2, "req_4")
	// Then the machine crashes: the file keeps what an fsync made durable.
	crashReopen(t, o, fl.durableSize(), []string{"req_1", "req_2", "req_3", "req_4"}, "acknowledged events after a failed fsync, a restart and a crash")
}

// TestJournalFailedFsyncFileReplaced: the rewrite after a failed fsync
// replaces only the journal epoch's part of the file; a file replaced
// underneath meanwhile (its part before the epoch differs) is refused, not
// completed with the journal's batches.
func TestJournalFailedFsyncFileReplaced(t *testing.T) {
	fl := &faults{}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Journal: true, JournalBytes: MinJournalBytes} // 3 frames
	s := openCrashable(t, o, faultSeams(fl))
	appendIDs(t, s, "req_1", "req_2", "req_3", "req_4", "req_5", "req_6") // one wrap: the epoch starts after req_3
	fl.set(func(f *faults) { f.sync = true })
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse, RequestID: "req_failed"}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append(fsync fails) = %v, want ErrUnavailable", err)
	}
	fl.set(func(f *faults) { f.sync = false })
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// The line the epoch continues (req_3's) differs.
	third := bytes.Index(b, []byte(`"req_3"`))
	if third < 0 {
		t.Fatalf("req_3 not in the file: %s", b)
	}
	b[third+5] = '9'
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	err = s.Append(context.Background(), &audit.Event{Type: audit.TypeUse, RequestID: "req_7"})
	if !errors.Is(err, broker.ErrUnavailable) || !strings.Contains(err.Error(), "replaced") {
		t.Fatalf("Append(file replaced underneath) = %v, want ErrUnavailable naming the replaced file", err)
	}
}

// TestJournalWraps: a full journal syncs the file and starts a new epoch;
// old frames are never replayed again.
func TestJournalWraps(t *testing.T) {
	fl := &faults{}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Journal: true, JournalBytes: MinJournalBytes} // 3 frames
	s := openCrashable(t, o, faultSeams(fl))
	fl.set(func(f *faults) { f.syncs = 0 })
	var ids []string
	for i := range 10 {
		ids = append(ids, fmt.Sprint("req_", i))
	}
	appendIDs(t, s, ids...)
	fl.mu.Lock()
	syncs := fl.syncs
	fl.mu.Unlock()
	if syncs != 3 {
		t.Errorf("file fsyncs for 10 batches with room for 3 frames = %d, want 3 (one per wrap)", syncs)
	}
	js := journalOf(t, path)
	if len(js.frames) != 1 {
		t.Errorf("journal after 10 batches holds %d frames, want 1", len(js.frames))
	}
	crashReopen(t, o, js.base, ids, "events after replay")
}

// TestJournalEpochs: frames left by an earlier run's epoch, beyond the
// current one's, are not replayed (they would not continue it).
func TestJournalEpochs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Journal: true}
	s := openT(t, o, seams{})
	appendIDs(t, s, "req_1", "req_2", "req_3", "req_4")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	s = openCrashable(t, o, seams{})
	appendIDs(t, s, "req_5")
	crashReopen(t, o, fi.Size(), []string{"req_1", "req_2", "req_3", "req_4", "req_5"}, "events after replay")
}

// TestJournalForeignFile: a journal next to a file it does not continue is
// refused with an error naming both.
func TestJournalForeignFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Journal: true}
	s := openT(t, o, seams{})
	appendIDs(t, s, "req_1", "req_2")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openCrashable(t, o, seams{})
	appendIDs(t, s, "req_3")
	lines := readLines(t, path)
	other := append(append(bytes.Join(lines[:1], []byte{'\n'}), '\n'), bytes.Repeat([]byte("x"), len(lines[1]))...)
	if err := os.WriteFile(path, append(other, '\n'), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(o)
	if err == nil || !strings.Contains(err.Error(), "does not continue") || !strings.Contains(err.Error(), JournalPath(path)) {
		t.Fatalf("Open(replaced file) = %v, want an error naming the journal and the file", err)
	}
	if err := os.Truncate(path, 10); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(o); err == nil || !strings.Contains(err.Error(), "truncated or replaced") || !strings.Contains(err.Error(), "move the journal away") {
		t.Fatalf("Open(file shorter than the journal's base) = %v, want an error saying what to do", err)
	}
}

// TestJournalOff: without Journal a journal left by a crashed run is
// replayed, then removed, so it can never be replayed over newer lines.
func TestJournalOff(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openCrashable(t, Options{Path: path, Now: newClock().Now, Journal: true}, seams{})
	appendIDs(t, s, "req_1", "req_2")
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	fl := &faults{}
	s2 := openT(t, Options{Path: path, Now: newClock().Now}, faultSeams(fl))
	if d := cmp.Diff([]string{"req_1", "req_2"}, requestIDs(t, path)); d != "" {
		t.Errorf("events after replay (-want +got):\n%s", d)
	}
	if _, err := os.Stat(JournalPath(path)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("journal after Open without Journal: stat = %v, want removed", err)
	}
	fl.set(func(f *faults) { f.syncs = 0 })
	appendIDs(t, s2, "req_3")
	if fl.syncs != 1 {
		t.Errorf("fsyncs for one batch without the journal = %d, want 1", fl.syncs)
	}
}

// TestJournalNoDirectIO: where direct I/O is refused the sink fsyncs the
// file per batch, and says so.
func TestJournalNoDirectIO(t *testing.T) {
	for _, refusal := range []error{ErrNoDirectIO, syscall.EINVAL} {
		t.Run(refusal.Error(), func(t *testing.T) {
			fl := &faults{}
			sm := faultSeams(fl)
			sm.openJournal = func(path string) (journalFile, error) {
				if refusal == ErrNoDirectIO {
					return nil, ErrNoDirectIO
				}
				return refusingJournal{}, nil
			}
			var logs brokertest.SyncBuffer
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			s := openT(t, Options{Path: path, Now: newClock().Now, Journal: true, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, sm)
			fl.set(func(f *faults) { f.syncs = 0 })
			appendIDs(t, s, "req_1", "req_2")
			if fl.syncs != 2 {
				t.Errorf("fsyncs for two batches without direct I/O = %d, want 2", fl.syncs)
			}
			if !strings.Contains(logs.String(), "fsyncing the audit file per batch") {
				t.Errorf("Open() logged %q, want the fallback named", logs.String())
			}
			if _, err := os.Stat(JournalPath(path)); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("journal without direct I/O: stat = %v, want none", err)
			}
		})
	}
}

type refusingJournal struct{}

func (refusingJournal) WriteAt([]byte, int64) (int, error) { return 0, syscall.EINVAL }
func (refusingJournal) Close() error                       { return nil }

// TestJournalTornHeader: a header torn by a crash during a reset (when the
// file was already synced) is rebuilt; nothing is replayed.
func TestJournalTornHeader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Journal: true}
	s := openT(t, o, seams{})
	appendIDs(t, s, "req_1")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	jf, err := os.OpenFile(JournalPath(path), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jf.WriteAt([]byte("torn"), 40); err != nil {
		t.Fatal(err)
	}
	_ = jf.Close()
	var logs brokertest.SyncBuffer
	o.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	s = openT(t, o, seams{})
	if !strings.Contains(logs.String(), "journal header unreadable") {
		t.Errorf("Open() logged %q, want the torn header named", logs.String())
	}
	appendIDs(t, s, "req_2")
	if d := cmp.Diff([]string{"req_1", "req_2"}, requestIDs(t, path)); d != "" {
		t.Errorf("events (-want +got):\n%s", d)
	}
	if js := journalOf(t, path); len(js.frames) != 1 {
		t.Errorf("rebuilt journal holds %d frames, want 1", len(js.frames))
	}
}

// TestJournalLargeBatch: a batch larger than the journal is made durable by
// an fsync of the file, and the journal goes on after it.
func TestJournalLargeBatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Journal: true, JournalBytes: MinJournalBytes}
	s := openCrashable(t, o, seams{})
	big := &audit.Event{Type: audit.TypeUse, RequestID: "req_big", Reason: strings.Repeat("r", 3*journalBlock)}
	if err := s.Append(context.Background(), big); err != nil {
		t.Fatal(err)
	}
	appendIDs(t, s, "req_after")
	js := journalOf(t, path)
	if len(js.frames) != 1 || js.base == 0 {
		t.Fatalf("journal after a large batch: base %d, %d frames; want the large batch synced (base > 0) and 1 frame", js.base, len(js.frames))
	}
	crashReopen(t, o, js.base, []string{"req_big", "req_after"}, "events after replay")
}

// TestJournalLargeBatchThenResetSyncFails: a batch too large for the
// journal is acknowledged once an fsync of the file made it durable; when
// the fsync that then starts a new journal epoch fails, nothing is at risk
// (no byte was written since the fsync that succeeded), and the epoch's
// frames end before that batch, so they cannot rewrite the file up to it.
// The sink must take writes again once the disk works, not wait for frames
// the journal never had.
func TestJournalLargeBatchThenResetSyncFails(t *testing.T) {
	fl := &faults{}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Journal: true, JournalBytes: MinJournalBytes}
	s := openCrashable(t, o, faultSeams(fl))
	appendIDs(t, s, "req_1")
	// The large batch's fsyncs: the journal's (it does not fit), the
	// batch's own, then the one before the new epoch, which fails.
	fl.set(func(f *faults) {
		f.onSync = func() {
			fl.set(func(f *faults) {
				f.onSync = func() { fl.set(func(f *faults) { f.sync = true }) }
			})
		}
	})
	big := &audit.Event{Type: audit.TypeUse, RequestID: "req_big", Reason: strings.Repeat("r", 3*journalBlock)}
	if err := s.Append(context.Background(), big); err != nil {
		t.Fatalf("Append(large batch, fsync ok) = %v", err)
	}
	fl.set(func(f *faults) { f.sync = false })
	appendIDs(t, s, "req_2")
	crashReopen(t, o, fl.durableSize(), []string{"req_1", "req_big", "req_2"}, "events after a large batch whose journal reset failed")
}

// TestJournalPathHidden: a glob of the audit files (what a log shipper or
// `keytrail audit verify audit.jsonl*` is given) does not take the journal.
func TestJournalPathHidden(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, Now: newClock().Now, Journal: true}, seams{})
	appendIDs(t, s, "req_1")
	if _, err := os.Stat(JournalPath(path)); err != nil {
		t.Fatalf("journal: %v", err)
	}
	got, err := filepath.Glob(path + "*")
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{path}, got); d != "" {
		t.Errorf("Glob(%s*) (-want +got):\n%s", path, d)
	}
}

// TestReadJournalEmpty: a journal file created but never prepared (a crash
// right after its creation) holds nothing and is no error; a short one is
// an unreadable header.
func TestReadJournalEmpty(t *testing.T) {
	if js, err := readJournal(nil); err != nil || len(js.frames) != 0 {
		t.Errorf("readJournal(empty) = %+v, %v; want nothing, no error", js, err)
	}
	if _, err := readJournal(make([]byte, 100)); !errors.Is(err, errJournalHeader) {
		t.Errorf("readJournal(100 bytes) = %v, want errJournalHeader", err)
	}
}

// TestProbeJournal: the bench's probe times every write and leaves nothing
// behind.
func TestProbeJournal(t *testing.T) {
	dir := t.TempDir()
	lat, cpu, err := ProbeJournal(dir, []byte("{}\n"), 50)
	if err != nil {
		t.Fatalf("ProbeJournal() = %v", err)
	}
	if len(lat) != 50 || slices.Min(lat) <= 0 || cpu < 0 {
		t.Errorf("ProbeJournal() = %d latencies (min %v), CPU %v; want 50 positive ones", len(lat), slices.Min(lat), cpu)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("ProbeJournal left %d files behind", len(ents))
	}
}

// TestJournalRotation: with the journal on (the server's default), many
// writers across rotations and checkpoints leave every event in exactly one
// file, once, in chain order; and a crash after a rotation replays the new
// file's batches into it, not into the rotated one.
func TestJournalRotation(t *testing.T) {
	signer, keys := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Signer: signer, CheckpointEvery: 50,
		Journal: true, JournalBytes: 64 << 10, RotateBytes: 40 << 10}
	s := openT(t, o, seams{})
	const workers, each = 16, 40
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse, RequestID: fmt.Sprintf("req_%d_%d", w, i)}); err != nil {
					t.Errorf("Append() = %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	files := append(rotatedFiles(t, path), path)
	if len(files) < 3 {
		t.Fatalf("files = %v, want at least 3 (rotations)", files)
	}
	if _, err := verify(t, keys, true, files...); err != nil {
		t.Fatalf("Verify() = %v", err)
	}
	seen := map[string]bool{}
	for _, f := range files {
		for _, id := range requestIDs(t, f) {
			if seen[id] {
				t.Fatalf("%s written twice", id)
			}
			seen[id] = true
		}
	}
	if st := s.Stats(); st.Events != workers*each || st.Failures != 0 {
		t.Errorf("Stats() = %+v, want %d events, no failure", st, workers*each)
	}

	// A crash after the next rotation: the new file loses what was not
	// synced; the journal, reset at the rotation, puts it back there.
	o.Signer, o.CheckpointEvery = nil, 0
	o.RotateBytes = 1 // rotate after every batch
	s = openCrashable(t, o, seams{})
	appendIDs(t, s, "req_x")
	o.RotateBytes = 0
	s = openCrashable(t, o, seams{})
	appendIDs(t, s, "req_y", "req_z")
	js := journalOf(t, path)
	if js.base != 0 || len(js.frames) != 2 {
		t.Fatalf("journal of the file started by the rotation: base %d, %d frames; want 0, 2", js.base, len(js.frames))
	}
	rotated := rotatedFiles(t, path)
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	s = openT(t, o, seams{})
	if d := cmp.Diff([]string{"req_y", "req_z"}, requestIDs(t, path)); d != "" {
		t.Errorf("live file after the crash (-want +got):\n%s", d)
	}
	if got := rotatedFiles(t, path); !slices.Equal(got, rotated) {
		t.Errorf("rotated files after replay = %v, want %v unchanged", got, rotated)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, keys, false, append(rotated, path)...); err != nil {
		t.Errorf("Verify() of every file after the crash = %v", err)
	}
}

// TestCrashDuringRotation: a crash after the rotation renamed the file
// away but before it reset the journal leaves a journal whose epoch
// continues the renamed file (synced up to base, no frames). The sink's own
// rotation gets there: the journal refuses the reset that follows the
// rename, and the test abandons the sink. Open starts a new file, the chain
// goes on from the rotated one, and audit verify finds nothing unreplayed.
func TestCrashDuringRotation(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Journal: true, RotateBytes: 1}
	s := openCrashable(t, o, seams{openJournal: func(jpath string) (journalFile, error) {
		f, err := openDirect(jpath)
		return resetAfterRename{f, path}, err
	}})
	appendIDs(t, s, "req_1") // the writer rotates after this batch
	rotated := rotatedFiles(t, path)
	if len(rotated) != 1 {
		t.Fatalf("rotated files = %v, want one", rotated)
	}
	fi, err := os.Stat(rotated[0])
	if err != nil {
		t.Fatal(err)
	}
	if js := journalOf(t, path); js.base != fi.Size() || len(js.frames) != 0 {
		t.Fatalf("journal at the crash: base %d, %d frames; want %d (the rotated file's size), none", js.base, len(js.frames), fi.Size())
	}
	if u, err := CheckJournal(path); err != nil || u.Batches != 0 {
		t.Errorf("CheckJournal() after the crash = %+v, %v; want nothing unreplayed", u, err)
	}
	o.RotateBytes = 0
	s = openT(t, o, seams{})
	appendIDs(t, s, "req_2")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff([]string{"req_1"}, requestIDs(t, rotated[0])); d != "" {
		t.Errorf("rotated file (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]string{"req_2"}, requestIDs(t, path)); d != "" {
		t.Errorf("new file (-want +got):\n%s", d)
	}
	if _, err := verify(t, nil, false, rotated[0], path); err != nil {
		t.Errorf("Verify(rotated, new) = %v", err)
	}
}

// resetAfterRename is a journal whose header cannot be rewritten while the
// audit file is renamed away: the crash point between a rotation's rename
// and its journal reset.
type resetAfterRename struct {
	journalFile
	audit string
}

func (f resetAfterRename) WriteAt(b []byte, off int64) (int, error) {
	if _, err := os.Stat(f.audit); off == 0 && errors.Is(err, os.ErrNotExist) {
		return 0, syscall.EIO
	}
	return f.journalFile.WriteAt(b, off)
}

// TestCheckJournal: what the journal holds that the file lacks, read
// without changing either; a running sink's journal is not compared.
func TestCheckJournal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	if u, err := CheckJournal(path); err != nil || u.Batches != 0 || u.Live {
		t.Errorf("CheckJournal(no journal) = %+v, %v; want nothing", u, err)
	}
	o := Options{Path: path, Now: newClock().Now, Journal: true}
	s := openT(t, o, seams{})
	appendIDs(t, s, "req_1", "req_2")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	synced := fi.Size()

	// A running sink, caught between a frame and the file's append (made
	// here by cutting the file): not compared.
	s = openT(t, o, seams{})
	appendIDs(t, s, "req_3")
	whole := readFile(t, path)
	if err := os.Truncate(path, synced); err != nil {
		t.Fatal(err)
	}
	if u, err := CheckJournal(path); err != nil || !u.Live || u.Batches != 0 {
		t.Errorf("CheckJournal(while a sink holds the file) = %+v, %v; want Live, nothing compared", u, err)
	}
	// The append done (the same inode: Close finds its file as it left it).
	if err := os.WriteFile(path, whole, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A crash (no lock held any more) that lost the unsynced tail.
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	s = openT(t, o, seams{}) // a new chain from scratch
	appendIDs(t, s, "req_a", "req_b")
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openCrashable(t, o, seams{})
	appendIDs(t, s, "req_c", "req_d", "req_e")
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cut := len(before) - 10 // into the last line (req_e)
	if err := os.Truncate(path, int64(cut)); err != nil {
		t.Fatal(err)
	}
	u, err := CheckJournal(path)
	if err != nil || u.Live || u.Batches != 1 || u.Bytes != int64(len(before)-cut) || u.Line != 5 {
		t.Errorf("CheckJournal(after a crash) = %+v, %v; want 1 batch, %d bytes, from line 5", u, err, len(before)-cut)
	}
	if after, _ := os.ReadFile(path); len(after) != cut {
		t.Errorf("CheckJournal changed the file: %d bytes, want %d", len(after), cut)
	}

	// The file replaced by a shorter one: the journal does not continue it.
	if err := os.WriteFile(path, before[:10], 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := CheckJournal(path); err == nil || !strings.Contains(err.Error(), "move the journal away") {
		t.Errorf("CheckJournal(replaced file) = %v, want the journal named as not continuing it", err)
	}
}
