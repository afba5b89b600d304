package main

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestConfigTrustedProxies: trust_proxy_headers read X-Forwarded-For from
// any peer, so a caller reaching the broker directly chose the source
// address of its audit events and of its refusal budget. It now needs
// trusted_proxies (addresses or CIDRs, as Vault's
// x_forwarded_for_authorized_addrs), each entry checked and a bad one
// named by its place and line; a list without trust_proxy_headers is named
// too. The server is given the parsed list.
func TestConfigTrustedProxies(t *testing.T) {
	pol := writeFile(t, t.TempDir(), "p.yaml", "version: 1\n")
	base := "public_url: http://127.0.0.1:7700\naudit: {file: a.jsonl}\nvault: {address: http://127.0.0.1:8200}\npolicy: " + pol + "\n"
	for _, tt := range []struct {
		name    string
		yaml    string
		want    []string // cfg.trustedProxies(), as strings
		wantErr []string
	}{
		{name: "ok/off", yaml: ""},
		{name: "ok/list", yaml: "trust_proxy_headers: true\ntrusted_proxies: [10.0.0.0/8, 127.0.0.1, '::1', 192.168.1.7/16]\n",
			want: []string{"10.0.0.0/8", "127.0.0.1/32", "::1/128", "192.168.0.0/16"}},
		{name: "fail/no-list", yaml: "trust_proxy_headers: true\n",
			wantErr: []string{"config.yaml: trust_proxy_headers: needs trusted_proxies", "(line 5)"}},
		{name: "fail/empty-list", yaml: "trust_proxy_headers: true\ntrusted_proxies: []\n",
			wantErr: []string{"config.yaml: trust_proxy_headers: needs trusted_proxies"}},
		{name: "fail/bad-cidr", yaml: "trust_proxy_headers: true\ntrusted_proxies:\n  - 10.0.0.0/8\n  - 10.0.0.0/33\n  - proxy.internal\n",
			wantErr: []string{`config.yaml: trusted_proxies[1]: "10.0.0.0/33" is not an IP address or CIDR (e.g. 10.0.0.0/8, 127.0.0.1) (line 8)`,
				`config.yaml: trusted_proxies[2]: "proxy.internal" is not an IP address or CIDR`}},
		{name: "fail/every-address", yaml: "trust_proxy_headers: true\ntrusted_proxies: [10.0.0.0/8, 0.0.0.0/0, '::/0']\n",
			wantErr: []string{`config.yaml: trusted_proxies[1]: "0.0.0.0/0" trusts every peer`, `config.yaml: trusted_proxies[2]: "::/0" trusts every peer`}},
		{name: "fail/list-without-switch", yaml: "trusted_proxies: [10.0.0.1]\n",
			wantErr: []string{"config.yaml: trusted_proxies: has no effect without trust_proxy_headers: true (line 5)"}},
		{name: "fail/word-for-list", yaml: "trust_proxy_headers: true\ntrusted_proxies: 10.0.0.0/8\n",
			wantErr: []string{"trusted_proxies: must be a list"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := writeFile(t, t.TempDir(), "config.yaml", base+tt.yaml)
			cfg, err := LoadConfig(p, func(string) string { return "" })
			if tt.wantErr != nil {
				for _, w := range tt.wantErr {
					if err == nil || !strings.Contains(err.Error(), w) {
						t.Errorf("LoadConfig(%q) = %v, want an error containing %q", tt.yaml, err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("LoadConfig(%q) = %v, want ok", tt.yaml, err)
			}
			var got []string
			for _, p := range cfg.trustedProxies() {
				got = append(got, p.String())
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("trustedProxies() (-want +got):\n%s", diff)
			}
		})
	}
}
