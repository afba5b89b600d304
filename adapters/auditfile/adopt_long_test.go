package auditfile

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/keytrail/keytrail/broker/audit"
)

// TestUnsignedResumedLongerThanCheckpointEvery: a range of adopted lines
// longer than CheckpointEvery (a crash loop lengthens it: each failed
// start leaves its lines unsigned) is recorded whole, its first seq, last
// seq and count, and the checkpoint before it; it was cut at
// CheckpointEvery lines with last_checkpoint_seq 0 ("there may be more").
func TestUnsignedResumedLongerThanCheckpointEvery(t *testing.T) {
	signer, _ := newSigner(t)
	clk := newClock()
	dir := t.TempDir()

	// No checkpoint at all: the whole chain.
	crashed := filepath.Join(dir, "crashed.jsonl")
	if err := os.WriteFile(crashed, sealUses(t, audit.NewChain("chn_crashed"), 1500, clk.Now()), 0o600); err != nil {
		t.Fatal(err)
	}
	got := openResumed(t, Options{Path: crashed, Now: clk.Now, Signer: signer, CheckpointEvery: 1000})
	if want := (UnsignedRange{FirstSeq: 1, LastSeq: 1500, Lines: 1500}); got == nil || *got != want {
		t.Errorf("UnsignedResumed() of 1500 lines without checkpoint = %+v, want %+v", got, want)
	}

	// After the sink's own checkpoint: back to it, however far.
	path := filepath.Join(dir, "audit.jsonl")
	c := closedChain(t, Options{Path: path, Now: clk.Now, Signer: signer, CheckpointEvery: 1000}, 3) // 3 events, the checkpoint at seq 4
	appendFile(t, path, sealUses(t, c, 2500, clk.Now()))
	got = openResumed(t, Options{Path: path, Now: clk.Now, Signer: signer, CheckpointEvery: 1000})
	if want := (UnsignedRange{FirstSeq: 5, LastSeq: 2504, Lines: 2500, LastCheckpointSeq: 4}); got == nil || *got != want {
		t.Errorf("UnsignedResumed() of 2500 lines after the checkpoint at seq 4 = %+v, want %+v", got, want)
	}
}

// countingOwn is selfChecking counting its VerifyOwn calls.
type countingOwn struct {
	selfChecking
	calls *atomic.Int64
}

func (o countingOwn) VerifyOwn(ctx context.Context, kid string, msg, sig []byte) (known, ok bool) {
	o.calls.Add(1)
	return o.selfChecking.VerifyOwn(ctx, kid, msg, sig)
}

// TestResumeAsksVerifyOwnOncePerUnknownKid: Open reads back however far
// the sink's own checkpoint is, so a file of checkpoints its signer cannot
// tell (another key, or a Vault transit key whose public keys could not be
// read: a Vault call each) would cost one VerifyOwn per checkpoint line;
// a kid answered "unknown" is not asked again within that Open.
func TestResumeAsksVerifyOwnOncePerUnknownKid(t *testing.T) {
	ed, _ := newSigner(t)
	other, _ := newSigner(t)
	clk := newClock()
	c := audit.NewChain("chn_otherkey")
	var file []byte
	for range 50 {
		file = append(file, sealUses(t, c, 2, clk.Now())...)
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
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	if err := os.WriteFile(path, file, 0o600); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int64
	got := openResumed(t, Options{Path: path, Now: clk.Now, Signer: countingOwn{selfChecking{ed}, &calls}})
	if want := (UnsignedRange{FirstSeq: 1, LastSeq: 150, Lines: 150}); got == nil || *got != want {
		t.Errorf("UnsignedResumed() = %+v, want %+v", got, want)
	}
	if n := calls.Load(); n != 1 {
		t.Errorf("VerifyOwn was called %d times for 50 checkpoints of one other kid, want 1", n)
	}
}

// otherKid signs as selfChecking does under the kid other:1.
type otherKid struct{ ed *audit.Ed25519Signer }

func (o otherKid) KeyID() string { return "other:1" }
func (o otherKid) Sign(ctx context.Context, msg []byte) ([]byte, error) {
	return o.ed.Sign(ctx, msg)
}
func (o otherKid) Alg() string { return audit.AlgVaultTransit }
