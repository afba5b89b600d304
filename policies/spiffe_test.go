package policies_test

import (
	"strings"
	"testing"

	"github.com/keytrail/keytrail/policies"
)

// TestParseSPIFFEID: the SPIFFE ID spec's rules (§2), strictly: lower-case
// trust domain of [a-z0-9._-], no port, user info, query or fragment, path
// segments of [a-zA-Z0-9._-], none empty, "." or "..", no trailing slash.
func TestParseSPIFFEID(t *testing.T) {
	tests := []struct {
		id       string
		td, path string
		ok       bool
	}{
		{"spiffe://example.org", "example.org", "", true},
		{"spiffe://example.org/ns/prod/sa/api", "example.org", "/ns/prod/sa/api", true},
		{"spiffe://a_b-c.9/A.b_C-9", "a_b-c.9", "/A.b_C-9", true},
		{"spiffe://" + strings.Repeat("a", 255) + "/x", strings.Repeat("a", 255), "/x", true},
		{"spiffe://" + strings.Repeat("a", 256) + "/x", "", "", false},
		{"", "", "", false},
		{"spiffe://", "", "", false},
		{"spiffe:///path", "", "", false},
		{"SPIFFE://example.org/x", "", "", false},
		{"spiffe:example.org/x", "", "", false},
		{"https://example.org/x", "", "", false},
		{"spiffe://Example.org/x", "", "", false},
		{"spiffe://example.org:443/x", "", "", false},
		{"spiffe://user@example.org/x", "", "", false},
		{"spiffe://example.org/x?q=1", "", "", false},
		{"spiffe://example.org/x#f", "", "", false},
		{"spiffe://example.org/", "", "", false},
		{"spiffe://example.org/x/", "", "", false},
		{"spiffe://example.org//x", "", "", false},
		{"spiffe://example.org/./x", "", "", false},
		{"spiffe://example.org/x/..", "", "", false},
		{"spiffe://example.org/x%2Fy", "", "", false},
		{"spiffe://example.org/x y", "", "", false},
		{"spiffe://exa%6dple.org/x", "", "", false},
		// The SPIFFE ID spec (§2.3): at most 2048 bytes, the whole URI.
		{"spiffe://example.org/" + strings.Repeat("a", 2048-len("spiffe://example.org/")), "example.org", "/" + strings.Repeat("a", 2048-len("spiffe://example.org/")), true},
		{"spiffe://example.org/" + strings.Repeat("a", 2049-len("spiffe://example.org/")), "", "", false},
		{"spiffe://example.org" + strings.Repeat("/a", 1024), "", "", false},
	}
	for _, tc := range tests {
		td, path, err := policies.ParseSPIFFEID(tc.id)
		if (err == nil) != tc.ok || td != tc.td || path != tc.path {
			t.Errorf("ParseSPIFFEID(%q) = %q, %q, %v; want %q, %q, ok=%v", tc.id, td, path, err, tc.td, tc.path, tc.ok)
		}
	}
	if _, _, err := policies.ParseSPIFFEID("spiffe://example.org/" + strings.Repeat("a", 2100)); err == nil || !strings.Contains(err.Error(), "2048 bytes") {
		t.Errorf("ParseSPIFFEID(2121 bytes) error = %v, want one naming the 2048-byte limit", err)
	}
	// A workload's id has a path; a trust domain's has none.
	if td, ok := policies.SPIFFEWorkloadTrustDomain("spiffe://example.org/api"); !ok || td != "example.org" {
		t.Errorf(`SPIFFEWorkloadTrustDomain(workload id) = %q, %v`, td, ok)
	}
	if _, ok := policies.SPIFFEWorkloadTrustDomain("spiffe://example.org"); ok {
		t.Error(`SPIFFEWorkloadTrustDomain("spiffe://example.org") = ok, want false (a trust domain id names no workload)`)
	}
	if td := (&policies.Issuer{Issuer: "spiffe://example.org"}).TrustDomain(); td != "example.org" {
		t.Errorf("TrustDomain() = %q", td)
	}
	for _, iss := range []string{"https://example.org", "spiffe://example.org/x", "SPIFFE://example.org"} {
		if td := (&policies.Issuer{Issuer: iss}).TrustDomain(); td != "" {
			t.Errorf("Issuer{%q}.TrustDomain() = %q, want none", iss, td)
		}
	}
}

