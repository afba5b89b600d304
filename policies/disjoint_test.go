package policies

import (
	"fmt"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
)

// checkDisjointPairwise is checkDisjoint as it was, comparing every pair of
// workloads: the reference the bucketed one must agree with.
func checkDisjointPairwise(v *validator, ws []Workload, locs []loc) {
	for i := range ws {
		for j := 0; j < i; j++ {
			if sameMatch(&ws[i].Match, &ws[j].Match) {
				v.add(locs[i].file, locs[i].path+".match", "same match as workload %s (%s): a token would match both; make workload matches disjoint", quoted(ws[j].Name), locs[j])
				break
			}
		}
	}
}

// randomMatch draws a match from small sets, so that many are identical or
// nearly so: the same issuer with other claims, the same claims built in
// another order, nil and empty maps, and strings that would run together
// if a key were built by plain concatenation.
func randomMatch(r *rand.Rand) Match {
	pick := func(s ...string) string { return s[r.IntN(len(s))] }
	m := Match{
		Issuer:         pick("k8s", "gh", "", "k8s\x00"),
		Subject:        pick("", "", "a", "a:b", "\x00"),
		SubjectPattern: pick("", "", "[a-z]+", "a"),
	}
	claimsOf := func() map[string]string {
		switch r.IntN(4) {
		case 0:
			return nil
		case 1:
			return map[string]string{}
		}
		c := map[string]string{}
		keys := []string{"ns", "team", "a", "a\x00b", "b"}
		r.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
		for _, k := range keys[:1+r.IntN(3)] {
			c[k] = pick("x", "y", "b\x00c", "c", "")
		}
		return c
	}
	m.Claims = claimsOf()
	m.ClaimPatterns = claimsOf()
	return m
}

// TestCheckDisjointAsPairwise: checkDisjoint reports exactly the problems,
// in the order and words, that comparing every pair reported, over
// generated workloads with many identical and near-identical matches.
func TestCheckDisjointAsPairwise(t *testing.T) {
	for seed := range uint64(50) {
		r := rand.New(rand.NewPCG(seed, 37))
		n := 50 + r.IntN(300)
		ws := make([]Workload, n)
		locs := make([]loc, n)
		for i := range ws {
			ws[i] = Workload{Name: fmt.Sprintf("w%d", i), Match: randomMatch(r)}
			if i > 0 && r.IntN(4) == 0 {
				// A copy of an earlier match, its maps rebuilt (another
				// insertion order, nil for empty and back).
				m := ws[r.IntN(i)].Match
				m.Claims = rebuilt(m.Claims, r)
				m.ClaimPatterns = rebuilt(m.ClaimPatterns, r)
				ws[i].Match = m
			}
			locs[i] = loc{file: fmt.Sprintf("f%d.yaml", i%3), path: fmt.Sprintf("workloads[%d]", i)}
		}
		var got, want validator
		checkDisjoint(&got, ws, locs)
		checkDisjointPairwise(&want, ws, locs)
		if len(want.problems) == 0 {
			t.Fatalf("seed %d: no duplicate matches generated", seed)
		}
		if !reflect.DeepEqual(got.problems, want.problems) {
			t.Errorf("seed %d: checkDisjoint =\n%v\nwant (pairwise)\n%v", seed, got.problems, want.problems)
		}
	}
}

// rebuilt is a copy of m built in a random order; an empty m is nil or
// empty at random.
func rebuilt(m map[string]string, r *rand.Rand) map[string]string {
	if len(m) == 0 {
		if r.IntN(2) == 0 {
			return nil
		}
		return map[string]string{}
	}
	keys := sortedKeys(m)
	r.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	c := make(map[string]string, len(m))
	for _, k := range keys {
		c[k] = m[k]
	}
	return c
}

// TestCheckDisjointEdgeCases: nil and empty claim maps are the same match;
// strings that concatenate alike are not.
func TestCheckDisjointEdgeCases(t *testing.T) {
	tests := []struct {
		name string
		a, b Match
		same bool
	}{
		{"nil and empty claims", Match{Issuer: "k", Claims: nil}, Match{Issuer: "k", Claims: map[string]string{}}, true},
		{"nil and empty claim patterns", Match{Issuer: "k", ClaimPatterns: map[string]string{}}, Match{Issuer: "k"}, true},
		{"claims in another order", Match{Issuer: "k", Claims: map[string]string{"a": "1", "b": "2"}}, Match{Issuer: "k", Claims: map[string]string{"b": "2", "a": "1"}}, true},
		{"other claim value", Match{Issuer: "k", Claims: map[string]string{"a": "1"}}, Match{Issuer: "k", Claims: map[string]string{"a": "2"}}, false},
		{"claim in claims or patterns", Match{Issuer: "k", Claims: map[string]string{"a": "1"}}, Match{Issuer: "k", ClaimPatterns: map[string]string{"a": "1"}}, false},
		{"issuer and subject run together", Match{Issuer: "ab", Subject: "c"}, Match{Issuer: "a", Subject: "bc"}, false},
		{"subject and pattern", Match{Issuer: "k", Subject: "a"}, Match{Issuer: "k", SubjectPattern: "a"}, false},
		{"key and value run together", Match{Claims: map[string]string{"ab": "c"}}, Match{Claims: map[string]string{"a": "bc"}}, false},
		{"two claims as one", Match{Claims: map[string]string{"a": "b", "c": "d"}}, Match{Claims: map[string]string{"a": "b\x00c\x00d"}}, false},
	}
	for _, tt := range tests {
		if got := sameMatch(&tt.a, &tt.b); got != tt.same {
			t.Fatalf("%s: sameMatch = %v, want %v (the reference changed)", tt.name, got, tt.same)
		}
		var v validator
		checkDisjoint(&v, []Workload{{Name: "a", Match: tt.a}, {Name: "b", Match: tt.b}}, []loc{{"t.yaml", "workloads[0]"}, {"t.yaml", "workloads[1]"}})
		if got := len(v.problems) == 1; got != tt.same {
			t.Errorf("%s: checkDisjoint problems = %v, want same match %v", tt.name, v.problems, tt.same)
		}
	}
}

// loadBenchYAML is a policy of n workloads of one issuer, each with its own
// match (a subject pattern and a namespace claim), as a large multi-tenant
// deployment writes them.
func loadBenchYAML(n int) []byte {
	var sb strings.Builder
	sb.WriteString(`version: 1
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
    vault_token: {policies: [p]}
workloads:
`)
	for i := range n {
		fmt.Fprintf(&sb, "  - name: w%d\n    owner: team-%d\n    match:\n      issuer: k8s\n      subject_pattern: \"system:serviceaccount:ns%d:[a-z]+\"\n      claims: {kubernetes.io.namespace: ns%d}\n    grants: [g]\n", i, i, i, i)
	}
	return []byte(sb.String())
}

// BenchmarkLoadWorkloads measures Parse (decode, validate, compile) of a
// policy of 25,000 workloads, as a load or hot reload does.
func BenchmarkLoadWorkloads25000(b *testing.B) {
	data := loadBenchYAML(25000)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse("bench.yaml", data); err != nil {
			b.Fatalf("Parse() = %v", err)
		}
	}
}
