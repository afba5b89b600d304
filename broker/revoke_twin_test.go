package broker_test

import (
	"context"
	"crypto/elliptic"
	"encoding/base64"
	"errors"
	"math/big"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/authn"
	"github.com/keytrail/keytrail/broker/authn/authntest"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// selfSigned is an ES256 issuer served for t, standing for the broker's
// own JWT signer, and chainPolicy with the keytrail issuer's URLs its own.
func selfSigned(t *testing.T) (*authntest.Issuer, string) {
	t.Helper()
	self, err := authntest.NewIssuer("ES256")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(self.Handler())
	t.Cleanup(srv.Close)
	self.URL = srv.URL
	policy := strings.ReplaceAll(chainPolicy, "https://keytrail.example/.well-known/jwks.json", srv.URL+authntest.JWKSPath)
	policy = strings.ReplaceAll(policy, "https://keytrail.example", srv.URL)
	return self, policy
}

// twinService is a Service on pol (a policy of selfSigned's) whose broker
// JWTs self signs, on a memstore, its time clock's. The k8s token
// "payments" is a fake; every other token is verified for real, against
// the JWKS that serves the key broker JWTs are signed with. more, if not
// nil, sets more of its Deps.
func twinService(t *testing.T, self *authntest.Issuer, pol *policies.Policy, clock func() time.Time, more func(*broker.Deps)) *broker.Service {
	t.Helper()
	verifier, err := authn.New(context.Background(), authn.Options{Issuers: pol.Issuers(), Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	ids := twinAuthn{fake: brokertest.Authn{"payments": identity("system:serviceaccount:payments:api", nil)}, real: verifier}
	minter := &brokertest.Minter{}
	deps := broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return ids },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: minter, broker.KindJWT: jwtSigner{self}},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: minter, broker.KindJWT: minter},
		Store:    memstore.New(clock),
		Audit:    &brokertest.Sink{},
		Now:      clock,
	}
	if more != nil {
		more(&deps)
	}
	svc, err := broker.NewService(deps)
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// An ECDSA signature (r, s) has a twin (r, n-s) that verifies just as well
// (Go's crypto/ecdsa, and so jwt/v5's ES256, accept both). Whoever holds a
// broker JWT can thus write a second, different string that every verifier
// of the broker's JWKS accepts. Once the JWT is revoked, that twin must be
// refused where the JWT itself is: as subject or actor token of an exchange
// and as the Bearer token of introspection and the admin API. (Looking the
// presented string up by its fingerprint finds no issuance for the twin.)
func TestRevokedBrokerJWTSignatureTwinRefused(t *testing.T) {
	now := time.Now()
	clock := func() time.Time { return now }
	self, policy := selfSigned(t)
	pol, err := policies.Parse("twin.yaml", []byte(policy+`
admins:
  - name: agents
    match: {issuer: keytrail, subject: payments-api}
    roles: [trace]
`))
	if err != nil {
		t.Fatal(err)
	}
	svc := twinService(t, self, pol, clock, nil)
	ctx := context.Background()
	handoff, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "handoff-jwt"})
	if err != nil {
		t.Fatal(err)
	}
	twin := signatureTwin(t, handoff.AccessToken)
	for name, tok := range map[string]string{"jwt": handoff.AccessToken, "twin": twin} {
		if _, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: tok, Grant: "payments-vault"}); err != nil {
			t.Fatalf("exchange of the active broker JWT (%s) = %v, want it accepted", name, err)
		}
	}
	if _, err := svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: handoff.Issuance.ID}, "jwt leaked", broker.RevokeOptions{}, "req_r"); err != nil {
		t.Fatal(err)
	}
	for name, tok := range map[string]string{"jwt": handoff.AccessToken, "twin": twin} {
		_, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: tok, Grant: "payments-vault"})
		if !errors.Is(err, broker.ErrDenied) || broker.AsError(err).Reason != "credential_revoked" {
			t.Errorf("exchange of the revoked broker JWT (%s) as subject = %v, want access_denied (credential_revoked)", name, err)
		}
		_, err = svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", ActorToken: tok, Grant: "payments-vault"})
		if !errors.Is(err, broker.ErrDenied) || broker.AsError(err).Reason != "actor_credential_revoked" {
			t.Errorf("exchange with the revoked broker JWT (%s) as actor = %v, want access_denied (actor_credential_revoked)", name, err)
		}
		_, err = svc.Introspect(ctx, broker.IntrospectRequest{CallerToken: tok, Token: "whatever"})
		if !errors.Is(err, broker.ErrUnauthenticated) || broker.AsError(err).Reason != "credential_revoked" {
			t.Errorf("Introspect(caller: revoked broker JWT (%s)) = %v, want invalid_token (credential_revoked)", name, err)
		}
		_, err = svc.AuthorizeAdmin(ctx, broker.AdminRequest{Token: tok, Role: broker.RoleTrace, Action: "trace"})
		if !errors.Is(err, broker.ErrUnauthenticated) || broker.AsError(err).Reason != "credential_revoked" {
			t.Errorf("AuthorizeAdmin(revoked broker JWT (%s)) = %v, want invalid_token (credential_revoked)", name, err)
		}
	}
}

// signatureTwin returns tok with its ES256 signature (r, s) replaced by
// (r, n-s), after checking that jwt/v5 accepts it.
func signatureTwin(t *testing.T, tok string) string {
	t.Helper()
	i := strings.LastIndexByte(tok, '.')
	sig, err := base64.RawURLEncoding.DecodeString(tok[i+1:])
	if err != nil || len(sig) != 64 {
		t.Fatalf("not an ES256 signature: %v", err)
	}
	s := new(big.Int).SetBytes(sig[32:])
	s.Sub(elliptic.P256().Params().N, s)
	s.FillBytes(sig[32:])
	twin := tok[:i+1] + base64.RawURLEncoding.EncodeToString(sig)
	if twin == tok {
		t.Fatal("twin equals the token")
	}
	return twin
}

// jwtSigner mints broker JWTs (kind jwt) as the Vault minter does, signed
// with the test issuer's key.
type jwtSigner struct{ iss *authntest.Issuer }

func (j jwtSigner) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	exp := req.Now.Add(req.TTL).Truncate(time.Second)
	tok, err := j.iss.Sign(jwt.MapClaims{
		"iss": j.iss.URL, "sub": req.Workload, "aud": req.Grant.JWT.Audience, "owner": req.Owner,
		"sid": req.SessionID, "jti": req.IssuanceID, "grant": req.Grant.Name,
		"iat": req.Now.Unix(), "nbf": req.Now.Unix(), "exp": exp.Unix(),
	})
	if err != nil {
		return nil, err
	}
	return &broker.Credential{AccessToken: tok, Refs: broker.CredentialRefs{JTI: req.IssuanceID, ExpiresAt: exp}}, nil
}

// twinAuthn answers from fake for the tokens it knows, else from real.
type twinAuthn struct {
	fake brokertest.Authn
	real broker.Authenticator
}

func (a twinAuthn) Authenticate(ctx context.Context, raw string) (*broker.Identity, error) {
	if _, ok := a.fake[raw]; ok {
		return a.fake.Authenticate(ctx, raw)
	}
	return a.real.Authenticate(ctx, raw)
}
