package trace

import (
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// pr is s for a terminal (policies.Printable): as it is when printable,
// else quoted with Go escapes. What trace and report show of an event is
// written by callers (a sub, a jti, a claim, a User-Agent, an upstream's
// path or request id; an old log holds subs authn refuses now): an escape
// sequence, a CR or LF, a bidi override or a tab in one must not rewrite
// the terminal, forge a line or shift a column. The JSON output keeps the
// exact values.
func pr(s string) string { return policies.Printable(s) }

// prJoin is ss joined by sep, each shown by pr.
func prJoin(ss []string, sep string) string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = pr(s)
	}
	return strings.Join(out, sep)
}

// ts formats a time for people: UTC with nanoseconds.
func ts(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// WriteText renders a trace result as a readable timeline.
func (r *Result) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	is := r.Issuance
	ew.printf("issuance %s", is.ID)
	if r.Query.Kind != "" {
		ew.printf("   (matched %s %s)", r.Query.Kind, pr(r.Query.Value))
	}
	ew.printf("\n")
	if r.From == "" {
		ew.printf("  (no issue event for it in the audit log and no store record: only uses or revocations are known)\n")
	}
	tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
	row := func(k, v string) {
		if v != "" {
			fmt.Fprintf(tw, "  %s\t%s\n", k, pr(v)) // a value quoted whole unless its parts were
		}
	}
	row("workload", is.Workload)
	row("owner", is.Owner)
	row("session", is.SessionID)
	if is.Grant != "" {
		row("grant", is.Grant+" ("+is.Kind+")")
	}
	if is.Identity.Iss != "" || is.Identity.Sub != "" {
		id := "iss=" + pr(is.Identity.Iss) + " sub=" + pr(is.Identity.Sub)
		if is.Identity.JTI != "" {
			id += " jti=" + pr(is.Identity.JTI)
		}
		row("identity", id)
	}
	for i, a := range is.Act {
		row(fmt.Sprintf("acting for[%d]", i), "iss="+pr(a.Iss)+" sub="+pr(a.Sub))
	}
	if len(is.Claims) > 0 {
		keys := make([]string, 0, len(is.Claims))
		for k := range is.Claims {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = pr(k) + "=" + pr(fmt.Sprint(is.Claims[k]))
		}
		row("claims used", strings.Join(parts, " "))
	}
	row("source", sourceText(is.Source.IP, is.Source.UserAgent))
	if !is.IssuedAt.IsZero() {
		row("issued", ts(is.IssuedAt))
	}
	row("audit chain", is.AuditChain)
	if !is.ExpiresAt.IsZero() {
		row("expires", ts(is.ExpiresAt))
	}
	if !is.RevokedAt.IsZero() {
		by := ""
		if is.RevocationID != "" {
			by = " by " + is.RevocationID
		}
		row("revoked", ts(is.RevokedAt)+by)
	}
	c := is.Refs
	row("fingerprint", c.Fingerprint)
	row("accessor", c.Accessor)
	row("lease id", c.LeaseID)
	row("user name", c.Username)
	row("jwt id", c.JTI)
	row("serial", c.Serial)
	row("request id", is.RequestID)
	row("record from", r.From)
	tw.Flush()
	if len(r.Conflicts) > 0 {
		ew.printf("\nWARNING: records disagree about this issuance (one issuance id names one issuance; a record does not say what was issued):\n")
		for _, c := range r.Conflicts {
			ew.printf("  - %s\n", pr(c))
		}
	}
	// The act events about the credential carry, checked against the
	// record's (a record, r.From, says what was issued): one that names
	// another is warned about and its line says which; without a record,
	// the events' act is all there is, shown on their lines. An event
	// about another issuance adds nothing: one naming none (a
	// revoke_result) is about this one only if it lists it (a block's
	// first result, before its sweep found this credential, names the
	// revoked issuance alone and carries that one's act).
	actNote := func(ev *audit.Event) string {
		if len(ev.Act) == 0 || ev.IssuanceID != "" && ev.IssuanceID != is.ID ||
			ev.IssuanceID == "" && !slices.Contains(listedIssuances(ev), is.ID) {
			return ""
		}
		if r.From == "" {
			return "acting for " + actText(ev.Act)
		}
		if !sameAct(ev.Act, is.Act) {
			return "act " + actText(ev.Act) + " differs from the issuance's"
		}
		return ""
	}
	var actDiffers []string
	for _, evs := range [][]*audit.Event{r.Uses, r.Revocations} {
		for _, ev := range evs {
			if r.From != "" && actNote(ev) != "" {
				actDiffers = append(actDiffers, pr(eventID(ev))+" ("+pr(ev.Type)+") names act "+actText(ev.Act))
			}
		}
	}
	if len(actDiffers) > 0 {
		ew.printf("\nWARNING: events about this credential name another act (acting for) than its record:\n")
		for _, d := range actDiffers {
			ew.printf("  - %s\n", d)
		}
	}

	ew.printf("\ntimeline (UTC)\n")
	type line struct {
		t    time.Time
		what string
	}
	var lines []line
	if !is.IssuedAt.IsZero() {
		lines = append(lines, line{is.IssuedAt, fmt.Sprintf("issue\t%s\t%s", pr(is.RequestID), sourceText(is.Source.IP, is.Source.UserAgent))})
	}
	withAct := func(ev *audit.Event) string {
		if n := actNote(ev); n != "" {
			return eventText(ev) + "  " + n
		}
		return eventText(ev)
	}
	for _, ev := range r.Uses {
		lines = append(lines, line{parseTime(ev.Time), withAct(ev)})
	}
	for _, ev := range r.Revocations {
		// A revoke or block event written late stands at its decision
		// (details.decided_at; eventText says when it was written).
		lines = append(lines, line{revokedTime(ev), withAct(ev)})
	}
	sort.SliceStable(lines, func(i, j int) bool { return lines[i].t.Before(lines[j].t) })
	tw = tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
	for _, l := range lines {
		fmt.Fprintf(tw, "  %s\t%s\n", ts(l.t), l.what)
	}
	tw.Flush()
	uses, refused := countUses(r.Uses)
	ew.printf("  %d use(s)", uses)
	if refused > 0 {
		ew.printf(" (and %d proxied request(s) refused after their use event)", refused)
	}
	ew.printf(", %d revocation event(s)\n", len(r.Revocations))
	if r.VaultTotal != nil || len(r.Vault) > 0 {
		total := len(r.Vault)
		if r.VaultTotal != nil {
			total = max(*r.VaultTotal, total)
		}
		ew.printf("\nvault audit log: %d request(s) made with this credential", total)
		if r.VaultDropped > 0 {
			ew.printf(" (the first %d listed)", len(r.Vault))
		}
		ew.printf("\n")
		tw = tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
		for _, e := range r.Vault {
			fmt.Fprintf(tw, "  %s\t%s %s\tfrom %s\tline %d\n", ts(e.Time), pr(e.Operation), pr(e.Path), orDash(pr(e.RemoteAddress)), e.Line)
		}
		tw.Flush()
	}
	if n := len(r.AlsoMatched); n > 0 {
		shown := r.AlsoMatched[:min(n, textMaxAlsoMatched)]
		ew.printf("\nthe value also matches %d other issuance(s): %s", n, strings.Join(shown, ", "))
		if n > len(shown) {
			ew.printf(", and %d more (--json lists them all)", n-len(shown))
		}
		ew.printf("\n")
	}
	return ew.err
}

