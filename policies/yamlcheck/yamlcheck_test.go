package yamlcheck

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"go.yaml.in/yaml/v3"

	"github.com/keytrail/keytrail/policies/internal/yamltest"
)

type sub struct {
	N    int      `yaml:"n"`
	Wait duration `yaml:"wait"`
}

type doc struct {
	N        int64          `yaml:"n"`
	Small    int8           `yaml:"small"`
	U        uint16         `yaml:"u"`
	On       bool           `yaml:"on"`
	Rate     float64        `yaml:"rate"`
	Name     string         `yaml:"name"`
	List     []int          `yaml:"list"`
	Counts   map[string]int `yaml:"counts"`
	Sub      *sub           `yaml:"sub"`
	Subs     []sub          `yaml:"subs"`
	Names    []string       `yaml:"names"`
	Ptrs     []*sub         `yaml:"ptrs"`
	Lists    [][]string     `yaml:"lists"`
	Any      any            `yaml:"any"`
	When     time.Time      `yaml:"when"`
	Untagged string
	Hidden   string `yaml:"-"`
}

// duration is a type with its own UnmarshalYAML, as config and policy
// files have.
type duration time.Duration

func (d *duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: must be a duration like 30s, not %q", n.Line, n.Value)
	}
	*d = duration(v)
	return nil
}

func TestEditDistance(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		want int
	}{
		{"session_claim", "sesion_claim", 1},
		{"ttl", "tll", 1},
		{"name", "nmae", 1},
		{"nope", "name", 2},
		{"abc", "ca", 3},
		{"", "abc", 3},
		{"naïve", "naive", 1},
		{"a", "abcdef", 3}, // more than max: max+1
	} {
		if got := editDistance(tt.a, tt.b, 2); got != tt.want {
			t.Errorf("editDistance(%q, %q, 2) = %d, want %d", tt.a, tt.b, got, tt.want)
		}
	}
}

func checkString(t testing.TB, src string) []Problem {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(src), &n); err != nil {
		t.Fatalf("yaml.Unmarshal(%q) = %v", src, err)
	}
	return Check(&n, reflect.TypeOf(doc{}))
}

