package broker_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"strconv"
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

// The policies of docs/examples again, this time with identity tokens
// signed as their platforms sign them and verified by broker/authn: claims
// arrive as decoded JSON (nested objects under "kubernetes.io", numbers as
// json.Number), and the issuer's lifetime cap applies.

// signedIssuer is a test issuer serving its JWKS and discovery document.
func signedIssuer(t *testing.T) *authntest.Issuer {
	t.Helper()
	iss, err := authntest.NewIssuer("RS256")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(iss.Handler())
	t.Cleanup(srv.Close)
	iss.URL = srv.URL
	return iss
}

// signedExchange exchanges tokens against pol, verified by broker/authn.
type signedExchange func(token, grant string) (*broker.Issuance, error)

func signedService(t *testing.T, file, src string) signedExchange {
	t.Helper()
	pol, err := policies.Parse(file, []byte(src))
	if err != nil {
		t.Fatalf("%s with the test issuer does not load: %v\n%s", file, err, src)
	}
	v, err := authn.New(context.Background(), authn.Options{Issuers: pol.Issuers()})
	if err != nil {
		t.Fatal(err)
	}
	m := &brokertest.Minter{}
	svc, err := broker.NewService(broker.Deps{
		Policy:   func() *policies.Policy { return pol },
		Authn:    func() broker.Authenticator { return v },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: m, broker.KindVaultDynamic: m},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: m, broker.KindVaultDynamic: m},
		Store:    memstore.New(time.Now),
		Audit:    &brokertest.Sink{},
	})
	if err != nil {
		t.Fatal(err)
	}
	return func(token, grant string) (*broker.Issuance, error) {
		res, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: token, Grant: grant})
		if err != nil {
			return nil, err
		}
		return res.Issuance, nil
	}
}

func sign(t *testing.T, iss *authntest.Issuer, c jwt.MapClaims) string {
	t.Helper()
	tok, err := iss.Sign(c)
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func wantIssued(t *testing.T, name string, is *broker.Issuance, err error, workload string) *broker.Issuance {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: Exchange = %v; want workload %s", name, err, workload)
	}
	if is.Workload != workload {
		t.Fatalf("%s: issued to workload %q; want %q", name, is.Workload, workload)
	}
	return is
}

func wantReason(t *testing.T, name string, err error, reason string) {
	t.Helper()
	var e *broker.Error
	if !errors.As(err, &e) || e.Reason != reason {
		t.Fatalf("%s: Exchange = %v; want reason %s", name, err, reason)
	}
}

func TestDocsKubernetesExampleSignedTokens(t *testing.T) {
	k8s := signedIssuer(t)
	src := commentedPolicyText(t, "../docs/examples/kubernetes-deployment.yaml", `grants:
  - {name: payments-vault, kind: vault_token, ttl: 15m, vault_token: {policies: [payments-read]}}
  - {name: payments-db, kind: vault_dynamic, ttl: 30m, vault_dynamic: {path: database/creds/payments-rw}}
`)
	src = strings.NewReplacer(
		"issuer: https://kubernetes.default.svc\n", "issuer: "+k8s.URL+"\n",
		"jwks_url: https://kubernetes.default.svc/openid/v1/jwks", "jwks_url: "+k8s.URL+authntest.JWKSPath,
		"ca_file: /etc/keytrail/k8s-ca.pem", "",
	).Replace(src)
	exchange := signedService(t, "kubernetes-deployment.yaml", src)

	// A projected service-account token as the API server issues it for a
	// pod (expirationSeconds life, nbf = iat, a jti since Kubernetes 1.29).
	now := time.Now()
	n := 0
	token := func(ns, podUID string, life time.Duration) string {
		n++
		return sign(t, k8s, jwt.MapClaims{
			"aud": []string{"keytrail"}, "iss": k8s.URL, "sub": "system:serviceaccount:" + ns + ":api",
			"iat": now.Unix(), "nbf": now.Unix(), "exp": now.Add(life).Unix(), "jti": "jti-" + strconv.Itoa(n),
			"kubernetes.io": map[string]any{
				"namespace":      ns,
				"node":           map[string]any{"name": "node-1", "uid": "node-uid"},
				"pod":            map[string]any{"name": "payments-api-7d9c", "uid": podUID},
				"serviceaccount": map[string]any{"name": "api", "uid": "sa-uid"},
				"warnafter":      now.Add(life * 8 / 10).Unix(),
			},
		})
	}
	is1, err := exchange(token("payments", "pod-1", time.Hour), "payments-vault")
	is1 = wantIssued(t, "pod-1", is1, err, "payments-api")
	// The kubelet's rotated token of the same pod, for another grant.
	is2, err := exchange(token("payments", "pod-1", time.Hour), "payments-db")
	is2 = wantIssued(t, "pod-1 rotated token", is2, err, "payments-api")
	is3, err := exchange(token("payments", "pod-2", time.Hour), "payments-vault")
	is3 = wantIssued(t, "pod-2", is3, err, "payments-api")
	if is1.SessionID != is2.SessionID || is1.SessionID == is3.SessionID {
		t.Fatalf("session ids of pod-1, pod-1 (rotated token), pod-2 = %s, %s, %s; want one session per pod", is1.SessionID, is2.SessionID, is3.SessionID)
	}
	_, err = exchange(token("orders", "pod-3", time.Hour), "payments-vault")
	wantReason(t, "other namespace", err, "no_workload")
	// More than 24h (max_token_lifetime, omitted) is refused, as the
	// example's expirationSeconds comment says.
	_, err = exchange(token("payments", "pod-1", 48*time.Hour), "payments-vault")
	wantReason(t, "48h token", err, "lifetime_too_long")
}

