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
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	vaultapi "github.com/hashicorp/vault/api"

	vault "github.com/keytrail/keytrail/adapters/vault"
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
	mustVault(t, root.Sys().MountWithContext(ctx, "database", &vaultapi.MountInput{Type: "database"}))
	vaultWrite(t, root, "database/config/pg", map[string]any{
		"plugin_name": "postgresql-database-plugin", "connection_url": pg.ConnectionURL(), "allowed_roles": "ledger-ro",
		"username": pg.Superuser, "password": pg.SuperPassword, "verify_connection": true, "username_template": vault.UsernameTemplate,
	})
	vaultWrite(t, root, "database/roles/ledger-ro", map[string]any{
		"db_name":             "pg",
		"creation_statements": []string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`},
		"default_ttl":         "1h", "max_ttl": "24h",
	})
	mustVault(t, root.Sys().PutPolicyWithContext(ctx, vault.DefaultReaderPolicy, vault.ReaderPolicy("database/creds/*")))

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
			mustJSON(t, runKeytrail(t, bin, noRaceExitSleep(), "trace", q.q, "--audit-log", copyPath, "--json"), &got)
			check(t, "offline", q, got)
		}
	})
}

// noRaceExitSleep is the environment of a keytrail run that does not wait
// the race detector's default 1 s before exiting (GORACE atexit_sleep_ms),
// other GORACE options kept: under -race every run that exits normally
// otherwise takes a second more.
func noRaceExitSleep() []string {
	return []string{"GORACE=" + strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0")}
}
