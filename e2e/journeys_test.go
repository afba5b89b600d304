package e2e

// Mission journeys no other e2e test walks end to end: identity tokens
// shaped as each platform issues them (a Kubernetes service-account token, a
// GitHub Actions OIDC token, a SPIFFE JWT-SVID, an OIDC provider found by
// discovery), and one session's credentials of every kind revoked at once
// through another instance, each refused by its own backend afterwards.

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/broker/trace"
	"github.com/keytrail/keytrail/e2e/harness"
)

// platform is an identity-token issuer shaped as a platform's, served over
// HTTP by an authntest issuer.
type platform struct {
	*authntest.Issuer
	iss  string // the iss claim its tokens carry
	jwks string // where its JWKS is served
}

// platformIssuer starts one; iss is the platform's iss claim, or "" for the
// loopback URL (an issuer found by discovery, where the two must be equal).
func platformIssuer(t *testing.T, alg, iss string) *platform {
	t.Helper()
	ai, err := authntest.NewIssuer(alg)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(ai.Handler())
	t.Cleanup(srv.Close)
	if iss == "" {
		iss = srv.URL
	}
	ai.URL = iss
	return &platform{Issuer: ai, iss: iss, jwks: srv.URL + authntest.JWKSPath}
}

// sign signs claims as the platform would: iss set, aud keytrail, iat now
// unless given, one hour.
func (p *platform) sign(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	now := time.Now()
	c := jwt.MapClaims{"iss": p.iss, "aud": "keytrail", "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	for k, v := range claims {
		c[k] = v
	}
	tok, err := p.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// k8sClaims are a projected service-account token's claims for a pod.
func k8sClaims(ns, sa, pod, uid, jti string) jwt.MapClaims {
	return jwt.MapClaims{
		"sub": "system:serviceaccount:" + ns + ":" + sa,
		"jti": jti,
		"kubernetes.io": map[string]any{
			"namespace":      ns,
			"pod":            map[string]any{"name": pod, "uid": uid},
			"serviceaccount": map[string]any{"name": sa, "uid": "sa-" + sa},
		},
	}
}

// githubClaims are a GitHub Actions OIDC token's claims for one run attempt.
func githubClaims(repo, runID, attempt, jti string) jwt.MapClaims {
	return jwt.MapClaims{
		"sub": "repo:" + repo + ":ref:refs/heads/main", "jti": jti,
		"repository": repo, "repository_owner": strings.SplitN(repo, "/", 2)[0],
		"ref": "refs/heads/main", "workflow": "release", "event_name": "push",
		"run_id": runID, "run_number": "7", "run_attempt": attempt,
	}
}

// TestIdentityTokensOfEachPlatform: one broker trusts four issuers shaped as
// the platforms the mission names. Each one's token is exchanged; the
// session comes from where SPEC "Concepts" says (the pod uid, run_id +
// run_attempt, the jti, else iss+sub+iat), and the credential is tagged
// with it in Vault and in the JWT.
func TestIdentityTokensOfEachPlatform(t *testing.T) {
	k8s := platformIssuer(t, "RS256", "https://kubernetes.default.svc.cluster.local")
	gha := platformIssuer(t, "RS256", "https://token.actions.githubusercontent.com")
	spiffe := platformIssuer(t, "ES256", "https://spire.example.org")
	oidc := platformIssuer(t, "ES256", "")
	// A SPIRE server without jwt_issuer: its JWT-SVIDs carry no iss and
	// are routed by the trust domain of their sub.
	spire := platformIssuer(t, "ES256", "spiffe://td.example.org")
	extra := fmt.Sprintf(`version: 1
issuers:
  - {name: k8s, issuer: %q, jwks_url: %q, audiences: [keytrail], algorithms: [RS256], max_token_lifetime: 2h, session_claim: kubernetes.io.pod.uid}
  - {name: gha, issuer: %q, jwks_url: %q, audiences: [keytrail], algorithms: [RS256], max_token_lifetime: 2h, session_claim: run_id+run_attempt}
  - {name: spiffe, issuer: %q, jwks_url: %q, audiences: [keytrail], algorithms: [ES256], max_token_lifetime: 2h}
  - {name: oidc, issuer: %q, discovery: true, audiences: [keytrail], algorithms: [ES256], max_token_lifetime: 2h}
  - {name: spire-td, issuer: %q, jwks_url: %q, audiences: [keytrail], algorithms: [ES256], max_token_lifetime: 2h}
workloads:
  - name: ledger
    owner: team-ledger
    match: {issuer: k8s, subject: "system:serviceaccount:ledger:api", claims: {kubernetes.io.namespace: ledger}}
    grants: [j-vault, j-jwt]
  - name: release
    owner: team-platform
    match: {issuer: gha, subject_pattern: "repo:acme/release:ref:refs/heads/main", claims: {repository_owner: acme}}
    grants: [j-vault]
  - name: mesh-gateway
    owner: team-mesh
    match: {issuer: spiffe, subject: "spiffe://example.org/ns/prod/sa/gateway"}
    grants: [j-jwt]
  - name: mesh-td-gateway
    owner: team-mesh
    match: {issuer: spire-td, subject: "spiffe://td.example.org/ns/prod/sa/gateway"}
    grants: [j-jwt]
  - name: support-agent
    owner: team-support
    match: {issuer: oidc, subject: "agent-7"}
    grants: [j-vault]
grants:
  - {name: j-vault, kind: vault_token, ttl: 10m, vault_token: {policies: [payments-read]}}
  - {name: j-jwt, kind: jwt, ttl: 5m, jwt: {audience: orders-api, transit_key: keytrail-signing}}
`, k8s.iss, k8s.jwks, gha.iss, gha.jwks, spiffe.iss, spiffe.jwks, oidc.iss, spire.iss, spire.jwks)
	env := startStack(t, stackOptions{extraPolicy: extra})
	admin := env.issuer.token(t, "alice", map[string]any{"groups": "secops"})

	// vaultTagged checks the Vault token's own meta against the response.
	vaultTagged := func(t *testing.T, res tokenResponse, workload, owner string) {
		t.Helper()
		_, self := env.vaultAs(t, res.AccessToken, res.Grant+" of "+workload)
		meta, _ := self.Data["meta"].(map[string]any)
		if meta["workload"] != workload || meta["owner"] != owner || meta["session_id"] != res.SessionID || meta["issuance_id"] != res.IssuanceID {
			t.Errorf("%s: Vault token meta = %v, want workload %s, owner %s, session %s, issuance %s", workload, meta, workload, owner, res.SessionID, res.IssuanceID)
		}
	}
	// jwtClaims are the claims of a broker-signed JWT (verified elsewhere).
	jwtClaims := func(t *testing.T, tok string) jwt.MapClaims {
		t.Helper()
		c := jwt.MapClaims{}
		if _, _, err := jwt.NewParser().ParseUnverified(tok, c); err != nil {
			t.Fatal(err)
		}
		return c
	}

	t.Run("ok/kubernetes-pod-uid-is-the-session", func(t *testing.T) {
		// Two tokens of one pod (kubelet refreshes them; each has its own
		// jti) share the session across grants; another pod has its own.
		v := env.issue(t, k8s.sign(t, k8sClaims("ledger", "api", "api-7f9c", "uid-pod-a", "jti-1")), "j-vault", nil)
		j := env.issue(t, k8s.sign(t, k8sClaims("ledger", "api", "api-7f9c", "uid-pod-a", "jti-2")), "j-jwt", nil)
		o := env.issue(t, k8s.sign(t, k8sClaims("ledger", "api", "api-x2k1", "uid-pod-b", "jti-3")), "j-vault", nil)
		if v.Workload != "ledger" || v.Owner != "team-ledger" || v.SessionID != j.SessionID || o.SessionID == v.SessionID {
			t.Fatalf("sessions: pod a %s / %s, pod b %s (workload %s owner %s); want pod a's two equal, pod b's different", v.SessionID, j.SessionID, o.SessionID, v.Workload, v.Owner)
		}
		vaultTagged(t, v, "ledger", "team-ledger")
		if c := jwtClaims(t, j.AccessToken); c["sid"] != v.SessionID || c["sub"] != "ledger" || c["owner"] != "team-ledger" {
			t.Errorf("JWT claims = %v, want sid %s", c, v.SessionID)
		}
		// The auditor sees the pod uid the session came from.
		if got := adminIssuance(t, env, admin, "ledger", v.IssuanceID).Claims["kubernetes.io.pod.uid"]; got != "uid-pod-a" {
			t.Errorf("issuance claims kubernetes.io.pod.uid = %v, want uid-pod-a", got)
		}
		// Another namespace's service account of the same name gets nothing.
		if st, b, _ := env.exchange(t, k8s.sign(t, k8sClaims("other", "api", "p", "uid-pod-c", "jti-4")), "j-vault", nil); st != 403 {
			t.Errorf("token of namespace other = %d %s, want 403", st, b)
		}
	})

	t.Run("ok/github-run-attempt-is-the-session", func(t *testing.T) {
		a := env.issue(t, gha.sign(t, githubClaims("acme/release", "9001", "1", "g-1")), "j-vault", nil)
		b := env.issue(t, gha.sign(t, githubClaims("acme/release", "9001", "1", "g-2")), "j-vault", nil)
		rerun := env.issue(t, gha.sign(t, githubClaims("acme/release", "9001", "2", "g-3")), "j-vault", nil)
		if a.Workload != "release" || a.Owner != "team-platform" || a.SessionID != b.SessionID || rerun.SessionID == a.SessionID {
			t.Fatalf("sessions: attempt 1 %s / %s, attempt 2 %s; want attempt 1's equal, the re-run's different", a.SessionID, b.SessionID, rerun.SessionID)
		}
		vaultTagged(t, rerun, "release", "team-platform")
		cl := adminIssuance(t, env, admin, "release", rerun.IssuanceID).Claims
		if cl["run_id"] != "9001" || cl["run_attempt"] != "2" {
			t.Errorf("issuance claims = %v, want run_id 9001 and run_attempt 2", cl)
		}
		// A fork's workflow, and a token of the right shape signed with
		// another issuer's key, get nothing.
		if st, body, _ := env.exchange(t, gha.sign(t, githubClaims("evil/release", "9002", "1", "g-4")), "j-vault", nil); st != 403 {
			t.Errorf("token of repository evil/release = %d %s, want 403", st, body)
		}
		forged, err := k8s.Sign(mergeClaims(githubClaims("acme/release", "9003", "1", "g-5"),
			jwt.MapClaims{"iss": gha.iss, "aud": "keytrail", "iat": time.Now().Unix(), "exp": time.Now().Add(time.Hour).Unix()}))
		if err != nil {
			t.Fatal(err)
		}
		if st, body, _ := env.exchange(t, forged, "j-vault", nil); st != 401 {
			t.Errorf("GitHub-shaped token signed by the Kubernetes key = %d %s, want 401", st, body)
		}
	})

	t.Run("ok/spiffe-jwt-svid-without-jti", func(t *testing.T) {
		// A JWT-SVID has no jti and the issuer names no session claim: the
		// session is one token's (iss+sub+iat and the token itself).
		now := time.Now().Unix()
		svid := spiffe.sign(t, jwt.MapClaims{"sub": "spiffe://example.org/ns/prod/sa/gateway", "iat": now - 60})
		a := env.issue(t, svid, "j-jwt", nil)
		again := env.issue(t, svid, "j-jwt", nil)
		next := env.issue(t, spiffe.sign(t, jwt.MapClaims{"sub": "spiffe://example.org/ns/prod/sa/gateway", "iat": now}), "j-jwt", nil)
		if a.Workload != "mesh-gateway" || a.Owner != "team-mesh" || a.SessionID != again.SessionID || next.SessionID == a.SessionID {
			t.Fatalf("sessions: one SVID %s / %s, the next SVID %s; want the first two equal, the third different", a.SessionID, again.SessionID, next.SessionID)
		}
		// A replica's SVID of the same SPIFFE ID, issued in the same
		// second (the same sub and iat, its own signature): its own session.
		if replica := env.issue(t, spiffe.sign(t, jwt.MapClaims{"sub": "spiffe://example.org/ns/prod/sa/gateway", "iat": now - 60}), "j-jwt", nil); replica.SessionID == a.SessionID {
			t.Errorf("two SVIDs of one SPIFFE ID and iat share session %s, want one each", a.SessionID)
		}
		if c := jwtClaims(t, a.AccessToken); c["sid"] != a.SessionID || c["sub"] != "mesh-gateway" {
			t.Errorf("JWT claims = %v, want sid %s", c, a.SessionID)
		}
		if st, body, _ := env.exchange(t, spiffe.sign(t, jwt.MapClaims{"sub": "spiffe://example.org/ns/prod/sa/other"}), "j-jwt", nil); st != 403 {
			t.Errorf("SVID of another SPIFFE id = %d %s, want 403", st, body)
		}
	})

	t.Run("ok/spiffe-jwt-svid-without-iss", func(t *testing.T) {
		// A JWT-SVID of a SPIRE server without jwt_issuer: no iss, no
		// jti. The issuer is the one of its sub's trust domain, and the
		// session hashes the trust domain id in the place of iss (with
		// sub, iat and the token as signed, an ES256 signature's r only).
		const sub = "spiffe://td.example.org/ns/prod/sa/gateway"
		now := time.Now().Unix()
		svid := func(sub string, iat int64) string {
			tok, err := spire.Sign(jwt.MapClaims{"sub": sub, "aud": []any{"keytrail"}, "iat": iat, "exp": iat + 300})
			if err != nil {
				t.Fatal(err)
			}
			return tok
		}
		tok := svid(sub, now-60)
		a := env.issue(t, tok, "j-jwt", nil)
		again := env.issue(t, tok, "j-jwt", nil)
		next := env.issue(t, svid(sub, now), "j-jwt", nil)
		dot := strings.LastIndexByte(tok, '.')
		sig, err := base64.RawURLEncoding.DecodeString(tok[dot+1:])
		if err != nil || len(sig) != 64 {
			t.Fatalf("not an ES256 signature: %v", err)
		}
		digest := sha256.Sum256([]byte(tok[:dot] + "\x00" + string(sig[:32])))
		want := broker.SessionID("spire-td", "token:spiffe://td.example.org\x00"+sub+"\x00"+strconv.FormatInt(now-60, 10)+"\x00"+string(digest[:]))
		if a.Workload != "mesh-td-gateway" || a.SessionID != want || again.SessionID != want || next.SessionID == want {
			t.Fatalf("workload %s, sessions: one SVID %s / %s, the next SVID %s; want mesh-td-gateway, the first two %s, the third different",
				a.Workload, a.SessionID, again.SessionID, next.SessionID, want)
		}
		// Without iss, a sub of a trust domain no issuer claims, or not a
		// SPIFFE ID, is refused.
		for _, other := range []string{"spiffe://example.org/ns/prod/sa/gateway", "gateway"} {
			if st, body, _ := env.exchange(t, svid(other, now), "j-jwt", nil); st != 401 {
				t.Errorf("SVID without iss, sub %q = %d %s, want 401", other, st, body)
			}
		}
	})

	t.Run("ok/oidc-by-discovery-jti-is-the-session", func(t *testing.T) {
		a := env.issue(t, oidc.sign(t, jwt.MapClaims{"sub": "agent-7", "jti": "conv-1", "iat": time.Now().Unix() - 30}), "j-vault", nil)
		b := env.issue(t, oidc.sign(t, jwt.MapClaims{"sub": "agent-7", "jti": "conv-1"}), "j-vault", nil)
		c := env.issue(t, oidc.sign(t, jwt.MapClaims{"sub": "agent-7", "jti": "conv-2"}), "j-vault", nil)
		if a.Workload != "support-agent" || a.SessionID != b.SessionID || c.SessionID == a.SessionID {
			t.Fatalf("sessions: jti conv-1 %s / %s, conv-2 %s; want conv-1's equal, conv-2's different", a.SessionID, b.SessionID, c.SessionID)
		}
		vaultTagged(t, c, "support-agent", "team-support")
		if oidc.DiscoveryFetches() == 0 {
			t.Errorf("the OIDC issuer's discovery document was never fetched")
		}
	})
}

func mergeClaims(a, b jwt.MapClaims) jwt.MapClaims {
	for k, v := range b {
		a[k] = v
	}
	return a
}

const sessionRevokePolicy = `version: 1
issuers:
  - {name: k8s, issuer: https://kubernetes.default.svc.cluster.local, jwks_url: %[1]q, audiences: [keytrail], algorithms: [RS256], max_token_lifetime: 2h, session_claim: kubernetes.io.pod.uid}
workloads:
  - name: ledger
    owner: team-ledger
    match: {issuer: k8s, subject: "system:serviceaccount:ledger:api"}
    grants: [l-vault, l-jwt, l-db, l-proxy]
grants:
  - {name: l-vault, kind: vault_token, ttl: 10m, vault_token: {policies: [payments-read]}}
  - {name: l-jwt, kind: jwt, ttl: 5m, jwt: {audience: orders-api, transit_key: keytrail-signing}}
  - {name: l-db, kind: vault_dynamic, ttl: 10m, vault_dynamic: {path: database/creds/ledger-rw}}
  - name: l-proxy
    kind: proxy
    ttl: 10m
    proxy:
      upstream: %[2]s
      allow_private: true
      secret: {vault_kv: secret/data/upstreams/ledger, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      methods: [GET]
      paths: ["/v1/charges"]
`

// TestSessionRevokedAtEveryBackend: one pod's session holds a credential of
// every kind, issued through instance A. An auditor traces the PostgreSQL
// log's user name and the upstream's X-Request-Id back to their issuances
// in that session; a security team revokes the session through instance B;
// then Vault refuses the token, PostgreSQL refuses the login and has
// dropped the role, the proxy on A refuses the credential without calling
// the upstream, and introspection on A says the JWT is inactive, while
// another pod's credential still works until its owner is revoked.
func TestSessionRevokedAtEveryBackend(t *testing.T) {
	const upstreamKey = "sk_live_ledger_upstream"
	var upMu sync.Mutex
	var upSeen []http.Header
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		upMu.Lock()
		upSeen = append(upSeen, r.Header.Clone())
		upMu.Unlock()
		fmt.Fprint(w, `{"charges":[]}`)
	}))
	t.Cleanup(up.Close)
	upHits := func() int { upMu.Lock(); defer upMu.Unlock(); return len(upSeen) }

	k8s := platformIssuer(t, "RS256", "https://kubernetes.default.svc.cluster.local")
	pg := harness.StartPostgres(t)
	rd := harness.StartRedis(t)
	env := startStack(t, stackOptions{redisURL: rd.URL(), extraPolicy: fmt.Sprintf(sessionRevokePolicy, k8s.jwks, up.URL)})
	nodeB, auditB := startPeer(t, env, rd.URL())
	admin := env.issuer.token(t, "alice", map[string]any{"groups": "secops"})

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := env.vault.Client
	if _, err := pg.Query(pg.Superuser, pg.SuperPassword, "CREATE TABLE ledger (id int, amount int); INSERT INTO ledger VALUES (1, 42)"); err != nil {
		t.Fatal(err)
	}
	setupDatabaseEngine(ctx, t, root, pg, "ledger-rw", `GRANT SELECT ON ledger TO "{{name}}";`)
	if _, err := root.KVv2("secret").Put(ctx, "upstreams/ledger", map[string]any{"api_key": upstreamKey}); err != nil {
		t.Fatalf("vault kv put: %v", err)
	}

	// Pod a's session: one credential of each kind, each from its own token
	// of the pod (as a workload's init containers or sidecars would ask).
	podA := func(jti string) string {
		return k8s.sign(t, k8sClaims("ledger", "api", "api-7f9c", "uid-pod-a", jti))
	}
	vt := env.issue(t, podA("a-1"), "l-vault", nil)
	jw := env.issue(t, podA("a-2"), "l-jwt", nil)
	db := env.issue(t, podA("a-3"), "l-db", nil)
	px := env.issue(t, podA("a-4"), "l-proxy", nil)
	session := vt.SessionID
	for _, r := range []tokenResponse{jw, db, px} {
		if r.SessionID != session {
			t.Fatalf("%s credential in session %s, want pod a's %s", r.Kind, r.SessionID, session)
		}
	}
	other := env.issue(t, k8s.sign(t, k8sClaims("ledger", "api", "api-x2k1", "uid-pod-b", "b-1")), "l-vault", nil)
	if other.SessionID == session {
		t.Fatalf("pod b shares pod a's session %s", session)
	}
	username, _ := db.Credential["username"].(string)
	password, _ := db.Credential["password"].(string)

	// Each credential works at its backend before the revocation.
	vaultOK := func(tok string) (bool, error) {
		vc, err := vaultapi.NewClient(&vaultapi.Config{Address: env.vault.Addr, MaxRetries: 0, Timeout: 5 * time.Second})
		if err != nil {
			return false, err
		}
		vc.SetToken(tok)
		_, err = vc.Auth().Token().LookupSelfWithContext(ctx)
		var re *vaultapi.ResponseError
		if errors.As(err, &re) && re.StatusCode == 403 {
			return false, nil
		}
		return err == nil, err
	}
	mustVaultOK := func(tok string) bool {
		ok, err := vaultOK(tok)
		if err != nil {
			t.Fatal(err)
		}
		return ok
	}
	proxyGET := func(base string) int {
		st, _ := call(t, "GET", base+"/v1/proxy/l-proxy/v1/charges", px.AccessToken, "", nil)
		return st
	}
	introspect := func(base, tok string) bool {
		st, raw := call(t, "POST", base+"/v1/introspect", admin, "application/x-www-form-urlencoded", strings.NewReader(url.Values{"token": {tok}}.Encode()))
		var res struct {
			Active *bool `json:"active"`
		}
		if st != 200 || json.Unmarshal(raw, &res) != nil || res.Active == nil {
			t.Fatalf("introspect on %s = %d %s", base, st, raw)
		}
		return *res.Active
	}
	if !mustVaultOK(vt.AccessToken) || !mustVaultOK(other.AccessToken) {
		t.Fatal("a fresh Vault token fails lookup-self")
	}
	if out, err := pg.Query(username, password, "SELECT sum(amount) FROM ledger"); err != nil || out != "42" {
		t.Fatalf("query with the issued database credentials = %q, %v", out, err)
	}
	if st := proxyGET(env.brokerURL); st != 200 {
		t.Fatalf("proxied call with a fresh credential = %d", st)
	}
	if !introspect(env.brokerURL, jw.AccessToken) {
		t.Fatal("a fresh JWT is not active")
	}

	t.Run("ok/downstream-logs-trace-to-the-session", func(t *testing.T) {
		// PostgreSQL's log names the user; the upstream saw X-Request-Id.
		waitFor(t, 10*time.Second, "PostgreSQL's connection line for "+username, func() bool {
			for _, m := range connAuthorized.FindAllStringSubmatch(pg.Log(), -1) {
				if m[1] == username {
					return true
				}
			}
			return false
		})
		upMu.Lock()
		reqID := upSeen[len(upSeen)-1].Get("X-Request-Id")
		upMu.Unlock()
		for _, c := range []struct{ q, kind, issuance string }{
			{username, trace.KindUsername, db.IssuanceID},
			{reqID, trace.KindUseID, px.IssuanceID},
		} {
			status, raw := traceGet(t, env.brokerURL+"/v1/admin/trace?q="+url.QueryEscape(c.q), admin)
			if status != 200 {
				t.Fatalf("trace %s = %d %s", c.q, status, raw)
			}
			var got trace.Result
			mustJSON(t, raw, &got)
			if got.Issuance == nil || got.Issuance.ID != c.issuance || got.Issuance.SessionID != session || got.Issuance.Workload != "ledger" ||
				got.Issuance.Owner != "team-ledger" || len(got.AlsoMatched) != 0 || got.Query.Kind != c.kind {
				t.Errorf("trace %s (%s) = %s, want exactly issuance %s of session %s", c.q, c.kind, raw, c.issuance, session)
			}
			if c.kind == trace.KindUseID && !slices.ContainsFunc(got.Uses, func(ev *audit.Event) bool { return ev.UseID == reqID }) {
				t.Errorf("trace %s: uses %s do not include the use the upstream saw", c.q, raw)
			}
		}
	})

	t.Run("ok/session-revoked-through-B-refused-everywhere", func(t *testing.T) {
		body := fmt.Sprintf(`{"session_id":%q,"reason":"INC-7: pod a compromised"}`, session)
		status, rc := revokeOn(t, nodeB.URL, admin, body)
		want := []string{vt.IssuanceID, jw.IssuanceID, db.IssuanceID, px.IssuanceID}
		slices.Sort(want)
		got := slices.Clone(rc.Revoked)
		slices.Sort(got)
		if status != 200 || rc.Matched != 4 || !slices.Equal(got, want) || len(rc.Failed) != 0 {
			t.Fatalf("revoke session on B = %d %+v, want the 4 credentials of %s revoked\nB's log:\n%s", status, rc, session, nodeB.Logs())
		}
		hitsBefore := upHits()
		waitFor(t, 5*time.Second, "Vault to refuse pod a's token", func() bool { return !mustVaultOK(vt.AccessToken) })
		waitFor(t, 5*time.Second, "A's proxy to refuse the revoked credential", func() bool { return proxyGET(env.brokerURL) == 403 })
		waitFor(t, 5*time.Second, "A's introspection to say the JWT is inactive", func() bool { return !introspect(env.brokerURL, jw.AccessToken) })
		if n := upHits(); n != hitsBefore {
			t.Errorf("the upstream was called %d times with the revoked proxy credential", n-hitsBefore)
		}
		if n, err := pg.Query(pg.Superuser, pg.SuperPassword, fmt.Sprintf("SELECT count(*) FROM pg_roles WHERE rolname = '%s'", username)); err != nil || n != "0" {
			t.Errorf("pg_roles rows for %s after the revocation = %q, %v; want 0", username, n, err)
		}
		if _, err := pg.Query(username, password, "SELECT 1"); err == nil || !strings.Contains(err.Error(), "password authentication failed") {
			t.Errorf("login with the revoked database credentials: err = %v, want password authentication failed", err)
		}
		// Pod b's session is another one: untouched.
		if !mustVaultOK(other.AccessToken) || !introspect(env.brokerURL, other.AccessToken) {
			t.Errorf("pod b's credential was revoked with pod a's session")
		}
	})

	t.Run("ok/owner-revoked-through-B", func(t *testing.T) {
		status, rc := revokeOn(t, nodeB.URL, admin, `{"owner":"team-ledger","reason":"INC-7: rotate everything of team-ledger"}`)
		if status != 200 || !slices.Contains(rc.Revoked, other.IssuanceID) || len(rc.Failed) != 0 {
			t.Fatalf("revoke owner on B = %d %+v, want pod b's %s revoked", status, rc, other.IssuanceID)
		}
		waitFor(t, 5*time.Second, "Vault to refuse pod b's token", func() bool { return !mustVaultOK(other.AccessToken) })
		waitFor(t, 5*time.Second, "A's introspection to say pod b's token is inactive", func() bool { return !introspect(env.brokerURL, other.AccessToken) })
	})

	t.Run("ok/both-audit-logs-verify", func(t *testing.T) {
		for _, p := range []string{env.auditPath, auditB} {
			if out := runKeytrail(t, harness.KeytrailBinary(t), nil, "audit", "verify", p); len(out) == 0 {
				t.Errorf("audit verify %s printed nothing", p)
			}
		}
	})
}

