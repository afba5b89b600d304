package audit_test

import (
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/audit"
)

// TestVerifyResumedLinesMatchBounds: a start event's record counts the
// lines of its range: last_seq - first_seq + 1, or more when it starts
// right after its checkpoint, at seq 1 when there is none (a broker counts
// back to that checkpoint or the file's first line, past lines added to the
// file that are not the chain's, and the seqs of an edited file need not
// count up to it). A count its bounds cannot hold is not a record a broker
// writes: a problem. It was not checked against them.
func TestVerifyResumedLinesMatchBounds(t *testing.T) {
	for name, r := range map[string]map[string]any{
		"ok/exact":                 rec(2, 3, 2, 1),
		"ok/from-first-line":       rec(1, 3, 3, 0),
		"ok/from-first-line-more":  rec(1, 3, 5, 0), // seqs that do not count up to last_seq
		"ok/after-checkpoint-more": rec(2, 3, 3, 1), // a line that is not the chain's, added after the checkpoint
	} {
		t.Run(name, func(t *testing.T) {
			f := newResumedFile(t)
			f.uses(3)
			f.start(r)
			if rep, err := f.verify(audit.VerifyOptions{}); err != nil {
				t.Errorf("Verify(%v) = %v, problems %+v; want nil", r, err, rep.Problems)
			}
		})
	}
	for name, r := range map[string]map[string]any{
		"fail/too-few":            rec(2, 3, 1, 1),
		"fail/too-many":           rec(3, 3, 2, 1), // not right after the checkpoint
		"fail/too-few-from-first": rec(1, 3, 2, 0),
		"fail/far-too-many":       rec(3, 3, 1000, 0),
	} {
		t.Run(name, func(t *testing.T) {
			f := newResumedFile(t)
			f.uses(3)
			f.start(r)
			rep, err := f.verify(audit.VerifyOptions{})
			if err == nil || len(rep.Problems) != 1 || rep.Problems[0].Seq != 4 ||
				!strings.Contains(rep.Problems[0].Why, "unsigned_resumed") || !strings.Contains(rep.Problems[0].Why, "lines") {
				t.Errorf("Verify(%v) = %v, problems %+v; want one at seq 4 naming unsigned_resumed and its lines", r, err, rep.Problems)
			}
		})
	}
}
