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
	"syscall"

	"go.yaml.in/yaml/v3"

	"github.com/keytrail/keytrail/policies/yamlcheck"
)

// MaxFileSize caps one policy file, and the server's config file
// (ReadFile reads both): they are small, and a cap keeps a mistaken path
// (a log file, a binary) from being read whole.
const MaxFileSize = 4 << 20

// Problem is one thing wrong with a policy: a YAML error or a failed
// validation rule. Its text is "<file>: <path>: <message>".
type Problem struct {
	File    string // the file as named to Load or Parse
	Path    string // e.g. "grants[2].proxy.upstream"; "line 7" for YAML errors
	Message string
	// Line is the line in File of the field Path names (of the nearest
	// entry that holds it when the field is not written), 0 when the
	// message already says it or it is not known.
	Line int
}

// Error is the problem on one line: File as it is when printable, else
// quoted (Printable), so that a file name with a newline (a policy file in a
// directory, as Load names it) neither splits a problem in two lines nor
// forges one.
func (p *Problem) Error() string {
	var s string
	switch {
	case p.Path == "":
		s = Printable(p.File) + ": " + p.Message
	default:
		s = Printable(p.File) + ": " + p.Path + ": " + p.Message
	}
	if p.Line > 0 {
		s += " (line " + strconv.Itoa(p.Line) + ")"
	}
	return s
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
// and *.yml files (non-recursive, sorted by name) are merged into one policy;
// an entry so named that is not a regular file nor a symlink to one (a named
// pipe, a socket, a directory) is an error naming it, hidden ones left out,
// and one whose extension is miscased (b.YAML) is a problem, whatever it is.
// A symlink so named, whatever the case, whose target does not exist is a
// problem naming it as dangling and its target (for a chain of links, the
// last link and its target; quoted when not printable).
// Every file must say "version: 1". On a validation failure the returned
// error's Unwrap() []error lists every problem as a *Problem.
func Load(p string) (*Policy, error) {
	st, err := os.Stat(p)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	if !st.IsDir() {
		data, err := ReadFile(p)
		if err != nil {
			return nil, readError(err)
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
				name := filepath.Join(p, e.Name())
				st, err := os.Stat(name)
				if d, ok := danglingLink(name, err, os.Lstat, os.Readlink, osResolve); ok {
					misnamed = append(misnamed, danglingProblem(name, d, true))
					continue
				}
				misnamed = append(misnamed, misnamedProblem(name, st, err))
			}
			continue
		}
		name := filepath.Join(p, e.Name())
		data, err := ReadFile(name)
		if d, ok := danglingLink(name, err, os.Lstat, os.Readlink, osResolve); ok {
			misnamed = append(misnamed, danglingProblem(name, d, false))
			continue
		}
		if err != nil {
			return nil, readError(err)
		}
		files = append(files, namedData{name: name, data: data})
	}
	if len(misnamed) > 0 {
		return nil, joinProblems(misnamed)
	}
	if len(files) == 0 {
		return nil, noPolicyFiles(p)
	}
	return build(files)
}

