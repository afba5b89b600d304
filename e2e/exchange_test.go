package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"

	"github.com/keytrail/keytrail/e2e/harness"
)

// TestExchangeAgainstRealVault drives a real keytrail process, backed by a
// real Vault dev server, over HTTP with tokens from a test issuer.
func TestExchangeAgainstRealVault(t *testing.T) {
	env := startStack(t, stackOptions{})

	t.Run("ok/vault-token-tagged-in-vault", func(t *testing.T) {
		tok := env.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments", "session": "pod-1"})
		res := env.issue(t, tok, "payments-vault", nil)
		if res.Workload != "payments-api" || res.Owner != "team-payments" || res.Kind != "vault_token" ||
			!strings.HasPrefix(res.IssuanceID, "iss_") || !strings.HasPrefix(res.SessionID, "ses_") ||
			res.ExpiresIn <= 0 || res.ExpiresIn > 900 || res.TokenType != "Bearer" {
			t.Fatalf("response = %+v", res)
		}
		// The minted token's own lookup-self shows the tags.
		_, self := env.vaultAs(t, res.AccessToken, "the minted token")
		meta, _ := self.Data["meta"].(map[string]any)
		want := map[string]any{"workload": "payments-api", "owner": "team-payments", "session_id": res.SessionID, "issuance_id": res.IssuanceID, "grant": "payments-vault"}
		for k, v := range want {
			if meta[k] != v {
				t.Errorf("token meta[%s] = %v, want %v", k, meta[k], v)
			}
		}
		if dn := self.Data["display_name"]; dn != "token-keytrail-payments-api" {
			t.Errorf("display_name = %v, want token-keytrail-payments-api", dn)
		}
		if ttl, _ := self.Data["ttl"].(json.Number).Int64(); ttl <= 0 || ttl > 900 {
			t.Errorf("ttl = %d, want (0, 900]", ttl)
		}
		// The request just made with it is in Vault's own audit log, naming the issuance.
		waitFor(t, 10*time.Second, "vault audit entry with issuance_id", func() bool {
			return vaultAuditHasIssuance(t, env.vault.AuditLogPath, res.IssuanceID)
		})
		// And the issuance is in keytrail's audit log, chained and verifiable.
		if !auditHas(t, env.auditPath, "issue", res.IssuanceID) {
			t.Errorf("no issue event for %s in %s", res.IssuanceID, env.auditPath)
		}
	})

	t.Run("ok/jwt-verifies-against-jwks", func(t *testing.T) {
		tok := env.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments", "session": "pod-2"})
		res := env.issue(t, tok, "orders-jwt", nil)
		kf, err := keyfunc.NewDefaultCtx(t.Context(), []string{env.brokerURL + "/.well-known/jwks.json"})
		if err != nil {
			t.Fatal(err)
		}
		claims := jwt.MapClaims{}
		parsed, err := jwt.ParseWithClaims(res.AccessToken, claims, kf.Keyfunc,
			jwt.WithValidMethods([]string{"ES256", "EdDSA"}), jwt.WithIssuer(env.brokerURL),
			jwt.WithAudience("orders-api"), jwt.WithExpirationRequired())
		if err != nil || !parsed.Valid {
			t.Fatalf("minted JWT does not verify against the broker JWKS: %v", err)
		}
		if claims["sub"] != "payments-api" || claims["jti"] != res.IssuanceID || claims["owner"] != "team-payments" || claims["sid"] != res.SessionID {
			t.Errorf("claims = %v", claims)
		}
		// Discovery names the same JWKS.
		resp, err := http.Get(env.brokerURL + "/.well-known/openid-configuration")
		if err != nil {
			t.Fatal(err)
		}
		var disc map[string]any
		json.NewDecoder(resp.Body).Decode(&disc)
		resp.Body.Close()
		if disc["issuer"] != env.brokerURL || disc["jwks_uri"] != env.brokerURL+"/.well-known/jwks.json" {
			t.Errorf("discovery = %v", disc)
		}
	})

	t.Run("fail/denials-have-oauth-shape-and-no-token", func(t *testing.T) {
		good := env.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments"})
		expired := env.issuer.tokenWith(t, jwt.MapClaims{"sub": "system:serviceaccount:payments:api", "namespace": "payments",
			"exp": time.Now().Add(-time.Hour).Unix(), "iat": time.Now().Add(-2 * time.Hour).Unix()})
		cases := []struct {
			name, token, grant string
			extra              url.Values
			status             int
			code               string
		}{
			{"fail/expired", expired, "payments-vault", nil, 401, "invalid_grant"},
			{"fail/garbage", "not-a-jwt", "payments-vault", nil, 401, "invalid_grant"},
			{"fail/unknown-grant", good, "nope", nil, 400, "invalid_target"},
			{"fail/not-allowed", good, "deploy-vault", nil, 403, "access_denied"},
			{"fail/wrong-grant-type", good, "payments-vault", url.Values{"grant_type": {"client_credentials"}}, 400, "unsupported_grant_type"},
		}
		for _, c := range cases {
			status, body, hdr := env.exchange(t, c.token, c.grant, c.extra)
			var eb map[string]string
			mustJSON(t, body, &eb)
			if status != c.status || eb["error"] != c.code {
				t.Errorf("%s: got %d %s, want %d %s", c.name, status, body, c.status, c.code)
			}
			if eb["request_id"] == "" || eb["request_id"] != hdr.Get("X-Request-Id") {
				t.Errorf("%s: request_id %q vs header %q", c.name, eb["request_id"], hdr.Get("X-Request-Id"))
			}
			if strings.Contains(string(body), c.token) {
				t.Errorf("%s: body repeats the token", c.name)
			}
		}
		logs, _ := os.ReadFile(env.auditPath)
		if bytes.Contains(logs, []byte(expired)) || bytes.Contains(logs, []byte(good)) {
			t.Errorf("audit log contains an identity token")
		}
		if bytes.Contains([]byte(env.broker.Logs()), []byte(good)) {
			t.Errorf("server log contains an identity token")
		}
	})

	t.Run("ok/audit-verify-detects-one-changed-byte", func(t *testing.T) {
		bin := harness.KeytrailBinary(t)
		out, err := exec.Command(bin, "audit", "verify", env.auditPath).CombinedOutput()
		if err != nil {
			t.Fatalf("audit verify on the live log: %v\n%s", err, out)
		}
		data, err := os.ReadFile(env.auditPath)
		if err != nil {
			t.Fatal(err)
		}
		i := bytes.Index(data, []byte(`"workload":"payments-api"`))
		if i < 0 {
			t.Fatal("no payments-api event in the audit log")
		}
		tampered := bytes.Clone(data)
		tampered[i+len(`"workload":"`)] = 'P'
		line := bytes.Count(data[:i], []byte("\n")) + 1
		tp := filepath.Join(t.TempDir(), "tampered.jsonl")
		os.WriteFile(tp, tampered, 0o600)
		out, err = exec.Command(bin, "audit", "verify", tp).CombinedOutput()
		if err == nil {
			t.Fatalf("audit verify accepted a log with one changed byte:\n%s", out)
		}
		if !strings.Contains(string(out), fmt.Sprintf("tampered.jsonl:%d", line)) {
			t.Errorf("audit verify output does not name line %d:\n%s", line, out)
		}
	})

	// A requested ttl is capped by the grant, never extends it: in Vault the
	// token's explicit_max_ttl and ttl stay within the grant's 15m and it
	// cannot be renewed; a JWT's exp-iat stays within orders-jwt's 5m; 0 is
	// refused.
	t.Run("ok/requested-ttl-capped-in-vault", func(t *testing.T) {
		tok := env.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments", "session": "pod-ttl"})
		for _, tc := range []struct {
			ttl      string
			maxVault int64 // the token's explicit_max_ttl, exactly
			maxJWT   int64
		}{
			{"99999999999999999999", 900, 300}, // beyond int64
			{"86400", 900, 300},
			{"60", 60, 60},
		} {
			res := env.issue(t, tok, "payments-vault", url.Values{"ttl": {tc.ttl}})
			vc, self := env.vaultAs(t, res.AccessToken, "the token minted with ttl="+tc.ttl)
			maxTTL, _ := self.Data["explicit_max_ttl"].(json.Number).Int64()
			ttl, _ := self.Data["ttl"].(json.Number).Int64()
			if maxTTL != tc.maxVault || ttl <= 0 || ttl > tc.maxVault || self.Data["renewable"] != false || res.ExpiresIn <= 0 || res.ExpiresIn > tc.maxVault {
				t.Errorf("ttl=%s: vault explicit_max_ttl %d, ttl %d, renewable %v, expires_in %d; want explicit_max_ttl %d, ttl and expires_in in (0, %d], not renewable",
					tc.ttl, maxTTL, ttl, self.Data["renewable"], res.ExpiresIn, tc.maxVault, tc.maxVault)
			}
			if _, err := vc.Auth().Token().RenewSelfWithContext(context.Background(), 3600); err == nil {
				t.Errorf("ttl=%s: renew-self of the minted token succeeded, want refused", tc.ttl)
			}

			res = env.issue(t, tok, "orders-jwt", url.Values{"ttl": {tc.ttl}})
			claims := jwt.MapClaims{}
			if _, _, err := jwt.NewParser().ParseUnverified(res.AccessToken, claims); err != nil {
				t.Fatalf("ttl=%s: jwt: %v", tc.ttl, err)
			}
			iat, _ := claims["iat"].(float64)
			exp, _ := claims["exp"].(float64)
			if life := int64(exp - iat); life <= 0 || life > tc.maxJWT || res.ExpiresIn > tc.maxJWT {
				t.Errorf("ttl=%s: jwt exp-iat %ds, expires_in %d; want at most %ds", tc.ttl, life, res.ExpiresIn, tc.maxJWT)
			}
		}
		if status, body, _ := env.exchange(t, tok, "payments-vault", url.Values{"ttl": {"0"}}); status != 400 || !strings.Contains(string(body), "invalid_request") {
			t.Errorf("ttl=0: exchange = %d %s, want 400 invalid_request", status, body)
		}
	})

	// Last: Vault down means 503 with Retry-After and no credential.
	t.Run("fail/vault-down-503", func(t *testing.T) {
		env.vault.Stop()
		tok := env.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments"})
		status, body, hdr := env.exchange(t, tok, "payments-vault", nil)
		if status != 503 || hdr.Get("Retry-After") == "" || !strings.Contains(string(body), "temporarily_unavailable") || strings.Contains(string(body), "access_token") {
			t.Fatalf("with Vault down: %d %s (Retry-After %q), want 503 temporarily_unavailable", status, body, hdr.Get("Retry-After"))
		}
		if !auditHas(t, env.auditPath, "deny", "") {
			t.Errorf("no deny event recorded")
		}
	})

	// No checkpoint key configured: the broker made one next to the audit
	// file, and its log ends in a checkpoint signed with it at shutdown.
	t.Run("ok/default-checkpoint-key", func(t *testing.T) {
		if err := env.broker.Stop(); err != nil {
			t.Fatalf("keytrail exit after SIGTERM = %v", err)
		}
		out, err := exec.Command(harness.KeytrailBinary(t), "audit", "verify", "--require-checkpoint",
			"--key", env.auditPath+".checkpoint.pub", env.auditPath).CombinedOutput()
		if err != nil {
			t.Errorf("audit verify with the default checkpoint key: %v\n%s", err, out)
		}
		if fi, err := os.Stat(env.auditPath + ".checkpoint.key"); err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("default checkpoint key = %v, %v; want a 0600 file", fi, err)
		}
	})
}

