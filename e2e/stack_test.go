// Package e2e holds keytrail's black-box tests: real keytrail processes, a
// real Vault dev server, real Redis (and PostgreSQL where a grant needs it),
// driven over HTTP with identity tokens from a test issuer the tests serve
// themselves. Nothing here is mocked; a service that cannot start fails the
// test.
package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/e2e/harness"
)

type stackOptions struct {
	redisURL string
	// extraPolicy is a second policy file (the policy is a directory), for
	// grants that need values known only at run time.
	extraPolicy string
	// checkpointKey signs audit checkpoints with a fresh Ed25519 key whose
	// public half is written to stack.checkpointPub.
	checkpointKey bool
	// checkpointTransitKey signs audit checkpoints with this Vault transit
	// key (audit.checkpoint_transit_key).
	checkpointTransitKey string
}

type stack struct {
	vault     *harness.Vault
	issuer    *testIssuer
	broker    *harness.Keytrail
	brokerURL string
	auditPath string
	dir       string
	// checkpointPub is the PEM public key of the audit checkpoint signer.
	checkpointPub string
	// policyDir holds base.yaml and extra.yaml.
	policyDir string
}

type testIssuer struct {
	*authntest.Issuer
	url string
}

// token signs a one-hour identity token for sub with extra claims.
func (i *testIssuer) token(t *testing.T, sub string, extra map[string]any) string {
	t.Helper()
	now := time.Now()
	c := jwt.MapClaims{"sub": sub, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
	for k, v := range extra {
		c[k] = v
	}
	return i.tokenWith(t, c)
}

func (i *testIssuer) tokenWith(t *testing.T, c jwt.MapClaims) string {
	t.Helper()
	if _, ok := c["iss"]; !ok {
		c["iss"] = i.url
	}
	if _, ok := c["aud"]; !ok {
		c["aud"] = "keytrail"
	}
	tok, err := i.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

const e2ePolicy = `version: 1
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
    match:
      issuer: test
      subject: system:serviceaccount:payments:api
      claims: {namespace: payments}
    grants: [payments-vault, orders-jwt]
    rate: {per_second: 50, burst: 100}
  - name: ci-deploy
    owner: team-platform
    match: {issuer: test, subject_pattern: "repo:acme/deploy:.*"}
    grants: [deploy-vault]
grants:
  - name: payments-vault
    kind: vault_token
    ttl: 15m
    vault_token: {policies: [payments-read]}
  - name: deploy-vault
    kind: vault_token
    ttl: 10m
    vault_token: {policies: [deploy]}
  - name: orders-jwt
    kind: jwt
    ttl: 5m
    jwt: {audience: orders-api, transit_key: keytrail-signing}
admins:
  - name: secops
    match: {issuer: test, claims: {groups: secops}}
    roles: [revoke, trace, report]
`

// startStack starts Vault, a test issuer and one keytrail server.
func startStack(t *testing.T, o stackOptions) *stack {
	t.Helper()
	s := &stack{dir: t.TempDir()}
	s.vault = harness.StartVault(t)
	if err := s.vault.Client.Sys().PutPolicyWithContext(context.Background(), "payments-read",
		`path "secret/data/payments/*" { capabilities = ["read"] }`); err != nil {
		t.Fatalf("vault policy: %v", err)
	}

	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(iss.Handler())
	t.Cleanup(srv.Close)
	iss.URL = srv.URL
	s.issuer = &testIssuer{Issuer: iss, url: srv.URL}

	polPath := filepath.Join(s.dir, "policies")
	if err := os.MkdirAll(polPath, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(polPath, "base.yaml"), []byte(fmt.Sprintf(e2ePolicy, srv.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	if o.extraPolicy != "" {
		if err := os.WriteFile(filepath.Join(polPath, "extra.yaml"), []byte(o.extraPolicy), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	port := harness.FreePort(t)
	s.brokerURL = fmt.Sprintf("http://127.0.0.1:%d", port)
	s.auditPath = filepath.Join(s.dir, "audit.jsonl")
	cfg := fmt.Sprintf(`listen: 127.0.0.1:%d
public_url: %s
policy: %s
vault:
  address: %s
audit:
  file: %s
log: {level: debug}
`, port, s.brokerURL, polPath, s.vault.Addr, s.auditPath)
	if o.redisURL != "" {
		cfg += "store:\n  redis_url: " + o.redisURL + "\n"
	}
	if o.checkpointKey {
		keyPath, pubPath := writeEd25519Key(t, s.dir)
		s.checkpointPub = pubPath
		cfg = strings.Replace(cfg, "audit:\n", "audit:\n  checkpoint_key_file: "+keyPath+"\n", 1)
	}
	if o.checkpointTransitKey != "" {
		cfg = strings.Replace(cfg, "audit:\n", "audit:\n  checkpoint_transit_key: "+o.checkpointTransitKey+"\n", 1)
	}
	s.policyDir = polPath
	cfgPath := filepath.Join(s.dir, "config.yaml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	s.broker = harness.StartKeytrail(t, s.brokerURL, cfgPath, "VAULT_TOKEN="+s.vault.RootToken)
	return s
}

// exchange posts an RFC 8693 token exchange and returns status, body and headers.
func (s *stack) exchange(t *testing.T, subjectToken, grant string, extra url.Values) (int, []byte, http.Header) {
	t.Helper()
	form := url.Values{
		"grant_type":         {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token":      {subjectToken},
		"subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"},
		"audience":           {grant},
	}
	for k, v := range extra {
		form[k] = v
	}
	resp, err := http.Post(s.brokerURL+"/v1/token", "application/x-www-form-urlencoded", strings.NewReader(form.Encode()))
	if err != nil {
		t.Fatalf("POST /v1/token: %v", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, body, resp.Header
}

// issue makes the exchange of subjectToken for grant (with extra form
// fields) that must succeed: anything but a 200 fails the test, with the
// answer and the broker's log. It returns the decoded token response.
func (s *stack) issue(t *testing.T, subjectToken, grant string, extra url.Values) tokenResponse {
	t.Helper()
	status, body, _ := s.exchange(t, subjectToken, grant, extra)
	if status != 200 {
		what := grant
		if len(extra) > 0 {
			what += " (" + extra.Encode() + ")"
		}
		t.Fatalf("exchange %s = %d %s, want 200\n--- broker log ---\n%s", what, status, body, s.broker.Logs())
	}
	var res tokenResponse
	mustJSON(t, body, &res)
	return res
}

// vaultAs returns a client of the stack's Vault that uses token (one the
// broker handed out, which what names in a failure) and Vault's lookup-self
// of it.
func (s *stack) vaultAs(t *testing.T, token, what string) (*vaultapi.Client, *vaultapi.Secret) {
	t.Helper()
	vc, err := s.vault.Client.Clone()
	if err != nil {
		t.Fatal(err)
	}
	vc.SetToken(token)
	self, err := vc.Auth().Token().LookupSelfWithContext(context.Background())
	if err != nil {
		t.Fatalf("lookup-self with %s: %v", what, err)
	}
	return vc, self
}

// writeEd25519Key writes a PKCS#8 private key and a PKIX public key, as
// openssl genpkey -algorithm ed25519 and openssl pkey -pubout would.
func writeEd25519Key(t *testing.T, dir string) (keyPath, pubPath string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	keyPath, pubPath = filepath.Join(dir, "checkpoint.key"), filepath.Join(dir, "checkpoint.pub")
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(pubPath, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return keyPath, pubPath
}
