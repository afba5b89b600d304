package yamlcheck

import (
	"reflect"

	"go.yaml.in/yaml/v3"
)

// Order is the order in which Entries passes the entries of a mapping.
type Order int

const (
	// DocumentOrder passes the entries of a merged mapping where its
	// "<<" is written: the order a reader meets them.
	DocumentOrder Order = iota
	// DecoderOrder passes the keys written in the mapping, then those of
	// the mappings merged into it: the order the decoder sets them.
	DecoderOrder
)

// Entries calls f, in order ord and until f returns false, with each key
// and value of mapping n (aliases followed) that go.yaml.in/yaml/v3
// decodes: the keys written in n and those of the mappings merged into it
// ("<<: *a" or "<<: [*a, *b]"), recursively, but for a merged key that a
// key written in n, or in an earlier merged mapping, overrides (the
// decoder never reads that value). A key written in n overrides a merged
// one wherever the "<<" is written. A key written twice in one mapping is
// passed each time (the decoder refuses it; Check reports it).
//
// Keys are compared as the decoder compares them for a struct or a
// string-keyed map (every mapping keytrail decodes): a key written in n
// as the value it decodes to on its own (1 is the number 1, "1" and 1 are
// not the same), a merged key as the string it sets. So in
// "{1: a, <<: {1: b}}" the merged 1 is not overridden: the decoder sets
// the key "1" to a, then to b, and both are passed (in DecoderOrder, the
// one the decoder keeps last); a merged value without one ("<<: {1: }")
// leaves a key already set as it was, and is not passed, nor is a merged
// key without one ("<<: {~: b}"), for which the decoder sets nothing.
//
// Each value merged into a mapping is passed to f with a nil key, as
// written (an alias not followed), where it is written: a mapping or an
// alias to one, before the entries it adds, or a value the decoder refuses
// (any other, an alias to a list too: "<<: *list").
//
// budget bounds the work on documents of nested aliases: it is decremented
// for each mapping merged, by the number of its entries (1 for an empty
// one), each time it is merged, and the walk stops when it reaches 0. Entries
// reports whether it passed every entry: false when f returned false or
// the budget ran out. Nothing is passed when n is not a mapping.
func Entries(n *yaml.Node, ord Order, budget *int, f func(k, v *yaml.Node) bool) bool {
	n = unalias(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return true
	}
	if !hasMergeKey(n) {
		for i := 0; i+1 < len(n.Content); i += 2 {
			if !f(n.Content[i], n.Content[i+1]) {
				return false
			}
		}
		return true
	}
	// What the decoder's merge remembers of n: every key written in it
	// ("<<" too), each decoded on its own.
	seen := map[any]bool{}
	set := map[string]bool{} // the map keys n's own entries set
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		seen[writtenKey(k)] = true
		if s, ok := mergedKey(k); ok && !isMergeKey(k) {
			set[s] = true
		}
	}
	return entries(n, ord, budget, true, seen, set, f)
}

// entries is Entries for mapping n, which is the mapping the merge is
// written in (top) or one merged below keys already set (seen, set), which
// it skips; it adds the keys it sets to seen and set.
func entries(n *yaml.Node, ord Order, budget *int, top bool, seen map[any]bool, set map[string]bool, f func(k, v *yaml.Node) bool) bool {
	own := make([]bool, len(n.Content)/2)
	var sets []string
	for i := 0; i+1 < len(n.Content); i += 2 {
		k := n.Content[i]
		switch s, ok := mergedKey(k); {
		case isMergeKey(k):
		case !top && isNull(k):
			// Merged, a key without a value (~, null) is no string: the
			// decoder sets nothing for it, nor skips a later key for it.
		case top || !ok:
			// top: every key written in n is set; !ok: a key no
			// string holds, passed as before for Check to judge.
			own[i/2] = true
		case seen[s]:
		case set[s] && isNull(n.Content[i+1]):
			// A value-less merged entry leaves a key that is set as
			// it was (the decoder keeps what n set).
			sets = append(sets, s)
		default:
			sets = append(sets, s)
			own[i/2] = true
		}
	}
	for _, s := range sets {
		seen[s], set[s] = true, true
	}
	// DocumentOrder: one pass over n. DecoderOrder: the keys written in
	// n, then the merges.
	for pass := range 2 {
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			merge := isMergeKey(k)
			if ord == DecoderOrder && merge != (pass == 1) {
				continue
			}
			if !merge {
				if own[i/2] && !f(k, v) {
					return false
				}
				continue
			}
			// A list written in place is merged mapping by mapping; an
			// alias must name a mapping (the decoder refuses an alias to
			// a list).
			merged := []*yaml.Node{v}
			if v.Kind == yaml.SequenceNode {
				merged = v.Content
			}
			for _, m := range merged {
				cost := 1
				if um := unalias(m); um.Kind == yaml.MappingNode && len(um.Content) > 2 {
					cost = len(um.Content) / 2 // its entries are each looked at
				}
				if *budget -= cost; *budget <= 0 {
					return false
				}
				if !f(nil, m) {
					return false
				}
				if um := unalias(m); um.Kind == yaml.MappingNode && !entries(um, ord, budget, false, seen, set, f) {
					return false
				}
			}
		}
		if ord == DocumentOrder {
			break
		}
	}
	return true
}

// hasMergeKey reports whether mapping n has a "<<" key.
func hasMergeKey(n *yaml.Node) bool {
	for i := 0; i < len(n.Content); i += 2 {
		if isMergeKey(n.Content[i]) {
			return true
		}
	}
	return false
}

// writtenKey is key k of a mapping that holds a merge, as the decoder
// remembers it to skip the merged keys it overrides: k decoded on its own
// (into an interface{}), so the number 1, the string "1" and the time
// 2001-01-01 each. A key that does not decode, or to a value that cannot
// be compared, is k itself, which no merged key equals.
func writtenKey(k *yaml.Node) any {
	if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!str" {
		return k.Value
	}
	var v any
	if err := k.Decode(&v); err != nil || (v != nil && !reflect.TypeOf(v).Comparable()) {
		return k
	}
	return v
}

// mergedKey is key k of a merged mapping as the decoder sets it in a
// struct or string-keyed map: the string it decodes into; false for a key
// the decoder sets nothing for (no value, a list or a mapping).
func mergedKey(k *yaml.Node) (string, bool) {
	if k.Kind == yaml.ScalarNode && k.ShortTag() == "!!str" {
		return k.Value, true
	}
	if isNull(k) || unalias(k).Kind != yaml.ScalarNode {
		return "", false
	}
	var s string
	if err := k.Decode(&s); err != nil {
		return "", false
	}
	return s, true
}

// isNull reports whether n (aliases followed) is a value-less scalar.
func isNull(n *yaml.Node) bool {
	n = unalias(n)
	return n != nil && n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// isMergeKey reports whether k is a merge key, as the decoder decides:
// "<<" written plain or tagged !!merge (a quoted "<<" is a string, and on
// any other key the decoder ignores the !!merge tag).
func isMergeKey(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.Value == "<<" && k.ShortTag() == "!!merge"
}

// misplacedMergeTag reports whether k is a key other than "<<" tagged
// !!merge, which the decoder reads as a plain key.
func misplacedMergeTag(k *yaml.Node) bool {
	return k.Kind == yaml.ScalarNode && k.ShortTag() == "!!merge" && !isMergeKey(k)
}

// unalias is n with aliases followed.
func unalias(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}
