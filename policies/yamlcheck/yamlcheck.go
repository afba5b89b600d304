// Package yamlcheck names, by field path and line and in the words of the
// file's author, every value of a YAML document that does not fit the Go
// type it decodes into: "audit.max_batch: must be a whole number, not 1.5
// (line 7)". The YAML decoder says "cannot unmarshal !!str into int64" with a
// line but no field, and it silently truncates a fraction written for an
// integer; config and policy loaders run Check for both.
//
// Check accepts what go.yaml.in/yaml/v3 accepts, value by value (each scalar
// is decoded by the library into a fresh value of its field's type), and in
// addition refuses fractions for integers, the !!merge tag on a key other
// than "<<" (which the decoder ignores) and a key without a value (~) in a
// mapping decoded into a struct, written or merged (which the decoder
// drops, value and all, even with KnownFields); with NullEntries, an entry of a
// list written without a value, which the decoder leaves out of the list.
// It follows aliases and merge keys
// as the decoder does: Entries, which the policy loader uses too, is the
// one walk of a mapping's entries, merged ones included.
package yamlcheck

import (
	"encoding"
	"errors"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Problem is one value that does not fit its field.
type Problem struct {
	Path    string // e.g. "audit.max_batch", "grants[2].ttl"; "" for the whole document
	Line    int
	Message string // e.g. "must be a whole number, not 1.5"
}

func (p Problem) Error() string {
	if p.Path == "" {
		return fmt.Sprintf("%s (line %d)", p.Message, p.Line)
	}
	return fmt.Sprintf("%s: %s (line %d)", p.Path, p.Message, p.Line)
}

// maxVisits bounds the work of one Check, shared by every walk it makes:
// each node visited, each key of a mapping and entry of a list, each
// entry of a mapping merged with "<<" (see Entries), aliases and merges
// counted each time they are followed, so a document of nested aliases or
// merges cannot make it run for ever (nor name the same problem billions
// of times). When it runs out, Check stops with one problem. Files with
// this many values are far beyond what a config or policy holds.
const maxVisits = 1 << 20

// MaxKeys is the most keys one mapping may hold: a mapping with more is a
// problem (naming it by path and line), and none of its keys is checked.
// The YAML decoder compares the keys of each mapping it decodes two by two
// (10,000 keys: 50 million comparisons); no mapping of a config or policy
// file comes near this many keys. Each mapping Check walks is counted:
// the document's top level, every one nested below it, every one merged
// with "<<", the top level's x- keys included (TopLevelExtensions).
const MaxKeys = 1024

// MaxKeyPairs is the most pairs of keys the YAML decoder may compare in one
// document: it compares the keys of each mapping two by two (n keys: n(n-1)/2
// pairs), each time it decodes the mapping, an alias to it or a merge (<<)
// of it. MaxKeys bounds one mapping, not their number: a policy of 300
// mappings of 1,024 keys (2.4 to 2.7 MB) cost the decoder 157 million
// comparisons (1.7 to 2.1 s). Check counts the pairs of every mapping it
// walks, as the decoder would compare them, and stops with one problem at
// the mapping where the count passes MaxKeyPairs: 4,194,304 pairs are 8
// mappings of MaxKeys keys, or 128 of 256, while a policy of 4 MiB (15,800
// workloads of a few fields and claims each) has some 190,000.
const MaxKeyPairs = 1 << 22

// Option asks Check for more than the values the decoder refuses.
type Option int

const (
	// NullEntries reports each entry of a list written without a value
	// ("- " with nothing after it, "~", "null", "[a, ~]", an alias to
	// one) that the decoder silently leaves out of the list: one of
	// strings, numbers, booleans or mappings decoded into a struct (it
	// keeps a nil one in a list of pointers, lists, maps or anything).
	// Decoded, such a list is shorter than written: a value the author
	// forgot is missing without a word, and every later entry has an index
	// one less than in the file, so a message naming "grants[2]" would
	// point at the wrong entry.
	NullEntries Option = 1 << iota
	// TopLevelExtensions skips each key of the document's top-level
	// mapping that starts with "x-" (an extension, as in Compose files;
	// the config file's), written or merged into it with "<<": the
	// decoder leaves such keys to an inline map. Anywhere else an x- key
	// is a field like any other.
	TopLevelExtensions
)

// Check walks n (a document or any node) against t, the type it decodes
// into, and returns every problem in document order. Unknown keys in a
// mapping decoded into a struct and keys written twice are problems too;
// opts add the problems they name.
func Check(n *yaml.Node, t reflect.Type, opts ...Option) []Problem {
	return check(n, t, maxVisits, opts...)
}

func check(n *yaml.Node, t reflect.Type, budget int, opts ...Option) []Problem {
	c := checker{budget: budget, max: budget, pairs: MaxKeyPairs}
	for _, o := range opts {
		c.opts |= o
	}
	c.walk("", n, t)
	return c.out
}

var (
	unmarshalerType     = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()
	textUnmarshalerType = reflect.TypeOf((*encoding.TextUnmarshaler)(nil)).Elem()
	nodeType            = reflect.TypeOf(yaml.Node{})
)

type checker struct {
	out         []Problem
	budget, max int
	pairs       int  // of keys the decoder may still compare (MaxKeyPairs)
	over        bool // the budget (or pairs) ran out, and the problem says so
	opts        Option
	suggested   int // unknown fields a suggestion was looked for (maxSuggestions)
}

// maxSuggestions is the most unknown fields of one Check that a field is
// suggested for ("did you mean ...?"): each costs an edit distance to every
// field of its mapping, and a document of many unknown keys, or one
// mapping of them merged many times, would cost that many times over
// (900 merges of 1,000 unknown keys: 3 to 6 times the check's time
// without suggestions). Those after it are named "unknown field" alone.
const maxSuggestions = 100

// spend takes cost from the budget and reports whether some is left. The
// first time none is, the check's last problem says so, at n.
func (c *checker) spend(path string, n *yaml.Node, cost int) bool {
	c.budget -= cost
	if c.budget > 0 {
		return true
	}
	if !c.over {
		c.over = true
		c.add(path, n, "too many values to check (more than %d, aliases and merges (<<) counted each time they are used)", c.max)
	}
	return false
}

// comparePairs takes the pairs of keys of mapping n, which the decoder
// compares two by two, from what the document may compare (MaxKeyPairs),
// and reports whether that is within it. The first time it is not, the
// check stops, as when its budget of values runs out, with one problem at
// n, naming its keys.
func (c *checker) comparePairs(path string, n *yaml.Node) bool {
	k := len(n.Content) / 2
	c.pairs -= k * (k - 1) / 2
	if c.pairs >= 0 {
		return true
	}
	if !c.over {
		c.over = true
		c.budget = 0 // nothing more is walked
		c.add(path, n, "too many keys to compare: the YAML decoder compares the keys of each mapping two by two (n keys: n(n-1)/2 pairs), and with the %d keys of this one the document's mappings have more than %d pairs (aliases and merges (<<) counted each time they are used)", k, MaxKeyPairs)
	}
	return false
}

func (c *checker) add(path string, n *yaml.Node, format string, args ...any) {
	c.out = append(c.out, Problem{Path: path, Line: n.Line, Message: fmt.Sprintf(format, args...)})
}

func (c *checker) walk(path string, n *yaml.Node, t reflect.Type) {
	if !c.spend(path, n, 1) {
		return
	}
	if n.Kind == 0 {
		return // an empty document
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		c.walk(path, n.Alias, t)
		return
	}
	if n.Kind == yaml.DocumentNode {
		for _, d := range n.Content {
			c.walk(path, d, t)
		}
		return
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return // the zero value, for every type
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			c.add(path, n, "%s", decodeMessage(err))
		}
		return
	}
	if reflect.PointerTo(t).Implements(textUnmarshalerType) {
		// time.Time and the like: one string. The decoder reads a
		// mapping into such a struct without a word (its fields are
		// unexported: "when: {}" is the zero time, "when: {a: 1}" an
		// unknown field of time.Time) and names a list by Go type: a
		// list or mapping is named here, in the file's words.
		if n.Kind == yaml.MappingNode || n.Kind == yaml.SequenceNode {
			c.add(path, n, "must be %s, not %s", textKind(t), Got(n))
			return
		}
		c.scalar(path, n, t)
		return
	}
	join := func(key string) string {
		if path == "" {
			return key
		}
		return path + "." + key
	}
	switch t.Kind() {
	case reflect.Interface:
		return // takes anything
	case reflect.Slice, reflect.Array:
		if n.Kind != yaml.SequenceNode {
			c.add(path, n, "must be a list, not %s", Got(n))
			return
		}
		// Each entry, walked or named (a null one), is counted: a list
		// aliased many times is checked each time.
		if !c.spend(path, n, len(n.Content)) {
			return
		}
		for i, e := range n.Content {
			if c.over {
				return
			}
			ep := path + "[" + strconv.Itoa(i) + "]"
			if c.opts&NullEntries != 0 && isNull(e) && droppedWhenNull(t.Elem()) {
				if t.Elem().Kind() == reflect.String {
					c.add(ep, e, `no value: it would be left out of the list (not read as ""), moving later entries up; write its value (quoted "" for an empty one), or remove the entry`)
				} else {
					c.add(ep, e, "no value: it would be left out of the list, moving later entries up; write the entry, or remove it")
				}
				continue
			}
			c.walk(ep, e, t.Elem())
		}
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			c.add(path, n, "must be a mapping, not %s", Got(n))
			return
		}
		if !c.duplicates(path, n) {
			return
		}
		c.mapping(path, n, false, func(k, v *yaml.Node) {
			// A key written as an alias is named by the key it names.
			kp := path + "[" + strconv.Quote(unalias(k).Value) + "]"
			if misplacedMergeTag(k) {
				c.add(kp, k, "%s", mergeTagMessage)
				return
			}
			c.walk(kp, k, t.Key())
			c.walk(kp, v, t.Elem())
		})
	case reflect.Struct:
		if t == nodeType {
			return // takes anything
		}
		if n.Kind != yaml.MappingNode {
			c.add(path, n, "must be a mapping, not %s", Got(n))
			return
		}
		if !c.duplicates(path, n) {
			return
		}
		c.mapping(path, n, true, func(k, v *yaml.Node) {
			if isNull(k) {
				c.nullKey(path, k)
				return
			}
			// A key written as an alias is the key it names (the
			// decoder's), not the anchor's name: the field it sets, and
			// the path of its value. (An unknown one is named as
			// written, *k by k, as before.)
			uk := unalias(k)
			if path == "" && c.opts&TopLevelExtensions != 0 && uk.Kind == yaml.ScalarNode && uk.ShortTag() == "!!str" && strings.HasPrefix(uk.Value, "x-") {
				return
			}
			if misplacedMergeTag(k) {
				c.add(join(k.Value), k, "%s", mergeTagMessage)
				return
			}
			ft, ok := field(t, uk.Value)
			if !ok {
				// Suggested only for a key written out: one written
				// as an alias is named by the alias, not by the key
				// the suggestion would be near.
				if c.suggested < maxSuggestions && k == uk {
					c.suggested++
					if s := suggest(t, uk.Value); s != "" {
						c.add(join(k.Value), k, "unknown field, did you mean %s?", s)
						return
					}
				}
				c.add(join(k.Value), k, "unknown field")
				return
			}
			c.walk(join(uk.Value), v, ft)
		})
	default:
		c.scalar(path, n, t)
	}
}

