package auditfile

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/broker/trace"
)

// clock is a fake clock that moves step on every reading.
type clock struct {
	mu   sync.Mutex
	t    time.Time
	step time.Duration
}

func newClock() *clock {
	return &clock{t: time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC), step: time.Millisecond}
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.t
	c.t = c.t.Add(c.step)
	return t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newSigner(t testing.TB) (*audit.Ed25519Signer, map[string]ed25519.PublicKey) {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	s, err := audit.NewEd25519Signer(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
	if err != nil {
		t.Fatal(err)
	}
	return s, map[string]ed25519.PublicKey{s.KeyID(): s.PublicKey()}
}

func openT(t testing.TB, o Options, sm seams) *Sink {
	t.Helper()
	s, err := open(o, sm)
	if err != nil {
		t.Fatalf("Open() = %v", err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func appendN(t testing.TB, s *Sink, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		if err := s.Append(context.Background(), &audit.Event{Type: audit.TypeUse, RequestID: fmt.Sprint("req_", i)}); err != nil {
			t.Fatalf("Append(#%d) = %v", i, err)
		}
	}
}

func readLines(t testing.TB, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	b = bytes.TrimSuffix(b, []byte{'\n'})
	if len(b) == 0 {
		return nil
	}
	return bytes.Split(b, []byte{'\n'})
}

// closedChain writes n events through a sink opened with o and closes it
// (its final checkpoint: seq n+1), and returns the chain resumed from that
// checkpoint, to seal lines added to o.Path after it.
func closedChain(t testing.TB, o Options, n int) *audit.Chain {
	t.Helper()
	s := openT(t, o, seams{})
	appendN(t, s, n)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, o.Path)
	c, err := audit.ResumeChain(lines[len(lines)-1])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// appendFile appends b to the file at path, as a writer other than the
// sink would (while no sink holds it).
func appendFile(t testing.TB, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
}

// openResumed opens a sink with o and closes it, and returns the range of
// lines no checkpoint covered that it adopted (UnsignedResumed).
func openResumed(t testing.TB, o Options) *UnsignedRange {
	t.Helper()
	s := openT(t, o, seams{})
	r := s.UnsignedResumed()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return r
}

func readEvents(t testing.TB, path string) []*audit.Event {
	t.Helper()
	var evs []*audit.Event
	for _, l := range readLines(t, path) {
		ev, err := audit.ParseLine(l)
		if err != nil {
			t.Fatalf("ParseLine(%s) = %v", path, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// types lists "seq:type" of the events of a file.
func types(t testing.TB, path string) []string {
	var out []string
	for _, ev := range readEvents(t, path) {
		out = append(out, fmt.Sprintf("%d:%s", ev.Seq, ev.Type))
	}
	return out
}

func verify(t testing.TB, keys map[string]ed25519.PublicKey, require bool, paths ...string) (*audit.Report, error) {
	t.Helper()
	return audit.VerifyFiles(paths, audit.VerifyOptions{Keys: keys, RequireCheckpoint: require})
}

// faults is shared by the faultFiles of one test.
type faults struct {
	mu              sync.Mutex
	writeHalf       bool // write half the bytes, then fail
	sync            bool // fail fsync
	truncate        bool // fail truncate
	closeUnderneath bool // close the descriptor before writing
	syncGate        chan struct{}
	onSync          func() // called (once) at the start of the next fsync
	writes, syncs   int
	// A model of what is on the disk, as Linux treats a failed fsync:
	// durable is the size an fsync made durable; lost is set by a failed
	// fsync, whose pages the kernel may have dropped (marked clean), so
	// that no later fsync writes them. Only a truncation to durable or
	// less, then new writes, make the file durable again.
	durable int64
	lost    bool
	// redirtied: after a failed fsync, the bytes from durable up to here
	// were written again (a replay's WriteAt), so an fsync writes them.
	redirtied int64
}

// durableSize is what a machine crash leaves of the file (the model above).
func (f *faults) durableSize() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.durable
}

func (f *faults) set(fn func(*faults)) {
	f.mu.Lock()
	fn(f)
	f.mu.Unlock()
}

type faultFile struct {
	*os.File
	fl *faults
}

func (f *faultFile) Write(p []byte) (int, error) {
	f.fl.mu.Lock()
	f.fl.writes++
	half, closeIt := f.fl.writeHalf, f.fl.closeUnderneath
	f.fl.mu.Unlock()
	if closeIt {
		_ = f.File.Close()
	}
	if half {
		n, _ := f.File.Write(p[:len(p)/2])
		return n, syscall.EIO
	}
	return f.File.Write(p)
}

func (f *faultFile) Sync() error {
	f.fl.mu.Lock()
	f.fl.syncs++
	fail, gate, hook := f.fl.sync, f.fl.syncGate, f.fl.onSync
	f.fl.syncGate, f.fl.onSync = nil, nil
	f.fl.mu.Unlock()
	if hook != nil {
		hook()
	}
	if gate != nil {
		<-gate
	}
	if fail {
		f.fl.set(func(fl *faults) { fl.lost, fl.redirtied = true, fl.durable })
		return syscall.EIO
	}
	if err := f.File.Sync(); err != nil {
		return err
	}
	fi, err := f.File.Stat()
	if err != nil {
		return err
	}
	f.fl.set(func(fl *faults) {
		if !fl.lost {
			fl.durable = fi.Size()
		}
	})
	return nil
}

func (f *faultFile) Truncate(n int64) error {
	f.fl.mu.Lock()
	fail := f.fl.truncate
	f.fl.mu.Unlock()
	if fail {
		return syscall.EIO
	}
	if err := f.File.Truncate(n); err != nil {
		return err
	}
	f.fl.set(func(fl *faults) {
		if n <= fl.durable {
			fl.durable, fl.lost = n, false
		}
	})
	return nil
}

// faultReplay is the audit file as a replay opens it, under the durability
// model of faults.
type faultReplay struct {
	*os.File
	fl *faults
}

func (f *faultReplay) WriteAt(b []byte, off int64) (int, error) {
	n, err := f.File.WriteAt(b, off)
	f.fl.set(func(fl *faults) {
		if fl.lost && off <= fl.redirtied {
			fl.redirtied = max(fl.redirtied, off+int64(n))
		}
	})
	return n, err
}

func (f *faultReplay) Truncate(n int64) error {
	if err := f.File.Truncate(n); err != nil {
		return err
	}
	f.fl.set(func(fl *faults) {
		if n <= fl.durable {
			fl.durable, fl.lost = n, false
		}
	})
	return nil
}

func (f *faultReplay) Sync() error {
	if err := f.File.Sync(); err != nil {
		return err
	}
	fi, err := f.File.Stat()
	if err != nil {
		return err
	}
	f.fl.set(func(fl *faults) {
		if fl.lost && fl.redirtied >= fi.Size() {
			fl.lost = false
		}
		if !fl.lost {
			fl.durable = fi.Size()
		}
	})
	return nil
}

func faultSeams(fl *faults) seams {
	return seams{openFile: func(path string, create bool) (file, error) {
		f, err := openOSFile(path, create)
		if err != nil {
			return nil, err
		}
		return &faultFile{File: f.(*os.File), fl: fl}, nil
	}}
}

func TestOpenValidation(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.jsonl")
	if err := os.WriteFile(garbage, []byte("not json\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		o       Options
		wantErr string
	}{
		{name: "fail/no-path", o: Options{}, wantErr: "path: required"},
		{name: "fail/negative-every", o: Options{Path: filepath.Join(dir, "a"), CheckpointEvery: -1}, wantErr: "checkpoint_every"},
		{name: "fail/negative-rotate", o: Options{Path: filepath.Join(dir, "a"), RotateBytes: -1}, wantErr: "rotate_bytes"},
		{name: "fail/journal-too-small", o: Options{Path: filepath.Join(dir, "a"), JournalBytes: MinJournalBytes - 1}, wantErr: "journal_bytes"},
		{name: "fail/journal-too-large", o: Options{Path: filepath.Join(dir, "a"), JournalBytes: MaxJournalBytes + 1}, wantErr: "journal_bytes"},
		{name: "fail/bad-chain-id", o: Options{Path: filepath.Join(dir, "a"), ChainID: "has space"}, wantErr: "chain_id"},
		{name: "fail/unparseable-last-line", o: Options{Path: garbage}, wantErr: "malformed"},
		{name: "fail/directory", o: Options{Path: dir}, wantErr: "open"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := Open(tt.o)
			if err == nil {
				_ = s.Close()
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Open() = %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestConcurrentAppend(t *testing.T) {
	signer, keys := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, Now: newClock().Now, Signer: signer, CheckpointEvery: 100}, seams{})
	const workers, each = 50, 20
	seqs := make(chan uint64, workers*each)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				ev := &audit.Event{Type: audit.TypeIssue, Workload: fmt.Sprint("w", w), RequestID: fmt.Sprint(i)}
				if err := s.Append(context.Background(), ev); err != nil {
					t.Errorf("Append() = %v", err)
					return
				}
				seqs <- ev.Seq
			}
		}()
	}
	wg.Wait()
	close(seqs)
	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	rep, err := verify(t, keys, true, path)
	if err != nil {
		t.Fatalf("Verify() = %v", err)
	}
	evs := readEvents(t, path)
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("line %d has seq %d, want %d", i+1, ev.Seq, i+1)
		}
	}
	events := map[uint64]bool{}
	for q := range seqs {
		if events[q] {
			t.Fatalf("seq %d returned to two callers", q)
		}
		events[q] = true
	}
	// 1000 events + a checkpoint after every 100 (the last one also closes).
	if len(events) != workers*each || len(evs) != workers*each+10 || rep.Chains[0].Checkpoints != 10 {
		t.Errorf("got %d events, %d lines, %d checkpoints; want %d, %d, 10", len(events), len(evs), rep.Chains[0].Checkpoints, workers*each, workers*each+10)
	}
	if st := s.Stats(); st.Events != workers*each || st.Checkpoints != 10 || st.Failures != 0 {
		t.Errorf("Stats() = %+v", st)
	}
}

func TestGroupCommit(t *testing.T) {
	gate := make(chan struct{})
	fl := &faults{syncGate: gate}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	var (
		mu    sync.Mutex
		syncd []time.Duration // OnWrite's figures
	)
	onWrite := func(d time.Duration) { mu.Lock(); syncd = append(syncd, d); mu.Unlock() }
	s := openT(t, Options{Path: path, Now: newClock().Now, OnWrite: onWrite}, faultSeams(fl))
	errs := make(chan error, 11)
	go func() { errs <- s.Append(context.Background(), &audit.Event{Type: "first"}) }()
	// The first batch is now stuck in fsync; queue ten more behind it.
	for {
		fl.mu.Lock()
		stuck := fl.syncs == 1
		fl.mu.Unlock()
		if stuck {
			break
		}
		runtime.Gosched()
	}
	stuckAt := time.Now()
	for i := 0; i < 10; i++ {
		go func() { errs <- s.Append(context.Background(), &audit.Event{Type: "queued"}) }()
	}
	for len(s.reqs) < 10 {
		runtime.Gosched()
	}
	held := time.Since(stuckAt)
	close(gate)
	for i := 0; i < 11; i++ {
		if err := <-errs; err != nil {
			t.Fatalf("Append() = %v", err)
		}
	}
	fl.mu.Lock()
	writes, syncs := fl.writes, fl.syncs
	fl.mu.Unlock()
	if st := s.Stats(); st.Batches != 2 || st.Events != 11 || writes != 2 || syncs != 2 {
		t.Errorf("11 events: %d batches, %d write(), %d fsync; want 2, 2, 2", st.Batches, writes, syncs)
	}
	// OnWrite saw each batch once, the first for at least as long as its
	// fsync was held.
	mu.Lock()
	defer mu.Unlock()
	if len(syncd) != 2 || syncd[0] < held {
		t.Errorf("OnWrite durations = %v, want 2, the first at least %v (its fsync was held that long)", syncd, held)
	}
}

func TestResume(t *testing.T) {
	signer, keys := newSigner(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	clk := newClock()
	o := Options{Path: path, Now: clk.Now, Signer: signer}

	s := openT(t, o, seams{})
	appendN(t, s, 3)
	started := s.ChainID()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	chain := readEvents(t, path)[0].Chain
	if started != chain || chain == "" {
		t.Errorf("ChainID() of a new file = %q, its events name chain %q", started, chain)
	}
	lines := readLines(t, path)

	s = openT(t, o, seams{})
	if got := s.ChainID(); got != chain {
		t.Errorf("ChainID() after reopen = %q, want the file's chain %q", got, chain)
	}
	ev := &audit.Event{Type: audit.TypeStart}
	if err := s.Append(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	want := audit.Event{V: 1, Seq: 5, Chain: chain, Prev: audit.HashLine(lines[3]), Type: audit.TypeStart}
	got := audit.Event{V: ev.V, Seq: ev.Seq, Chain: ev.Chain, Prev: ev.Prev, Type: ev.Type}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("Append() after reopen (-want +got):\n%s", d)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// A crash (no Close, no final checkpoint): a copy of the file as it was.
	crashed := filepath.Join(dir, "crashed.jsonl")
	b, _ := os.ReadFile(path)
	b = b[:bytes.LastIndexByte(b[:len(b)-1], '\n')+1] // drop the final checkpoint
	if err := os.WriteFile(crashed, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s = openT(t, Options{Path: crashed, Now: clk.Now, Signer: signer, ChainID: chain}, seams{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, keys, true, crashed); err != nil {
		t.Errorf("Verify(crashed file after reopen and Close) = %v: Close must checkpoint the resumed tail", err)
	}
	if _, err := verify(t, keys, true, path); err != nil {
		t.Errorf("Verify() = %v", err)
	}

	if _, err := Open(Options{Path: path, ChainID: "chn_other"}); err == nil || !strings.Contains(err.Error(), "continues chain") {
		t.Errorf("Open(other chain id) = %v, want a chain mismatch error", err)
	}
}

func TestTornTail(t *testing.T) {
	signer, keys := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	c := audit.NewChain("chn_torn")
	var file []byte
	for i := 0; i < 3; i++ {
		l, err := c.Seal(&audit.Event{Type: audit.TypeUse}, time.Date(2025, 1, 1, 0, 0, i, 0, time.UTC))
		if err != nil {
			t.Fatal(err)
		}
		if i < 2 {
			file = append(append(file, l...), '\n')
		} else {
			file = append(file, l[:len(l)-7]...) // torn: no newline
		}
	}
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	var logs brokertest.SyncBuffer
	s := openT(t, Options{Path: path, Now: newClock().Now, Signer: signer, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, seams{})
	if got, want := len(readLines(t, path)), 2; got != want {
		t.Fatalf("Open() left %d lines, want %d", got, want)
	}
	if !strings.Contains(logs.String(), "torn last line") {
		t.Errorf("Open() logged %q, want a torn line warning", logs.String())
	}
	ev := &audit.Event{Type: audit.TypeUse}
	if err := s.Append(context.Background(), ev); err != nil || ev.Seq != 3 || ev.Chain != "chn_torn" {
		t.Fatalf("Append() = %v, seq %d chain %s; want nil, 3, chn_torn", err, ev.Seq, ev.Chain)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, keys, true, path); err != nil {
		t.Errorf("Verify() = %v", err)
	}
}

func TestWriteFailure(t *testing.T) {
	tests := []struct {
		name  string
		fault func(*faults)
		// the failed bytes are gone right after the failure (false: only
		// once the sink has reopened the file)
		cleanAtOnce bool
	}{
		{name: "fail/partial-write", fault: func(f *faults) { f.writeHalf = true }, cleanAtOnce: true},
		{name: "fail/fsync", fault: func(f *faults) { f.sync = true }, cleanAtOnce: true},
		{name: "fail/file-closed-underneath", fault: func(f *faults) { f.closeUnderneath = true }, cleanAtOnce: true},
		{name: "fail/partial-write-and-truncate", fault: func(f *faults) { f.writeHalf, f.truncate = true, true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			signer, keys := newSigner(t)
			fl := &faults{}
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			var writes atomic.Int64
			s := openT(t, Options{Path: path, Now: newClock().Now, Signer: signer, OnWrite: func(time.Duration) { writes.Add(1) }}, faultSeams(fl))
			appendN(t, s, 3)
			before, _ := os.ReadFile(path)
			okWrites := writes.Load()

			fl.set(tt.fault)
			err := s.Append(context.Background(), &audit.Event{Type: audit.TypeIssue})
			if !errors.Is(err, broker.ErrUnavailable) || broker.AsError(err).Reason != "audit_unavailable" {
				t.Fatalf("Append(failing disk) = %v, want ErrUnavailable (audit_unavailable)", err)
			}
			if st := s.Stats(); st.Healthy || st.Failures != 1 || st.Seq != 3 {
				t.Errorf("Stats() after failure = %+v, want unhealthy, 1 failure, seq 3", st)
			}
			if n := writes.Load(); n != okWrites {
				t.Errorf("OnWrite calls after a failed write = %d, want %d (successful writes only)", n, okWrites)
			}
			if after, _ := os.ReadFile(path); tt.cleanAtOnce && !bytes.Equal(after, before) {
				t.Errorf("file after failed Append = %d bytes, want the %d durable bytes only", len(after), len(before))
			}

			fl.set(func(f *faults) { f.writeHalf, f.sync, f.truncate, f.closeUnderneath = false, false, false, false })
			if err := s.Ping(context.Background()); err != nil {
				t.Errorf("Ping() after the disk recovered = %v, want nil", err)
			}
			ev := &audit.Event{Type: audit.TypeIssue}
			if err := s.Append(context.Background(), ev); err != nil {
				t.Fatalf("Append() after recovery = %v", err)
			}
			lines := readLines(t, path)
			if ev.Seq != 4 || ev.Prev != audit.HashLine(lines[2]) {
				t.Errorf("Append() after recovery = seq %d, want 4 linked to the last durable line", ev.Seq)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := verify(t, keys, true, path); err != nil {
				t.Errorf("Verify() = %v", err)
			}
		})
	}
}

func TestReplacedUnderneath(t *testing.T) {
	fl := &faults{}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, Now: newClock().Now}, faultSeams(fl))
	appendN(t, s, 2)
	fl.set(func(f *faults) { f.closeUnderneath, f.truncate = true, true })
	if err := s.Append(context.Background(), &audit.Event{Type: "x"}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append() = %v, want ErrUnavailable", err)
	}
	fl.set(func(f *faults) { f.writeHalf, f.sync, f.truncate, f.closeUnderneath = false, false, false, false })
	if err := os.WriteFile(path, []byte("{}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(context.Background(), &audit.Event{Type: "x"}); !errors.Is(err, broker.ErrUnavailable) || !strings.Contains(err.Error(), "underneath") {
		t.Fatalf("Append(file replaced) = %v, want ErrUnavailable: replaced underneath", err)
	}
	if err := s.Ping(context.Background()); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Ping(file replaced) = %v, want ErrUnavailable", err)
	}
}

func TestCheckpoints(t *testing.T) {
	signer, keys := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clk := newClock()
	tick := make(chan time.Time)
	s := openT(t, Options{Path: path, Now: clk.Now, Signer: signer, CheckpointEvery: 3, CheckpointInterval: time.Minute}, seams{tick: tick})

	appendN(t, s, 7)
	want := []string{"1:use", "2:use", "3:use", "4:checkpoint", "5:use", "6:use", "7:use", "8:checkpoint", "9:use"}
	if d := cmp.Diff(want, types(t, path)); d != "" {
		t.Fatalf("every 3 events (-want +got):\n%s", d)
	}

	tick <- time.Time{} // interval not over: nothing
	clk.Advance(2 * time.Minute)
	tick <- time.Time{} // over, with one event since: checkpoint
	tick <- time.Time{} // nothing since: nothing
	appendN(t, s, 1)
	clk.Advance(2 * time.Minute)
	appendN(t, s, 1) // over: checkpoint in the same batch
	want = append(want, "10:checkpoint", "11:use", "12:use", "13:checkpoint")
	if d := cmp.Diff(want, types(t, path)); d != "" {
		t.Fatalf("interval (-want +got):\n%s", d)
	}

	appendN(t, s, 1)
	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	want = append(want, "14:use", "15:checkpoint")
	if d := cmp.Diff(want, types(t, path)); d != "" {
		t.Fatalf("Close (-want +got):\n%s", d)
	}
	if _, err := verify(t, keys, true, path); err != nil {
		t.Errorf("Verify() = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close() = %v", err)
	}
	if err := s.Append(context.Background(), &audit.Event{Type: "x"}); !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Append() after Close = %v, want ErrUnavailable", err)
	}
	if got := len(readLines(t, path)); got != 15 {
		t.Errorf("Close twice and Append after Close left %d lines, want 15", got)
	}
}

// SPEC: a checkpoint at least every 60 s. The interval is checked on a
// ticker every quarter of it: waiting for the first tick past the interval
// left up to 75 s between checkpoints of an idle sink.
func TestCheckpointIntervalNeverExceeded(t *testing.T) {
	signer, keys := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clk := newClock()
	start := clk.t
	tick := make(chan time.Time)
	// onTick reads the clock after the writer took the tick: a second tick
	// waits for the first one to be handled (and finds nothing more to do).
	tickAt := func(d time.Duration) {
		clk.Advance(d)
		tick <- time.Time{}
		tick <- time.Time{}
	}
	s := openT(t, Options{Path: path, Now: clk.Now, Signer: signer, CheckpointInterval: time.Minute}, seams{tick: tick})

	appendN(t, s, 1)
	tickAt(40 * time.Second) // the next tick, ~55 s after Open, is in time: nothing
	if d := cmp.Diff([]string{"1:use"}, types(t, path)); d != "" {
		t.Fatalf("checkpoint not due before the next tick (-want +got):\n%s", d)
	}
	tickAt(6 * time.Second) // the next one, ~61 s after Open, would be late: checkpoint now
	if d := cmp.Diff([]string{"1:use", "2:checkpoint"}, types(t, path)); d != "" {
		t.Fatalf("checkpoint due before the next tick (-want +got):\n%s", d)
	}

	// Ticks every 15 s, an event between most of them, never
	// CheckpointEvery events: no two checkpoints more than a minute apart.
	for i := range 40 {
		tickAt(15*time.Second + 7*time.Millisecond)
		if i%5 != 4 {
			appendN(t, s, 1)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	last, n := start, 0
	for _, ev := range readEvents(t, path) {
		if ev.Type != audit.TypeCheckpoint {
			continue
		}
		at, err := time.Parse(audit.TimeFormat, ev.Time)
		if err != nil {
			t.Fatal(err)
		}
		if gap := at.Sub(last); gap > time.Minute {
			t.Errorf("checkpoint seq %d came %v after the one before (or Open), more than the interval of 1m0s", ev.Seq, gap)
		}
		last, n = at, n+1
	}
	if n < 10 {
		t.Errorf("%d checkpoints in 10 minutes with events, want at least 10", n)
	}
	if _, err := verify(t, keys, true, path); err != nil {
		t.Errorf("Verify() = %v", err)
	}
}

// SPEC: a checkpoint at least every CheckpointEvery events. After an unclean
// stop, the events after the last checkpoint count towards the next one
// (they were counted as 1, so up to 2*CheckpointEvery-1 events could follow
// one another without a checkpoint).
func TestCheckpointEveryAcrossCrash(t *testing.T) {
	ids := func(prefix string, n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprint(prefix, i+1))
		}
		return out
	}
	tests := []struct {
		name          string
		before, after int // events before the crash, after the restart
		want          []string
	}{
		{
			name: "no-checkpoint-yet", before: 4, after: 4,
			want: []string{"1:use", "2:use", "3:use", "4:use", "5:use", "6:checkpoint", "7:use", "8:use", "9:use"},
		},
		{
			name: "after-a-checkpoint", before: 7, after: 4,
			want: []string{"1:use", "2:use", "3:use", "4:use", "5:use", "6:checkpoint", "7:use", "8:use",
				"9:use", "10:use", "11:use", "12:checkpoint", "13:use"},
		},
		{
			name: "checkpoint-last", before: 5, after: 5,
			want: []string{"1:use", "2:use", "3:use", "4:use", "5:use", "6:checkpoint",
				"7:use", "8:use", "9:use", "10:use", "11:use", "12:checkpoint"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			signer, keys := newSigner(t)
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			o := Options{Path: path, Now: newClock().Now, Signer: signer, CheckpointEvery: 5}
			appendIDs(t, openCrashable(t, o, seams{}), ids("a", tt.before)...) // then a crash
			s := openT(t, o, seams{tick: make(chan time.Time)})
			appendIDs(t, s, ids("b", tt.after)...)
			if d := cmp.Diff(tt.want, types(t, path)); d != "" {
				t.Errorf("events and checkpoints (-want +got):\n%s", d)
			}
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if _, err := verify(t, keys, true, path); err != nil {
				t.Errorf("Verify() = %v", err)
			}
		})
	}
}

func TestEventsSinceCheckpoint(t *testing.T) {
	signer, _ := newSigner(t)
	c := audit.NewChain("chn_count")
	now := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
	var file []byte
	add := func(details int) {
		ev := &audit.Event{Type: audit.TypeUse}
		if details > 0 {
			ev.Details = map[string]any{"pad": strings.Repeat("p", details)}
		}
		line, err := c.Seal(ev, now)
		if err != nil {
			t.Fatal(err)
		}
		file = append(append(file, line...), '\n')
	}
	checkpoint := func() {
		ev, err := c.Checkpoint(context.Background(), signer, "req_cp", now)
		if err != nil {
			t.Fatal(err)
		}
		line, err := c.Seal(ev, now)
		if err != nil {
			t.Fatal(err)
		}
		file = append(append(file, line...), '\n')
	}
	add(0)
	add(100 << 10) // lines longer than a read, across read boundaries
	noCheckpoint := len(file)
	checkpoint()
	atCheckpoint := len(file)
	add(100 << 10)
	add(0)
	add(70 << 10)
	tests := []struct {
		name      string
		end       int
		want      int
		wantCPSeq uint64
	}{
		{name: "ok/after-checkpoint", end: len(file), want: 3, wantCPSeq: 3},
		{name: "ok/checkpoint-last", end: atCheckpoint, want: 0, wantCPSeq: 3},
		{name: "ok/no-checkpoint", end: noCheckpoint, want: 2},
		{name: "ok/empty", end: 0, want: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rb, err := eventsSinceCheckpoint(bytes.NewReader(file), int64(tt.end), func(*audit.Event) bool { return true }, nil)
			got, cpSeq := rb.lines, rb.cpSeq
			if err != nil || got != tt.want || cpSeq != tt.wantCPSeq {
				t.Errorf("eventsSinceCheckpoint(end %d) = %d, %d, %v; want %d, %d", tt.end, got, cpSeq, err, tt.want, tt.wantCPSeq)
			}
		})
	}
}

func TestAppendCancelled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, Now: newClock().Now}, seams{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Append(ctx, &audit.Event{Type: "x"})
	if !errors.Is(err, broker.ErrUnavailable) || !errors.Is(err, context.Canceled) {
		t.Fatalf("Append(cancelled) = %v, want ErrUnavailable and context.Canceled", err)
	}
	if err := s.Append(context.Background(), &audit.Event{Type: "x", Details: map[string]any{"bad": func() {}}}); err == nil {
		t.Errorf("Append(unencodable event) = nil, want an error")
	}
	ev := &audit.Event{Type: "x"}
	if err := s.Append(context.Background(), ev); err != nil || ev.Seq != 1 {
		t.Errorf("Append() = %v seq %d, want nil, 1 (nothing written before)", err, ev.Seq)
	}
}

func rotatedFiles(t *testing.T, path string) []string {
	t.Helper()
	m, err := filepath.Glob(path + ".*")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(m)
	return m
}

func TestRotation(t *testing.T) {
	signer, keys := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, Now: newClock().Now, Signer: signer, RotateBytes: 1500}, seams{})
	appendN(t, s, 30)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rotated := rotatedFiles(t, path)
	if len(rotated) < 2 || s.Stats().Rotations != uint64(len(rotated)) {
		t.Fatalf("rotated files = %v, stats %+v; want at least 2", rotated, s.Stats())
	}
	for _, f := range rotated {
		evs := readEvents(t, f)
		if last := evs[len(evs)-1]; last.Type != audit.TypeCheckpoint {
			t.Errorf("rotated file %s ends with %s, want a checkpoint", f, last.Type)
		}
	}
	inOrder := append(rotated, path)
	if _, err := verify(t, keys, true, inOrder...); err != nil {
		t.Errorf("Verify(files in order) = %v", err)
	}
	swapped := append([]string(nil), inOrder...)
	swapped[0], swapped[1] = swapped[1], swapped[0]
	if _, err := verify(t, keys, false, swapped...); !errors.Is(err, audit.ErrTampered) {
		t.Errorf("Verify(files swapped) = %v, want ErrTampered", err)
	}
	if _, err := verify(t, keys, false, inOrder[1:]...); !errors.Is(err, audit.ErrTampered) {
		t.Errorf("Verify(first file missing) = %v, want ErrTampered (chain does not start at 1)", err)
	}
}

func TestRotationResume(t *testing.T) {
	signer, keys := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clk := newClock()
	o := Options{Path: path, Now: clk.Now, Signer: signer, RotateBytes: 1}
	s := openT(t, o, seams{})
	appendN(t, s, 1) // event, checkpoint, rotate: the current file is empty
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if lines := readLines(t, path); len(lines) != 0 {
		t.Fatalf("current file has %d lines, want 0", len(lines))
	}
	s = openT(t, o, seams{})
	ev := &audit.Event{Type: audit.TypeUse}
	if err := s.Append(context.Background(), ev); err != nil || ev.Seq != 3 {
		t.Fatalf("Append() after reopen = %v, seq %d; want nil, 3 (chain continues from the rotated file)", err, ev.Seq)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	files := append(rotatedFiles(t, path), path)
	if rep, err := verify(t, keys, true, files...); err != nil || len(rep.Chains) != 1 || rep.Chains[0].LastSeq != 4 {
		t.Errorf("Verify(%v) = %v, %+v; want one chain up to seq 4", files, err, rep)
	}
}

// A restart with the wall clock behind the previous run (an NTP step, a bad
// RTC) must not name the next rotated file with a timestamp that sorts
// before the files already rotated: `audit verify` reads rotated files in
// name order (trace.LogFiles), and a restart with an empty file resumes the
// chain from the newest name.
func TestRotationNamesAfterClockStepBack(t *testing.T) {
	signer, keys := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	late := &clock{t: time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC), step: time.Millisecond}
	early := &clock{t: time.Date(2025, 3, 3, 5, 6, 7, 0, time.UTC), step: time.Millisecond}

	s := openT(t, Options{Path: path, Now: late.Now, Signer: signer, RotateBytes: 1}, seams{})
	appendN(t, s, 1) // seq 1 event, seq 2 checkpoint, rotated
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, Options{Path: path, Now: early.Now, Signer: signer, RotateBytes: 1}, seams{})
	appendN(t, s, 1) // seq 3 event, seq 4 checkpoint, rotated
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	files, err := trace.LogFiles([]string{path})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, keys, true, files...); err != nil {
		t.Errorf("Verify(%v) of an untampered log = %v, want nil", files, err)
	}

	s = openT(t, Options{Path: path, Now: early.Now, Signer: signer}, seams{})
	ev := &audit.Event{Type: audit.TypeUse}
	if err := s.Append(context.Background(), ev); err != nil {
		t.Fatal(err)
	}
	if ev.Seq != 5 {
		t.Errorf("Append() after restart: seq %d, want 5 (a lower seq resumed from an older rotated file: the chain forks)", ev.Seq)
	}
}

func benchmarkAppend(b *testing.B, o Options) { benchmarkAppendWithin(b, o, 0) }

// benchmarkAppendWithin is benchmarkAppend through AppendWithin(ev,
// within) (0: Append).
func benchmarkAppendWithin(b *testing.B, o Options, within time.Duration) {
	o.Path = filepath.Join(b.TempDir(), "audit.jsonl")
	s, err := Open(o)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	b.ReportAllocs()
	b.SetParallelism(32) // many concurrent requests, as a busy broker has
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			ev := &audit.Event{Type: audit.TypeUse, RequestID: "req_01JBENCH", Workload: "payments-api", Owner: "team-payments"}
			var err error
			if within > 0 {
				err = s.AppendWithin(ev, within)
			} else {
				err = s.Append(context.Background(), ev)
			}
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	st := s.Stats()
	b.ReportMetric(float64(st.Events)/float64(max(st.Batches, 1)), "events/batch")
}

// BenchmarkAppend measures parallel Appends with group commit and fsync.
func BenchmarkAppend(b *testing.B) { benchmarkAppend(b, Options{}) }

// BenchmarkAppendJournal measures the same, each batch made durable
// through the journal (the server's default).
func BenchmarkAppendJournal(b *testing.B) { benchmarkAppend(b, Options{Journal: true}) }

// BenchmarkAppendNoFsync measures the same without fsync.
func BenchmarkAppendNoFsync(b *testing.B) { benchmarkAppend(b, Options{NoFsync: true}) }

// BenchmarkAppendWithinJournal is BenchmarkAppendJournal through
// AppendWithin (the proxy's use event, bounded by AuditTimeout): compare
// the two for what the pooled timer costs.
func BenchmarkAppendWithinJournal(b *testing.B) {
	benchmarkAppendWithin(b, Options{Journal: true}, 10*time.Second)
}

// BenchmarkAppendWithinNoFsync is BenchmarkAppendNoFsync through
// AppendWithin: the timer's CPU cost without the disk's wait.
func BenchmarkAppendWithinNoFsync(b *testing.B) {
	benchmarkAppendWithin(b, Options{NoFsync: true}, 10*time.Second)
}

func TestRotationByAge(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clk := newClock()
	tick := make(chan time.Time)
	s := openT(t, Options{Path: path, Now: clk.Now, RotateEvery: time.Hour}, seams{tick: tick})
	appendN(t, s, 2)
	tick <- time.Time{} // younger than an hour: nothing
	appendN(t, s, 1)
	if got := rotatedFiles(t, path); len(got) != 0 {
		t.Fatalf("rotated %v before the file was an hour old", got)
	}
	clk.Advance(2 * time.Hour)
	tick <- time.Time{} // an idle sink rotates by age on the ticker
	tick <- time.Time{} // the new file is empty: nothing more
	appendN(t, s, 1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	rotated := rotatedFiles(t, path)
	if len(rotated) != 1 || s.Stats().Rotations != 1 {
		t.Fatalf("rotated files = %v (stats %+v), want exactly 1", rotated, s.Stats())
	}
	if n := len(readLines(t, rotated[0])); n != 3 {
		t.Errorf("rotated file has %d lines, want the 3 events written before", n)
	}
	if rep, err := verify(t, nil, false, append(rotated, path)...); err != nil || rep.Chains[0].LastSeq != 4 {
		t.Errorf("Verify(rotated, current) = %v, %+v; want one chain up to seq 4", err, rep)
	}
}

func TestEveryEventHasRequestID(t *testing.T) {
	signer, _ := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, Now: newClock().Now, Signer: signer, CheckpointEvery: 2}, seams{})
	given := &audit.Event{Type: audit.TypeIssue, RequestID: "req_GIVEN"}
	if err := s.Append(context.Background(), given); err != nil {
		t.Fatal(err)
	}
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypePolicyLoad}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	evs := readEvents(t, path)
	var got []string
	for _, ev := range evs {
		if !strings.HasPrefix(ev.RequestID, "req_") {
			t.Errorf("%s event seq %d has request_id %q, want req_...", ev.Type, ev.Seq, ev.RequestID)
		}
		got = append(got, ev.Type)
	}
	if diff := cmp.Diff([]string{"issue", "policy_load", "checkpoint"}, got); diff != "" {
		t.Errorf("events (-want +got):\n%s", diff)
	}
	if evs[0].RequestID != "req_GIVEN" {
		t.Errorf("a given request_id was replaced: %q", evs[0].RequestID)
	}
}

