package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestServerLogsVaultWarnings: a vault_token grant naming a Vault policy
// that does not exist mints tokens Vault answers 403 to everywhere; Vault
// says so only in a warning on the token create. The server must hand the
// minters its own logger, so the warning reaches the configured log
// (format and destination) with the grant named, not the process's
// default logger. Real Vault.
func TestServerLogsVaultWarnings(t *testing.T) {
	vp := harness.StartVault(t)
	iss, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	issSrv := httptest.NewServer(iss.Handler())
	defer issSrv.Close()
	iss.URL = issSrv.URL
	dir := t.TempDir()
	polFile := filepath.Join(dir, "policy.yaml")
	p := strings.NewReplacer("{ISS}", issSrv.URL, "{GRANTS}", "payments-vault").Replace(reloadPolicyHead) + `grants:
  - name: payments-vault
    kind: vault_token
    ttl: 5m
    vault_token: {policies: [payments-raed]}
`
	if err := os.WriteFile(polFile, []byte(p), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var log serverLog
	readyc, errc := goServerLog(t, ctx, &log, dir, polFile, vp.Addr, vp.RootToken, func(c *Config) {
		c.Log = LogConfig{Level: "warn", Format: "json"}
	})
	var base string
	select {
	case a := <-readyc:
		base = "http://" + a
	case err := <-errc:
		t.Fatalf("server: %v\n%s", err, log.String())
	case <-time.After(60 * time.Second):
		t.Fatalf("server did not start\n%s", log.String())
	}
	defer func() { cancel(); <-errc }()

	tok, err := iss.Token("system:serviceaccount:payments:api", "keytrail", time.Now(), 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.PostForm(base+"/v1/token", url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"},
		"subject_token": {tok}, "subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"}, "audience": {"payments-vault"}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("exchange = %d, want 200 (Vault mints with a missing policy, warning only)", resp.StatusCode)
	}
	var line string
	for _, l := range strings.Split(log.String(), "\n") {
		if strings.Contains(l, `does not exist`) {
			line = l
			break
		}
	}
	if line == "" {
		t.Fatalf("the server's log has no line with Vault's warning `Policy \"payments-raed\" does not exist`:\n%s", log.String())
	}
	if !strings.HasPrefix(line, "{") || !strings.Contains(line, `"grant":"payments-vault"`) || !strings.Contains(line, "payments-raed") {
		t.Errorf("warning line = %s, want a JSON line naming grant payments-vault and the policy", line)
	}
}
