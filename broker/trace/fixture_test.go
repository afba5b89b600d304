package trace_test

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// The fixture: three issuances of two workloads, their uses, a revocation
// with a block, and denies, as the broker writes them.
var (
	t0 = time.Date(2025, 6, 1, 10, 0, 0, 123456789, time.UTC)

	secretA = "hvs.CAESIFixtureVaultTokenForIssuanceA0123456789"
	secretB = "ktp_Zm9vYmFyYmF6cXV4LWZpeHR1cmUtcHJveHktQg"
	secretC = "db-password-C-0123456789"

	idA, idB, idC = "iss_01JXA0000000000000000000AA", "iss_01JXB0000000000000000000BB", "iss_01JXC0000000000000000000CC"
)

func at(d time.Duration) time.Time { return t0.Add(d) }

func rfc(t time.Time) string { return t.UTC().Format(time.RFC3339) }

func fixtureEvents() []*audit.Event {
	k8s := &audit.Identity{Iss: "https://issuer.test", Sub: "system:serviceaccount:payments:api", JTI: "tok-1"}
	return []*audit.Event{
		{Type: audit.TypePolicyLoad, Details: map[string]any{"hash": "sha256:00"}, Outcome: &audit.Outcome{Status: 200}},
		{Type: audit.TypeIssue, RequestID: "req_A", IssuanceID: idA, Workload: "payments-api", Owner: "team-payments",
			SessionID: "ses_a", Grant: "payments-vault", Kind: broker.KindVaultToken, Identity: k8s,
			Source:     &audit.Source{IP: "10.0.0.5", UserAgent: "kube/1.0"},
			Credential: &audit.Credential{Fingerprint: broker.Fingerprint(secretA), Accessor: "accA0000", LeaseID: "auth/token/create/leaseA", ExpiresAt: rfc(at(15 * time.Minute))},
			Outcome:    &audit.Outcome{Status: 200}},
		{Type: audit.TypeIssue, RequestID: "req_B", IssuanceID: idB, Workload: "payments-api", Owner: "team-payments",
			SessionID: "ses_a", Grant: "stripe", Kind: broker.KindProxy, Identity: k8s,
			Source:     &audit.Source{IP: "10.0.0.5"},
			Credential: &audit.Credential{Fingerprint: broker.Fingerprint(secretB), JTI: "jti-B", ExpiresAt: rfc(at(10 * time.Minute))},
			Details:    map[string]any{"claims": map[string]any{"namespace": "payments", "sub": "system:serviceaccount:payments:api"}},
			Outcome:    &audit.Outcome{Status: 200}},
		{Type: audit.TypeIssue, RequestID: "req_C", IssuanceID: idC, Workload: "reports", Owner: "team-data",
			SessionID: "ses_c", Grant: "reports-db", Kind: broker.KindVaultDynamic,
			Identity:   &audit.Identity{Iss: "https://issuer.test", Sub: "repo:acme/reports:ref:refs/heads/main"},
			Credential: &audit.Credential{Fingerprint: broker.Fingerprint(secretC), LeaseID: "database/creds/reports/leaseC", Username: "v-kt-iss_01JXC-reports", Serial: "7A:3B:01:FF", ExpiresAt: rfc(at(30 * time.Minute))},
			Outcome:    &audit.Outcome{Status: 200}},
		{Type: audit.TypeUse, RequestID: "req_U1", UseID: "use_U1", IssuanceID: idB, Workload: "payments-api", Owner: "team-payments",
			SessionID: "ses_a", Grant: "stripe", Kind: broker.KindProxy, Credential: &audit.Credential{Fingerprint: broker.Fingerprint(secretB)},
			Source: &audit.Source{IP: "10.0.0.6"}, Upstream: &audit.Upstream{Method: "GET", Host: "api.stripe.com", Path: "/v1/charges"}},
		{Type: audit.TypeUseResult, RequestID: "req_U1", UseID: "use_U1", IssuanceID: idB, Workload: "payments-api", Owner: "team-payments",
			SessionID: "ses_a", Grant: "stripe", Kind: broker.KindProxy, Credential: &audit.Credential{Fingerprint: broker.Fingerprint(secretB)},
			Upstream: &audit.Upstream{Method: "GET", Host: "api.stripe.com", Path: "/v1/charges", Status: 200, Bytes: new(int64(512)), DurationMS: 12.5},
			Outcome:  &audit.Outcome{Status: 200}},
		{Type: audit.TypeSharedUse, RequestID: "req_U2", IssuanceID: idB, Workload: "payments-api", Owner: "team-payments",
			SessionID: "ses_a", Grant: "stripe", Kind: broker.KindProxy, Credential: &audit.Credential{Fingerprint: broker.Fingerprint(secretB)},
			Source: &audit.Source{IP: "192.0.2.9"}, Reason: "new_source_address",
			Details: map[string]any{"first_address": "10.0.0.6", "address": "192.0.2.9", "addresses_seen": 2}},
		{Type: audit.TypeIntrospect, RequestID: "req_I", UseID: "use_I2", IssuanceID: idA, Workload: "payments-api", Owner: "team-payments",
			SessionID: "ses_a", Grant: "payments-vault", Kind: broker.KindVaultToken, Admin: "https://issuer.test#checker",
			Credential: &audit.Credential{Fingerprint: broker.Fingerprint(secretA)},
			Details:    map[string]any{"caller": map[string]any{"iss": "https://issuer.test", "sub": "checker"}, "active": true},
			Outcome:    &audit.Outcome{Status: 200}},
		{Type: audit.TypeAdmin, RequestID: "req_R", Admin: "secops:alice", Details: map[string]any{"action": "revoke", "role": "revoke"}, Outcome: &audit.Outcome{Status: 200}},
		{Type: audit.TypeRevoke, RequestID: "req_R", RevocationID: "rev_R1", Workload: "payments-api", Admin: "secops:alice",
			Identity: &audit.Identity{Iss: "https://issuer.test", Sub: "alice"}, Reason: "INC-1: token leaked",
			Details: map[string]any{"selector": map[string]any{"workload": "payments-api"}, "matched": 1, "issuance_ids": []any{idA}, "block": true, "blocks": []any{"payments-api"}},
			Outcome: &audit.Outcome{Status: 200}},
		{Type: audit.TypeBlock, RequestID: "req_R", RevocationID: "rev_R1", Workload: "payments-api", Admin: "secops:alice", Reason: "INC-1: token leaked", Outcome: &audit.Outcome{Status: 200}},
		{Type: audit.TypeRevokeResult, RequestID: "req_R", RevocationID: "rev_R1", Admin: "secops:alice",
			Details: map[string]any{"matched": 1, "revoked": []any{idA}, "pending": []any{}, "failed": []any{}}, Outcome: &audit.Outcome{Status: 200}},
		{Type: audit.TypeDeny, RequestID: "req_D1", Grant: "payments-vault", Identity: &audit.Identity{Iss: "https://issuer.test", Sub: "repo:evil/x:ref:main"},
			Source: &audit.Source{IP: "203.0.113.7"}, Outcome: &audit.Outcome{Status: 403, Error: "access_denied", Reason: "no_workload"}},
		{Type: audit.TypeDeny, RequestID: "req_D2", Grant: "payments-vault", Identity: &audit.Identity{Iss: "https://issuer.test", Sub: "repo:evil/x:ref:main"},
			Outcome: &audit.Outcome{Status: 403, Error: "access_denied", Reason: "no_workload"}},
		{Type: audit.TypeDeny, RequestID: "req_D3", Grant: "deploy-vault", Workload: "payments-api", Owner: "team-payments",
			Identity: k8s, Outcome: &audit.Outcome{Status: 403, Error: "access_denied", Reason: "grant_not_allowed"}},
		{Type: audit.TypeDeny, RequestID: "req_D4", Outcome: &audit.Outcome{Status: 401, Error: "invalid_grant", Reason: "token_expired"}},
	}
}