// TestDeferredRidesWithNextAppend: deferred events wait for the next Append
// and share its single write and fsync, written before it in arrival order.
func TestDeferredRidesWithNextAppend(t *testing.T) {
	fl := &faults{}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, Now: newClock().Now, DeferFor: time.Hour}, faultSeams(fl))
	results := make(chan error, 3)
	for i := range 3 {
		s.AppendDeferred(&audit.Event{Type: fmt.Sprintf("deferred-%d", i)}, func(err error) { results <- err })
	}
	for len(s.reqs) > 0 { // the writer has taken them (and holds them)
		runtime.Gosched()
	}
	if st := s.Stats(); st.Batches != 0 {
		t.Fatalf("deferred events written on their own: %+v", st)
	}
	if err := s.Append(context.Background(), &audit.Event{Type: "waited"}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := <-results; err != nil {
			t.Errorf("deferred outcome = %v", err)
		}
	}
	fl.mu.Lock()
	writes, syncs := fl.writes, fl.syncs
	fl.mu.Unlock()
	if st := s.Stats(); st.Batches != 1 || st.Events != 4 || writes != 1 || syncs != 1 {
		t.Errorf("3 deferred + 1 event: %d batches, %d events, %d write(), %d fsync; want 1, 4, 1, 1", st.Batches, st.Events, writes, syncs)
	}
	if diff := cmp.Diff([]string{"1:deferred-0", "2:deferred-1", "3:deferred-2", "4:waited"}, types(t, path)); diff != "" {
		t.Errorf("file order (-want +got):\n%s", diff)
	}
}

