package broker_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// The example policies (policies/examples, the policies written in the
// comments of docs/examples and the policy ConfigMap of docs/deploy) are
// exchanged against, with tokens shaped as their platforms issue them: each
// must load and do what its comments say.

// exampleToken is one identity token of an example's platform.
type exampleToken struct {
	issuer, iss, sub, jti string
	claims                map[string]any
}

func (tk exampleToken) identity() *broker.Identity {
	c := map[string]any{"iss": tk.iss, "sub": tk.sub, "jti": tk.jti}
	for k, v := range tk.claims {
		c[k] = v
	}
	return &broker.Identity{IssuerName: tk.issuer, Iss: tk.iss, Sub: tk.sub, JTI: tk.jti, Claims: c}
}

// exampleExchange is one exchange against an example policy and its
// outcome: the workload, owner and credential lifetime, or the deny reason.
type exampleExchange struct {
	name         string
	token        exampleToken
	grant        string
	ttl          time.Duration // asked for; 0 = the grant's
	wantWorkload string
	wantOwner    string
	wantTTL      time.Duration
	wantReason   string
}

// exampleService is a Service over pol whose authenticator accepts each
// exchange's token under the exchange's name.
func exampleService(t *testing.T, pol *policies.Policy, tokens map[string]exampleToken) *broker.Service {
	t.Helper()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	authn := brokertest.Authn{}
	for name, tk := range tokens {
		authn[name] = tk.identity()
	}
	m := &brokertest.Minter{}
	kinds := []string{broker.KindVaultToken, broker.KindJWT, broker.KindVaultDynamic, broker.KindProxy, broker.KindPKI}
	minters, revokers := map[string]broker.Minter{}, map[string]broker.Revoker{}
	for _, k := range kinds {
		minters[k], revokers[k] = m, m
	}
	svc, err := broker.NewService(broker.Deps{
		Policy:     func() *policies.Policy { return pol },
		Authn:      func() broker.Authenticator { return authn },
		Minters:    minters,
		Revokers:   revokers,
		Store:      memstore.New(func() time.Time { return now }),
		Audit:      &brokertest.Sink{},
		AuditChain: "chn_examples",
		Now:        func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func runExampleExchanges(t *testing.T, pol *policies.Policy, tests []exampleExchange) {
	t.Helper()
	tokens := map[string]exampleToken{}
	for _, tt := range tests {
		tokens[tt.name] = tt.token
	}
	svc := exampleService(t, pol, tokens)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: tt.name, Grant: tt.grant, TTL: tt.ttl})
			if tt.wantReason != "" {
				var e *broker.Error
				if !errors.As(err, &e) || e.Reason != tt.wantReason {
					t.Fatalf("Exchange(%s) = %+v, %v; want reason %s", tt.grant, res, err, tt.wantReason)
				}
				return
			}
			if err != nil {
				t.Fatalf("Exchange(%s) = %v; want workload %s", tt.grant, err, tt.wantWorkload)
			}
			is := res.Issuance
			if is.Workload != tt.wantWorkload || is.Owner != tt.wantOwner || is.Grant != tt.grant {
				t.Fatalf("Exchange(%s) issued workload %q owner %q grant %q; want %q %q %q", tt.grant, is.Workload, is.Owner, is.Grant, tt.wantWorkload, tt.wantOwner, tt.grant)
			}
			if got := time.Duration(res.ExpiresIn) * time.Second; got != tt.wantTTL {
				t.Fatalf("Exchange(%s).ExpiresIn = %s; want %s", tt.grant, got, tt.wantTTL)
			}
		})
	}
}

// sessionsOf exchanges each token for grant and returns its session id.
func sessionsOf(t *testing.T, pol *policies.Policy, grant string, tokens ...exampleToken) []string {
	t.Helper()
	named := map[string]exampleToken{}
	for i, tk := range tokens {
		named[string(rune('a'+i))] = tk
	}
	svc := exampleService(t, pol, named)
	var out []string
	for i := range tokens {
		res, err := svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: string(rune('a' + i)), Grant: grant})
		if err != nil {
			t.Fatalf("Exchange(token %d, %s) = %v", i, grant, err)
		}
		out = append(out, res.Issuance.SessionID)
	}
	return out
}

