package e2e

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/trace"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestTraceAgainstRealVault: a token minted by keytrail is used against a
// real Vault with a file audit device; `keytrail trace --vault-audit-log`
// attributes Vault's entries to the issuance; an offline trace over a copy
// of keytrail's audit log gives the same answer as the online API.
func TestTraceAgainstRealVault(t *testing.T) {
	env := startStack(t, stackOptions{})
	bin := harness.KeytrailBinary(t)
	admin := env.issuer.token(t, "alice", map[string]any{"groups": "secops"})

	// Mint, use against Vault, and introspect once (a use keytrail sees).
	wl := env.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments", "session": "pod-trace"})
	res := env.issue(t, wl, "payments-vault", nil)
	_, self := env.vaultAs(t, res.AccessToken, "the minted token")
	accessor, _ := self.Data["accessor"].(string)
	form := url.Values{"token": {res.AccessToken}}
	req, _ := http.NewRequest("POST", env.brokerURL+"/v1/introspect", strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Authorization", "Bearer "+wl)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("introspect = %v %v", resp, err)
	}
	resp.Body.Close()
	// A token keytrail did not mint, used once: an attribution gap.
	legacy, err := env.vault.Client.Auth().Token().CreateWithContext(context.Background(), &vaultapi.TokenCreateRequest{DisplayName: "legacy-batch", Policies: []string{"default"}})
	if err != nil {
		t.Fatal(err)
	}
	lc, _ := env.vault.Client.Clone()
	lc.SetToken(legacy.Auth.ClientToken)
	if _, err := lc.Auth().Token().LookupSelfWithContext(context.Background()); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "vault audit entry with issuance_id", func() bool {
		return vaultAuditHasIssuance(t, env.vault.AuditLogPath, res.IssuanceID)
	})

	// A copy of keytrail's audit log, as an auditor would take it.
	copyPath := filepath.Join(t.TempDir(), "audit-copy.jsonl")
	data, err := os.ReadFile(env.auditPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(copyPath, data, 0o600); err != nil {
		t.Fatal(err)
	}

	t.Run("ok/vault-audit-log-attributed", func(t *testing.T) {
		out := runKeytrail(t, bin, nil, "trace", "--vault-audit-log", env.vault.AuditLogPath, "--audit-log", copyPath, "--json")
		var rep trace.VaultReport
		if err := json.Unmarshal(out, &rep); err != nil {
			t.Fatalf("trace --vault-audit-log --json: %v\n%s", err, out)
		}
		var found *trace.Attribution
		for i, a := range rep.Attributions {
			if a.IssuanceID == res.IssuanceID {
				found = &rep.Attributions[i]
			}
		}
		if found == nil {
			t.Fatalf("no attribution for %s in %+v", res.IssuanceID, rep)
		}
		want := trace.Attribution{IssuanceID: res.IssuanceID, Workload: "payments-api", Owner: "team-payments", SessionID: res.SessionID,
			Grant: "payments-vault", By: "metadata", Requests: 1, Paths: []string{"read auth/token/lookup-self"}}
		if diff := cmp.Diff(want, *found, cmpopts.IgnoreFields(trace.Attribution{}, "First", "Last")); diff != "" {
			t.Errorf("attribution = got, want want (-want +got):\n%s", diff)
		}
		var gaps []string
		for _, g := range rep.Gaps {
			gaps = append(gaps, g.DisplayName+" "+g.Accessor+" "+g.Reason+" "+strings.Join(g.Paths, ";"))
		}
		wantGaps := []string{"token-legacy-batch " + legacy.Auth.Accessor + " not_keytrail read auth/token/lookup-self"}
		if diff := cmp.Diff(wantGaps, gaps); diff != "" {
			t.Errorf("attribution gaps = got, want want (-want +got):\n%s", diff)
		}
		if rep.Root == 0 {
			t.Errorf("no root-token requests counted; the broker's own Vault calls should be (root token in this stack): %+v", rep)
		}
		// The text form says the same to a person.
		txt := string(runKeytrail(t, bin, nil, "trace", "--vault-audit-log", env.vault.AuditLogPath, "--audit-log", copyPath))
		if !strings.Contains(txt, res.IssuanceID) || !strings.Contains(txt, "payments-api") {
			t.Errorf("trace --vault-audit-log text output lacks the issuance:\n%s", txt)
		}
	})

	var offline trace.Result
	t.Run("ok/offline-by-raw-token-and-accessor", func(t *testing.T) {
		out := runKeytrail(t, bin, nil, "trace", res.AccessToken, "--audit-log", copyPath, "--vault-audit-log", env.vault.AuditLogPath, "--json")
		if strings.Contains(string(out), res.AccessToken) {
			t.Fatal("trace output contains the raw token")
		}
		if err := json.Unmarshal(out, &offline); err != nil {
			t.Fatalf("trace --json: %v\n%s", err, out)
		}
		if offline.Issuance.ID != res.IssuanceID || offline.Query.Kind != trace.KindCredential || offline.Issuance.Refs.Accessor != accessor ||
			len(offline.Uses) != 1 || offline.Uses[0].Type != "introspect" || len(offline.Vault) != 1 || offline.Vault[0].Path != "auth/token/lookup-self" {
			t.Errorf("offline trace = %+v", offline)
		}
		byAccessor := runKeytrail(t, bin, nil, "trace", accessor, "--audit-log", copyPath)
		for _, s := range []string{"issuance " + res.IssuanceID, "matched accessor", "team-payments", res.SessionID, "introspect"} {
			if !strings.Contains(string(byAccessor), s) {
				t.Errorf("trace %s output lacks %q:\n%s", "ACCESSOR", s, byAccessor)
			}
		}
		offline.Vault, offline.VaultTotal, offline.VaultDropped = nil, nil, 0 // what only --vault-audit-log gives
	})

	t.Run("ok/online-equals-offline", func(t *testing.T) {
		for _, q := range []string{res.IssuanceID, res.AccessToken, accessor} {
			status, raw := traceGet(t, env.brokerURL+"/v1/admin/trace?q="+url.QueryEscape(q), admin)
			if status != 200 {
				t.Fatalf("GET /v1/admin/trace = %d %s", status, raw)
			}
			if strings.Contains(string(raw), res.AccessToken) {
				t.Fatal("the online answer contains the raw token")
			}
			var online trace.Result
			mustJSON(t, raw, &online)
			want := offline
			if q != res.AccessToken {
				want.Query = online.Query // the same issuance, matched another way
			}
			// The store adds what the audit event does not carry: the
			// identity claims the workload match used.
			if online.From != trace.FromBoth || online.Issuance.Claims["namespace"] != "payments" {
				t.Errorf("online trace from %q with claims %v, want audit log + store with the claims used", online.From, online.Issuance.Claims)
			}
			if diff := cmp.Diff(want, online, cmpopts.IgnoreFields(trace.Result{}, "From"), cmpopts.IgnoreFields(broker.Issuance{}, "Claims")); diff != "" {
				t.Errorf("trace %s: offline and online differ (-offline +online):\n%s", q, diff)
			}
		}
		// The CLI online (token from the environment) prints the same issuance.
		out := runKeytrail(t, bin, []string{"KEYTRAIL_ADDR=" + env.brokerURL, "KEYTRAIL_ADMIN_TOKEN=" + admin}, "trace", res.AccessToken, "--json")
		var viaCLI trace.Result
		mustJSON(t, out, &viaCLI)
		if viaCLI.Issuance.ID != res.IssuanceID || len(viaCLI.Uses) != 1 {
			t.Errorf("keytrail trace (online) = %+v", viaCLI)
		}
		status, raw := traceGet(t, env.brokerURL+"/v1/admin/trace?q="+res.IssuanceID, env.issuer.token(t, "mallory", nil))
		if status != 403 {
			t.Errorf("trace by a non-admin = %d %s, want 403", status, raw)
		}
	})

	t.Run("ok/report-online", func(t *testing.T) {
		status, raw := traceGet(t, env.brokerURL+"/v1/admin/report", admin)
		if status != 200 {
			t.Fatalf("GET /v1/admin/report = %d %s", status, raw)
		}
		var rep trace.Report
		mustJSON(t, raw, &rep)
		var got *trace.WorkloadReport
		for i := range rep.Workloads {
			if rep.Workloads[i].Name == "payments-api" {
				got = &rep.Workloads[i]
			}
		}
		if got == nil || got.Owner != "team-payments" || got.Active < 1 || got.Issued < 1 || rep.ActiveFrom != trace.FromStore {
			t.Errorf("report payments-api = %+v (active from %s)", got, rep.ActiveFrom)
		}
		html := runKeytrail(t, bin, []string{"KEYTRAIL_ADDR=" + env.brokerURL, "KEYTRAIL_ADMIN_TOKEN=" + admin}, "report", "--format", "html")
		if !strings.Contains(string(html), "<h1>keytrail report</h1>") || !strings.Contains(string(html), "payments-api") {
			t.Errorf("keytrail report --format html (online) printed %d bytes without the workload", len(html))
		}
	})
}

// runKeytrail runs the keytrail binary and returns its standard output,
// failing the test on a non-zero exit.
func runKeytrail(t *testing.T, bin string, env []string, args ...string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Env = append(os.Environ(), env...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("keytrail %s: %v\n%s\n%s", args[0], err, out, stderr.String())
	}
	return out
}

func traceGet(t *testing.T, u, token string) (int, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", u, nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, b
}