// TestDeferredAlone: with nothing else coming, a deferred event is made
// durable after DeferFor; at Close, at once.
func TestDeferredAlone(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, DeferFor: 5 * time.Millisecond}, seams{})
	done := make(chan error, 1)
	s.AppendDeferred(&audit.Event{Type: "alone"}, func(err error) { done <- err })
	if err := <-done; err != nil {
		t.Fatalf("deferred outcome = %v", err)
	}
	if got := types(t, path); len(got) != 1 || got[0] != "1:alone" {
		t.Errorf("file = %v, want the deferred event", got)
	}

	path2 := filepath.Join(t.TempDir(), "audit.jsonl")
	s2, err := Open(Options{Path: path2, DeferFor: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	done2 := make(chan error, 1)
	s2.AppendDeferred(&audit.Event{Type: "at-close"}, func(err error) { done2 <- err })
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done2; err != nil {
		t.Fatalf("deferred outcome at Close = %v", err)
	}
	if got := types(t, path2); len(got) != 1 || got[0] != "1:at-close" {
		t.Errorf("file after Close = %v, want the deferred event", got)
	}
	var afterClose error
	s2.AppendDeferred(&audit.Event{Type: "late"}, func(err error) { afterClose = err })
	if !errors.Is(afterClose, broker.ErrUnavailable) {
		t.Errorf("AppendDeferred after Close: outcome %v, want ErrUnavailable at once", afterClose)
	}
}

// TestDeferredFailure: a failed batch reports its error to deferred events
// too, and they are not in the file.
func TestDeferredFailure(t *testing.T) {
	fl := &faults{}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, Now: newClock().Now, DeferFor: time.Hour}, faultSeams(fl))
	appendN(t, s, 2)
	done := make(chan error, 1)
	s.AppendDeferred(&audit.Event{Type: "deferred"}, func(err error) { done <- err })
	fl.set(func(f *faults) { f.sync = true })
	if err := s.Append(context.Background(), &audit.Event{Type: "waited"}); !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("Append(failing fsync) = %v, want ErrUnavailable", err)
	}
	if err := <-done; !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("deferred outcome = %v, want ErrUnavailable", err)
	}
	if got := types(t, path); len(got) != 2 {
		t.Errorf("file = %v, want the 2 durable events only", got)
	}
}

