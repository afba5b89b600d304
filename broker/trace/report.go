package trace

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// Report thresholds (SPEC "keytrail report").
const (
	// StaleAfter: a workload with no issuance for this long is stale.
	StaleAfter = 30 * 24 * time.Hour
	// ExceptionHorizon: exceptions expiring within this are listed.
	ExceptionHorizon = 30 * 24 * time.Hour
	// TimelineBuckets is the number of time buckets of the chart.
	TimelineBuckets = 30
)

// ReportInput is what BuildReport works from.
type ReportInput struct {
	// Now is the report's clock reading (required).
	Now time.Time
	// Policy in force; nil reports only what the events show.
	Policy *policies.Policy
	// Events are the audit events covered, any order but for the issue
	// events of one issuance id: the first is counted (Index.Events gives
	// them as the log holds them, the order a trace reads).
	Events []*audit.Event
	// Active, when non-nil, are the issuances active now according to the
	// shared Store (every instance's); it replaces the active set derived
	// from Events, which only knows this log's issuances.
	Active []*broker.Issuance
	// Notes are added to the report (e.g. the index bound was reached).
	Notes []string
}

// Report is the inventory and attribution-gap report.
type Report struct {
	GeneratedAt time.Time `json:"generated_at"`
	// Since is the time of the oldest event covered (or the decided_at of
	// a revoke or block event written after it); findings about
	// "never" mean "not since then".
	Since      time.Time `json:"since,omitzero"`
	Events     int       `json:"events"`
	PolicyHash string    `json:"policy_hash,omitempty"`
	// ActiveFrom is "store" when active credentials come from the shared
	// store, "audit_log" when derived from the events.
	ActiveFrom        string            `json:"active_from"`
	Workloads         []WorkloadReport  `json:"workloads"`
	UnusedGrants      []UnusedGrant     `json:"unused_grants"`
	StaleWorkloads    []StaleWorkload   `json:"stale_workloads"`
	UnownedIdentities []UnownedIdentity `json:"unowned_identities"`
	SharedUse         []SharedUse       `json:"shared_use"`
	Exceptions        []ExceptionStatus `json:"exceptions"`
	Denies            []ReasonCount     `json:"denies"`
	Timeline          Timeline          `json:"timeline"`
	Notes             []string          `json:"notes,omitempty"`
}

// WorkloadReport is one workload and what it holds.
type WorkloadReport struct {
	Name       string        `json:"name"`
	Owner      string        `json:"owner"`
	InPolicy   bool          `json:"in_policy"`
	Issued     int           `json:"issued"`
	Active     int           `json:"active"`
	Uses       int           `json:"uses"`
	Revoked    int           `json:"revoked"`
	Denied     int           `json:"denied"`
	LastIssued time.Time     `json:"last_issued,omitzero"`
	Grants     []GrantReport `json:"grants"`
}

// GrantReport is one grant of one workload.
type GrantReport struct {
	Name       string    `json:"name"`
	Kind       string    `json:"kind,omitempty"`
	Allowed    bool      `json:"allowed"` // the policy allows it to the workload
	Issued     int       `json:"issued"`
	Active     int       `json:"active"`
	Uses       int       `json:"uses"`
	LastIssued time.Time `json:"last_issued,omitzero"`
}

// UnusedGrant is a grant the policy allows a workload that was never
// issued to it in the covered period.
type UnusedGrant struct {
	Workload string `json:"workload"`
	Owner    string `json:"owner"`
	Grant    string `json:"grant"`
	Kind     string `json:"kind,omitempty"`
}

// StaleWorkload had no issuance for StaleAfter (or none at all).
type StaleWorkload struct {
	Name       string    `json:"name"`
	Owner      string    `json:"owner"`
	LastIssued time.Time `json:"last_issued,omitzero"`
	// DaysSince is -1 when no issuance is known.
	DaysSince int `json:"days_since"`
}

// UnownedIdentity is an identity that asked for credentials and matched
// no workload (denies with reason no_workload).
type UnownedIdentity struct {
	Iss    string    `json:"iss"`
	Sub    string    `json:"sub"`
	Denies int       `json:"denies"`
	First  time.Time `json:"first"`
	Last   time.Time `json:"last"`
	Grants []string  `json:"grants"` // grants it asked for
}

