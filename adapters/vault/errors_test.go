package vault

import (
	"context"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// A Vault behind a front proxy with basic auth is addressed as
// https://user:password@host: Vault's error answers must not carry that
// password into the error text the broker logs.
func TestVaultErrorHidesAddressPassword(t *testing.T) {
	t.Parallel()
	const password = "PROXY-PASSWORD-MARKER-7"
	f := newFakeVault(t, map[string]http.HandlerFunc{
		"PUT /v1/auth/token/create-orphan":   replyRaw(500, `{"errors":["internal error"]}`),
		"PUT /v1/auth/token/revoke-accessor": replyRaw(403, `{"errors":["permission denied"]}`),
		"GET /v1/sys/health":                 replyRaw(502, `<html>bad gateway</html>`),
	})
	u, err := url.Parse(f.srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword("keytrail", password)
	c, err := NewClient(ClientOptions{Address: u.String(), Token: brokerToken, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("NewClient: %v", err)
	}
	m, err := NewTokenMinter(TokenMinterOptions{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	_, mintErr := m.Mint(context.Background(), tokenReq(nil))
	revokeErr := m.Revoke(context.Background(), &broker.Issuance{Refs: broker.CredentialRefs{Accessor: "acc"}})
	healthErr := Health(context.Background(), c)
	for name, err := range map[string]error{"Mint": mintErr, "Revoke": revokeErr, "Health": healthErr} {
		if err == nil {
			t.Errorf("%s = nil error, want Vault's error", name)
			continue
		}
		if strings.Contains(err.Error(), password) {
			t.Errorf("%s error = %q, leaks the password of vault.address", name, err)
		}
		if !strings.Contains(err.Error(), "/v1/") {
			t.Errorf("%s error = %q, want the request URL kept for the log", name, err)
		}
	}
}