// TestDeferredBoundedByMaxBatch: MaxBatch deferred events are written
// without waiting for DeferFor.
func TestDeferredBoundedByMaxBatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, MaxBatch: 4, DeferFor: time.Hour}, seams{})
	results := make(chan error, 4)
	for i := range 4 {
		s.AppendDeferred(&audit.Event{Type: fmt.Sprintf("d%d", i)}, func(err error) { results <- err })
	}
	for range 4 {
		if err := <-results; err != nil {
			t.Fatal(err)
		}
	}
	if st := s.Stats(); st.Events != 4 {
		t.Errorf("Stats() = %+v, want 4 events written", st)
	}
}

// TestDeferredReturnsAtOnceWhenQueueIsFull: AppendDeferred does not wait
// for room in the queue: with the writer stuck in an fsync (a disk whose
// writes hang) and MaxBatch requests queued behind it, it still returns at
// once, and its event is written, after the others, once the disk answers.
// (Exchange relies on it: after an issue event not durable within
// AuditTimeout, its deny event is deferred and the 503 goes out.)
func TestDeferredReturnsAtOnceWhenQueueIsFull(t *testing.T) {
	gate := make(chan struct{})
	fl := &faults{syncGate: gate}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, Now: newClock().Now, MaxBatch: 2, DeferFor: time.Hour}, faultSeams(fl))
	released := false
	release := func() {
		if !released {
			released = true
			close(gate)
		}
	}
	t.Cleanup(release) // before openT's Close, which waits for the writer
	errs := make(chan error, 3)
	go func() { errs <- s.Append(context.Background(), &audit.Event{Type: "first"}) }()
	for { // the first batch is stuck in its fsync
		fl.mu.Lock()
		stuck := fl.syncs == 1
		fl.mu.Unlock()
		if stuck {
			break
		}
		runtime.Gosched()
	}
	for range 2 {
		go func() { errs <- s.Append(context.Background(), &audit.Event{Type: "queued"}) }()
	}
	for len(s.reqs) < cap(s.reqs) { // the queue is full
		runtime.Gosched()
	}
	deferred := make(chan error, 1)
	returned := make(chan struct{})
	go func() {
		s.AppendDeferred(&audit.Event{Type: "deferred"}, func(err error) { deferred <- err })
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Fatal("AppendDeferred still waiting for room in the queue after 10s")
	}
	release()
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("Append() = %v", err)
		}
	}
	if err := s.Close(); err != nil { // writes the deferred event (DeferFor is an hour)
		t.Fatal(err)
	}
	if err := <-deferred; err != nil {
		t.Fatalf("deferred outcome = %v", err)
	}
	if got := types(t, path); len(got) != 4 || got[3] != "4:deferred" {
		t.Errorf("file = %v, want first, queued, queued, deferred", got)
	}
}