var tests = []struct {
	name string
	yaml string
	want []Problem
}{
	{"ok/empty", "", nil},
	{"ok/whole-numbers", "n: 3\nsmall: -128\nu: 65535\nlist: [1, 0x10, 1e3, 2.0, 1_000]\ncounts: {a: 1}\n", nil},
	{"ok/every-kind", "on: yes\nrate: 1.5\nname: 12\nsub: {n: 1, wait: 5s}\nany: {x: [1]}\nwhen: 2026-01-02T03:04:05Z\nuntagged: x\n", nil},
	{"ok/nulls", "n:\non: ~\nlist: null\nsub:\nsubs: [~]\nwhen:\n", nil},
	{"fail/fraction", "n: 1.5\n", []Problem{{"n", 1, "must be a whole number, not 1.5"}}},
	{"fail/fraction-exponent", "n: 15e-1\n", []Problem{{"n", 1, "must be a whole number, not 15e-1"}}},
	{"fail/infinity", "n: .inf\n", []Problem{{"n", 1, "must be a whole number, not .inf"}}},
	{"fail/word-for-integer", "n: abc\n", []Problem{{"n", 1, `must be a whole number, not "abc"`}}},
	{"fail/quoted-integer", "n: '3'\n", []Problem{{"n", 1, `must be a whole number, not "3"`}}},
	{"fail/out-of-range", "small: 300\nu: -1\n", []Problem{
		{"small", 1, "must be a whole number from -128 to 127, not 300"},
		{"u", 2, "must be a whole number from 0 to 65535, not -1"}}},
	{"fail/not-a-bool", "on: maybe\n", []Problem{{"on", 1, `must be true or false, not "maybe"`}}},
	{"fail/not-a-number", "rate: fast\n", []Problem{{"rate", 1, `must be a number, not "fast"`}}},
	{"fail/list-for-string", "name: [a]\n", []Problem{{"name", 1, "must be a single value, not a list"}}},
	// A mapping or list given to a time.Time (a type read from one
	// string): before, a mapping was no problem at all (the decoder reads
	// "{}" as the zero time and any other into the unexported fields of
	// time.Time, refused later, by the strict decoder, as "field a not
	// found in type time.Time"), and a list was named in the decoder's
	// words ("cannot unmarshal !!seq into time.Time").
	{"fail/mapping-for-time", "when: {a: 1}\n", []Problem{{"when", 1, "must be a time like 2026-01-02T15:04:05Z, not a mapping"}}},
	{"fail/empty-mapping-for-time", "when: {}\n", []Problem{{"when", 1, "must be a time like 2026-01-02T15:04:05Z, not a mapping"}}},
	{"fail/list-for-time", "subs: [{n: 1}]\nwhen:\n  - 2026-01-02T03:04:05Z\n", []Problem{{"when", 3, "must be a time like 2026-01-02T15:04:05Z, not a list"}}},
	{"fail/alias-to-mapping-for-time", "sub: &s {n: 1}\nwhen: *s\n", []Problem{{"when", 1, "must be a time like 2026-01-02T15:04:05Z, not a mapping"}}},
	{"fail/word-for-list", "list: 1\n", []Problem{{"list", 1, "must be a list, not 1"}}},
	{"fail/word-for-mapping", "sub: x\ncounts: [1]\n", []Problem{
		{"sub", 1, `must be a mapping, not "x"`},
		{"counts", 2, "must be a mapping, not a list"}}},
	{"fail/unknown-field", "sub:\n  m: 1\nhidden: x\n", []Problem{
		{"sub.m", 2, "unknown field"},
		{"hidden", 3, "unknown field"}}},
	// An unknown field near a known one of its mapping names it: a field
	// of the same letters in other case, or one at most 2 edits away (no
	// more than a third of the key; two neighbours swapped are one), if no
	// other is as near. A short key is not taken for any short field.
	{"fail/unknown-field-suggested", "nmae: x\nsub: {wiat: 1s}\nSmall: 1\nsubs: [{N: 1}]\nnope: 1\nxy: 1\nuntaged: x\n", []Problem{
		{"nmae", 1, "unknown field, did you mean name?"},
		{"sub.wiat", 2, "unknown field, did you mean wait?"},
		{"Small", 3, "unknown field, did you mean small?"},
		{"subs[0].N", 4, "unknown field, did you mean n?"},
		{"nope", 5, "unknown field"},
		{"xy", 6, "unknown field"},
		{"untaged", 7, "unknown field, did you mean untagged?"}}},
	// A key without a value names no field: the decoder drops the entry,
	// value and all, even where it refuses unknown fields. Written or
	// merged, at the top level or below, as an alias too; a merged mapping
	// merged twice is named once. A map's key is its loader's to judge.
	{"fail/null-key", "~: 1\nnull: {n: x}\n? \nsub: {n: 1, ~: 2}\nsubs:\n  - {<<: [&m {~: 3, n: 1}, *m]}\n  - {\"~\": 4}\ncounts: {~: 1}\n", []Problem{
		{"~", 1, nullKeyMessage},
		{"null", 2, nullKeyMessage},
		{"", 3, nullKeyMessage},
		{"sub.~", 4, nullKeyMessage},
		{"subs[0].~", 6, nullKeyMessage},
		{"subs[1].~", 7, "unknown field"}}},
	{"fail/null-key-alias", "n: &z ~\nsub: {*z : 1}\n", []Problem{{"sub.~", 2, nullKeyMessage}}},
	// A key written as an alias is the key it names, as the decoder reads
	// it (sub.n is set to 1 here), not the anchor's name: before, the
	// anchor's name was looked up as the field ("sub.k: unknown field"),
	// and a value's path named the anchor. An unknown one is named as
	// written (*a by a; see TestTopLevelExtensionsAliasKey).
	{"ok/alias-key", "name: &k n\nsub: {*k : 1}\n", nil},
	{"fail/alias-key", "name: &k n\nsub: {*k : 1.5}\ncounts: {*k : x}\nsubs: [{&a m: 1}, {*a : 2}]\n", []Problem{
		{"sub.n", 2, "must be a whole number, not 1.5"},
		{`counts["n"]`, 3, `must be a whole number, not "x"`},
		{"subs[0].m", 4, "unknown field"},
		{"subs[1].a", 4, "unknown field"}}},
	{"fail/written-twice", "n: 1\nsub: {n: 1}\nn: 2\n", []Problem{{"n", 3, "written twice (first at line 1)"}}},
	// The decoder refuses "<<" written twice, and a key written twice in
	// a merged mapping, as any key written twice.
	{"fail/merge-written-twice", "sub: {<<: {n: 1}, wait: 1s, <<: {n: 2}}\n", []Problem{{"sub.<<", 1, "written twice (first at line 1)"}}},
	{"fail/written-twice-in-merged", "sub:\n  <<: {n: 1,\n    n: 2}\n", []Problem{{"sub.n", 3, "written twice (first at line 2)"}}},
	{"fail/own-unmarshaler", "sub: {wait: soon}\n", []Problem{{"sub.wait", 1, `must be a duration like 30s, not "soon"`}}},
	{"fail/paths-in-lists-and-maps", "subs:\n  - {n: 1}\n  - {n: 0.5}\ncounts: {a: 1, b: x}\nlist: [1, 2.5]\n", []Problem{
		{"subs[1].n", 3, "must be a whole number, not 0.5"},
		{`counts["b"]`, 4, `must be a whole number, not "x"`},
		{"list[1]", 5, "must be a whole number, not 2.5"}}},
	// A value shared through an alias or merge key is wrong in every place
	// it is used.
	{"fail/merged-and-aliased", "subs:\n  - &s {n: 2.5}\n  - {<<: *s, wait: 1s}\n  - *s\n", []Problem{
		{"subs[0].n", 2, "must be a whole number, not 2.5"},
		{"subs[1].n", 2, "must be a whole number, not 2.5"},
		{"subs[2].n", 2, "must be a whole number, not 2.5"}}},
	// The decoder never reads a merged value that a key written next to
	// the "<<" (or in an earlier merged mapping) overrides.
	{"ok/merged-value-overridden", "sub: {<<: [{n: abc}, {n: x, wait: soon}], n: 2, wait: 1s}\nsubs:\n  - {n: 1, <<: {n: 1.5}}\n  - {<<: [{n: 3}, {n: 0.5}]}\n", nil},
	// The decoder refuses a merged alias to anything but a mapping: the
	// problem is where the merge is written.
	{"fail/merge-alias-to-list", "subs: &x [{n: 1}]\nsub: {<<: *x}\n", []Problem{
		{"sub", 2, `a merge (<<) takes an alias to a mapping, not to a list: write "<<: [*a, *b]", an alias per mapping`}}},
	{"fail/merge-alias-to-scalar", "name: &x a\nsub:\n  <<: [{n: 1}, *x]\n", []Problem{
		{"sub", 3, "a merge (<<) takes a mapping or a list of mappings"}}},
	{"fail/merged-value-not-overridden", "sub: {<<: [{n: 2}, {n: x, wait: soon}]}\n", []Problem{
		{"sub.wait", 1, `must be a duration like 30s, not "soon"`}}},
	// The decoder reads a key other than "<<" tagged !!merge as a plain
	// key: whoever wrote the tag meant a merge that does not happen.
	{"ok/merge-tag-on-merge-key", "sub: {!!merge <<: {n: 1}}\n", nil},
	{"fail/merge-tag-on-other-key", "sub: {!!merge n: 1, <<: {!!merge wait: 1s}}\ncounts: {!!merge a: {b: 1}}\n", []Problem{
		{"sub.n", 1, mergeTagMessage},
		{"sub.wait", 1, mergeTagMessage},
		{`counts["a"]`, 2, mergeTagMessage}}},
	{"fail/every-problem-at-once", "n: x\non: 2\nsub: {n: 1.5, wait: never, extra: 1}\n", []Problem{
		{"n", 1, `must be a whole number, not "x"`},
		{"on", 2, "must be true or false, not 2"},
		{"sub.n", 3, "must be a whole number, not 1.5"},
		{"sub.wait", 3, `must be a duration like 30s, not "never"`},
		{"sub.extra", 3, "unknown field"}}},
}