// droppedWhenNull reports whether the decoder leaves a null entry of a
// list of t out of the list: it keeps one (as nil) only for the kinds
// that have a nil value.
func droppedWhenNull(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Interface, reflect.Pointer, reflect.Map, reflect.Slice:
		return false
	}
	return true
}

// mergeTagMessage is the problem of a key other than "<<" tagged !!merge:
// the decoder ignores the tag there, so whoever wrote it meant a merge
// that does not happen.
const mergeTagMessage = `!!merge makes a merge key only of "<<": write "<<: ..." to merge a mapping, or remove the tag`

// nullKeyMessage is the problem of a key written without a value in a
// mapping of fixed fields.
const nullKeyMessage = `key without a value: the YAML decoder drops the entry, so it sets no field; write the field's name, or remove the entry`

// nullKey reports k, a key without a value (~, null, "? " with nothing
// after it, an alias to one) in the mapping of fixed fields at path: the
// decoder decodes no field name from it and drops the entry silently,
// value and all, even where unknown fields are refused. It is named as an
// unknown field is, by the key as written (the mapping's path for an
// empty one).
func (c *checker) nullKey(path string, k *yaml.Node) {
	p := path
	if name := unalias(k).Value; name != "" {
		p = name
		if path != "" {
			p = path + "." + name
		}
	}
	c.add(p, k, "%s", nullKeyMessage)
}

