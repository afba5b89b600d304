package harness

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestVaultBinaryFromEnv: tests take $KEYTRAIL_VAULT_BIN as it is, like
// `keytrail dev` and `keytrail bench` (they used to build <repo>/bin/vault
// regardless, a 10-20 minute build in a fresh clone), and refuse one that
// names no executable file rather than fall back to building.
func TestVaultBinaryFromEnv(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "vault")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, env, want, wantErr string
	}{
		{name: "unset", env: "", want: ""},
		{name: "executable", env: exe, want: exe},
		{name: "missing", env: filepath.Join(dir, "nope"), wantErr: "no such file"},
		{name: "not-executable", env: plain, wantErr: "not an executable file"},
		{name: "directory", env: dir, wantErr: "not an executable file"},
		// Relative: from the repository root (here dir), not the test's
		// working directory (the package's).
		{name: "relative", env: "vault", want: exe},
		{name: "relative-missing", env: "nope", wantErr: "no such file"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := vaultBinaryFromEnv(func(k string) string {
				if k == "KEYTRAIL_VAULT_BIN" {
					return tt.env
				}
				return ""
			}, dir)
			switch {
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), "KEYTRAIL_VAULT_BIN=") {
					t.Fatalf("vaultBinaryFromEnv(%q) = %q, %v; want an error naming the variable and %q", tt.env, got, err, tt.wantErr)
				}
			case err != nil || got != tt.want:
				t.Fatalf("vaultBinaryFromEnv(%q) = %q, %v; want %q", tt.env, got, err, tt.want)
			}
		})
	}
}
