package e2e

// Dynamic database credentials and short-lived certificates (issue #6),
// against a real Vault dev server, its real database secrets engine and a
// real PostgreSQL started by the test with log_connections=on.

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

const dynamicPolicy = `version: 1
workloads:
  - name: payments-ledger
    owner: team-payments
    match: {issuer: test, subject: system:serviceaccount:payments:ledger}
    grants: [payments-db, payments-cert]
grants:
  - name: payments-db
    kind: vault_dynamic
    ttl: 10m
    vault_dynamic: {path: database/creds/payments-rw}
  - name: payments-cert
    kind: pki
    ttl: 10m
    pki: {path: pki/issue/workloads}
`

// connAuthorized matches PostgreSQL's log_connections line.
var connAuthorized = regexp.MustCompile(`connection authorized: user=(\S+)`)

func TestDynamicCredentialsAgainstRealVaultAndPostgres(t *testing.T) {
	pg := harness.StartPostgres(t)
	env := startStack(t, stackOptions{extraPolicy: dynamicPolicy})
	root := env.vault.Client
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	admin := env.issuer.token(t, "alice", map[string]any{"groups": "secops"})
	workloadToken := func(t *testing.T, session string) string {
		return env.issuer.token(t, "system:serviceaccount:payments:ledger", map[string]any{"session": session})
	}

	t.Run("ok/postgres-user-traced-and-revoked", func(t *testing.T) {
		// The database the workload reads, and Vault's database engine
		// configured as docs/DYNAMIC.md says.
		if _, err := pg.Query(pg.Superuser, pg.SuperPassword, "CREATE TABLE ledger (id int, amount int); INSERT INTO ledger VALUES (1, 40), (2, 2)"); err != nil {
			t.Fatal(err)
		}
		setupDatabaseEngine(ctx, t, root, pg, "payments-rw", `GRANT SELECT ON ledger TO "{{name}}";`)

		// Exchange.
		start := time.Now()
		res := env.issue(t, workloadToken(t, "pod-db-1"), "payments-db", nil)
		username, _ := res.Credential["username"].(string)
		password, _ := res.Credential["password"].(string)
		leaseID, _ := res.Credential["lease_id"].(string)
		leaseSecs, _ := res.Credential["lease_duration"].(float64)
		if res.Kind != broker.KindVaultDynamic || res.Workload != "payments-ledger" || password == "" || res.AccessToken != password ||
			!strings.HasPrefix(leaseID, "database/creds/payments-rw/") || leaseSecs <= 0 || leaseSecs > 600 ||
			res.ExpiresIn <= 0 || res.ExpiresIn > 600 {
			t.Fatalf("response = %+v, want a vault_dynamic credential with password, lease and at most 600s", res)
		}
		if got, ok := vault.IssuanceIDFromUsername(username); !ok || got != res.IssuanceID {
			t.Fatalf("username %q names issuance %q (%v), want %q", username, got, ok, res.IssuanceID)
		}
		t.Logf("issuance %s: username %s (%d chars), lease %s, lease_duration %.0fs, exchange took %v",
			res.IssuanceID, username, len(username), leaseID, leaseSecs, time.Since(start).Round(time.Millisecond))

		// Connect with the credentials and run a query.
		out, err := pg.Query(username, password, "SELECT current_user || ':' || sum(amount) FROM ledger")
		if err != nil {
			t.Fatalf("query with the issued credentials: %v", err)
		}
		if want := username + ":42"; out != want {
			t.Fatalf("query = %q, want %q", out, want)
		}

		// PostgreSQL's own log names the user; the user name alone leads to
		// the issuance, its workload and owner.
		var logged, line string
		waitFor(t, 10*time.Second, "connection authorized line for the issued user", func() bool {
			for _, l := range strings.Split(pg.Log(), "\n") {
				if m := connAuthorized.FindStringSubmatch(l); m != nil && m[1] == username {
					logged, line = m[1], l
					return true
				}
			}
			return false
		})
		t.Logf("postgres log: %s", line)
		tracedID, ok := vault.IssuanceIDFromUsername(logged)
		if !ok || tracedID != res.IssuanceID {
			t.Fatalf("log user %q traces to %q, want %s", logged, tracedID, res.IssuanceID)
		}
		issue := findEvent(t, env.auditPath, audit.TypeIssue, tracedID)
		if issue == nil || issue.Credential == nil || issue.Credential.Username != logged || issue.Credential.LeaseID != leaseID ||
			issue.Workload != "payments-ledger" || issue.Owner != "team-payments" || issue.Credential.Accessor == "" {
			t.Fatalf("issue event for %s = %+v, want username %s, lease %s, workload, owner and the reader token's accessor", tracedID, issue, logged, leaseID)
		}
		if raw, _ := json.Marshal(issue); strings.Contains(string(raw), password) {
			t.Fatalf("the audit event carries the password")
		}
		listed := adminIssuance(t, env, admin, "payments-ledger", tracedID)
		if listed.Refs.Username != logged || listed.Refs.LeaseID != leaseID {
			t.Errorf("admin issuances: %s has refs %+v, want username %s and lease %s", tracedID, listed.Refs, logged, leaseID)
		}

		// In Vault: the reader token is tagged with the issuance and ends
		// with the grant; the lease is there.
		acc, err := root.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": issue.Credential.Accessor})
		if err != nil {
			t.Fatal(err)
		}
		meta, _ := acc.Data["meta"].(map[string]any)
		ttl, _ := acc.Data["ttl"].(json.Number).Int64()
		if meta["issuance_id"] != res.IssuanceID || acc.Data["display_name"] != "token-"+strings.ReplaceAll(res.IssuanceID, "_", "-")+"-payments-ledger" || ttl <= 0 || ttl > 600 {
			t.Errorf("reader token: display_name %v, meta %v, ttl %d; want the issuance, ttl <= 600", acc.Data["display_name"], meta, ttl)
		}
		if _, err := root.Logical().WriteWithContext(ctx, "sys/leases/lookup", map[string]any{"lease_id": leaseID}); err != nil {
			t.Fatalf("lease lookup before revocation: %v", err)
		}

		// Revoke through the admin API.
		st, rc := adminRevoke(t, env, admin, res.IssuanceID)
		if st != 200 || !slices.Contains(rc.Revoked, res.IssuanceID) || len(rc.Failed) != 0 {
			t.Fatalf("revoke = %d %+v, want 200 with %s revoked and nothing failed\nbroker log:\n%s", st, rc, res.IssuanceID, env.broker.Logs())
		}
		// The user is gone from PostgreSQL and a new connection is refused.
		n, err := pg.Query(pg.Superuser, pg.SuperPassword, fmt.Sprintf("SELECT count(*) FROM pg_roles WHERE rolname = '%s'", username))
		if err != nil || n != "0" {
			t.Errorf("pg_roles rows for %s after revocation = %q, %v; want 0", username, n, err)
		}
		_, err = pg.Query(username, password, "SELECT 1")
		if err == nil || !strings.Contains(err.Error(), "password authentication failed") {
			t.Errorf("new connection after revocation: err = %v, want password authentication failed", err)
		}
		if _, err := root.Logical().WriteWithContext(ctx, "sys/leases/lookup", map[string]any{"lease_id": leaseID}); err == nil {
			t.Errorf("lease %s still known to Vault after revocation", leaseID)
		}
		if _, err := root.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": issue.Credential.Accessor}); err == nil {
			t.Errorf("reader token still valid after revocation")
		}
		if findEvent(t, env.auditPath, audit.TypeRevoke, "") == nil {
			t.Errorf("no revoke event in the audit log")
		}
	})

	t.Run("ok/pki-spiffe-certificate", func(t *testing.T) {
		mustVault(t, root.Sys().MountWithContext(ctx, "pki", &vaultapi.MountInput{Type: "pki", Config: vaultapi.MountConfigInput{MaxLeaseTTL: "87600h"}}))
		ca := vaultWrite(t, root, "pki/root/generate/internal", map[string]any{
			"common_name": "keytrail e2e root", "ttl": "87600h", "key_type": "ec", "key_bits": 256,
		})
		caPEM, _ := ca.Data["certificate"].(string)
		vaultWrite(t, root, "pki/roles/workloads", map[string]any{
			"allow_any_name":    true,
			"enforce_hostnames": false,
			"allowed_uri_sans":  "spiffe://keytrail/*",
			"max_ttl":           "1h",
			"key_type":          "ec",
			"key_bits":          256,
			"server_flag":       false,
			"client_flag":       true,
		})

		before := time.Now().Truncate(time.Second)
		res := env.issue(t, workloadToken(t, "pod-cert-1"), "payments-cert", nil)
		certPEM, _ := res.Credential["certificate"].(string)
		keyPEM, _ := res.Credential["private_key"].(string)
		issuing, _ := res.Credential["issuing_ca"].(string)
		serial, _ := res.Credential["serial_number"].(string)
		if res.Kind != broker.KindPKI || certPEM == "" || keyPEM == "" || serial == "" || res.AccessToken != certPEM || issuing != caPEM {
			t.Fatalf("response = %+v, want a pki credential whose access_token is the certificate, issued by the root", res)
		}
		leaf := parsePEMCert(t, certPEM)
		roots := x509.NewCertPool()
		roots.AddCert(parsePEMCert(t, caPEM))
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
			t.Errorf("certificate does not verify against Vault's CA: %v", err)
		}
		var uris []string
		for _, u := range leaf.URIs {
			uris = append(uris, u.String())
		}
		if want := []string{"spiffe://keytrail/payments-ledger"}; !slices.Equal(uris, want) {
			t.Errorf("URI SANs = %v, want %v", uris, want)
		}
		if _, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM)); err != nil {
			t.Errorf("private key does not match the certificate: %v", err)
		}
		if leaf.NotAfter.After(before.Add(10*time.Minute+5*time.Second)) || leaf.NotAfter.Before(before.Add(9*time.Minute)) {
			t.Errorf("NotAfter = %v, want about %v (the grant's 10m) and not later", leaf.NotAfter, before.Add(10*time.Minute))
		}
		if got := colonHex(leaf.SerialNumber.Bytes()); got != serial {
			t.Errorf("certificate serial %s, response serial_number %s", got, serial)
		}
		t.Logf("issuance %s: serial %s, NotAfter %s, URI SAN %v", res.IssuanceID, serial, leaf.NotAfter.UTC().Format(time.RFC3339), uris)

		// The serial, as any TLS log would show it, traces to the issuance.
		issue := findEvent(t, env.auditPath, audit.TypeIssue, res.IssuanceID)
		if issue == nil || issue.Credential == nil || issue.Credential.Serial != colonHex(leaf.SerialNumber.Bytes()) ||
			issue.Credential.Fingerprint != broker.Fingerprint(certPEM) {
			t.Fatalf("issue event = %+v, want serial %s and the certificate's fingerprint", issue, serial)
		}
		if raw, _ := json.Marshal(issue); strings.Contains(string(raw), "PRIVATE KEY") {
			t.Fatalf("the audit event carries the private key")
		}
		if listed := adminIssuance(t, env, admin, "payments-ledger", res.IssuanceID); listed.Refs.Serial != serial {
			t.Errorf("admin issuances: serial %q, want %q", listed.Refs.Serial, serial)
		}

		// Revocation revokes the serial in Vault.
		st, rc := adminRevoke(t, env, admin, res.IssuanceID)
		if st != 200 || !slices.Contains(rc.Revoked, res.IssuanceID) || len(rc.Failed) != 0 {
			t.Fatalf("revoke = %d %+v, want 200 with %s revoked\nbroker log:\n%s", st, rc, res.IssuanceID, env.broker.Logs())
		}
		cert, err := root.Logical().ReadWithContext(ctx, "pki/cert/"+serial)
		if err != nil || cert == nil {
			t.Fatalf("read pki/cert/%s: %v", serial, err)
		}
		if rt, _ := cert.Data["revocation_time"].(json.Number).Int64(); rt <= 0 {
			t.Errorf("revocation_time of %s = %v, want > 0", serial, cert.Data["revocation_time"])
		}
	})

	// Needs the PKI set up by the subtest above. A certificate's grant
	// removed from the policy (or renamed, or moved to another mount) does
	// not keep the certificate from being revoked: its issuance records the
	// mount that issued it.
	t.Run("ok/pki-revoked-after-its-grant-is-removed", func(t *testing.T) {
		res := env.issue(t, workloadToken(t, "pod-cert-2"), "payments-cert", nil)
		serial, _ := res.Credential["serial_number"].(string)

		extra := filepath.Join(env.policyDir, "extra.yaml")
		without := strings.Replace(strings.Replace(dynamicPolicy, "grants: [payments-db, payments-cert]", "grants: [payments-db]", 1),
			"  - name: payments-cert\n    kind: pki\n    ttl: 10m\n    pki: {path: pki/issue/workloads}\n", "", 1)
		if without == dynamicPolicy || strings.Contains(without, "payments-cert") {
			t.Fatalf("the policy without the pki grant still names it:\n%s", without)
		}
		reloadPolicy(t, env, extra, without)
		defer reloadPolicy(t, env, extra, dynamicPolicy) // for the subtests that follow
		if st, b, _ := env.exchange(t, workloadToken(t, "pod-cert-3"), "payments-cert", nil); st != 400 {
			t.Fatalf("exchange for the removed grant = %d %s, want 400 invalid_target", st, b)
		}

		st, rc := adminRevoke(t, env, admin, res.IssuanceID)
		if st != 200 || !slices.Contains(rc.Revoked, res.IssuanceID) || len(rc.Failed) != 0 {
			t.Fatalf("revoke after the grant was removed = %d %+v, want 200 with %s revoked and nothing failed\nbroker log:\n%s", st, rc, res.IssuanceID, env.broker.Logs())
		}
		cert, err := root.Logical().ReadWithContext(ctx, "pki/cert/"+serial)
		if err != nil || cert == nil {
			t.Fatalf("read pki/cert/%s: %v", serial, err)
		}
		if rt, _ := cert.Data["revocation_time"].(json.Number).Int64(); rt <= 0 {
			t.Errorf("revocation_time of %s = %v, want > 0: the certificate is still valid in Vault", serial, cert.Data["revocation_time"])
		}
	})

	// Needs the database and PKI set up by the subtests above.
	t.Run("ok/least-privilege-broker-token", func(t *testing.T) { testLeastPrivilege(t, env, pg) })
}