type tokenResponse struct {
	AccessToken string         `json:"access_token"`
	TokenType   string         `json:"token_type"`
	ExpiresIn   int64          `json:"expires_in"`
	IssuanceID  string         `json:"issuance_id"`
	Workload    string         `json:"workload"`
	Owner       string         `json:"owner"`
	SessionID   string         `json:"session_id"`
	Grant       string         `json:"grant"`
	Kind        string         `json:"kind"`
	Credential  map[string]any `json:"credential"`
}

func mustJSON(t *testing.T, b []byte, v any) {
	t.Helper()
	if err := json.Unmarshal(b, v); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, b)
	}
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		tick := time.NewTimer(20 * time.Millisecond)
		<-tick.C
	}
}

func vaultAuditHasIssuance(t *testing.T, path, issuanceID string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var entry struct {
			Type string `json:"type"`
			Auth struct {
				Metadata map[string]string `json:"metadata"`
			} `json:"auth"`
		}
		if json.Unmarshal(sc.Bytes(), &entry) == nil && entry.Auth.Metadata["issuance_id"] == issuanceID {
			return true
		}
	}
	return false
}

func auditHas(t *testing.T, path, typ, issuanceID string) bool {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range bytes.Split(data, []byte("\n")) {
		var ev struct {
			Type       string `json:"type"`
			IssuanceID string `json:"issuance_id"`
		}
		if json.Unmarshal(line, &ev) == nil && ev.Type == typ && (issuanceID == "" || ev.IssuanceID == issuanceID) {
			return true
		}
	}
	return false
}