// TestAppendWithin: AppendWithin is Append when the disk answers, and
// stops waiting after its bound when it does not (the write hangs), with
// ErrUnavailable wrapping broker.ErrAuditPending: for an event queued
// behind the stuck write and for one that finds the queue full (held for
// the feeder): both are written once the disk answers, as "pending"
// promises.
func TestAppendWithin(t *testing.T) {
	gate := make(chan struct{})
	fl := &faults{}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, Now: newClock().Now, MaxBatch: 1}, faultSeams(fl))
	released := false
	release := func() {
		if !released {
			released = true
			close(gate)
		}
	}
	t.Cleanup(release) // before openT's Close, which waits for the writer
	if err := s.AppendWithin(&audit.Event{Type: "answered"}, time.Minute); err != nil {
		t.Fatalf("AppendWithin() = %v", err)
	}

	var synced int
	fl.set(func(f *faults) { f.syncGate, synced = gate, f.syncs })
	errs := make(chan error, 1)
	go func() { errs <- s.Append(context.Background(), &audit.Event{Type: "stuck"}) }()
	for { // its batch is stuck in its fsync
		fl.mu.Lock()
		stuck := fl.syncs == synced+1
		fl.mu.Unlock()
		if stuck {
			break
		}
		runtime.Gosched()
	}
	pending := func(typ string) {
		t.Helper()
		err := s.AppendWithin(&audit.Event{Type: typ}, 20*time.Millisecond)
		if !errors.Is(err, broker.ErrUnavailable) || !errors.Is(err, broker.ErrAuditPending) {
			t.Fatalf("AppendWithin(%s) on a stuck disk = %v, want ErrUnavailable wrapping ErrAuditPending", typ, err)
		}
	}
	pending("queued") // takes the queue's one place
	pending("held")   // finds the queue full
	release()
	if err := <-errs; err != nil {
		t.Fatalf("Append() = %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"1:answered", "2:stuck", "3:queued", "4:held"}, types(t, path)); diff != "" {
		t.Errorf("file (-want +got):\n%s", diff)
	}
}

