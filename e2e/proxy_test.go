package e2e

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
)

// upstream is a real HTTPS API that records what reaches it.
type upstream struct {
	*httptest.Server
	mu   sync.Mutex
	seen []http.Header
}

func (u *upstream) hits() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return len(u.seen)
}

func (u *upstream) last() http.Header {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.seen[len(u.seen)-1]
}

const upstreamSecret = "sk_live_e2e_0123456789abcdef"

// TestProxyAgainstRealVaultAndUpstream: the shared key lives in Vault KV, a
// workload gets a proxy credential, and the real upstream sees the key,
// never the workload's credential, plus the correlation headers.
func TestProxyAgainstRealVaultAndUpstream(t *testing.T) {
	up := &upstream{}
	up.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		up.mu.Lock()
		up.seen = append(up.seen, r.Header.Clone())
		up.mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"path":%q,"method":%q}`, r.URL.Path, r.Method)
	}))
	t.Cleanup(up.Close)
	caFile := writeServerCA(t, up.Server)
	extra := fmt.Sprintf(`version: 1
workloads:
  - name: billing-agent
    owner: team-billing
    match: {issuer: test, subject: "agent:billing"}
    grants: [example-api]
grants:
  - name: example-api
    kind: proxy
    ttl: 10m
    proxy:
      upstream: %s
      allow_private: true
      ca_file: %s
      secret: {vault_kv: secret/data/upstreams/example, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      methods: [GET, POST]
      paths: ["/v1/charges", "/v1/charges/*"]
`, up.URL, caFile)
	env := startStack(t, stackOptions{extraPolicy: extra})
	if _, err := env.vault.Client.KVv2("secret").Put(context.Background(), "upstreams/example", map[string]any{"api_key": upstreamSecret}); err != nil {
		t.Fatalf("vault kv put: %v", err)
	}

	idTok := env.issuer.token(t, "agent:billing", map[string]any{"session": "conv-42"})
	res := env.issue(t, idTok, "example-api", nil)
	if res.Kind != "proxy" || !strings.HasPrefix(res.AccessToken, "ktp_") || len(res.AccessToken) < 4+43 {
		t.Fatalf("proxy credential = %+v", res)
	}

	call := func(t *testing.T, method, path, cred string, hdr string) (int, string, http.Header) {
		t.Helper()
		req, _ := http.NewRequest(method, env.brokerURL+"/v1/proxy/example-api"+path, nil)
		if cred != "" {
			req.Header.Set(hdr, "Bearer "+cred)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}

	t.Run("ok/injected-and-correlated", func(t *testing.T) {
		for _, hdr := range []string{"Authorization", "Proxy-Authorization"} {
			before := up.hits()
			st, b, _ := call(t, "GET", "/v1/charges/ch_1?expand=customer", res.AccessToken, hdr)
			if st != 200 || !strings.Contains(b, `"path":"/v1/charges/ch_1"`) || up.hits() != before+1 {
				t.Fatalf("%s: proxied GET = %d %s", hdr, st, b)
			}
			seen := up.last()
			if got := seen.Get("Authorization"); got != "Bearer "+upstreamSecret {
				t.Errorf("%s: upstream Authorization = %q, want the injected secret", hdr, got)
			}
			for k, vs := range seen {
				for _, v := range vs {
					if strings.Contains(v, res.AccessToken) {
						t.Errorf("%s: upstream saw the caller's credential in %s", hdr, k)
					}
				}
			}
			if !strings.HasPrefix(seen.Get("X-Request-Id"), "use_") || seen.Get("X-Keytrail-Issuance") != res.IssuanceID {
				t.Errorf("%s: correlation headers = %q / %q", hdr, seen.Get("X-Request-Id"), seen.Get("X-Keytrail-Issuance"))
			}
			if strings.Contains(b, upstreamSecret) {
				t.Errorf("response carries the secret")
			}
		}
	})

	t.Run("fail/refused-before-upstream", func(t *testing.T) {
		vaultTok := env.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments"})
		other := env.issue(t, vaultTok, "payments-vault", nil)
		cases := []struct {
			name, method, path, cred string
			status                   int
		}{
			{"fail/no-credential", "GET", "/v1/charges", "", 401},
			{"fail/unknown-credential", "GET", "/v1/charges", "ktp_" + strings.Repeat("A", 43), 401},
			{"fail/credential-of-other-grant", "GET", "/v1/charges", other.AccessToken, 401},
			{"fail/path-not-allowed", "GET", "/v1/refunds", res.AccessToken, 403},
			{"fail/method-not-allowed", "DELETE", "/v1/charges/ch_1", res.AccessToken, 403},
			{"fail/encoded-slash", "GET", "/v1/charges%2f..%2fadmin", res.AccessToken, 400},
		}
		for _, c := range cases {
			before := up.hits()
			st, b, _ := call(t, c.method, c.path, c.cred, "Authorization")
			if st != c.status {
				t.Errorf("%s: %d %s, want %d", c.name, st, b, c.status)
			}
			if up.hits() != before {
				t.Errorf("%s: the upstream was called", c.name)
			}
			if strings.Contains(b, upstreamSecret) {
				t.Errorf("%s: error body carries the secret", c.name)
			}
		}
	})

	t.Run("ok/introspect", func(t *testing.T) {
		form := url.Values{"token": {res.AccessToken}}
		req, _ := http.NewRequest("POST", env.brokerURL+"/v1/introspect", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Authorization", "Bearer "+env.issuer.token(t, "system:serviceaccount:payments:api", map[string]any{"namespace": "payments"}))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var got map[string]any
		json.NewDecoder(resp.Body).Decode(&got)
		if got["active"] != true || got["jti"] != res.IssuanceID || got["sub"] != "billing-agent" || got["owner"] != "team-billing" || got["grant"] != "example-api" {
			t.Errorf("introspect = %v", got)
		}
	})

	t.Run("ok/audit-use-events-in-order-and-verify", func(t *testing.T) {
		// use_result is written after the response, sharing a later
		// event's fsync (at most 20 ms later): wait for it.
		want := "issue use use_result use use_result"
		var evs []*audit.Event
		var got string
		waitFor(t, 5*time.Second, "the use_result events", func() bool {
			evs = readAudit(t, env.auditPath)
			var types []string
			for _, ev := range evs {
				if ev.IssuanceID == res.IssuanceID && (ev.Type == "issue" || ev.Type == "use" || ev.Type == "use_result") {
					types = append(types, ev.Type)
				}
			}
			got = strings.Join(types, " ")
			return strings.HasPrefix(got, want)
		})
		for _, ev := range evs {
			if ev.IssuanceID == res.IssuanceID && ev.Type == "use" && (ev.Upstream == nil || ev.Upstream.Path != "/v1/charges/ch_1?expand" /* query keys only, never values */ || ev.Workload != "billing-agent" || ev.SessionID != res.SessionID) {
				t.Errorf("use event = %+v / %+v", ev, ev.Upstream)
			}
		}
		raw, _ := os.ReadFile(env.auditPath)
		if strings.Contains(string(raw), upstreamSecret) || strings.Contains(string(raw), res.AccessToken) {
			t.Errorf("audit log contains a secret or credential")
		}
		if _, err := audit.VerifyFiles([]string{env.auditPath}, audit.VerifyOptions{}); err != nil {
			t.Errorf("audit log does not verify: %v", err)
		}
	})
}

func readAudit(t *testing.T, path string) []*audit.Event {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*audit.Event
	for _, line := range strings.Split(strings.TrimSpace(string(raw)), "\n") {
		ev, err := audit.ParseLine([]byte(line))
		if err != nil {
			t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, ev)
	}
	return out
}

// writeServerCA writes the certificate of a httptest TLS server to a PEM
// file (a proxy grant's upstream ca_file) and returns its path.
func writeServerCA(t *testing.T, srv *httptest.Server) string {
	t.Helper()
	caFile := filepath.Join(t.TempDir(), "upstream-ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	return caFile
}