// SharedUse is a credential used from more than one source address.
type SharedUse struct {
	IssuanceID string    `json:"issuance_id"`
	Workload   string    `json:"workload"`
	Owner      string    `json:"owner"`
	Grant      string    `json:"grant"`
	Events     int       `json:"events"`
	Addresses  []string  `json:"addresses"`
	First      time.Time `json:"first"`
	Last       time.Time `json:"last"`
}

// ExceptionStatus is a policy exception expired or expiring within
// ExceptionHorizon.
type ExceptionStatus struct {
	Name    string `json:"name"`
	Owner   string `json:"owner"`
	Reason  string `json:"reason"`
	Expires string `json:"expires"` // YYYY-MM-DD, the last valid day
	Status  string `json:"status"`  // "expired" or "expiring"
	// DaysLeft counts whole days until expiry (negative once expired).
	DaysLeft int `json:"days_left"`
}

// ReasonCount is a deny reason and how often it occurred.
type ReasonCount struct {
	Reason string `json:"reason"`
	Count  int    `json:"count"`
}

// Timeline is the chart data: per workload, issuances, uses and
// revocations per time bucket.
type Timeline struct {
	Start         time.Time     `json:"start"`
	End           time.Time     `json:"end"`
	BucketSeconds int64         `json:"bucket_seconds"`
	Rows          []TimelineRow `json:"rows"`
}

// TimelineRow is one workload's counts per bucket.
type TimelineRow struct {
	Workload string `json:"workload"`
	Issues   []int  `json:"issues"`
	Uses     []int  `json:"uses"`
	// Revocations counts revoked issuances, each once, in the bucket of
	// the first event that revoked it (as WorkloadReport.Revoked does).
	Revocations []int `json:"revocations"`
}

// Exception statuses.
const (
	ExceptionExpired  = "expired"
	ExceptionExpiring = "expiring"
)

