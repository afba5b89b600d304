package policies

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/keytrail/keytrail/policies/internal/yamltest"
	"github.com/keytrail/keytrail/policies/yamlcheck"
)

var update = flag.Bool("update", false, "rewrite golden files in testdata")

// readGoldenLines reads a golden file of one problem per line, rewriting it
// from got first when -update is set.
func readGoldenLines(t *testing.T, path string, got []string) []string {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(strings.Join(got, "\n")+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

func names[T any](xs []T, name func(T) string) []string {
	var out []string
	for _, x := range xs {
		out = append(out, name(x))
	}
	return out
}

func TestLoadDirectory(t *testing.T) {
	p, err := Load("testdata/dir-ok")
	if err != nil {
		t.Fatalf("Load(dir-ok) = %v, want nil", err)
	}
	type summary struct {
		Sources    []string
		Issuers    []string
		Workloads  []string
		Grants     []string
		Admins     []string
		Exceptions []string
	}
	got := summary{
		Sources:    names(p.Sources(), func(s Source) string { return s.Path }),
		Issuers:    names(p.Issuers(), func(i Issuer) string { return i.Name }),
		Workloads:  names(p.Workloads(), func(w Workload) string { return w.Name }),
		Grants:     names(p.Grants(), func(g Grant) string { return g.Name }),
		Admins:     names(p.Admins(), func(a Admin) string { return a.Name }),
		Exceptions: names(p.Exceptions(), func(e Exception) string { return e.Name + " " + e.Expires.String() }),
	}
	want := summary{
		Sources:    []string{"testdata/dir-ok/00-issuers.yaml", "testdata/dir-ok/10-workloads.yml"},
		Issuers:    []string{"k8s-prod", "github"},
		Workloads:  []string{"payments-api", "release"},
		Grants:     []string{"payments-db", "stripe", "release-cert"},
		Admins:     []string{"secops"},
		Exceptions: []string{"legacy-batch-key 2027-03-31"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Load(dir-ok) = %+v, want %+v (-want +got):\n%s", got, want, diff)
	}
	for _, s := range p.Sources() {
		if len(s.SHA256) != 64 {
			t.Errorf("Source %s SHA256 = %q, want 64 hex digits", s.Path, s.SHA256)
		}
	}

	gh, ok := p.IssuerByIss("https://token.actions.githubusercontent.com")
	if !ok || gh.Name != "github" || time.Duration(gh.MaxTokenLifetime) != time.Hour {
		t.Errorf("IssuerByIss(github) = %+v, %v, want github with 1h lifetime", gh, ok)
	}
	if _, ok := p.IssuerByIss("https://token.actions.githubusercontent.com/"); ok {
		t.Errorf("IssuerByIss(trailing slash) = ok, want exact match only")
	}
	// A workload in one file uses an issuer and grants declared in another.
	w, err := p.Match("k8s-prod", map[string]any{
		"sub":           "system:serviceaccount:payments:api",
		"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "u-1"}},
	})
	if err != nil || w.Name != "payments-api" || !p.Allowed(w, "stripe") || p.Allowed(w, "release-cert") {
		t.Errorf("Match(payments token) = %v, %v; want payments-api allowed stripe only", w, err)
	}
}

func TestHashIsContentAddressed(t *testing.T) {
	orig, err := Load("testdata/dir-ok")
	if err != nil {
		t.Fatal(err)
	}
	// The same files elsewhere hash the same.
	dir := t.TempDir()
	for _, n := range []string{"00-issuers.yaml", "10-workloads.yml"} {
		b, err := os.ReadFile(filepath.Join("testdata/dir-ok", n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, n), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	moved, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if moved.Hash() != orig.Hash() {
		t.Fatalf("Hash(copy) = %s, want %s", moved.Hash(), orig.Hash())
	}
	// A changed byte changes the hash.
	f := filepath.Join(dir, "10-workloads.yml")
	b, _ := os.ReadFile(f)
	if err := os.WriteFile(f, append(b, []byte("# changed\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	changed, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if changed.Hash() == orig.Hash() || len(changed.Hash()) != 64 {
		t.Fatalf("Hash(changed) = %s, want a different 64-digit hash than %s", changed.Hash(), orig.Hash())
	}
}

func TestLoadDirectoryProblems(t *testing.T) {
	_, err := Load("testdata/dir-bad")
	got := locatedProblemStrings(err)
	// Each problem names its file, its path and its line there (a missing
	// version: the document's first line).
	want := []string{
		"testdata/dir-bad/b.yaml: version: required, must be 1 (line 2)",
		`testdata/dir-bad/b.yaml: grants[0].name: duplicate grant "shared" (first declared at testdata/dir-bad/a.yaml: grants[0]) (line 3)`,
		`testdata/dir-bad/b.yaml: workloads[1].match: same match as workload "one" (testdata/dir-bad/b.yaml: workloads[0]): a token would match both; make workload matches disjoint (line 14)`,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Load(dir-bad) = %q, want %q (-want +got):\n%s", got, want, diff)
	}
}

func TestLoadErrors(t *testing.T) {
	empty := t.TempDir()
	if err := os.WriteFile(filepath.Join(empty, "README.md"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		path string
		want []string // problems; or, for non-policy errors, a one-element substring list
	}{
		{"fail/syntax", "testdata/syntax-error.yaml", []string{"testdata/syntax-error.yaml: line 3: did not find expected ',' or ']'"}},
		// Named by field path and line, in the policy's words: not by a Go
		// type ("field period not found in type policies.VaultTokenGrant")
		// or by line alone.
		{"fail/unknown-field", "testdata/unknown-field.yaml", []string{"testdata/unknown-field.yaml: grants[0].vault_token.period: unknown field (line 6)"}},
		{"fail/bad-scalars", "testdata/bad-scalars.yaml", []string{
			`testdata/bad-scalars.yaml: grants[0].ttl: invalid duration "15": want a Go duration like "15m" or "24h" (line 5)`,
			`testdata/bad-scalars.yaml: exceptions[0].expires: invalid date "31/03/2027": want YYYY-MM-DD (line 11)`,
		}},
		{"fail/two-documents", "testdata/two-documents.yaml", []string{"testdata/two-documents.yaml: line 2: more than one YAML document; put each in its own file"}},
		{"fail/empty", "testdata/empty.yaml", []string{`testdata/empty.yaml: empty policy file (want at least "version: 1")`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Load(tt.path)
			got := problemStrings(err)
			if diff := cmp.Diff(tt.want, got); diff != "" || p != nil {
				t.Fatalf("Load(%s) = %v, %q, want nil, %q (-want +got):\n%s", tt.path, p, got, tt.want, diff)
			}
		})
	}
	for _, tt := range []struct{ name, path, want string }{
		{"fail/missing", "testdata/nope", "no such file"},
		{"fail/dir-without-yaml", empty, "no *.yaml or *.yml files"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(tt.path)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Load(%s) = %v, want error containing %q", tt.path, err, tt.want)
			}
		})
	}
}

func TestExamples(t *testing.T) {
	fromDisk, err := Load("examples")
	if err != nil {
		t.Fatalf("Load(examples) = %v, want nil", err)
	}
	embedded, err := LoadExamples()
	if err != nil {
		t.Fatalf("LoadExamples() = %v, want nil", err)
	}
	if embedded.Hash() != fromDisk.Hash() {
		t.Fatalf("LoadExamples().Hash() = %s, want %s (same files)", embedded.Hash(), fromDisk.Hash())
	}
	p := embedded
	demo, ok := p.Issuer("demo")
	wantDemo := Issuer{Name: "demo", Issuer: "http://127.0.0.1:7701", JWKSURL: "http://127.0.0.1:7701/jwks.json",
		Audiences: []string{"keytrail"}, Algorithms: []string{"ES256", "EdDSA", "RS256"},
		MaxTokenLifetime: Duration(24 * time.Hour), SessionClaim: "session", Source: "keytrail.yaml: issuers[0]"}
	if diff := cmp.Diff(wantDemo, *demo); !ok || diff != "" {
		t.Fatalf("Issuer(demo) = %+v, want %+v (-want +got):\n%s", demo, wantDemo, diff)
	}
	pay, _ := p.Workload("payments-api")
	wantPay := Workload{Name: "payments-api", Owner: "team-payments",
		Match:  Match{Issuer: "demo", Subject: "system:serviceaccount:payments:api", Claims: map[string]string{"namespace": "payments"}},
		Grants: []string{"payments-vault", "orders-jwt"}, Rate: &Rate{PerSecond: 5, Burst: 20}}
	if diff := cmp.Diff(wantPay, *pay); diff != "" {
		t.Fatalf("Workload(payments-api) (-want +got):\n%s", diff)
	}
	type gs struct {
		Name, Kind string
		TTL        time.Duration
	}
	gotGrants := names(p.Grants(), func(g Grant) string { return g.Name + "/" + g.Kind + "/" + g.TTLDuration().String() })
	wantGrants := []string{"payments-vault/vault_token/15m0s", "orders-jwt/jwt/5m0s", "deploy-vault/vault_token/10m0s"}
	if diff := cmp.Diff(wantGrants, gotGrants); diff != "" {
		t.Fatalf("Grants() (-want +got):\n%s", diff)
	}
	ci, err := p.Match("demo", map[string]any{"sub": "repo:acme/deploy:ref:refs/heads/main"})
	if err != nil || ci.Name != "ci-deploy" || ci.Owner != "team-platform" || !p.Allowed(ci, "deploy-vault") {
		t.Fatalf("Match(ci token) = %v, %v, want ci-deploy allowed deploy-vault", ci, err)
	}
	admin, ok := p.MatchAdmin("demo", map[string]any{"sub": "alice", "groups": []any{"staff", "secops"}}, RoleRevoke)
	if !ok || admin.Name != "secops" || !admin.HasRole(RoleRevoke) || !admin.HasRole(RoleTrace) || !admin.HasRole(RoleReport) {
		t.Fatalf("MatchAdmin(secops token) = %+v, %v, want secops with all roles", admin, ok)
	}
	if len(p.Exceptions()) != 1 {
		t.Fatalf("Exceptions() = %v, want one", p.Exceptions())
	}
}

const matchPolicy = `version: 1
issuers:
  - {name: k8s, issuer: "https://k8s", jwks_url: "https://k8s/jwks", audiences: [k], algorithms: [RS256]}
  - {name: gh, issuer: "https://gh", jwks_url: "https://gh/jwks", audiences: [k], algorithms: [RS256]}
workloads:
  - name: payments-api
    owner: team-payments
    match: {issuer: k8s, subject: "system:serviceaccount:payments:api", claims: {kubernetes.io.namespace: payments}}
    grants: [vault, stripe]
  - name: batch
    owner: team-data
    match: {issuer: k8s, subject_pattern: "system:serviceaccount:batch:.*", claims: {tier: "3", canary: "false"}}
  - name: deploy
    owner: team-platform
    match: {issuer: gh, subject_pattern: "repo:acme/deploy:.*", claims: {groups: deployers}, claim_patterns: {run_id: "[0-9]+"}}
    grants: [vault]
  - name: overlap-a
    owner: o
    match: {issuer: gh, subject: "repo:acme/overlap", claims: {env: prod}}
  - name: overlap-b
    owner: o
    match: {issuer: gh, subject_pattern: "repo:acme/over.*"}
grants:
  - {name: vault, kind: vault_token, ttl: 15m, vault_token: {policies: [payments-read, shared]}}
  - name: stripe
    kind: proxy
    ttl: 10m
    proxy:
      upstream: https://api.stripe.com
      secret: {vault_kv: secret/data/upstreams/stripe, field: api_key}
      inject: {header: Authorization, format: "Bearer {secret}"}
      methods: [GET, POST]
      paths: ["/v1/charges", "/v1/charges/*"]
admins:
  - {name: secops, match: {issuer: gh, claims: {groups: secops}}, roles: [revoke, trace, report]}
  - {name: auditor, match: {issuer: gh, subject: alice}, roles: [trace]}
  - {name: oncall, match: {issuer: gh, claims: {oncall: "yes"}}, roles: [revoke]}
`

func mustParse(t testing.TB, data string) *Policy {
	t.Helper()
	p, err := Parse("t.yaml", []byte(data))
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	return p
}

func TestMatch(t *testing.T) {
	p := mustParse(t, matchPolicy)
	const paySub = "system:serviceaccount:payments:api"
	type result struct {
		Workload string
		Err      string // "no-match", "ambiguous" or ""
	}
	tests := []struct {
		name   string
		issuer string
		claims map[string]any
		want   result
	}{
		{"ok/exact-subject-nested-dotted-key", "k8s", map[string]any{"sub": paySub, "kubernetes.io": map[string]any{"namespace": "payments"}}, result{Workload: "payments-api"}},
		{"ok/exact-subject-flat-dotted-key", "k8s", map[string]any{"sub": paySub, "kubernetes.io.namespace": "payments"}, result{Workload: "payments-api"}},
		{"fail/wrong-namespace", "k8s", map[string]any{"sub": paySub, "kubernetes.io": map[string]any{"namespace": "orders"}}, result{Err: "no-match"}},
		{"fail/claim-missing", "k8s", map[string]any{"sub": paySub}, result{Err: "no-match"}},
		{"fail/sub-missing", "k8s", map[string]any{"kubernetes.io.namespace": "payments"}, result{Err: "no-match"}},
		{"fail/sub-not-string", "k8s", map[string]any{"sub": 7.0, "kubernetes.io.namespace": "payments"}, result{Err: "no-match"}},
		{"fail/other-issuer", "gh", map[string]any{"sub": paySub, "kubernetes.io.namespace": "payments"}, result{Err: "no-match"}},
		{"fail/unknown-issuer", "nope", map[string]any{"sub": paySub, "kubernetes.io.namespace": "payments"}, result{Err: "no-match"}},
		{"fail/nil-claims", "k8s", nil, result{Err: "no-match"}},
		{"ok/number-and-bool-claims", "k8s", map[string]any{"sub": "system:serviceaccount:batch:nightly", "tier": 3.0, "canary": false}, result{Workload: "batch"}},
		{"ok/json-number-claim", "k8s", map[string]any{"sub": "system:serviceaccount:batch:nightly", "tier": json.Number("3"), "canary": "false"}, result{Workload: "batch"}},
		{"ok/json-number-claim-integral-fraction", "k8s", map[string]any{"sub": "system:serviceaccount:batch:nightly", "tier": json.Number("3.0"), "canary": false}, result{Workload: "batch"}},
		{"fail/fractional-number", "k8s", map[string]any{"sub": "system:serviceaccount:batch:nightly", "tier": 3.5, "canary": false}, result{Err: "no-match"}},
		{"fail/object-claim", "k8s", map[string]any{"sub": "system:serviceaccount:batch:nightly", "tier": map[string]any{"x": "3"}, "canary": false}, result{Err: "no-match"}},
		{"ok/array-claim-any-element", "gh", map[string]any{"sub": "repo:acme/deploy:ref:main", "groups": []any{"dev", "deployers"}, "run_id": json.Number("123")}, result{Workload: "deploy"}},
		{"fail/array-claim-no-element", "gh", map[string]any{"sub": "repo:acme/deploy:ref:main", "groups": []any{"dev"}, "run_id": "123"}, result{Err: "no-match"}},
		{"fail/claim-pattern-anchored", "gh", map[string]any{"sub": "repo:acme/deploy:ref:main", "groups": "deployers", "run_id": "123abc"}, result{Err: "no-match"}},
		{"fail/subject-pattern-anchored", "gh", map[string]any{"sub": "xrepo:acme/deploy:ref:main", "groups": "deployers", "run_id": "1"}, result{Err: "no-match"}},
		// Exact and anchored: a trailing newline, a look-alike letter, a
		// glob or a different case never match.
		{"fail/subject-trailing-newline", "k8s", map[string]any{"sub": paySub + "\n", "kubernetes.io.namespace": "payments"}, result{Err: "no-match"}},
		{"fail/subject-lookalike", "k8s", map[string]any{"sub": "system:serviceaccount:payments:\u0430pi", "kubernetes.io.namespace": "payments"}, result{Err: "no-match"}},
		{"fail/subject-case", "k8s", map[string]any{"sub": "System:serviceaccount:payments:api", "kubernetes.io.namespace": "payments"}, result{Err: "no-match"}},
		{"fail/claim-glob-is-not-a-pattern", "k8s", map[string]any{"sub": paySub, "kubernetes.io.namespace": "pay*"}, result{Err: "no-match"}},
		{"fail/claim-trailing-newline", "k8s", map[string]any{"sub": paySub, "kubernetes.io.namespace": "payments\n"}, result{Err: "no-match"}},
		{"fail/subject-pattern-trailing-newline", "gh", map[string]any{"sub": "repo:acme/deploy:ref:main\n", "groups": "deployers", "run_id": "1"}, result{Err: "no-match"}},
		{"fail/claim-pattern-trailing-newline", "gh", map[string]any{"sub": "repo:acme/deploy:ref:main", "groups": "deployers", "run_id": "1\n"}, result{Err: "no-match"}},
		{"fail/claim-null", "k8s", map[string]any{"sub": paySub, "kubernetes.io.namespace": nil}, result{Err: "no-match"}},
		{"fail/array-of-arrays", "gh", map[string]any{"sub": "repo:acme/deploy:ref:main", "groups": []any{[]any{"deployers"}}, "run_id": "1"}, result{Err: "no-match"}},
		{"fail/ambiguous", "gh", map[string]any{"sub": "repo:acme/overlap", "env": "prod"}, result{Err: "ambiguous"}},
		{"ok/overlap-disjoint-case", "gh", map[string]any{"sub": "repo:acme/overlap", "env": "dev"}, result{Workload: "overlap-b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, err := p.Match(tt.issuer, tt.claims)
			var got result
			switch {
			case errors.Is(err, ErrNoMatch):
				got.Err = "no-match"
			case errors.Is(err, ErrAmbiguous):
				got.Err = "ambiguous"
			case err != nil:
				got.Err = err.Error()
			}
			if w != nil {
				got.Workload = w.Name
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("Match(%s, %v) = %+v, want %+v (-want +got):\n%s", tt.issuer, tt.claims, got, tt.want, diff)
			}
			// MatchIndex: the same workload (by its index in Workloads)
			// or the same error.
			i, ierr := p.MatchIndex(tt.issuer, tt.claims)
			if (ierr == nil) != (err == nil) || ierr != nil && ierr.Error() != err.Error() {
				t.Fatalf("MatchIndex error %v, Match's %v", ierr, err)
			}
			switch {
			case ierr != nil && i != -1:
				t.Fatalf("MatchIndex = %d with error %v, want -1", i, ierr)
			case ierr == nil && !cmp.Equal(p.Workloads()[i], *w):
				t.Fatalf("MatchIndex = %d: %+v, Match %+v", i, p.Workloads()[i], *w)
			}
		})
	}
}

func TestMatchErrorText(t *testing.T) {
	p := mustParse(t, matchPolicy)
	_, err := p.Match("gh", map[string]any{"sub": "repo:acme/overlap", "env": "prod", "secret_claim": "s3cr3t"})
	want := `identity matches more than one workload: issuer "gh", sub "repo:acme/overlap": workloads "overlap-a", "overlap-b"; policy workload matches must be disjoint`
	if err == nil || err.Error() != want {
		t.Fatalf("Match(ambiguous) = %v, want %s", err, want)
	}
	_, err = p.Match("k8s", map[string]any{"sub": "nobody", "secret_claim": "s3cr3t"})
	want = `no workload matches the identity: issuer "k8s", sub "nobody" (2 workloads of this issuer checked)`
	if err == nil || err.Error() != want {
		t.Fatalf("Match(no match) = %v, want %s", err, want)
	}
}

func TestMatchAdmin(t *testing.T) {
	p := mustParse(t, matchPolicy)
	alice := map[string]any{"sub": "alice", "oncall": "yes"}
	tests := []struct {
		name   string
		issuer string
		claims map[string]any
		role   string
		want   string // admin name, "" for none
		roles  []string
	}{
		{"ok/claims-array", "gh", map[string]any{"sub": "bob", "groups": []any{"secops"}}, RoleRevoke, "secops", []string{"report", "revoke", "trace"}},
		{"ok/subject", "gh", map[string]any{"sub": "alice"}, RoleTrace, "auditor", []string{"trace"}},
		{"ok/first-declared-with-role-wins", "gh", map[string]any{"sub": "alice", "groups": "secops"}, RoleTrace, "secops", []string{"report", "revoke", "trace"}},
		// alice is listed as auditor (trace) first and as oncall (revoke)
		// later: she holds both roles, whatever the order.
		{"ok/later-entry-grants-role", "gh", alice, RoleRevoke, "oncall", []string{"revoke"}},
		{"ok/earlier-entry-grants-role", "gh", alice, RoleTrace, "auditor", []string{"trace"}},
		{"ok/no-entry-grants-role-first-match", "gh", alice, RoleReport, "auditor", []string{"trace"}},
		{"ok/no-role-asked-first-match", "gh", alice, "", "auditor", []string{"trace"}},
		{"fail/other-issuer", "k8s", map[string]any{"sub": "alice", "groups": "secops"}, RoleRevoke, "", nil},
		{"fail/no-match", "gh", map[string]any{"sub": "mallory", "groups": []any{"dev"}}, RoleRevoke, "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, ok := p.MatchAdmin(tt.issuer, tt.claims, tt.role)
			got := ""
			if ok {
				got = a.Name
			}
			var gotRoles []string
			for _, r := range []string{"report", "revoke", "trace", "root"} {
				if a.HasRole(r) {
					gotRoles = append(gotRoles, r)
				}
			}
			if got != tt.want || !cmp.Equal(gotRoles, tt.roles) {
				t.Fatalf("MatchAdmin(%v, %q) = %q %v, want %q %v", tt.claims, tt.role, got, gotRoles, tt.want, tt.roles)
			}
		})
	}
}

func TestAllowed(t *testing.T) {
	p := mustParse(t, matchPolicy)
	w, _ := p.Workload("payments-api")
	forged := *w
	forged.Grants = append(forged.Grants, "anything")
	unknown := Workload{Name: "ghost", Grants: []string{"vault"}}
	tests := []struct {
		name  string
		w     *Workload
		grant string
		want  bool
	}{
		{"ok/listed", w, "vault", true},
		{"ok/listed-proxy", w, "stripe", true},
		{"fail/not-listed", &forged, "anything", false},
		{"fail/unknown-workload", &unknown, "vault", false},
		{"fail/nil-workload", nil, "vault", false},
		{"fail/empty-grant", w, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := p.Allowed(tt.w, tt.grant); got != tt.want {
				t.Fatalf("Allowed(%v, %q) = %v, want %v", tt.w, tt.grant, got, tt.want)
			}
		})
	}
}

func TestExplain(t *testing.T) {
	p := mustParse(t, matchPolicy)
	const paySub = "system:serviceaccount:payments:api"
	got := p.Explain("k8s", map[string]any{"sub": paySub, "kubernetes.io": map[string]any{"namespace": "payments"}}, "stripe").String()
	want := `issuer: k8s
subject: system:serviceaccount:payments:api
workloads:
  payments-api: MATCH (t.yaml: workloads[0], line 6)
    ok   subject "system:serviceaccount:payments:api" == "system:serviceaccount:payments:api"
    ok   claim kubernetes.io.namespace "payments" == "payments"
  batch: no match (t.yaml: workloads[1], line 10)
    fail subject "system:serviceaccount:payments:api" does not match pattern "system:serviceaccount:batch:.*"
    fail claim canary missing
    fail claim tier missing
result: workload payments-api (owner team-payments)
grant stripe: ALLOWED
  kind proxy, ttl at most 10m0s
  mints a proxy credential for https://api.stripe.com, methods [GET, POST], paths [/v1/charges, /v1/charges/*]
  the proxy injects field "api_key" of Vault KV "secret/data/upstreams/stripe" in header "Authorization" as "Bearer {secret}"
`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Fatalf("Explain(payments, stripe).String() (-want +got):\n%s", diff)
	}

	type summary struct {
		IssuerKnown bool
		Matched     string
		Ambiguous   []string
		GrantKnown  bool
		Allowed     bool
		Kind        string
		TTL         time.Duration
		Checks      map[string][]string // failed checks per workload
		Admin       string
	}
	summarize := func(e Explanation) summary {
		s := summary{IssuerKnown: e.IssuerKnown, Matched: e.Matched, Ambiguous: e.Ambiguous, GrantKnown: e.GrantKnown,
			Allowed: e.Allowed, Kind: e.Kind, TTL: e.TTL, Checks: map[string][]string{}, Admin: e.Admin}
		for _, w := range e.Workloads {
			for _, c := range w.Checks {
				if !c.OK {
					s.Checks[w.Workload] = append(s.Checks[w.Workload], c.Text)
				}
			}
		}
		return s
	}
	tests := []struct {
		name   string
		issuer string
		claims map[string]any
		grant  string
		want   summary
	}{
		{"fail/grant-not-listed", "k8s", map[string]any{"sub": paySub, "kubernetes.io.namespace": "payments"}, "nope",
			summary{IssuerKnown: true, Matched: "payments-api", Checks: map[string][]string{
				"batch": {`subject "system:serviceaccount:payments:api" does not match pattern "system:serviceaccount:batch:.*"`, "claim canary missing", "claim tier missing"}}}},
		{"fail/grant-of-other-workload", "gh", map[string]any{"sub": "repo:acme/overlap", "env": "dev"}, "vault",
			summary{IssuerKnown: true, Matched: "overlap-b", GrantKnown: true, Kind: "vault_token", TTL: 15 * time.Minute, Checks: map[string][]string{
				"deploy":    {`subject "repo:acme/overlap" does not match pattern "repo:acme/deploy:.*"`, "claim groups missing", "claim run_id missing"},
				"overlap-a": {`claim env "dev" != "prod"`}}}},
		{"fail/ambiguous", "gh", map[string]any{"sub": "repo:acme/overlap", "env": "prod", "groups": []any{"x", "secops"}}, "vault",
			summary{IssuerKnown: true, Ambiguous: []string{"overlap-a", "overlap-b"}, GrantKnown: true, Kind: "vault_token", TTL: 15 * time.Minute, Admin: "secops", Checks: map[string][]string{
				"deploy": {`subject "repo:acme/overlap" does not match pattern "repo:acme/deploy:.*"`, `claim groups ["x", "secops"] has no element "deployers"`, "claim run_id missing"}}}},
		{"ok/array-and-pattern-checks", "gh", map[string]any{"sub": "repo:acme/deploy:x", "groups": []any{"deployers"}, "run_id": 42.0}, "vault",
			summary{IssuerKnown: true, Matched: "deploy", GrantKnown: true, Allowed: true, Kind: "vault_token", TTL: 15 * time.Minute, Checks: map[string][]string{
				"overlap-a": {`subject "repo:acme/deploy:x" != "repo:acme/overlap"`, "claim env missing"},
				"overlap-b": {`subject "repo:acme/deploy:x" does not match pattern "repo:acme/over.*"`}}}},
		{"fail/unknown-issuer", "corp", map[string]any{"sub": "x"}, "vault",
			summary{GrantKnown: true, Kind: "vault_token", TTL: 15 * time.Minute, Checks: map[string][]string{}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := p.Explain(tt.issuer, tt.claims, tt.grant)
			got := summarize(e)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Fatalf("Explain(%s, %v, %s) = %+v, want %+v (-want +got):\n%s", tt.issuer, tt.claims, tt.grant, got, tt.want, diff)
			}
			// Explain and Match agree.
			w, err := p.Match(tt.issuer, tt.claims)
			if (err == nil) != (e.Matched != "") || (w != nil && w.Name != e.Matched) {
				t.Fatalf("Match(%v) = %v, %v, but Explain matched %q", tt.claims, w, err, e.Matched)
			}
			if s := e.String(); !strings.Contains(s, "result: ") {
				t.Fatalf("Explain().String() = %q, want a result line", s)
			}
		})
	}
}

func TestClaimValue(t *testing.T) {
	pod := map[string]any{"name": "api-1", "uid": "u-123"}
	k8s := map[string]any{
		"sub":           "system:serviceaccount:payments:api",
		"kubernetes.io": map[string]any{"namespace": "payments", "pod": pod},
		"groups":        []any{"a", "b"},
		"n":             3.0,
		"flat.key":      "flat",
		"flat":          map[string]any{"key": "nested"},
		"a.b":           map[string]any{"x": "from-a.b"},
		"a":             map[string]any{"b": map[string]any{"c": "from-a"}},
		"str":           "leaf",
	}
	tests := []struct {
		name   string
		claims map[string]any
		path   string
		want   any
		ok     bool
	}{
		{"ok/top-level", k8s, "sub", "system:serviceaccount:payments:api", true},
		{"ok/dotted-key-then-nested", k8s, "kubernetes.io.namespace", "payments", true},
		{"ok/dotted-key-deep", k8s, "kubernetes.io.pod.uid", "u-123", true},
		{"ok/object-value", k8s, "kubernetes.io.pod", pod, true},
		{"ok/array-value", k8s, "groups", []any{"a", "b"}, true},
		{"ok/number-value", k8s, "n", 3.0, true},
		{"ok/whole-key-wins", k8s, "flat.key", "flat", true},
		{"ok/backtracks-to-shorter-prefix", k8s, "a.b.c", "from-a", true},
		{"ok/longest-prefix-first", k8s, "a.b.x", "from-a.b", true},
		{"fail/missing", k8s, "kubernetes.io.pod.ip", nil, false},
		{"fail/through-scalar", k8s, "str.x", nil, false},
		{"fail/through-array", k8s, "groups.0", nil, false},
		{"fail/empty-path", k8s, "", nil, false},
		{"fail/trailing-dot", k8s, "sub.", nil, false},
		{"fail/nil-claims", nil, "sub", nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ClaimValue(tt.claims, tt.path)
			if diff := cmp.Diff(tt.want, got); diff != "" || ok != tt.ok {
				t.Fatalf("ClaimValue(%q) = %v, %v, want %v, %v", tt.path, got, ok, tt.want, tt.ok)
			}
		})
	}
}

// TestClaimValueBounded feeds claims where every level has both "a" and
// "a.a" pointing at the same child: unbounded backtracking would take
// 2^40 steps.
func TestClaimValueBounded(t *testing.T) {
	leaf := map[string]any{"x": "y"}
	node := leaf
	for range 40 {
		node = map[string]any{"a": node, "a.a": node}
	}
	path := strings.Repeat("a.", 40) + "z"
	done := make(chan bool, 1)
	go func() {
		_, ok := ClaimValue(node, path)
		done <- ok
	}()
	select {
	case ok := <-done:
		if ok {
			t.Fatalf("ClaimValue(adversarial, %q) = found, want not found", path)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("ClaimValue(adversarial) did not return within 10s")
	}
	// A deep but ordinary structure stays within the budget.
	deep := leaf
	for range 40 {
		deep = map[string]any{"a": deep}
	}
	if v, ok := ClaimValue(deep, strings.Repeat("a.", 40)+"x"); !ok || v != "y" {
		t.Fatalf("ClaimValue(deep, existing) = %v, %v, want y, true", v, ok)
	}
}

func TestClaimString(t *testing.T) {
	tests := []struct {
		name string
		v    any
		want string
		ok   bool
	}{
		{"ok/string", "payments", "payments", true},
		{"ok/float-integral", 3.0, "3", true},
		{"ok/float-fraction", 3.25, "3.25", true},
		{"ok/float-large", 1e21, "1000000000000000000000", true},
		{"ok/float-negative", -2.0, "-2", true},
		{"ok/json-number", json.Number("12345678901234567890"), "12345678901234567890", true},
		// What authn hands over: numbers as written in the token, rendered
		// like the float64 cases above.
		{"ok/json-number-integral-fraction", json.Number("3.0"), "3", true},
		{"ok/json-number-exponent", json.Number("1e3"), "1000", true},
		{"ok/json-number-exponent-upper", json.Number("2.5E+1"), "25", true},
		{"ok/json-number-fraction", json.Number("3.250"), "3.25", true},
		{"ok/json-number-negative", json.Number("-7"), "-7", true},
		{"ok/int", 42, "42", true},
		{"ok/int64", int64(-7), "-7", true},
		{"ok/bool-true", true, "true", true},
		{"ok/bool-false", false, "false", true},
		{"fail/nil", nil, "", false},
		{"fail/array", []any{"a"}, "", false},
		{"fail/object", map[string]any{"a": "b"}, "", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := ClaimString(map[string]any{"c": tt.v}, "c")
			if got != tt.want || ok != tt.ok {
				t.Fatalf("ClaimString(%#v) = %q, %v, want %q, %v", tt.v, got, ok, tt.want, tt.ok)
			}
		})
	}
	if _, ok := ClaimString(map[string]any{}, "missing"); ok {
		t.Fatalf("ClaimString(missing) = ok, want not ok")
	}
}

func TestProxyAllows(t *testing.T) {
	px := &ProxyGrant{Methods: []string{"GET", "POST"}, Paths: []string{"/v1/charges", "/v1/charges/*", "/health"}}
	paths := []struct {
		name string
		path string
		want bool
	}{
		{"ok/exact", "/v1/charges", true},
		{"ok/under-prefix", "/v1/charges/ch_1", true},
		{"ok/deep-under-prefix", "/v1/charges/ch_1/refunds", true},
		{"ok/other-exact", "/health", true},
		{"fail/prefix-itself-with-slash", "/v1/charges/", false},
		{"fail/sibling-prefix", "/v1/chargesX", false},
		{"fail/parent", "/v1", false},
		{"fail/exact-has-no-subpaths", "/health/x", false},
		{"fail/dotdot", "/v1/charges/../admin", false},
		{"fail/dot", "/v1/charges/./x", false},
		{"fail/double-slash", "/v1/charges//x", false},
		{"fail/relative", "v1/charges", false},
		{"fail/empty", "", false},
	}
	for _, tt := range paths {
		t.Run("path/"+tt.name, func(t *testing.T) {
			if got := px.AllowsPath(tt.path); got != tt.want {
				t.Fatalf("AllowsPath(%q) = %v, want %v", tt.path, got, tt.want)
			}
		})
	}
	all := &ProxyGrant{Paths: []string{"/*"}}
	if !all.AllowsPath("/anything/at/all") || all.AllowsPath("/") {
		t.Fatalf(`AllowsPath with "/*": want every path under "/" but not "/" itself`)
	}
	methods := []struct {
		name string
		px   *ProxyGrant
		m    string
		want bool
	}{
		{"ok/listed", px, "POST", true},
		{"fail/not-listed", px, "DELETE", false},
		{"fail/lowercase", px, "get", false},
		{"ok/default-get", &ProxyGrant{}, "GET", true},
		{"fail/default-not-head", &ProxyGrant{}, "HEAD", false},
	}
	for _, tt := range methods {
		t.Run("method/"+tt.name, func(t *testing.T) {
			if got := tt.px.AllowsMethod(tt.m); got != tt.want {
				t.Fatalf("AllowsMethod(%q) = %v, want %v", tt.m, got, tt.want)
			}
		})
	}
}

// TestAccessorsReturnCopies checks the compiled policy cannot be changed
// through what its accessors return.
func TestAccessorsReturnCopies(t *testing.T) {
	p := mustParse(t, matchPolicy)
	before := struct {
		W []Workload
		G []Grant
		I []Issuer
		A []Admin
	}{p.Workloads(), p.Grants(), p.Issuers(), p.Admins()}

	w, _ := p.Workload("payments-api")
	w.Grants[0] = "mutated"
	w.Match.Claims["kubernetes.io.namespace"] = "mutated"
	g, _ := p.Grant("stripe")
	g.Proxy.Paths[0] = "/mutated"
	g.Proxy.Methods[0] = "DELETE"
	vt, _ := p.Grant("vault")
	vt.VaultToken.Policies[0] = "root"
	is, _ := p.Issuer("k8s")
	is.Algorithms[0] = "none"
	p.Workloads()[0].Grants[0] = "mutated"
	p.Admins()[0].Roles[0] = "mutated"
	m, _ := p.Match("k8s", map[string]any{"sub": "system:serviceaccount:payments:api", "kubernetes.io.namespace": "payments"})
	m.Name = "batch"

	after := struct {
		W []Workload
		G []Grant
		I []Issuer
		A []Admin
	}{p.Workloads(), p.Grants(), p.Issuers(), p.Admins()}
	if diff := cmp.Diff(before, after); diff != "" {
		t.Fatalf("policy changed through accessor results (-before +after):\n%s", diff)
	}
}

// TestIssuerAccessorsCopyTokenTypes: an issuer's token_types cannot be
// changed through what Issuers, Issuer and IssuerByIss return. cloneIssuer
// copied Audiences and Algorithms but shared the TokenTypes array, so a
// caller writing to it changed the typ values the policy (and every later
// verifier built from it) accepts.
func TestIssuerAccessorsCopyTokenTypes(t *testing.T) {
	p := mustParse(t, `version: 1
issuers:
  - {name: i, issuer: "https://i", jwks_url: "https://i/jwks", audiences: [k], algorithms: [RS256], token_types: [JWT, ""]}
`)
	want := []string{"JWT", ""}
	p.Issuers()[0].TokenTypes[0] = "at+jwt"
	is, _ := p.Issuer("i")
	is.TokenTypes[1] = "logout+jwt"
	is, _ = p.IssuerByIss("https://i")
	is.TokenTypes[0] = "JOSE"
	for _, got := range [][]string{p.Issuers()[0].TokenTypes, func() []string { is, _ := p.Issuer("i"); return is.TokenTypes }()} {
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("token_types changed through accessor results (-want +got):\n%s", diff)
		}
	}
	// Absent stays absent (nil: any typ), not an empty list (none).
	p = mustParse(t, matchPolicy)
	if tt := p.Issuers()[0].TokenTypes; tt != nil {
		t.Errorf("Issuers()[0].TokenTypes = %#v, want nil (absent)", tt)
	}
}

