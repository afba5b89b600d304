package vault

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// TestNamespaceOnEveryRequest: with ClientOptions.Namespace set, every kind
// of request the broker makes carries it (X-Vault-Namespace): token create,
// revoke and lookup, transit keys and sign, database creds and lease
// revocation, sys/health, and a login, which goes through a clone of the
// client. Before, NewClient cleared any namespace: every call went to the
// root namespace.
func TestNamespaceOnEveryRequest(t *testing.T) {
	const ns = "admin/team-a"
	key := newFakeKey(t, KeyTypeECDSAP256, 1)
	routes := fakeTransit(t, "sig", key, nil)
	routes["PUT /v1/auth/token/create-orphan"] = func(w http.ResponseWriter, r *http.Request) { reply(w, 200, authReply(900, false, "p")) }
	routes["PUT /v1/auth/token/revoke-accessor"] = replyRaw(204, "")
	routes["GET /v1/auth/token/lookup-self"] = replyRaw(200, `{"data":{"ttl":3600}}`)
	routes["GET /v1/database/creds/payments-rw"] = credsReply(900, map[string]any{"username": dynUsername, "password": dynPassword})
	routes["PUT /v1/sys/leases/revoke"] = replyRaw(204, "")
	routes["GET /v1/sys/health"] = replyRaw(200, `{"initialized":true,"sealed":false,"standby":false}`)
	routes["PUT /v1/auth/kubernetes/login"] = func(w http.ResponseWriter, r *http.Request) { reply(w, 200, authReply(3600, false)) }

	var mu sync.Mutex
	seen := map[string]bool{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k := r.Method + " " + r.URL.Path
		mu.Lock()
		seen[k] = true
		mu.Unlock()
		if got := r.Header.Get("X-Vault-Namespace"); got != ns {
			t.Errorf("%s: X-Vault-Namespace = %q, want %q", k, got, ns)
		}
		h, ok := routes[k]
		if !ok {
			t.Errorf("fake vault: unexpected request %s", k)
			http.Error(w, `{"errors":["unexpected"]}`, http.StatusInternalServerError)
			return
		}
		h(w, r)
	}))
	defer srv.Close()
	t.Setenv("VAULT_NAMESPACE", "from-the-environment") // the option wins
	c, err := NewClient(ClientOptions{Address: srv.URL, Token: brokerToken, Timeout: 5 * time.Second, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()

	tm, err := NewTokenMinter(TokenMinterOptions{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tm.Mint(ctx, tokenReq(nil)); err != nil {
		t.Errorf("TokenMinter.Mint() = %v", err)
	}
	if err := tm.Revoke(ctx, &broker.Issuance{Refs: broker.CredentialRefs{Accessor: "acc-123"}}); err != nil {
		t.Errorf("TokenMinter.Revoke() = %v", err)
	}
	tc, err := NewTokenChecker(TokenCheckerOptions{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	if err := tc.Check(ctx); err != nil {
		t.Errorf("TokenChecker.Check() = %v", err)
	}
	jm, err := NewJWTMinter(JWTMinterOptions{Client: c, PublicURL: "https://keytrail.test"})
	if err != nil {
		t.Fatal(err)
	}
	req := jwtReq("sig")
	req.Now = time.Now()
	if _, err := jm.Mint(ctx, req); err != nil {
		t.Errorf("JWTMinter.Mint() = %v", err)
	}
	dm, err := NewDynamicMinter(DynamicMinterOptions{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	dreq := dynReq(nil)
	dreq.Now = time.Now()
	if _, err := dm.Mint(ctx, dreq); err != nil {
		t.Errorf("DynamicMinter.Mint() = %v", err)
	}
	if err := dm.Revoke(ctx, &broker.Issuance{Refs: broker.CredentialRefs{LeaseID: dynLease, Accessor: "acc-reader"}}); err != nil {
		t.Errorf("DynamicMinter.Revoke() = %v", err)
	}
	if err := (HealthChecker{Client: c}).Ping(ctx); err != nil {
		t.Errorf("HealthChecker.Ping() = %v", err)
	}
	jwtFile := filepath.Join(t.TempDir(), "sa-token")
	if err := os.WriteFile(jwtFile, []byte("eyJhbGciOiJSUzI1NiJ9.k8s-sa.sig"), 0o600); err != nil {
		t.Fatal(err)
	}
	l, err := NewLogin(LoginOptions{Client: c, Method: LoginKubernetes, Role: "keytrail", JWTFile: jwtFile})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Start(ctx); err != nil {
		t.Errorf("Login.Start() = %v", err)
	}

	mu.Lock()
	defer mu.Unlock()
	var missing []string
	for k := range routes {
		if !seen[k] {
			missing = append(missing, k)
		}
	}
	slices.Sort(missing)
	if len(missing) > 0 {
		t.Errorf("requests never made (the test covers less than it says): %s", strings.Join(missing, ", "))
	}
}

// TestCheckNamespace: vault.namespace takes a namespace path, or nothing.
func TestCheckNamespace(t *testing.T) {
	for _, ns := range []string{"", "admin", "admin/", "/admin", "admin/team-a", "a.b_c/d-e/"} {
		if err := CheckNamespace(ns); err != nil {
			t.Errorf("CheckNamespace(%q) = %v, want nil", ns, err)
		}
	}
	for _, ns := range []string{"/", "//", "admin//team", "ad min", "admin\n", "admin\x00"} {
		if err := CheckNamespace(ns); err == nil {
			t.Errorf("CheckNamespace(%q) = nil, want an error", ns)
		}
	}
	if _, err := NewClient(ClientOptions{Address: "http://127.0.0.1:8200", Token: "t", Namespace: "ad min"}); err == nil || !strings.Contains(err.Error(), "vault.namespace") {
		t.Errorf("NewClient(bad namespace) = %v, want an error naming vault.namespace", err)
	}
}