// BuildReport builds the report. It is a pure function of its input.
func BuildReport(in ReportInput) (*Report, error) {
	if in.Now.IsZero() {
		return nil, errors.New("trace: ReportInput.Now is required")
	}
	now := in.Now.UTC()
	b := &reportBuilder{
		now: now, wl: map[string]*WorkloadReport{}, iss: map[string]*issued{},
		revoked: map[string]time.Time{}, revokedWL: map[string]string{}, revokedBy: map[string]eventPos{}, unowned: map[string]*UnownedIdentity{}, shared: map[string]*SharedUse{},
		denies: map[string]int{},
	}
	rep := &Report{GeneratedAt: now, Events: len(in.Events), ActiveFrom: FromAuditLog, Notes: append([]string(nil), in.Notes...)}
	if in.Policy != nil {
		rep.PolicyHash = in.Policy.Hash()
		for _, w := range in.Policy.Workloads() {
			wr := b.workload(w.Name, w.Owner)
			wr.InPolicy = true
			for _, g := range w.Grants {
				gr := b.grant(wr, g)
				gr.Allowed = true
				if pg, ok := in.Policy.Grant(g); ok {
					gr.Kind = pg.Kind
				}
			}
		}
	} else {
		rep.Notes = append(rep.Notes, "no policy given: owners, grants and exceptions come from the audit events only")
	}

	// An issuance id names one issuance: it is counted once, from the
	// issue event a trace shows (the first the log holds).
	b.issue = firstIssueEvents(in.Events)
	evs := append([]*audit.Event(nil), in.Events...)
	sortEvents(evs)
	b.notMade = notMadeRevocations(evs)
	b.notForwarded = notForwardedUses(evs)
	for _, ev := range evs {
		b.event(ev)
	}
	rep.Notes = append(rep.Notes, b.conflicts...)
	if len(evs) > 0 {
		// The oldest event, or a decision it predates: a revoke or block
		// event written late or again stands at its decided_at, as in
		// the totals, and the chart starts at Since.
		rep.Since = parseTime(evs[0].Time)
		for _, ev := range evs {
			if t := revokedTime(ev); !t.IsZero() && t.Before(rep.Since) {
				rep.Since = t
			}
		}
	}

	// Active credentials.
	if in.Active != nil {
		rep.ActiveFrom = FromStore
		for _, is := range in.Active {
			if !is.Active(now) {
				continue
			}
			wr := b.workload(is.Workload, is.Owner)
			wr.Active++
			b.grant(wr, is.Grant).Active++
			if b.grant(wr, is.Grant).Kind == "" {
				b.grant(wr, is.Grant).Kind = is.Kind
			}
		}
	} else {
		for id, is := range b.iss {
			if _, rv := b.revoked[id]; rv || !now.Before(is.expires) {
				continue
			}
			wr := b.workload(is.workload, "")
			wr.Active++
			b.grant(wr, is.grant).Active++
		}
	}
	for id := range b.revoked {
		if is := b.iss[id]; is != nil {
			b.workload(is.workload, "").Revoked++
		}
	}

	for _, wr := range b.wl {
		sort.Slice(wr.Grants, func(i, j int) bool { return wr.Grants[i].Name < wr.Grants[j].Name })
		rep.Workloads = append(rep.Workloads, *wr)
	}
	sort.Slice(rep.Workloads, func(i, j int) bool { return rep.Workloads[i].Name < rep.Workloads[j].Name })

	rep.UnusedGrants, rep.StaleWorkloads = []UnusedGrant{}, []StaleWorkload{}
	for _, wr := range rep.Workloads {
		for _, g := range wr.Grants {
			if g.Allowed && g.Issued == 0 {
				rep.UnusedGrants = append(rep.UnusedGrants, UnusedGrant{Workload: wr.Name, Owner: wr.Owner, Grant: g.Name, Kind: g.Kind})
			}
		}
		if wr.InPolicy && (wr.LastIssued.IsZero() || now.Sub(wr.LastIssued) >= StaleAfter) {
			sw := StaleWorkload{Name: wr.Name, Owner: wr.Owner, LastIssued: wr.LastIssued, DaysSince: -1}
			if !wr.LastIssued.IsZero() {
				sw.DaysSince = int(now.Sub(wr.LastIssued) / (24 * time.Hour))
			}
			rep.StaleWorkloads = append(rep.StaleWorkloads, sw)
		}
	}

	rep.UnownedIdentities = []UnownedIdentity{}
	for _, u := range b.unowned {
		sort.Strings(u.Grants)
		rep.UnownedIdentities = append(rep.UnownedIdentities, *u)
	}
	sort.Slice(rep.UnownedIdentities, func(i, j int) bool {
		a, c := rep.UnownedIdentities[i], rep.UnownedIdentities[j]
		if a.Denies != c.Denies {
			return a.Denies > c.Denies
		}
		return a.Iss+"\x00"+a.Sub < c.Iss+"\x00"+c.Sub
	})

	rep.SharedUse = []SharedUse{}
	for _, s := range b.shared {
		rep.SharedUse = append(rep.SharedUse, *s)
	}
	sort.Slice(rep.SharedUse, func(i, j int) bool { return rep.SharedUse[i].IssuanceID < rep.SharedUse[j].IssuanceID })

	rep.Exceptions = exceptions(in.Policy, now)

	rep.Denies = []ReasonCount{}
	for r, n := range b.denies {
		rep.Denies = append(rep.Denies, ReasonCount{Reason: r, Count: n})
	}
	sort.Slice(rep.Denies, func(i, j int) bool {
		if rep.Denies[i].Count != rep.Denies[j].Count {
			return rep.Denies[i].Count > rep.Denies[j].Count
		}
		return rep.Denies[i].Reason < rep.Denies[j].Reason
	})

	rep.Timeline = b.timeline(evs, rep.Since)
	return rep, nil
}

type issued struct {
	workload, grant string
	expires         time.Time
}

type reportBuilder struct {
	now     time.Time
	wl      map[string]*WorkloadReport
	iss     map[string]*issued
	revoked map[string]time.Time // issuance id -> when first revoked
	// revokedWL is the workload of the event that first revoked an
	// issuance (the selector's, for a revoke), for one issued before the
	// events covered.
	revokedWL map[string]string
	// revokedBy is the chain and seq of that event: of two revoking at
	// the same time, the one first by chain, then seq, as trace's
	// revocation order (sortRevocations) takes it.
	revokedBy map[string]eventPos
	unowned   map[string]*UnownedIdentity
	shared    map[string]*SharedUse
	denies    map[string]int
	// notMade are the revocations whose record could not be stored: their
	// revoke events revoked nothing.
	notMade map[string]bool
	// notForwarded are the use ids of proxied requests refused after
	// their use event: not uses (see notForwardedUses).
	notForwarded map[string]bool
	// issue is the issue event each issuance is counted from (see
	// firstIssueEvents); conflicts names the others that disagree with it.
	issue     map[string]*audit.Event
	conflicts []string
}

