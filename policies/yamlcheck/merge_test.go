package yamlcheck

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"
)

// TestEntries: Entries passes what the decoder reads of mapping "m", in
// both orders: written keys override merged ones wherever the "<<" is
// written, an earlier merged mapping overrides a later one, merges nest,
// and each merged value is passed with a nil key, as written: a mapping
// before its entries ("<<" below, with its line), or one the decoder
// refuses ("!bad"). Where the decoder accepts the document,
// the entries passed are exactly the mapping it decodes.
func TestEntries(t *testing.T) {
	tests := []struct {
		name          string
		yaml          string
		document, dec []string
	}{
		{"ok/no-merge", "m: {a: 1, b: 2}\n",
			[]string{"a=1", "b=2"},
			[]string{"a=1", "b=2"}},
		{"ok/alias-to-mapping", "x: &x {a: 1}\nm: *x\n",
			[]string{"a=1"},
			[]string{"a=1"}},
		{"merge/mapping", "m: {<<: {a: 1, b: 2}, c: 3}\n",
			[]string{"<<@1", "a=1", "b=2", "c=3"},
			[]string{"c=3", "<<@1", "a=1", "b=2"}},
		{"merge/alias", "x: &x {a: 1, b: 2}\nm: {c: 3, <<: *x}\n",
			[]string{"c=3", "<<@2", "a=1", "b=2"},
			[]string{"c=3", "<<@2", "a=1", "b=2"}},
		{"merge/list-of-mappings", "x: &x {a: 1}\nm:\n  <<: [*x, {b: 2}]\n  c: 3\n",
			[]string{"<<@3", "a=1", "<<@3", "b=2", "c=3"},
			[]string{"c=3", "<<@3", "a=1", "<<@3", "b=2"}},
		{"merge/empty-list", "m: {<<: [], a: 1}\n",
			[]string{"a=1"},
			[]string{"a=1"}},
		// A key written in the mapping wins over a merged one, whether it
		// is written before or after the "<<".
		{"override/written-over-merged", "m: {b: 0, <<: {a: 1, b: 2, c: 3}, c: 4}\n",
			[]string{"b=0", "<<@1", "a=1", "c=4"},
			[]string{"b=0", "c=4", "<<@1", "a=1"}},
		// Of the mappings of a merge list, the first to set a key wins.
		{"override/earlier-merged-over-later", "m: {<<: [{a: 1}, {a: 2, b: 2}, {b: 3, c: 3}]}\n",
			[]string{"<<@1", "a=1", "<<@1", "b=2", "<<@1", "c=3"},
			[]string{"<<@1", "a=1", "<<@1", "b=2", "<<@1", "c=3"}},
		// y merges x, m merges y then a mapping: x's own a wins over
		// its merged a, y's b over the later mapping's b, m's d over all.
		{"merge/nested",
			"x: &x {a: 1, <<: {a: 9, z: 9}}\ny: &y {<<: *x, b: 2}\nm:\n  <<: [*y, {b: 8, c: 3, d: 8}]\n  d: 4\n",
			[]string{"<<@4", "<<@2", "a=1", "<<@1", "z=9", "b=2", "<<@4", "c=3", "d=4"},
			[]string{"d=4", "<<@4", "b=2", "<<@2", "a=1", "<<@1", "z=9", "<<@4", "c=3"}},
		// The decoder ignores the !!merge tag on a key other than "<<".
		{"plain/merge-tag-on-other-key", "m: {!!merge a: 1, <<: {a: 2, b: 2}}\n",
			[]string{"a=1", "<<@1", "b=2"},
			[]string{"a=1", "<<@1", "b=2"}},
		// Passed as written: the line is the merge's.
		{"bad/alias-to-scalar", "s: &s 5\nm: {<<: *s, a: 1}\n",
			[]string{"!bad@2", "a=1"},
			[]string{"a=1", "!bad@2"}},
		// Only a list written in place is merged mapping by mapping.
		{"bad/alias-to-list", "l: &l [{a: 1}]\nm: {<<: *l, b: 2}\n",
			[]string{"!bad@2", "b=2"},
			[]string{"b=2", "!bad@2"}},
		{"bad/alias-to-list-in-list", "l: &l [{a: 1}]\nm:\n  <<: [{b: 2}, *l]\n",
			[]string{"<<@3", "b=2", "!bad@3"},
			[]string{"<<@3", "b=2", "!bad@3"}},
		{"bad/null-in-list", "m:\n  <<: [{a: 1}, ~]\n  b: 2\n",
			[]string{"<<@2", "a=1", "!bad@2", "b=2"},
			[]string{"b=2", "<<@2", "a=1", "!bad@2"}},
		{"bad/list-in-list", "m: {<<: [[{a: 1}]]}\n",
			[]string{"!bad@1"},
			[]string{"!bad@1"}},
		// The decoder compares a key written next to the "<<" as the
		// value it is on its own (the number 1, the boolean true, a
		// time), a merged key as the string it sets: the merged 1 is set
		// after the written one, and wins.
		{"typed/number-key", "m: {1: a, <<: {1: b}}\n",
			[]string{"1=a", "<<@1", "1=b"},
			[]string{"1=a", "<<@1", "1=b"}},
		{"typed/number-key-after-merge", "m: {<<: {1: b}, 1: a}\n",
			[]string{"<<@1", "1=b", "1=a"},
			[]string{"1=a", "<<@1", "1=b"}},
		{"typed/bool-and-time-keys", "m: {true: a, 2001-01-01: c, <<: {true: b, 2001-01-01: d}}\n",
			[]string{"true=a", "2001-01-01=c", "<<@1", "true=b", "2001-01-01=d"},
			[]string{"true=a", "2001-01-01=c", "<<@1", "true=b", "2001-01-01=d"}},
		{"typed/quoted-key-overrides", "m: {\"1\": a, <<: {1: b}}\n",
			[]string{"1=a", "<<@1"},
			[]string{"1=a", "<<@1"}},
		// Below the mapping the merge is written in, keys are strings:
		// the first merged mapping to set "1" wins, as for any key.
		{"typed/nested-merges-as-strings", "m: {1: a, <<: [{1: b}, {1: c, <<: {1: d}}]}\n",
			[]string{"1=a", "<<@1", "1=b", "<<@1", "<<@1"},
			[]string{"1=a", "<<@1", "1=b", "<<@1", "<<@1"}},
		// A merged entry without a value leaves the key as it was.
		{"typed/merged-null-kept", "m: {1: a, <<: {1: }}\n",
			[]string{"1=a", "<<@1"},
			[]string{"1=a", "<<@1"}},
		{"typed/written-null-replaced", "m: {1: , <<: {1: b}}\n",
			[]string{"1=", "<<@1", "1=b"},
			[]string{"1=", "<<@1", "1=b"}},
		// A key without a value (~, null) merged sets nothing and keeps no
		// later key from being set: the decoder decodes no string from it.
		{"typed/merged-null-key-sets-nothing", "m: {\"~\": a, <<: {~: b}}\n",
			[]string{"~=a", "<<@1"},
			[]string{"~=a", "<<@1"}},
		{"typed/merged-null-key-then-string", "m: {<<: [{null: b}, {\"null\": c}]}\n",
			[]string{"<<@1", "<<@1", "null=c"},
			[]string{"<<@1", "<<@1", "null=c"}},
		{"none/not-a-mapping", "m: [a, b]\n", nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var doc yaml.Node
			if err := yaml.Unmarshal([]byte(tt.yaml), &doc); err != nil {
				t.Fatal(err)
			}
			m := mappingValueForTest(t, &doc, "m")
			for _, o := range []struct {
				ord  Order
				want []string
			}{{DocumentOrder, tt.document}, {DecoderOrder, tt.dec}} {
				var got []string
				budget := 100
				Entries(m, o.ord, &budget, func(k, v *yaml.Node) bool {
					switch {
					case k == nil && unalias(v).Kind == yaml.MappingNode:
						got = append(got, fmt.Sprintf("<<@%d", v.Line))
					case k == nil:
						got = append(got, fmt.Sprintf("!bad@%d", v.Line))
					default:
						got = append(got, k.Value+"="+v.Value)
					}
					return true
				})
				if diff := cmp.Diff(o.want, got); diff != "" {
					t.Errorf("Entries(m, %d) = %v, want %v (-want +got):\n%s", o.ord, got, o.want, diff)
				}
			}

			// What the decoder makes of m, when it accepts it.
			var decoded struct {
				M map[string]string `yaml:"m"`
			}
			if err := yaml.Unmarshal([]byte(tt.yaml), &decoded); err != nil {
				return
			}
			// In DecoderOrder, the value passed last for a key is the one
			// the decoder keeps; a key is passed twice only when the
			// decoder sets it twice (written as a number, boolean or time
			// next to the "<<", then merged).
			fromEntries := map[string]string{}
			firstTag := map[string]string{}
			budget := 100
			Entries(m, DecoderOrder, &budget, func(k, v *yaml.Node) bool {
				if k == nil {
					return true
				}
				if tag, dup := firstTag[k.Value]; dup && tag == "!!str" {
					t.Errorf("Entries passed %q twice", k.Value)
				} else if !dup {
					firstTag[k.Value] = k.ShortTag()
				}
				fromEntries[k.Value] = v.Value
				return true
			})
			if decoded.M == nil {
				decoded.M = map[string]string{}
			}
			if diff := cmp.Diff(decoded.M, fromEntries); diff != "" {
				t.Errorf("Entries(m) = %v, the decoder reads %v (-decoder +Entries):\n%s", fromEntries, decoded.M, diff)
			}
		})
	}
}