// reloadPolicy writes content to the policy file path, signals the broker
// and waits for a new policy_load event that loaded exactly that content.
func reloadPolicy(t *testing.T, env *stack, path, content string) {
	t.Helper()
	seen := len(readAudit(t, env.auditPath))
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := env.broker.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(content))
	want := hex.EncodeToString(sum[:])
	waitFor(t, 15*time.Second, "the policy_load event of "+filepath.Base(path), func() bool {
		for _, ev := range readAudit(t, env.auditPath)[seen:] {
			if ev.Type != audit.TypePolicyLoad || ev.Outcome == nil || ev.Outcome.Status != 200 {
				continue
			}
			if files, _ := ev.Details["files"].(map[string]any); files != nil {
				for f, h := range files {
					if filepath.Base(f) == filepath.Base(path) && h == want {
						return true
					}
				}
			}
		}
		return false
	})
}

// testLeastPrivilege mints and revokes through the adapter directly with a
// broker token that holds only the documented policies (not root): the
// subset rule of create-orphan, no_default_policy and the revoke paths.
func testLeastPrivilege(t *testing.T, env *stack, pg *harness.Postgres) {
	ctx := context.Background()
	root := env.vault.Client
	pkiPol, err := vault.PKIBrokerPolicy("pki/issue/workloads")
	if err != nil {
		t.Fatal(err)
	}
	mustVault(t, root.Sys().PutPolicyWithContext(ctx, "keytrail-broker", vault.BrokerPolicy("")+vault.DynamicBrokerPolicy()+pkiPol))
	bt, err := root.Auth().Token().CreateWithContext(ctx, &vaultapi.TokenCreateRequest{
		Policies: []string{"keytrail-broker", vault.DefaultReaderPolicy}, NoDefaultPolicy: true, TTL: "1h",
	})
	if err != nil {
		t.Fatal(err)
	}
	bc, err := vault.NewClient(vault.ClientOptions{Address: env.vault.Addr, Token: bt.Auth.ClientToken})
	if err != nil {
		t.Fatal(err)
	}
	dm, err := vault.NewDynamicMinter(vault.DynamicMinterOptions{Client: bc})
	if err != nil {
		t.Fatal(err)
	}
	grant := policies.Grant{Name: "payments-db", Kind: broker.KindVaultDynamic, TTL: policies.Duration(time.Minute),
		VaultDynamic: &policies.VaultDynamicGrant{Path: "database/creds/payments-rw"}}
	req := broker.MintRequest{IssuanceID: broker.NewID(broker.PrefixIssuance), Workload: "payments-ledger", Owner: "team-payments",
		SessionID: "ses_lp", Grant: grant, TTL: time.Minute, Now: time.Now()}
	cred, err := dm.Mint(ctx, req)
	if err != nil {
		t.Fatalf("DynamicMinter.Mint with a least-privilege broker token: %v", err)
	}
	if out, err := pg.Query(cred.Refs.Username, cred.AccessToken, "SELECT current_user"); err != nil || out != cred.Refs.Username {
		t.Fatalf("query as %s = %q, %v", cred.Refs.Username, out, err)
	}
	is := &broker.Issuance{ID: req.IssuanceID, Grant: grant.Name, Kind: grant.Kind, ExpiresAt: cred.Refs.ExpiresAt, Refs: cred.Refs}
	if err := dm.Revoke(ctx, is); err != nil {
		t.Fatalf("DynamicMinter.Revoke: %v", err)
	}
	if err := dm.Revoke(ctx, is); err != nil {
		t.Errorf("DynamicMinter.Revoke again = %v, want nil (idempotent)", err)
	}
	if _, err := pg.Query(cred.Refs.Username, cred.AccessToken, "SELECT 1"); err == nil {
		t.Errorf("connection as %s after Revoke succeeded, want refused", cred.Refs.Username)
	}

	// Through a token role (vault.token_role): the broker token holds no
	// reader policy; the role's allowed_policies bound it instead.
	const role = "keytrail-lp"
	if _, err := root.Logical().WriteWithContext(ctx, "auth/token/roles/"+role, map[string]any{
		"allowed_policies": []string{vault.DefaultReaderPolicy}, "orphan": true, "renewable": false,
	}); err != nil {
		t.Fatal(err)
	}
	pol, err := policies.Load(env.policyDir) // its vault_dynamic grants and more
	if err != nil {
		t.Fatal(err)
	}
	hcl, err := vault.MinimumBrokerPolicy(pol, vault.BrokerPolicyOptions{TokenRole: role})
	if err != nil {
		t.Fatal(err)
	}
	if held := vault.HeldPolicies(pol, vault.BrokerPolicyOptions{TokenRole: role}); len(held) != 0 {
		t.Errorf("HeldPolicies with a token role = %v, want none", held)
	}
	mustVault(t, root.Sys().PutPolicyWithContext(ctx, "keytrail-broker-role", hcl))
	rt, err := root.Auth().Token().CreateWithContext(ctx, &vaultapi.TokenCreateRequest{
		Policies: []string{"keytrail-broker-role"}, NoDefaultPolicy: true, TTL: "1h",
	})
	if err != nil {
		t.Fatal(err)
	}
	rc, err := vault.NewClient(vault.ClientOptions{Address: env.vault.Addr, Token: rt.Auth.ClientToken})
	if err != nil {
		t.Fatal(err)
	}
	rdm, err := vault.NewDynamicMinter(vault.DynamicMinterOptions{Client: rc, Role: role})
	if err != nil {
		t.Fatal(err)
	}
	rreq := req
	rreq.IssuanceID = broker.NewID(broker.PrefixIssuance)
	rcred, err := rdm.Mint(ctx, rreq)
	if err != nil {
		t.Fatalf("DynamicMinter.Mint through token role %s: %v", role, err)
	}
	if out, err := pg.Query(rcred.Refs.Username, rcred.AccessToken, "SELECT current_user"); err != nil || out != rcred.Refs.Username {
		t.Fatalf("query as %s = %q, %v", rcred.Refs.Username, out, err)
	}
	ris := &broker.Issuance{ID: rreq.IssuanceID, Grant: grant.Name, Kind: grant.Kind, ExpiresAt: rcred.Refs.ExpiresAt, Refs: rcred.Refs}
	if err := rdm.Revoke(ctx, ris); err != nil {
		t.Fatalf("DynamicMinter.Revoke (token role): %v", err)
	}

	// The same through a keytrail server configured with vault.token_role
	// and that token: the configuration reaches the dynamic minter.
	cfg, err := os.ReadFile(filepath.Join(env.dir, "config.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	port := harness.FreePort(t)
	rURL := fmt.Sprintf("http://127.0.0.1:%d", port)
	rcfg := regexp.MustCompile(`(?m)^listen: .*$`).ReplaceAllString(string(cfg), fmt.Sprintf("listen: 127.0.0.1:%d", port))
	rcfg = regexp.MustCompile(`(?m)^public_url: .*$`).ReplaceAllString(rcfg, "public_url: "+rURL)
	rcfg = regexp.MustCompile(`(?m)^  file: .*$`).ReplaceAllString(rcfg, "  file: "+filepath.Join(env.dir, "audit-role.jsonl"))
	rcfg = strings.Replace(rcfg, "vault:\n", "vault:\n  token_role: "+role+"\n", 1)
	rcfgPath := filepath.Join(env.dir, "config-role.yaml")
	if err := os.WriteFile(rcfgPath, []byte(rcfg), 0o600); err != nil {
		t.Fatal(err)
	}
	rb := harness.StartKeytrail(t, rURL, rcfgPath, "VAULT_TOKEN="+rt.Auth.ClientToken, "KEYTRAIL_RECONCILE=off")
	renv := *env
	renv.brokerURL, renv.broker = rURL, rb
	res := renv.issue(t, env.issuer.token(t, "system:serviceaccount:payments:ledger", map[string]any{"session": "pod-role"}), "payments-db", nil)
	username, _ := res.Credential["username"].(string)
	if out, err := pg.Query(username, res.AccessToken, "SELECT current_user"); err != nil || out != username {
		t.Fatalf("query as %s = %q, %v", username, out, err)
	}

	pm, err := vault.NewPKIMinter(vault.PKIMinterOptions{Client: bc, Grant: func(string) (*policies.Grant, bool) {
		return &policies.Grant{Name: "payments-cert", Kind: broker.KindPKI, PKI: &policies.PKIGrant{Path: "pki/issue/workloads"}}, true
	}})
	if err != nil {
		t.Fatal(err)
	}
	preq := req
	preq.IssuanceID = broker.NewID(broker.PrefixIssuance)
	preq.Grant = policies.Grant{Name: "payments-cert", Kind: broker.KindPKI, TTL: policies.Duration(time.Minute),
		PKI: &policies.PKIGrant{Path: "pki/issue/workloads"}}
	pc, err := pm.Mint(ctx, preq)
	if err != nil {
		t.Fatalf("PKIMinter.Mint with a least-privilege broker token: %v", err)
	}
	pis := &broker.Issuance{ID: preq.IssuanceID, Grant: "payments-cert", Kind: broker.KindPKI, ExpiresAt: pc.Refs.ExpiresAt, Refs: pc.Refs}
	for i := range 2 {
		if err := pm.Revoke(ctx, pis); err != nil {
			t.Fatalf("PKIMinter.Revoke #%d: %v", i+1, err)
		}
	}
	cert, err := root.Logical().ReadWithContext(ctx, "pki/cert/"+pc.Refs.Serial)
	if err != nil || cert == nil {
		t.Fatalf("read pki/cert/%s: %v", pc.Refs.Serial, err)
	}
	if rt, _ := cert.Data["revocation_time"].(json.Number).Int64(); rt <= 0 {
		t.Errorf("revocation_time = %v, want > 0", cert.Data["revocation_time"])
	}
}

// setupDatabaseEngine mounts Vault's database engine at database/ with the
// connection "pg" to pg, configured as docs/DYNAMIC.md says (keytrail's
// username_template is a connection setting, not a role's), and one role
// that creates a login role valid until the lease expires, then runs
// grants; default_ttl 1h is longer than a grant's: the reader token caps
// it. The reader policy may read database/creds/*.
func setupDatabaseEngine(ctx context.Context, t *testing.T, root *vaultapi.Client, pg *harness.Postgres, role string, grants ...string) {
	t.Helper()
	mustVault(t, root.Sys().MountWithContext(ctx, "database", &vaultapi.MountInput{Type: "database"}))
	vaultWrite(t, root, "database/config/pg", map[string]any{
		"plugin_name":       "postgresql-database-plugin",
		"connection_url":    pg.ConnectionURL(),
		"allowed_roles":     role,
		"username":          pg.Superuser,
		"password":          pg.SuperPassword,
		"verify_connection": true,
		"username_template": vault.UsernameTemplate,
	})
	vaultWrite(t, root, "database/roles/"+role, map[string]any{
		"db_name":             "pg",
		"creation_statements": append([]string{`CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`}, grants...),
		"default_ttl":         "1h",
		"max_ttl":             "24h",
	})
	mustVault(t, root.Sys().PutPolicyWithContext(ctx, vault.DefaultReaderPolicy, vault.ReaderPolicy("database/creds/*")))
}

func mustVault(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("vault setup: %v", err)
	}
}

func vaultWrite(t *testing.T, c *vaultapi.Client, path string, data map[string]any) *vaultapi.Secret {
	t.Helper()
	s, err := c.Logical().WriteWithContext(context.Background(), path, data)
	if err != nil {
		t.Fatalf("vault write %s: %v", path, err)
	}
	return s
}

func parsePEMCert(t *testing.T, s string) *x509.Certificate {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatalf("not PEM: %.60q", s)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// colonHex is Vault's serial form: lowercase hex pairs joined by ":".
func colonHex(b []byte) string {
	parts := make([]string, len(b))
	for i := range b {
		parts[i] = hex.EncodeToString(b[i : i+1])
	}
	return strings.Join(parts, ":")
}

// findEvent returns the first audit event of the type (and issuance, when
// given), or nil.
func findEvent(t *testing.T, path, typ, issuanceID string) *audit.Event {
	t.Helper()
	for _, ev := range readAudit(t, path) {
		if ev.Type == typ && (issuanceID == "" || ev.IssuanceID == issuanceID) {
			return ev
		}
	}
	return nil
}

// adminRequest sends an admin call with the admin's identity token.
func adminRequest(t *testing.T, method, u, admin string, body io.Reader) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+admin)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

type revokeReceipt struct {
	RevocationID string   `json:"revocation_id"`
	Revoked      []string `json:"revoked"`
	Failed       []struct {
		IssuanceID string `json:"issuance_id"`
		Error      string `json:"error"`
	} `json:"failed"`
}

func adminRevoke(t *testing.T, env *stack, admin, issuanceID string) (int, revokeReceipt) {
	t.Helper()
	b, _ := json.Marshal(map[string]any{"issuance_id": issuanceID, "reason": "e2e: dynamic credential revocation"})
	status, raw := adminRequest(t, "POST", env.brokerURL+"/v1/admin/revoke", admin, strings.NewReader(string(b)))
	var rc revokeReceipt
	if err := json.Unmarshal(raw, &rc); err != nil {
		t.Fatalf("revoke answer %d is not JSON: %s", status, raw)
	}
	return status, rc
}

// adminIssuance finds one issuance in GET /v1/admin/issuances.
func adminIssuance(t *testing.T, env *stack, admin, workload, id string) broker.Issuance {
	t.Helper()
	status, raw := adminRequest(t, "GET", env.brokerURL+"/v1/admin/issuances?workload="+workload, admin, nil)
	var list struct {
		Issuances []broker.Issuance `json:"issuances"`
	}
	if status != 200 || json.Unmarshal(raw, &list) != nil {
		t.Fatalf("GET /v1/admin/issuances = %d %s", status, raw)
	}
	for _, is := range list.Issuances {
		if is.ID == id {
			return is
		}
	}
	t.Fatalf("issuance %s not listed: %s", id, raw)
	return broker.Issuance{}
}
