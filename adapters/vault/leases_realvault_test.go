package vault_test

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/e2e/harness"
)

// TestBrokerTokenLeaseRealVault: with a pki role that sets
// generate_lease=true, Vault gives each certificate a lease owned by the
// token that issued it, and revoking that token (as Login's revocation of
// a replaced token does) puts the certificate on the CRL. CheckRoles and
// Mint note such a lease in Leases, which stops Login's revocation.
func TestBrokerTokenLeaseRealVault(t *testing.T) {
	v := harness.StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := v.Client
	if err := root.Sys().MountWithContext(ctx, "pki", &vaultapi.MountInput{Type: "pki", Config: vaultapi.MountConfigInput{MaxLeaseTTL: "87600h"}}); err != nil {
		t.Fatal(err)
	}
	write := func(path string, data map[string]any) { t.Helper(); writeVault(t, ctx, root, path, data) }
	write("pki/root/generate/internal", map[string]any{"common_name": "keytrail test root", "ttl": "87600h", "key_type": "ec", "key_bits": 256})
	write("pki/roles/web", map[string]any{"allow_any_name": true, "enforce_hostnames": false, "allowed_uri_sans": "spiffe://keytrail/*",
		"max_ttl": "1h", "key_type": "ec", "key_bits": 256, "generate_lease": true})
	hcl, err := vault.PKIBrokerPolicy("pki/issue/web")
	if err != nil {
		t.Fatal(err)
	}
	putPolicies(t, ctx, root, map[string]string{"keytrail-pki": hcl})
	// "default" allows revoke-self.
	c := newTokenClient(t, ctx, v, &vaultapi.TokenCreateRequest{Policies: []string{"keytrail-pki", "default"}, TTL: "1h"}, 10*time.Second)
	pol := policyWithGrants(t, []string{"g-web"}, "  - name: g-web\n    kind: pki\n    ttl: 5m\n    pki: {path: pki/issue/web}\n")
	grant, _ := pol.Grant("g-web")

	checked := new(vault.TokenLeases)
	m, err := vault.NewPKIMinter(vault.PKIMinterOptions{Client: c, Grant: pol.Grant, Leases: checked, Log: newLoginLogger(new(loginLogBuffer))})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CheckRoles(ctx, pol); err != nil {
		t.Fatalf("CheckRoles() = %v", err)
	}
	if !checked.Held() {
		t.Error("CheckRoles of a role with generate_lease=true noted no lease")
	}

	minted := new(vault.TokenLeases)
	m, err = vault.NewPKIMinter(vault.PKIMinterOptions{Client: c, Grant: pol.Grant, Leases: minted, Log: newLoginLogger(new(loginLogBuffer))})
	if err != nil {
		t.Fatal(err)
	}
	cred, err := m.Mint(ctx, broker.MintRequest{IssuanceID: "iss_01JLEASE", Workload: "payments-api", Owner: "team", SessionID: "ses_1",
		Grant: *grant, TTL: 5 * time.Minute, Now: time.Now()})
	if err != nil {
		t.Fatalf("Mint() = %v", err)
	}
	if !minted.Held() {
		t.Error("Mint of a certificate with a lease noted none")
	}
	revokedAt := func() int64 {
		sec, err := root.Logical().ReadWithContext(ctx, "pki/cert/"+cred.Refs.Serial)
		if err != nil || sec == nil {
			t.Fatalf("read pki/cert/%s: %v", cred.Refs.Serial, err)
		}
		n, _ := sec.Data["revocation_time"].(json.Number).Int64()
		return n
	}
	if n := revokedAt(); n != 0 {
		t.Fatalf("certificate revoked at %d before its token", n)
	}
	// What Login's revocation of a replaced token did.
	if err := c.Auth().Token().RevokeSelfWithContext(ctx, ""); err != nil {
		t.Fatal(err)
	}
	waitLogin(t, 20*time.Second, "the certificate revoked with the token that issued it", func() bool { return revokedAt() != 0 })
}
