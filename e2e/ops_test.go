package e2e

import (
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/keytrail/keytrail/e2e/harness"
)

func metricsText(t *testing.T, base string) string {
	t.Helper()
	resp, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// metricValue returns the value of the first sample whose line starts with
// prefix (name plus labels), or -1.
func metricValue(text, prefix string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// TestOperations: metrics move after traffic, a bad policy reload keeps the
// old policy (and a good one is picked up from the file without a signal),
// readiness turns 503 when Vault stops, and SIGTERM exits 0 with the audit
// log flushed and ending in a signed checkpoint.
func TestOperations(t *testing.T) {
	env := startStack(t, stackOptions{checkpointKey: true})
	tok := env.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments"})

	t.Run("ok/metrics-move", func(t *testing.T) {
		before := metricsText(t, env.brokerURL)
		env.issue(t, tok, "payments-vault", nil)
		env.exchange(t, "garbage", "payments-vault", nil)
		after := metricsText(t, env.brokerURL)
		for _, m := range []string{
			`keytrail_exchanges_total{grant="payments-vault",kind="vault_token",outcome="ok"}`,
			`keytrail_exchanges_total{grant="payments-vault",kind="vault_token",outcome="invalid_grant"}`,
			`keytrail_audit_events_total`,
			`keytrail_audit_writes_total`,
			`keytrail_audit_write_duration_seconds_count`,
			`keytrail_audit_sync_duration_seconds_count`,
			`keytrail_exchange_duration_seconds_count{outcome="ok"}`,
		} {
			if b, a := metricValue(before, m), metricValue(after, m); a <= b {
				t.Errorf("%s did not move: %v -> %v", m, b, a)
			}
		}
		for _, m := range []string{`keytrail_jwks_fetches_total{issuer="test",outcome="ok"} 1`, `keytrail_audit_healthy 1`, `keytrail_revocations_pending 0`} {
			if !strings.Contains(after, m) {
				t.Errorf("metrics lack %q", m)
			}
		}
		if v := metricValue(after, "keytrail_clock_skew_seconds "); v == -1 || v > 2 || v < -2 {
			t.Errorf("keytrail_clock_skew_seconds = %v, want a measurement within 2 s (same machine)", v)
		}
		if !regexp.MustCompile(`keytrail_policy_info\{hash="[0-9a-f]{64}"\} 1`).MatchString(after) {
			t.Errorf("no keytrail_policy_info with the policy hash")
		}
	})

	t.Run("ok/bad-reload-keeps-old-policy", func(t *testing.T) {
		extra := filepath.Join(env.policyDir, "extra.yaml")
		if err := os.WriteFile(extra, []byte("version: 1\nworkloads:\n  - name: broken\n    match: {issuer: nope}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := env.broker.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 10*time.Second, "a failed policy_load event", func() bool {
			for _, ev := range readAudit(t, env.auditPath) {
				if ev.Type == "policy_load" && ev.Outcome != nil && ev.Outcome.Status == 400 &&
					strings.Contains(ev.Outcome.Reason, "extra.yaml") && strings.Contains(ev.Outcome.Reason, "workloads[0].owner") {
					return true
				}
			}
			return false
		})
		if st, b, _ := env.exchange(t, tok, "payments-vault", nil); st != 200 {
			t.Fatalf("exchange after a bad reload = %d %s; the old policy must stay", st, b)
		}
		if !strings.Contains(env.broker.Logs(), "workloads[0].owner") {
			t.Errorf("the log does not name the file and field of the bad policy")
		}
		// A good change is picked up from the file, without a signal.
		good := "version: 1\nworkloads:\n  - name: late\n    owner: team-late\n    match: {issuer: test, subject: late}\n    grants: [deploy-vault]\n"
		if err := os.WriteFile(extra, []byte(good), 0o600); err != nil {
			t.Fatal(err)
		}
		lateTok := env.issuer.token(t, "late", nil)
		waitFor(t, 15*time.Second, "the file watcher to load the new workload", func() bool {
			st, _, _ := env.exchange(t, lateTok, "deploy-vault", nil)
			return st == 200
		})
		m := metricsText(t, env.brokerURL)
		if metricValue(m, `keytrail_policy_reloads_total{outcome="error"}`) < 1 || metricValue(m, `keytrail_policy_reloads_total{outcome="ok"}`) < 1 {
			t.Errorf("policy reload metrics do not show the error and the success")
		}
	})

	t.Run("fail/readiness-turns-503-when-vault-stops", func(t *testing.T) {
		get := func() int {
			resp, err := http.Get(env.brokerURL + "/readyz")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			return resp.StatusCode
		}
		if got := get(); got != 200 {
			t.Fatalf("readyz = %d before stopping Vault", got)
		}
		env.vault.Stop()
		waitFor(t, 10*time.Second, "readyz 503", func() bool { return get() == 503 })
		resp, err := http.Get(env.brokerURL + "/healthz")
		if err != nil || resp.StatusCode != 200 {
			t.Errorf("healthz = %v, %v; liveness must not depend on Vault", resp, err)
		}
	})

	t.Run("ok/sigterm-flushes-and-checkpoints", func(t *testing.T) {
		if err := env.broker.Stop(); err != nil {
			t.Fatalf("keytrail exit after SIGTERM = %v, want 0\n%s", err, env.broker.Logs())
		}
		evs := readAudit(t, env.auditPath)
		if last := evs[len(evs)-1]; last.Type != "checkpoint" {
			t.Errorf("last audit line after shutdown is %q, want checkpoint", last.Type)
		}
		out, err := exec.Command(harness.KeytrailBinary(t), "audit", "verify", "--require-checkpoint", "--key", env.checkpointPub, env.auditPath).CombinedOutput()
		if err != nil {
			t.Errorf("audit verify --require-checkpoint after shutdown: %v\n%s", err, out)
		}
	})
}
