package main

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestLoadConfigSpecExample: the server configuration of SPEC "Server
// configuration", as written there (its files made real), loads; so does
// its AppRole alternative, vault.approle: {role_id_file, secret_id_file},
// which logs in like vault.auth: {method: approle}.
func TestLoadConfigSpecExample(t *testing.T) {
	dir := t.TempDir()
	pol := writeFile(t, dir, "p.yaml", "version: 1\n")
	tokenFile := writeFile(t, dir, "vault-token", "hvs.x\n")
	caFile := writeFile(t, dir, "vault-ca.pem", "")
	keyFile := writeFile(t, dir, "checkpoint.key", "")
	roleID := writeFile(t, dir, "role-id", "r\n")
	secretID := writeFile(t, dir, "secret-id", "s\n")
	certFile := writeFile(t, dir, "tls.crt", "")
	tlsKey := writeFile(t, dir, "tls.key", "")
	clientCA := writeFile(t, dir, "clients.pem", "")
	spec := func(vault string) string {
		return `listen: 127.0.0.1:7700             # KEYTRAIL_LISTEN
public_url: https://keytrail.internal:7700   # iss of broker JWTs, discovery base
policy: ` + pol + `     # file or directory; reloaded on SIGHUP
vault:
  address: https://vault.internal:8200        # VAULT_ADDR
` + vault + `  ca_file: ` + caFile + `
store:
  redis_url: redis://redis:6379/0  # KEYTRAIL_REDIS_URL; absent = in-memory
audit:
  file: /var/lib/keytrail/audit.jsonl
  checkpoint_key_file: ` + keyFile + `   # or checkpoint_transit_key
tls: {cert_file: ` + certFile + `, key_file: ` + tlsKey + `, client_ca_file: ` + clientCA + `}
`
	}
	tests := []struct {
		name     string
		vault    string
		wantAuth *VaultAuthConfig
		wantErr  []string
	}{
		{name: "ok/token-file", vault: "  token_file: " + tokenFile + "        # or VAULT_TOKEN, or approle: {role_id_file, secret_id_file}\n"},
		{name: "ok/approle", vault: "  approle: {role_id_file: " + roleID + ", secret_id_file: " + secretID + "}\n",
			wantAuth: &VaultAuthConfig{Method: "approle", RoleIDFile: roleID, SecretIDFile: secretID}},
		{name: "fail/approle-without-files", vault: "  approle: {}\n",
			wantErr: []string{"vault.approle.role_id_file: is required", "vault.approle.secret_id_file: is required"}},
		{name: "fail/approle-and-token-file", vault: "  token_file: " + tokenFile + "\n  approle: {role_id_file: " + roleID + ", secret_id_file: " + secretID + "}\n",
			wantErr: []string{"vault.approle: cannot be combined with vault.token_file"}},
		{name: "fail/approle-and-auth", vault: "  auth: {method: approle, role_id_file: " + roleID + ", secret_id_file: " + secretID + "}\n  approle: {role_id_file: " + roleID + ", secret_id_file: " + secretID + "}\n",
			wantErr: []string{"vault.approle: cannot be combined with vault.auth"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "config.yaml", spec(tt.vault))
			cfg, err := LoadConfig(p, func(string) string { return "" })
			if len(tt.wantErr) > 0 {
				if err == nil {
					t.Fatalf("LoadConfig() = ok, want errors %q", tt.wantErr)
				}
				for _, w := range tt.wantErr {
					if !strings.Contains(err.Error(), p+": "+w) {
						t.Errorf("LoadConfig() error lacks %q:\n%v", p+": "+w, err)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadConfig() = %v, want ok", err)
			}
			if diff := cmp.Diff(tt.wantAuth, cfg.Vault.Auth); diff != "" {
				t.Errorf("LoadConfig().Vault.Auth (-want +got):\n%s", diff)
			}
			got := []string{cfg.Listen, cfg.PublicURL, cfg.Vault.Address, cfg.Store.RedisURL, cfg.Audit.CheckpointKeyFile, cfg.TLS.ClientCAFile}
			want := []string{"127.0.0.1:7700", "https://keytrail.internal:7700", "https://vault.internal:8200", "redis://redis:6379/0", keyFile, clientCA}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("LoadConfig() listen, public_url, vault.address, store.redis_url, audit.checkpoint_key_file, tls.client_ca_file (-want +got):\n%s", diff)
			}
		})
	}
}