func TestCheck(t *testing.T) {
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := checkString(t, tt.yaml)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Check(%q) = %v, want %v (-want +got):\n%s", tt.yaml, got, tt.want, diff)
			}
		})
	}
}

// TestCheckNullEntries: with NullEntries, an entry of a list written
// without a value is a problem naming its place in the file and its line
// wherever the decoder leaves it out (so the decoded list is shorter than
// the written one), and only there; without the option it is not one.
func TestCheckNullEntries(t *testing.T) {
	const src = `sub: {n: &s ~}
names:
  - a
  -
  - ~
  - null
  - ""
  - *s
list: [1, ~, 3]
subs: [{n: 1}, ~]
n: 1
ptrs: [~, {n: 1}]
lists: [[a, ~], ~]
any: [~]
counts: {a: ~}
`
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(src), &n); err != nil {
		t.Fatal(err)
	}
	const str = `no value: it would be left out of the list (not read as ""), moving later entries up; write its value (quoted "" for an empty one), or remove the entry`
	const other = "no value: it would be left out of the list, moving later entries up; write the entry, or remove it"
	want := []Problem{
		{"names[1]", 4, str},
		{"names[2]", 5, str},
		{"names[3]", 6, str},
		{"names[5]", 8, str},
		{"list[1]", 9, other},
		{"subs[1]", 10, other},
		{"lists[0][1]", 13, str},
	}
	if diff := cmp.Diff(want, Check(&n, reflect.TypeOf(doc{}), NullEntries)); diff != "" {
		t.Errorf("Check(NullEntries) (-want +got):\n%s", diff)
	}
	if got := Check(&n, reflect.TypeOf(doc{})); got != nil {
		t.Errorf("Check() = %v, want nothing: null entries are problems only with NullEntries", got)
	}
	// What the option reports is what the decoder drops: the decoded lists
	// are shorter by as many entries, the others as long as written.
	var d doc
	if err := n.Decode(&d); err != nil {
		t.Fatal(err)
	}
	lens := []int{len(d.Names), len(d.List), len(d.Subs), len(d.Ptrs), len(d.Lists), len(d.Lists[0]), len(d.Any.([]any))}
	if diff := cmp.Diff([]int{2, 2, 1, 2, 2, 1, 1}, lens); diff != "" {
		t.Errorf("decoded lengths (names, list, subs, ptrs, lists, lists[0], any) (-want +got):\n%s", diff)
	}
}