// FuzzParse checks that no input makes Parse (or evaluating what it
// accepts) panic, and that failures are reported as problems.
func FuzzParse(f *testing.F) {
	var seeds []string
	for _, glob := range []string{"testdata/*.yaml", "testdata/*/*.yaml", "testdata/*/*.yml", "examples/*.yaml"} {
		files, _ := filepath.Glob(glob)
		seeds = append(seeds, files...)
	}
	for _, s := range seeds {
		b, err := os.ReadFile(s)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(matchPolicy))
	f.Add([]byte(`version: "1`))
	f.Add([]byte("version: 1\nissuers: *nope\n"))
	for _, over := range []map[string]string{
		nil,
		{"grants": proxyGrant(okProxy)},
		{"workloads": `[{name: w, owner: o, match: {issuer: i, subject_pattern: "a(b"}, grants: [g]}]`},
		{"issuers": `[{name: i, issuer: "http://[::1]:1", jwks_url: "http://[::1]:1/jwks", audiences: [k], algorithms: [none]}]`},
	} {
		f.Add([]byte(doc(over)))
	}
	claims := []map[string]any{
		nil,
		{"sub": "system:serviceaccount:payments:api", "namespace": "payments", "kubernetes.io": map[string]any{"namespace": "payments"}},
		{"sub": "repo:acme/deploy:x", "groups": []any{"secops", 1.0, true, nil}},
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse("f.yaml", data)
		if err != nil {
			if p != nil {
				t.Fatalf("Parse = %v, %v: want no policy with an error", p, err)
			}
			for _, e := range multiErrors(err) {
				var pr *Problem
				if !errors.As(e, &pr) {
					t.Fatalf("Parse problem %T %v is not a *Problem", e, e)
				}
				// Every problem names the file and a line.
				named := pr.Line > 0 || strings.HasPrefix(pr.Path, "line ") || strings.Contains(pr.Message, "(line ") || strings.HasPrefix(pr.Message, "empty policy file")
				if pr.File != "f.yaml" || !named {
					t.Fatalf("Parse problem %q does not name the file and a line", pr.Error())
				}
			}
			return
		}
		_ = p.Hash()
		for _, is := range p.Issuers() {
			for _, c := range claims {
				_, _ = p.Match(is.Name, c)
				_, _ = p.MatchAdmin(is.Name, c, RoleRevoke)
				for _, g := range p.Grants() {
					_ = p.Explain(is.Name, c, g.Name).String()
				}
				for _, w := range p.Workloads() {
					for _, path := range []string{"sub", "kubernetes.io.namespace", w.Match.Issuer} {
						_, _ = ClaimString(c, path)
					}
				}
			}
		}
		for _, g := range p.Grants() {
			if g.Proxy != nil {
				_ = g.Proxy.AllowsPath("/v1/x")
				_ = g.Proxy.AllowsMethod("GET")
			}
		}
	})
}