// notForwardedUses returns the use ids of the proxied requests that wrote a
// use event and were not forwarded: a deny names the use (the use event was
// not durable in time, or the credential was revoked or the workload blocked
// right before sending), or a use_result says details.not_sent (the latter,
// also in logs written before denies named the use).
func notForwardedUses(evs []*audit.Event) map[string]bool {
	ids := map[string]bool{}
	for _, ev := range evs {
		if ev.UseID != "" && (ev.Type == audit.TypeDeny || (ev.Type == audit.TypeUseResult && notSent(ev))) {
			ids[ev.UseID] = true
		}
	}
	return ids
}

// notSent reports whether use_result event ev says its request was not
// sent upstream (details.not_sent, as written or as decoded from JSON).
func notSent(ev *audit.Event) bool {
	v, _ := ev.Details["not_sent"].(bool)
	return v
}

// forwarded reports whether use or introspect event ev counts as a use:
// not a proxied request refused after its use event.
func (b *reportBuilder) forwarded(ev *audit.Event) bool {
	return ev.Type != audit.TypeUse || ev.UseID == "" || !b.notForwarded[ev.UseID]
}

// firstIssueEvents maps each issuance id to its first issue event in evs
// (the order the log holds them): the one a trace shows.
func firstIssueEvents(evs []*audit.Event) map[string]*audit.Event {
	first := map[string]*audit.Event{}
	for _, ev := range evs {
		if ev.Type == audit.TypeIssue && ev.IssuanceID != "" && first[ev.IssuanceID] == nil {
			first[ev.IssuanceID] = ev
		}
	}
	return first
}

// counted reports whether issue event ev counts as an issuance: it is the
// one its issuance is counted from, or names none. Another one for the
// same id is no second issuance; one that disagrees with the counted one
// is named in the report's notes, as a trace names it.
func (b *reportBuilder) counted(ev *audit.Event) bool {
	first := b.issue[ev.IssuanceID]
	return ev.IssuanceID == "" || first == nil || first == ev
}

func (b *reportBuilder) workload(name, owner string) *WorkloadReport {
	wr := b.wl[name]
	if wr == nil {
		wr = &WorkloadReport{Name: name, Owner: owner, Grants: []GrantReport{}}
		b.wl[name] = wr
	}
	if wr.Owner == "" {
		wr.Owner = owner
	}
	return wr
}

func (b *reportBuilder) grant(wr *WorkloadReport, name string) *GrantReport {
	for i := range wr.Grants {
		if wr.Grants[i].Name == name {
			return &wr.Grants[i]
		}
	}
	wr.Grants = append(wr.Grants, GrantReport{Name: name})
	return &wr.Grants[len(wr.Grants)-1]
}

