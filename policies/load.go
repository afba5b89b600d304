package policies

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// maxFileSize caps one policy file; policies are small, and a cap keeps a
// mistaken path (a log file, a binary) from being read whole.
const maxFileSize = 4 << 20

// Problem is one thing wrong with a policy: a YAML error or a failed
// validation rule. Its text is "<file>: <path>: <message>".
type Problem struct {
	File    string // the file as named to Load or Parse
	Path    string // e.g. "grants[2].proxy.upstream"; "line 7" for YAML errors
	Message string
}

func (p *Problem) Error() string {
	switch {
	case p.Path == "":
		return p.File + ": " + p.Message
	default:
		return p.File + ": " + p.Path + ": " + p.Message
	}
}

// Source is one policy file a Policy was built from.
type Source struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"` // hex SHA-256 of the file's bytes
}

// namedData is one policy file's name and bytes.
type namedData struct {
	name string
	data []byte
}

// Load reads a policy from path: one YAML file, or a directory whose *.yaml
// and *.yml files (non-recursive, sorted by name) are merged into one policy.
// Every file must say "version: 1". On a validation failure the returned
// error's Unwrap() []error lists every problem as a *Problem.
func Load(p string) (*Policy, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	if !st.IsDir() {
		data, err := readCapped(os.Open, p)
		if err != nil {
			return nil, err
		}
		return build([]namedData{{name: p, data: data}})
	}
	entries, err := os.ReadDir(p)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	var files []namedData
	var misnamed []error
	for _, e := range entries {
		if !isPolicyFile(e) {
			if miscasedPolicyFile(e) {
				misnamed = append(misnamed, &Problem{File: filepath.Join(p, e.Name()), Message: misnamedMessage})
			}
			continue
		}
		name := filepath.Join(p, e.Name())
		data, err := readCapped(os.Open, name)
		if err != nil {
			return nil, err
		}
		files = append(files, namedData{name: name, data: data})
	}
	if len(misnamed) > 0 {
		return nil, joinProblems(misnamed)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("policies: %s: no *.yaml or *.yml files in directory", p)
	}
	return build(files)
}