// TestLoadDirectoryUppercaseExtension: a directory's b.YAML was silently
// left out (only *.yaml and *.yml were read), so its workloads and grants
// did not exist while 'policy check' said ok. It is now a problem naming
// the file, from Load and LoadFS alike.
func TestLoadDirectoryUppercaseExtension(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("version: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "b.YAML"), []byte("version: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "c.yaml.bak"), []byte("not: loaded\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "b.YAML") + `: not read: policy file names end in ".yaml" or ".yml" (lowercase); rename it`}
	p, err := Load(dir)
	if diff := cmp.Diff(want, problemStrings(err)); diff != "" || p != nil {
		t.Errorf("Load = %v, %v; want problems %q (-want +got):\n%s", p, err, want, diff)
	}
	fsys := fstest.MapFS{"d/a.yaml": {Data: []byte("version: 1\n")}, "d/b.Yml": {Data: []byte("version: 1\n")}}
	want = []string{`d/b.Yml: not read: policy file names end in ".yaml" or ".yml" (lowercase); rename it`}
	p, err = LoadFS(fsys, "d")
	if diff := cmp.Diff(want, problemStrings(err)); diff != "" || p != nil {
		t.Errorf("LoadFS = %v, %v; want problems %q (-want +got):\n%s", p, err, want, diff)
	}
}

// TestDecodeProblemsNamedByField: policy check names every value that does
// not fit and every unknown field by file, field path and line, in the
// policy's words. The decoder's messages gave a line but no field, and named
// Go types ("field period not found in type policies.VaultTokenGrant",
// "cannot unmarshal !!str `fast` into float64").
func TestDecodeProblemsNamedByField(t *testing.T) {
	const doc = `version: 1
grants:
  - name: g
    kind: vault_token
    ttl: 5m
    vault_token: {policies: [p], period: 1h}
workloads:
  - name: w
    owner: o
    match: {issuer: i, subject: s, namespace: x}
    grants: g
    rate: {per_second: fast}
`
	_, err := Parse("p.yaml", []byte(doc))
	want := []string{
		"p.yaml: grants[0].vault_token.period: unknown field (line 6)",
		"p.yaml: workloads[0].match.namespace: unknown field (line 10)",
		`p.yaml: workloads[0].grants: must be a list, not "g" (line 11)`,
		`p.yaml: workloads[0].rate.per_second: must be a number, not "fast" (line 12)`,
	}
	if diff := cmp.Diff(want, problemStrings(err)); diff != "" {
		t.Errorf("Parse() problems (-want +got):\n%s", diff)
	}
}

// TestDecodeMappingOrListForScalar: a mapping or list where a date, a
// duration, a number, a string or a boolean belongs is named by file, field
// and line, saying what was found. Before, a date or duration said only
// "date must be YYYY-MM-DD" or "duration must be a string like "15m"",
// not that a mapping or list was written there (an indentation slip, say).
func TestDecodeMappingOrListForScalar(t *testing.T) {
	const doc = `version: 1
grants:
  - name: {g: 1}
    kind: vault_token
    ttl: {m: 5}
issuers:
  - max_token_lifetime: [24h]
exceptions:
  - name: e
    owner: [o]
    reason: r
    expires:
      year: 2027
`
	_, err := Parse("p.yaml", []byte(doc))
	want := []string{
		"p.yaml: grants[0].name: must be a single value, not a mapping (line 3)",
		`p.yaml: grants[0].ttl: duration must be a string like "15m", not a mapping (line 5)`,
		`p.yaml: issuers[0].max_token_lifetime: duration must be a string like "15m", not a list (line 7)`,
		"p.yaml: exceptions[0].owner: must be a single value, not a list (line 10)",
		"p.yaml: exceptions[0].expires: date must be YYYY-MM-DD, not a mapping (line 13)",
	}
	if diff := cmp.Diff(want, problemStrings(err)); diff != "" {
		t.Errorf("Parse() problems (-want +got):\n%s", diff)
	}
}

// TestDecodeMaxKeys: a mapping of more than 1,024 keys in a policy file
// (claims, say) is a problem naming the file, the field and the line.
// Before, any number passed, and the decoder compared them two by two
// (10,000 claims: some 0.25 s for one mapping).
func TestDecodeMaxKeys(t *testing.T) {
	var b strings.Builder
	b.WriteString("version: 1\nworkloads:\n  - name: w\n    match:\n      claims:\n")
	for i := range 1025 {
		fmt.Fprintf(&b, "        k%d: v\n", i)
	}
	_, err := Parse("p.yaml", []byte(b.String()))
	want := []string{"p.yaml: workloads[0].match.claims: a mapping of 1025 keys: at most 1024 are allowed in one mapping (line 6)"}
	if diff := cmp.Diff(want, problemStrings(err)); diff != "" {
		t.Errorf("Parse() problems (-want +got):\n%s", diff)
	}
}

// TestDecodeExcessiveAliasing: a policy the YAML decoder refuses for
// excessive aliasing (500 workloads each aliasing one list of 500
// audiences: 9 KB, within Check's budget) is named by the field and line
// of the alias where the decoder gives up. Before: "p.yaml: document
// contains excessive aliasing", no field, no line.
func TestDecodeExcessiveAliasing(t *testing.T) {
	src := "version: 1\nissuers:\n  - audiences: &a [" + strings.TrimSuffix(strings.Repeat("x, ", 500), ", ") + "]\nworkloads:\n" + strings.Repeat("  - grants: *a\n", 500)
	_, err := Parse("p.yaml", []byte(src))
	want := []string{"p.yaml: workloads[247].grants: excessive aliasing: when the YAML decoder reaches *a here (the anchor at line 3), 124246 of the 125501 values it has read are copies made by aliases, more than it accepts: write the values out, or alias less (line 252)"}
	if diff := cmp.Diff(want, problemStrings(err)); diff != "" {
		t.Errorf("Parse() problems (-want +got):\n%s", diff)
	}
}

// TestExplainStringQuotesUnprintableSubject: the sub of a token (anyone's,
// with policy explain --unverified) is printed so that a newline or a
// terminal escape in it cannot forge lines of the explanation, such as a
// result or an ALLOWED verdict.
func TestExplainStringQuotesUnprintableSubject(t *testing.T) {
	p := mustParse(t, matchPolicy)
	tests := []struct {
		name, sub, wantLine string
	}{
		{"ok/printable-as-is", "repo:acme/x y", "subject: repo:acme/x y"},
		{"ok/non-ascii-printable-as-is", "système", "subject: système"},
		{"fail/newline-forges-lines", "x\nresult: workload payments-api (owner team-payments)\ngrant stripe: ALLOWED",
			`subject: "x\nresult: workload payments-api (owner team-payments)\ngrant stripe: ALLOWED"`},
		{"fail/terminal-escape", "x\x1b[2K\rresult: ok", `subject: "x\x1b[2K\rresult: ok"`},
		{"fail/bidi-override", "x\u202eyx", `subject: "x\u202eyx"`},
		{"fail/invalid-utf8", "x\xff", `subject: "x\xff"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := p.Explain("k8s", map[string]any{"sub": tt.sub}, "stripe").String()
			lines := strings.Split(out, "\n")
			if lines[1] != tt.wantLine {
				t.Fatalf("Explain().String() line 2 = %q, want %q; output:\n%s", lines[1], tt.wantLine, out)
			}
			var results int
			for _, l := range lines {
				if strings.HasPrefix(l, "result: ") {
					results++
				}
				if strings.HasPrefix(l, "grant ") && l != "grant stripe: DENIED, no workload" {
					t.Fatalf("Explain().String() has a grant line %q for a token that matches nothing:\n%s", l, out)
				}
			}
			if results != 1 || !strings.Contains(out, "result: DENIED, no workload matches\n") {
				t.Fatalf("Explain().String() has %d result lines, want the one DENIED line:\n%s", results, out)
			}
		})
	}
}

// TestExplainNamesWhereWorkloadsAreDeclared: in a policy directory, explain
// says in which file, at which path and line each workload it evaluated is
// declared, so an operator can find the one that failed or that overlaps.
func TestExplainNamesWhereWorkloadsAreDeclared(t *testing.T) {
	p, err := Load("testdata/dir-ok")
	if err != nil {
		t.Fatal(err)
	}
	e := p.Explain("github", map[string]any{"sub": "repo:acme/api:ref:refs/tags/v1", "repository_owner": "acme"}, "release-cert")
	if len(e.Workloads) != 1 {
		t.Fatalf("Explain().Workloads = %+v, want the one github workload", e.Workloads)
	}
	want := filepath.Join("testdata", "dir-ok", "10-workloads.yml") + ": workloads[1], line 11"
	if got := e.Workloads[0].Source; got != want {
		t.Fatalf("Explain().Workloads[0].Source = %q, want %q", got, want)
	}
	if s := e.String(); !strings.Contains(s, "  release: MATCH ("+want+")\n") {
		t.Fatalf("Explain().String() does not name where release is declared (%s):\n%s", want, s)
	}
}

// TestYAMLErrorsNameTheLine: the YAML parser leaves the line out of an
// error on the first line ("found unexpected end of stream" for an
// unterminated quote in a one-line file) and out of an unknown alias
// altogether, so
// 'policy check' printed such a problem with the file alone. The line is
// now named in both cases, in a document after a "---" too.
func TestYAMLErrorsNameTheLine(t *testing.T) {
	tests := []struct {
		name, data string
		want       []string
	}{
		{"fail/unterminated-quote-first-line", `version: "1`, []string{`t.yaml: line 1: found unexpected end of stream`}},
		{"fail/tab-first-line", "\tversion: 1\n", []string{`t.yaml: line 1: found character that cannot start any token`}},
		{"fail/unknown-alias", "version: 1\n# not *base: a comment\nissuers:\n  - name: \"*base\"\n    <<: *base\n", []string{`t.yaml: line 5: unknown anchor 'base' referenced`}},
		{"fail/unknown-alias-flow", "version: 1\nworkloads: [{name: w,\n  match: *m}]\n", []string{`t.yaml: line 3: unknown anchor 'm' referenced`}},
		{"fail/unknown-alias-first-line", "version: *v\n", []string{`t.yaml: line 1: unknown anchor 'v' referenced`}},
		{"fail/unknown-alias-second-document", "version: 1\n---\n# *w\nworkloads: *w\n", []string{`t.yaml: line 4: unknown anchor 'w' referenced`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("t.yaml", []byte(tt.data))
			if diff := cmp.Diff(tt.want, locatedProblemStrings(err)); diff != "" || p != nil {
				t.Errorf("Parse(%q) = %v, problems (-want +got):\n%s", tt.data, p, diff)
			}
		})
	}
}

// TestMergeTagOnOtherKey: the !!merge tag makes a merge key only of "<<";
// on any other key the decoder ignores it. A policy that wrote it to merge
// ("!!merge defaults: *d") was refused with the decoder's words, a line
// and a Go type but no field ("line 8: field defaults not found in type
// policies.Issuer"), and one that wrote it on a field name was accepted
// as if the tag were not there. Both are refused, naming the file, the
// field, the line and what is wrong; "!!merge <<" still merges.
func TestMergeTagOnOtherKey(t *testing.T) {
	const head = `version: 1
issuers:
  - name: i
    issuer: "https://x"
    jwks_url: "https://x/j"
    audiences: [k]
    algorithms: [RS256]
`
	const tail = `workloads:
  - name: w
    owner: o
    match:
      issuer: i
      subject: s
      claims: {team: t, %s}
    grants: [g]
grants:
  - name: g
    kind: vault_token
    ttl: 5m
    vault_token: {policies: [p]}
`
	const msg = `!!merge makes a merge key only of "<<": write "<<: ..." to merge a mapping, or remove the tag`
	tests := []struct {
		name, issuer, claim string
		want                []string
	}{
		{"ok/merge-tag-on-merge-key", "    !!merge <<: {max_token_lifetime: 1h}\n", "!!merge <<: {env: prod}", nil},
		{"fail/merge-tag-to-merge", "    !!merge defaults: {max_token_lifetime: 1h}\n", "env: prod", []string{
			"t.yaml: issuers[0].defaults: " + msg + " (line 8)"}},
		{"fail/merge-tag-on-field", "    !!merge max_token_lifetime: 1h\n", "env: prod", []string{
			"t.yaml: issuers[0].max_token_lifetime: " + msg + " (line 8)"}},
		{"fail/merge-tag-on-claim", "", "!!merge env: prod", []string{
			`t.yaml: workloads[0].match.claims["env"]: ` + msg + " (line 14)"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := head + tt.issuer + fmt.Sprintf(tail, tt.claim)
			p, err := Parse("t.yaml", []byte(doc))
			if tt.want == nil {
				if err != nil || p == nil {
					t.Fatalf("Parse(%q) = %v, %v; want a policy", doc, p, err)
				}
				return
			}
			if diff := cmp.Diff(tt.want, locatedProblemStrings(err)); diff != "" {
				t.Fatalf("Parse(%q) problems (-want +got):\n%s", doc, diff)
			}
		})
	}
}

// TestMergeOfAliasToListNamesTheField: "<<: *list", an alias to a list of
// mappings, is refused by the YAML decoder (only a list written in place
// is merged mapping by mapping), and policy check said only "map merge
// requires map or sequence of maps as the value": no field, no line.
// yamlcheck had merged the list's mappings. It now names the entry, the
// line of the "<<" and what to write instead; a merged alias to a scalar
// names the line of the "<<" too.
func TestMergeOfAliasToListNamesTheField(t *testing.T) {
	const policy = `version: 1
issuers:
  - {name: i, issuer: "https://x", jwks_url: "https://x/j", audiences: [k], algorithms: [RS256]}
exceptions: &ex
  - {name: e, owner: &o o}
workloads:
  - <<: *ex
    match: {issuer: i, subject: s}
    grants: [g]
  - name: w
    owner: o
    match: {issuer: i, subject: s2, claims: {<<: *o}}
    grants: [g]
grants:
  - {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}
`
	p, err := Parse("t.yaml", []byte(policy))
	want := []string{
		`t.yaml: workloads[0]: a merge (<<) takes an alias to a mapping, not to a list: write "<<: [*a, *b]", an alias per mapping (line 7)`,
		`t.yaml: workloads[1].match.claims: a merge (<<) takes a mapping or a list of mappings (line 12)`,
	}
	if diff := cmp.Diff(want, locatedProblemStrings(err)); diff != "" || p != nil {
		t.Errorf("Parse() = %v, problems (-want +got):\n%s", p, diff)
	}
}

// TestKeyWrittenTwiceInMergeNamesTheField: the YAML decoder refuses a
// mapping with "<<" written twice, or with a key written twice in a
// mapping merged in place, and policy check printed its words, a line but
// no field ("line 9: mapping key "<<" already defined at line 7"):
// yamlcheck, which names every other key written twice by its field, left
// these out. Both are now named like the others.
func TestKeyWrittenTwiceInMergeNamesTheField(t *testing.T) {
	const policy = `version: 1
issuers:
  - name: i
    issuer: "https://x"
    jwks_url: "https://x/j"
    audiences: [k]
    <<: {max_token_lifetime: 1h}
    algorithms: [RS256]
    <<: {session_claim: sub}
  - name: j
    issuer: "https://y"
    jwks_url: "https://y/j"
    audiences: [k]
    algorithms: [RS256]
    <<: {max_token_lifetime: 1h,
      max_token_lifetime: 2h}
grants:
  - {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}
`
	p, err := Parse("t.yaml", []byte(policy))
	want := []string{
		"t.yaml: issuers[0].<<: written twice (first at line 7) (line 9)",
		"t.yaml: issuers[1].max_token_lifetime: written twice (first at line 15) (line 16)",
	}
	if diff := cmp.Diff(want, locatedProblemStrings(err)); diff != "" || p != nil {
		t.Errorf("Parse() = %v, problems (-want +got):\n%s", p, diff)
	}
}

// TestParseBoundsMergedAliases: a policy whose claims merge, level by
// level, ten aliases of the claims of the level before (10^10 merged
// mappings from two kilobytes) is refused by yamlcheck, which runs on the
// document before the decoder, with a problem naming the file, the field
// and a line. Before, yamlcheck counted a merged mapping as one, whatever
// its size, and said nothing when the merges had spent its budget: after
// 6 s (56 s while it still compared the keys of each merged mapping two by
// two) the problem was the decoder's, without a field or a line.
func TestParseBoundsMergedAliases(t *testing.T) {
	var claims strings.Builder
	claims.WriteString("{")
	for k := range 100 {
		fmt.Fprintf(&claims, "k%d: v, ", k)
	}
	claims.WriteString("}")
	var b strings.Builder
	b.WriteString("version: 1\nworkloads:\n")
	for i, m := range yamltest.MergeLaughs(claims.String(), 10, 10) {
		fmt.Fprintf(&b, "- {name: w%d, owner: o, grants: [g], match: {issuer: i, claims: %s}}\n", i, m)
	}
	done := make(chan error, 1)
	go func() {
		_, err := Parse("t.yaml", []byte(b.String()))
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(time.Minute):
		t.Fatal("Parse did not return within a minute")
	}
	// The pairs of keys of the merged mappings (yamlcheck.MaxKeyPairs:
	// each merge of 100 keys is 4,950 pairs) run out before the values.
	got := locatedProblemStrings(err)
	if len(got) != 1 || !strings.HasPrefix(got[0], "t.yaml: workloads[") || !strings.Contains(got[0], ".match.claims: too many keys to compare") || !strings.Contains(got[0], "(line ") {
		t.Errorf("Parse(merged aliases) problems = %q, want one naming t.yaml, workloads[i].match.claims, \"too many keys to compare\" and a line", got)
	}
}

// TestDecodeMaxKeyPairs: a policy whose mappings have, between them, more
// pairs of keys than the YAML decoder may compare (yamlcheck.MaxKeyPairs:
// nine claims mappings of 1,024 keys) is refused before the decoder runs,
// with one problem naming the file, the mapping where the count passes the
// bound and its line. Before, each mapping within yamlcheck.MaxKeys passed,
// and 300 of them (2.4 MB) cost the decoder some 1.7 s of comparisons
// before the policy was refused for its other problems.
func TestDecodeMaxKeyPairs(t *testing.T) {
	var b strings.Builder
	b.WriteString("version: 1\nworkloads:\n")
	for range 9 {
		b.WriteString("- match: {claims: {")
		for k := range 1024 {
			fmt.Fprintf(&b, "k%d: v, ", k)
		}
		b.WriteString("}}\n")
	}
	_, err := Parse("p.yaml", []byte(b.String()))
	want := []string{"p.yaml: workloads[8].match.claims: too many keys to compare: the YAML decoder compares the keys of each mapping two by two (n keys: n(n-1)/2 pairs), and with the 1024 keys of this one the document's mappings have more than 4194304 pairs (aliases and merges (<<) counted each time they are used) (line 11)"}
	if diff := cmp.Diff(want, problemStrings(err)); diff != "" {
		t.Errorf("Parse() problems (-want +got):\n%s", diff)
	}
}

// TestDecodeLargePolicyWithinBounds: a policy file of nearly
// MaxFileSize bytes of workloads written as real ones are (a name, an
// owner, an issuer, a subject pattern, three claims and a grant each) is
// within every bound yamlcheck sets on a document (values, keys of one
// mapping, pairs of keys across mappings): some 15,800 workloads of 12
// pairs of keys each are 190,000 pairs, far within yamlcheck.MaxKeyPairs.
func TestDecodeLargePolicyWithinBounds(t *testing.T) {
	var b strings.Builder
	b.WriteString("version: 1\nworkloads:\n")
	const workload = `  - name: w%d
    owner: team-%d
    match:
      issuer: k8s
      subject_pattern: "system:serviceaccount:ns%d:[a-z]+"
      claims: {kubernetes.io.namespace: ns%d, kubernetes.io.serviceaccount.name: sa%d, repository_owner: team-%d}
    grants: [g]
`
	for i := 0; b.Len() < MaxFileSize-1000; i++ {
		fmt.Fprintf(&b, workload, i, i, i, i, i, i)
	}
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(b.String()), &root); err != nil {
		t.Fatal(err)
	}
	if ps := yamlcheck.Check(&root, reflect.TypeOf(File{}), yamlcheck.NullEntries); len(ps) > 0 {
		t.Errorf("Check(%d bytes of workloads) = %v, want no problem", b.Len(), ps[0])
	}
}

// TestLoadFSRefusesNonRegularFiles: LoadFS of a path that is not a regular
// file in its file system (a named pipe, a device) is refused before it is
// opened, naming the path and what it is, as Load refuses one on disk
// (an os.DirFS would block opening a FIFO). Before, it was read: here an
// "empty policy file" problem.
func TestLoadFSRefusesNonRegularFiles(t *testing.T) {
	fsys := fstest.MapFS{
		"d/fifo.yaml": {Mode: fs.ModeNamedPipe},
		"d/dev.yaml":  {Mode: fs.ModeDevice | fs.ModeCharDevice, Data: []byte("version: 1\n")},
	}
	for _, tt := range []struct{ path, want string }{
		{"d/fifo.yaml", "d/fifo.yaml: is a named pipe, not a regular file"},
		{"d/dev.yaml", "d/dev.yaml: is a character device, not a regular file"},
	} {
		p, err := LoadFS(fsys, tt.path)
		if err == nil || err.Error() != tt.want {
			t.Errorf("LoadFS(%s) = %v, %v; want %q", tt.path, p, err, tt.want)
		}
	}
}

// TestLoadFSDirectoryRefusesNonRegularEntries: in a directory given to
// LoadFS, an entry named *.yaml or *.yml that is not a regular file (a
// named pipe, a directory) is an error naming it and what it is, as a
// symlink to one is. Before, it was left out without a word, so its
// workloads were silently missing. Hidden entries stay ignored.
func TestLoadFSDirectoryRefusesNonRegularEntries(t *testing.T) {
	valid := []byte("version: 1\n")
	for _, tt := range []struct {
		fsys fstest.MapFS
		want string
	}{
		{fstest.MapFS{"d/a.yaml": {Data: valid}, "d/b.yaml": {Mode: fs.ModeNamedPipe}}, "d/b.yaml: is a named pipe, not a regular file"},
		{fstest.MapFS{"d/a.yaml": {Data: valid}, "d/b.yml/x.yaml": {Data: valid}}, "d/b.yml: is a directory, not a regular file"},
		{fstest.MapFS{"d/a.yaml": {Data: valid}, "d/c.yaml": {Mode: fs.ModeDevice | fs.ModeCharDevice}}, "d/c.yaml: is a character device, not a regular file"},
	} {
		p, err := LoadFS(tt.fsys, "d")
		if err == nil || err.Error() != tt.want {
			t.Errorf("LoadFS(%v) = %v, %v; want %q", tt.fsys, p, err, tt.want)
		}
	}
	fsys := fstest.MapFS{"d/a.yaml": {Data: valid}, "d/.b.yaml": {Mode: fs.ModeNamedPipe}, "d/..data/a.yaml": {Data: valid}, "d/sub/x.yaml": {Data: valid}}
	if p, err := LoadFS(fsys, "d"); err != nil || len(p.Sources()) != 1 {
		t.Errorf("LoadFS(hidden pipe, ..data, sub) = %v, %v; want the one a.yaml", p, err)
	}
}

// TestLoadFSDirectoryReportsMiscasedNonRegularEntries: LoadFS reports a
// miscased entry that is not a regular file (a named pipe, a directory) as
// a problem naming it and what it is, as Load does. Before, it was left
// out without a word.
func TestLoadFSDirectoryReportsMiscasedNonRegularEntries(t *testing.T) {
	valid := []byte("version: 1\n")
	fsys := fstest.MapFS{
		"d/a.yaml":       {Data: valid},
		"d/B.YAML":       {Data: valid},
		"d/P.YAML":       {Mode: fs.ModeNamedPipe},
		"d/s.Yml/x.yaml": {Data: valid},
		"d/.h.YAML":      {Mode: fs.ModeNamedPipe},
	}
	const policyFiles = `policy files are regular files named *.yaml or *.yml (lowercase)`
	want := []string{
		`d/B.YAML: not read: policy file names end in ".yaml" or ".yml" (lowercase); rename it`,
		`d/P.YAML: not read: is a named pipe, not a regular file; ` + policyFiles,
		`d/s.Yml: not read: is a directory, not a regular file; ` + policyFiles,
	}
	p, err := LoadFS(fsys, "d")
	if diff := cmp.Diff(want, problemStrings(err)); diff != "" || p != nil {
		t.Errorf("LoadFS = %v, %v; want problems (-want +got):\n%s", p, err, diff)
	}
}

// TestLoadFSDanglingSymlinkTargets: LoadFS quotes a dangling symlink's
// target holding a newline, and names the last link of a chain of them,
// as Load does.
func TestLoadFSDanglingSymlinkTargets(t *testing.T) {
	fsys := fstest.MapFS{
		"d/a.yaml":   {Data: []byte("version: 1\n")},
		"d/l.yaml":   {Mode: fs.ModeSymlink, Data: []byte("m.yaml")},
		"d/m.yaml":   {Mode: fs.ModeSymlink, Data: []byte("../nowhere.yaml")},
		"d/k.yaml":   {Mode: fs.ModeSymlink, Data: []byte(".links/k")},
		"d/.links/k": {Mode: fs.ModeSymlink, Data: []byte("../../gone.yaml")},
		"d/n.yaml":   {Mode: fs.ModeSymlink, Data: []byte("gone\nx.yaml")},
	}
	want := []string{
		`d/k.yaml: not read: is a chain of symlinks (to .links/k) ending at d/.links/k, a dangling symlink to ../../gone.yaml`,
		`d/l.yaml: not read: is a chain of symlinks (to m.yaml) ending at d/m.yaml, a dangling symlink to ../nowhere.yaml`,
		`d/m.yaml: not read: is a dangling symlink to ../nowhere.yaml`,
		`d/n.yaml: not read: is a dangling symlink to "gone\nx.yaml"`,
	}
	p, err := LoadFS(fsys, "d")
	if diff := cmp.Diff(want, problemStrings(err)); diff != "" || p != nil {
		t.Errorf("LoadFS = %v, %v; want problems (-want +got):\n%s", p, err, diff)
	}
}

// TestLoadFSDirectoryReportsDanglingSymlinks: LoadFS reports a symlink
// named *.yaml or *.YAML whose target does not exist as Load does: a
// dangling symlink, named with its target, not a file to rename nor an
// "open: file does not exist".
func TestLoadFSDirectoryReportsDanglingSymlinks(t *testing.T) {
	fsys := fstest.MapFS{
		"d/a.yaml": {Data: []byte("version: 1\n")},
		"d/L.YAML": {Mode: fs.ModeSymlink, Data: []byte("gone/p.yaml")},
		"d/l.yml":  {Mode: fs.ModeSymlink, Data: []byte("../nowhere.yaml")},
	}
	want := []string{
		`d/L.YAML: not read: is a dangling symlink to gone/p.yaml; policy files are regular files named *.yaml or *.yml (lowercase)`,
		`d/l.yml: not read: is a dangling symlink to ../nowhere.yaml`,
	}
	p, err := LoadFS(fsys, "d")
	if diff := cmp.Diff(want, problemStrings(err)); diff != "" || p != nil {
		t.Errorf("LoadFS = %v, %v; want problems (-want +got):\n%s", p, err, diff)
	}
}