func TestExamplePolicyExchanges(t *testing.T) {
	pol, err := policies.LoadExamples()
	if err != nil {
		t.Fatalf("LoadExamples() = %v", err)
	}
	const iss = "http://127.0.0.1:7701"
	payments := func(jti, ns, session string) exampleToken {
		return exampleToken{issuer: "demo", iss: iss, sub: "system:serviceaccount:payments:api", jti: jti,
			claims: map[string]any{"namespace": ns, "session": session}}
	}
	ci := func(sub string) exampleToken {
		return exampleToken{issuer: "demo", iss: iss, sub: sub, jti: "ci-1", claims: map[string]any{"run_id": "7"}}
	}
	runExampleExchanges(t, pol, []exampleExchange{
		{name: "ok/payments-vault", token: payments("p1", "payments", "s1"), grant: "payments-vault", wantWorkload: "payments-api", wantOwner: "team-payments", wantTTL: 15 * time.Minute},
		{name: "ok/payments-orders-jwt", token: payments("p2", "payments", "s1"), grant: "orders-jwt", wantWorkload: "payments-api", wantOwner: "team-payments", wantTTL: 5 * time.Minute},
		{name: "ok/payments-shorter-ttl", token: payments("p3", "payments", "s1"), grant: "payments-vault", ttl: time.Minute, wantWorkload: "payments-api", wantOwner: "team-payments", wantTTL: time.Minute},
		{name: "ok/payments-longer-ttl-capped", token: payments("p4", "payments", "s1"), grant: "payments-vault", ttl: 24 * time.Hour, wantWorkload: "payments-api", wantOwner: "team-payments", wantTTL: 15 * time.Minute},
		{name: "fail/payments-other-grant", token: payments("p5", "payments", "s1"), grant: "deploy-vault", wantReason: "grant_not_allowed"},
		{name: "fail/payments-other-namespace", token: payments("p6", "default", "s1"), grant: "payments-vault", wantReason: "no_workload"},
		{name: "fail/payments-namespace-case", token: payments("p7", "Payments", "s1"), grant: "payments-vault", wantReason: "no_workload"},
		{name: "fail/unknown-grant", token: payments("p8", "payments", "s1"), grant: "nope", wantReason: "unknown_grant"},
		{name: "ok/ci-deploy", token: ci("repo:acme/deploy:ref:refs/heads/main"), grant: "deploy-vault", wantWorkload: "ci-deploy", wantOwner: "team-platform", wantTTL: 10 * time.Minute},
		{name: "fail/ci-other-grant", token: ci("repo:acme/deploy:ref:refs/heads/main"), grant: "payments-vault", wantReason: "grant_not_allowed"},
		// subject_pattern is anchored: the whole sub must match.
		{name: "fail/ci-prefix", token: ci("xrepo:acme/deploy:ref:refs/heads/main"), grant: "deploy-vault", wantReason: "no_workload"},
		{name: "fail/ci-other-repo", token: ci("repo:acme/deploy-tools:ref:refs/heads/main"), grant: "deploy-vault", wantReason: "no_workload"},
		{name: "fail/ci-no-colon", token: ci("repo:acme/deploy"), grant: "deploy-vault", wantReason: "no_workload"},
		{name: "fail/ci-newline", token: ci("repo:acme/deploy:\nrepo:evil/x"), grant: "deploy-vault", wantReason: "no_workload"},
	})

	// "all credentials of one session share its id".
	s := sessionsOf(t, pol, "payments-vault", payments("j1", "payments", "s1"), payments("j2", "payments", "s1"), payments("j3", "payments", "s2"))
	if s[0] != s[1] || s[0] == s[2] {
		t.Fatalf("session ids of tokens with session s1, s1, s2 = %v; want the first two equal and the third different", s)
	}

	// The secops admin: a groups claim that contains "secops" holds every role.
	admins := map[string]exampleToken{
		"secops": {issuer: "demo", iss: iss, sub: "alice", claims: map[string]any{"groups": []any{"staff", "secops"}}},
		"staff":  {issuer: "demo", iss: iss, sub: "bob", claims: map[string]any{"groups": []any{"staff"}}},
	}
	svc := exampleService(t, pol, admins)
	for _, role := range []string{broker.RoleRevoke, broker.RoleTrace, broker.RoleReport} {
		if a, err := svc.AuthorizeAdmin(context.Background(), broker.AdminRequest{Token: "secops", Role: role, Action: "test"}); err != nil || a.Name != "secops" {
			t.Fatalf("AuthorizeAdmin(secops, %s) = %+v, %v; want the secops admin", role, a, err)
		}
		var e *broker.Error
		if _, err := svc.AuthorizeAdmin(context.Background(), broker.AdminRequest{Token: "staff", Role: role, Action: "test"}); !errors.As(err, &e) || e.Reason != "not_admin" {
			t.Fatalf("AuthorizeAdmin(staff, %s) = %v; want not_admin", role, err)
		}
	}
}