// TestEntriesStops: Entries stops when f returns false and when the budget
// of merged mappings runs out, and says so.
func TestEntriesStops(t *testing.T) {
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte("m: {<<: [{a: 1}, {b: 2}, {c: 3}], d: 4}\n"), &doc); err != nil {
		t.Fatal(err)
	}
	m := mappingValueForTest(t, &doc, "m")
	var got []string
	budget := 100
	done := Entries(m, DocumentOrder, &budget, func(k, v *yaml.Node) bool {
		if k == nil {
			return true
		}
		got = append(got, k.Value)
		return k.Value != "b"
	})
	if want := []string{"a", "b"}; done || !cmp.Equal(got, want) {
		t.Errorf("Entries stopped at b: passed %v and returned %t, want %v and false", got, done, want)
	}

	got = nil
	budget = 3 // two merged mappings, then out
	done = Entries(m, DocumentOrder, &budget, func(k, v *yaml.Node) bool {
		if k != nil {
			got = append(got, k.Value)
		}
		return true
	})
	if want := []string{"a", "b"}; done || !cmp.Equal(got, want) || budget > 0 {
		t.Errorf("Entries with a budget of 2 merges: passed %v and returned %t (budget left %d), want %v, false and 0", got, done, budget, want)
	}
}

// mappingValueForTest is the value of key in the top mapping of doc.
func mappingValueForTest(t *testing.T, doc *yaml.Node, key string) *yaml.Node {
	t.Helper()
	top := doc.Content[0]
	for i := 0; i+1 < len(top.Content); i += 2 {
		if top.Content[i].Value == key {
			return top.Content[i+1]
		}
	}
	t.Fatalf("no %q in the document", key)
	return nil
}