func TestProblemError(t *testing.T) {
	p := Problem{Path: "audit.max_batch", Line: 7, Message: "must be a whole number, not 1.5"}
	if got, want := p.Error(), "audit.max_batch: must be a whole number, not 1.5 (line 7)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
}

// TestCheckBoundsAliases: nested aliases that expand to billions of values
// stop the walk with one problem instead of running for ever.
func TestCheckBoundsAliases(t *testing.T) {
	src := "a: &a [~, ~, ~, ~, ~, ~, ~, ~, ~, ~]\n"
	prev := "a"
	for _, name := range []string{"b", "c", "d", "e", "f", "g", "h", "i"} {
		src += fmt.Sprintf("%s: &%s [*%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s, *%s]\n", name, name, prev, prev, prev, prev, prev, prev, prev, prev, prev, prev)
		prev = name
	}
	src += "list: *i\n"
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(src), &n); err != nil {
		t.Fatal(err)
	}
	type deep []deep
	got := check(&n, reflect.TypeOf(map[string]deep{}), 10_000)
	if len(got) != 1 || !strings.HasPrefix(got[0].Message, "too many values") {
		t.Errorf("Check(billion laughs) = %v, want one \"too many values\" problem", got)
	}
}

// FuzzCheck: Check accepts what the strict decoder accepts, but for
// fractions written for integers, the !!merge tag on a key other than
// "<<", a field key without a value and an empty mapping for a time, and
// finds a problem wherever the decoder fails.
func FuzzCheck(f *testing.F) {
	for _, tt := range tests {
		f.Add(tt.yaml)
	}
	f.Fuzz(func(t *testing.T, src string) {
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(src), &n); err != nil {
			return
		}
		dec := yaml.NewDecoder(bytes.NewReader([]byte(src)))
		dec.KnownFields(true)
		var d doc
		err := dec.Decode(&d)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		if err != nil && strings.Contains(err.Error(), "excessive aliasing") {
			if p, ok := ExcessiveAliasing(&n, err); !ok || p.Line == 0 {
				t.Fatalf("decoding %q: %v, but ExcessiveAliasing = %v, %v", src, err, p, ok)
			}
			return
		}
		got := Check(&n, reflect.TypeOf(doc{}))
		if err != nil && len(got) == 0 {
			t.Fatalf("decoding %q failed (%v) but Check found nothing", src, err)
		}
		if err == nil {
			for _, p := range got {
				// The decoder reads an empty mapping as the zero time.
				if !strings.HasPrefix(p.Message, "must be a whole number, not ") && p.Message != mergeTagMessage && p.Message != nullKeyMessage && p.Message != "must be a time like 2026-01-02T15:04:05Z, not a mapping" {
					t.Fatalf("decoding %q worked but Check found %v", src, p)
				}
			}
		}
	})
}

// TestQuote: a value up to MaxQuoted bytes is quoted whole, as %q (or %+q)
// does; a longer one is cut at a rune boundary, followed by its length.
func TestQuote(t *testing.T) {
	e := strings.Repeat("é", 40) // 80 bytes: cut after 32 runes
	for _, tt := range []struct{ got, want string }{
		{Quote("at+jwt\n"), `"at+jwt\n"`},
		{Quote(strings.Repeat("a", MaxQuoted)), strconv.Quote(strings.Repeat("a", MaxQuoted))},
		{Quote(strings.Repeat("a", 100)), strconv.Quote(strings.Repeat("a", MaxQuoted)) + "... (100 bytes)"},
		{Quote("a" + e), strconv.Quote("a"+strings.Repeat("é", 31)) + "... (81 bytes)"},
		{QuoteASCII(e), strconv.QuoteToASCII(strings.Repeat("é", 32)) + "... (80 bytes)"},
		// Bytes that are not UTF-8 are shown escaped, one byte each:
		// before, a value of continuation bytes only was cut to
		// nothing (""... (100 bytes)), and the bytes after a lead byte
		// that starts no rune were left out up to it.
		{Quote(strings.Repeat("\x80", 100)), `"` + strings.Repeat(`\x80`, MaxQuoted) + `"... (100 bytes)`},
		{QuoteASCII(strings.Repeat("\xbf", 65)), `"` + strings.Repeat(`\xbf`, MaxQuoted) + `"... (65 bytes)`},
		{Quote(strings.Repeat("a", 60) + "\xf0\x80\x80\x80\x80"), `"` + strings.Repeat("a", 60) + `\xf0\x80\x80\x80"... (65 bytes)`},
		// A rune that would cross MaxQuoted is left out whole.
		{Quote(strings.Repeat("a", 62) + "€€"), `"` + strings.Repeat("a", 62) + `"... (68 bytes)`},
	} {
		if tt.got != tt.want {
			t.Errorf("got %s, want %s", tt.got, tt.want)
		}
	}
}