// countUses counts, of evs (a result's Uses), the uses as the report counts
// them: use and introspect events, but not a proxied request refused after
// its use event (notForwardedUses), which are counted apart (refused). The
// list holds their use_result, deny and shared_use_suspected events too:
// not uses.
func countUses(evs []*audit.Event) (uses, refused int) {
	notForwarded := notForwardedUses(evs)
	for _, ev := range evs {
		switch {
		case ev.Type == audit.TypeUse && ev.UseID != "" && notForwarded[ev.UseID]:
			refused++
		case ev.Type == audit.TypeUse || ev.Type == audit.TypeIntrospect:
			uses++
		}
	}
	return uses, refused
}

// textMaxAlsoMatched bounds the other issuances the text names: a
// revocation id matches every issuance it revoked, tens of thousands.
const textMaxAlsoMatched = 20

// eventPart returns details.part and details.parts of a revoke or
// revoke_result event that is one of several (as written, or as decoded
// from JSON), and whether it is.
func eventPart(ev *audit.Event) (part, parts int, ok bool) {
	num := func(v any) int {
		switch n := v.(type) {
		case int:
			return n
		case float64:
			return int(n)
		}
		return 0
	}
	part, parts = num(ev.Details["part"]), num(ev.Details["parts"])
	return part, parts, part > 0 && parts > 1
}

// actText is an act chain as trace shows it.
func actText(act []audit.Identity) string {
	parts := make([]string, len(act))
	for i, a := range act {
		parts[i] = "iss=" + pr(a.Iss) + " sub=" + pr(a.Sub)
	}
	return strings.Join(parts, ", ")
}

// sameAct reports whether an event's act names the issuance's (iss, sub,
// jti each).
func sameAct(ev []audit.Identity, is []broker.IdentityRef) bool {
	if len(ev) != len(is) {
		return false
	}
	for i, a := range ev {
		if a.Iss != is[i].Iss || a.Sub != is[i].Sub || a.JTI != is[i].JTI {
			return false
		}
	}
	return true
}

// eventID is the id eventText shows first for ev.
func eventID(ev *audit.Event) string {
	switch {
	case ev.UseID != "":
		return ev.UseID
	case ev.RevocationID != "":
		return ev.RevocationID
	default:
		return ev.RequestID
	}
}