// commentedPolicy returns the policy written in the comments of a
// docs/examples file after "# The matching policy", as a version 1 policy
// with extra appended (the grants it names, which the comment leaves out).
func commentedPolicy(t *testing.T, file, extra string) *policies.Policy {
	t.Helper()
	src := commentedPolicyText(t, file, extra)
	pol, err := policies.Parse(file, []byte(src))
	if err != nil {
		t.Fatalf("the policy in the comments of %s does not load: %v\n%s", file, err, src)
	}
	return pol
}

// commentedPolicyText is the text commentedPolicy parses.
func commentedPolicyText(t *testing.T, file, extra string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	b.WriteString("version: 1\n")
	in := false
	for _, l := range strings.Split(string(data), "\n") {
		switch {
		case strings.HasPrefix(l, "# The matching policy"):
			in = true
		case in && strings.HasPrefix(l, "#   "):
			b.WriteString(strings.TrimPrefix(l, "#   ") + "\n")
		case in && strings.TrimSpace(l) == "#":
		case in:
			in = false
		}
	}
	if !strings.Contains(b.String(), "workloads:") {
		t.Fatalf("%s: no commented policy with workloads found", file)
	}
	b.WriteString(extra)
	return b.String()
}

func TestDocsGitHubActionsExamplePolicy(t *testing.T) {
	pol := commentedPolicy(t, "../docs/examples/github-actions.yml", `grants:
  - {name: deploy-vault, kind: vault_token, ttl: 10m, vault_token: {policies: [deploy]}}
`)
	const iss = "https://token.actions.githubusercontent.com"
	gh := func(sub, owner, jti, attempt string) exampleToken {
		ownerID := "46576199"
		if owner != "acme" {
			// Another account that registered the name after acme freed it.
			ownerID = "99999999"
		}
		return exampleToken{issuer: "github", iss: iss, sub: sub, jti: jti, claims: map[string]any{
			"repository": "acme/deploy", "repository_owner": "acme", "environment": "production",
			"repository_owner_id": ownerID, "repository_id": "1104004353",
			"ref": "refs/heads/main", "run_id": "4242", "run_attempt": attempt,
		}}
	}
	const sub = "repo:acme/deploy:environment:production"
	runExampleExchanges(t, pol, []exampleExchange{
		{name: "ok/production-job", token: gh(sub, "acme", "j1", "1"), grant: "deploy-vault", wantWorkload: "ci-deploy", wantOwner: "team-platform", wantTTL: 10 * time.Minute},
		{name: "fail/same-names-other-owner-id", token: gh(sub, "re-registered", "j2", "1"), grant: "deploy-vault", wantReason: "no_workload"},
		{name: "fail/branch-job-not-environment", token: gh("repo:acme/deploy:ref:refs/heads/main", "acme", "j3", "1"), grant: "deploy-vault", wantReason: "no_workload"},
		{name: "fail/pull-request", token: gh("repo:acme/deploy:pull_request", "acme", "j4", "1"), grant: "deploy-vault", wantReason: "no_workload"},
	})
	// "one session per run attempt (a re-run is a new one)".
	s := sessionsOf(t, pol, "deploy-vault", gh(sub, "acme", "a", "1"), gh(sub, "acme", "b", "1"), gh(sub, "acme", "c", "2"))
	if s[0] != s[1] || s[0] == s[2] {
		t.Fatalf("session ids of run attempts 1, 1, 2 = %v; want the first two equal and the third different", s)
	}
}

// k8sClaims are the claims of a projected service-account token.
func k8sClaims(ns, sa, pod string) map[string]any {
	return map[string]any{"aud": []any{"keytrail"}, "kubernetes.io": map[string]any{
		"namespace":      ns,
		"pod":            map[string]any{"name": "payments-api-7d9c", "uid": pod},
		"serviceaccount": map[string]any{"name": sa, "uid": "sa-uid"},
	}}
}