// TestTopLevelExtensions: with TopLevelExtensions an x- key of the top
// level is skipped, written or merged there, and its value not checked;
// below the top level, and without the option, it is an unknown field.
func TestTopLevelExtensions(t *testing.T) {
	const src = "x-a: &a {x-b: 1, n: 2}\n<<: *a\nx-c: {n: nope}\nsub: {<<: *a}\n"
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(src), &root); err != nil {
		t.Fatal(err)
	}
	got := func(opts ...Option) []string {
		var out []string
		for _, p := range Check(&root, reflect.TypeOf(doc{}), opts...) {
			out = append(out, p.Error())
		}
		return out
	}
	if diff := cmp.Diff([]string{"sub.x-b: unknown field (line 1)"}, got(TopLevelExtensions)); diff != "" {
		t.Errorf("Check(TopLevelExtensions) (-want +got):\n%s", diff)
	}
	want := []string{"x-a: unknown field (line 1)", "x-b: unknown field (line 1)", "x-c: unknown field (line 3)", "sub.x-b: unknown field (line 1)"}
	if diff := cmp.Diff(want, got()); diff != "" {
		t.Errorf("Check() (-want +got):\n%s", diff)
	}
}

// TestTopLevelExtensionsAliasKey: a key written as an alias is the key its
// anchor names, as the decoder reads it: an alias to "x-b" is an
// extension, and an alias to "nope" is not, whatever the anchor is named
// (the anchor's name was taken for the key: "*x-n" was skipped, and
// "*k" to an x- key named as unknown).
func TestTopLevelExtensionsAliasKey(t *testing.T) {
	const src = "x-a: [&k x-b, &x-n nope]\n*k : 1\n*x-n : 2\n"
	var root yaml.Node
	if err := yaml.Unmarshal([]byte(src), &root); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range Check(&root, reflect.TypeOf(doc{}), TopLevelExtensions) {
		got = append(got, p.Error())
	}
	if diff := cmp.Diff([]string{"x-n: unknown field (line 3)"}, got); diff != "" {
		t.Errorf("Check(TopLevelExtensions) (-want +got):\n%s", diff)
	}
}

// mergeLaughs is a document whose mapping at key (a struct or a map of
// ints in doc) merges, level by level, ten aliases of the mapping of the
// level before: ten levels expand to 10^10 merged mappings, from a few
// hundred bytes.
func mergeLaughs(key string) string {
	src := "any:\n"
	for _, m := range yamltest.MergeLaughs("{n: 1}", 10, 10) {
		src += "- " + m + "\n"
	}
	return src + key + ": *m10\n"
}

// checkGuarded is Check of src against doc with the given budget, failing
// the test if it has not returned within a minute (a guard against
// hanging, not a measure of speed).
func checkGuarded(t *testing.T, src string, budget int) []Problem {
	t.Helper()
	var n yaml.Node
	if err := yaml.Unmarshal([]byte(src), &n); err != nil {
		t.Fatal(err)
	}
	done := make(chan []Problem, 1)
	go func() { done <- check(&n, reflect.TypeOf(doc{}), budget) }()
	select {
	case got := <-done:
		return got
	case <-time.After(time.Minute):
		t.Fatalf("Check(%.80q...) did not return within a minute", src)
		return nil
	}
}

// TestCheckBoundsMerges: merge keys that expand to billions of mappings
// stop the check with one problem, at the line where the budget ran out,
// as nested aliases do. Before, the merges spent the budget (one unit a
// merged mapping) without a word: Check returned no problem at all, for a
// document it had not checked.
func TestCheckBoundsMerges(t *testing.T) {
	for _, key := range []string{"counts", "sub"} {
		src := mergeLaughs(key)
		for _, budget := range []int{10_000, maxVisits} {
			got := checkGuarded(t, src, budget)
			if len(got) != 1 || !strings.HasPrefix(got[0].Message, "too many values") || got[0].Path != key || got[0].Line == 0 {
				t.Errorf("Check(merge laughs at %s) with a budget of %d = %v, want one \"too many values\" problem at %s", key, budget, got, key)
			}
		}
	}
}