// mapping calls f for each key and value of n that the decoder uses, in
// document order (see Entries), and reports each merged value that the
// decoder refuses, at the line of the merge, and each key written twice in
// a merged mapping. With fields (n is decoded into a struct), each key
// without a value in a merged mapping is reported too (nullKey): Entries
// passes none, as the decoder sets nothing for it. The merges spend the
// check's budget (see Entries); mapping stops when it runs out.
func (c *checker) mapping(path string, n *yaml.Node, fields bool, f func(k, v *yaml.Node)) {
	merged := map[*yaml.Node]bool{} // a mapping merged twice is named once
	done := Entries(n, DocumentOrder, &c.budget, func(k, v *yaml.Node) bool {
		switch {
		case k != nil:
		case unalias(v).Kind == yaml.MappingNode:
			m := unalias(v)
			if merged[m] {
				// Named once, but the decoder compares its keys
				// each time it merges it.
				return c.comparePairs(path, m)
			}
			merged[m] = true
			if !c.duplicates(path, m) { // the decoder refuses them there too
				return false
			}
			if fields {
				for i := 0; i+1 < len(m.Content); i += 2 {
					if isNull(m.Content[i]) {
						c.nullKey(path, m.Content[i])
					}
				}
			}
			return true
		case v.Kind == yaml.AliasNode && unalias(v).Kind == yaml.SequenceNode:
			c.add(path, v, `a merge (<<) takes an alias to a mapping, not to a list: write "<<: [*a, *b]", an alias per mapping`)
			return true
		default:
			c.add(path, v, "a merge (<<) takes a mapping or a list of mappings")
			return true
		}
		f(k, v)
		return !c.over
	})
	if !done {
		c.spend(path, n, 0) // the budget ran out: named once
	}
}