// LoadFS is Load over a file system: dir names a directory of fsys whose
// *.yaml and *.yml files are merged, or a single file. Problems name files as
// dir/file.
func LoadFS(fsys fs.FS, dir string) (*Policy, error) {
	st, err := fs.Stat(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	if !st.IsDir() {
		data, err := readFS(fsys, dir)
		if err != nil {
			return nil, readError(err)
		}
		return build([]namedData{{name: dir, data: data}})
	}
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("policies: %w", err)
	}
	var files []namedData
	var misnamed []error
	lstat := func(name string) (fs.FileInfo, error) { return fs.Lstat(fsys, name) }
	readlink := func(name string) (string, error) { return fs.ReadLink(fsys, name) }
	for _, e := range entries {
		if !isPolicyFile(e) {
			if miscasedPolicyFile(e) {
				name := path.Join(dir, e.Name())
				st, err := fs.Stat(fsys, name)
				if d, ok := danglingLink(name, err, lstat, readlink, fsResolve); ok {
					misnamed = append(misnamed, danglingProblem(name, d, true))
					continue
				}
				misnamed = append(misnamed, misnamedProblem(name, st, err))
			}
			continue
		}
		name := path.Join(dir, e.Name())
		data, err := readFS(fsys, name)
		if d, ok := danglingLink(name, err, lstat, readlink, fsResolve); ok {
			misnamed = append(misnamed, danglingProblem(name, d, false))
			continue
		}
		if err != nil {
			return nil, readError(err)
		}
		files = append(files, namedData{name: name, data: data})
	}
	if len(misnamed) > 0 {
		return nil, joinProblems(misnamed)
	}
	if len(files) == 0 {
		return nil, noPolicyFiles(dir)
	}
	return build(files)
}

// Parse builds a policy from one YAML document; name is used in problems and
// in Sources.
func Parse(name string, data []byte) (*Policy, error) {
	return build([]namedData{{name: name, data: data}})
}