// startPeer starts a second keytrail instance of env's deployment: the same
// policy, Vault and Redis store, its own audit file. It returns the process
// and its audit file's path.
func startPeer(t *testing.T, env *stack, redisURL string) (*harness.Keytrail, string) {
	t.Helper()
	port := harness.FreePort(t)
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	auditPath := filepath.Join(env.dir, "audit-b.jsonl")
	cfg := fmt.Sprintf("listen: 127.0.0.1:%d\npublic_url: %s\npolicy: %s\nvault:\n  address: %s\nstore:\n  redis_url: %s\naudit:\n  file: %s\n",
		port, base, env.policyDir, env.vault.Addr, redisURL, auditPath)
	cfgPath := filepath.Join(env.dir, "config-b.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	return harness.StartKeytrail(t, base, cfgPath, "VAULT_TOKEN="+env.vault.RootToken), auditPath
}

// revokeOn posts an admin revocation to the instance at base.
func revokeOn(t *testing.T, base, admin, body string) (int, receiptJSON) {
	t.Helper()
	status, raw := call(t, "POST", base+"/v1/admin/revoke", admin, "application/json", strings.NewReader(body))
	var rc receiptJSON
	if err := json.Unmarshal(raw, &rc); err != nil {
		t.Fatalf("revoke answer %d is not JSON: %s", status, raw)
	}
	return status, rc
}