// TestLoadConfigEnvOverrides: SPEC "Server configuration": listen defaults
// to 127.0.0.1:7700 and an absent store.redis_url means the in-memory store;
// KEYTRAIL_LISTEN, VAULT_ADDR and KEYTRAIL_REDIS_URL override the file.
func TestLoadConfigEnvOverrides(t *testing.T) {
	pol := writeFile(t, t.TempDir(), "p.yaml", "version: 1\n")
	const base = "public_url: http://127.0.0.1:7700\naudit: {file: a.jsonl}\npolicy: "
	tests := []struct {
		name string
		yaml string
		env  map[string]string
		want []string // listen, vault.address, store.redis_url
	}{
		{name: "ok/defaults", yaml: base + pol + "\nvault: {address: http://127.0.0.1:8200}\n",
			want: []string{"127.0.0.1:7700", "http://127.0.0.1:8200", ""}},
		{name: "ok/file", yaml: base + pol + "\nlisten: 127.0.0.1:7800\nvault: {address: http://127.0.0.1:8200}\nstore: {redis_url: 'redis://file:6379/0'}\n",
			want: []string{"127.0.0.1:7800", "http://127.0.0.1:8200", "redis://file:6379/0"}},
		{name: "ok/env-over-file", yaml: base + pol + "\nlisten: 127.0.0.1:7800\nvault: {address: http://127.0.0.1:8200}\nstore: {redis_url: 'redis://file:6379/0'}\n",
			env:  map[string]string{"KEYTRAIL_LISTEN": "127.0.0.1:7900", "VAULT_ADDR": "https://vault.env:8200", "KEYTRAIL_REDIS_URL": "redis://env:6379/1"},
			want: []string{"127.0.0.1:7900", "https://vault.env:8200", "redis://env:6379/1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "config.yaml", tt.yaml)
			cfg, err := LoadConfig(p, func(k string) string { return tt.env[k] })
			if err != nil {
				t.Fatalf("LoadConfig() = %v, want ok", err)
			}
			got := []string{cfg.Listen, cfg.Vault.Address, cfg.Store.RedisURL}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("LoadConfig() listen, vault.address, store.redis_url (-want +got):\n%s", diff)
			}
			if shared := cfg.Store.Shared(); shared != (tt.want[2] != "") {
				t.Errorf("Store.Shared() = %v with redis_url %q", shared, tt.want[2])
			}
		})
	}
}

