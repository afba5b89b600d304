package audit_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
)

// TestVerifyReportsUnsignedResumed: the ranges start events record
// (DetailUnsignedResumed) are reported per chain, in order, as a notice:
// the log still verifies. Past the cap the others are counted (a detail
// not of that form is a problem: TestVerifyResumedRecordForms).
func TestVerifyReportsUnsignedResumed(t *testing.T) {
	c := audit.NewChain("chn_resumed")
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	var file []byte
	seal := func(ev *audit.Event) {
		t.Helper()
		l, err := c.Seal(ev, now)
		if err != nil {
			t.Fatal(err)
		}
		file = append(append(file, l...), '\n')
	}
	seal(&audit.Event{Type: audit.TypeUse})
	seal(&audit.Event{Type: audit.TypePolicyLoad, Details: map[string]any{"trigger": "start",
		audit.DetailUnsignedResumed: map[string]any{"first_seq": 1, "last_seq": 1, "lines": 1, "last_checkpoint_seq": 0}}})
	for range 101 {
		seal(&audit.Event{Type: audit.TypePolicyLoad, Details: map[string]any{"trigger": "start",
			audit.DetailUnsignedResumed: map[string]any{"first_seq": 2, "last_seq": 2, "lines": 1, "last_checkpoint_seq": 1}}})
	}
	rep, err := audit.Verify([]audit.Input{{Name: "a", R: bytes.NewReader(file)}}, audit.VerifyOptions{})
	if err != nil {
		t.Fatalf("Verify() = %v", err)
	}
	cr := rep.Chains[0]
	if len(cr.UnsignedResumed) != 100 || cr.UnsignedResumedOmitted != 2 {
		t.Fatalf("UnsignedResumed: %d kept, %d omitted; want 100, 2", len(cr.UnsignedResumed), cr.UnsignedResumedOmitted)
	}
	if got, want := cr.UnsignedResumed[0], (audit.ResumedRange{AtSeq: 2, FirstSeq: 1, LastSeq: 1, Lines: 1}); got != want {
		t.Errorf("UnsignedResumed[0] = %+v, want %+v", got, want)
	}
	if got, want := cr.UnsignedResumed[1], (audit.ResumedRange{AtSeq: 3, FirstSeq: 2, LastSeq: 2, Lines: 1, LastCheckpointSeq: 1}); got != want {
		t.Errorf("UnsignedResumed[1] = %+v, want %+v", got, want)
	}
}
