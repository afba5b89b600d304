package auditfile

import (
	"context"
	"runtime"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker/audit"
)

// TestRefusedLineLeavesNothingInBatch: an event refused once encoded (its
// line longer than audit.MaxLineBytes), sealed alone (not by AppendBatch,
// whose rollback would cut the batch buffer anyway) in the middle of a
// batch, leaves none of its bytes in the batch: the events before and after
// it are written, linked to each other, and the file verifies, with the
// checkpoint the batch ends with and after a reopen.
func TestRefusedLineLeavesNothingInBatch(t *testing.T) {
	signer, keys := newSigner(t)
	fl := &faults{}
	path := t.TempDir() + "/audit.jsonl"
	o := Options{Path: path, Now: newClock().Now, Signer: signer, CheckpointEvery: 2, DeferFor: 1 << 40}
	s := openT(t, o, faultSeams(fl))
	results := make(chan error, 3)
	for _, ev := range []*audit.Event{
		{Type: "before"},
		{Type: "oversized", Reason: strings.Repeat("x", audit.MaxLineBytes)},
		{Type: "after"},
	} {
		s.AppendDeferred(ev, func(err error) { results <- err })
	}
	for len(s.reqs) > 0 { // the writer has taken them (and holds them)
		runtime.Gosched()
	}
	if err := s.Append(context.Background(), &audit.Event{Type: "waited"}); err != nil {
		t.Fatal(err)
	}
	var refused int
	for range 3 {
		if err := <-results; err != nil {
			if !strings.Contains(err.Error(), "more than") {
				t.Errorf("deferred outcome = %v, want nil or the oversized refusal", err)
			}
			refused++
		}
	}
	if refused != 1 {
		t.Errorf("%d deferred events refused, want 1 (the oversized one)", refused)
	}
	if st := s.Stats(); st.Batches != 1 || st.Events != 3 {
		t.Errorf("one batch of 3 events and a refused one: %d batches, %d events", st.Batches, st.Events)
	}
	want := []string{"1:before", "2:after", "3:checkpoint", "4:waited"}
	if d := cmp.Diff(want, types(t, path)); d != "" {
		t.Errorf("file (-want +got):\n%s", d)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, keys, true, path); err != nil {
		t.Fatalf("Verify() = %v", err)
	}
	s2 := openT(t, o, seams{})
	appendIDs(t, s2, "req_next")
	if err := s2.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := verify(t, keys, true, path); err != nil {
		t.Errorf("Verify() after a reopen = %v", err)
	}
}
