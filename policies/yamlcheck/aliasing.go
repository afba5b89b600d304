package yamlcheck

import (
	"fmt"
	"strings"

	"go.yaml.in/yaml/v3"
)

// ExcessiveAliasing names where document n holds the aliasing for which
// go.yaml.in/yaml/v3 refuses it when err, its error decoding n, says only
// "document contains excessive aliasing" (no line, no field): a document
// of more than 1,000 values nearly all of which (99% up to 400,000
// values, 10% from 4 million) are copies made by aliases; a small
// "billion laughs" that Check walks within its budget. ok is false for
// any other err, and when n holds no alias.
//
// It counts the values of n as the decoder does, aliases followed (each
// alias and each value under it every time it is used; the keys of a
// mapping a merge is written in again), until the decoder's limit is
// crossed, and names the alias being followed there, outermost: the path
// and line where it is used and the line of its anchor. The decoder
// counts by the Go type it fills, which this does not know (a value it
// keeps whole as a yaml.Node, like a config file's x- values, counts one
// there and all its values here): the place and the figures are close to
// the decoder's, not always the same; should the count not cross the
// limit, the alias that copies the most values is named.
func ExcessiveAliasing(n *yaml.Node, err error) (p Problem, ok bool) {
	if err == nil || !strings.Contains(err.Error(), "document contains excessive aliasing") {
		return Problem{}, false
	}
	a := aliasCounter{copies: map[*yaml.Node]int{}}
	a.count("", n)
	if at := a.tripped; at != nil {
		anchor := unalias(at.node)
		return Problem{Path: at.path, Line: at.node.Line, Message: fmt.Sprintf(
			"excessive aliasing: when the YAML decoder reaches *%s here (the anchor at line %d), %d of the %d values it has read are copies made by aliases, more than it accepts: write the values out, or alias less",
			at.node.Value, anchor.Line, a.aliasCount, a.decodeCount)}, true
	}
	var at *aliasUse
	for _, u := range a.uses {
		if at == nil || a.copies[u.node] > a.copies[at.node] {
			at = u
		}
	}
	if at == nil {
		return Problem{}, false
	}
	anchor := unalias(at.node)
	return Problem{Path: at.path, Line: at.node.Line, Message: fmt.Sprintf(
		"excessive aliasing: the YAML decoder refuses a document whose values are nearly all copies made by aliases; *%s here (the anchor at line %d) makes the most, %d: write the values out, or alias less",
		at.node.Value, anchor.Line, a.copies[at.node])}, true
}

// aliasCountLimit bounds the work of ExcessiveAliasing, past the point
// where the decoder refuses any document (the ratio it allows falls to
// 10% at 4 million values).
const aliasCountLimit = 16 << 20

// aliasUse is an alias where it is used, outermost (not under another
// alias being followed).
type aliasUse struct {
	path string
	node *yaml.Node
}

type aliasCounter struct {
	decodeCount, aliasCount int
	depth                   int
	outer                   *aliasUse          // the outermost alias being followed
	uses                    []*aliasUse        // every outermost alias followed
	copies                  map[*yaml.Node]int // values counted under each outermost alias
	tripped                 *aliasUse
}

// allowedAliasRatio is go.yaml.in/yaml/v3's (decode.go).
func allowedAliasRatio(decodeCount int) float64 {
	const low, high = 400_000, 4_000_000
	switch {
	case decodeCount <= low:
		return 0.99
	case decodeCount >= high:
		return 0.10
	default:
		return 0.99 - 0.89*(float64(decodeCount-low)/float64(high-low))
	}
}

// count counts n at path as the decoder's unmarshal does; it reports
// false once the limit is crossed (or the work bound reached).
func (a *aliasCounter) count(path string, n *yaml.Node) bool {
	if n == nil || a.tripped != nil {
		return false
	}
	a.decodeCount++
	if a.depth > 0 {
		a.aliasCount++
		a.copies[a.outer.node]++
	}
	if a.aliasCount > 100 && a.decodeCount > 1000 && float64(a.aliasCount)/float64(a.decodeCount) > allowedAliasRatio(a.decodeCount) {
		a.tripped = a.outer
		return false
	}
	if a.decodeCount > aliasCountLimit {
		return false
	}
	join := func(key *yaml.Node) string {
		k := unalias(key)
		if k == nil || k.Kind != yaml.ScalarNode {
			return path
		}
		if path == "" {
			return k.Value
		}
		return path + "." + k.Value
	}
	switch n.Kind {
	case yaml.DocumentNode:
		if len(n.Content) == 1 {
			return a.count(path, n.Content[0])
		}
	case yaml.AliasNode:
		if a.depth == 0 {
			a.outer = &aliasUse{path: path, node: n}
			a.uses = append(a.uses, a.outer)
		}
		a.depth++
		ok := a.count(path, n.Alias)
		a.depth--
		return ok
	case yaml.MappingNode:
		var merges []*yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if isMergeKey(k) {
				merges = append(merges, v)
				continue
			}
			if !a.count(path, k) || !a.count(join(k), v) {
				return false
			}
		}
		// The decoder merges after the keys written, and reads those
		// keys again first.
		for j, m := range merges {
			if j == 0 {
				for i := 0; i+1 < len(n.Content); i += 2 {
					if !a.count(path, n.Content[i]) {
						return false
					}
				}
			}
			ms := []*yaml.Node{m}
			if m.Kind == yaml.SequenceNode {
				ms = m.Content
			}
			for _, mm := range ms {
				if !a.count(path, mm) {
					return false
				}
			}
		}
	case yaml.SequenceNode:
		for i, e := range n.Content {
			if !a.count(fmt.Sprintf("%s[%d]", path, i), e) {
				return false
			}
		}
	}
	return true
}
