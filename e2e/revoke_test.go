package e2e

// Revocation across instances (issue #4): three keytrail server processes
// share one real Redis and one real Vault. Keytrail reaches Vault through a
// TCP relay the test can cut and restore, so that a Vault outage can be had
// without restarting the (in-memory) dev server.
//
// BenchmarkRevokePropagation is the measurement the issue asks for: run it
// with
//
//	go test ./e2e -run '^$' -bench RevokePropagation -benchtime 1x -v

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/e2e/harness"
)

const revokePolicy = `version: 1
issuers:
  - name: test
    issuer: %[1]s
    jwks_url: %[1]s/jwks.json
    audiences: [keytrail]
    algorithms: [ES256]
    max_token_lifetime: 2h
    session_claim: session
workloads:
  - name: payments-api
    owner: team-payments
    match: {issuer: test, subject: system:serviceaccount:payments:api}
    grants: [payments-vault, pay-proxy]
  - name: batch
    owner: team-data
    match: {issuer: test, subject: system:serviceaccount:data:batch}
    grants: [batch-vault]
grants:
  - name: payments-vault
    kind: vault_token
    ttl: 15m
    vault_token: {policies: [payments-read]}
  - name: batch-vault
    kind: vault_token
    ttl: 15m
    vault_token: {policies: [payments-read]}
  - name: pay-proxy
    kind: proxy
    ttl: 10m
    proxy:
      upstream: %[2]s
      allow_private: true
      secret: {vault_kv: secret/data/upstreams/pay, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      methods: [GET]
      paths: ["/v1/charges"]
admins:
  - name: secops
    match: {issuer: test, claims: {groups: secops}}
    roles: [revoke, trace]
`

// relay forwards TCP connections to target until cut.
type relay struct {
	tb     testing.TB
	target string
	addr   string

	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
}

func startRelay(tb testing.TB, target string) *relay {
	tb.Helper()
	r := &relay{tb: tb, target: target, conns: map[net.Conn]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	r.addr = ln.Addr().String()
	r.serve(ln)
	tb.Cleanup(r.Cut)
	return r
}

func (r *relay) URL() string { return "http://" + r.addr }

func (r *relay) serve(ln net.Listener) {
	r.mu.Lock()
	r.ln = ln
	r.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go r.pipe(c)
		}
	}()
}

func (r *relay) pipe(c net.Conn) {
	up, err := net.Dial("tcp", r.target)
	if err != nil {
		c.Close()
		return
	}
	r.mu.Lock()
	if r.ln == nil { // cut meanwhile
		r.mu.Unlock()
		c.Close()
		up.Close()
		return
	}
	r.conns[c], r.conns[up] = true, true
	r.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
	<-done
	c.Close()
	up.Close()
	r.mu.Lock()
	delete(r.conns, c)
	delete(r.conns, up)
	r.mu.Unlock()
}

// Cut closes the listener and every relayed connection: Vault is gone for
// keytrail (connection refused).
func (r *relay) Cut() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ln != nil {
		r.ln.Close()
		r.ln = nil
	}
	for c := range r.conns {
		c.Close()
	}
	clear(r.conns)
}

// Restore listens again on the same address.
func (r *relay) Restore() {
	r.tb.Helper()
	var err error
	for range 50 {
		var ln net.Listener
		if ln, err = net.Listen("tcp", r.addr); err == nil {
			r.serve(ln)
			return
		}
		time.Sleep(20 * time.Millisecond) // the port is ours; the kernel may need a moment
	}
	r.tb.Fatalf("relay: listen again on %s: %v", r.addr, err)
}

// cluster is N keytrail instances over one Redis and one Vault.
type cluster struct {
	vault  *harness.Vault
	redis  *harness.Redis
	relay  *relay
	issuer *authntest.Issuer
	// upstreamAuth counts the upstream's requests by the Authorization
	// header the proxy injected.
	upstreamMu   sync.Mutex
	upstreamAuth map[string]int
	nodes        []*harness.Keytrail
	audits       []string
	admin        string // an admin's identity token
}