func (b *reportBuilder) event(ev *audit.Event) {
	t := parseTime(ev.Time)
	switch ev.Type {
	case audit.TypeIssue:
		if !b.counted(ev) {
			first := b.issue[ev.IssuanceID]
			if ds := issuanceDiffs(issuanceOf(first), issuanceOf(ev)); len(ds) > 0 {
				b.conflicts = append(b.conflicts, fmt.Sprintf("%s; the report counts the first (chain %s, seq %d)",
					otherIssueEvent(ev.IssuanceID, ev, ds, "counted"), first.Chain, first.Seq))
			}
			return
		}
		if ev.Workload == "" {
			return
		}
		wr := b.workload(ev.Workload, ev.Owner)
		g := b.grant(wr, ev.Grant)
		if g.Kind == "" {
			g.Kind = ev.Kind
		}
		wr.Issued++
		g.Issued++
		if t.After(wr.LastIssued) {
			wr.LastIssued = t
		}
		if t.After(g.LastIssued) {
			g.LastIssued = t
		}
		exp := t.Add(StaleAfter) // unknown expiry: assume long-lived
		if ev.Credential != nil {
			if e := parseCredTime(ev.Credential.ExpiresAt); !e.IsZero() {
				exp = e
			}
		}
		b.iss[ev.IssuanceID] = &issued{workload: ev.Workload, grant: ev.Grant, expires: exp}
	case audit.TypeUse, audit.TypeIntrospect:
		if ev.IssuanceID == "" || ev.Workload == "" || !b.forwarded(ev) {
			return
		}
		wr := b.workload(ev.Workload, ev.Owner)
		wr.Uses++
		b.grant(wr, ev.Grant).Uses++
	case audit.TypeSharedUse:
		s := b.shared[ev.IssuanceID]
		if s == nil {
			s = &SharedUse{IssuanceID: ev.IssuanceID, Workload: ev.Workload, Owner: ev.Owner, Grant: ev.Grant, Addresses: []string{}}
			b.shared[ev.IssuanceID] = s
		}
		s.Events++
		s.First, s.Last = span(s.First, s.Last, t)
		for _, k := range []string{"first_address", "address"} {
			if a, ok := ev.Details[k].(string); ok && a != "" && !contains(s.Addresses, a) {
				s.Addresses = append(s.Addresses, a)
			}
		}
		if ev.Source != nil && ev.Source.IP != "" && !contains(s.Addresses, ev.Source.IP) {
			s.Addresses = append(s.Addresses, ev.Source.IP)
		}
	case audit.TypeRevoke, audit.TypeRevokeResult, audit.TypeOrphanRevoked:
		if ev.Type == audit.TypeOrphanRevoked && ev.Outcome != nil && ev.Outcome.Status >= 300 {
			break // the revocation failed: the credential lives on (the reconciliation retries)
		}
		if ev.Type == audit.TypeRevoke && b.notMade[ev.RevocationID] {
			break // not made: nothing was revoked (the caller was told to retry)
		}
		ids := listedIssuances(ev)
		if ev.IssuanceID != "" {
			ids = append(ids, ev.IssuanceID)
		}
		if ev.Type == audit.TypeRevokeResult {
			// Only the ones it says are revoked.
			ids = stringsOf(ev.Details["revoked"])
		}
		// When first revoked: a revoke event written again comes later
		// than its decision (revokedTime).
		at, pos := revokedTime(ev), eventPos{ev.Chain, ev.Seq}
		for _, id := range ids {
			if first, ok := b.revoked[id]; !ok || at.Before(first) || (at.Equal(first) && pos.before(b.revokedBy[id])) {
				b.revoked[id], b.revokedWL[id], b.revokedBy[id] = at, ev.Workload, pos
			}
		}
	case audit.TypeDeny:
		reason := "unknown"
		if o := ev.Outcome; o != nil {
			switch {
			case o.Reason != "":
				reason = o.Reason
			case o.Error != "":
				reason = o.Error
			}
		}
		n := denyCount(ev, reason)
		b.countDenies(ev, reason, n)
		if ev.Workload != "" {
			// A summary of a workload's 429s stands for n of its denies.
			b.workload(ev.Workload, ev.Owner).Denied += n
		}
		if ev.Identity == nil {
			break
		}
		// An identity's no_workload refusals: each its own event, or
		// those its summary counts (an identity matching no workload,
		// past refusal_limit.per_identity: details.reasons no_workload,
		// details.grants, first).
		nw, grants, first := 0, []string{ev.Grant}, t
		switch {
		case reason == "no_workload":
			nw = 1
		case ev.Workload == "" && identitySummary(ev, reason):
			nw = summaryReasons(ev, reason, n)["no_workload"]
			grants = summaryKeys(ev.Details["grants"])
			if fs, _ := ev.Details["first"].(string); fs != "" {
				first = parseTime(fs)
			}
		}
		if nw == 0 {
			break
		}
		key := ev.Identity.Iss + "\x00" + ev.Identity.Sub
		u := b.unowned[key]
		if u == nil {
			u = &UnownedIdentity{Iss: ev.Identity.Iss, Sub: ev.Identity.Sub, Grants: []string{}}
			b.unowned[key] = u
		}
		u.Denies += nw
		u.First, u.Last = span(u.First, u.Last, first)
		u.First, u.Last = span(u.First, u.Last, t)
		for _, g := range grants {
			if g != "" && !contains(u.Grants, g) {
				u.Grants = append(u.Grants, g)
			}
		}
	}
}