func TestDocsKubernetesExamplePolicy(t *testing.T) {
	pol := commentedPolicy(t, "../docs/examples/kubernetes-deployment.yaml", `grants:
  - {name: payments-db, kind: vault_dynamic, ttl: 30m, vault_dynamic: {path: database/creds/payments-rw}}
  - {name: payments-vault, kind: vault_token, ttl: 15m, vault_token: {policies: [payments-read]}}
`)
	k8s := func(sub, ns, pod string) exampleToken {
		return exampleToken{issuer: "k8s-prod", iss: "https://kubernetes.default.svc", sub: sub, claims: k8sClaims(ns, "api", pod)}
	}
	const sub = "system:serviceaccount:payments:api"
	runExampleExchanges(t, pol, []exampleExchange{
		{name: "ok/payments-db", token: k8s(sub, "payments", "pod-1"), grant: "payments-db", wantWorkload: "payments-api", wantOwner: "team-payments", wantTTL: 30 * time.Minute},
		{name: "ok/payments-vault", token: k8s(sub, "payments", "pod-1"), grant: "payments-vault", wantWorkload: "payments-api", wantOwner: "team-payments", wantTTL: 15 * time.Minute},
		{name: "fail/other-namespace-claim", token: k8s(sub, "default", "pod-1"), grant: "payments-vault", wantReason: "no_workload"},
		{name: "fail/other-service-account", token: k8s("system:serviceaccount:payments:default", "payments", "pod-1"), grant: "payments-vault", wantReason: "no_workload"},
	})
	// "one session per pod".
	s := sessionsOf(t, pol, "payments-vault", k8s(sub, "payments", "pod-1"), k8s(sub, "payments", "pod-1"), k8s(sub, "payments", "pod-2"))
	if s[0] != s[1] || s[0] == s[2] {
		t.Fatalf("session ids of pods 1, 1, 2 = %v; want the first two equal and the third different", s)
	}
}

// TestDocsDeployPolicyConfigMap loads the policy files of the keytrail-policies
// ConfigMap of docs/deploy/kubernetes as the broker sees the mounted
// directory, and exchanges against them.
func TestDocsDeployPolicyConfigMap(t *testing.T) {
	data, err := os.ReadFile("../docs/deploy/kubernetes/10-config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	fsys := fstest.MapFS{}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var obj struct {
			Kind     string
			Metadata struct{ Name string }
			Data     map[string]string
		}
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if obj.Kind == "ConfigMap" && obj.Metadata.Name == "keytrail-policies" {
			for name, body := range obj.Data {
				fsys["policies/"+name] = &fstest.MapFile{Data: []byte(body)}
			}
		}
	}
	if len(fsys) == 0 {
		t.Fatal("no keytrail-policies ConfigMap in 10-config.yaml")
	}
	pol, err := policies.LoadFS(fsys, "policies")
	if err != nil {
		t.Fatalf("the keytrail-policies ConfigMap does not load: %v", err)
	}
	k8s := func(sub, ns string) exampleToken {
		return exampleToken{issuer: "k8s", iss: "https://kubernetes.default.svc.cluster.local", sub: sub, claims: k8sClaims(ns, "api", "pod-1")}
	}
	const sub = "system:serviceaccount:payments:api"
	runExampleExchanges(t, pol, []exampleExchange{
		{name: "ok/payments-vault", token: k8s(sub, "payments"), grant: "payments-vault", wantWorkload: "payments-api", wantOwner: "team-payments", wantTTL: 15 * time.Minute},
		{name: "ok/orders-jwt", token: k8s(sub, "payments"), grant: "orders-jwt", wantWorkload: "payments-api", wantOwner: "team-payments", wantTTL: 5 * time.Minute},
		{name: "fail/other-namespace", token: k8s(sub, "orders"), grant: "payments-vault", wantReason: "no_workload"},
		// An SSO identity is an admin, not a workload.
		{name: "fail/sso-token", token: exampleToken{issuer: "corp-sso", iss: "https://sso.example.com", sub: "alice", claims: map[string]any{"groups": []any{"secops"}}}, grant: "payments-vault", wantReason: "no_workload"},
	})
	svc := exampleService(t, pol, map[string]exampleToken{
		"alice": {issuer: "corp-sso", iss: "https://sso.example.com", sub: "alice", claims: map[string]any{"groups": []any{"eng", "secops"}}},
		"pod":   k8s(sub, "payments"),
	})
	if a, err := svc.AuthorizeAdmin(context.Background(), broker.AdminRequest{Token: "alice", Role: broker.RoleRevoke, Action: "test"}); err != nil || a.Name != "secops" {
		t.Fatalf("AuthorizeAdmin(alice in secops) = %+v, %v; want secops", a, err)
	}
	var e *broker.Error
	if _, err := svc.AuthorizeAdmin(context.Background(), broker.AdminRequest{Token: "pod", Role: broker.RoleRevoke, Action: "test"}); !errors.As(err, &e) || e.Reason != "not_admin" {
		t.Fatalf("AuthorizeAdmin(workload token) = %v; want not_admin", err)
	}
}