func startCluster(tb testing.TB, n int) *cluster {
	tb.Helper()
	c := &cluster{}
	c.vault = harness.StartVault(tb)
	if err := c.vault.Client.Sys().PutPolicyWithContext(context.Background(), "payments-read",
		`path "secret/data/payments/*" { capabilities = ["read"] }`); err != nil {
		tb.Fatalf("vault policy: %v", err)
	}
	c.redis = harness.StartRedis(tb, harness.WithPersistence())
	u, err := url.Parse(c.vault.Addr)
	if err != nil {
		tb.Fatal(err)
	}
	c.relay = startRelay(tb, u.Host)

	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{Handler: iss.Handler(), ReadHeaderTimeout: 5 * time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go func() { _ = srv.Serve(ln) }()
	tb.Cleanup(func() { srv.Close() })
	iss.URL = "http://" + ln.Addr().String()
	c.issuer = iss
	c.admin = c.token(tb, "alice", map[string]any{"groups": "secops"})

	// The upstream API of the proxy grant, and its key in Vault KV.
	c.upstreamAuth = map[string]int{}
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.upstreamMu.Lock()
		c.upstreamAuth[r.Header.Get("Authorization")]++
		c.upstreamMu.Unlock()
		io.WriteString(w, `{"charges":[]}`)
	}))
	tb.Cleanup(up.Close)
	if _, err := c.vault.Client.KVv2("secret").Put(context.Background(), "upstreams/pay", map[string]any{"api_key": "sk_test_upstream"}); err != nil {
		tb.Fatalf("vault kv put: %v", err)
	}

	dir := tb.TempDir()
	polPath := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(polPath, []byte(fmt.Sprintf(revokePolicy, iss.URL, up.URL)), 0o600); err != nil {
		tb.Fatal(err)
	}
	for i := range n {
		port := harness.FreePort(tb)
		base := fmt.Sprintf("http://127.0.0.1:%d", port)
		audit := filepath.Join(dir, fmt.Sprintf("audit-%d.jsonl", i))
		cfg := fmt.Sprintf(`listen: 127.0.0.1:%d
public_url: %s
policy: %s
vault:
  address: %s
store:
  redis_url: %s
audit:
  file: %s
`, port, base, polPath, c.relay.URL(), c.redis.URL(), audit)
		if os.Getenv("KEYTRAIL_E2E_PPROF") != "" { // for profiling a soak
			pp := harness.FreePort(tb)
			cfg += fmt.Sprintf("pprof_listen: 127.0.0.1:%d\n", pp)
			fmt.Fprintf(os.Stderr, "instance %d: pprof on http://127.0.0.1:%d/debug/pprof/\n", i, pp)
		}
		cfgPath := filepath.Join(dir, fmt.Sprintf("config-%d.yaml", i))
		if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
			tb.Fatal(err)
		}
		node := harness.StartKeytrail(tb, base, cfgPath, "VAULT_TOKEN="+c.vault.RootToken)
		tb.Cleanup(func() {
			if logs := node.Logs(); strings.Contains(logs, "DATA RACE") || strings.Contains(logs, "panic:") {
				tb.Errorf("instance %d:\n%s", i, logs)
			}
		})
		c.nodes = append(c.nodes, node)
		c.audits = append(c.audits, audit)
	}
	return c
}

