package trace

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"strings"
	"text/tabwriter"
	"time"
)

// WriteText renders the report for a terminal.
func (r *Report) WriteText(w io.Writer) error {
	ew := &errWriter{w: w}
	ew.printf("keytrail report, generated %s\n", ts(r.GeneratedAt))
	ew.printf("covers %d event(s) since %s; active credentials from %s", r.Events, ts(r.Since), r.ActiveFrom)
	if r.PolicyHash != "" {
		ew.printf("; policy %s", r.PolicyHash)
	}
	ew.printf("\n")
	for _, n := range r.Notes {
		ew.printf("note: %s\n", n)
	}
	section := func(title string, n int) bool {
		ew.printf("\n%s (%d)\n", title, n)
		if n == 0 {
			ew.printf("  none\n")
		}
		return n > 0
	}
	if section("WORKLOADS", len(r.Workloads)) {
		tw := tabwriter.NewWriter(ew, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "  WORKLOAD\tOWNER\tACTIVE\tISSUED\tUSES\tREVOKED\tDENIED\tLAST ISSUED\tIN POLICY\n")
		for _, wr := range r.Workloads {
			fmt.Fprintf(tw, "  %s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", wr.Name, orDash(wr.Owner), wr.Active, wr.Issued, wr.Uses, wr.Revoked, wr.Denied, ts(wr.LastIssued), yesNo(wr.InPolicy))
			for _, g := range wr.Grants {
				fmt.Fprintf(tw, "    grant %s\t%s\t%d\t%d\t%d\t\t\t%s\t%s\n", g.Name, orDash(g.Kind), g.Active, g.Issued, g.Uses, ts(g.LastIssued), allowedText(g.Allowed))
			}
		}
		tw.Flush()
	}
	if section("GRANTS NEVER ISSUED", len(r.UnusedGrants)) {
		for _, u := range r.UnusedGrants {
			ew.printf("  %s (%s): grant %s (%s)\n", u.Workload, orDash(u.Owner), u.Grant, orDash(u.Kind))
		}
	}
	if section("WORKLOADS WITH NO ISSUANCE FOR 30 DAYS", len(r.StaleWorkloads)) {
		for _, s := range r.StaleWorkloads {
			if s.DaysSince < 0 {
				ew.printf("  %s (%s): never issued\n", s.Name, orDash(s.Owner))
			} else {
				ew.printf("  %s (%s): last issued %s, %d days ago\n", s.Name, orDash(s.Owner), ts(s.LastIssued), s.DaysSince)
			}
		}
	}
	if section("UNOWNED IDENTITIES (denied: no workload matches)", len(r.UnownedIdentities)) {
		for _, u := range r.UnownedIdentities {
			// iss, sub and the grants asked for are the caller's: an old
			// log holds subs authn refuses now (pr).
			ew.printf("  iss=%s sub=%s: %d deny(s) %s .. %s, asked for %s\n", pr(u.Iss), pr(u.Sub), u.Denies, ts(u.First), ts(u.Last), orDash(prJoin(u.Grants, ", ")))
		}
	}
	if section("SHARED-USE SUSPICIONS", len(r.SharedUse)) {
		for _, s := range r.SharedUse {
			ew.printf("  %s %s (%s) grant %s: used from %s (%d event(s), %s .. %s)\n", s.IssuanceID, s.Workload, orDash(s.Owner), s.Grant, prJoin(s.Addresses, ", "), s.Events, ts(s.First), ts(s.Last))
		}
	}
	if section("POLICY EXCEPTIONS EXPIRED OR EXPIRING WITHIN 30 DAYS", len(r.Exceptions)) {
		for _, e := range r.Exceptions {
			ew.printf("  %s (%s): %s %s (%s) - %s\n", e.Name, orDash(e.Owner), strings.ToUpper(e.Status), e.Expires, daysText(e.DaysLeft), e.Reason)
		}
	}
	total := 0
	for _, d := range r.Denies {
		total += d.Count
	}
	if section(fmt.Sprintf("DENIES BY REASON, %d in all", total), len(r.Denies)) {
		for _, d := range r.Denies {
			ew.printf("  %-28s %d\n", pr(d.Reason), d.Count)
		}
	}
	return ew.err
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func allowedText(b bool) string {
	if b {
		return "allowed"
	}
	return "not allowed now"
}

func daysText(d int) string {
	switch {
	case d < 0:
		return fmt.Sprintf("%d days ago", -d)
	case d == 0:
		return "today"
	default:
		return fmt.Sprintf("in %d days", d)
	}
}

//go:embed report.html.tmpl
var reportHTML string

var reportTmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	"ts":   ts,
	"day":  func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04") },
	"days": daysText,
	"join": strings.Join,
	"dash": orDash,
	"yes":  yesNo,
	"totalActive": func(ws []WorkloadReport) int {
		n := 0
		for _, w := range ws {
			n += w.Active
		}
		return n
	},
	"totalDenies": func(ds []ReasonCount) int {
		n := 0
		for _, d := range ds {
			n += d.Count
		}
		return n
	},
}).Parse(reportHTML))

// WriteHTML renders the report as one self-contained HTML file: inline CSS,
// an inline script that draws the timeline chart as SVG, no external
// resource (a Content-Security-Policy forbids loading any).
func (r *Report) WriteHTML(w io.Writer) error {
	return reportTmpl.Execute(w, r)
}
