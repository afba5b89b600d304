package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/auditfile"
)

// TestUnsignedResumedDetailTooLong: the start event's record counts the
// over-long lines the sink read past (too_long_lines), absent when none,
// so that the record of an honest start keeps its four fields.
func TestUnsignedResumedDetailTooLong(t *testing.T) {
	r := &auditfile.UnsignedRange{FirstSeq: 4, LastSeq: 6, Lines: 3, LastCheckpointSeq: 3}
	want := map[string]any{"first_seq": uint64(4), "last_seq": uint64(6), "lines": 3, "last_checkpoint_seq": uint64(3)}
	if d := cmp.Diff(want, unsignedResumedDetail(r)); d != "" {
		t.Errorf("unsignedResumedDetail() (-want +got):\n%s", d)
	}
	r.TooLongLines = 1
	want["too_long_lines"] = 1
	if d := cmp.Diff(want, unsignedResumedDetail(r)); d != "" {
		t.Errorf("unsignedResumedDetail(one too long) (-want +got):\n%s", d)
	}
}
