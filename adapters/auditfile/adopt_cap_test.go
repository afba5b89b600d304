package auditfile

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// countingEd is an Ed25519 signer counting the checks of its checkpoints
// at Open (ownCheckpoint reads PublicKey once per signature it verifies).
type countingEd struct {
	*audit.Ed25519Signer
	calls *atomic.Int64
}

func (c countingEd) PublicKey() ed25519.PublicKey {
	c.calls.Add(1)
	return c.Ed25519Signer.PublicKey()
}

// forgedOwnCheckpoints is the file a sink with signer left after a clean
// stop (3 events, its checkpoint at seq 4), then n lines typed checkpoint
// under signer's key id that another key signed (seq 5..4+n), as whoever
// can write the file could add them. It returns its path, the clock and
// the verification keys of the genuine checkpoint.
func forgedOwnCheckpoints(t *testing.T, signer audit.Signer, n int) (string, *clock) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clk := newClock()
	s := openT(t, Options{Path: path, Now: clk.Now, Signer: signer}, seams{})
	appendN(t, s, 3)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	c, err := audit.ResumeChain(lines[len(lines)-1])
	if err != nil {
		t.Fatal(err)
	}
	other, _ := newSigner(t)
	var file []byte
	for range n {
		now := clk.Now()
		ev, err := c.Checkpoint(context.Background(), other, "", now)
		if err != nil {
			t.Fatal(err)
		}
		ev.Checkpoint.KeyID, ev.Checkpoint.Alg = signer.KeyID(), signer.Alg()
		l, err := c.Seal(ev, now)
		if err != nil {
			t.Fatal(err)
		}
		file = append(append(file, l...), '\n')
	}
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(file); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	return path, clk
}

// TestResumeCapsFailedOwnChecks: each line typed checkpoint under the
// sink's own key id costs Open a signature check (a VerifyOwn for a
// transit signer), so whoever can write the file could add 100,000 of
// them for 22 s of start-up. Past maxFailedChecks failed checks, Open
// checks no more: the checkpoints before are counted among the adopted
// lines unchecked (an over-report: the genuine checkpoint behind the
// forged ones is not reached), and it says so once. audit verify still
// fails the forged lines.
func TestResumeCapsFailedOwnChecks(t *testing.T) {
	for _, tc := range []struct {
		name string
		// signer returns the sink's signer and what audit verify checks
		// its checkpoints with.
		signer func(*testing.T, *atomic.Int64) (audit.Signer, audit.VerifyOptions)
	}{
		{"ed25519", func(t *testing.T, calls *atomic.Int64) (audit.Signer, audit.VerifyOptions) {
			ed, keys := newSigner(t)
			return countingEd{ed, calls}, audit.VerifyOptions{Keys: keys, RequireCheckpoint: true}
		}},
		{"verify-own", func(t *testing.T, calls *atomic.Int64) (audit.Signer, audit.VerifyOptions) {
			ed, _ := newSigner(t)
			vf := func(kid, alg string, msg, sig []byte) error {
				if kid != "own:1" || alg != audit.AlgVaultTransit {
					return fmt.Errorf("%w: %q", audit.ErrUnknownKey, kid)
				}
				if !ed25519.Verify(ed.PublicKey(), msg, sig) {
					return errors.New("bad signature")
				}
				return nil
			}
			return countingOwn{selfChecking{ed}, calls}, audit.VerifyOptions{VerifyFunc: vf, RequireCheckpoint: true}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// Fewer than the cap: all checked, the genuine checkpoint ends the range.
			var calls atomic.Int64
			signer, _ := tc.signer(t, &calls)
			few := maxFailedChecks / 2
			path, clk := forgedOwnCheckpoints(t, signer, few)
			calls.Store(0)
			s := openT(t, Options{Path: path, Now: clk.Now, Signer: signer}, seams{})
			got := s.UnsignedResumed()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			want := UnsignedRange{FirstSeq: 5, LastSeq: uint64(4 + few), Lines: few, LastCheckpointSeq: 4}
			if got == nil || *got != want {
				t.Errorf("UnsignedResumed() after %d forged checkpoints = %+v, want %+v", few, got, want)
			}
			if n := calls.Load(); n != int64(few)+1 {
				t.Errorf("%d checks for %d forged checkpoints and the genuine one, want %d", n, few, few+1)
			}

			// More than the cap.
			calls.Store(0)
			signer, vo := tc.signer(t, &calls)
			many := 3 * maxFailedChecks
			path, clk = forgedOwnCheckpoints(t, signer, many)
			calls.Store(0)
			var logs brokertest.SyncBuffer
			s = openT(t, Options{Path: path, Now: clk.Now, Signer: signer, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, seams{})
			got = s.UnsignedResumed()
			n := calls.Load()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			if n > int64(maxFailedChecks) {
				t.Errorf("%d checks for %d forged checkpoints, want at most %d", n, many, maxFailedChecks)
			}
			// Over-reported: back to the file's first line.
			want = UnsignedRange{FirstSeq: 1, LastSeq: uint64(4 + many), Lines: 4 + many}
			if got == nil || *got != want {
				t.Errorf("UnsignedResumed() after %d forged checkpoints = %+v, want %+v", many, got, want)
			}
			out := logs.String()
			if c := strings.Count(out, "stopped checking checkpoint signatures"); c != 1 {
				t.Errorf("Open() logged the cap %d times, want once: %q", c, out)
			}
			for _, w := range []string{"level=WARN", fmt.Sprintf("failed_checks=%d", maxFailedChecks),
				fmt.Sprintf("unchecked_from_seq=%d", 4+many-maxFailedChecks)} {
				if !strings.Contains(out, w) {
					t.Errorf("Open() logged %q, want it to contain %q", out, w)
				}
			}
			// The sink's checkpoint at Close signs the forged lines with
			// the rest; audit verify still fails them.
			if _, err := audit.VerifyFiles([]string{path}, vo); err == nil || !strings.Contains(err.Error(), "seq 5") {
				t.Errorf("Verify() of the forged checkpoints = %v, want the first (seq 5) failed", err)
			}
		})
	}
}

// TestResumeScanLogsProgress: reading a long file back to its last
// checkpoint (a never-checkpointed file, or the first start after a change
// of checkpoint key: 10 GB take ~50 s) logs an INFO line every
// scanLogBytes read, so that an operator sees what start-up is doing; a
// file under scanLogBytes logs none.
func TestResumeScanLogsProgress(t *testing.T) {
	old := scanLogBytes
	t.Cleanup(func() { scanLogBytes = old })
	scanLogBytes = 4 << 10
	signer, _ := newSigner(t)
	clk := newClock()
	dir := t.TempDir()

	small := sealUses(t, audit.NewChain("chn_small"), 3, clk.Now())
	if int64(len(small)) >= scanLogBytes {
		t.Fatalf("small file of %d bytes", len(small))
	}
	out := openLogging(t, filepath.Join(dir, "small.jsonl"), small, Options{Now: clk.Now, Signer: signer})
	if strings.Contains(out, "reading the audit file back") {
		t.Errorf("Open() of a %d-byte file logged %q, want no progress line", len(small), out)
	}

	// Longer than a read (64 KiB): a line per read past the threshold.
	long := sealUses(t, audit.NewChain("chn_long"), 1200, clk.Now())
	size := int64(len(long))
	if size < 2*(64<<10) {
		t.Fatalf("long file of %d bytes", size)
	}
	out = openLogging(t, filepath.Join(dir, "long.jsonl"), long, Options{Now: clk.Now, Signer: signer})
	var progress []string
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "reading the audit file back") {
			progress = append(progress, l)
		}
	}
	if len(progress) < 2 {
		t.Fatalf("Open() of a %d-byte file without checkpoint logged %q, want a progress line per read", size, out)
	}
	for _, w := range []string{"level=INFO", "bytes_read=65536 ", fmt.Sprintf("of_bytes=%d", size)} {
		if !strings.Contains(progress[0], w) {
			t.Errorf("first progress line %q, want it to contain %q", progress[0], w)
		}
	}
}

