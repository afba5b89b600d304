package audit_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
)

// resumedFile builds one chain's lines: uses, checkpoints and start
// events (policy_load, trigger start) with or without a record of the
// lines the broker adopted (DetailUnsignedResumed).
type resumedFile struct {
	t    *testing.T
	c    *audit.Chain
	now  time.Time
	file []byte
}

func newResumedFile(t *testing.T) *resumedFile {
	return &resumedFile{t: t, c: audit.NewChain("chn_resumed"), now: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}
}

func (f *resumedFile) seal(ev *audit.Event) {
	f.t.Helper()
	l, err := f.c.Seal(ev, f.now)
	if err != nil {
		f.t.Fatal(err)
	}
	f.file = append(append(f.file, l...), '\n')
}

func (f *resumedFile) uses(n int) {
	for range n {
		f.seal(&audit.Event{Type: audit.TypeUse})
	}
}

func (f *resumedFile) checkpoint(s audit.Signer) {
	f.t.Helper()
	ev, err := f.c.Checkpoint(context.Background(), s, "req_cp", f.now)
	if err != nil {
		f.t.Fatal(err)
	}
	f.seal(ev)
}

// start seals a start event; rec is its DetailUnsignedResumed (nil: none).
func (f *resumedFile) start(rec any) {
	d := map[string]any{"trigger": "start"}
	if rec != nil {
		d[audit.DetailUnsignedResumed] = rec
	}
	f.seal(&audit.Event{Type: audit.TypePolicyLoad, Details: d})
}

func (f *resumedFile) verify(opts audit.VerifyOptions) (*audit.Report, error) {
	return audit.Verify([]audit.Input{{Name: "a", R: bytes.NewReader(f.file)}}, opts)
}

func rec(first, last, lines, cp int) map[string]any {
	return map[string]any{"first_seq": first, "last_seq": last, "lines": lines, "last_checkpoint_seq": cp}
}

// TestVerifyComputesUnsignedResumed: verify computes, from the file, the
// lines no verified checkpoint covers before each start event and compares
// them with what the event records. It trusted the record: one that leaves
// lines out (naming a checkpoint that is not one) passed as a notice, and
// a start event that records nothing passed silently.
func TestVerifyComputesUnsignedResumed(t *testing.T) {
	key := testSigner(t, "checkpoint.key")
	keys := audit.VerifyOptions{Keys: testKeys(t, "checkpoint.key")}

	t.Run("ok/record-matches", func(t *testing.T) {
		f := newResumedFile(t)
		f.uses(3)
		f.checkpoint(key) // seq 4
		f.uses(2)         // 5, 6
		f.start(rec(5, 6, 2, 4))
		f.checkpoint(key)
		rep, err := f.verify(keys)
		if err != nil {
			t.Fatalf("Verify() = %v", err)
		}
		cr := rep.Chains[0]
		if len(cr.UnsignedResumed) != 1 || len(cr.UnrecordedResumed) != 0 {
			t.Errorf("UnsignedResumed %+v, UnrecordedResumed %+v; want one, none", cr.UnsignedResumed, cr.UnrecordedResumed)
		}
	})
	t.Run("fail/record-leaves-lines-out", func(t *testing.T) {
		f := newResumedFile(t)
		f.uses(3)
		f.checkpoint(key) // seq 4
		f.uses(3)         // 5, 6, 7
		f.start(rec(7, 7, 1, 6))
		f.checkpoint(key)
		rep, err := f.verify(keys)
		if err == nil || len(rep.Problems) != 1 || rep.Problems[0].Seq != 8 ||
			!strings.Contains(rep.Problems[0].Why, "seq 5..6") {
			t.Errorf("Verify() = %v, problems %+v; want one at seq 8 naming seq 5..6", err, rep.Problems)
		}
	})
	t.Run("fail/record-after-a-forged-checkpoint-is-one-problem", func(t *testing.T) {
		// The record names a checkpoint whose signature does not verify:
		// that line's problem says it, not a second one.
		f := newResumedFile(t)
		f.uses(3)
		f.checkpoint(testSigner(t, "other.key")) // seq 4, a key not given
		f.uses(1)                                // 5
		f.start(rec(5, 5, 1, 4))
		f.checkpoint(key)
		rep, err := f.verify(keys)
		if err == nil || len(rep.Problems) != 1 || rep.Problems[0].Seq != 4 {
			t.Errorf("Verify() = %v, problems %+v; want one, at seq 4", err, rep.Problems)
		}
	})
	t.Run("warn/no-record", func(t *testing.T) {
		f := newResumedFile(t)
		f.uses(3)
		f.checkpoint(key) // seq 4
		f.uses(2)         // 5, 6
		f.start(nil)
		f.checkpoint(key)
		rep, err := f.verify(keys)
		if err != nil {
			t.Fatalf("Verify() = %v", err)
		}
		want := audit.ResumedRange{AtSeq: 7, FirstSeq: 5, LastSeq: 6, Lines: 2, LastCheckpointSeq: 4}
		if cr := rep.Chains[0]; len(cr.UnrecordedResumed) != 1 || cr.UnrecordedResumed[0] != want {
			t.Errorf("UnrecordedResumed = %+v, want [%+v]", cr.UnrecordedResumed, want)
		}
	})
	t.Run("warn/record-cut-by-an-older-broker", func(t *testing.T) {
		// Brokers before the whole range was recorded counted at most
		// 1,000 lines (last_checkpoint_seq 0): the rest is a warning.
		f := newResumedFile(t)
		f.uses(3)
		f.checkpoint(key) // seq 4
		f.uses(5)         // 5..9
		f.start(rec(7, 9, 3, 0))
		f.checkpoint(key)
		rep, err := f.verify(keys)
		if err != nil {
			t.Fatalf("Verify() = %v", err)
		}
		want := audit.ResumedRange{AtSeq: 10, FirstSeq: 5, LastSeq: 6, Lines: 2, LastCheckpointSeq: 4}
		if cr := rep.Chains[0]; len(cr.UnrecordedResumed) != 1 || cr.UnrecordedResumed[0] != want {
			t.Errorf("UnrecordedResumed = %+v, want [%+v]", cr.UnrecordedResumed, want)
		}
	})
	t.Run("ok/no-key-no-comparison", func(t *testing.T) {
		f := newResumedFile(t)
		f.uses(3)
		f.checkpoint(key)
		f.uses(3)
		f.start(nil)
		rep, err := f.verify(audit.VerifyOptions{})
		if err != nil || len(rep.Chains[0].UnrecordedResumed) != 0 {
			t.Errorf("Verify() without keys = %v, UnrecordedResumed %+v; want no comparison", err, rep.Chains[0].UnrecordedResumed)
		}
	})
	t.Run("ok/clean-restart", func(t *testing.T) {
		f := newResumedFile(t)
		f.uses(3)
		f.checkpoint(key)
		f.start(nil)
		f.checkpoint(key)
		rep, err := f.verify(keys)
		if err != nil || len(rep.Chains[0].UnrecordedResumed) != 0 {
			t.Errorf("Verify() = %v, UnrecordedResumed %+v; want none", err, rep.Chains[0].UnrecordedResumed)
		}
	})
}

