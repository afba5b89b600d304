package main

import (
	"strings"
	"testing"
)

// TestConfigVaultNamespace: vault.namespace selects the Vault Enterprise /
// HCP Vault namespace of every Vault call, and VAULT_NAMESPACE, the
// standard way to set it, overrides the file (as VAULT_ADDR does
// vault.address). It was ignored, with a warning: every request went to
// the root namespace. A malformed namespace is a problem naming the field
// and, when it came from there, the variable.
func TestConfigVaultNamespace(t *testing.T) {
	pol := writeFile(t, t.TempDir(), "p.yaml", "version: 1\n")
	const base = "public_url: http://127.0.0.1:7700\naudit: {file: a.jsonl}\npolicy: "
	tests := []struct {
		name    string
		vault   string
		env     map[string]string
		want    string
		wantErr string
	}{
		{name: "ok/none", vault: "{address: http://127.0.0.1:8200}", want: ""},
		{name: "ok/file", vault: "{address: http://127.0.0.1:8200, namespace: admin/team-a}", want: "admin/team-a"},
		{name: "ok/env", vault: "{address: http://127.0.0.1:8200}", env: map[string]string{"VAULT_NAMESPACE": "admin"}, want: "admin"},
		{name: "ok/env-over-file", vault: "{address: http://127.0.0.1:8200, namespace: admin/team-a}", env: map[string]string{"VAULT_NAMESPACE": "admin"}, want: "admin"},
		{name: "fail/file", vault: "{address: http://127.0.0.1:8200, namespace: 'admin//x'}", wantErr: "vault.namespace: \"admin//x\": empty path segment"},
		{name: "fail/env", vault: "{address: http://127.0.0.1:8200}", env: map[string]string{"VAULT_NAMESPACE": "ad min"},
			wantErr: "vault.namespace: \"ad min\": spaces and control characters are not allowed (from VAULT_NAMESPACE)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "config.yaml", base+pol+"\nvault: "+tt.vault+"\n")
			cfg, err := LoadConfig(p, func(k string) string { return tt.env[k] })
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("LoadConfig() = %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadConfig() = %v, want ok", err)
			}
			if cfg.Vault.Namespace != tt.want {
				t.Errorf("vault.namespace = %q, want %q", cfg.Vault.Namespace, tt.want)
			}
		})
	}
}