// sealed seals events into chained audit lines, one second apart from t0.
func sealed(t testing.TB, chain string, start time.Duration, evs []*audit.Event) [][]byte {
	t.Helper()
	c := audit.NewChain(chain)
	var out [][]byte
	for i, ev := range evs {
		line, err := c.Seal(ev, at(start+time.Duration(i)*time.Second))
		if err != nil {
			t.Fatalf("Seal(%s) = %v", ev.Type, err)
		}
		out = append(out, line)
	}
	return out
}

// jsonEvent is the event js (a log line's JSON) as sealed in chain chn_a
// with seq seq, seq seconds after t0.
func jsonEvent(t testing.TB, seq int, js string) *audit.Event {
	t.Helper()
	var ev audit.Event
	if err := json.Unmarshal([]byte(js), &ev); err != nil {
		t.Fatal(err)
	}
	ev.Seq, ev.Chain, ev.Time = uint64(seq), "chn_a", at(time.Duration(seq)*time.Second).Format(time.RFC3339Nano)
	return &ev
}

// timed is an event and the time it is sealed at.
type timed struct {
	ev *audit.Event
	at time.Time
}

// sealedAt seals events, each at its own time, into chained audit lines.
func sealedAt(t testing.TB, chain string, evs []timed) [][]byte {
	t.Helper()
	c := audit.NewChain(chain)
	var out [][]byte
	for _, e := range evs {
		l, err := c.Seal(e.ev, e.at)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, l)
	}
	return out
}

// indexed is an Index of lines.
func indexed(t testing.TB, lines [][]byte) *trace.Index {
	t.Helper()
	x, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range lines {
		if err := x.AddLine(l); err != nil {
			t.Fatal(err)
		}
	}
	return x
}

// writeLines writes lines (newline-terminated) to dir/name.
func writeLines(t testing.TB, dir, name string, lines [][]byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	var b bytes.Buffer
	for _, l := range lines {
		b.Write(l)
		b.WriteByte('\n')
	}
	if err := os.WriteFile(p, b.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func appendLines(t testing.TB, path string, lines [][]byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for _, l := range lines {
		if _, err := f.Write(append(l, '\n')); err != nil {
			t.Fatal(err)
		}
	}
}