// countDenies adds the n refusals of deny event ev (reason its reason) to
// the report's counts by reason. A summary of unauthenticated refusals
// (broker.ReasonRefusalsSuppressed) counts them under the reasons they
// would have been refused for, as its details.reasons gives them (each a
// whole number from 1, together at most n; otherwise they are not read),
// and the rest under its own reason. Its reasons are read whenever its
// details.suppressed is a usable count, one included (a single refusal
// past the bucket in a span); not when n is denyCount's stand-in for a
// count that is not usable. So are an authenticated caller's summary's
// (identitySummary): its refusals other than 429s (a revoked broker JWT
// presented to /v1/token, credential_revoked) under their reasons, its
// 429s under rate_limited.
func (b *reportBuilder) countDenies(ev *audit.Event, reason string, n int) {
	if by := summaryReasons(ev, reason, n); by != nil {
		left := n
		for r, c := range by {
			b.denies[r] += c
			left -= c
		}
		if left > 0 {
			b.denies[reason] += left
		}
		return
	}
	b.denies[reason] += n
}

// summaryReasons is what countDenies reads of deny event ev (reason its
// reason, n denyCount's): the refusals of a summary (of unauthenticated
// refusals, or an authenticated caller's) by the reasons they would have
// been refused for, as its details.reasons gives them; nil when ev is no
// such summary, its details.suppressed is not a usable count, or its
// reasons are not each a whole number from 1, together at most n.
func summaryReasons(ev *audit.Event, reason string, n int) map[string]int {
	if (reason != broker.ReasonRefusalsSuppressed && !identitySummary(ev, reason)) || wholeCount(ev.Details["suppressed"]) != n {
		return nil
	}
	rs, _ := ev.Details["reasons"].(map[string]any)
	if m, ok := ev.Details["reasons"].(map[string]int); ok { // as the broker writes it
		rs = make(map[string]any, len(m))
		for r, c := range m {
			rs[r] = c
		}
	}
	if len(rs) == 0 {
		return nil
	}
	by := make(map[string]int, len(rs))
	left := n
	for r, v := range rs {
		c := wholeCount(v)
		if r == "" || c < 1 || c > left {
			return nil
		}
		by[r] += c
		left -= c
	}
	return by
}