// duplicates reports a key written twice in one mapping ("<<" included),
// as the decoder does: each key written again, once, by the line of its
// first. Its keys are counted in the budget (they are walked or named
// next), and its pairs of keys in the document's (comparePairs); it
// reports whether some of both is left. A mapping of more than MaxKeys
// keys is a problem, and duplicates reports false for it (none of its
// keys is looked at).
func (c *checker) duplicates(path string, n *yaml.Node) bool {
	if k := len(n.Content) / 2; k > MaxKeys {
		c.add(path, n, "%s", tooManyKeys(k))
		return false
	}
	if !c.spend(path, n, len(n.Content)/2) || !c.comparePairs(path, n) {
		return false
	}
	type key struct {
		kind  yaml.Kind
		value string
	}
	first := make(map[key]*yaml.Node, len(n.Content)/2)
	for i := 0; i < len(n.Content); i += 2 {
		b := n.Content[i]
		a, ok := first[key{b.Kind, b.Value}] // "<<" too, as the decoder
		if !ok {
			first[key{b.Kind, b.Value}] = b
			continue
		}
		p := a.Value
		if path != "" {
			p = path + "." + a.Value
		}
		c.add(p, b, "written twice (first at line %d)", a.Line)
	}
	return true
}

// tooManyKeys is the problem of a mapping of k keys, more than MaxKeys.
func tooManyKeys(k int) string {
	return fmt.Sprintf("a mapping of %d keys: at most %d are allowed in one mapping", k, MaxKeys)
}