// TestCheckBudgetCountsEntries: the budget counts every entry of each
// mapping merged, every key of a mapping and every entry of a list, so a
// large mapping or list aliased or merged many times spends it too.
// Before, a merged mapping counted one whatever its size, and a key or
// list entry that is named without being walked (an unknown field, a null
// entry) counted nothing: a mapping of 1000 keys merged 100 times was
// checked in full (100,000 entries) within a budget of 5,000, and one of
// 100 unknown fields (or a list of 100 null entries) aliased 100 times
// gave 10,000 problems.
func TestCheckBudgetCountsEntries(t *testing.T) {
	keys := func(prefix string, n int) string {
		var b strings.Builder
		for i := range n {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "%s%d: 1", prefix, i)
		}
		return b.String()
	}
	aliases := func(name string, n int) string {
		return strings.TrimSuffix(strings.Repeat("*"+name+", ", n), ", ")
	}
	for _, tt := range []struct{ name, src string }{
		{"merged", "any: &a {" + keys("k", 1000) + "}\ncounts: {<<: [" + aliases("a", 100) + "]}\n"},
		{"unknown-fields", "any: &u {" + keys("x", 100) + "}\nsubs: [" + aliases("u", 100) + "]\n"},
		{"null-entries", "any: &e [" + strings.TrimSuffix(strings.Repeat("~, ", 100), ", ") + "]\nlists: [" + aliases("e", 100) + "]\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			const budget = 5_000
			var n yaml.Node
			if err := yaml.Unmarshal([]byte(tt.src), &n); err != nil {
				t.Fatal(err)
			}
			got := check(&n, reflect.TypeOf(doc{}), budget, NullEntries)
			if len(got) == 0 || len(got) > budget || !strings.HasPrefix(got[len(got)-1].Message, "too many values") {
				last := "none"
				if len(got) > 0 {
					last = got[len(got)-1].Error()
				}
				t.Errorf("Check with a budget of %d: %d problems, the last %s; want at most %d, the last \"too many values\"", budget, len(got), last, budget)
			}
		})
	}
}