// TestResumeUncheckableKidsDoNotReachTheCap: lines typed checkpoint by a
// key id the sink cannot check (the old key's after a change of key, or one
// a forger named) cost no signature check with the Ed25519 signer and one
// VerifyOwn per key id with a self-checking one (unknownKids): they are not
// counted toward maxFailedChecks one per line, so however many there are,
// the sink's own checkpoint behind them is still checked and ends the range
// (not over-reported back to the file's first line), with no cap WARN.
func TestResumeUncheckableKidsDoNotReachTheCap(t *testing.T) {
	for _, tc := range []struct {
		name      string
		signer    func(*testing.T, *atomic.Int64) audit.Signer
		maxChecks int64
	}{
		{"ed25519", func(t *testing.T, calls *atomic.Int64) audit.Signer {
			ed, _ := newSigner(t)
			return countingEd{ed, calls}
		}, 1},
		{"verify-own", func(t *testing.T, calls *atomic.Int64) audit.Signer {
			ed, _ := newSigner(t)
			return countingOwn{selfChecking{ed}, calls}
		}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var calls atomic.Int64
			signer := tc.signer(t, &calls)
			path := filepath.Join(t.TempDir(), "audit.jsonl")
			clk := newClock()
			c := closedChain(t, Options{Path: path, Now: clk.Now, Signer: signer}, 3) // the checkpoint at seq 4
			other, _ := newSigner(t)
			n := 3 * maxFailedChecks
			var file []byte
			for range n {
				now := clk.Now()
				ev, err := c.Checkpoint(context.Background(), otherKid{other}, "", now)
				if err != nil {
					t.Fatal(err)
				}
				l, err := c.Seal(ev, now)
				if err != nil {
					t.Fatal(err)
				}
				file = append(append(file, l...), '\n')
			}
			appendFile(t, path, file)
			calls.Store(0)
			var logs brokertest.SyncBuffer
			s := openT(t, Options{Path: path, Now: clk.Now, Signer: signer, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, seams{})
			got := s.UnsignedResumed()
			checks := calls.Load()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			want := UnsignedRange{FirstSeq: 5, LastSeq: uint64(4 + n), Lines: n, LastCheckpointSeq: 4}
			if got == nil || *got != want {
				t.Errorf("UnsignedResumed() after %d checkpoints by another key id = %+v, want %+v", n, got, want)
			}
			if checks > tc.maxChecks {
				t.Errorf("%d checks for %d checkpoints by one other key id and the sink's own, want at most %d", checks, n, tc.maxChecks)
			}
			if out := logs.String(); strings.Contains(out, "stopped checking checkpoint signatures") {
				t.Errorf("Open() logged the cap for checkpoints it could not check: %q", out)
			}
		})
	}
}
