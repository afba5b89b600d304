package broker

import (
	"reflect"
	"testing"

	"github.com/keytrail/keytrail/policies"
)

// The exchange reads its grant from a view made once per policy: the same
// grant as Policy.Grant copies out, without the copy (3 allocations for a
// vault_token grant), and a new view once the policy is replaced.
func TestGrantView(t *testing.T) {
	text := `version: 1
issuers:
  - name: k8s
    issuer: https://k8s.example
    jwks_url: https://k8s.example/jwks
    audiences: [keytrail]
    algorithms: [ES256]
grants:
  - name: g
    kind: vault_token
    ttl: 15m
    vault_token: {policies: [p, q], num_uses: 2}
  - name: j
    kind: jwt
    ttl: 5m
    jwt: {audience: svc, transit_key: k}
workloads:
  - name: api
    owner: team-a
    match: {issuer: k8s, subject: "system:serviceaccount:ns1:api", claims: {kubernetes.io.namespace: ns1}}
    grants: [g, j]
  - name: batch
    owner: team-b
    match: {issuer: k8s, subject_pattern: "system:serviceaccount:ns1:batch-[a-z]+"}
    grants: [g]
    rate: {per_second: 5, burst: 10}
`
	pol, err := policies.Parse("p.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	var vs grantViews
	v := vs.of(pol)
	for _, name := range []string{"g", "j", "nope"} {
		got, ok := v.grant(name)
		want, wok := pol.Grant(name)
		if ok != wok || ok && !reflect.DeepEqual(got, want) {
			t.Errorf("grant(%q) = %+v, %v; Policy.Grant %+v, %v", name, got, ok, want, wok)
		}
	}
	// The workload the view matches is Policy.Match's, its error the same.
	for _, claims := range []map[string]any{
		{"sub": "system:serviceaccount:ns1:api", "kubernetes.io": map[string]any{"namespace": "ns1"}},
		{"sub": "system:serviceaccount:ns1:api", "kubernetes.io": map[string]any{"namespace": "ns2"}},
		{"sub": "system:serviceaccount:ns1:batch-x"},
		{"sub": "system:serviceaccount:ns1:batch-X"},
		{},
	} {
		got, err := v.match("k8s", claims)
		want, werr := pol.Match("k8s", claims)
		if (err == nil) != (werr == nil) || err != nil && err.Error() != werr.Error() || !reflect.DeepEqual(got, want) {
			t.Errorf("match(%v) = %+v, %v; Policy.Match %+v, %v", claims, got, err, want, werr)
		}
	}
	claims := map[string]any{"sub": "system:serviceaccount:ns1:api", "kubernetes.io": map[string]any{"namespace": "ns1"}}
	if n := testing.AllocsPerRun(100, func() { _, _ = vs.of(pol).match("k8s", claims) }); n != 0 {
		t.Errorf("a workload from the view: %v allocations, want 0", n)
	}
	if vs.of(pol) != v {
		t.Error("a second look at the same policy built a new view")
	}
	if n := testing.AllocsPerRun(100, func() { _, _ = vs.of(pol).grant("g") }); n != 0 {
		t.Errorf("a grant from the view: %v allocations, want 0", n)
	}
	pol2, err := policies.Parse("p.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if v2 := vs.of(pol2); v2 == v || v2.pol != pol2 {
		t.Error("a reloaded policy kept the old view")
	}
}

// An exchange under the old policy and one under the new, at once (a
// reload between them): each gets the grant of its own policy, whichever
// view the other left kept, never the other policy's.
func TestGrantViewReloadRace(t *testing.T) {
	text := func(ttl string) []byte {
		return []byte(`version: 1
issuers:
  - name: k8s
    issuer: https://k8s.example
    jwks_url: https://k8s.example/jwks
    audiences: [keytrail]
    algorithms: [ES256]
grants:
  - name: g
    kind: vault_token
    ttl: ` + ttl + `
    vault_token: {policies: [p]}
workloads:
  - name: api
    owner: team-a
    match: {issuer: k8s, subject: "system:serviceaccount:ns1:api"}
    grants: [g]
`)
	}
	var pols [2]*policies.Policy
	for i, ttl := range []string{"15m", "5m"} {
		p, err := policies.Parse("p.yaml", text(ttl))
		if err != nil {
			t.Fatal(err)
		}
		pols[i] = p
	}
	var vs grantViews
	done := make(chan string, 2)
	for i := range pols {
		go func() {
			want, _ := pols[i].Grant("g")
			for range 2000 {
				v := vs.of(pols[i])
				g, ok := v.grant("g")
				if v.pol != pols[i] || !ok || g.TTLDuration() != want.TTLDuration() {
					done <- "policy with ttl " + want.TTLDuration().String() + ": a view of the other policy, or its grant"
					return
				}
			}
			done <- ""
		}()
	}
	for range pols {
		if msg := <-done; msg != "" {
			t.Error(msg)
		}
	}
}
