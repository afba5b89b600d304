package vault_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// pkiRoleGrants are two pki grants on two roles of two mounts (one
// through an issuer).
const pkiRoleGrants = `  - name: g-web
    kind: pki
    ttl: 5m
    pki: {path: pki/issue/web}
  - name: g-int
    kind: pki
    ttl: 5m
    pki: {path: pki_int/issuer/default/issue/svc}
`

// TestPKIMinterCheckRoles: a pki grant whose role sets no_store=true is
// refused at start-up (vault_config, naming the grant and the setting);
// roles that store their certificates pass; a role the broker cannot read
// (403, none) is logged and skipped.
func TestPKIMinterCheckRoles(t *testing.T) {
	for _, tc := range []struct {
		name     string
		web, svc func(w http.ResponseWriter) // answers of pki/roles/web and pki_int/roles/svc
		wantErr  []string                    // "" none
		wantLog  []string
		leases   bool // Leases noted (a role with generate_lease=true)
	}{
		{
			name: "ok/stored",
			web:  roleAnswer(200, map[string]any{"no_store": false, "max_ttl": 3600}),
			svc:  roleAnswer(200, map[string]any{"no_store": false}),
		},
		{
			name:    "fail/no-store",
			web:     roleAnswer(200, map[string]any{"no_store": false}),
			svc:     roleAnswer(200, map[string]any{"no_store": true}),
			wantErr: []string{"vault_config", `grant "g-int"`, "pki_int/roles/svc", "no_store=true", "set no_store=false"},
		},
		{
			name:    "ok/generate-lease-noted",
			web:     roleAnswer(200, map[string]any{"no_store": false, "generate_lease": false}),
			svc:     roleAnswer(200, map[string]any{"no_store": false, "generate_lease": true}),
			wantLog: []string{"g-int", "generate_lease=true", "set generate_lease=false"},
			leases:  true,
		},
		{
			name:    "ok/unreadable-logged",
			web:     roleAnswer(403, nil),
			svc:     roleAnswer(404, nil),
			wantLog: []string{"g-web", "pki/roles/web", "permission denied", "g-int", "pki_int/roles/svc"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			leases := new(vault.TokenLeases)
			m, logs := pkiMinterOn(t, placeholderClient(t, roleServer(t, tc.web, tc.svc)), leases)
			pol := policyWithGrants(t, []string{"g-web", "g-int"}, pkiRoleGrants)
			err := m.CheckRoles(context.Background(), pol)
			checkContains(t, "CheckRoles()", err, tc.wantErr)
			if leases.Held() != tc.leases {
				t.Errorf("Leases.Held() = %v, want %v", leases.Held(), tc.leases)
			}
			for _, s := range tc.wantLog {
				if !strings.Contains(logs.String(), s) {
					t.Errorf("logs do not say %q:\n%s", s, logs.String())
				}
			}
			if len(tc.wantLog) == 0 && logs.String() != "" {
				t.Errorf("logs = %s, want none", logs.String())
			}
		})
	}
}

func roleAnswer(status int, data map[string]any) func(w http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.WriteHeader(status)
		switch {
		case status == 403:
			_ = json.NewEncoder(w).Encode(map[string]any{"errors": []string{"permission denied"}})
		case data == nil:
			_ = json.NewEncoder(w).Encode(map[string]any{"errors": []string{}})
		default:
			_ = json.NewEncoder(w).Encode(map[string]any{"data": data})
		}
	}
}

func noGrant(string) (*policies.Grant, bool) { return nil, false }

