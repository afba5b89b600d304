package trace_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/trace"
)

// TestTraceFooterCountsUses: the line under the timeline counts uses (use
// and introspect events, as the report counts them: a proxied request
// refused after its use event is not one, and is counted apart), not every
// event of the result's uses list (use_result, deny, shared_use_suspected
// are there too: the footer said "11 use event(s)" for one forwarded use).
func TestTraceFooterCountsUses(t *testing.T) {
	for _, tc := range []struct {
		name, q, want string
	}{
		{"ok/forwarded-and-refused", idB, "  1 use(s) (and 3 proxied request(s) refused after their use event), 0 revocation event(s)\n"},
		{"ok/introspection-and-revocation", idA, "  1 use(s), 3 revocation event(s)\n"},
		{"ok/none", idC, "  0 use(s), 0 revocation event(s)\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			x, err := trace.NewIndex(trace.Options{})
			if err != nil {
				t.Fatal(err)
			}
			for _, l := range sealed(t, "chn_ft", 0, notSentEvents()) {
				if err := x.AddLine(l); err != nil {
					t.Fatal(err)
				}
			}
			res, err := x.Lookup(tc.q)
			if err != nil {
				t.Fatal(err)
			}
			var txt bytes.Buffer
			if err := res.WriteText(&txt); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(txt.String(), "\n"+tc.want) {
				t.Errorf("WriteText(Lookup(%s)) footer: want %q in:\n%s", tc.q, tc.want, txt.String())
			}
		})
	}
}
