package e2e

// Tracing by the values other systems log: the jti a JWT's audience logs,
// the lease id Vault's database engine logs, and the sha256: fingerprint of
// a credential (what keytrail's own logs and a proxy's log give). Each must
// lead to the one issuance it came from, online (GET /v1/admin/trace) and
// offline (keytrail trace --audit-log).

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker/trace"
	"github.com/keytrail/keytrail/e2e/harness"
)

const traceRefsPolicy = `version: 1
workloads:
  - name: ledger-reader
    owner: team-ledger
    match: {issuer: test, subject: system:serviceaccount:ledger:reader}
    grants: [ledger-db]
grants:
  - {name: ledger-db, kind: vault_dynamic, ttl: 10m, vault_dynamic: {path: database/creds/ledger-ro}}
`

// TestTraceByJTILeaseAndFingerprint: two credentials of each kind (JWT,
// database credentials, Vault token), so that a value matching the wrong
// issuance of its kind shows. The jti read from the issued JWT, the lease
// id of the database credentials and the sha256: fingerprint of each
// credential trace to exactly their issuance, matched as that kind, through
// the admin API and offline over a copy of the audit log.
func TestTraceByJTILeaseAndFingerprint(t *testing.T) {
	pg := harness.StartPostgres(t)
	env := startStack(t, stackOptions{extraPolicy: traceRefsPolicy})
	admin := env.issuer.token(t, "alice", map[string]any{"groups": "secops"})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := env.vault.Client
	setupDatabaseEngine(ctx, t, root, pg, "ledger-ro")

	payments := func(session string) string {
		return env.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments", "session": session})
	}
	ledger := func(session string) string {
		return env.issuer.token(t, "system:serviceaccount:ledger:reader", map[string]any{"session": session})
	}
	type query struct {
		what, q, kind string
		want          tokenResponse
	}
	var queries []query
	for i := range 2 {
		jw := env.issue(t, payments(fmt.Sprintf("jwt-%d", i)), "orders-jwt", nil)
		claims := jwt.MapClaims{}
		if _, _, err := jwt.NewParser().ParseUnverified(jw.AccessToken, claims); err != nil {
			t.Fatalf("the issued JWT does not parse: %v", err)
		}
		// The jti of a JWT keytrail signs is its issuance id (as the jti
		// of introspection's answer, SPEC "HTTP API"): a trace by it is
		// matched as the issuance id.
		jti, _ := claims["jti"].(string)
		if jti != jw.IssuanceID {
			t.Fatalf("the issued JWT's jti is %q, want its issuance id %s", jti, jw.IssuanceID)
		}
		db := env.issue(t, ledger(fmt.Sprintf("db-%d", i)), "ledger-db", nil)
		lease, _ := db.Credential["lease_id"].(string)
		if !strings.HasPrefix(lease, "database/creds/ledger-ro/") {
			t.Fatalf("database credential's lease_id = %q", lease)
		}
		vt := env.issue(t, payments(fmt.Sprintf("vault-%d", i)), "payments-vault", nil)
		queries = append(queries,
			query{"jti of JWT " + jw.IssuanceID, jti, trace.KindIssuanceID, jw},
			query{"lease of " + db.IssuanceID, lease, trace.KindLeaseID, db},
		)
		for _, r := range []tokenResponse{jw, db, vt} {
			sum := sha256.Sum256([]byte(r.AccessToken))
			queries = append(queries, query{"fingerprint of " + r.Kind + " " + r.IssuanceID, "sha256:" + hex.EncodeToString(sum[:]), trace.KindFingerprint, r})
		}
	}
	copyPath := filepath.Join(t.TempDir(), "audit-copy.jsonl")
	data, err := os.ReadFile(env.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(copyPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	bin := harness.KeytrailBinary(t)

	// check says what of got differs from the issuance q must name.
	check := func(t *testing.T, how string, q query, got trace.Result) {
		t.Helper()
		is := got.Issuance
		switch {
		case is == nil || is.ID != q.want.IssuanceID:
			t.Errorf("%s: trace of the %s names %+v, want issuance %s", how, q.what, is, q.want.IssuanceID)
		case got.Query.Kind != q.kind || len(got.AlsoMatched) != 0:
			t.Errorf("%s: trace of the %s matched as %q, also %v; want %q alone", how, q.what, got.Query.Kind, got.AlsoMatched, q.kind)
		case is.Workload != q.want.Workload || is.SessionID != q.want.SessionID || is.Grant != q.want.Grant:
			t.Errorf("%s: trace of the %s: workload %s, session %s, grant %s; want %s, %s, %s",
				how, q.what, is.Workload, is.SessionID, is.Grant, q.want.Workload, q.want.SessionID, q.want.Grant)
		}
		if is == nil {
			return
		}
		var ref string
		switch q.kind {
		case trace.KindIssuanceID:
			ref = is.Refs.JTI
		case trace.KindLeaseID:
			ref = is.Refs.LeaseID
		case trace.KindFingerprint:
			ref = is.Refs.Fingerprint
		}
		if ref != q.q {
			t.Errorf("%s: trace of the %s: the issuance's record of it is %q, want the value traced", how, q.what, ref)
		}
	}

	t.Run("ok/online", func(t *testing.T) {
		for _, q := range queries {
			status, raw := traceGet(t, env.brokerURL+"/v1/admin/trace?q="+url.QueryEscape(q.q), admin)
			if status != 200 {
				t.Errorf("GET /v1/admin/trace for the %s = %d %s", q.what, status, raw)
				continue
			}
			var got trace.Result
			mustJSON(t, raw, &got)
			if got.From != trace.FromBoth {
				t.Errorf("online trace of the %s from %q, want the instance's audit log and the store", q.what, got.From)
			}
			check(t, "online", q, got)
		}
	})

	t.Run("ok/offline", func(t *testing.T) {
		for _, q := range queries {
			var got trace.Result
			mustJSON(t, runKeytrail(t, bin, nil, "trace", q.q, "--audit-log", copyPath, "--json"), &got)
			check(t, "offline", q, got)
		}
	})
}

// TestTraceThroughHMACedVaultAuditLog: Vault's file audit device HMACs
// tokens and accessors by default (the stack's own device logs accessors
// in clear; a second one here keeps Vault's default). keytrail's
// --vault-audit-log still attributes the requests made with a token it
// minted, through the token metadata's issuance_id, which Vault logs in
// clear: the whole-log attribution, the Vault requests listed with a trace
// of the credential, and a trace of the HMAC'd accessor an auditor copies
// from that log (or gets from sys/audit-hash) all name the issuance.
func TestTraceThroughHMACedVaultAuditLog(t *testing.T) {
	env := startStack(t, stackOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := env.vault.Client
	hmacLog := filepath.Join(t.TempDir(), "vault-audit-hmac.log")
	mustVault(t, root.Sys().EnableAuditWithOptionsWithContext(ctx, "hmac", &vaultapi.EnableAuditOptions{
		Type: "file", Options: map[string]string{"file_path": hmacLog}, // hmac_accessor: Vault's default, true
	}))

	wl := env.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments", "session": "pod-hmac"})
	res := env.issue(t, wl, "payments-vault", nil)
	_, self := env.vaultAs(t, res.AccessToken, "the minted token")
	accessor, _ := self.Data["accessor"].(string)
	// A token keytrail did not mint, used once: a gap, in the HMAC'd log too.
	legacy, err := root.Auth().Token().CreateWithContext(ctx, &vaultapi.TokenCreateRequest{DisplayName: "legacy-batch", Policies: []string{"default"}})
	if err != nil {
		t.Fatal(err)
	}
	env.vaultAs(t, legacy.Auth.ClientToken, "the legacy token")
	waitFor(t, 10*time.Second, "the HMAC'd Vault audit log's entry with the issuance id", func() bool {
		return vaultAuditHasIssuance(t, hmacLog, res.IssuanceID)
	})
	hmacAccessor, err := root.Sys().AuditHashWithContext(ctx, "hmac", accessor)
	if err != nil {
		t.Fatalf("sys/audit-hash: %v", err)
	}
	logged, err := os.ReadFile(hmacLog)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(logged), accessor) || !strings.Contains(string(logged), hmacAccessor) {
		t.Fatalf("the second audit device logs the accessor in clear, or not its HMAC %s: not the case this test is about", hmacAccessor)
	}
	copyPath := filepath.Join(t.TempDir(), "audit-copy.jsonl")
	data, err := os.ReadFile(env.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(copyPath, data, 0o600); err != nil {
		t.Fatal(err)
	}
	bin := harness.KeytrailBinary(t)

	t.Run("ok/whole-log-attributed-by-metadata", func(t *testing.T) {
		var rep trace.VaultReport
		mustJSON(t, runKeytrail(t, bin, nil, "trace", "--vault-audit-log", hmacLog, "--audit-log", copyPath, "--json"), &rep)
		var got []string
		for _, a := range rep.Attributions {
			got = append(got, fmt.Sprintf("%s %s %s by %s: %d %s", a.IssuanceID, a.Workload, a.SessionID, a.By, a.Requests, strings.Join(a.Paths, ";")))
		}
		want := []string{fmt.Sprintf("%s payments-api %s by metadata: 1 read auth/token/lookup-self", res.IssuanceID, res.SessionID)}
		if !slices.Equal(got, want) {
			t.Errorf("attributions of the HMAC'd log = %q, want %q", got, want)
		}
		var gaps []string
		for _, g := range rep.Gaps {
			gaps = append(gaps, fmt.Sprintf("%s %q %s %d", g.DisplayName, g.Accessor, g.Reason, g.Requests))
		}
		if wantGaps := []string{`token-legacy-batch "" not_keytrail 1`}; !slices.Equal(gaps, wantGaps) {
			t.Errorf("gaps of the HMAC'd log = %q, want %q (no accessor: it is HMAC'd)", gaps, wantGaps)
		}
	})

	t.Run("ok/credential-trace-lists-its-vault-requests", func(t *testing.T) {
		var got trace.Result
		mustJSON(t, runKeytrail(t, bin, nil, "trace", res.AccessToken, "--audit-log", copyPath, "--vault-audit-log", hmacLog, "--json"), &got)
		if got.Issuance == nil || got.Issuance.ID != res.IssuanceID || got.VaultTotal == nil || *got.VaultTotal != 1 || len(got.Vault) != 1 ||
			got.Vault[0].Path != "auth/token/lookup-self" || got.Vault[0].IssuanceID != res.IssuanceID || got.Vault[0].Accessor != "" {
			t.Errorf("trace of the credential with the HMAC'd log = issuance %+v, vault %+v (total %s); want %s and its one lookup-self, accessor not shown",
				got.Issuance, got.Vault, fmtTotal(got.VaultTotal), res.IssuanceID)
		}
	})

	t.Run("ok/hmaced-accessor-traced", func(t *testing.T) {
		var got trace.Result
		mustJSON(t, runKeytrail(t, bin, nil, "trace", hmacAccessor, "--audit-log", copyPath, "--vault-audit-log", hmacLog, "--json"), &got)
		if got.Issuance == nil || got.Issuance.ID != res.IssuanceID || len(got.AlsoMatched) != 0 || got.Query.Kind != trace.KindVaultAuditLog {
			t.Errorf("trace of the HMAC'd accessor = issuance %+v matched as %q, also %v; want %s alone, through the Vault audit log",
				got.Issuance, got.Query.Kind, got.AlsoMatched, res.IssuanceID)
		}
	})
}

// fmtTotal prints a trace's vault_total: absent when no Vault audit log was searched.
func fmtTotal(n *int) string {
	if n == nil {
		return "absent"
	}
	return strconv.Itoa(*n)
}