// roleServer is a stand-in Vault that answers the reads of pki/roles/web
// with web and of pki_int/roles/svc with svc (pkiRoleGrants' roles), and
// fails the test on any other request. It is closed when the test ends.
func roleServer(t *testing.T, web, svc func(w http.ResponseWriter)) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.Method + " " + r.URL.Path {
		case "GET /v1/pki/roles/web":
			web(w)
		case "GET /v1/pki_int/roles/svc":
			svc(w)
		default:
			t.Errorf("unexpected request %s %s", r.Method, r.URL.Path)
			w.WriteHeader(500)
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

// placeholderClient is a client of the stand-in Vault at addr, with
// placeholderToken and a 5s timeout.
func placeholderClient(t *testing.T, addr string) *vaultapi.Client {
	t.Helper()
	c, err := vault.NewClient(vault.ClientOptions{Address: addr, Token: placeholderToken, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// pkiMinterOn is a PKIMinter on c (no grants, leases noted in leases when
// not nil) and the buffer it logs to.
func pkiMinterOn(t *testing.T, c *vaultapi.Client, leases *vault.TokenLeases) (*vault.PKIMinter, *loginLogBuffer) {
	t.Helper()
	logs := new(loginLogBuffer)
	m, err := vault.NewPKIMinter(vault.PKIMinterOptions{Client: c, Grant: noGrant, Log: newLoginLogger(logs), Leases: leases})
	if err != nil {
		t.Fatal(err)
	}
	return m, logs
}

// checkContains fails unless err says each of want (nil error when want is
// empty); the error's kind and reason count as said.
func checkContains(t *testing.T, what string, err error, want []string) {
	t.Helper()
	if len(want) == 0 {
		if err != nil {
			t.Errorf("%s = %v, want nil", what, err)
		}
		return
	}
	if err == nil {
		t.Fatalf("%s = nil, want an error saying %q", what, want)
	}
	text := err.Error() + " " + loginErrOf(err).Reason
	for _, s := range want {
		if !strings.Contains(text, s) {
			t.Errorf("%s = %q, want it to say %q", what, err, s)
		}
	}
}

// TestPKIMinterCheckRolesRealVault: against a real Vault and a broker
// token holding only PKIBrokerPolicy, CheckRoles passes a role that stores
// its certificates and refuses one with no_store=true.
func TestPKIMinterCheckRolesRealVault(t *testing.T) {
	v := harness.StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := v.Client
	for _, mount := range []string{"pki", "pki_int"} {
		if err := root.Sys().MountWithContext(ctx, mount, &vaultapi.MountInput{Type: "pki"}); err != nil {
			t.Fatal(err)
		}
	}
	write := func(path string, data map[string]any) { t.Helper(); writeVault(t, ctx, root, path, data) }
	write("pki/roles/web", map[string]any{"allow_any_name": true})
	write("pki_int/roles/svc", map[string]any{"allow_any_name": true})
	var hcl strings.Builder
	for _, p := range []string{"pki/issue/web", "pki_int/issuer/default/issue/svc"} {
		h, err := vault.PKIBrokerPolicy(p)
		if err != nil {
			t.Fatal(err)
		}
		hcl.WriteString(h)
	}
	putPolicies(t, ctx, root, map[string]string{"keytrail-pki": hcl.String()})
	c := newTokenClient(t, ctx, v, &vaultapi.TokenCreateRequest{Policies: []string{"keytrail-pki"}, NoDefaultPolicy: true, TTL: "1h"}, 10*time.Second)
	m, logs := pkiMinterOn(t, c, nil)
	pol := policyWithGrants(t, []string{"g-web", "g-int"}, pkiRoleGrants)
	checkContains(t, "CheckRoles(stored)", m.CheckRoles(ctx, pol), nil)
	if logs.String() != "" {
		t.Errorf("logs = %s, want none (PKIBrokerPolicy reads the roles)", logs.String())
	}
	write("pki_int/roles/svc", map[string]any{"allow_any_name": true, "no_store": true})
	checkContains(t, "CheckRoles(no_store)", m.CheckRoles(ctx, pol), []string{"vault_config", `grant "g-int"`, "pki_int/roles/svc", "no_store=true"})
}

// TestPKIRoleCheckStopsWhenVaultDoesNotAnswer: the role check of a reload
// (or a start-up) while Vault does not answer (down, black-holed: each
// read then takes vault.timeout) reads no further role after the first
// that got no answer: the policy reload waited vault.timeout per pki grant
// for nothing. The roles it did not read are logged, and nothing fails.
func TestPKIRoleCheckStopsWhenVaultDoesNotAnswer(t *testing.T) {
	var mu sync.Mutex
	var reqs []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		reqs = append(reqs, r.Method+" "+r.URL.Path)
		mu.Unlock()
		conn, _, err := w.(http.Hijacker).Hijack() // no answer at all
		if err == nil {
			_ = conn.Close()
		}
	}))
	defer srv.Close()
	c := placeholderClient(t, srv.URL)
	var logs loginLogBuffer
	pol := policyWithGrants(t, []string{"g-web", "g-int"}, pkiRoleGrants)
	if err := vault.CheckPKIRoles(context.Background(), c, pol, newLoginLogger(&logs)); err != nil {
		t.Errorf("CheckPKIRoles with Vault not answering = %v, want nil (logged)", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reqs) != 1 {
		t.Errorf("role reads with Vault not answering = %q, want only the first", reqs)
	}
	for _, s := range []string{"pki/roles/web", "g-int"} {
		if !strings.Contains(logs.String(), s) {
			t.Errorf("logs do not say %q:\n%s", s, logs.String())
		}
	}
}

// TestPKIMinterCheckRolesWarnsOncePerChange: a role the broker cannot read
// is warned about at the first check, not again at every policy reload
// while it stays unreadable for the same reason; it becoming readable is
// logged once, and becoming unreadable again (or for another reason) is
// warned about again.
func TestPKIMinterCheckRolesWarnsOncePerChange(t *testing.T) {
	var mu sync.Mutex
	status := 403
	web := func(w http.ResponseWriter) {
		mu.Lock()
		st := status
		mu.Unlock()
		var data map[string]any
		if st == 200 {
			data = map[string]any{"no_store": false}
		}
		roleAnswer(st, data)(w)
	}
	setStatus := func(s int) { mu.Lock(); status = s; mu.Unlock() }
	m, logs := pkiMinterOn(t, placeholderClient(t, roleServer(t, web, roleAnswer(200, map[string]any{"no_store": false}))), nil)
	pol := policyWithGrants(t, []string{"g-web", "g-int"}, pkiRoleGrants)
	const warned = "could not check the pki role"
	const readable = "pki role of the grant can be read again"
	check := func(step string, wantWarnings, wantReadable int) {
		t.Helper()
		if err := m.CheckRoles(context.Background(), pol); err != nil {
			t.Fatalf("%s: CheckRoles() = %v, want nil", step, err)
		}
		if n := strings.Count(logs.String(), warned); n != wantWarnings {
			t.Errorf("%s: %d warnings %q in total, want %d:\n%s", step, n, warned, wantWarnings, logs.String())
		}
		if n := strings.Count(logs.String(), readable); n != wantReadable {
			t.Errorf("%s: %d lines %q in total, want %d:\n%s", step, n, readable, wantReadable, logs.String())
		}
	}
	check("start-up, 403", 1, 0)
	check("reload, still 403", 1, 0)
	check("reload, still 403 again", 1, 0)
	setStatus(404)
	check("reload, now no such role", 2, 0)
	setStatus(200)
	check("reload, readable", 2, 1)
	check("reload, still readable", 2, 1)
	setStatus(403)
	check("reload, 403 again", 3, 1)
	// A grant dropped from the policy and added back is checked anew.
	if err := m.CheckRoles(context.Background(), policyWithGrants(t, []string{"g-int"}, pkiRoleGrants[strings.Index(pkiRoleGrants, "  - name: g-int"):])); err != nil {
		t.Fatal(err)
	}
	check("reload with the grant back, 403", 4, 1)
}

// TestPKIMinterCheckRolesKeyedByReason: whether a role's unreadability
// changed is judged by its stable reason (the error's reason and Vault's
// status), not by the error's text: Vault's text may differ from one read
// to the next for the same cause, and must not make every policy reload
// warn again. Another status is another reason.
func TestPKIMinterCheckRolesKeyedByReason(t *testing.T) {
	var mu sync.Mutex
	status, n := 403, 0
	web := func(w http.ResponseWriter) { // each read's text names the read
		mu.Lock()
		n++
		st, seq := status, n
		mu.Unlock()
		w.WriteHeader(st)
		_ = json.NewEncoder(w).Encode(map[string]any{"errors": []string{fmt.Sprintf("permission denied (request %d)", seq)}})
	}
	m, logs := pkiMinterOn(t, placeholderClient(t, roleServer(t, web, roleAnswer(200, map[string]any{"no_store": false}))), nil)
	pol := policyWithGrants(t, []string{"g-web", "g-int"}, pkiRoleGrants)
	const warned = "could not check the pki role"
	check := func(step string, wantWarnings int) {
		t.Helper()
		if err := m.CheckRoles(context.Background(), pol); err != nil {
			t.Fatalf("%s: CheckRoles() = %v, want nil", step, err)
		}
		if n := strings.Count(logs.String(), warned); n != wantWarnings {
			t.Errorf("%s: %d warnings %q in total, want %d:\n%s", step, n, warned, wantWarnings, logs.String())
		}
	}
	check("start-up, 403", 1)
	check("reload, 403 with another text", 1)
	check("reload, 403 with a third text", 1)
	mu.Lock()
	status = 400
	mu.Unlock()
	check("reload, 400", 2)
	check("reload, 400 with another text", 2)
	if !strings.Contains(logs.String(), `"reason":"vault_denied: status 403"`) || !strings.Contains(logs.String(), `"reason":"vault_rejected: status 400"`) {
		t.Errorf("the warnings do not name their reasons:\n%s", logs.String())
	}
}
