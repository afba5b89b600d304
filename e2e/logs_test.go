package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestServerLogCarriesNoSecret runs a broker at log level debug through a
// full life: exchanges of every kind this stack serves (with an actor
// token, and refused ones), proxied calls (allowed, refused, rate
// limited), introspection, traces by raw credential, a revocation and the
// refused use after it. Then the captured server log must hold no identity
// token, no credential, no upstream secret and not the broker's Vault
// token, not even a JWT's signature on its own; and every line about a
// request names its request id.
func TestServerLogCarriesNoSecret(t *testing.T) {
	up := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"path":%q}`, r.URL.Path)
	}))
	t.Cleanup(up.Close)
	caFile := writeServerCA(t, up)
	extra := fmt.Sprintf(`version: 1
workloads:
  - name: billing-agent
    owner: team-billing
    match: {issuer: test, subject: "agent:billing"}
    grants: [example-api]
    rate: {per_second: 0.5, burst: 8}
grants:
  - name: example-api
    kind: proxy
    ttl: 10m
    proxy:
      upstream: %s
      allow_private: true
      ca_file: %s
      secret: {vault_kv: secret/data/upstreams/example, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      methods: [GET]
      paths: ["/v1/charges", "/v1/charges/*"]
`, up.URL, caFile)
	env := startStack(t, stackOptions{extraPolicy: extra})
	if _, err := env.vault.Client.KVv2("secret").Put(context.Background(), "upstreams/example", map[string]any{"api_key": upstreamSecret}); err != nil {
		t.Fatalf("vault kv put: %v", err)
	}

	secrets := map[string]string{
		"upstream secret":       upstreamSecret,
		"broker's vault token":  env.vault.RootToken,
		"garbage subject token": "eyJnotajwt.eyJzZWNyZXQtbG9va2luZw.c2lnbmF0dXJlLXBhcnQ",
	}
	jwtSecret := func(name, tok string) {
		secrets[name] = tok
		if i := strings.LastIndexByte(tok, '.'); i > 0 && len(tok)-i > 16 {
			secrets[name+" (signature)"] = tok[i+1:]
		}
	}
	payTok := env.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments", "session": "pod-1"})
	jwtSecret("subject token", payTok)
	actorTok := env.issuer.token(t, "agent:billing", map[string]any{"session": "conv-7"})
	jwtSecret("actor token", actorTok)
	agentTok := env.issuer.token(t, "agent:billing", map[string]any{"session": "conv-8"})
	jwtSecret("agent token", agentTok)
	adminTok := env.issuer.token(t, "alice", map[string]any{"groups": "secops"})
	jwtSecret("admin token", adminTok)
	expired := env.issuer.tokenWith(t, jwt.MapClaims{"sub": "system:serviceaccount:payments:api", "namespace": "payments",
		"exp": time.Now().Add(-time.Hour).Unix(), "iat": time.Now().Add(-2 * time.Hour).Unix()})
	jwtSecret("expired token", expired)
	// A token with a valid shape and a signature that does not verify.
	forged := payTok[:strings.LastIndexByte(payTok, '.')+1] + strings.Repeat("A", 86)
	jwtSecret("forged token", forged)

	vaultCred := env.issue(t, payTok, "payments-vault", url.Values{"actor_token": {actorTok}, "actor_token_type": {"urn:ietf:params:oauth:token-type:jwt"}})
	secrets["vault token"] = vaultCred.AccessToken
	jwtCred := env.issue(t, payTok, "orders-jwt", nil)
	jwtSecret("broker JWT", jwtCred.AccessToken)
	proxyCred := env.issue(t, agentTok, "example-api", nil)
	secrets["proxy credential"] = proxyCred.AccessToken

	// Refused exchanges.
	for _, c := range []struct{ tok, grant string }{
		{expired, "payments-vault"}, {forged, "payments-vault"}, {secrets["garbage subject token"], "payments-vault"},
		{payTok, "deploy-vault"}, {payTok, "no-such-grant"},
	} {
		if status, body, _ := env.exchange(t, c.tok, c.grant, nil); status < 400 {
			t.Fatalf("exchange %s = %d %s, want a refusal", c.grant, status, body)
		}
	}

	do := func(method, path, auth, ctype string, body io.Reader) int {
		t.Helper()
		req, err := http.NewRequest(method, env.brokerURL+path, body)
		if err != nil {
			t.Fatal(err)
		}
		if auth != "" {
			req.Header.Set("Authorization", "Bearer "+auth)
		}
		if ctype != "" {
			req.Header.Set("Content-Type", ctype)
		}
		resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	form := func(tok string) io.Reader { return strings.NewReader(url.Values{"token": {tok}}.Encode()) }
	const formType = "application/x-www-form-urlencoded"

	// Proxied calls: allowed, refused, then until the rate limit answers.
	if st := do("GET", "/v1/proxy/example-api/v1/charges/ch_1", proxyCred.AccessToken, "", nil); st != 200 {
		t.Fatalf("proxied GET = %d, want 200", st)
	}
	do("GET", "/v1/proxy/example-api/v1/refunds", proxyCred.AccessToken, "", nil)
	do("GET", "/v1/proxy/example-api/v1/charges", "ktp_"+strings.Repeat("B", 43), "", nil)
	do("GET", "/v1/proxy/example-api/v1/charges", vaultCred.AccessToken, "", nil)
	limited := false
	for i := 0; i < 20 && !limited; i++ {
		limited = do("GET", "/v1/proxy/example-api/v1/charges", proxyCred.AccessToken, "", nil) == http.StatusTooManyRequests
	}
	if !limited {
		t.Fatal("the proxy never answered 429 to a workload with burst 8")
	}

	// Introspection and admin calls, good and refused callers.
	for _, tok := range []string{vaultCred.AccessToken, jwtCred.AccessToken, proxyCred.AccessToken} {
		if st := do("POST", "/v1/introspect", payTok, formType, form(tok)); st != 200 {
			t.Fatalf("introspect = %d", st)
		}
		do("POST", "/v1/introspect", forged, formType, form(tok))
		if st := do("GET", "/v1/admin/trace?q="+url.QueryEscape(tok), adminTok, "", nil); st != 200 {
			t.Fatalf("trace by raw credential = %d", st)
		}
		do("GET", "/v1/admin/trace?q="+url.QueryEscape(tok), payTok, "", nil)
	}
	do("GET", "/v1/admin/trace?q="+url.QueryEscape("hvs.notatoken-but-secret-looking"), adminTok, "", nil)
	secrets["unknown trace value"] = "hvs.notatoken-but-secret-looking"

	for _, id := range []string{vaultCred.IssuanceID, proxyCred.IssuanceID} {
		b, _ := json.Marshal(map[string]any{"issuance_id": id, "reason": "e2e: log check"})
		if st := do("POST", "/v1/admin/revoke", adminTok, "application/json", strings.NewReader(string(b))); st != 200 {
			t.Fatalf("revoke %s = %d", id, st)
		}
	}
	if st := do("GET", "/v1/proxy/example-api/v1/charges", proxyCred.AccessToken, "", nil); st != http.StatusForbidden {
		t.Fatalf("proxied GET after revocation = %d, want 403", st)
	}
	do("POST", "/v1/introspect", payTok, formType, form(vaultCred.AccessToken))
	if err := env.broker.Stop(); err != nil {
		t.Fatalf("broker stop: %v", err)
	}

	logs := env.broker.Logs()
	if !strings.Contains(logs, `"level":"DEBUG"`) {
		t.Fatalf("the broker logged nothing at debug level; is log.level debug?\n%s", logs)
	}
	for name, v := range secrets {
		if strings.Contains(logs, v) {
			t.Errorf("server log contains the %s", name)
		}
	}
	sc := bufio.NewScanner(strings.NewReader(logs))
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	failures := map[string]int{}
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) != nil {
			continue // not from the server's logger
		}
		msg, _ := line["msg"].(string)
		if _, ok := line["status"]; ok || msg == "http" || msg == "request failed" {
			id, _ := line["request_id"].(string)
			if !strings.HasPrefix(id, "req_") {
				t.Errorf("log line about a request without its request id: %s", sc.Bytes())
			}
			if msg == "request failed" {
				failures[id]++
			}
		}
	}
	for id, n := range failures {
		if n > 1 {
			t.Errorf("request %s: its failure logged %d times, want once", id, n)
		}
	}
}
