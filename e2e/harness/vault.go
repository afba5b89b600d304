package harness

// Vault for tests: the server is built and run by adapters/vault/devserver
// (shared with `keytrail dev`); this file ties it to a test's lifetime.

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/vault/devserver"
)

// Names of what the dev server is set up with.
const (
	VaultRootToken    = devserver.RootToken
	VaultTransitMount = devserver.TransitMount
	VaultSigningKey   = devserver.SigningKey
	VaultEd25519Key   = devserver.Ed25519Key
)

// VaultProcess is a running `vault server -dev` (see devserver.Process).
type VaultProcess = devserver.Process

// VaultOptions configure StartVaultProcess (see devserver.Options).
type VaultOptions = devserver.Options

// StartVaultProcess starts and sets up a dev server (see devserver.Start).
func StartVaultProcess(ctx context.Context, bin string, o VaultOptions) (*VaultProcess, error) {
	return devserver.Start(ctx, bin, o)
}

// BuildVault builds bin/vault when needed (see devserver.BuildVault).
func BuildVault(ctx context.Context, root string, progress io.Writer) (string, error) {
	return devserver.BuildVault(ctx, root, progress)
}

const vaultDefaultStartup = 60 * time.Second

// VaultBinary returns $KEYTRAIL_VAULT_BIN when it is set (as `keytrail dev`
// and `keytrail bench` do: a binary built elsewhere, used as it is), else
// the path of <repo root>/bin/vault, building it first when it is missing
// or older than e2e/vaultserver/go.sum (see BuildVault). The first build
// takes 10-20 minutes: run such a test with -timeout 30m, or build once
// beforehand. It fails the test when Vault cannot be had, or when
// $KEYTRAIL_VAULT_BIN names no executable file.
func VaultBinary(t testing.TB) string {
	t.Helper()
	root, err := devserver.RepoRoot()
	if err != nil {
		t.Fatalf("vault binary: %v", err)
	}
	if bin, err := vaultBinaryFromEnv(os.Getenv, root); err != nil {
		t.Fatalf("vault binary: %v", err)
	} else if bin != "" {
		return bin
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	bin, err := BuildVault(ctx, root, os.Stderr)
	if err != nil {
		t.Fatalf("vault binary: %v", err)
	}
	return bin
}

// vaultBinaryFromEnv returns $KEYTRAIL_VAULT_BIN, "" when it is not set,
// or an error when it names no executable regular file. A relative path is
// taken from the repository root (a test runs in its package's directory,
// but the variable is set where `go test ./...` is typed).
func vaultBinaryFromEnv(getenv func(string) string, root string) (string, error) {
	bin := getenv("KEYTRAIL_VAULT_BIN")
	if bin == "" {
		return "", nil
	}
	if !filepath.IsAbs(bin) {
		bin = filepath.Join(root, bin)
	}
	fi, err := os.Stat(bin)
	switch {
	case err != nil:
		return "", fmt.Errorf("KEYTRAIL_VAULT_BIN=%s: %w", bin, err)
	case !fi.Mode().IsRegular() || fi.Mode().Perm()&0o111 == 0:
		return "", fmt.Errorf("KEYTRAIL_VAULT_BIN=%s: not an executable file", bin)
	}
	return bin, nil
}

// Vault is a dev server started for one test (StartVault).
type Vault struct {
	*VaultProcess
}

// StartVault builds Vault if needed (VaultBinary), starts a dev server in a
// temporary directory on a free loopback port, sets it up like
// StartVaultProcess, and stops it when the test ends. Start one per test
// package (share it between subtests), not one per test. It fails the test,
// never skips, when Vault cannot be started.
func StartVault(t testing.TB) *Vault {
	t.Helper()
	bin := VaultBinary(t)
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), vaultDefaultStartup)
	defer cancel()
	p, err := StartVaultProcess(ctx, bin, VaultOptions{Dir: dir})
	if err != nil {
		t.Fatalf("start vault: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("vault server log (tail of %s):\n%s", p.LogPath, p.LogTail(4096))
		}
		if err := p.Stop(); err != nil {
			t.Errorf("stop vault: %v", err)
		}
	})
	return &Vault{VaultProcess: p}
}