// TestMatchIssOfTokenWithoutIss: a SPIFFE trust domain's issuer takes
// JWT-SVIDs without iss, and the identity's iss is then the trust domain
// id (audit, introspection, session). A workload or admin match on
// claims.iss (or claim_patterns.iss) sees the same value: it matches such
// a token as it matches one whose iss is the trust domain id. A claims.iss
// that no token of the match's issuer can carry draws a warning.
func TestMatchIssOfTokenWithoutIss(t *testing.T) {
	p, err := policies.Parse("p.yaml", []byte(`version: 1
issuers:
  - {name: spire, issuer: "spiffe://example.org", jwks_url: "https://spire.example.org/bundle", audiences: [keytrail], algorithms: [ES256]}
  - {name: idp, issuer: "https://idp.example", jwks_url: "https://idp.example/jwks", audiences: [keytrail], algorithms: [ES256]}
workloads:
  - {name: api, owner: team-a, match: {issuer: spire, subject: "spiffe://example.org/api", claims: {iss: "spiffe://example.org"}}, grants: [g]}
  - {name: web, owner: team-a, match: {issuer: spire, subject: "spiffe://example.org/web", claim_patterns: {iss: "spiffe://example[.]org"}}, grants: [g]}
  - {name: dead, owner: team-a, match: {issuer: idp, subject: "x", claims: {iss: "https://other.example"}}, grants: [g]}
admins:
  - {name: ops, match: {issuer: spire, claims: {iss: "spiffe://example.org", sub: "spiffe://example.org/ops"}}, roles: [trace]}
grants:
  - {name: g, kind: vault_token, ttl: 5m, vault_token: {policies: [p]}}
`))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		claims map[string]any
		want   string
	}{
		{"api without iss", map[string]any{"sub": "spiffe://example.org/api"}, "api"},
		{"api with iss", map[string]any{"iss": "spiffe://example.org", "sub": "spiffe://example.org/api"}, "api"},
		{"web without iss", map[string]any{"sub": "spiffe://example.org/web"}, "web"},
	} {
		wl, err := p.Match("spire", tc.claims)
		if err != nil || wl.Name != tc.want {
			t.Errorf("%s: Match() = %v, %v; want %s", tc.name, wl, err, tc.want)
		}
	}
	if a, ok := p.MatchAdmin("spire", map[string]any{"sub": "spiffe://example.org/ops"}, "trace"); !ok || a.Name != "ops" {
		t.Errorf("MatchAdmin(no iss) = %v, %v; want ops", a, ok)
	}
	// Only where iss is absent: another iss never passes.
	if wl, err := p.Match("spire", map[string]any{"iss": "spiffe://example.com", "sub": "spiffe://example.org/api"}); err == nil {
		t.Errorf("Match(iss of another trust domain) = %s, want no match", wl.Name)
	}
	// An issuer that is no trust domain routes no token without iss: an
	// absent iss stays absent.
	if wl, err := p.Match("idp", map[string]any{"sub": "x"}); err == nil {
		t.Errorf("Match(idp, no iss) = %s, want no match", wl.Name)
	}
	e := p.Explain("spire", map[string]any{"sub": "spiffe://example.org/api"}, "")
	if e.Matched != "api" {
		t.Errorf("Explain(no iss) matched %q, want api", e.Matched)
	}
	var texts []string
	for _, w := range e.Workloads {
		for _, c := range w.Checks {
			texts = append(texts, c.Text)
		}
	}
	if !strings.Contains(strings.Join(texts, "\n"), "no iss claim: the trust domain id") {
		t.Errorf("Explain checks %q, want one saying iss was absent and the trust domain id stood in", texts)
	}
	var warned []string
	for _, w := range p.Warnings() {
		if strings.Contains(w.Path, "iss") {
			warned = append(warned, w.Path+": "+w.Message)
		}
	}
	if len(warned) != 1 || !strings.Contains(warned[0], "workloads[2]") || !strings.Contains(warned[0], "never matches") {
		t.Errorf("warnings on iss = %q, want one, on workloads[2]'s claims.iss, saying it never matches", warned)
	}
}