// TestLock: a second sink on the same audit file is refused while the first
// is open (it would interleave its own chain and reset the same journal),
// and opens once the first is closed.
func TestLock(t *testing.T) {
	signer, keys := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Signer: signer, Journal: true}
	s := openT(t, o, seams{})
	appendN(t, s, 2)
	before, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	journal, err := os.ReadFile(JournalPath(path))
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(o)
	if err == nil || !strings.Contains(err.Error(), "in use by another sink") || !strings.Contains(err.Error(), LockPath(path)) {
		t.Fatalf("Open(same file) while open = %v, want an error naming the lock %s", err, LockPath(path))
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, before) {
		t.Errorf("the refused Open changed the audit file")
	}
	if after, _ := os.ReadFile(JournalPath(path)); !bytes.Equal(after, journal) {
		t.Errorf("the refused Open changed the journal")
	}
	appendN(t, s, 1)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := openT(t, o, seams{})
	appendN(t, s2, 1)
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, keys, true, path); err != nil {
		t.Errorf("Verify() = %v", err)
	}
	if strings.HasPrefix(filepath.Base(LockPath(path)), "audit.jsonl") {
		t.Errorf("lock file %s would match the glob audit.jsonl*", LockPath(path))
	}
}

// TestLockWaitsForVerify: a reader's moment of shared lock (audit verify's
// CheckJournal) does not make Open call the file taken.
func TestLockWaitsForVerify(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	lf, err := os.OpenFile(LockPath(path), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Flock(int(lf.Fd()), syscall.LOCK_SH); err != nil {
		t.Fatal(err)
	}
	opened := make(chan error, 1)
	go func() {
		s, err := Open(Options{Path: path})
		if err == nil {
			err = s.Close()
		}
		opened <- err
	}()
	select {
	case err := <-opened:
		t.Fatalf("Open() while a reader held the lock = %v, want it to wait", err)
	case <-time.After(50 * time.Millisecond):
	}
	_ = lf.Close() // the reader is done
	if err := <-opened; err != nil {
		t.Errorf("Open() after the reader let go = %v", err)
	}
}

// TestCheckpointDefaultsMeetSPEC: with the defaults the server uses (no
// CheckpointEvery, no CheckpointInterval), a checkpoint follows at most
// 1,000 events and at most 60 s (SPEC "Audit log").
func TestCheckpointDefaultsMeetSPEC(t *testing.T) {
	signer, keys := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clk := newClock()
	tick := make(chan time.Time)
	s := openT(t, Options{Path: path, Now: clk.Now, Signer: signer, NoFsync: true}, seams{tick: tick})

	appendN(t, s, 1000)
	evs := readEvents(t, path)
	if len(evs) != 1001 || evs[1000].Type != audit.TypeCheckpoint {
		t.Fatalf("after 1,000 events: %d lines, the last %v; want a checkpoint as line 1,001", len(evs), types(t, path)[len(evs)-1])
	}

	appendN(t, s, 1)
	clk.Advance(60 * time.Second)
	tick <- time.Time{}
	tick <- time.Time{} // the writer has handled the first tick
	if got, want := types(t, path)[1001:], []string{"1002:use", "1003:checkpoint"}; !cmp.Equal(got, want) {
		t.Errorf("60 s after the last checkpoint, one event since: lines %v, want %v", got, want)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, keys, true, path); err != nil {
		t.Errorf("Verify() = %v", err)
	}
}

// TestStatsCheckpointSeq: Stats names the seq of the last durable line and
// of the last durable checkpoint (the high-water marks the broker exports),
// also right after Open: from the file, from the newest rotated file when
// the file is empty, and after an unclean stop, which wrote no final
// checkpoint.
func TestStatsCheckpointSeq(t *testing.T) {
	signer, _ := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	o := Options{Path: path, Now: newClock().Now, Signer: signer, CheckpointEvery: 3}
	s := openCrashable(t, o, seams{})
	appendIDs(t, s, "req_1", "req_2", "req_3", "req_4") // seq 1-3, checkpoint 4, seq 5
	if st := s.Stats(); st.Seq != 5 || st.CheckpointSeq != 4 {
		t.Fatalf("Stats() = seq %d, checkpoint seq %d; want 5 and 4", st.Seq, st.CheckpointSeq)
	}
	// An unclean stop: no final checkpoint.
	s2 := openT(t, o, seams{})
	if st := s2.Stats(); st.Seq != 5 || st.CheckpointSeq != 4 {
		t.Errorf("Stats() after an unclean stop = seq %d, checkpoint seq %d; want 5 and 4", st.Seq, st.CheckpointSeq)
	}
	if err := s2.Close(); err != nil { // final checkpoint: seq 6
		t.Fatal(err)
	}
	// The file rotated away: the chain resumes from the rotated file.
	if err := os.Rename(path, path+".20250304T050607.000000000Z"); err != nil {
		t.Fatal(err)
	}
	s3 := openT(t, o, seams{})
	if st := s3.Stats(); st.Seq != 6 || st.CheckpointSeq != 6 {
		t.Errorf("Stats() resumed from a rotated file = seq %d, checkpoint seq %d; want 6 and 6", st.Seq, st.CheckpointSeq)
	}
}

// stuckWithFullQueue opens a sink (MaxBatch 2, DeferFor an hour) whose
// first batch is stuck in its fsync with the queue full behind it (a disk
// whose writes hang): release lets the disk answer; errs gets the three
// Appends' outcomes.
func stuckWithFullQueue(t *testing.T) (s *Sink, path string, release func(), errs chan error) {
	t.Helper()
	gate := make(chan struct{})
	fl := &faults{syncGate: gate}
	path = filepath.Join(t.TempDir(), "audit.jsonl")
	s = openT(t, Options{Path: path, Now: newClock().Now, MaxBatch: 2, DeferFor: time.Hour}, faultSeams(fl))
	var once sync.Once
	release = func() { once.Do(func() { close(gate) }) }
	t.Cleanup(release) // before openT's Close, which waits for the writer
	errs = make(chan error, 3)
	go func() { errs <- s.Append(context.Background(), &audit.Event{Type: "first"}) }()
	for { // the first batch is stuck in its fsync
		fl.mu.Lock()
		stuck := fl.syncs == 1
		fl.mu.Unlock()
		if stuck {
			break
		}
		runtime.Gosched()
	}
	for range 2 {
		go func() { errs <- s.Append(context.Background(), &audit.Event{Type: "queued"}) }()
	}
	for len(s.reqs) < cap(s.reqs) { // the queue is full
		runtime.Gosched()
	}
	return s, path, release, errs
}

// TestDeferredOverflowIsOneGoroutineInOrder: deferred events that find the
// queue full (the writer stuck on a disk whose writes hang) are held in
// order and queued by one goroutine, not one goroutine each (which grew
// without bound for as long as the stall lasted, and queued them in
// whatever order the goroutines ran); once the disk answers they are
// written in the order AppendDeferred was called, after what was queued
// before them.
func TestDeferredOverflowIsOneGoroutineInOrder(t *testing.T) {
	s, path, release, errs := stuckWithFullQueue(t)
	const n = 200
	before := runtime.NumGoroutine()
	outcomes := make(chan error, n)
	for i := range n {
		s.AppendDeferred(&audit.Event{Type: fmt.Sprintf("d%03d", i)}, func(err error) { outcomes <- err })
	}
	if grew := runtime.NumGoroutine() - before; grew > 1 {
		t.Errorf("%d deferred events waiting for room in the queue: %d more goroutines, want at most 1", n, grew)
	}
	release()
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("Append() = %v", err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for range n {
		if err := <-outcomes; err != nil {
			t.Fatalf("deferred outcome = %v", err)
		}
	}
	want := []string{"1:first", "2:queued", "3:queued"}
	for i := range n {
		want = append(want, fmt.Sprintf("%d:d%03d", i+4, i))
	}
	if diff := cmp.Diff(want, types(t, path)); diff != "" {
		t.Errorf("file (-want +got):\n%s", diff)
	}
}

// TestDeferredOverflowBound: past maxOverflow held events a deferred event
// is refused at once (ErrUnavailable, its done called by AppendDeferred),
// rather than held for as long as the disk hangs.
func TestDeferredOverflowBound(t *testing.T) {
	s, path, release, errs := stuckWithFullQueue(t)
	s.maxOverflow = 3
	var refused, written []string
	var mu sync.Mutex
	for i := range 5 {
		typ := fmt.Sprintf("d%d", i)
		s.AppendDeferred(&audit.Event{Type: typ}, func(err error) {
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if !errors.Is(err, broker.ErrUnavailable) {
					t.Errorf("%s refused with %v, want ErrUnavailable", typ, err)
				}
				refused = append(refused, typ)
				return
			}
			written = append(written, typ)
		})
	}
	mu.Lock()
	if diff := cmp.Diff([]string{"d3", "d4"}, refused); diff != "" {
		t.Errorf("refused while the queue and the overflow are full (-want +got):\n%s", diff)
	}
	mu.Unlock()
	release()
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("Append() = %v", err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"1:first", "2:queued", "3:queued", "4:d0", "5:d1", "6:d2"}, types(t, path)); diff != "" {
		t.Errorf("file (-want +got):\n%s", diff)
	}
}

