package broker

import (
	"testing"

	"github.com/keytrail/keytrail/policies"
)

// An exchange's session id and recorded claims read the issuer's
// session_claim without copying the issuer (its audience, algorithm and
// token type lists).
func TestSessionIDAndUsedClaimsAllocs(t *testing.T) {
	pol, err := policies.Parse("p.yaml", []byte(`version: 1
issuers:
  - name: k8s
    issuer: https://k8s.example
    jwks_url: https://k8s.example/jwks
    audiences: [keytrail, other]
    algorithms: [ES256, RS256]
    session_claim: kubernetes.io.pod.uid
grants:
  - name: g
    kind: vault_token
    ttl: 15m
    vault_token: {policies: [p]}
workloads:
  - name: api
    owner: team-a
    match: {issuer: k8s, subject: "system:serviceaccount:ns1:api"}
    grants: [g]
`))
	if err != nil {
		t.Fatal(err)
	}
	id := &Identity{IssuerName: "k8s", Iss: "https://k8s.example", Sub: "system:serviceaccount:ns1:api", JTI: "j",
		Claims: map[string]any{"sub": "system:serviceaccount:ns1:api", "kubernetes.io": map[string]any{"pod": map[string]any{"uid": "pod-1"}}}}
	wl, err := pol.Match("k8s", id.Claims)
	if err != nil {
		t.Fatal(err)
	}
	s := &Service{}
	if got, want := s.sessionID(pol, id), SessionID("k8s", "claim:pod-1"); got != want {
		t.Fatalf("sessionID = %q, want %q", got, want)
	}
	if got := usedClaims(pol, id, wl); len(got) != 2 || got["sub"] != id.Sub || got["kubernetes.io.pod.uid"] != "pod-1" {
		t.Fatalf("usedClaims = %v", got)
	}
	// The id's text, its hash state and the "claim:" input: 3.
	if n := testing.AllocsPerRun(100, func() { _ = s.sessionID(pol, id) }); n > 3 {
		t.Errorf("sessionID: %v allocations, want at most 3", n)
	}
	// The map (its header and its storage) and the value boxed for it.
	if n := testing.AllocsPerRun(100, func() { _ = usedClaims(pol, id, wl) }); n > 3 {
		t.Errorf("usedClaims: %v allocations, want at most 3", n)
	}
}
