package policies

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Explanation says what an identity would get and why: for each workload of
// the issuer whether it matched and which checks passed or failed, which
// workload matched, and whether the grant is allowed and what it mints. It
// holds claim values of the identity (not secrets) and is meant for
// operators (keytrail policy explain), not for callers of the broker.
type Explanation struct {
	Issuer      string          `json:"issuer"`
	IssuerKnown bool            `json:"issuer_known"`
	Subject     string          `json:"subject,omitempty"`
	Workloads   []WorkloadCheck `json:"workloads"`
	Matched     string          `json:"matched,omitempty"` // the one matching workload
	Owner       string          `json:"owner,omitempty"`
	Ambiguous   []string        `json:"ambiguous,omitempty"` // all matches when more than one
	Grant       string          `json:"grant,omitempty"`
	GrantKnown  bool            `json:"grant_known"`
	Allowed     bool            `json:"allowed"` // the identity would get the grant
	Kind        string          `json:"kind,omitempty"`
	TTL         time.Duration   `json:"ttl,omitempty"`
	Mints       []string        `json:"mints,omitempty"` // what the grant mints, human readable
	Admin       string          `json:"admin,omitempty"` // the admin entry the identity matches
}

// WorkloadCheck is the evaluation of one workload's match.
type WorkloadCheck struct {
	Workload string  `json:"workload"`
	Source   string  `json:"source"` // where it is declared: "file: workloads[i], line n"
	Matched  bool    `json:"matched"`
	Checks   []Check `json:"checks"`
}

// Explain evaluates claims against every workload of issuerName and, when
// grant is not empty, the grant.
func (p *Policy) Explain(issuerName string, claims map[string]any, grant string) Explanation {
	e := Explanation{Issuer: issuerName, Grant: grant}
	_, e.IssuerKnown = p.issuerIdx[issuerName]
	e.Subject, _ = claims["sub"].(string)
	var matched []int
	for i, m := range p.workloadMatch {
		if m.issuer != issuerName {
			continue
		}
		ok, checks := m.eval(claims, true)
		e.Workloads = append(e.Workloads, WorkloadCheck{Workload: p.workloads[i].Name, Source: p.workloadSrc[i], Matched: ok, Checks: checks})
		if ok {
			matched = append(matched, i)
		}
	}
	switch len(matched) {
	case 0:
	case 1:
		e.Matched = p.workloads[matched[0]].Name
		e.Owner = p.workloads[matched[0]].Owner
	default:
		for _, i := range matched {
			e.Ambiguous = append(e.Ambiguous, p.workloads[i].Name)
		}
	}
	if a, ok := p.MatchAdmin(issuerName, claims, ""); ok {
		e.Admin = a.Name
	}
	if grant == "" {
		return e
	}
	if gi, ok := p.grantIdx[grant]; ok {
		g := &p.grants[gi]
		e.GrantKnown = true
		e.Kind = g.Kind
		e.TTL = g.TTLDuration()
		e.Mints = g.Describe()
		if len(matched) == 1 {
			e.Allowed = p.allowed[matched[0]][grant]
		}
	}
	return e
}

// Printable is s as it is when it is valid UTF-8 and every rune of it is
// printable (unicode.IsPrint: no control, format or separator character
// but the ASCII space), else s quoted with Go escapes (strconv.Quote): a
// token's sub is written by its issuer (or, with --unverified, by anyone),
// and a newline or terminal escape in it must not forge lines of the
// explanation. keytrail trace and report show the values of audit events
// (a sub, a jti, a claim, a User-Agent) through it too.
func Printable(s string) string {
	if utf8.ValidString(s) && !strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsPrint(r) }) {
		return s
	}
	return strconv.Quote(s)
}

// String renders the explanation for a terminal.
func (e Explanation) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "issuer: %s", e.Issuer)
	if !e.IssuerKnown {
		b.WriteString(" (not declared in policy: every token of it is denied)")
	}
	b.WriteString("\n")
	if e.Subject != "" {
		fmt.Fprintf(&b, "subject: %s\n", Printable(e.Subject))
	} else {
		b.WriteString("subject: (no sub claim)\n")
	}
	if len(e.Workloads) == 0 {
		b.WriteString("workloads: none declared for this issuer\n")
	} else {
		b.WriteString("workloads:\n")
	}
	for _, w := range e.Workloads {
		verdict := "no match"
		if w.Matched {
			verdict = "MATCH"
		}
		fmt.Fprintf(&b, "  %s: %s (%s)\n", w.Workload, verdict, w.Source)
		for _, c := range w.Checks {
			mark := "fail"
			if c.OK {
				mark = "ok  "
			}
			fmt.Fprintf(&b, "    %s %s\n", mark, c.Text)
		}
	}
	switch {
	case e.Matched != "":
		fmt.Fprintf(&b, "result: workload %s (owner %s)\n", e.Matched, e.Owner)
	case len(e.Ambiguous) > 0:
		fmt.Fprintf(&b, "result: DENIED, ambiguous: matches workloads %s; make their matches disjoint\n", strings.Join(e.Ambiguous, ", "))
	default:
		b.WriteString("result: DENIED, no workload matches\n")
	}
	if e.Admin != "" {
		fmt.Fprintf(&b, "admin: %s\n", e.Admin)
	}
	if e.Grant == "" {
		return b.String()
	}
	switch {
	case !e.GrantKnown:
		fmt.Fprintf(&b, "grant %s: unknown grant\n", e.Grant)
	case e.Allowed:
		fmt.Fprintf(&b, "grant %s: ALLOWED\n", e.Grant)
	case e.Matched != "":
		fmt.Fprintf(&b, "grant %s: DENIED, not in the grants of workload %s\n", e.Grant, e.Matched)
	default:
		fmt.Fprintf(&b, "grant %s: DENIED, no workload\n", e.Grant)
	}
	for _, l := range e.Mints {
		fmt.Fprintf(&b, "  %s\n", l)
	}
	return b.String()
}