// TestLoadConfigExtensionKeys: anchors at the config's top level
// ("x-defaults: &d", then "<<: *d") were refused as unknown fields, so
// shared settings could not be written once. Top-level keys starting with
// "x-" are now ignored, as Compose files do: what they hold counts only
// where it is merged or aliased, a problem there names the line it is
// written on, and an x- key anywhere but the top level is still an
// unknown field. An x- key written twice is named by key and both lines.
func TestLoadConfigExtensionKeys(t *testing.T) {
	const nullKeyMessage = "key without a value: the YAML decoder drops the entry, so it sets no field; write the field's name, or remove the entry"
	pol := writeFile(t, t.TempDir(), "p.yaml", "version: 1\n")
	head := "x-vault: &vault\n" + // 1
		"  address: http://v\n" + // 2
		"  timeout: 7s\n" + // 3
		"x-notes: [anything, {goes: here}]\n" + // 4
		"public_url: http://127.0.0.1:7700\n" + // 5
		"policy: " + pol + "\n" + // 6
		"audit: {file: a}\n" // 7
	tests := []struct {
		name    string
		yaml    string
		wantErr string // the whole error, after "<file>: "
	}{
		{name: "ok/merged", yaml: head + "vault:\n  <<: *vault\n"},
		{name: "ok/aliased", yaml: head + "vault: *vault\n"},
		// An x- key merged into the top level is an extension too (the
		// decoder leaves it to the extensions): it was "x-b: unknown
		// field" here.
		{name: "ok/extension-merged-into-top-level", yaml: "x-a: &a {x-b: 1}\n<<: *a\n" + head + "vault: *vault\n"},
		{name: "ok/extension-and-setting-merged-into-top-level", yaml: "x-a: &a {x-b: 1, vault: {address: http://v, timeout: 7s}}\n<<: *a\n" + head},
		{name: "fail/unknown-key-merged-into-top-level", yaml: "x-a: &a {x-b: 1, vaults: 2}\n<<: *a\n" + head + "vault: *vault\n",
			wantErr: "vaults: unknown field, did you mean vault? (line 1)"},
		// A key written as an alias is the key its anchor names: one
		// naming a string that is no setting is an unknown field, with
		// its line, even when the anchor's own name starts with x- (it
		// was skipped as an extension, and only the decoder's check
		// refused it: "vaults: unknown field", no line).
		{name: "ok/alias-key-to-an-extension", yaml: head + "vault: *vault\nx-k: &k x-note\n*k : 1\n"},
		{name: "fail/alias-key-to-an-unknown-field", yaml: head + "vault: *vault\nx-k: &x-k vaults\n*x-k : 1\n",
			wantErr: "x-k: unknown field (line 10)"},
		{name: "fail/alias-key-to-an-unknown-field-merged-into-top-level", yaml: "x-k: &x-k vaults\nx-a: &a {*x-k : 1}\n<<: *a\n" + head + "vault: *vault\n",
			wantErr: "x-k: unknown field (line 2)"},
		{name: "fail/problem-in-merged-extension-names-its-line", yaml: "x-d: &d {timeout: -1s}\n" + head + "vault:\n  <<: [*d, *vault]\n",
			wantErr: "vault.timeout: must not be negative (0: the default, 5s) (line 1)"},
		{name: "fail/x-below-the-top-level", yaml: head + "vault:\n  <<: *vault\n  x-note: 1\n",
			wantErr: "vault.x-note: unknown field (line 10)"},
		{name: "fail/not-an-x-key", yaml: head + "vault: *vault\nxdefaults: 1\n",
			wantErr: "xdefaults: unknown field (line 9)"},
		// A key without a value names no setting: the decoder drops it,
		// value and all, without an error (it loaded). Inside an
		// extension it is the extension's business.
		{name: "fail/null-key-top-level", yaml: head + "vault: *vault\n~: 1\n",
			wantErr: "~: " + nullKeyMessage + " (line 9)"},
		{name: "fail/null-key-in-a-section", yaml: head + "vault:\n  <<: *vault\n  null: 5s\n",
			wantErr: "vault.null: " + nullKeyMessage + " (line 10)"},
		{name: "fail/null-key-merged-into-top-level", yaml: "x-a: &a {x-b: 1, ~: 2}\n<<: *a\n" + head + "vault: *vault\n",
			wantErr: "~: " + nullKeyMessage + " (line 1)"},
		{name: "ok/null-key-inside-an-extension", yaml: head + "vault: *vault\nx-n: {~: 1}\n"},
		// Named like any key written twice, not in the decoder's words
		// ("mapping key \"x-notes\" already defined at line 4").
		{name: "fail/x-key-written-twice", yaml: head + "vault: *vault\nx-notes: 2\n",
			wantErr: "x-notes: written twice (first at line 4) (line 9)"},
		// Each repetition once, by the line of the first: the third
		// x-notes was named twice (against lines 4 and 9), so n copies
		// of a key gave n(n-1)/2 problems.
		{name: "fail/x-key-written-three-times", yaml: head + "vault: *vault\nx-notes: 2\nx-notes: 3\n",
			wantErr: "x-notes: written twice (first at line 4) (line 9)\n" + "<file>: x-notes: written twice (first at line 4) (line 10)"},
		// x- keys count towards the top level's 1,024 keys: 1,100 of
		// them were no problem (and each was compared with every other,
		// by LoadConfig and by the decoder).
		{name: "fail/too-many-top-level-keys", yaml: head + "vault: *vault\n" + manyKeys("x-k", "", 1100),
			wantErr: "a mapping of 1106 keys: at most 1024 are allowed in one mapping (line 1)"},
		// Merges of merges the decoder refuses for excessive aliasing
		// (Check's budget allows them): named by field and line, not
		// only "yaml: document contains excessive aliasing".
		{name: "fail/excessive-aliasing", yaml: head + "vault: *vault\nx-s: &s {prefix: p}\nx-m: &m {<<: [" + strings.TrimSuffix(strings.Repeat("*s, ", 100), ", ") + "]}\nstore:\n  <<: [" + strings.TrimSuffix(strings.Repeat("*m, ", 300), ", ") + "]\n",
			wantErr: "store: excessive aliasing: when the YAML decoder reaches *m here (the anchor at line 10), 17524 of the 17701 values it has read are copies made by aliases, more than it accepts: write the values out, or alias less (line 12)"},
		{name: "fail/too-many-nested-keys", yaml: head + "vault: *vault\nlisten: x\nlog:\n" + manyKeys("k", "  ", 1025),
			wantErr: "log: a mapping of 1025 keys: at most 1024 are allowed in one mapping (line 11)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "config.yaml", tt.yaml)
			cfg, err := LoadConfig(p, func(string) string { return "" })
			if tt.wantErr != "" {
				if want := p + ": " + strings.ReplaceAll(tt.wantErr, "<file>", p); err == nil || err.Error() != want {
					t.Fatalf("LoadConfig() = %v, want %q", err, want)
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadConfig() = %v, want ok", err)
			}
			if got := []string{cfg.Vault.Address, time.Duration(cfg.Vault.Timeout).String()}; !slices.Equal(got, []string{"http://v", "7s"}) {
				t.Errorf("LoadConfig() vault.address, vault.timeout = %q, want the x-vault values", got)
			}
		})
	}
}

// manyKeys is n lines "<indent><prefix><i>: 1".
func manyKeys(prefix, indent string, n int) string {
	var b strings.Builder
	for i := range n {
		fmt.Fprintf(&b, "%s%s%d: 1\n", indent, prefix, i)
	}
	return b.String()
}
