package vault_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"testing"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/adapters/memstore"
	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// slowAnswer lets Vault create a token at once but holds its answer back
// until released; a request whose context ends meanwhile fails, as it does
// over a slow network, while Vault keeps the token.
type slowAnswer struct {
	next     http.RoundTripper
	accessor chan string // the created token's accessor
	release  chan struct{}
}

func (s *slowAnswer) RoundTrip(r *http.Request) (*http.Response, error) {
	if r.URL.Path != "/v1/auth/token/create-orphan" {
		return s.next.RoundTrip(r)
	}
	resp, err := s.next.RoundTrip(r.Clone(context.WithoutCancel(r.Context())))
	if err != nil {
		return nil, err
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		return nil, err
	}
	var sec vaultapi.Secret
	if err := json.Unmarshal(body, &sec); err != nil || sec.Auth == nil {
		return nil, errors.New("create-orphan answer without auth block")
	}
	s.accessor <- sec.Auth.Accessor
	select {
	case <-r.Context().Done():
		return nil, r.Context().Err()
	case <-s.release:
	}
	resp.Body = io.NopCloser(bytes.NewReader(body))
	return resp, nil
}

// TestRealVaultClientGoneDuringMint: a caller that goes away while Vault
// creates its token leaves no live token nobody recorded. The exchange
// records the token (store and audit log) and revokes it in Vault at once.
// (The caller's cancelled context cut the mint: the token stayed valid in
// Vault until its explicit_max_ttl, unknown to the store and the audit
// log.)
func TestRealVaultClientGoneDuringMint(t *testing.T) {
	v := harness.StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := v.Client

	gate := &slowAnswer{next: http.DefaultTransport, accessor: make(chan string, 1), release: make(chan struct{})}
	cfg := vaultapi.DefaultConfig()
	cfg.Address = v.Addr
	cfg.MaxRetries = 0
	cfg.HttpClient = &http.Client{Transport: gate}
	c, err := vaultapi.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken(root.Token())
	m, err := vault.NewTokenMinter(vault.TokenMinterOptions{Client: c})
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policies.Parse("test.yaml", []byte(`
version: 1
issuers:
  - {name: k8s, issuer: https://k8s.example, jwks_url: https://k8s.example/jwks, audiences: [keytrail], algorithms: [ES256]}
workloads:
  - name: app
    owner: team-app
    match: {issuer: k8s, subject: app}
    grants: [app-vault]
grants:
  - {name: app-vault, kind: vault_token, ttl: 15m, vault_token: {policies: [default]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	authn := brokertest.Authn{"app": {IssuerName: "k8s", Iss: "https://k8s.example", Sub: "app", JTI: "jti-1",
		IssuedAt: time.Now(), Expiry: time.Now().Add(time.Hour), Claims: map[string]any{"sub": "app", "iss": "https://k8s.example"}}}
	store, sink := memstore.New(time.Now), &brokertest.Sink{}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: m},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: m},
		Store:    store, Audit: sink,
		MintTimeout: 30 * time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}

	cctx, leave := context.WithCancel(ctx)
	defer leave()
	done := make(chan error, 1)
	go func() {
		res, err := svc.Exchange(cctx, broker.ExchangeRequest{SubjectToken: "app", Grant: "app-vault", RequestID: "req_gone"})
		if res != nil {
			err = errors.New("a credential was returned")
		}
		done <- err
	}()
	var accessor string
	select {
	case accessor = <-gate.accessor:
	case err := <-done:
		t.Fatalf("Exchange() = %v before Vault created the token", err)
	}
	leave() // the caller goes away while Vault's answer is on its way
	close(gate.release)
	if err := <-done; broker.AsError(err).Reason != "client_gone" {
		t.Errorf("Exchange() = %v, want reason client_gone", err)
	}

	if _, err := root.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": accessor}); err == nil {
		t.Errorf("token %s is still valid in Vault, want it revoked", accessor)
	}
	is, err := store.FindIssuance(ctx, broker.RefAccessor, accessor)
	if err != nil {
		t.Fatalf("the store does not know token %s: %v", accessor, err)
	}
	if is.RevokedAt.IsZero() {
		t.Errorf("stored issuance %s is not marked revoked", is.ID)
	}
	var types []string
	for _, ev := range sink.Events() {
		if ev.Credential != nil && ev.Credential.Accessor == accessor {
			types = append(types, ev.Type)
		}
	}
	if want := []string{audit.TypeIssue, audit.TypeOrphanRevoked}; !slices.Equal(types, want) {
		t.Errorf("audit events naming the token = %v, want %v", types, want)
	}
}
