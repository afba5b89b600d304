package main

import (
	"strings"
	"testing"
)

// TestConfigVaultAddressScheme: vault.address (or VAULT_ADDR) with a scheme
// the Vault client cannot speak (ftp://, a typo such as htps://) passed the
// configuration's validation, so 'keytrail config check' said ok and the
// server failed only at its first Vault call. It is now a problem naming
// the field and the line, or the variable that set it.
func TestConfigVaultAddressScheme(t *testing.T) {
	pol := writeFile(t, t.TempDir(), "p.yaml", "version: 1\n")
	const base = "public_url: http://127.0.0.1:7700\naudit: {file: a.jsonl}\npolicy: "
	for _, tt := range []struct {
		address string
		env     map[string]string
		wantErr string // "" ok
	}{
		{address: "https://vault.internal:8200"},
		{address: "http://127.0.0.1:8200"},
		{address: "HTTPS://vault.internal:8200"}, // url.Parse lowers the scheme
		{address: "ftp://vault.internal:8200", wantErr: "vault.address: must be an http or https URL, not ftp:// (line 4)"},
		{address: "htps://vault.internal:8200", wantErr: "vault.address: must be an http or https URL, not htps:// (line 4)"},
		{address: "https://vault.internal:8200", env: map[string]string{"VAULT_ADDR": "tcp://vault.internal:8200"},
			wantErr: "vault.address: must be an http or https URL, not tcp:// (from VAULT_ADDR)"},
	} {
		p := writeFile(t, t.TempDir(), "config.yaml", base+pol+"\nvault: {address: '"+tt.address+"'}\n")
		_, err := LoadConfig(p, func(k string) string { return tt.env[k] })
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("vault.address %q (env %v): %v, want ok", tt.address, tt.env, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("vault.address %q (env %v): %v, want an error containing %q", tt.address, tt.env, err, tt.wantErr)
		}
	}
}
