package main

import (
	"strings"
	"testing"

	"github.com/keytrail/keytrail/policies"
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

// TestLoopbackHostAgreesWithPolicies: the server's loopback test compared
// "localhost" case-sensitively while the policy's (an issuer's http
// jwks_url) ignored case, so 'listen: LOCALHOST:7700' was refused as plain
// HTTP off loopback while a policy's http://LOCALHOST issuer was loopback.
// Host names are case-insensitive: both now use one helper, and agree for
// every spelling; pprof_listen too.
func TestLoopbackHostAgreesWithPolicies(t *testing.T) {
	dir := t.TempDir()
	pol := writeFile(t, dir, "p.yaml", "version: 1\n")
	for _, host := range []string{"localhost", "LOCALHOST", "LocalHost", "127.0.0.1", "[::1]", "example.com", "0.0.0.0", "localhost.example"} {
		_, polErr := policies.Parse("p.yaml", []byte(strings.ReplaceAll(serverTestPolicy, "127.0.0.1:1", host+":1")))
		policyLoopback := polErr == nil
		if polErr != nil && !strings.Contains(polErr.Error(), "http") {
			t.Fatalf("%s: policy: %v", host, polErr)
		}
		cfg := writeFile(t, dir, "config.yaml", "listen: '"+host+":7700'\npprof_listen: '"+host+":6060'\npublic_url: http://127.0.0.1:7700\npolicy: "+pol+
			"\nvault: {address: http://127.0.0.1:8200}\naudit: {file: "+dir+"/a.jsonl}\n")
		_, err := LoadConfig(cfg, func(string) string { return "" })
		listenOK := err == nil || !strings.Contains(err.Error(), "listen: plain HTTP is allowed only on loopback")
		pprofOK := err == nil || !strings.Contains(err.Error(), "pprof_listen: must be a loopback address")
		if listenOK != policyLoopback || pprofOK != policyLoopback {
			t.Errorf("%s: policy loopback %v, config listen loopback %v, pprof_listen %v (%v)", host, policyLoopback, listenOK, pprofOK, err)
		}
		if policyLoopback && err != nil {
			t.Errorf("%s: LoadConfig: %v", host, err)
		}
	}
	for _, want := range []string{"localhost", "LOCALHOST"} {
		if !policies.IsLoopbackHost(want) {
			t.Errorf("policies.IsLoopbackHost(%q) = false", want)
		}
	}
}