// token signs a one-hour identity token.
func (c *cluster) token(tb testing.TB, sub string, extra map[string]any) string {
	tb.Helper()
	now := time.Now()
	claims := jwt.MapClaims{"iss": c.issuer.URL, "aud": "keytrail", "sub": sub, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	for k, v := range extra {
		claims[k] = v
	}
	tok, err := c.issuer.Sign(claims)
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

var httpClient = &http.Client{Timeout: 30 * time.Second}

// call sends one request and returns status and body.
func call(tb testing.TB, method, u, bearer, contentType string, body io.Reader) (int, []byte) {
	tb.Helper()
	req, err := http.NewRequest(method, u, body)
	if err != nil {
		tb.Fatal(err)
	}
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		tb.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, raw
}

type credential struct {
	AccessToken string `json:"access_token"`
	IssuanceID  string `json:"issuance_id"`
	Workload    string `json:"workload"`
	SessionID   string `json:"session_id"`
	Error       string `json:"error"`
}

// exchange asks node for grant with the workload's identity token.
func (c *cluster) exchange(tb testing.TB, node int, subject, session, grant string) (int, credential) {
	tb.Helper()
	form := url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {c.token(tb, subject, map[string]any{"session": session})},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"},
		"audience":           {grant},
	}
	status, raw := call(tb, "POST", c.nodes[node].URL+"/v1/token", "", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	var cr credential
	if err := json.Unmarshal(raw, &cr); err != nil {
		tb.Fatalf("exchange answer is not JSON: %s", raw)
	}
	return status, cr
}

// active introspects token on node.
func (c *cluster) active(tb testing.TB, node int, token string) bool {
	tb.Helper()
	ok, err := c.tryActive(node, token)
	if err != nil {
		tb.Fatal(err)
	}
	return ok
}

// tryActive is active without failing the test (for other goroutines).
func (c *cluster) tryActive(node int, token string) (bool, error) {
	req, err := http.NewRequest("POST", c.nodes[node].URL+"/v1/introspect", strings.NewReader(url.Values{"token": {token}}.Encode()))
	if err != nil {
		return false, err
	}
	req.Header.Set("Authorization", "Bearer "+c.admin)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	resp, err := httpClient.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var res struct {
		Active *bool `json:"active"`
	}
	if resp.StatusCode != 200 || json.Unmarshal(raw, &res) != nil || res.Active == nil {
		return false, fmt.Errorf("introspect on node %d = %d %s", node, resp.StatusCode, raw)
	}
	return *res.Active, nil
}

// vaultValid reports whether the Vault token still passes lookup-self
// (asked of Vault directly, not through the relay).
func (c *cluster) vaultValid(tb testing.TB, token string) bool {
	tb.Helper()
	ok, err := c.tryVaultValid(token)
	if err != nil {
		tb.Fatal(err)
	}
	return ok
}

func (c *cluster) tryVaultValid(token string) (bool, error) {
	vc, err := vaultapi.NewClient(&vaultapi.Config{Address: c.vault.Addr, MaxRetries: 0, Timeout: 5 * time.Second})
	if err != nil {
		return false, err
	}
	vc.SetToken(token)
	_, err = vc.Auth().Token().LookupSelfWithContext(context.Background())
	var re *vaultapi.ResponseError
	switch {
	case err == nil:
		return true, nil
	case errors.As(err, &re) && re.StatusCode == 403:
		return false, nil
	default:
		return false, fmt.Errorf("lookup-self: %w", err)
	}
}

// proxyStatus calls the upstream through node's proxy with token.
func (c *cluster) proxyStatus(tb testing.TB, node int, token string) int {
	tb.Helper()
	status, _ := call(tb, "GET", c.nodes[node].URL+"/v1/proxy/pay-proxy/v1/charges", token, "", nil)
	return status
}

type receiptJSON struct {
	RevocationID string   `json:"revocation_id"`
	Status       string   `json:"status"`
	Matched      int      `json:"matched"`
	Revoked      []string `json:"revoked"`
	Pending      []string `json:"pending"`
	Failed       []struct {
		IssuanceID string `json:"issuance_id"`
		Error      string `json:"error"`
	} `json:"failed"`
	Error string `json:"error"`
}

func (c *cluster) revoke(tb testing.TB, node int, body string) (int, receiptJSON) {
	tb.Helper()
	status, raw := call(tb, "POST", c.nodes[node].URL+"/v1/admin/revoke", c.admin, "application/json", strings.NewReader(body))
	var rc receiptJSON
	if err := json.Unmarshal(raw, &rc); err != nil {
		tb.Fatalf("revoke answer is not JSON: %s", raw)
	}
	return status, rc
}

func (c *cluster) revocation(tb testing.TB, node int, id string) receiptJSON {
	tb.Helper()
	status, raw := call(tb, "GET", c.nodes[node].URL+"/v1/admin/revocations/"+id, c.admin, "", nil)
	var rc receiptJSON
	if status != 200 || json.Unmarshal(raw, &rc) != nil {
		tb.Fatalf("GET revocation on node %d = %d %s", node, status, raw)
	}
	return rc
}

// until polls cond every 20ms until it holds or timeout passes.
func until(tb testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	tb.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		t := time.NewTimer(20 * time.Millisecond)
		<-t.C
	}
	return time.Since(start)
}

// auditTypes returns the types of the events of one audit file that name
// revocationID.
func auditTypes(tb testing.TB, path, revocationID string) []string {
	tb.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	var out []string
	for _, line := range bytes.Split(data, []byte("\n")) {
		var ev struct {
			Type         string `json:"type"`
			RevocationID string `json:"revocation_id"`
			Admin        string `json:"admin"`
		}
		if json.Unmarshal(line, &ev) == nil && ev.RevocationID == revocationID {
			out = append(out, ev.Type+"@"+ev.Admin)
		}
	}
	return out
}

const (
	nodeA = 0
	nodeB = 1
	nodeC = 2
)

func TestRevokeAcrossInstances(t *testing.T) {
	c := startCluster(t, 3)
	const payments, batch = "system:serviceaccount:payments:api", "system:serviceaccount:data:batch"

	// Credentials issued through A.
	var creds []credential
	for _, session := range []string{"pod-1", "pod-2"} {
		status, cr := c.exchange(t, nodeA, payments, session, "payments-vault")
		if status != 200 {
			t.Fatalf("exchange on A = %d %+v", status, cr)
		}
		creds = append(creds, cr)
	}
	status, px := c.exchange(t, nodeA, payments, "pod-1", "pay-proxy")
	if status != 200 || !strings.HasPrefix(px.AccessToken, "ktp_") {
		t.Fatalf("proxy credential from A = %d %+v", status, px)
	}
	if got := c.proxyStatus(t, nodeC, px.AccessToken); got != 200 {
		t.Fatalf("proxied call on C with a fresh credential = %d, want 200", got)
	}
	status, other := c.exchange(t, nodeA, batch, "job-1", "batch-vault")
	if status != 200 {
		t.Fatalf("exchange batch on A = %d %+v", status, other)
	}
	for _, cr := range creds {
		if !c.vaultValid(t, cr.AccessToken) || !c.active(t, nodeC, cr.AccessToken) {
			t.Fatalf("fresh credential %s not valid in Vault or not active on C", cr.IssuanceID)
		}
	}

	t.Run("ok/revoke-workload-with-block-through-B", func(t *testing.T) {
		status, rc := c.revoke(t, nodeB, `{"workload":"payments-api","reason":"INC-1: key leaked","block":true}`)
		receipt := time.Now()
		want := []string{creds[0].IssuanceID, creds[1].IssuanceID, px.IssuanceID}
		slices.Sort(want)
		got := slices.Clone(rc.Revoked)
		slices.Sort(got)
		if status != 200 || rc.Status != "revoked" || rc.Matched != 3 || !slices.Equal(got, want) || len(rc.Pending) != 0 {
			t.Fatalf("revoke on B = %d %+v; want 200 revoked %v", status, rc, want)
		}
		// Within one second of the receipt (SPEC "Scale-out"): Vault refuses
		// the tokens, introspection on C and A says inactive, and proxied
		// calls are refused. Each check is polled until it holds or the
		// second is over.
		deadline := receipt.Add(time.Second)
		within := func(what string, cond func() bool) {
			t.Helper()
			for !cond() {
				if time.Now().After(deadline) {
					t.Errorf("%s: not within 1s of the receipt", what)
					return
				}
				<-time.After(10 * time.Millisecond)
			}
		}
		for _, cr := range creds {
			within("Vault refuses "+cr.IssuanceID, func() bool { return !c.vaultValid(t, cr.AccessToken) })
			for _, node := range []int{nodeC, nodeA} {
				within(fmt.Sprintf("introspection on node %d says %s inactive", node, cr.IssuanceID),
					func() bool { return !c.active(t, node, cr.AccessToken) })
			}
		}
		for _, node := range []int{nodeC, nodeA} {
			within(fmt.Sprintf("proxied call on node %d refused", node), func() bool { return c.proxyStatus(t, node, px.AccessToken) == 403 })
		}
		// Once refused, refused for good: no further request reaches the upstream.
		c.upstreamMu.Lock()
		before := c.upstreamAuth["Bearer sk_test_upstream"]
		c.upstreamMu.Unlock()
		for _, node := range []int{nodeC, nodeA} {
			if got := c.proxyStatus(t, node, px.AccessToken); got != 403 {
				t.Errorf("proxied call on node %d with the revoked credential = %d, want 403", node, got)
			}
		}
		c.upstreamMu.Lock()
		after := c.upstreamAuth["Bearer sk_test_upstream"]
		c.upstreamMu.Unlock()
		if after != before {
			t.Errorf("upstream saw %d more requests with the injected key after the revocation took effect", after-before)
		}
		t.Logf("every check refused within %s of the receipt", time.Since(receipt).Round(time.Millisecond))
		// Blocked: no new credential on A (or C); the other workload unaffected.
		for _, node := range []int{nodeA, nodeC} {
			if status, cr := c.exchange(t, node, payments, "pod-3", "payments-vault"); status != 403 || cr.Error != "access_denied" {
				t.Errorf("exchange on node %d while blocked = %d %+v, want 403 access_denied", node, status, cr)
			}
		}
		if !c.active(t, nodeC, other.AccessToken) || !c.vaultValid(t, other.AccessToken) {
			t.Errorf("the batch credential was revoked too")
		}
		// Audited on B, naming the admin.
		if diff := auditTypes(t, c.audits[nodeB], rc.RevocationID); !slices.Equal(diff, []string{
			"revoke@secops:alice", "block@secops:alice", "revoke_result@secops:alice",
		}) {
			t.Errorf("B's audit events for %s = %v", rc.RevocationID, diff)
		}
	})

	t.Run("ok/C-killed-and-restarted-still-denies", func(t *testing.T) {
		c.nodes[nodeC].Kill()
		c.nodes[nodeC].Restart()
		if c.active(t, nodeC, creds[0].AccessToken) {
			t.Errorf("restarted C says a revoked credential is active")
		}
		if got := c.proxyStatus(t, nodeC, px.AccessToken); got != 403 {
			t.Errorf("proxied call on restarted C with the revoked credential = %d, want 403", got)
		}
		if status, cr := c.exchange(t, nodeC, payments, "pod-4", "payments-vault"); status != 403 {
			t.Errorf("exchange on restarted C = %d %+v, want 403", status, cr)
		}
	})

	t.Run("ok/redis-restarted-still-denies", func(t *testing.T) {
		c.redis.Restart() // AOF with appendfsync always
		until(t, 10*time.Second, "instances to reach Redis again", func() bool {
			_, err := c.tryActive(nodeC, creds[1].AccessToken)
			return err == nil
		})
		if c.active(t, nodeC, creds[1].AccessToken) {
			t.Errorf("after a Redis restart C says a revoked credential is active")
		}
		if status, cr := c.exchange(t, nodeA, payments, "pod-6", "payments-vault"); status != 403 {
			t.Errorf("exchange on A after a Redis restart = %d %+v, want 403 (block kept)", status, cr)
		}
	})

	t.Run("ok/vault-down-pending-then-completes", func(t *testing.T) {
		status, cr := c.exchange(t, nodeA, batch, "job-2", "batch-vault")
		if status != 200 {
			t.Fatalf("exchange = %d %+v", status, cr)
		}
		c.relay.Cut()
		restored := false
		defer func() {
			if !restored {
				c.relay.Restore()
			}
		}()
		// Through the CLI this time: exit status 3 means pending.
		out, code := runCLI(t, c.nodes[nodeB].URL, c.admin, "revoke", "--issuance", cr.IssuanceID, "--reason", "vault outage drill", "--json")
		var rc receiptJSON
		if err := json.Unmarshal(out, &rc); err != nil || code != 3 || rc.Status != "pending" || !slices.Equal(rc.Pending, []string{cr.IssuanceID}) {
			t.Fatalf("keytrail revoke with Vault cut = exit %d %s; want exit 3, pending", code, out)
		}
		if len(rc.Failed) != 1 || strings.Contains(rc.Failed[0].Error, "127.0.0.1") {
			t.Errorf("failed = %+v; want one entry with a safe error text", rc.Failed)
		}
		// Refused by keytrail at once, everywhere, though Vault still knows it.
		if c.active(t, nodeC, cr.AccessToken) {
			t.Errorf("pending revocation: introspection on C says active")
		}
		if !c.vaultValid(t, cr.AccessToken) {
			t.Fatalf("the relay cut did not keep keytrail from Vault")
		}
		until(t, 10*time.Second, "keytrail_revocations_pending 1 on A", func() bool {
			return strings.Contains(metrics(t, c.nodes[nodeA].URL), "keytrail_revocations_pending 1")
		})
		c.relay.Restore()
		restored = true
		took := until(t, 90*time.Second, "the pending revocation to complete", func() bool {
			return c.revocation(t, nodeC, rc.RevocationID).Status == "revoked"
		})
		t.Logf("pending revocation completed %s after Vault came back", took.Round(time.Millisecond))
		if c.vaultValid(t, cr.AccessToken) {
			t.Errorf("completed revocation, but the Vault token still passes lookup-self")
		}
		until(t, 10*time.Second, "keytrail_revocations_pending 0 on A", func() bool {
			return strings.Contains(metrics(t, c.nodes[nodeA].URL), "keytrail_revocations_pending 0")
		})
		var results int
		for _, path := range c.audits {
			for _, ty := range auditTypes(t, path, rc.RevocationID) {
				if strings.HasPrefix(ty, "revoke_result") {
					results++
				}
			}
		}
		if results < 2 { // the 202 answer, then the worker's completion
			t.Errorf("revoke_result events for %s: %d, want the request's and the worker's", rc.RevocationID, results)
		}
	})

	t.Run("ok/unblock-reaches-every-instance", func(t *testing.T) {
		status, raw := call(t, "DELETE", c.nodes[nodeA].URL+"/v1/admin/blocks/payments-api?reason=resolved", c.admin, "", nil)
		if status != 200 {
			t.Fatalf("DELETE block on A = %d %s", status, raw)
		}
		// The cache of C forgets the block on the notice, at the latest at
		// its next refresh.
		until(t, 2*time.Second, "exchange on C after unblock", func() bool {
			status, _ := c.exchange(t, nodeC, payments, "pod-5", "payments-vault")
			return status == 200
		})
		status, raw = call(t, "GET", c.nodes[nodeC].URL+"/v1/admin/blocks", c.admin, "", nil)
		if status != 200 || !bytes.Contains(raw, []byte(`"blocks":[]`)) {
			t.Errorf("GET blocks on C = %d %s, want none", status, raw)
		}
	})
}

func metrics(tb testing.TB, base string) string {
	tb.Helper()
	_, raw := call(tb, "GET", base+"/metrics", "", "", nil)
	return string(raw)
}

// runCLI runs the keytrail binary with the admin token in the environment
// and returns its stdout and exit status.
func runCLI(tb testing.TB, addr, adminToken string, args ...string) ([]byte, int) {
	tb.Helper()
	cmd := exec.Command(harness.KeytrailBinary(tb), args...)
	cmd.Env = append(os.Environ(), "KEYTRAIL_ADDR="+addr, "KEYTRAIL_ADMIN_TOKEN="+adminToken, "KEYTRAIL_ADMIN_TOKEN_FILE=")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.Bytes(), 0
	case errors.As(err, &ee):
		if stderr.Len() > 0 {
			tb.Logf("keytrail %s stderr: %s", args[0], stderr.String())
		}
		return stdout.Bytes(), ee.ExitCode()
	default:
		tb.Fatalf("running keytrail: %v", err)
		return nil, -1
	}
}

