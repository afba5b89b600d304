package trace_test

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// conflictsOf returns the "conflicts" of res as the API and --json give it.
func conflictsOf(t *testing.T, res *trace.Result) []string {
	t.Helper()
	b, err := json.Marshal(res)
	if err != nil {
		t.Fatal(err)
	}
	var out struct {
		Conflicts []string `json:"conflicts"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out.Conflicts
}

const conflictID = "iss_01JXC0000000000000000000CC"

func conflictIssue(workload, accessor string) *audit.Event {
	return &audit.Event{Type: audit.TypeIssue, RequestID: "req_C1", IssuanceID: conflictID, Workload: workload, Owner: "team-payments",
		SessionID: "ses_C", Grant: "payments-vault", Kind: broker.KindVaultToken,
		Identity:   &audit.Identity{Iss: "https://issuer.example", Sub: "system:serviceaccount:payments:api"},
		Credential: &audit.Credential{Fingerprint: "sha256:" + strings.Repeat("c", 64), Accessor: accessor, ExpiresAt: rfc(at(time.Hour))},
		Outcome:    &audit.Outcome{Status: 200}}
}

// An issuance id names one issuance: two issue events for it that disagree
// (a workload, a credential reference) mean one of them does not record
// what was issued. Offline, the trace of either credential names the
// disagreement instead of showing the first record as the whole truth; a
// line repeated as is (the same file read twice) is no disagreement.
func TestTraceConflictingIssueEvents(t *testing.T) {
	cases := []struct {
		name   string
		second *audit.Event
		query  string
		want   []string
	}{
		{"fail/second-differs", conflictIssue("batch-export", "acc_evil"), "acc_evil", []string{
			`the audit log holds another issue event for ` + conflictID + ` (chain chn_conf, seq 2) that disagrees: workload "batch-export" (shown: "payments-api"), credential.accessor "acc_evil" (shown: "acc_good")`}},
		{"fail/queried-by-first", conflictIssue("payments-api", "acc_evil"), "acc_good", []string{
			`the audit log holds another issue event for ` + conflictID + ` (chain chn_conf, seq 2) that disagrees: credential.accessor "acc_evil" (shown: "acc_good")`}},
		{"ok/same-record", conflictIssue("payments-api", "acc_good"), "acc_good", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := writeLines(t, t.TempDir(), "audit.jsonl", sealed(t, "chn_conf", 0, []*audit.Event{conflictIssue("payments-api", "acc_good"), tc.second}))
			x, err := trace.NewIndex(trace.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := trace.LoadFiles(x, []string{path}); err != nil {
				t.Fatal(err)
			}
			res, err := x.Lookup(tc.query)
			if err != nil {
				t.Fatalf("Lookup(%s) = %v", tc.query, err)
			}
			if diff := cmp.Diff(tc.want, conflictsOf(t, res)); diff != "" {
				t.Errorf("Lookup(%s) conflicts = got, want want (-want +got):\n%s", tc.query, diff)
			}
			var text bytes.Buffer
			if err := res.WriteText(&text); err != nil {
				t.Fatal(err)
			}
			if got := strings.Contains(text.String(), "WARNING: records disagree"); got != (len(tc.want) > 0) {
				t.Errorf("WriteText(Lookup(%s)) says records disagree = %v, want %v:\n%s", tc.query, got, len(tc.want) > 0, text.String())
			}
		})
	}
}

// Online, the issuance rebuilt from this instance's log is merged with the
// store's record. Where the two disagree on what was issued (workload,
// owner, session, grant, identity, a credential reference), the trace says
// so rather than presenting the log's version as confirmed by both; the
// store's own additions (claims, a revocation made elsewhere) are no
// disagreement. A value only the store knows, for an issuance whose issue
// event the log holds with other references, is flagged too.
func TestLiveTraceLogContradictsStore(t *testing.T) {
	stored := func(mod func(*broker.Issuance)) *broker.Issuance {
		is := &broker.Issuance{ID: conflictID, Workload: "payments-api", Owner: "team-payments", SessionID: "ses_C",
			Grant: "payments-vault", Kind: broker.KindVaultToken, RequestID: "req_C1", AuditChain: "chn_conf",
			Identity: broker.IdentityRef{Iss: "https://issuer.example", Sub: "system:serviceaccount:payments:api"},
			IssuedAt: at(-time.Millisecond), ExpiresAt: at(time.Hour),
			Refs:      broker.CredentialRefs{Fingerprint: "sha256:" + strings.Repeat("c", 64), Accessor: "acc_good", ExpiresAt: at(time.Hour)},
			Claims:    map[string]any{"namespace": "payments"},
			RevokedAt: at(time.Minute), RevocationID: "rev_elsewhere"}
		if mod != nil {
			mod(is)
		}
		return is
	}
	cases := []struct {
		name  string
		store *broker.Issuance
		query string
		from  string
		want  []string
	}{
		{"ok/agree", stored(nil), "acc_good", trace.FromBoth, nil},
		{"fail/owner-differs", stored(func(is *broker.Issuance) { is.Owner = "team-batch" }), "acc_good", trace.FromBoth, []string{
			`the store's record of ` + conflictID + ` disagrees with its issue event in the audit log (chain chn_conf, seq 1): owner "team-batch" in the store, "team-payments" in the log (shown)`}},
		{"fail/ref-only-in-store", stored(func(is *broker.Issuance) { is.Refs.Accessor = "acc_store" }), "acc_store", trace.FromStore, []string{
			`the store's record of ` + conflictID + ` disagrees with its issue event in the audit log (chain chn_conf, seq 1): credential.accessor "acc_store" in the store (shown), "acc_good" in the log`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := writeLines(t, t.TempDir(), "audit.jsonl", sealed(t, "chn_conf", 0, []*audit.Event{conflictIssue("payments-api", "acc_good")}))
			live, err := trace.NewLive(trace.LiveOptions{Path: path, Store: &fakeStore{byID: map[string]*broker.Issuance{conflictID: tc.store}}})
			if err != nil {
				t.Fatal(err)
			}
			res, err := live.Trace(context.Background(), tc.query)
			if err != nil {
				t.Fatalf("Trace(%s) = %v", tc.query, err)
			}
			if res.From != tc.from {
				t.Errorf("Trace(%s).From = %q, want %q", tc.query, res.From, tc.from)
			}
			if diff := cmp.Diff(tc.want, conflictsOf(t, res)); diff != "" {
				t.Errorf("Trace(%s) conflicts = got, want want (-want +got):\n%s", tc.query, diff)
			}
		})
	}
}

