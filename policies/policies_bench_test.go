package policies

import (
	"fmt"
	"strings"
	"testing"
)

// benchPolicy has n workloads of one issuer; the last one matches
// benchClaims.
func benchPolicy(b *testing.B, n int) *Policy {
	b.Helper()
	var sb strings.Builder
	sb.WriteString(`version: 1
issuers:
  - name: k8s
    issuer: https://k8s.example
    jwks_url: https://k8s.example/jwks
    audiences: [keytrail]
    algorithms: [ES256]
    max_token_lifetime: 24h
    session_claim: kubernetes.io.pod.uid
grants:
  - name: g
    kind: vault_token
    ttl: 15m
    vault_token: {policies: [p]}
workloads:
`)
	for i := range n {
		fmt.Fprintf(&sb, `  - name: w%d
    owner: team-%d
    match:
      issuer: k8s
      subject_pattern: "system:serviceaccount:ns%d:[a-z]+"
      claims: {kubernetes.io.namespace: ns%d}
    grants: [g]
`, i, i, i, i)
	}
	p, err := Parse("bench.yaml", []byte(sb.String()))
	if err != nil {
		b.Fatalf("Parse() = %v", err)
	}
	return p
}

// BenchmarkMatch measures the policy decision of one exchange: find the
// workload among n (the last one matches) and check the grant.
func BenchmarkMatch(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("workloads=%d", n), func(b *testing.B) {
			p := benchPolicy(b, n)
			last := n - 1
			claims := map[string]any{
				"sub":           fmt.Sprintf("system:serviceaccount:ns%d:api", last),
				"kubernetes.io": map[string]any{"namespace": fmt.Sprintf("ns%d", last), "pod": map[string]any{"uid": "pod-1"}},
			}
			b.ReportAllocs()
			for b.Loop() {
				w, err := p.Match("k8s", claims)
				if err != nil || !p.Allowed(w, "g") {
					b.Fatalf("Match() = %v, %v", w, err)
				}
			}
		})
	}
}
