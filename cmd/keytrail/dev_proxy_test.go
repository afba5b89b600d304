package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/policies"
)

// TestDevExampleProxyGrant: keytrail dev's policy (policies/examples) had
// no proxy grant, nor anything saying how to try one. dev runs no upstream
// API to proxy to, so the policy carries a commented one (demo-api) and
// dev's printed steps say how to use it: uncommented and given to
// payments-api, it is a valid proxy grant; as it stands, the policy has
// none (nothing dev starts would answer it).
func TestDevExampleProxyGrant(t *testing.T) {
	path := filepath.Join("..", "..", "policies", "examples", "keytrail.yaml")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policies.Parse(path, raw)
	if err != nil {
		t.Fatalf("the example policy: %v", err)
	}
	for _, g := range pol.Grants() {
		if g.Proxy != nil {
			t.Errorf("the example policy has the proxy grant %s enabled: keytrail dev runs no upstream for it", g.Name)
		}
	}

	// Uncomment the demo-api block: "  # - name: demo-api" and the lines
	// of the grant after it ("  #   ...").
	lines := strings.Split(string(raw), "\n")
	start := -1
	for i, l := range lines {
		if l == "  # - name: demo-api" {
			start = i
			break
		}
	}
	if start < 0 {
		t.Fatalf("%s has no commented grant %q", path, "  # - name: demo-api")
	}
	for i := start; i < len(lines) && (i == start || strings.HasPrefix(lines[i], "  #   ")); i++ {
		lines[i] = "  " + strings.TrimPrefix(lines[i], "  # ")
	}
	text := strings.Join(lines, "\n")
	const grants = "grants: [payments-vault, orders-jwt]"
	if !strings.Contains(text, grants) {
		t.Fatalf("%s: payments-api's grants are not %q", path, grants)
	}
	text = strings.Replace(text, grants, "grants: [payments-vault, orders-jwt, demo-api]", 1)
	pol, err = policies.Parse(path, []byte(text))
	if err != nil {
		t.Fatalf("the example policy with demo-api uncommented: %v", err)
	}
	var proxy *policies.Grant
	for _, g := range pol.Grants() {
		if g.Name == "demo-api" {
			proxy = &g
		}
	}
	if proxy == nil || proxy.Proxy == nil {
		t.Fatalf("uncommented, demo-api is not a proxy grant: %+v", proxy)
	}

	for _, want := range []string{"--grant demo-api", "{URL}/v1/proxy/demo-api/"} {
		if !strings.Contains(devNextSteps, want) {
			t.Errorf("dev's printed steps lack %q (how to try the example's proxy grant):\n%s", want, devNextSteps)
		}
	}
}