// TestDeferredOverflowAtClose: Close with deferred events still waiting
// for room in the queue neither panics nor leaves them behind: it writes
// them, in order, and each done is called exactly once, before Close
// returns; AppendDeferred after Close refuses at once.
func TestDeferredOverflowAtClose(t *testing.T) {
	s, path, release, errs := stuckWithFullQueue(t)
	const n = 50
	var mu sync.Mutex
	calls := make([]int, n)
	for i := range n {
		s.AppendDeferred(&audit.Event{Type: fmt.Sprintf("d%02d", i)}, func(err error) {
			mu.Lock()
			defer mu.Unlock()
			calls[i]++
			if err != nil {
				t.Errorf("d%02d: %v", i, err)
			}
		})
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	release()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("Append() = %v", err)
		}
	}
	mu.Lock()
	for i, c := range calls {
		if c != 1 {
			t.Errorf("d%02d: done called %d times by the end of Close, want 1", i, c)
		}
	}
	mu.Unlock()
	want := []string{"1:first", "2:queued", "3:queued"}
	for i := range n {
		want = append(want, fmt.Sprintf("%d:d%02d", i+4, i))
	}
	if diff := cmp.Diff(want, types(t, path)); diff != "" {
		t.Errorf("file (-want +got):\n%s", diff)
	}
	late := make(chan error, 1)
	s.AppendDeferred(&audit.Event{Type: "late"}, func(err error) { late <- err })
	if err := <-late; !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("AppendDeferred after Close: %v, want ErrUnavailable", err)
	}
}