// BenchmarkRevokePropagation performs 100 revocations per iteration through
// instance B, each of a credential issued through A, and measures the time
// from the receipt to the first rejection on A and on C (introspection) and
// in Vault (lookup-self). Not run by `go test` without -bench.
func BenchmarkRevokePropagation(b *testing.B) {
	c := startCluster(b, 3)
	const n = 100
	var mu sync.Mutex
	lat := map[string][]time.Duration{}
	record := func(name string, d time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		lat[name] = append(lat[name], d)
	}
	checks := []struct {
		name     string
		rejected func(token string) (bool, error)
	}{
		{"introspect-A", func(tok string) (bool, error) { ok, err := c.tryActive(nodeA, tok); return !ok, err }},
		{"introspect-C", func(tok string) (bool, error) { ok, err := c.tryActive(nodeC, tok); return !ok, err }},
		{"vault-lookup-self", func(tok string) (bool, error) { ok, err := c.tryVaultValid(tok); return !ok, err }},
	}
	for range b.N {
		b.StopTimer()
		creds := make([]credential, n)
		for i := range creds {
			status, cr := c.exchange(b, nodeA, "system:serviceaccount:data:batch", fmt.Sprintf("bench-%d", i), "batch-vault")
			if status != 200 {
				b.Fatalf("exchange = %d %+v", status, cr)
			}
			creds[i] = cr
		}
		b.StartTimer()
		for _, cr := range creds {
			start := time.Now()
			status, rc := c.revoke(b, nodeB, fmt.Sprintf(`{"issuance_id":%q,"reason":"bench"}`, cr.IssuanceID))
			t0 := time.Now()
			if status != 200 || rc.Status != "revoked" {
				b.Fatalf("revoke = %d %+v", status, rc)
			}
			record("revoke-request", t0.Sub(start))
			var wg sync.WaitGroup
			for _, ch := range checks {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						rejected, err := ch.rejected(cr.AccessToken)
						if err != nil || time.Since(t0) > 10*time.Second {
							b.Errorf("%s: %v (after %s)", ch.name, err, time.Since(t0))
							return
						}
						if rejected {
							record(ch.name, time.Since(t0))
							return
						}
					}
				}()
			}
			wg.Wait()
		}
	}
	b.StopTimer()
	for _, name := range []string{"revoke-request", "introspect-A", "introspect-C", "vault-lookup-self"} {
		ds := lat[name]
		if len(ds) == 0 {
			continue
		}
		slices.Sort(ds)
		p := func(q float64) time.Duration { return ds[max(0, int(math.Ceil(q*float64(len(ds))))-1)] } // nearest rank
		fmt.Printf("%-18s n=%d p50=%s p99=%s max=%s\n", name, len(ds),
			p(0.50).Round(time.Microsecond), p(0.99).Round(time.Microsecond), ds[len(ds)-1].Round(time.Microsecond))
		b.ReportMetric(float64(p(0.99).Microseconds())/1000, name+"-p99-ms")
	}
}
