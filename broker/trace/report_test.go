package trace_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
	"github.com/keytrail/keytrail/policies"
)

const reportPolicy = `version: 1
issuers:
  - name: test
    issuer: https://issuer.test
    jwks_url: https://issuer.test/jwks.json
    audiences: [keytrail]
    algorithms: [ES256]
    max_token_lifetime: 1h
workloads:
  - name: payments-api
    owner: team-payments
    match: {issuer: test, subject: "system:serviceaccount:payments:api"}
    grants: [payments-vault, stripe, payments-db]
  - name: reports
    owner: team-data
    match: {issuer: test, subject_pattern: "repo:acme/reports:.*"}
    grants: [reports-db]
  - name: idle-job
    owner: team-ops
    match: {issuer: test, subject: idle}
    grants: [payments-vault]
grants:
  - name: payments-vault
    kind: vault_token
    ttl: 15m
    vault_token: {policies: [payments-read]}
  - name: stripe
    kind: proxy
    ttl: 10m
    proxy:
      upstream: https://api.stripe.com
      secret: {vault_kv: secret/data/upstreams/stripe, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      methods: [GET]
      paths: ["/v1/charges"]
  - name: payments-db
    kind: vault_dynamic
    ttl: 30m
    vault_dynamic: {path: database/creds/payments}
  - name: reports-db
    kind: vault_dynamic
    ttl: 30m
    vault_dynamic: {path: database/creds/reports}
exceptions:
  - name: legacy-batch-key
    owner: team-data
    reason: vendor API allows one key per account
    expires: 2025-06-10
  - name: old-shared-ftp
    owner: team-ops
    reason: migration pending
    expires: 2025-05-01
  - name: far-future
    owner: team-ops
    reason: documented
    expires: 2026-12-31
`

func reportPolicyT(t testing.TB) *policies.Policy {
	t.Helper()
	pol, err := policies.Parse("report.yaml", []byte(reportPolicy))
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	return pol
}

func TestBuildReportFull(t *testing.T) {
	x := fixtureIndex(t)
	now := at(5 * time.Minute)
	rep, err := trace.BuildReport(trace.ReportInput{Now: now, Policy: reportPolicyT(t), Events: x.Events()})
	if err != nil {
		t.Fatal(err)
	}
	want := &trace.Report{
		GeneratedAt: now, Since: at(time.Second), Events: 14, PolicyHash: reportPolicyT(t).Hash(), ActiveFrom: trace.FromAuditLog,
		Workloads: []trace.WorkloadReport{
			{Name: "idle-job", Owner: "team-ops", InPolicy: true, Grants: []trace.GrantReport{{Name: "payments-vault", Kind: "vault_token", Allowed: true}}},
			{Name: "payments-api", Owner: "team-payments", InPolicy: true, Issued: 2, Active: 1, Uses: 2, Revoked: 1, Denied: 1, LastIssued: at(2 * time.Second),
				Grants: []trace.GrantReport{
					{Name: "payments-db", Kind: "vault_dynamic", Allowed: true},
					{Name: "payments-vault", Kind: "vault_token", Allowed: true, Issued: 1, Uses: 1, LastIssued: at(time.Second)},
					{Name: "stripe", Kind: "proxy", Allowed: true, Issued: 1, Active: 1, Uses: 1, LastIssued: at(2 * time.Second)},
				}},
			{Name: "reports", Owner: "team-data", InPolicy: true, Issued: 1, Active: 1, LastIssued: at(3 * time.Second),
				Grants: []trace.GrantReport{{Name: "reports-db", Kind: "vault_dynamic", Allowed: true, Issued: 1, Active: 1, LastIssued: at(3 * time.Second)}}},
		},
		UnusedGrants: []trace.UnusedGrant{
			{Workload: "idle-job", Owner: "team-ops", Grant: "payments-vault", Kind: "vault_token"},
			{Workload: "payments-api", Owner: "team-payments", Grant: "payments-db", Kind: "vault_dynamic"},
		},
		StaleWorkloads: []trace.StaleWorkload{{Name: "idle-job", Owner: "team-ops", DaysSince: -1}},
		UnownedIdentities: []trace.UnownedIdentity{
			{Iss: "https://issuer.test", Sub: "repo:evil/x:ref:main", Denies: 2, First: at(12 * time.Second), Last: at(13 * time.Second), Grants: []string{"payments-vault"}},
		},
		SharedUse: []trace.SharedUse{
			{IssuanceID: idB, Workload: "payments-api", Owner: "team-payments", Grant: "stripe", Events: 1, Addresses: []string{"10.0.0.6", "192.0.2.9"}, First: at(6 * time.Second), Last: at(6 * time.Second)},
		},
		Exceptions: []trace.ExceptionStatus{
			{Name: "old-shared-ftp", Owner: "team-ops", Reason: "migration pending", Expires: "2025-05-01", Status: trace.ExceptionExpired, DaysLeft: -31},
			{Name: "legacy-batch-key", Owner: "team-data", Reason: "vendor API allows one key per account", Expires: "2025-06-10", Status: trace.ExceptionExpiring, DaysLeft: 9},
		},
		Denies: []trace.ReasonCount{{Reason: "no_workload", Count: 2}, {Reason: "grant_not_allowed", Count: 1}, {Reason: "token_expired", Count: 1}},
	}
	if diff := cmp.Diff(want, rep, cmpopts.IgnoreFields(trace.Report{}, "Timeline")); diff != "" {
		t.Errorf("BuildReport() = got, want want (-want +got):\n%s", diff)
	}

	// The chart: one hour ending now in 30 buckets of 2 minutes; every
	// fixture event falls in bucket 27.
	bucket := func(n int) []int { b := make([]int, trace.TimelineBuckets); b[27] = n; return b }
	wantTL := trace.Timeline{Start: now.Add(-time.Hour), End: now, BucketSeconds: 120, Rows: []trace.TimelineRow{
		{Workload: "payments-api", Issues: bucket(2), Uses: bucket(2), Revocations: bucket(1)},
		{Workload: "reports", Issues: bucket(1), Uses: bucket(0), Revocations: bucket(0)},
	}}
	if diff := cmp.Diff(wantTL, rep.Timeline); diff != "" {
		t.Errorf("BuildReport().Timeline = got, want want (-want +got):\n%s", diff)
	}
}