// TestDeferredRacingClose: deferred events arrive while Close runs, some
// held for room in the queue (the writer stuck), some after Close began.
// Each done is called exactly once, by the time its AppendDeferred has
// returned or Close has; each event reported written is in the file, and
// none reported refused is; no feeder outlives Close.
func TestDeferredRacingClose(t *testing.T) {
	s, path, release, errs := stuckWithFullQueue(t)
	const callers, each = 8, 40
	var mu sync.Mutex
	outcome := map[string][]error{}
	var wg sync.WaitGroup
	start := make(chan struct{})
	for c := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			for i := range each {
				typ := fmt.Sprintf("c%d-%02d", c, i)
				s.AppendDeferred(&audit.Event{Type: typ}, func(err error) {
					mu.Lock()
					outcome[typ] = append(outcome[typ], err)
					mu.Unlock()
				})
			}
		}()
	}
	closed := make(chan error, 1)
	close(start)
	go func() { closed <- s.Close() }()
	release()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("Append() = %v", err)
		}
	}
	s.overflowMu.Lock()
	if s.feeding() || len(s.overflow) != 0 || s.held != 0 {
		t.Errorf("after Close: feeding %v, %d held in the overflow, held count %d; want none", s.feeding(), len(s.overflow), s.held)
	}
	s.overflowMu.Unlock()
	inFile := map[string]bool{}
	last := map[string]string{} // a caller's last event in the file
	for _, ev := range readEvents(t, path) {
		inFile[ev.Type] = true
		if c, _, ok := strings.Cut(ev.Type, "-"); ok && strings.HasPrefix(c, "c") {
			if ev.Type < last[c] {
				t.Errorf("%s written after %s: a caller's deferred events out of order", ev.Type, last[c])
			}
			last[c] = ev.Type
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for c := range callers {
		for i := range each {
			typ := fmt.Sprintf("c%d-%02d", c, i)
			got := outcome[typ]
			if len(got) != 1 {
				t.Errorf("%s: done called %d times, want once", typ, len(got))
				continue
			}
			switch err := got[0]; {
			case err == nil && !inFile[typ]:
				t.Errorf("%s reported written, not in the file", typ)
			case err != nil && !errors.Is(err, broker.ErrUnavailable):
				t.Errorf("%s: %v, want nil or ErrUnavailable", typ, err)
			case err != nil && inFile[typ]:
				t.Errorf("%s reported refused (%v), but in the file", typ, err)
			}
		}
	}
}

// TestDeferredRefusedOnceClosing: once Close has begun (it waits for the
// held deferred events to be queued), an event that would have to be held
// is refused at once, not held: AppendDeferred's done gets ErrUnavailable
// before it returns, and AppendWithin, which would queue behind the held
// ones, fails without ErrAuditPending. What was held before is written.
func TestDeferredRefusedOnceClosing(t *testing.T) {
	s, path, release, errs := stuckWithFullQueue(t)
	s.AppendDeferred(&audit.Event{Type: "held"}, func(err error) {
		if err != nil {
			t.Errorf("held: %v", err)
		}
	})
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	for { // Close has begun: it waits for the feeder
		s.overflowMu.Lock()
		closing := s.closing
		s.overflowMu.Unlock()
		if closing {
			break
		}
		runtime.Gosched()
	}
	late := make(chan error, 1)
	s.AppendDeferred(&audit.Event{Type: "late"}, func(err error) { late <- err })
	select {
	case err := <-late:
		if !errors.Is(err, broker.ErrUnavailable) {
			t.Errorf("AppendDeferred while closing: done got %v; want ErrUnavailable", err)
		}
	default:
		t.Error("AppendDeferred while closing: held (done not called before it returned); want it refused")
	}
	// The bound only ends the wait of an event wrongly held.
	if err := s.AppendWithin(&audit.Event{Type: "within"}, time.Second); !errors.Is(err, broker.ErrUnavailable) || errors.Is(err, broker.ErrAuditPending) {
		t.Errorf("AppendWithin while closing = %v; want ErrUnavailable, not pending", err)
	}
	release()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatalf("Append() = %v", err)
		}
	}
	if diff := cmp.Diff([]string{"1:first", "2:queued", "3:queued", "4:held"}, types(t, path)); diff != "" {
		t.Errorf("file (-want +got):\n%s", diff)
	}
}
