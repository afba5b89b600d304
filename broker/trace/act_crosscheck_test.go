package trace_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// TestTraceCrossChecksEventAct: the events about a delegated credential
// carry its act (use, introspect, revoke, revoke_result, orphan_revoked);
// trace's text checks each against the issuance's: an event naming
// another act than the issue event (or store record) is warned about and
// its line says which; one naming the same adds nothing (the header says
// "acting for"), nor does one naming none (written before events carried
// it). With no record of the issuance, the events' act is all there is:
// their lines show it. (trace ignored the act of every event.)
func TestTraceCrossChecksEventAct(t *testing.T) {
	const id = "iss_01ACT"
	carol := audit.Identity{Iss: "https://sso.example", Sub: "user:carol", JTI: "j1"}
	mallory := audit.Identity{Iss: "https://sso.example", Sub: "user:mallory", JTI: "j2"}
	events := func() ([]*audit.Event, []*audit.Event) {
		uses := []*audit.Event{
			{Type: audit.TypeUse, Time: "2026-11-26T12:01:00Z", UseID: "use_same", IssuanceID: id, Act: []audit.Identity{carol}},
			{Type: audit.TypeIntrospect, Time: "2026-11-26T12:02:00Z", UseID: "use_other", IssuanceID: id, Act: []audit.Identity{mallory}},
			{Type: audit.TypeUse, Time: "2026-11-26T12:03:00Z", UseID: "use_none", IssuanceID: id},
		}
		revs := []*audit.Event{
			{Type: audit.TypeRevoke, Time: "2026-11-26T12:04:00Z", RevocationID: "rev_same", IssuanceID: id, Act: []audit.Identity{carol}},
		}
		return uses, revs
	}
	render := func(t *testing.T, res *trace.Result) string {
		t.Helper()
		var b bytes.Buffer
		if err := res.WriteText(&b); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	lineOf := func(txt, what string) string {
		for _, l := range strings.Split(txt, "\n") {
			if strings.Contains(l, what) && strings.Contains(l, "2026-11-26T12:0") {
				return l
			}
		}
		return ""
	}

	t.Run("record", func(t *testing.T) {
		uses, revs := events()
		txt := render(t, &trace.Result{From: trace.FromAuditLog, Uses: uses, Revocations: revs,
			Issuance: &broker.Issuance{ID: id, Act: []broker.IdentityRef{{Iss: carol.Iss, Sub: carol.Sub, JTI: carol.JTI}}}})
		if !strings.Contains(txt, "WARNING") || !strings.Contains(txt, "use_other") {
			t.Errorf("no warning naming use_other, whose act differs:\n%s", txt)
		}
		if l := lineOf(txt, "use_other"); !strings.Contains(l, "act iss=https://sso.example sub=user:mallory") {
			t.Errorf("use_other's line %q does not say its act", l)
		}
		for _, same := range []string{"use_same", "use_none", "rev_same"} {
			if l := lineOf(txt, same); strings.Contains(l, "act") {
				t.Errorf("%s's line %q names an act: want nothing (the issuance's, or none)", same, l)
			}
		}
		if strings.Count(txt, "use_other") != 2 || strings.Contains(txt[:strings.Index(txt, "timeline")], "use_same") {
			t.Errorf("warning names other events than use_other:\n%s", txt)
		}
	})
	t.Run("no-record", func(t *testing.T) {
		uses, revs := events()
		txt := render(t, &trace.Result{Uses: uses, Revocations: revs, Issuance: &broker.Issuance{ID: id}})
		if strings.Contains(txt, "WARNING") {
			t.Errorf("warning without a record to check against:\n%s", txt)
		}
		if l := lineOf(txt, "use_same"); !strings.Contains(l, "acting for iss=https://sso.example sub=user:carol") {
			t.Errorf("use_same's line %q does not show its act", l)
		}
	})
}