func eventText(ev *audit.Event) string {
	var b strings.Builder
	b.WriteString(pr(ev.Type))
	b.WriteString("\t")
	b.WriteString(pr(eventID(ev)))
	b.WriteString("\t")
	var parts []string
	if ev.Type == audit.TypeDeny && ev.UseID != "" {
		// The proxy's refusal of a use it had written (or was writing):
		// the request was not sent upstream, whenever the use event landed.
		parts = append(parts, "not forwarded")
	}
	if ev.Type == audit.TypeUseResult && notSent(ev) {
		// The proxy's result of a use refused right before sending (the
		// credential revoked or the workload blocked meanwhile).
		parts = append(parts, "not sent")
	}
	if u := ev.Upstream; u != nil {
		s := pr(strings.TrimSpace(u.Method + " " + u.Host + u.Path))
		if u.Status != 0 {
			s += fmt.Sprintf(" -> upstream %d", u.Status)
		}
		if u.DurationMS > 0 {
			s += fmt.Sprintf(" in %.1fms", u.DurationMS)
		}
		parts = append(parts, s)
	}
	for _, id := range upstreamRequestIDs(ev) {
		parts = append(parts, "upstream "+pr(id[0])+" "+pr(id[1]))
	}
	if ev.Admin != "" {
		parts = append(parts, "by "+pr(ev.Admin))
	}
	if ev.Workload != "" && (ev.Type == audit.TypeBlock || ev.Type == audit.TypeRevoke) {
		parts = append(parts, "workload "+ev.Workload)
	}
	if ev.Reason != "" {
		parts = append(parts, fmt.Sprintf("reason %q", ev.Reason))
	}
	if p, n, ok := eventPart(ev); ok && (ev.Type == audit.TypeRevoke || ev.Type == audit.TypeRevokeResult) {
		parts = append(parts, fmt.Sprintf("part %d/%d", p, n))
	}
	if ev.Type == audit.TypeSharedUse {
		if a, ok := ev.Details["first_address"].(string); ok {
			parts = append(parts, "first seen from "+pr(a))
		}
	}
	if a, ok := ev.Details["active"].(bool); ok && ev.Type == audit.TypeIntrospect {
		parts = append(parts, fmt.Sprintf("active=%v", a))
	}
	if o := ev.Outcome; o != nil && (o.Status >= 300 || o.Error != "") {
		s := fmt.Sprintf("status %d", o.Status)
		if o.Error != "" {
			s += " " + o.Error
		}
		if o.Reason != "" {
			s += " (" + o.Reason + ")"
		}
		parts = append(parts, s)
	}
	if s := ev.Source; s != nil {
		parts = append(parts, "from "+sourceText(s.IP, s.UserAgent))
	}
	if t := parseTime(ev.Time); t.Sub(revokedTime(ev)) >= lateWriteShown {
		// Shown at its decision, earlier (see WriteText).
		parts = append(parts, "written "+ts(t))
	}
	b.WriteString(strings.Join(parts, ", "))
	return b.String()
}

func sourceText(ip, ua string) string {
	switch {
	case ip == "" && ua == "":
		return ""
	case ua == "":
		return pr(ip)
	default:
		return orDash(pr(ip)) + " (" + pr(ua) + ")"
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// WriteText renders the resolution of a Vault audit log.
func (r *VaultReport) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	ew.printf("vault audit log: %d line(s), %d request(s): %d attributed to keytrail issuances, %d with a root token, %d unauthenticated, %d in attribution gaps",
		r.Lines, r.Requests, r.Attributed, r.Root, r.NoToken, r.GapRequests())
	if r.Malformed > 0 {
		ew.printf(", %d malformed line(s) skipped", r.Malformed)
	}
	ew.printf("\n")
	if len(r.Attributions) > 0 {
		ew.printf("\nattributed (by issuance)\n")
		tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  ISSUANCE\tWORKLOAD\tOWNER\tSESSION\tREQUESTS\tBY\tFIRST\tLAST\tPATHS\n")
		for _, a := range r.Attributions {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", pr(a.IssuanceID), pr(a.Workload), pr(a.Owner), pr(a.SessionID), a.Requests, pr(a.By), ts(a.First), ts(a.Last), prJoin(a.Paths, "; "))
		}
		tw.Flush()
	}
	if len(r.Gaps) > 0 {
		ew.printf("\nATTRIBUTION GAPS: requests no keytrail issuance explains\n")
		tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  DISPLAY NAME\tACCESSOR\tREASON\tREQUESTS\tFIRST\tLAST\tPATHS\n")
		for _, g := range r.Gaps {
			reason := pr(g.Reason)
			if g.IssuanceID != "" {
				reason += " (claims " + pr(g.IssuanceID) + ")"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%d\t%s\t%s\t%s\n", orDash(pr(g.DisplayName)), orDash(pr(g.Accessor)), reason, g.Requests, ts(g.First), ts(g.Last), prJoin(g.Paths, "; "))
		}
		tw.Flush()
	} else {
		ew.printf("\nno attribution gaps\n")
	}
	return ew.err
}

type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) Write(p []byte) (int, error) {
	if e.err != nil {
		return 0, e.err
	}
	n, err := e.w.Write(p)
	e.err = err
	return n, err
}

func (e *errWriter) printf(format string, a ...any) { fmt.Fprintf(e, format, a...) }

// lateWriteShown is how much later than its decision a revoke or block
// event must have been written for its timeline line to say when: every
// decision is sealed a few milliseconds after its decided_at, which is no
// news; a write that waited (an audit disk that hung, a decision written
// again by another instance) is.
const lateWriteShown = time.Second
