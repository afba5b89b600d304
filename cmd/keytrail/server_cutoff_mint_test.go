package main

import (
	"context"
	"encoding/json"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestMintCutOffAtShutdownKeepsItsAuditTrail: a handler cut off at
// shutdown_timeout got 5 s more before the audit log closed, while its
// mint may take vault.timeout (here 20 s) and its issue event 10 s more. A
// Vault that signs a JWT in 7 s, the shutdown begun during the sign: the
// credential was made after the audit log had closed, with neither its
// issue event nor an event saying it was withdrawn. Now the shutdown
// waits for it: the issue event, then (its caller gone) orphan_revoked,
// reason client_gone, and the request's deny (499) are in the log before
// it closes. Real Vault behind a proxy that delays the signs once told to.
func TestMintCutOffAtShutdownKeepsItsAuditTrail(t *testing.T) {
	vp := harness.StartVault(t)
	const delay = 7 * time.Second // a slow Vault: past the old 5 s grace, within vault.timeout
	px := startGatedVaultOn(t, vp, isTransitSign, delay)

	iss, dir, polFile := ordersJWTPolicy(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs brokertest.SyncBuffer
	readyc, errc := goServerLog(t, ctx, &logs, dir, polFile, px.URL, vp.RootToken, func(c *Config) {
		c.Vault.Timeout = duration(20 * time.Second)
		c.ShutdownTimeout = duration(500 * time.Millisecond)
		c.Log.Level = "info"
	})
	base := "http://" + awaitServing(t, readyc, errc)
	exchange := func() (*http.Response, error) {
		tok, err := iss.Token("system:serviceaccount:payments:api", "keytrail", time.Now(), 10*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return http.PostForm(base+"/v1/token", url.Values{"grant_type": {"urn:ietf:params:oauth:grant-type:token-exchange"},
			"subject_token": {tok}, "subject_token_type": {"urn:ietf:params:oauth:token-type:jwt"}, "audience": {"orders-jwt"}})
	}
	resp, err := exchange()
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("exchange with a fast Vault = %d, want 200", resp.StatusCode)
	}

	px.hold.Store(true)
	go func() {
		if resp, err := exchange(); err == nil { // cut off: no answer
			resp.Body.Close()
		}
	}()
	select {
	case <-px.arrived: // the mint is in flight
	case err := <-errc:
		t.Fatalf("server ended: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the exchange never asked Vault to sign")
	}
	cancel() // SIGTERM: the exchange is cut off after shutdown_timeout
	select {
	case err := <-errc:
		if err == nil || !strings.Contains(err.Error(), "shutdown incomplete") {
			t.Errorf("runServer() = %v, want the shutdown incomplete (a request was cut off)", err)
		}
	case <-time.After(3 * time.Minute):
		t.Fatalf("runServer did not return\n%s", logs.String())
	}

	raw, err := os.ReadFile(filepath.Join(dir, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var issued []string
	byIssuance := map[string][]map[string]any{}
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		var ev map[string]any
		if err := json.Unmarshal([]byte(line), &ev); err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		id, _ := ev["issuance_id"].(string)
		if id == "" {
			continue
		}
		if ev["type"] == "issue" {
			issued = append(issued, id)
		}
		byIssuance[id] = append(byIssuance[id], ev)
	}
	if len(issued) != 2 {
		t.Fatalf("audit log has %d issue events, want 2 (the credential minted during the shutdown has none)\n%s\n%s", len(issued), raw, logs.String())
	}
	var types []string
	for _, ev := range byIssuance[issued[1]] {
		typ, _ := ev["type"].(string)
		if typ == "orphan_revoked" && ev["reason"] != "client_gone" {
			t.Errorf("orphan_revoked event with reason %v, want client_gone", ev["reason"])
		}
		if typ == "deny" {
			if out, _ := ev["outcome"].(map[string]any); out == nil || out["status"] != float64(499) {
				t.Errorf("deny event outcome %v, want status 499", ev["outcome"])
			}
		}
		types = append(types, typ)
	}
	if got := strings.Join(types, ","); got != "issue,orphan_revoked,deny" {
		t.Errorf("events of the credential minted during the shutdown: %s, want issue,orphan_revoked,deny\n%s", got, raw)
	}
}

// TestCutOffGrace: the wait for handlers cut off at shutdown_timeout
// covers an exchange cut off in its mint to its end (mint, issue event,
// revocation, mark, orphan_revoked and deny events), for the mint timeout
// vault.timeout sets: 42 s by default (docs/deploy's manifests leave room
// for it).
func TestCutOffGrace(t *testing.T) {
	for _, tc := range []struct {
		vault time.Duration
		want  time.Duration
	}{
		{5 * time.Second, 42 * time.Second},
		{20 * time.Second, 72 * time.Second},
		{5 * time.Minute, 2*maxMintTimeout + 32*time.Second},
	} {
		if got := cutOffGrace(mintTimeout(tc.vault)); got != tc.want {
			t.Errorf("cutOffGrace(mintTimeout(%v)) = %v, want %v", tc.vault, got, tc.want)
		}
	}
}