// field finds the type of the struct field that key names, as the decoder
// does: the yaml tag's name, else the lowercased field name; inline structs
// flattened.
func field(t reflect.Type, key string) (reflect.Type, bool) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		if !f.IsExported() || tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(","+opts+",", ",inline,") {
			if ft, ok := field(f.Type, key); ok {
				return ft, true
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if name == key {
			return f.Type, true
		}
	}
	return nil, false
}

// fieldNames is the names the decoder knows for the fields of struct t,
// inline structs flattened, in field order (see field).
func fieldNames(t reflect.Type, out []string) []string {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		if !f.IsExported() || tag == "-" {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if strings.Contains(","+opts+",", ",inline,") {
			if ft := f.Type; ft.Kind() == reflect.Struct {
				out = fieldNames(ft, out)
			}
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out = append(out, name)
	}
	return out
}

// suggest is the field of struct t that key, an unknown field, was most
// likely meant to be ("sesion_claim": session_claim): one that differs
// only in case, else the one nearest by edit distance (editDistance), if
// that is at most 2 (and at most a third of key's length, so a short key is not taken
// for any short field: "nope" is not "name"), and no other is as near. "" if none is.
func suggest(t reflect.Type, key string) string {
	names := fieldNames(t, nil)
	for _, n := range names {
		if strings.EqualFold(n, key) {
			return n
		}
	}
	best, bestD, tie := "", 3, false
	for _, n := range names {
		d := editDistance(key, n, bestD)
		switch {
		case d < bestD:
			best, bestD, tie = n, d, false
		case d == bestD && best != "":
			tie = true
		}
	}
	if best == "" || tie || 3*bestD > len([]rune(key)) {
		return ""
	}
	return best
}

// editDistance is the edit distance between a and b (runes): Levenshtein's
// (a letter inserted, deleted or replaced), with two neighbours swapped
// ("nmae": name) one edit too, or max+1 when the lengths alone put it
// over max: a key far longer or shorter than every field name costs
// nothing to reject.
func editDistance(a, b string, max int) int {
	ra, rb := []rune(a), []rune(b)
	if d := len(ra) - len(rb); d > max || -d > max {
		return max + 1
	}
	// Rows i-2, i-1 and i of the distances between ra[:i] and rb[:j].
	pp := make([]int, len(rb)+1)
	prev := make([]int, len(rb)+1)
	cur := make([]int, len(rb)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(ra); i++ {
		cur[0] = i
		for j := 1; j <= len(rb); j++ {
			sub := prev[j-1]
			if ra[i-1] != rb[j-1] {
				sub++
			}
			cur[j] = min(sub, prev[j]+1, cur[j-1]+1)
			if i > 1 && j > 1 && ra[i-1] == rb[j-2] && ra[i-2] == rb[j-1] {
				cur[j] = min(cur[j], pp[j-2]+1)
			}
		}
		pp, prev, cur = prev, cur, pp
	}
	return prev[len(rb)]
}

// scalar checks a value for a field of a scalar kind: the decoder decides
// whether it fits, and a fraction never fits an integer.
func (c *checker) scalar(path string, n *yaml.Node, t reflect.Type) {
	var err error
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr,
		reflect.Float32, reflect.Float64, reflect.Bool, reflect.String:
		if n.Kind != yaml.ScalarNode {
			// The decoder never reads a list or mapping into these
			// (asking it would cost a comparison of every two keys).
			err = errNotScalar
			break
		}
		if t.Kind() == reflect.String && plainString(n) {
			break // the decoder takes it as written
		}
		err = n.Decode(reflect.New(t).Interface())
	default:
		// The decoder compares the keys of a mapping two by two
		// before anything else: that is counted.
		if k := len(n.Content) / 2; n.Kind == yaml.MappingNode && !c.spend(path, n, k*(k-1)/2) {
			return
		}
		err = n.Decode(reflect.New(t).Interface())
	}
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		tag := n.ShortTag()
		fraction := false
		if tag == "!!float" {
			// 1e3 and 2.0 are whole; 1.5, 15e-1, .inf and .nan are not.
			f, perr := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64)
			fraction = perr != nil || f != math.Trunc(f)
		}
		switch {
		case err == nil && !fraction:
		case !fraction && (tag == "!!int" || tag == "!!float"):
			c.add(path, n, "must be a whole number from %s to %s, not %s", minOf(t), maxOf(t), n.Value)
		default:
			c.add(path, n, "must be a whole number, not %s", Got(n))
		}
	case reflect.Float32, reflect.Float64:
		if err != nil {
			c.add(path, n, "must be a number, not %s", Got(n))
		}
	case reflect.Bool:
		if err != nil {
			c.add(path, n, "must be true or false, not %s", Got(n))
		}
	case reflect.String:
		if err != nil {
			c.add(path, n, "must be a single value, not %s", Got(n))
		}
	default:
		if err != nil {
			c.add(path, n, "%s", decodeMessage(err))
		}
	}
}

