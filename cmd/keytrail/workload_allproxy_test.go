package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strings"
	"testing"
)

// TestAllProxyIsIgnoredWithAWarning: Go's net/http reads HTTPS_PROXY (for
// an https broker) and HTTP_PROXY (for a plain-http one), never ALL_PROXY,
// which curl and many other tools honour: with only ALL_PROXY set, fetch
// and exec went to the broker directly without a word, and a failure then
// read as the broker's. They now print one warning saying so and which
// variable to set, unless the broker is on loopback (never proxied), that
// variable is set already (then ALL_PROXY would not apply either), or
// NO_PROXY (no_proxy) excludes the broker's host (no proxy would be used
// for it; that warning was wrong before).
func TestAllProxyIsIgnoredWithAWarning(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "no-such-token") // fails at once, before any request
	const proxy = "socks5://PROXY-USER-MARKER:PROXY-PW-MARKER@proxy.example:1080"
	for _, c := range []struct {
		name, addr string
		env        map[string]string
		want       string // the warning line; "" for none
	}{
		{"https", "https://keytrail.example", map[string]string{"ALL_PROXY": proxy},
			"keytrail: warning: ALL_PROXY is set but not used: Go reads HTTPS_PROXY for an https broker and HTTP_PROXY for a plain-http one, so the broker at https://keytrail.example is reached directly; set HTTPS_PROXY to use that proxy\n"},
		{"http-lower-case", "http://keytrail.example:7700/", map[string]string{"all_proxy": proxy},
			"keytrail: warning: all_proxy is set but not used: Go reads HTTPS_PROXY for an https broker and HTTP_PROXY for a plain-http one, so the broker at http://keytrail.example:7700 is reached directly; set HTTP_PROXY to use that proxy\n"},
		{"loopback", "http://127.0.0.1:7700", map[string]string{"ALL_PROXY": proxy}, ""},
		{"localhost", "https://localhost:7700", map[string]string{"ALL_PROXY": proxy}, ""},
		{"loopback-v6", "http://[::1]:7700", map[string]string{"all_proxy": proxy}, ""},
		{"https-proxy-set", "https://keytrail.example", map[string]string{"ALL_PROXY": proxy, "https_proxy": "http://proxy.example:3128"}, ""},
		{"unset", "https://keytrail.example", nil, ""},
		// NO_PROXY excluding the broker's host, as net/http reads it: no
		// proxy would be used for it anyway.
		{"no-proxy-domain", "https://keytrail.example", map[string]string{"ALL_PROXY": proxy, "NO_PROXY": "other.example, .example"}, ""},
		{"no-proxy-lower-case-host-port", "http://keytrail.example:7700", map[string]string{"all_proxy": proxy, "no_proxy": "keytrail.example:7700"}, ""},
		{"no-proxy-star", "https://10.0.0.7:7700", map[string]string{"ALL_PROXY": proxy, "NO_PROXY": "*"}, ""},
		{"no-proxy-cidr", "https://10.0.0.7:7700", map[string]string{"ALL_PROXY": proxy, "NO_PROXY": "10.0.0.0/8"}, ""},
		{"no-proxy-upper-case-wins", "https://keytrail.example", map[string]string{"ALL_PROXY": proxy, "NO_PROXY": "other.example", "no_proxy": "keytrail.example"},
			"keytrail: warning: ALL_PROXY is set but not used: Go reads HTTPS_PROXY for an https broker and HTTP_PROXY for a plain-http one, so the broker at https://keytrail.example is reached directly; set HTTPS_PROXY to use that proxy\n"},
		{"no-proxy-other-port", "https://keytrail.example", map[string]string{"ALL_PROXY": proxy, "NO_PROXY": "keytrail.example:7700"},
			"keytrail: warning: ALL_PROXY is set but not used: Go reads HTTPS_PROXY for an https broker and HTTP_PROXY for a plain-http one, so the broker at https://keytrail.example is reached directly; set HTTPS_PROXY to use that proxy\n"},
	} {
		t.Run(c.name, func(t *testing.T) {
			for _, cmd := range [][]string{
				{"fetch", "--grant", "g", "--grant", "h", "--identity-token-file", missing, "--addr", c.addr, "--allow-insecure-http", "--out-dir", dir},
				{"exec", "--grant", "g", "--identity-token-file", missing, "--addr", c.addr, "--allow-insecure-http", "--env", "T", "--", "true"},
			} {
				var out, errb bytes.Buffer
				err := run(context.Background(), cmd, func(k string) string { return c.env[k] }, &out, &errb)
				if exitCode(err) != 1 || !strings.Contains(err.Error(), "cannot get the identity token") {
					t.Fatalf("keytrail %s = %v, want the missing token file's exit 1", cmd[0], err)
				}
				var warnings []string
				for _, l := range strings.SplitAfter(errb.String(), "\n") {
					if strings.HasPrefix(l, "keytrail: warning: ") {
						warnings = append(warnings, l)
					}
				}
				switch {
				case c.want == "" && len(warnings) != 0:
					t.Errorf("keytrail %s with %v, broker %s: warned %q, want no warning", cmd[0], c.env, c.addr, warnings)
				case c.want != "" && (len(warnings) != 1 || warnings[0] != c.want):
					t.Errorf("keytrail %s with %v: warned %q, want once %q", cmd[0], c.env, warnings, c.want)
				}
				if strings.Contains(errb.String(), "MARKER") {
					t.Errorf("keytrail %s shows the proxy URL's user info: %q", cmd[0], errb.String())
				}
			}
		})
	}
}