// TestCheckDuplicatesOnce: a key written more than twice is named once
// for each repetition, by the line of its first: before, each pair was
// named ("first at line 2" for the third of three), so k copies of a key
// gave k(k-1)/2 problems, half a million for a line of a thousand "a: 1".
// A mapping with a key written twice that is merged several times into
// one mapping is named once there.
func TestCheckDuplicatesOnce(t *testing.T) {
	got := checkGuarded(t, "n: 1\nn: 2\nn: 3\n", maxVisits)
	want := []Problem{{"n", 2, "written twice (first at line 1)"}, {"n", 3, "written twice (first at line 1)"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Check(n written three times) (-want +got):\n%s", diff)
	}
	got = checkGuarded(t, "counts: {"+strings.Repeat("a: 1, ", 1000)+"}\n", maxVisits)
	if len(got) != 999 {
		t.Errorf("Check(a written 1000 times) = %d problems, want 999", len(got))
	}
	got = checkGuarded(t, "any: &d {n: 1, n: 2}\nsub: {<<: [*d, *d, *d]}\n", maxVisits)
	want = []Problem{{"sub.n", 1, "written twice (first at line 1)"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Check(a mapping with n twice merged three times) (-want +got):\n%s", diff)
	}
}

// TestCheckBoundsScalarDecode: a mapping given to a field of a type the
// decoder reads from one value (time.Time) is named without asking the
// decoder, which would compare its keys two by two (a mapping of 3000
// keys: 4.5 million comparisons, and as many again for each alias to it).
// (That work was counted in the budget, and this mapping ran it out;
// such a mapping is now refused before any decoding.) A list or mapping
// given to a number, boolean or string is named without asking the
// decoder (which never accepts one), as before.
func TestCheckBoundsScalarDecode(t *testing.T) {
	var b strings.Builder
	b.WriteString("{")
	for i := range 3000 {
		fmt.Fprintf(&b, "k%d: 1, ", i)
	}
	b.WriteString("}")
	big := b.String()
	got := checkGuarded(t, "when: "+big+"\n", maxVisits)
	if want := []Problem{{"when", 1, "must be a time like 2026-01-02T15:04:05Z, not a mapping"}}; !cmp.Equal(want, got) {
		t.Errorf("Check(when: a mapping of 3000 keys) = %v, want %v", got, want)
	}
	got = checkGuarded(t, "n: "+big+"\nrate: [1]\non: "+big+"\nname: {a: 1, a: 2}\n", maxVisits)
	want := []Problem{
		{"n", 1, "must be a whole number, not a mapping"},
		{"rate", 2, "must be a number, not a list"},
		{"on", 3, "must be true or false, not a mapping"},
		{"name", 4, "must be a single value, not a mapping"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Check(mappings and a list for scalars) (-want +got):\n%s", diff)
	}
}

// flowKeys is a flow mapping of n keys "<prefix><i>: 1".
func flowKeys(prefix string, n int) string {
	var b strings.Builder
	b.WriteString("{")
	for i := range n {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s%d: 1", prefix, i)
	}
	return b.String() + "}"
}

// TestCheckMaxKeys: a mapping of more than 1,024 keys (MaxKeys) is one
// problem, naming it by path and line, at the top level, nested, merged,
// with the top level's x- keys counted; none of its keys is checked.
// Before, any number of keys passed (and the decoder then compared them
// two by two), and a top level of 1,100 unknown keys gave 1,100 problems.
func TestCheckMaxKeys(t *testing.T) {
	const msg = "a mapping of 1025 keys: at most 1024 are allowed in one mapping"
	for _, tt := range []struct {
		name string
		src  string
		opts []Option
		want []Problem
	}{
		{"ok/1024-keys", "counts: " + flowKeys("k", 1024) + "\n", nil, nil},
		{"fail/map", "n: 1\ncounts: " + flowKeys("k", 1025) + "\n", nil, []Problem{{"counts", 2, msg}}},
		{"fail/nested-struct", "subs:\n  - {n: 1}\n  - " + flowKeys("n", 1025) + "\n", nil, []Problem{{"subs[1]", 3, msg}}},
		{"fail/top-level", "{" + strings.TrimPrefix(flowKeys("x", 1025), "{"), nil, []Problem{{"", 1, msg}}},
		{"fail/top-level-extensions", "{" + strings.TrimPrefix(flowKeys("x-", 1025), "{"), []Option{TopLevelExtensions}, []Problem{{"", 1, msg}}},
		{"fail/merged", "any: &a " + flowKeys("k", 1025) + "\ncounts: {<<: *a}\n", nil, []Problem{{"counts", 1, msg}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var n yaml.Node
			if err := yaml.Unmarshal([]byte(tt.src), &n); err != nil {
				t.Fatal(err)
			}
			got := Check(&n, reflect.TypeOf(doc{}), tt.opts...)
			if len(got) > 5 {
				got = got[:5]
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("Check (first 5 problems) (-want +got):\n%s", diff)
			}
		})
	}
}

// TestExcessiveAliasing: a document the decoder refuses for "excessive
// aliasing" (and Check walks within its budget) is named by the path and
// line of the alias being followed where the decoder gives up, as the
// decoder counts; a mapping merged many times too. Before, the loaders
// could only pass on the decoder's "document contains excessive
// aliasing", naming neither.
func TestExcessiveAliasing(t *testing.T) {
	list := func(v string, n int) string { return "[" + strings.TrimSuffix(strings.Repeat(v+", ", n), ", ") + "]" }
	for _, tt := range []struct {
		name, src   string
		path, start string // want: the problem's path, and how its message starts
		line        int
	}{
		// 500 aliases to a list of 500: the ratio passes 99% at the
		// 125th (505 values before them, 502 for each, 501 of them
		// copies); the decoder accepts 124 (below).
		{"lists", "names: &a " + list("x", 500) + "\nlists:\n" + strings.Repeat("  - *a\n", 500), "lists[124]", "excessive aliasing: when the YAML decoder reaches *a here (the anchor at line 1), ", 127},
		{"merges", "any: &m {n: 1, wait: 1s}\nsubs:\n  - &m2 {<<: " + list("*m", 100) + "}\n" + strings.Repeat("  - *m2\n", 300), "subs[", "excessive aliasing: when the YAML decoder reaches *m2 here (the anchor at line 3), ", 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var n yaml.Node
			if err := yaml.Unmarshal([]byte(tt.src), &n); err != nil {
				t.Fatal(err)
			}
			if ps := Check(&n, reflect.TypeOf(doc{})); len(ps) > 0 {
				t.Fatalf("Check = %v, want nothing (the decoder's limit, not Check's budget)", ps)
			}
			var d doc
			err := n.Decode(&d)
			if err == nil || !strings.Contains(err.Error(), "excessive aliasing") {
				t.Fatalf("Decode = %v, want excessive aliasing", err)
			}
			p, ok := ExcessiveAliasing(&n, err)
			if !ok || !strings.HasPrefix(p.Path, tt.path) || !strings.HasPrefix(p.Message, tt.start) || p.Line == 0 || (tt.line != 0 && p.Line != tt.line) {
				t.Errorf("ExcessiveAliasing = %v, %v; want a problem at %s (line %d) starting %q", p, ok, tt.path, tt.line, tt.start)
			}
		})
	}
	// It counts as the decoder does: the decoder accepts the document cut
	// before the alias named, and refuses it cut after.
	for k, wantErr := range map[int]bool{124: false, 125: true} {
		var d doc
		err := yaml.Unmarshal([]byte("names: &a "+list("x", 500)+"\nlists:\n"+strings.Repeat("  - *a\n", k)), &d)
		if got := err != nil && strings.Contains(err.Error(), "excessive aliasing"); got != wantErr {
			t.Errorf("decoding %d aliases to a list of 500: %v, want excessive aliasing: %v", k, err, wantErr)
		}
	}
	if _, ok := ExcessiveAliasing(&yaml.Node{}, errors.New("yaml: line 1: did not find expected key")); ok {
		t.Error("ExcessiveAliasing(another error) = ok, want not")
	}
}

// TestCheckBoundsKeyPairs: the YAML decoder compares the keys of each
// mapping two by two, each time it decodes the mapping (an alias or a merge
// decodes it again), so Check counts those pairs across the document and
// stops with one problem, at the mapping where they pass MaxKeyPairs, before
// the decoder runs. Eight mappings of MaxKeys keys are within it; a ninth,
// written, aliased or merged, is not. Before, only each mapping was bounded
// (MaxKeys): 300 of them in a 2.4 MB policy cost the decoder 157 million
// comparisons, and Check found nothing.
func TestCheckBoundsKeyPairs(t *testing.T) {
	keys := func() string {
		var b strings.Builder
		b.WriteString("{")
		for i := range MaxKeys {
			fmt.Fprintf(&b, "k%d: 1, ", i)
		}
		b.WriteString("}")
		return b.String()
	}()
	written := func(n int) string {
		var b strings.Builder
		for i := range n {
			fmt.Fprintf(&b, "m%d: %s\n", i, keys)
		}
		return b.String()
	}
	aliased := "m0: &a " + keys + "\n" + "m1: *a\nm2: *a\nm3: *a\nm4: *a\nm5: *a\nm6: *a\nm7: *a\nm8: *a\n"
	merged := "m0: &a " + keys + "\nm1: {<<: [*a, *a, *a, *a, *a, *a, *a, *a]}\n"
	type maps map[string]map[string]int
	check := func(src string) []Problem {
		t.Helper()
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(src), &n); err != nil {
			t.Fatal(err)
		}
		return Check(&n, reflect.TypeOf(maps{}))
	}
	if got := check(written(8)); len(got) != 0 {
		t.Errorf("Check(8 mappings of %d keys) = %v, want no problem", MaxKeys, got)
	}
	for _, tt := range []struct {
		name, src, path string
		line            int
	}{
		{"written", written(9), `["m8"]`, 9},
		{"aliased", aliased, `["m8"]`, 1},
		{"merged", merged, `["m1"]`, 1},
	} {
		got := check(tt.src)
		if len(got) != 1 || got[0].Path != tt.path || got[0].Line != tt.line || !strings.HasPrefix(got[0].Message, "too many keys to compare: ") {
			t.Errorf("Check(9 mappings of %d keys, %s) = %v, want one \"too many keys to compare\" problem at %s, line %d", MaxKeys, tt.name, got, tt.path, tt.line)
		}
	}
}

// TestCheckStringAsDecoder: for a string field, Check refuses exactly the
// scalars the decoder refuses, those it does not ask the decoder about
// (plainString: written without a tag) included.
func TestCheckStringAsDecoder(t *testing.T) {
	for _, v := range []string{
		"a", "12", "1.5", ".inf", ".nan", "0x1F", "0o17", "1e3", "true", "yes", "2001-12-14", "2001-12-14T21:59:43.10-05:00",
		"<<", "'quoted'", `"12"`, "!!str 12", "!!int 12", "!!int x", "!!float x", "!!bool x", "!!timestamp x",
		"!!binary aGk=", "!!binary '@@'", "!!merge <<", "!custom v", "! 12", "!!str", "|\n  block\n",
	} {
		src := "name: " + v + "\n"
		var n yaml.Node
		if err := yaml.Unmarshal([]byte(src), &n); err != nil {
			t.Fatal(err)
		}
		var d doc
		derr := n.Decode(&d)
		got := Check(&n, reflect.TypeOf(doc{}))
		if (derr != nil) != (len(got) > 0) {
			t.Errorf("name: %s: decoder %v, Check %v; want both to refuse or neither", v, derr, got)
		}
	}
}

// TestSuggestionsBounded: a field is suggested for the first maxSuggestions
// unknown fields of a document only (each costs an edit distance to every
// field of its mapping); later ones are "unknown field" alone, each still
// named.
func TestSuggestionsBounded(t *testing.T) {
	var b strings.Builder
	b.WriteString("subs:\n")
	for range maxSuggestions + 1 {
		b.WriteString("  - {wiat: 1s}\n")
	}
	ps := checkString(t, b.String())
	if len(ps) != maxSuggestions+1 {
		t.Fatalf("Check: %d problems, want %d", len(ps), maxSuggestions+1)
	}
	for i, p := range ps {
		want := "unknown field, did you mean wait?"
		if i == maxSuggestions {
			want = "unknown field"
		}
		if p.Message != want {
			t.Errorf("problem %d = %q, want %q", i, p.Message, want)
		}
	}
}