// plainString reports whether scalar n is one the decoder sets a string to
// as written, without a decoder to ask (the most common value of a file,
// asked of a new decoder each: a third of Check's time): one written
// without a tag, whose tag is the one the parser resolved from its text,
// which the decoder resolves it to again. A tagged one ("!!int x",
// "!!binary ...") may be refused, and is asked.
func plainString(n *yaml.Node) bool {
	if n.Style&yaml.TaggedStyle != 0 {
		return false
	}
	switch n.ShortTag() {
	case "!!str", "!!int", "!!float", "!!bool", "!!timestamp", "!!merge":
		return true
	}
	return false
}

var timeType = reflect.TypeOf(time.Time{})

// textKind names what a field of t, a type read from one string
// (encoding.TextUnmarshaler), holds: "must be <textKind>, not a mapping".
func textKind(t reflect.Type) string {
	if t == timeType {
		return "a time like 2026-01-02T15:04:05Z"
	}
	return "a single value"
}

// errNotScalar stands for the decoder's error for a list or mapping given
// to a field of a scalar kind.
var errNotScalar = errors.New("not a single value")

// Got describes what n holds, for "must be X, not <got>": "a list", "a
// mapping" (an alias is followed), or the value itself, quoted unless a
// number or a boolean. Decoders' own UnmarshalYAML methods use it too, so
// every such message names what it found the same way.
func Got(n *yaml.Node) string {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.MappingNode:
		return "a mapping"
	}
	switch n.ShortTag() {
	case "!!int", "!!float", "!!bool":
		return n.Value
	}
	return Quote(n.Value)
}

// decodeMessage is an error of the decoder or of an UnmarshalYAML method
// without the "yaml: " and "line N: " its text may start with (Problem
// carries the line).
func decodeMessage(err error) string {
	var msgs []string
	var te *yaml.TypeError
	if errors.As(err, &te) {
		msgs = te.Errors
	} else {
		msgs = []string{err.Error()}
	}
	for i, m := range msgs {
		m = strings.TrimPrefix(m, "yaml: ")
		if rest, ok := strings.CutPrefix(m, "line "); ok {
			if _, after, ok := strings.Cut(rest, ": "); ok {
				m = after
			}
		}
		msgs[i] = m
	}
	return strings.Join(msgs, "; ")
}

func minOf(t reflect.Type) string {
	if t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uintptr {
		return "0"
	}
	return strconv.FormatInt(-1<<(t.Bits()-1), 10)
}

func maxOf(t reflect.Type) string {
	if t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uintptr {
		return strconv.FormatUint(math.MaxUint64>>(64-t.Bits()), 10)
	}
	return strconv.FormatInt(1<<(t.Bits()-1)-1, 10)
}