// LoadFS is Load over a file system: dir names a directory of fsys whose
// *.yaml and *.yml files are merged, or a single file. Problems name files as
// dir/file.
func LoadFS(fsys fs.FS, dir string) (*Policy, error) {
	open := func(name string) (io.ReadCloser, error) { return fsys.Open(name) }
	st, err := fs.Stat(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	if !st.IsDir() {
		data, err := readCapped(open, dir)
		if err != nil {
			return nil, err
		}
		return build([]namedData{{name: dir, data: data}})
	}
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	var files []namedData
	var misnamed []error
	for _, e := range entries {
		if !isPolicyFile(e) {
			if miscasedPolicyFile(e) {
				misnamed = append(misnamed, &Problem{File: path.Join(dir, e.Name()), Message: misnamedMessage})
			}
			continue
		}
		name := path.Join(dir, e.Name())
		data, err := readCapped(open, name)
		if err != nil {
			return nil, err
		}
		files = append(files, namedData{name: name, data: data})
	}
	if len(misnamed) > 0 {
		return nil, joinProblems(misnamed)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("policies: %s: no *.yaml or *.yml files in directory", dir)
	}
	return build(files)
}

// Parse builds a policy from one YAML document; name is used in problems and
// in Sources.
func Parse(name string, data []byte) (*Policy, error) {
	return build([]namedData{{name: name, data: data}})
}

func isPolicyFile(e fs.DirEntry) bool {
	if !e.Type().IsRegular() && e.Type()&fs.ModeSymlink == 0 {
		return false
	}
	n := e.Name()
	if strings.HasPrefix(n, ".") {
		return false
	}
	return strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")
}

// Considers reports whether Load of a directory reads the entry e or
// reports it as a problem: a change to any other entry (hidden files, an
// editor's swap and probe files, other extensions, subdirectories) cannot
// change what Load returns.
func Considers(e fs.DirEntry) bool { return miscasedPolicyFile(e) }

// misnamedMessage is the problem of a file miscasedPolicyFile reports.
const misnamedMessage = `not read: policy file names end in ".yaml" or ".yml" (lowercase); rename it`

// miscasedPolicyFile reports whether e would be a policy file but for the
// case of its extension (b.YAML): left out silently, its entries would be
// missing from a policy that validates.
func miscasedPolicyFile(e fs.DirEntry) bool {
	if !e.Type().IsRegular() && e.Type()&fs.ModeSymlink == 0 || strings.HasPrefix(e.Name(), ".") {
		return false
	}
	n := strings.ToLower(e.Name())
	return strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")
}

func readCapped[R io.ReadCloser](open func(string) (R, error), name string) ([]byte, error) {
	f, err := open(name)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("policies: %s: %w", name, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("policies: %s: larger than %d bytes", name, maxFileSize)
	}
	return data, nil
}

// parsedFile is a decoded policy file.
type parsedFile struct {
	name string
	data []byte
	file File
}

// build decodes, defaults, validates and compiles files.
func build(files []namedData) (*Policy, error) {
	sort.SliceStable(files, func(i, j int) bool { return files[i].name < files[j].name })
	var problems []error
	parsed := make([]parsedFile, 0, len(files))
	for _, f := range files {
		pf, errs := decode(f.name, f.data)
		problems = append(problems, errs...)
		parsed = append(parsed, pf)
	}
	if len(problems) > 0 {
		return nil, joinProblems(problems)
	}
	return compile(parsed)
}

// decode strictly decodes one YAML document.
func decode(name string, data []byte) (parsedFile, []error) {
	pf := parsedFile{name: name, data: data}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&pf.file); err != nil {
		if errors.Is(err, io.EOF) {
			return pf, []error{&Problem{File: name, Message: "empty policy file (want at least \"version: 1\")"}}
		}
		return pf, yamlProblems(name, err)
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err == nil {
		if errs := checkIntegers(name, "", &root, reflect.TypeOf(pf.file), 0); len(errs) > 0 {
			return pf, errs
		}
	}
	for {
		var extra yaml.Node
		err := dec.Decode(&extra)
		switch {
		case errors.Is(err, io.EOF):
			return pf, nil
		case err != nil:
			return pf, yamlProblems(name, err)
		case !emptyDocument(&extra):
			return pf, []error{&Problem{File: name, Path: fmt.Sprintf("line %d", extra.Line), Message: "more than one YAML document; put each in its own file"}}
		}
	}
}

var unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()

// checkIntegers reports every fraction written where t (the type the node
// decodes into) wants an integer: YAML would truncate "num_uses: 1.5" to 1
// without a word. It follows the yaml tags of structs, merge keys and
// aliases (depth bounds alias cycles). n has decoded into t without error.
func checkIntegers(file, path string, n *yaml.Node, t reflect.Type, depth int) []error {
	if depth > 64 {
		return nil
	}
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if n.Kind == yaml.DocumentNode {
		var out []error
		for _, c := range n.Content {
			out = append(out, checkIntegers(file, path, c, t, depth+1)...)
		}
		return out
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return nil
	}
	join := func(key string) string {
		if path == "" {
			return key
		}
		return path + "." + key
	}
	var out []error
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!float" {
			if f, err := strconv.ParseFloat(strings.ReplaceAll(n.Value, "_", ""), 64); err == nil && f != math.Trunc(f) {
				out = append(out, &Problem{File: file, Path: path, Message: fmt.Sprintf("must be a whole number, not %s (line %d)", n.Value, n.Line)})
			}
		}
	case reflect.Slice:
		if n.Kind == yaml.SequenceNode {
			for i, c := range n.Content {
				out = append(out, checkIntegers(file, fmt.Sprintf("%s[%d]", path, i), c, t.Elem(), depth+1)...)
			}
		}
	case reflect.Map:
		if n.Kind == yaml.MappingNode {
			for i := 0; i+1 < len(n.Content); i += 2 {
				out = append(out, checkIntegers(file, fmt.Sprintf("%s[%q]", path, n.Content[i].Value), n.Content[i+1], t.Elem(), depth+1)...)
			}
		}
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			break
		}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			if k.ShortTag() == "!!merge" {
				// <<: a mapping, or a sequence of them, merged into this one.
				for v.Kind == yaml.AliasNode && v.Alias != nil {
					v = v.Alias
				}
				merged := []*yaml.Node{v}
				if v.Kind == yaml.SequenceNode {
					merged = v.Content
				}
				for _, m := range merged {
					out = append(out, checkIntegers(file, path, m, t, depth+1)...)
				}
				continue
			}
			for fi := 0; fi < t.NumField(); fi++ {
				f := t.Field(fi)
				if tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); f.IsExported() && tag == k.Value {
					out = append(out, checkIntegers(file, join(k.Value), v, f.Type, depth+1)...)
					break
				}
			}
		}
	}
	return out
}

// emptyDocument reports whether n is a document with no content (a trailing
// "---" or "...").
func emptyDocument(n *yaml.Node) bool {
	if n.Kind != yaml.DocumentNode {
		return false
	}
	for _, c := range n.Content {
		if c.Kind != yaml.ScalarNode || c.Tag != "!!null" || c.Value != "" {
			return false
		}
	}
	return true
}

// yamlProblems turns a YAML error into problems naming the file and line.
func yamlProblems(name string, err error) []error {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		out := make([]error, 0, len(te.Errors))
		for _, e := range te.Errors {
			out = append(out, lineProblem(name, e))
		}
		return out
	}
	return []error{lineProblem(name, strings.TrimPrefix(err.Error(), "yaml: "))}
}

// lineProblem splits "line N: msg" into a Problem with Path "line N".
func lineProblem(name, msg string) *Problem {
	if strings.HasPrefix(msg, "line ") {
		if i := strings.Index(msg, ": "); i > 0 {
			return &Problem{File: name, Path: msg[:i], Message: msg[i+2:]}
		}
	}
	return &Problem{File: name, Message: msg}
}