// The report counts an issuance once, from the issue event the trace shows
// (the first the log holds), and names another issue event for the same id
// that disagrees with it, as the trace does: it counted every issue event
// as an issuance (a second workload credited with one it never had) and
// took the active credential's workload from the last, so the report said
// batch-export held the credential the trace said payments-api held, with
// no word of the disagreement; a line repeated as is was counted twice.
func TestReportConflictingIssueEvents(t *testing.T) {
	type counts struct{ Issued, Active int }
	cases := []struct {
		name   string
		second *audit.Event
		want   map[string]counts
		notes  []string
	}{
		{"fail/second-differs", conflictIssue("batch-export", "acc_evil"), map[string]counts{"payments-api": {1, 1}}, []string{
			`the audit log holds another issue event for ` + conflictID + ` (chain chn_conf, seq 2) that disagrees: workload "batch-export" (counted: "payments-api"), credential.accessor "acc_evil" (counted: "acc_good"); the report counts the first (chain chn_conf, seq 1)`}},
		{"ok/same-record", conflictIssue("payments-api", "acc_good"), map[string]counts{"payments-api": {1, 1}}, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			path := writeLines(t, t.TempDir(), "audit.jsonl", sealed(t, "chn_conf", 0, []*audit.Event{conflictIssue("payments-api", "acc_good"), tc.second}))
			x, err := trace.NewIndex(trace.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if err := trace.LoadFiles(x, []string{path}); err != nil {
				t.Fatal(err)
			}
			rep, err := trace.BuildReport(trace.ReportInput{Now: at(time.Minute), Events: x.Events()})
			if err != nil {
				t.Fatal(err)
			}
			got := map[string]counts{}
			for _, w := range rep.Workloads {
				got[w.Name] = counts{w.Issued, w.Active}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("BuildReport: workloads = got, want want (-want +got):\n%s", diff)
			}
			for _, r := range rep.Timeline.Rows {
				n := 0
				for _, c := range r.Issues {
					n += c
				}
				if n != got[r.Workload].Issued {
					t.Errorf("BuildReport: timeline counts %d issuances of %s, the totals %d", n, r.Workload, got[r.Workload].Issued)
				}
			}
			var notes []string
			for _, n := range rep.Notes {
				if strings.Contains(n, "issue event") {
					notes = append(notes, n)
				}
			}
			if diff := cmp.Diff(tc.notes, notes); diff != "" {
				t.Errorf("BuildReport: notes about issue events = got, want want (-want +got):\n%s", diff)
			}
			// The trace shows the issuance the report counts.
			res, err := x.Lookup(conflictID)
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := got[res.Issuance.Workload]; !ok {
				t.Errorf("trace shows %s as issued to %q, which the report does not count", conflictID, res.Issuance.Workload)
			}
		})
	}
}
