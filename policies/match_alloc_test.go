package policies

import (
	"strings"
	"testing"
)

const allocPolicy = `version: 1
issuers:
  - name: k8s
    issuer: https://k8s.example
    jwks_url: https://k8s.example/jwks
    audiences: [keytrail]
    algorithms: [ES256]
    session_claim: kubernetes.io.pod.uid
  - name: gh
    issuer: https://token.actions.githubusercontent.com
    jwks_url: https://token.actions.githubusercontent.com/jwks
    audiences: [keytrail]
    algorithms: [RS256]
grants:
  - name: g
    kind: vault_token
    ttl: 15m
    vault_token: {policies: [p]}
workloads:
  - name: other
    owner: team-b
    match: {issuer: k8s, subject: "system:serviceaccount:other:api"}
    grants: [g]
  - name: api
    owner: team-a
    match:
      issuer: k8s
      subject_pattern: "system:serviceaccount:ns1:[a-z]+"
      claims: {kubernetes.io.namespace: ns1}
    grants: [g]
`

// Match's only allocations on a match are the copy of the workload it
// returns (what Workload allocates): the names it lists in an ambiguity
// error are built for that error only.
func TestMatchAllocatesOnlyItsResult(t *testing.T) {
	p, err := Parse("alloc.yaml", []byte(allocPolicy))
	if err != nil {
		t.Fatal(err)
	}
	claims := map[string]any{"sub": "system:serviceaccount:ns1:api", "kubernetes.io": map[string]any{"namespace": "ns1"}}
	if w, err := p.Match("k8s", claims); err != nil || w.Name != "api" {
		t.Fatalf("Match() = %v, %v", w, err)
	}
	var sink *Workload
	match := testing.AllocsPerRun(100, func() { sink, _ = p.Match("k8s", claims) })
	copyOnly := testing.AllocsPerRun(100, func() { sink, _ = p.Workload("api") })
	_ = sink
	if match != copyOnly {
		t.Errorf("Match: %v allocations, want %v (those of the workload's copy)", match, copyOnly)
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = p.MatchIndex("k8s", claims) }); n != 0 {
		t.Errorf("MatchIndex: %v allocations, want 0", n)
	}
}

// SessionClaim answers without copying the issuer.
func TestSessionClaim(t *testing.T) {
	p, err := Parse("alloc.yaml", []byte(allocPolicy))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{"k8s": "kubernetes.io.pod.uid", "gh": "", "nope": ""} {
		if got := p.SessionClaim(name); got != want {
			t.Errorf("SessionClaim(%q) = %q, want %q", name, got, want)
		}
		if iss, ok := p.Issuer(name); ok && iss.SessionClaim != want {
			t.Errorf("Issuer(%q).SessionClaim = %q, SessionClaim() %q", name, iss.SessionClaim, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = p.SessionClaim("k8s") }); n != 0 {
		t.Errorf("SessionClaim: %v allocations, want 0", n)
	}
}

// AllowsPath runs on every proxied request: it allocates nothing, and its
// clean-path check says what the strings.Split form it replaced said.
func TestAllowsPathAllocs(t *testing.T) {
	px := &ProxyGrant{Paths: []string{"/v1/customers/*", "/v1/charges"}}
	for path, want := range map[string]bool{
		"/v1/charges": true, "/v1/customers/cus_1": true, "/v1/customers/": false, "/v1/customers/a/": true,
		"/v1//charges": false, "/v1/customers/./x": false, "/v1/customers/..": false, "/v1/charges/": false, "": false,
	} {
		if got := px.AllowsPath(path); got != want {
			t.Errorf("AllowsPath(%q) = %v, want %v", path, got, want)
		}
	}
	if n := testing.AllocsPerRun(100, func() { _ = px.AllowsPath("/v1/customers/cus_1/sources") }); n != 0 {
		t.Errorf("AllowsPath: %v allocations, want 0", n)
	}
	splitClean := func(p string) bool {
		segs := strings.Split(p[1:], "/")
		for i, s := range segs {
			if s == "." || s == ".." || (s == "" && i != len(segs)-1) {
				return false
			}
		}
		return true
	}
	for _, p := range []string{"/", "//", "/a", "/a/", "/a//", "/a//b", "/.", "/..", "/./", "/a/.", "/a/..", "/a/../", "/.a", "/a..",
		"/a/b/c", "/a/b/c/", "/a/./b", "///", "/a/b//"} {
		if got, want := cleanPath(p), splitClean(p); got != want {
			t.Errorf("cleanPath(%q) = %v, want %v", p, got, want)
		}
	}
}
