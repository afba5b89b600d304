package yamlcheck

import "go.yaml.in/yaml/v3"

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
// Each value merged into a mapping is passed to f with a nil key, as
// written (an alias not followed), where it is written: a mapping or an
// alias to one, before the entries it adds, or a value the decoder refuses
// (any other, an alias to a list too: "<<: *list").
//
// budget bounds the work on documents of nested aliases: it is decremented
// for each mapping merged, and the walk stops when it reaches 0. Entries
// reports whether it passed every entry: false when f returned false or
// the budget ran out. Nothing is passed when n is not a mapping.
func Entries(n *yaml.Node, ord Order, budget *int, f func(k, v *yaml.Node) bool) bool {
	n = unalias(n)
	if n == nil || n.Kind != yaml.MappingNode {
		return true
	}
	return entries(n, ord, budget, map[string]bool{}, f)
}

// entries is Entries for mapping n merged below keys already set (seen),
// which it skips; it adds the keys it sets to seen.
func entries(n *yaml.Node, ord Order, budget *int, seen map[string]bool, f func(k, v *yaml.Node) bool) bool {
	own := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if k := n.Content[i]; !isMergeKey(k) && !seen[k.Value] {
			own[k.Value] = true
		}
	}
	for key := range own {
		seen[key] = true
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
				if own[k.Value] && !f(k, v) {
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
				if *budget--; *budget <= 0 {
					return false
				}
				if !f(nil, m) {
					return false
				}
				if um := unalias(m); um.Kind == yaml.MappingNode && !entries(um, ord, budget, seen, f) {
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
