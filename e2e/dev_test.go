package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/e2e/harness"
)

// TestDevOnce runs the README's first command the way a new user would (as
// a process, with the real Vault dev server), in --once mode: the demo
// workload must get a credential and the audit trail must verify. Vault is
// named the way a user in the repository would name it, relative to the
// working directory (--vault-bin bin/vault), which the server's own working
// directory (under --dir) must not change.
func TestDevOnce(t *testing.T) {
	bin := harness.KeytrailBinary(t)
	vault := harness.VaultBinary(t)
	root, err := harness.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	relVault, err := filepath.Rel(root, vault)
	if err != nil || filepath.IsAbs(relVault) {
		t.Fatalf("vault binary %s is not below the repository %s: %v", vault, root, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	cmd := exec.CommandContext(ctx, bin, "dev", "--once", "--dir", dir,
		"--vault-bin", relVault,
		"--listen", fmt.Sprintf("127.0.0.1:%d", harness.FreePort(t)))
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("keytrail dev --once: %v\n%s", err, out)
	}
	for _, re := range []string{
		`issuance   iss_[0-9A-Z]{26}`,
		`workload   payments-api \(owner team-payments\)`,
		`kind       vault_token, expires in 900s`,
		`audit log verified: \d+ lines, 1 chain\(s\), every line covered by a signed checkpoint`,
		`curl -s http://127\.0\.0\.1:\d+/v1/token`,
		// The admin commands: dev printed none, nor where its admin's
		// token is, so a new user could not try trace, report or revoke.
		`export KEYTRAIL_ADDR=http://127\.0\.0\.1:\d+ KEYTRAIL_ADMIN_TOKEN_FILE=\S+/tokens/secops\.jwt\n`,
		`go run \./cmd/keytrail trace iss_[0-9A-Z]{26}\n`,
		`go run \./cmd/keytrail revoke --session ses_[a-z0-9]+ --reason`,
	} {
		if !regexp.MustCompile(re).Match(out) {
			t.Errorf("dev output lacks %s:\n%s", re, out)
		}
	}
	if m := regexp.MustCompile(`\{[A-Z]+\}`).Find(out); m != nil {
		t.Errorf("dev output keeps the placeholder %s", m)
	}
	if strings.Contains(string(out), "eyJ") {
		t.Errorf("dev output prints a JWT")
	}
}