// TestVerifyResumedAfterKeyChange: after a change of checkpoint key the
// broker counts the lines since the old key's last checkpoint too (it
// cannot check it): verify, given both keys, tells that checkpoint inside
// the recorded range, and the over-report is no problem.
func TestVerifyResumedAfterKeyChange(t *testing.T) {
	oldKey, newKey := testSigner(t, "other.key"), testSigner(t, "checkpoint.key")
	f := newResumedFile(t)
	f.uses(2)
	f.checkpoint(oldKey) // seq 3
	f.uses(2)            // 4, 5
	f.start(rec(1, 5, 5, 0))
	f.checkpoint(newKey)
	rep, err := f.verify(audit.VerifyOptions{Keys: testKeys(t, "other.key", "checkpoint.key")})
	if err != nil {
		t.Fatalf("Verify() = %v", err)
	}
	cr := rep.Chains[0]
	want := audit.ResumedRange{AtSeq: 6, FirstSeq: 1, LastSeq: 5, Lines: 5, VerifiedCheckpointSeq: 3, VerifiedCheckpointKeyID: oldKey.KeyID()}
	if len(cr.UnsignedResumed) != 1 || cr.UnsignedResumed[0] != want || len(cr.UnrecordedResumed) != 0 {
		t.Errorf("UnsignedResumed %+v, UnrecordedResumed %+v; want [%+v], none", cr.UnsignedResumed, cr.UnrecordedResumed, want)
	}
}

// TestVerifyResumedRecordForms: a record with a field a later broker adds
// is still read (it was dropped, and its notice with it); one that is not
// a record (a field missing, of the wrong type, bounds that cannot be) is
// a problem, not dropped in silence.
func TestVerifyResumedRecordForms(t *testing.T) {
	later := rec(1, 2, 2, 0)
	later["cause"] = "crash"
	f := newResumedFile(t)
	f.uses(2)
	f.start(later)
	rep, err := f.verify(audit.VerifyOptions{})
	if err != nil {
		t.Fatalf("Verify() = %v", err)
	}
	if want := (audit.ResumedRange{AtSeq: 3, FirstSeq: 1, LastSeq: 2, Lines: 2}); len(rep.Chains[0].UnsignedResumed) != 1 || rep.Chains[0].UnsignedResumed[0] != want {
		t.Errorf("UnsignedResumed of a record with a later field = %+v, want [%+v]", rep.Chains[0].UnsignedResumed, want)
	}
	for name, bad := range map[string]any{
		"not-an-object":    "not a range",
		"missing-lines":    map[string]any{"first_seq": 1, "last_seq": 2, "last_checkpoint_seq": 0},
		"string-seq":       map[string]any{"first_seq": "1", "last_seq": 2, "lines": 2, "last_checkpoint_seq": 0},
		"negative":         rec(1, 2, -2, 0),
		"first-after-last": rec(2, 1, 2, 0),
		"last-not-before":  rec(1, 3, 3, 0),
		"no-lines":         rec(1, 2, 0, 0),
		"checkpoint-in-it": rec(1, 2, 2, 1),
	} {
		t.Run("fail/"+name, func(t *testing.T) {
			f := newResumedFile(t)
			f.uses(2)
			f.start(bad)
			rep, err := f.verify(audit.VerifyOptions{})
			if err == nil || len(rep.Problems) != 1 || rep.Problems[0].Seq != 3 || !strings.Contains(rep.Problems[0].Why, "unsigned_resumed") {
				t.Errorf("Verify() = %v, problems %+v; want one at seq 3 naming unsigned_resumed", err, rep.Problems)
			}
		})
	}
}
