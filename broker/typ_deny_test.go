package broker_test

import (
	"context"
	"errors"
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

// TestTokenTypesDenied: an access token (typ at+jwt) of an issuer whose
// policy accepts only its identity tokens (token_types: [JWT]) is refused
// with 401 bad_token_type, and its deny event names the reason; the
// issuer's identity token is exchanged.
func TestTokenTypesDenied(t *testing.T) {
	iss := signedIssuer(t)
	pol, err := policies.Parse("typ.yaml", []byte(`version: 1
issuers:
  - name: idp
    issuer: `+iss.URL+`
    jwks_url: `+iss.URL+authntest.JWKSPath+`
    audiences: [keytrail]
    algorithms: [RS256]
    token_types: [JWT]
workloads:
  - name: api
    owner: team
    match: {issuer: idp, subject: api}
    grants: [g]
grants:
  - {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	v, err := authn.New(context.Background(), authn.Options{Issuers: pol.Issuers()})
	if err != nil {
		t.Fatal(err)
	}
	m := &brokertest.Minter{}
	sink := &brokertest.Sink{}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return v },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: m},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: m},
		Store:    memstore.New(time.Now),
		Audit:    sink,
	})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	token := func(typ string) string {
		tok, err := authntest.SignWith(iss.Key(), map[string]any{"typ": typ}, jwt.MapClaims{
			"iss": iss.URL, "sub": "api", "aud": "keytrail", "iat": now.Unix(), "exp": now.Add(5 * time.Minute).Unix(),
		})
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	_, err = svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: token("at+jwt"), Grant: "g"})
	wantReason(t, "at+jwt token", err, "bad_token_type")
	var be *broker.Error
	if errors.As(err, &be) && broker.StatusOf(be) != 401 {
		t.Errorf("status = %d, want 401", broker.StatusOf(be))
	}
	evs := sink.Events()
	if len(evs) != 1 || evs[0].Type != "deny" || evs[0].Outcome == nil || evs[0].Outcome.Reason != "bad_token_type" || evs[0].Outcome.Status != 401 {
		t.Fatalf("events = %+v, want one deny with outcome 401 reason bad_token_type", evs)
	}
	res, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: token("JWT"), Grant: "g"})
	if err != nil {
		t.Fatalf("Exchange(typ JWT) = %v, want ok", err)
	}
	wantIssued(t, "typ JWT", res.Issuance, nil, "api")
}