func TestDocsGitHubActionsExampleSignedTokens(t *testing.T) {
	gh := signedIssuer(t)
	src := commentedPolicyText(t, "../docs/examples/github-actions.yml", `grants:
  - {name: deploy-vault, kind: vault_token, ttl: 10m, vault_token: {policies: [deploy]}}
`)
	src = strings.Replace(src, "issuer: https://token.actions.githubusercontent.com\n", "issuer: "+gh.URL+"\n", 1)
	exchange := signedService(t, "github-actions.yml", src)

	// A job token as GitHub issues it: nbf 5 minutes before iat, exp 5
	// minutes after, run_id and run_attempt as strings, a jti per token.
	now := time.Now()
	n := 0
	token := func(sub string, runID, attempt any) string {
		n++
		return sign(t, gh, jwt.MapClaims{
			"iss": gh.URL, "aud": "keytrail", "sub": sub, "jti": "6cf8862b-" + strconv.Itoa(n),
			"iat": now.Unix(), "nbf": now.Add(-5 * time.Minute).Unix(), "exp": now.Add(5 * time.Minute).Unix(),
			"actor": "octocat", "actor_id": "1492007", "environment": "production", "event_name": "push",
			"head_ref": "", "base_ref": "", "ref": "refs/heads/main", "ref_type": "branch", "ref_protected": "true",
			"repository": "acme/deploy", "repository_id": "1104004353", "repository_owner": "acme", "repository_owner_id": "46576199",
			"job_workflow_ref": "acme/deploy/.github/workflows/deploy.yml@refs/heads/main", "workflow": "deploy",
			"run_id": runID, "run_attempt": attempt, "run_number": "4", "sha": "15a5ebfa3fb5ddf10c4b4250e14496bec7f03a56",
			"runner_environment": "github-hosted",
		})
	}
	const sub = "repo:acme/deploy:environment:production"
	a1, err := exchange(token(sub, "27345841282", "1"), "deploy-vault")
	a1 = wantIssued(t, "run attempt 1", a1, err, "ci-deploy")
	// Another job of the same run attempt, with the numbers as JSON
	// numbers (as another issuer might write them): the same session.
	b1, err := exchange(token(sub, 27345841282, 1), "deploy-vault")
	b1 = wantIssued(t, "run attempt 1, numeric claims", b1, err, "ci-deploy")
	a2, err := exchange(token(sub, "27345841282", "2"), "deploy-vault")
	a2 = wantIssued(t, "run attempt 2", a2, err, "ci-deploy")
	if a1.SessionID != b1.SessionID || a1.SessionID == a2.SessionID {
		t.Fatalf("session ids of run attempts 1, 1, 2 = %s, %s, %s; want one session per run attempt", a1.SessionID, b1.SessionID, a2.SessionID)
	}
	_, err = exchange(token("repo:acme/deploy:ref:refs/heads/main", "27345841282", "1"), "deploy-vault")
	wantReason(t, "job without the environment", err, "no_workload")
}
