package auditfile

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// TestResumeWarnsOfUnsignedTail: lines after a file's last checkpoint when
// the sink opens it were written before an unclean stop, or added by
// whoever could write the file while the broker was stopped; either way no
// checkpoint covers them, and the next one the sink makes signs them as if
// it had written them. Nothing in the file can tell them apart, so Open
// says so in the broker's log (kept apart from the file), naming the seqs.
func TestResumeWarnsOfUnsignedTail(t *testing.T) {
	signer, keys := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clk := newClock()
	s := openT(t, Options{Path: path, Now: clk.Now, Signer: signer}, seams{})
	appendN(t, s, 3)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path) // 3 events and the final checkpoint, seq 4

	// A clean reopen: nothing to warn of.
	var logs brokertest.SyncBuffer
	s = openT(t, Options{Path: path, Now: clk.Now, Signer: signer, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, seams{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "no checkpoint covers") {
		t.Errorf("Open() of a file ending with a checkpoint logged %q", logs.String())
	}

	// While the broker is stopped, a line is added, linked to the last.
	lines = readLines(t, path)
	last, err := audit.ParseLine(lines[len(lines)-1])
	if err != nil || last.Type != audit.TypeCheckpoint {
		t.Fatalf("last line = %v, %v; want a checkpoint", last, err)
	}
	forged, err := json.Marshal(&audit.Event{V: audit.Version, Seq: last.Seq + 1, Time: last.Time, Chain: last.Chain,
		Prev: audit.HashLine(lines[len(lines)-1]), Type: audit.TypeAdmin, Admin: "someone/else"})
	if err != nil {
		t.Fatal(err)
	}
	appendFile(t, path, append(forged, '\n'))

	logs = brokertest.SyncBuffer{}
	s = openT(t, Options{Path: path, Now: clk.Now, Signer: signer, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, seams{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// The sink's checkpoint now covers the added line: the files alone
	// verify.
	if _, err := verify(t, keys, true, path); err != nil {
		t.Fatalf("Verify() = %v", err)
	}
	got := logs.String()
	for _, want := range []string{"level=WARN", "no checkpoint covers", "unsigned_lines=1", "last_checkpoint_seq=" + strconv.FormatUint(last.Seq, 10), "first_unsigned_seq=" + strconv.FormatUint(last.Seq+1, 10), "last_unsigned_seq=" + strconv.FormatUint(last.Seq+1, 10)} {
		if !strings.Contains(got, want) {
			t.Errorf("Open() after a line was added past the last checkpoint logged %q, want it to contain %q", got, want)
		}
	}
}

// TestResumeWarnsOfUnsignedTailWithoutCheckpoint: a chain with no
// checkpoint at all (a crash in its first minute) is warned of too, with
// last_checkpoint_seq 0.
func TestResumeWarnsOfUnsignedTailWithoutCheckpoint(t *testing.T) {
	signer, _ := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clk := newClock()
	file := sealUses(t, audit.NewChain("chn_crashed"), 2, clk.Now())
	got := openLogging(t, path, file, Options{Now: clk.Now, Signer: signer})
	for _, want := range []string{"level=WARN", "unsigned_lines=2", "first_unsigned_seq=1", "last_unsigned_seq=2", "last_checkpoint_seq=0"} {
		if !strings.Contains(got, want) {
			t.Errorf("Open() of a crashed chain without checkpoint logged %q, want it to contain %q", got, want)
		}
	}
}

// TestResumeWarnsOfUnsignedTailOfEditedSeqs: lines added with seqs that
// do not count up to the last one do not make first_unsigned_seq wrap
// around.
func TestResumeWarnsOfUnsignedTailOfEditedSeqs(t *testing.T) {
	signer, _ := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clk := newClock()
	file := sealUses(t, audit.NewChain("chn_edited"), 3, clk.Now())
	// Both added lines claim seq 1.
	for range 2 {
		file = append(file, sealUses(t, audit.NewChain("chn_edited"), 1, clk.Now())...)
	}
	got := openLogging(t, path, file, Options{Now: clk.Now, Signer: signer})
	for _, want := range []string{"level=WARN", "unsigned_lines=5", "first_unsigned_seq=1 ", "last_unsigned_seq=1 "} {
		if !strings.Contains(got, want) {
			t.Errorf("Open() logged %q, want it to contain %q", got, want)
		}
	}
}

// sealUses seals n use events of c at now, as the lines of a file.
func sealUses(t *testing.T, c *audit.Chain, n int, now time.Time) []byte {
	t.Helper()
	var file []byte
	for range n {
		l, err := c.Seal(&audit.Event{Type: audit.TypeUse}, now)
		if err != nil {
			t.Fatal(err)
		}
		file = append(append(file, l...), '\n')
	}
	return file
}

// openLogging writes file at path, opens and closes a sink on it with o
// (its Path and Logger set here) and returns what the sink logged.
func openLogging(t *testing.T, path string, file []byte, o Options) string {
	t.Helper()
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	var logs brokertest.SyncBuffer
	o.Path, o.Logger = path, slog.New(slog.NewTextHandler(&logs, nil))
	s := openT(t, o, seams{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	return logs.String()
}

// TestResumeForgedCheckpointDoesNotEndUnsignedTail: a line typed
// checkpoint that the sink's own key did not sign (added to the file while
// no broker held it) does not end the lines no checkpoint covers: it and
// the lines before it, back to the last checkpoint the key signed, are
// the range the sink adopts.
func TestResumeForgedCheckpointDoesNotEndUnsignedTail(t *testing.T) {
	// ownKid: the forged line names the sink's key id (its signature does
	// not verify); otherwise it keeps the other key's id and its genuine
	// signature, a key the sink cannot check: neither ends the range.
	for _, ownKid := range []bool{true, false} {
		t.Run(fmt.Sprintf("own-kid=%v", ownKid), func(t *testing.T) { testResumeForgedCheckpoint(t, ownKid) })
	}
}

// forgedCheckpointTail is the file a crashed sink left: 3 events closed
// by signer's final checkpoint (seq 4), then 2 uses (seq 5, 6) and a line
// typed checkpoint of their head (seq 7) that forger signed, under kid
// when not "" (else forger's own). It returns its path and the clock.
func forgedCheckpointTail(t *testing.T, signer, forger audit.Signer, kid string) (string, *clock) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clk := newClock()
	// 3 events and the final checkpoint, seq 4
	c := closedChain(t, Options{Path: path, Now: clk.Now, Signer: signer}, 3)
	file := sealUses(t, c, 2, clk.Now()) // seq 5, 6
	now := clk.Now()
	ev, err := c.Checkpoint(context.Background(), forger, "", now)
	if err != nil {
		t.Fatal(err)
	}
	if kid != "" {
		ev.Checkpoint.KeyID = kid
	}
	forged, err := c.Seal(ev, now)
	if err != nil {
		t.Fatal(err)
	}
	appendFile(t, path, append(append(file, forged...), '\n')) // seq 7
	return path, clk
}

func testResumeForgedCheckpoint(t *testing.T, ownKid bool) {
	signer, _ := newSigner(t)
	// A "checkpoint" of the head, with the sink's key id and a signature
	// that key did not make (another key's).
	other, _ := newSigner(t)
	kid := ""
	if ownKid {
		kid = signer.KeyID()
	}
	path, clk := forgedCheckpointTail(t, signer, other, kid)

	var logs brokertest.SyncBuffer
	got := openResumed(t, Options{Path: path, Now: clk.Now, Signer: signer, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	want := &UnsignedRange{FirstSeq: 5, LastSeq: 7, Lines: 3, LastCheckpointSeq: 4}
	if got == nil || *got != *want {
		t.Errorf("UnsignedResumed() = %+v, want %+v", got, want)
	}
	for _, w := range []string{"level=WARN", "unsigned_lines=3", "first_unsigned_seq=5", "last_unsigned_seq=7", "last_checkpoint_seq=4"} {
		if !strings.Contains(logs.String(), w) {
			t.Errorf("Open() logged %q, want it to contain %q", logs.String(), w)
		}
	}
}

// TestUnsignedResumed: the range Open adopted, as UnsignedResumed
// returns it for the start event; nil after a clean stop and for a new
// chain.
func TestUnsignedResumed(t *testing.T) {
	signer, _ := newSigner(t)
	dir := t.TempDir()
	clk := newClock()
	path := filepath.Join(dir, "audit.jsonl")
	s := openT(t, Options{Path: path, Now: clk.Now, Signer: signer}, seams{})
	if r := s.UnsignedResumed(); r != nil {
		t.Errorf("UnsignedResumed() of a new chain = %+v, want nil", r)
	}
	appendN(t, s, 2)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openT(t, Options{Path: path, Now: clk.Now, Signer: signer}, seams{})
	if r := s.UnsignedResumed(); r != nil {
		t.Errorf("UnsignedResumed() after a clean stop = %+v, want nil", r)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	crashed := filepath.Join(dir, "crashed.jsonl")
	if err := os.WriteFile(crashed, sealUses(t, audit.NewChain("chn_crashed"), 2, clk.Now()), 0o600); err != nil {
		t.Fatal(err)
	}
	got := openResumed(t, Options{Path: crashed, Now: clk.Now, Signer: signer})
	if want := (UnsignedRange{FirstSeq: 1, LastSeq: 2, Lines: 2}); got == nil || *got != want {
		t.Errorf("UnsignedResumed() of a crashed chain = %+v, want %+v", got, want)
	}
}

// TestRecordResumedHoldsCheckpoints: with Options.RecordResumed, a sink
// that adopted lines no checkpoint covered writes no checkpoint (count,
// interval, rotation or Close) until ResumedRecorded: a broker whose
// start-up fails before its start event recorded them must leave them to
// the next start, not sign them. Once recorded, checkpoints come as usual.
func TestRecordResumedHoldsCheckpoints(t *testing.T) {
	signer, keys := newSigner(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	clk := newClock()
	// 2 events and the final checkpoint, seq 3
	c := closedChain(t, Options{Path: path, Now: clk.Now, Signer: signer}, 2)
	appendFile(t, path, sealUses(t, c, 1, clk.Now())) // seq 4
	want := UnsignedRange{FirstSeq: 4, LastSeq: 4, Lines: 1, LastCheckpointSeq: 3}

	// A start-up that fails: events, a checkpoint count and interval
	// passed, a rotation due, then Close; no start event was recorded.
	tick := make(chan time.Time)
	o := Options{Path: path, Now: clk.Now, Signer: signer, CheckpointEvery: 4, RotateBytes: 1, RecordResumed: true}
	s := openT(t, o, seams{tick: tick})
	if r := s.UnsignedResumed(); r == nil || *r != want {
		t.Fatalf("UnsignedResumed() = %+v, want %+v", r, want)
	}
	appendN(t, s, 3) // seq 5..7: 4 lines since the checkpoint
	clk.Advance(2 * DefaultCheckpointInterval)
	tick <- time.Time{}
	tick <- time.Time{} // the writer has handled the first tick
	if err := s.Close(); err != nil {
		t.Fatalf("Close() = %v", err)
	}
	if st := s.Stats(); st.Checkpoints != 0 || st.CheckpointFailures != 0 || st.Rotations != 0 {
		t.Errorf("Stats() = %+v, want no checkpoint, no checkpoint failure, no rotation before the adopted lines were recorded", st)
	}
	if got, want := strings.Join(types(t, path), " "), "1:use 2:use 3:checkpoint 4:use 5:use 6:use 7:use"; got != want {
		t.Errorf("file after a start-up that failed = %s, want %s", got, want)
	}

	// The next start adopts them again, with the lines written since
	// (counted back to the checkpoint: within CheckpointEvery lines).
	o.CheckpointEvery = 0
	s = openT(t, o, seams{tick: tick})
	want = UnsignedRange{FirstSeq: 4, LastSeq: 7, Lines: 4, LastCheckpointSeq: 3}
	if r := s.UnsignedResumed(); r == nil || *r != want {
		t.Fatalf("UnsignedResumed() after a start-up that failed = %+v, want %+v", r, want)
	}
	if err := s.Append(context.Background(), &audit.Event{Type: audit.TypePolicyLoad, Details: map[string]any{"trigger": "start"}}); err != nil { // seq 8
		t.Fatal(err)
	}
	s.ResumedRecorded()
	// The interval checkpoint, due and held until now, comes with the
	// next tick; the rotation follows it.
	tick <- time.Time{}
	tick <- time.Time{}
	if st := s.Stats(); st.Checkpoints != 1 || st.CheckpointSeq != 9 || st.Rotations != 1 {
		t.Errorf("Stats() after ResumedRecorded and a tick = %+v, want the checkpoint at seq 9 and a rotation", st)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	_, names, err := s.rotatedNames()
	if err != nil || len(names) != 1 {
		t.Fatalf("rotated files = %v, %v; want 1", names, err)
	}
	if _, err := verify(t, keys, true, filepath.Join(dir, names[0]), path); err != nil {
		t.Errorf("Verify() = %v", err)
	}
}

// selfChecking is a signer that can check its own checkpoints (as
// vault.TransitCheckpointSigner does with its cached public keys): kid
// "own:1" is its key, any other kid is unknown to it.
type selfChecking struct {
	ed *audit.Ed25519Signer // not embedded: no PublicKey method
}

func (o selfChecking) KeyID() string { return "own:1" }

func (o selfChecking) Sign(ctx context.Context, msg []byte) ([]byte, error) {
	return o.ed.Sign(ctx, msg)
}

func (o selfChecking) Alg() string { return audit.AlgVaultTransit }

func (o selfChecking) VerifyOwn(_ context.Context, kid string, msg, sig []byte) (known, ok bool) {
	if kid != "own:1" {
		return false, false
	}
	return true, ed25519.Verify(o.ed.PublicKey(), msg, sig)
}

// TestResumeForgedTransitCheckpointDoesNotEndUnsignedTail: a signer that
// can check its own checkpoints at Open (VerifyOwn: a Vault transit
// signer, from the public keys it read) does, so a line typed checkpoint
// under its kid with a signature its key did not make does not end the
// range the sink adopts, as for the sink's own Ed25519 key.
func TestResumeForgedTransitCheckpointDoesNotEndUnsignedTail(t *testing.T) {
	ed, _ := newSigner(t)
	signer := selfChecking{ed}
	other, _ := newSigner(t)
	path, clk := forgedCheckpointTail(t, signer, selfChecking{other}, "") // kid own:1, another key

	got := openResumed(t, Options{Path: path, Now: clk.Now, Signer: signer})
	want := &UnsignedRange{FirstSeq: 5, LastSeq: 7, Lines: 3, LastCheckpointSeq: 4}
	if got == nil || *got != *want {
		t.Errorf("UnsignedResumed() = %+v, want %+v", got, want)
	}
	// Its own checkpoints still end the range: a clean stop adopts none.
	s := openT(t, Options{Path: path, Now: clk.Now, Signer: signer}, seams{})
	if r := s.UnsignedResumed(); r != nil {
		t.Errorf("UnsignedResumed() after a clean stop = %+v, want nil", r)
	}
}

// TestResumeAfterKeyChangeWarnsWhy: after a deliberate change of the
// checkpoint key, the old key's checkpoints do not end the range the sink
// adopts (ownCheckpoint), so the first start reports up to
// checkpoint_every lines of a clean stop. Its WARN named only an unclean
// stop or lines added while no broker held the file; it now names the
// checkpoint by a key the sink does not check, and that key.
func TestResumeAfterKeyChangeWarnsWhy(t *testing.T) {
	oldKey, _ := newSigner(t)
	newKey, _ := newSigner(t)
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	clk := newClock()
	s := openT(t, Options{Path: path, Now: clk.Now, Signer: oldKey}, seams{})
	appendN(t, s, 3)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	lines := readLines(t, path)
	last, err := audit.ParseLine(lines[len(lines)-1])
	if err != nil || last.Type != audit.TypeCheckpoint {
		t.Fatalf("last line = %v, %v; want a checkpoint", last, err)
	}
	var logs brokertest.SyncBuffer
	s = openT(t, Options{Path: path, Now: clk.Now, Signer: newKey, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, seams{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	got := logs.String()
	for _, want := range []string{"level=WARN", "no checkpoint covers", "which this broker does not check",
		"unchecked_checkpoint_seq=" + strconv.FormatUint(last.Seq, 10), "unchecked_key_id=" + oldKey.KeyID()} {
		if !strings.Contains(got, want) {
			t.Errorf("Open() after a change of checkpoint key logged %q, want it to contain %q", got, want)
		}
	}
	// A clean reopen with the same key after that: no such WARN.
	logs = brokertest.SyncBuffer{}
	s = openT(t, Options{Path: path, Now: clk.Now, Signer: newKey, Logger: slog.New(slog.NewTextHandler(&logs, nil))}, seams{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs.String(), "no checkpoint covers") {
		t.Errorf("a clean reopen under the new key logged %q", logs.String())
	}
}
