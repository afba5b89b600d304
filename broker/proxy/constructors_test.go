package proxy_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/proxy"
	"github.com/keytrail/keytrail/policies"
)

func TestNewValidates(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	tests := []struct {
		name    string
		o       proxy.Options
		wantErr []string
	}{
		{name: "ok/minimal", o: proxy.Options{Service: f.svc, Secrets: f.secrets}},
		{name: "fail/nothing", o: proxy.Options{}, wantErr: []string{"Service is required", "Secrets is required"}},
		{name: "fail/bad-host", o: proxy.Options{Service: f.svc, Secrets: f.secrets, Hosts: []string{"evil/x"}}, wantErr: []string{"is not a host"}},
		{name: "fail/negative-limit", o: proxy.Options{Service: f.svc, Secrets: f.secrets, MaxRequestBytes: -1}, wantErr: []string{"must not be negative"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := proxy.New(tt.o)
			if (err != nil) != (len(tt.wantErr) > 0) {
				t.Fatalf("New(%s) = %v, want errors %q", tt.name, err, tt.wantErr)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("New(%s) = %v, want it to mention %q", tt.name, err, w)
				}
			}
		})
	}
}

func TestMinterValidates(t *testing.T) {
	for _, u := range []string{"", "keytrail.example", "ftp://keytrail.example", "https://keytrail.example/?q=1"} {
		if _, err := proxy.NewMinter(proxy.MinterOptions{PublicURL: u}); err == nil {
			t.Errorf("NewMinter(%q) = nil error, want an error", u)
		}
	}
	m, err := proxy.NewMinter(proxy.MinterOptions{PublicURL: "https://keytrail.example/"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	_, err = m.Mint(context.Background(), broker.MintRequest{
		Grant: policies.Grant{Name: "vault", Kind: broker.KindVaultToken, VaultToken: &policies.VaultTokenGrant{}},
		TTL:   time.Minute, Now: now,
	})
	if !errors.Is(err, broker.ErrUnavailable) {
		t.Errorf("Mint(vault_token grant) = %v, want ErrUnavailable", err)
	}
	cred, err := m.Mint(context.Background(), broker.MintRequest{
		Grant: policies.Grant{Name: "stripe", Kind: broker.KindProxy, Proxy: &policies.ProxyGrant{}},
		TTL:   time.Minute, Now: now,
	})
	if err != nil {
		t.Fatal(err)
	}
	if cred.Refs.ExpiresAt != now.Add(time.Minute) || cred.Fields["proxy_url"] != "https://keytrail.example/v1/proxy/stripe/" {
		t.Errorf("Mint = expires %v, fields %v", cred.Refs.ExpiresAt, cred.Fields)
	}
	if strings.Contains(cred.String(), cred.AccessToken) {
		t.Errorf("credential String() prints the token")
	}
	if err := m.Revoke(context.Background(), &broker.Issuance{ID: "iss_x"}); err != nil {
		t.Errorf("Revoke = %v, want nil", err)
	}
}