// projection is the part of a report a case checks.
type projection struct {
	Active     map[string]int
	Stale      []string
	Exceptions []string
	Unused     int
	ActiveFrom string
}

func project(r *trace.Report) projection {
	p := projection{Active: map[string]int{}, Unused: len(r.UnusedGrants), ActiveFrom: r.ActiveFrom}
	for _, w := range r.Workloads {
		p.Active[w.Name] = w.Active
	}
	for _, s := range r.StaleWorkloads {
		p.Stale = append(p.Stale, s.Name)
	}
	for _, e := range r.Exceptions {
		p.Exceptions = append(p.Exceptions, e.Name+":"+e.Status)
	}
	return p
}

func TestBuildReportCases(t *testing.T) {
	x := fixtureIndex(t)
	pol := reportPolicyT(t)
	fromStore := []*broker.Issuance{
		{ID: "iss_s1", Workload: "reports", Owner: "team-data", Grant: "reports-db", Kind: "vault_dynamic", ExpiresAt: at(40 * 24 * time.Hour)},
		{ID: "iss_s2", Workload: "orders", Owner: "team-orders", Grant: "orders-vault", Kind: "vault_token", ExpiresAt: at(40 * 24 * time.Hour)},
		{ID: "iss_s3", Workload: "reports", Grant: "reports-db", ExpiresAt: at(time.Minute)}, // expired: not counted
	}
	cases := []struct {
		name string
		in   trace.ReportInput
		want projection
	}{
		{"ok/just-after-issue", trace.ReportInput{Now: at(5 * time.Minute), Policy: pol, Events: x.Events()},
			projection{Active: map[string]int{"idle-job": 0, "payments-api": 1, "reports": 1}, Stale: []string{"idle-job"},
				Exceptions: []string{"old-shared-ftp:expired", "legacy-batch-key:expiring"}, Unused: 2, ActiveFrom: trace.FromAuditLog}},
		{"ok/everything-expired", trace.ReportInput{Now: at(20 * 24 * time.Hour), Policy: pol, Events: x.Events()},
			projection{Active: map[string]int{"idle-job": 0, "payments-api": 0, "reports": 0}, Stale: []string{"idle-job"},
				Exceptions: []string{"old-shared-ftp:expired", "legacy-batch-key:expired"}, Unused: 2, ActiveFrom: trace.FromAuditLog}},
		{"ok/stale-after-30-days", trace.ReportInput{Now: at(30*24*time.Hour + 3*time.Second), Policy: pol, Events: x.Events()},
			projection{Active: map[string]int{"idle-job": 0, "payments-api": 0, "reports": 0}, Stale: []string{"idle-job", "payments-api", "reports"},
				Exceptions: []string{"old-shared-ftp:expired", "legacy-batch-key:expired"}, Unused: 2, ActiveFrom: trace.FromAuditLog}},
		{"ok/not-stale-a-second-before", trace.ReportInput{Now: at(30*24*time.Hour + time.Second), Policy: pol, Events: x.Events()},
			projection{Active: map[string]int{"idle-job": 0, "payments-api": 0, "reports": 0}, Stale: []string{"idle-job"},
				Exceptions: []string{"old-shared-ftp:expired", "legacy-batch-key:expired"}, Unused: 2, ActiveFrom: trace.FromAuditLog}},
		{"ok/active-from-store", trace.ReportInput{Now: at(5 * time.Minute), Policy: pol, Events: x.Events(), Active: fromStore},
			projection{Active: map[string]int{"idle-job": 0, "payments-api": 0, "reports": 1, "orders": 1}, Stale: []string{"idle-job"},
				Exceptions: []string{"old-shared-ftp:expired", "legacy-batch-key:expiring"}, Unused: 2, ActiveFrom: trace.FromStore}},
		// An orphan_revoked event whose revocation failed (503: left to the
		// reconciliation) does not end the credential; one that succeeded does.
		{"ok/failed-orphan-revocation-still-active", trace.ReportInput{Now: at(5 * time.Minute), Policy: pol, Events: append(x.Events(),
			&audit.Event{Type: audit.TypeOrphanRevoked, Seq: 100, Chain: "chn_a", Time: at(4 * time.Second).Format(time.RFC3339Nano), IssuanceID: idC,
				Workload: "reports", Reason: "store_failed", Outcome: &audit.Outcome{Status: 503, Error: "temporarily_unavailable", Reason: "revoke_failed"}})},
			projection{Active: map[string]int{"idle-job": 0, "payments-api": 1, "reports": 1}, Stale: []string{"idle-job"},
				Exceptions: []string{"old-shared-ftp:expired", "legacy-batch-key:expiring"}, Unused: 2, ActiveFrom: trace.FromAuditLog}},
		{"ok/orphan-revocation-ends-credential", trace.ReportInput{Now: at(5 * time.Minute), Policy: pol, Events: append(x.Events(),
			&audit.Event{Type: audit.TypeOrphanRevoked, Seq: 100, Chain: "chn_a", Time: at(4 * time.Second).Format(time.RFC3339Nano), IssuanceID: idC,
				Workload: "reports", Reason: "not_audited", Outcome: &audit.Outcome{Status: 200}})},
			projection{Active: map[string]int{"idle-job": 0, "payments-api": 1, "reports": 0}, Stale: []string{"idle-job"},
				Exceptions: []string{"old-shared-ftp:expired", "legacy-batch-key:expiring"}, Unused: 2, ActiveFrom: trace.FromAuditLog}},
		{"ok/no-policy", trace.ReportInput{Now: at(5 * time.Minute), Events: x.Events()},
			projection{Active: map[string]int{"payments-api": 1, "reports": 1}, ActiveFrom: trace.FromAuditLog}},
		{"ok/no-events", trace.ReportInput{Now: at(5 * time.Minute), Policy: pol},
			projection{Active: map[string]int{"idle-job": 0, "payments-api": 0, "reports": 0}, Stale: []string{"idle-job", "payments-api", "reports"},
				Exceptions: []string{"old-shared-ftp:expired", "legacy-batch-key:expiring"}, Unused: 5, ActiveFrom: trace.FromAuditLog}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rep, err := trace.BuildReport(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, project(rep)); diff != "" {
				t.Errorf("BuildReport(%s) = got, want want (-want +got):\n%s", tc.name, diff)
			}
		})
	}
	if _, err := trace.BuildReport(trace.ReportInput{}); err == nil {
		t.Errorf("BuildReport(no clock) = nil error, want an error")
	}
}

func TestReportText(t *testing.T) {
	x := fixtureIndex(t)
	rep, err := trace.BuildReport(trace.ReportInput{Now: at(5 * time.Minute), Policy: reportPolicyT(t), Events: x.Events()})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	if err := rep.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"WORKLOADS (3)", "payments-api", "team-payments", "GRANTS NEVER ISSUED (2)", "idle-job (team-ops): never issued",
		"iss=https://issuer.test sub=repo:evil/x:ref:main: 2 deny(s)", "used from 10.0.0.6, 192.0.2.9", "old-shared-ftp (team-ops): EXPIRED 2025-05-01",
		"legacy-batch-key (team-data): EXPIRING 2025-06-10 (in 9 days)", "DENIES BY REASON, 4 in all", "no_workload"} {
		if !strings.Contains(b.String(), s) {
			t.Errorf("WriteText does not show %q:\n%s", s, b.String())
		}
	}
	js, err := json.Marshal(rep)
	if err != nil {
		t.Fatal(err)
	}
	var back trace.Report
	if err := json.Unmarshal(js, &back); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rep, &back); diff != "" {
		t.Errorf("JSON round trip changes the report (-before +after):\n%s", diff)
	}
}