// summaryKeys are the names a summary counts by (details.grants: a map
// of counts, as the broker writes it or as JSON decodes it), sorted.
func summaryKeys(v any) []string {
	var out []string
	switch m := v.(type) {
	case map[string]int:
		for k := range m {
			out = append(out, k)
		}
	case map[string]any:
		for k := range m {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// denyCount is the number of refusals a deny event records: one, or
// details.suppressed for a refusal summary (broker.ReasonRefusalsSuppressed,
// or an authenticated caller's 429 summary: reason rate_limited with
// details.scope broker.RefusalScopeIdentity; either stands for that many
// 429s not audited on their own). A summary
// without a usable count (not a whole number from 1 to maxSuppressed,
// whatever type it was decoded as) is one, so that no count read from a
// log can make the report's sums wrap around.
func denyCount(ev *audit.Event, reason string) int {
	if reason != broker.ReasonRefusalsSuppressed && !identitySummary(ev, reason) {
		return 1
	}
	if n := wholeCount(ev.Details["suppressed"]); n > 0 {
		return n
	}
	return 1
}

// identitySummary reports whether deny event ev (reason its reason) is an
// authenticated caller's summary: reason rate_limited, details.scope
// broker.RefusalScopeIdentity.
func identitySummary(ev *audit.Event, reason string) bool {
	return reason == broker.ReasonRateLimited && ev.Details["scope"] == broker.RefusalScopeIdentity
}

// wholeCount is v as a count read from a log (a whole number from 1 to
// maxSuppressed, whatever type it was decoded as), 0 when it is not one.
func wholeCount(v any) int {
	var n int64
	switch v := v.(type) {
	case int:
		n = int64(v)
	case int64:
		n = v
	case float64:
		if v >= 1 && v <= maxSuppressed && v == math.Trunc(v) {
			n = int64(v)
		}
	case json.Number:
		if i, err := v.Int64(); err == nil {
			n = i
		}
	}
	if n < 1 || n > maxSuppressed {
		return 0
	}
	return int(n)
}

// maxSuppressed bounds the count one refusal summary may stand for in a
// report (far above what the refusal guard writes in a summary_every).
const maxSuppressed = math.MaxInt32

// timeline buckets issuances, uses and revocations per workload from
// since (at most StaleAfter before now... or the oldest event) to now.
func (b *reportBuilder) timeline(evs []*audit.Event, since time.Time) Timeline {
	end := b.now
	start := since
	if start.IsZero() || !start.Before(end) {
		start = end.Add(-time.Hour)
	}
	if end.Sub(start) < time.Hour {
		start = end.Add(-time.Hour)
	}
	span := end.Sub(start)
	bucket := (span + TimelineBuckets - 1) / TimelineBuckets
	bucketSec := int64((bucket + time.Second - 1) / time.Second)
	bucket = time.Duration(bucketSec) * time.Second
	tl := Timeline{Start: start, End: start.Add(bucket * TimelineBuckets), BucketSeconds: bucketSec, Rows: []TimelineRow{}}
	rows := map[string]*TimelineRow{}
	row := func(w string) *TimelineRow {
		r := rows[w]
		if r == nil {
			r = &TimelineRow{Workload: w, Issues: make([]int, TimelineBuckets), Uses: make([]int, TimelineBuckets), Revocations: make([]int, TimelineBuckets)}
			rows[w] = r
		}
		return r
	}
	idx := func(t time.Time) (int, bool) {
		if t.IsZero() || t.Before(start) {
			return 0, false
		}
		i := int(t.Sub(start) / bucket)
		if i >= TimelineBuckets {
			i = TimelineBuckets - 1
		}
		return i, true
	}
	for _, ev := range evs {
		i, ok := idx(parseTime(ev.Time))
		if !ok {
			continue
		}
		switch ev.Type {
		case audit.TypeIssue:
			if ev.Workload != "" && b.counted(ev) {
				row(ev.Workload).Issues[i]++
			}
		case audit.TypeUse, audit.TypeIntrospect:
			if ev.IssuanceID != "" && ev.Workload != "" && b.forwarded(ev) {
				row(ev.Workload).Uses[i]++
			}
		}
	}
	// Revocations: each revoked issuance once, when first revoked (a
	// revoke, a revoke_result, which alone names what the sweep found, or
	// a successful orphan_revoked), as in the totals.
	for id, t := range b.revoked {
		i, ok := idx(t)
		if !ok {
			continue
		}
		w := b.revokedWL[id]
		if is := b.iss[id]; is != nil {
			w = is.workload
		}
		if w != "" {
			row(w).Revocations[i]++
		}
	}
	for _, r := range rows {
		tl.Rows = append(tl.Rows, *r)
	}
	sort.Slice(tl.Rows, func(i, j int) bool { return tl.Rows[i].Workload < tl.Rows[j].Workload })
	return tl
}

func exceptions(pol *policies.Policy, now time.Time) []ExceptionStatus {
	out := []ExceptionStatus{}
	if pol == nil {
		return out
	}
	for _, e := range pol.Exceptions() {
		if e.Expires.IsZero() {
			continue
		}
		// Valid through the whole expiry day (UTC).
		end := e.Expires.Time.AddDate(0, 0, 1)
		left := end.Sub(now)
		days := int(left / (24 * time.Hour))
		if left < 0 {
			days = -int((-left + 24*time.Hour - 1) / (24 * time.Hour))
		}
		st := ExceptionStatus{Name: e.Name, Owner: e.Owner, Reason: e.Reason, Expires: e.Expires.String(), DaysLeft: days}
		switch {
		case left <= 0:
			st.Status = ExceptionExpired
		case left <= ExceptionHorizon:
			st.Status = ExceptionExpiring
		default:
			continue
		}
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Expires != out[j].Expires {
			return out[i].Expires < out[j].Expires
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// parseCredTime reads credential.expires_at (RFC 3339, with or without
// fractional seconds).
func parseCredTime(s string) time.Time { return parseTime(s) }

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}

// eventPos is an event's place in the log: its chain and seq.
type eventPos struct {
	chain string
	seq   uint64
}

// before orders positions as sortRevocations orders events of one time:
// by chain, then seq.
func (p eventPos) before(q eventPos) bool {
	if p.chain != q.chain {
		return p.chain < q.chain
	}
	return p.seq < q.seq
}