// isPolicyFile reports whether Load of a directory reads the entry e: one
// not hidden whose name ends in .yaml or .yml, whatever it is. One that is
// not a regular file (a named pipe, a socket, a directory named x.yaml) is
// then refused by ReadFile, naming it and what it is, as a symlink to one
// is: left out silently, its workloads would be missing from a policy that
// validates. Hidden entries, such as a Kubernetes ConfigMap's ..data
// directory and ..<timestamp> link, are left out.
func isPolicyFile(e fs.DirEntry) bool {
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
func Considers(e fs.DirEntry) bool { return isPolicyFile(e) || miscasedPolicyFile(e) }

// misnamedMessage is the problem of a file miscasedPolicyFile reports.
const misnamedMessage = `not read: policy file names end in ".yaml" or ".yml" (lowercase); rename it`

// misnamedProblem is the problem of the entry name that miscasedPolicyFile
// reports, st and err what stat (following symlinks) said of it. One that
// is not a regular file (a named pipe, a socket, a directory, or a symlink
// to one) is not told to rename it: renamed, it would be refused as not a
// regular file. Its problem says both what it is and what a policy file
// is, so one reading is enough to fix it.
func misnamedProblem(name string, st fs.FileInfo, err error) *Problem {
	if err == nil && !st.Mode().IsRegular() {
		what := modeKind(st.Mode())
		if what == "" {
			what = "not a regular file"
		} else {
			what = "is " + what + ", not a regular file"
		}
		return &Problem{File: name, Message: "not read: " + what + `; policy files are regular files named *.yaml or *.yml (lowercase)`}
	}
	return &Problem{File: name, Message: misnamedMessage}
}

// danglingLink reports whether name, which could not be stat'ed or
// opened with err (following symlinks), is a symlink whose target does not
// exist, and what dangles: the last link of the chain name starts (name
// itself, or a link it leads to through others) and its target (as that
// link holds it). lstat and readlink are the file system's (os, or an
// fs.FS's); resolve joins a link's target to the link's directory, false
// when it cannot be followed there (an fs.FS's target out of it).
func danglingLink(name string, err error, lstat func(string) (fs.FileInfo, error), readlink func(string) (string, error),
	resolve func(link, target string) (string, bool)) (link dangling, ok bool) {
	if !errors.Is(err, fs.ErrNotExist) {
		return dangling{}, false
	}
	if st, lerr := lstat(name); lerr != nil || st.Mode()&fs.ModeSymlink == 0 {
		return dangling{}, false
	}
	target, rerr := readlink(name)
	if rerr != nil {
		return dangling{}, false
	}
	d := dangling{first: target, last: name, target: target}
	// Follow the chain to its last link (at most as many as the kernel
	// follows: a loop is ELOOP, not ErrNotExist, but a link may change).
	for range maxLinkHops {
		next, ok := resolve(d.last, d.target)
		if !ok {
			break
		}
		if st, lerr := lstat(next); lerr != nil || st.Mode()&fs.ModeSymlink == 0 {
			break
		}
		t, rerr := readlink(next)
		if rerr != nil {
			break
		}
		d.last, d.target = next, t
	}
	return d, true
}

// maxLinkHops is how many links of a chain danglingLink follows (Linux's
// limit of symlinks in one path resolution).
const maxLinkHops = 40

// dangling is what danglingLink found: a symlink entry whose target is
// first, leading (maybe through more links) to the link last, whose
// target does not exist.
type dangling struct {
	first, last, target string
}

// osResolve is danglingLink's resolve over the os file system.
func osResolve(link, target string) (string, bool) {
	if filepath.IsAbs(target) {
		return target, true
	}
	return filepath.Join(filepath.Dir(link), target), true
}

// fsResolve is danglingLink's resolve over an fs.FS: a target is followed
// within it only.
func fsResolve(link, target string) (string, bool) {
	if path.IsAbs(target) {
		return "", false
	}
	p := path.Join(path.Dir(link), target)
	return p, fs.ValidPath(p)
}

// danglingProblem is the problem of an entry of a policy directory, name,
// that is a dangling symlink d: neither renaming it nor reading it again
// helps, its target is what to fix. One that leads through other links
// names the last one, whose target does not exist, and the target it
// holds: "dangling symlink to m.yaml" would name a file that exists (as a
// link). A target or link with a character that is not printable (a
// newline) is quoted, as explain quotes a subject: one problem is one
// line. One whose extension is miscased (miscased) is also told what a
// policy file is named, so one reading is enough to fix it.
func danglingProblem(name string, d dangling, miscased bool) *Problem {
	msg := "not read: is a dangling symlink to " + Printable(d.target)
	if d.last != name {
		msg = "not read: is a chain of symlinks (to " + Printable(d.first) + ") ending at " + Printable(d.last) +
			", a dangling symlink to " + Printable(d.target)
	}
	if miscased {
		msg += `; policy files are regular files named *.yaml or *.yml (lowercase)`
	}
	return &Problem{File: name, Message: msg}
}

// miscasedPolicyFile reports whether e would be a policy file but for the
// case of its extension (b.YAML), whatever it is (a named pipe, a socket or
// a directory so named too, as isPolicyFile): left out silently, its
// entries would be missing from a policy that validates.
func miscasedPolicyFile(e fs.DirEntry) bool {
	if strings.HasPrefix(e.Name(), ".") {
		return false
	}
	n := strings.ToLower(e.Name())
	return strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml")
}

// ReadFile reads a policy file or the server's config file: a regular
// file (a symlink to one is followed: a Kubernetes ConfigMap mounts each
// file as a chain of them) of at most MaxFileSize bytes. Anything else is
// refused before a byte is read, naming the path and what it is ("x: is a
// named pipe, not a regular file"): a FIFO would block until something
// writes to it, and a device (/dev/zero) would be read up to the cap. The
// file is opened as OpenRegular opens it. An error opening or reading the
// file is the *fs.PathError of the os package, which names the path too.
func ReadFile(name string) ([]byte, error) {
	f, err := OpenRegular(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readRegular(f, name)
}

// OpenRegular opens name for reading if it is a regular file (a symlink to
// one is followed) and refuses anything else, naming the path and what it
// is ("x: is a named pipe, not a regular file"). It is what ReadFile opens
// with, for a reader that caps the size or looks at the file itself (the
// secret files the Vault login re-reads, the admin token file). The file
// is opened without blocking (O_NONBLOCK: opening a FIFO for reading
// otherwise waits for a writer), then looked at; reading a regular file is
// not affected by it. An error opening the file is the *fs.PathError of
// the os package.
func OpenRegular(name string) (*os.File, error) {
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		// A socket cannot be opened at all ("no such device or
		// address"): say what it is.
		if st, serr := os.Stat(name); serr == nil && !st.Mode().IsRegular() {
			return nil, notRegular(name, st.Mode())
		}
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() {
		f.Close()
		return nil, notRegular(name, st.Mode())
	}
	return f, nil
}

// readFS is ReadFile over a file system: a path that is not a regular file
// is refused before it is opened (an os.DirFS would block opening a FIFO),
// and again once open.
func readFS(fsys fs.FS, name string) ([]byte, error) {
	st, err := fs.Stat(fsys, name)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, notRegular(name, st.Mode())
	}
	f, err := fsys.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readRegular(f, name)
}

// readRegular reads f, named name, if it is a regular file of at most
// MaxFileSize bytes (MaxFileSize+1 bytes of it at the most).
func readRegular(f fs.File, name string) ([]byte, error) {
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, notRegular(name, st.Mode())
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileSize {
		return nil, &namedFileError{fmt.Sprintf("%s: larger than %d bytes", Printable(name), MaxFileSize)}
	}
	return data, nil
}

// namedFileError is the error of a file refused for what it is, not for
// what the system said: not a regular file (notRegular), or larger than
// MaxFileSize. It names the path already.
type namedFileError struct{ msg string }

func (e *namedFileError) Error() string { return e.msg }

// notRegular is the error of a path that names m, not a regular file; the
// path quoted when not printable (a ca_file's, a policy file's: problems
// are one per line).
func notRegular(name string, m fs.FileMode) error {
	what := modeKind(m)
	if what == "" {
		return &namedFileError{Printable(name) + ": not a regular file"}
	}
	return &namedFileError{Printable(name) + ": is " + what + ", not a regular file"}
}

// readError is Load's and LoadFS's error for a policy file that could not
// be read: one refused for what it is as ReadFile says it ("P: is a named
// pipe, not a regular file", "P: larger than N bytes"), as the config file
// and the files it names are refused; the system's errors (which name the
// file too) with the "policies: " prefix, as the config file's have
// "config: ".
func readError(err error) error {
	if _, ok := errors.AsType[*namedFileError](err); ok {
		return err
	}
	return fmt.Errorf("policies: %w", err)
}

// noPolicyFiles is Load's and LoadFS's error for a directory with no policy
// file, naming it as a file refused for what it is is named (quoted when
// not printable: problems are one per line).
func noPolicyFiles(dir string) error {
	return &namedFileError{Printable(dir) + ": no *.yaml or *.yml files in directory"}
}

// NotRegular is the error of a path that names m, not a regular file
// ("x: is a character device, not a regular file"), for the commands that
// check a path before writing it.
func NotRegular(name string, m fs.FileMode) error { return notRegular(name, m) }

// modeKind names what m is when it is not a regular file ("a named pipe"),
// or is "" for a kind it has no name for.
func modeKind(m fs.FileMode) string {
	switch {
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return ""
}

// parsedFile is a decoded policy file.
type parsedFile struct {
	name string
	data []byte
	file File
	root *yaml.Node // the document, for the lines of problems
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

// decode strictly decodes one YAML document. Every value that does not fit
// its field, and every unknown field, is a problem named by field path and
// line (yamlcheck): the decoder would name a Go type ("field period not
// found in type policies.VaultTokenGrant"), give only a line, stop at the
// first bad value and truncate "num_uses: 1.5" to 1 without a word. An
// entry of a list written without a value ("grants: [a, ~]", a "- " line
// with nothing after it) is a problem here too (yamlcheck.NullEntries):
// the decoder would leave it out, so a forgotten value would go unnoticed
// and every problem about a later entry of the list would name the wrong
// index and line.
func decode(name string, data []byte) (parsedFile, []error) {
	pf := parsedFile{name: name, data: data}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var root yaml.Node
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return pf, []error{&Problem{File: name, Message: "empty policy file (want at least \"version: 1\")"}}
		}
		return pf, yamlProblems(name, ParseErrorLine(data, err))
	}
	if ps := yamlcheck.Check(&root, reflect.TypeOf(pf.file), yamlcheck.NullEntries); len(ps) > 0 {
		errs := make([]error, len(ps))
		for i, p := range ps {
			errs[i] = &Problem{File: name, Path: p.Path, Message: fmt.Sprintf("%s (line %d)", p.Message, p.Line)}
		}
		return pf, errs
	}
	strict := yaml.NewDecoder(bytes.NewReader(data))
	strict.KnownFields(true)
	if err := strict.Decode(&pf.file); err != nil {
		if errors.Is(err, io.EOF) {
			return pf, []error{&Problem{File: name, Message: "empty policy file (want at least \"version: 1\")"}}
		}
		if p, ok := yamlcheck.ExcessiveAliasing(&root, err); ok {
			return pf, []error{&Problem{File: name, Path: p.Path, Message: fmt.Sprintf("%s (line %d)", p.Message, p.Line)}}
		}
		return pf, yamlProblems(name, err)
	}
	if errs := nullClaimValues(name, &root); len(errs) > 0 {
		return pf, errs
	}
	pf.root = &root
	for {
		var extra yaml.Node
		err := dec.Decode(&extra)
		switch {
		case errors.Is(err, io.EOF):
			return pf, nil
		case err != nil:
			return pf, yamlProblems(name, ParseErrorLine(data, err))
		case !emptyDocument(&extra):
			return pf, []error{&Problem{File: name, Path: fmt.Sprintf("line %d", extra.Line), Message: "more than one YAML document; put each in its own file"}}
		}
	}
}

// nullClaimValues refuses a claims or claim_patterns entry of a workload or
// admin match written without a value ("namespace:" or "namespace: ~"):
// decoded, it would silently require the claim to be present and empty,
// which is rarely what was meant (a forgotten value, a template variable
// that expanded to nothing). An empty claim is required with "" spelled out.
//
// A key written without a value (~, null, or "? " with nothing after it)
// is refused too, whatever its value: the decoder drops the entry (no
// string key), and with it the check of the claim, so the match would
// admit more than it says (a claim name from a template that expanded to
// nothing). A claim named "~" or "null" is written quoted. So is one in a
// mapping merged into claims ("<<: *common"), which the decoder drops as
// well (yamlcheck.Entries does not pass it: the decoder sets nothing for
// it), whatever its value and whatever the mapping it is merged into sets.
func nullClaimValues(file string, root *yaml.Node) []error {
	var errs []error
	nullKey := func(path, field string, k *yaml.Node) {
		errs = append(errs, &Problem{File: file, Path: fmt.Sprintf("%s.%s[%s]", path, field, quoted(k.Value)),
			Message: fmt.Sprintf(`key without a value (line %d): the YAML decoder drops the entry, and the claim would not be checked; quote the key ("~", "null") for a claim of that name, or remove the entry`, k.Line)})
	}
	matchFields(root, func(path, field string, m *yaml.Node) {
		budget := maxMergeVisits
		merged := map[*yaml.Node]bool{} // a mapping merged twice is named once
		yamlcheck.Entries(m, yamlcheck.DocumentOrder, &budget, func(k, v *yaml.Node) bool {
			if k != nil {
				return true // written in m: matchEntries passes it
			}
			for v.Kind == yaml.AliasNode && v.Alias != nil {
				v = v.Alias
			}
			if v.Kind != yaml.MappingNode || merged[v] {
				return true // not a mapping: yamlcheck names it
			}
			merged[v] = true
			for i := 0; i+1 < len(v.Content); i += 2 {
				if k := v.Content[i]; isNullKey(k) {
					nullKey(path, field, k)
				}
			}
			return true
		})
	})
	matchEntries(root, func(path, field string, k, v *yaml.Node) {
		if isNullKey(k) {
			nullKey(path, field, k)
			return
		}
		if v.Kind == yaml.ScalarNode && v.ShortTag() == "!!null" {
			errs = append(errs, &Problem{File: file, Path: fmt.Sprintf("%s.%s[%q]", path, field, keyName(k)),
				Message: fmt.Sprintf(`no value (line %d): write "" to require an empty claim, or remove the entry`, v.Line)})
		}
	})
	return errs
}

// keyName is the name mapping key k gives, as the decoder reads it: a key
// written as an alias ("*c : ...") is the key its anchor names, not the
// anchor's name.
func keyName(k *yaml.Node) string {
	for k.Kind == yaml.AliasNode && k.Alias != nil {
		k = k.Alias
	}
	return k.Value
}

// isNullKey reports whether mapping key k is null (~, null, empty), or an
// alias to one: the decoder decodes no string key from it.
func isNullKey(k *yaml.Node) bool {
	if k.Kind == yaml.AliasNode && k.Alias != nil {
		k = k.Alias
	}
	return k.Kind == yaml.ScalarNode && k.ShortTag() == "!!null"
}

// claimScalarWarnings warns of a claims value of a workload or admin match
// written as an unquoted number or boolean in a form a claim of that type
// is never compared in (1.0, 1e3, 0x1F, True): values are compared as the
// text written, and a number or boolean claim as its shortest form ("1",
// "1000", "31", "true"), so only a string claim spelled the same matches.
// That may be meant (a ref named 1.0), so it is a warning, silenced by
// quoting the value; 1, 1.5 and true match both and draw none.
func claimScalarWarnings(file string, root *yaml.Node) []*Problem {
	var out []*Problem
	matchEntries(root, func(path, field string, k, v *yaml.Node) {
		if field != "claims" || v.Kind != yaml.ScalarNode {
			return
		}
		var msg string
		switch v.ShortTag() {
		case "!!bool":
			var b bool
			if v.Value == "true" || v.Value == "false" || v.Decode(&b) != nil {
				return
			}
			msg = fmt.Sprintf("unquoted %s is compared as the text %q, never as the boolean %t: quote it to match that text, or write %t to match a boolean claim", v.Value, v.Value, b, b)
		case "!!int", "!!float":
			if digits := strings.TrimPrefix(v.Value, "-"); isDecimalInteger(v.Value) && (digits == "0" || digits[0] != '0') {
				return // an integer claim is compared as written, however long
			}
			var f float64
			if v.Decode(&f) != nil || math.IsInf(f, 0) || math.IsNaN(f) {
				msg = fmt.Sprintf("unquoted %s is compared as the text %q and never equals a number claim: quote it to match that text", v.Value, v.Value)
				break
			}
			canonical := strconv.FormatFloat(f, 'f', -1, 64)
			var i int64
			if v.ShortTag() == "!!int" && v.Decode(&i) == nil {
				canonical = strconv.FormatInt(i, 10) // exact
			}
			if v.Value == canonical {
				return
			}
			msg = fmt.Sprintf("unquoted %s is compared as the text %q, never as the number %s: quote it to match that text, or write %s to match a number claim", v.Value, v.Value, canonical, canonical)
		default:
			return
		}
		out = append(out, &Problem{File: file, Path: fmt.Sprintf("%s.%s[%q]", path, field, keyName(k)), Message: msg, Line: v.Line})
	})
	return out
}

// matchEntries calls f with every claims and claim_patterns entry of the
// workload and admin matches of document root, as the decoder sees them
// (aliases and merge keys followed; the value's aliases resolved): path is
// the match's ("workloads[2].match"), field "claims" or "claim_patterns".
func matchEntries(root *yaml.Node, f func(path, field string, k, v *yaml.Node)) {
	matchFields(root, func(path, field string, m *yaml.Node) {
		// The entry of each key the decoder keeps: the last passed (see
		// mappingEntry). A key without a value is each passed: the
		// decoder sets nothing for it, so a claim "~" set elsewhere in
		// the mapping (quoted, or merged) does not hide it.
		var entries [][2]*yaml.Node
		last := map[string]int{}
		mappingEntries(m, func(k, v *yaml.Node) bool {
			i, ok := last[keyName(k)]
			switch {
			case isNullKey(k):
				entries = append(entries, [2]*yaml.Node{k, v})
			case ok:
				entries[i] = [2]*yaml.Node{k, v}
			default:
				last[keyName(k)] = len(entries)
				entries = append(entries, [2]*yaml.Node{k, v})
			}
			return true
		})
		for _, e := range entries {
			k, v := e[0], e[1]
			for v.Kind == yaml.AliasNode && v.Alias != nil {
				v = v.Alias
			}
			f(path, field, k, v)
		}
	})
}

// matchFields calls f with the claims and claim_patterns node (nil when
// not written) of each workload and admin match in root, and the match's
// path ("workloads[0].match").
func matchFields(root *yaml.Node, f func(path, field string, m *yaml.Node)) {
	if root == nil || root.Kind != yaml.DocumentNode || len(root.Content) == 0 {
		return
	}
	for _, section := range []string{"workloads", "admins"} {
		seq := mappingValue(root.Content[0], section)
		for seq != nil && seq.Kind == yaml.AliasNode {
			seq = seq.Alias
		}
		if seq == nil || seq.Kind != yaml.SequenceNode {
			continue
		}
		for i, item := range seq.Content {
			match := mappingValue(item, "match")
			for _, field := range []string{"claims", "claim_patterns"} {
				f(fmt.Sprintf("%s[%d].match", section, i), field, mappingValue(match, field))
			}
		}
	}
}

// mappingValue is the value node of key in mapping n (see mappingEntry),
// nil when n is not a mapping or has no such key.
func mappingValue(n *yaml.Node, key string) *yaml.Node {
	_, v := mappingEntry(n, key)
	return v
}

// maxMergeVisits bounds the mappings one mappingEntries call merges, each
// counted each time it is merged.
const maxMergeVisits = 1 << 16

// mappingEntry is the key and value nodes of key in mapping n, aliases
// followed, as the decoder sees them: merge keys ("<<: *defaults")
// included (see mappingEntries). Both are nil when n is not a mapping or
// has no such key.
func mappingEntry(n *yaml.Node, key string) (k, v *yaml.Node) {
	mappingEntries(n, func(kn, vn *yaml.Node) bool {
		if keyName(kn) == key {
			// The last passed is the one the decoder keeps: a merged
			// "1" is set after a "1" written as a number (see
			// yamlcheck.Entries).
			k, v = kn, vn
		}
		return true
	})
	return k, v
}

// mappingEntries calls f with each key and value of mapping n (aliases
// followed) that the decoder uses, until f returns false: the keys written
// in n, then those of the mappings merged into it, in the order the
// decoder sets them (yamlcheck.Entries).
func mappingEntries(n *yaml.Node, f func(k, v *yaml.Node) bool) {
	budget := maxMergeVisits
	yamlcheck.Entries(n, yamlcheck.DecoderOrder, &budget, func(k, v *yaml.Node) bool {
		return k == nil || f(k, v) // k == nil: v is merged, its entries follow
	})
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

// ParseErrorLine gives the line to an error of parsing data (a YAML stream,
// one document or more) that the YAML parser left without one: a syntax
// error on the first line (it names a line only when it is not the first)
// and an unknown alias (it names none). Errors that name a line are
// returned as they are. The server config loader uses it too.
func ParseErrorLine(data []byte, err error) error {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	switch {
	case strings.HasPrefix(msg, "line "), strings.HasPrefix(msg, "attempted to "):
		return err
	case strings.HasPrefix(msg, "unknown anchor "):
		// The parser stops at the first alias it cannot resolve: the
		// first line that, with those before it, fails the same way
		// (every document read, so an alias in a later one is found).
		lines := bytes.SplitAfter(data, []byte("\n"))
		fails := func(n int) bool {
			e := decodeAll(bytes.Join(lines[:n], nil))
			return e != nil && e.Error() == err.Error()
		}
		n := sort.Search(len(lines), func(i int) bool { return fails(i + 1) }) + 1
		if n > len(lines) {
			return err
		}
		return fmt.Errorf("line %d: %s", n, msg)
	default:
		return fmt.Errorf("line 1: %s", msg)
	}
}

// decodeAll parses every document of data, returning the first error.
func decodeAll(data []byte) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for {
		var doc yaml.Node
		if err := dec.Decode(&doc); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
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

// locate sets the Line of each problem that has none from its file's
// document (root returns it, nil when unknown).
func locate(problems []error, root func(file string) *yaml.Node) {
	for _, e := range problems {
		p, ok := e.(*Problem)
		if !ok || p.Line > 0 || p.Path == "" || strings.HasPrefix(p.Path, "line ") {
			continue
		}
		p.Line = NodeLine(root(p.File), p.Path)
	}
}

// NodeLine returns the line of the node a problem path names in doc:
// mapping keys by name (`name`, `claims["k"]`), sequence items by index
// (`grants[2]`), aliases and merge keys followed as the decoder does.
// Where the path leaves the document (a required field that is not
// written) it is the line of the last node found; 0 when doc is nil. The
// server config loader uses it too.
func NodeLine(doc *yaml.Node, path string) int {
	line, _ := lookup(doc, path)
	return line
}

// written reports whether the field path names is written in doc (with any
// value, null included).
func written(doc *yaml.Node, path string) bool {
	_, n := lookup(doc, path)
	return n != nil
}

// writtenNull reports whether the field path names is written in doc
// without a value ("num_uses:", "rate: ~"), which the decoder reads as
// the field left out.
func writtenNull(doc *yaml.Node, path string) bool {
	_, n := lookup(doc, path)
	for n != nil && n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n != nil && n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// lookup finds the node path names in doc (see nodeLine): its line, and the
// node itself, nil when the path leaves the document.
func lookup(doc *yaml.Node, path string) (int, *yaml.Node) {
	if doc == nil {
		return 0, nil
	}
	n := doc
	if n.Kind == yaml.DocumentNode {
		if len(n.Content) == 0 {
			return n.Line, nil
		}
		n = n.Content[0]
	}
	line := n.Line
	for path != "" {
		for n.Kind == yaml.AliasNode && n.Alias != nil {
			n = n.Alias
		}
		var key string
		switch {
		case path[0] == '.':
			path = path[1:]
			continue
		case strings.HasPrefix(path, `["`):
			q, err := strconv.QuotedPrefix(path[1:])
			if err != nil {
				return line, nil
			}
			key, _ = strconv.Unquote(q)
			path = strings.TrimPrefix(path[1+len(q):], "]")
		case path[0] == '[':
			end := strings.IndexByte(path, ']')
			if end < 0 {
				return line, nil
			}
			i, err := strconv.Atoi(path[1:end])
			if err != nil || n.Kind != yaml.SequenceNode || i < 0 || i >= len(n.Content) {
				return line, nil
			}
			path = path[end+1:]
			n = n.Content[i]
			line = n.Line
			continue
		default:
			end := strings.IndexAny(path, ".[")
			if end < 0 {
				end = len(path)
			}
			key, path = path[:end], path[end:]
		}
		k, v := mappingEntry(n, key)
		if k == nil {
			return line, nil
		}
		line, n = k.Line, v
	}
	return line, n
}
