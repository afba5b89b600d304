package trace

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
)

// RotatedLayout is the UTC timestamp suffix of rotated audit files
// (<path>.<timestamp>, adapters/auditfile): fixed width, sortable as text.
const RotatedLayout = "20060102T150405.000000000Z"

// IsRotated reports whether name is a rotated audit file and returns the
// name of the file it was rotated from.
func IsRotated(name string) (base string, ok bool) {
	// The layout itself contains a '.', so split at its fixed width.
	if len(name) <= len(RotatedLayout)+1 {
		return "", false
	}
	i := len(name) - len(RotatedLayout) - 1
	if name[i] != '.' {
		return "", false
	}
	if _, err := time.Parse(RotatedLayout, name[i+1:]); err != nil {
		return "", false
	}
	return name[:i], true
}

// RotatedSiblings returns the rotated siblings of the audit file path
// (<path>.<timestamp>), oldest first. The file itself need not exist.
func RotatedSiblings(path string) ([]string, error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list rotated files of %s: %w", path, err)
	}
	var out []string
	for _, e := range ents {
		if b, ok := IsRotated(e.Name()); ok && b == base && e.Type().IsRegular() {
			out = append(out, filepath.Join(filepath.Dir(path), e.Name()))
		}
	}
	sort.Strings(out)
	return out, nil
}

// LogFiles expands the audit files an auditor names into the files to read,
// in order: a file is preceded by its rotated siblings (oldest first); a
// rotated file is taken as it is; a directory stands for every audit file
// in it (names ending in .jsonl, each preceded by its rotated siblings).
// Duplicates are read once, where they first appear, however they are
// spelled (./a, a/./b, a symlinked directory: the same file). A named file
// that does not exist is an error unless rotated siblings of it exist.
// Errors name the path, not a command: trace, report and audit verify all
// read audit files through LogFiles and say which of them failed.
func LogFiles(args []string) ([]string, error) {
	var set fileSet
	add := set.add
	withSiblings := func(p string, mustExist bool) error {
		sib, err := RotatedSiblings(p)
		if err != nil {
			return err
		}
		for _, s := range sib {
			add(s)
		}
		fi, err := os.Stat(p)
		switch {
		case err == nil && fi.Mode().IsRegular():
			add(p)
		case err == nil:
			return fmt.Errorf("%s is not a regular file", p)
		case errors.Is(err, fs.ErrNotExist) && (len(sib) > 0 || !mustExist):
		default:
			return err
		}
		return nil
	}
	for _, a := range args {
		fi, err := os.Stat(a)
		switch {
		case err == nil && fi.IsDir():
			ents, err := os.ReadDir(a)
			if err != nil {
				return nil, err
			}
			bases := map[string]bool{}
			for _, e := range ents {
				name := e.Name()
				if b, ok := IsRotated(name); ok {
					name = b
				}
				if strings.HasSuffix(name, ".jsonl") {
					bases[name] = true
				}
			}
			names := make([]string, 0, len(bases))
			for b := range bases {
				names = append(names, b)
			}
			sort.Strings(names)
			for _, b := range names {
				if err := withSiblings(filepath.Join(a, b), false); err != nil {
					return nil, err
				}
			}
		default:
			if _, ok := IsRotated(filepath.Base(a)); ok {
				if err != nil {
					return nil, err
				}
				add(a)
				continue
			}
			if err := withSiblings(a, true); err != nil {
				return nil, err
			}
		}
	}
	out := set.out
	if len(out) == 0 {
		return nil, fmt.Errorf("no audit files (*.jsonl) in %s", strings.Join(args, ", "))
	}
	return out, nil
}

// UniqueFiles returns paths (cleaned) without the ones that name a file an
// earlier one names, however spelled, as LogFiles does: for files named
// exactly (audit verify --exact), which read twice would count every line
// twice. A path that cannot be stat'ed is kept, once per spelling, for its
// reader to report.
func UniqueFiles(paths []string) []string {
	var set fileSet
	for _, p := range paths {
		set.add(p)
	}
	return set.out
}

// fileSet collects paths in order, each file once (os.SameFile).
type fileSet struct {
	out   []string
	infos []os.FileInfo
	seen  map[string]bool
}

func (s *fileSet) add(p string) {
	p = filepath.Clean(p)
	if s.seen[p] {
		return
	}
	if s.seen == nil {
		s.seen = map[string]bool{}
	}
	s.seen[p] = true
	if fi, err := os.Stat(p); err == nil {
		for _, o := range s.infos {
			if os.SameFile(fi, o) {
				return
			}
		}
		s.infos = append(s.infos, fi)
	}
	s.out = append(s.out, p)
}

// LoadFiles indexes the audit files (already in order; see LogFiles),
// each read through an audit.LineReader (a file a running broker writes
// and cuts back meanwhile is read as it holds its lines, or fails with
// audit.ErrCutBelowRead). A rotated file that no longer exists was deleted
// by retention since it was listed (a rotated file is not renamed again):
// its events are gone from the log, and it is skipped, as Live skips it.
// When every file was skipped, so, the error says no audit files are left,
// naming the live path(s) of the rotated files, as keytrail trace does:
// not an empty index, which reads as a log that holds nothing.
func LoadFiles(x *Index, paths []string) error {
	var gone []string // the live paths of the rotated files skipped
	read := 0
	for _, p := range paths {
		f, err := os.Open(p)
		if base, rotated := IsRotated(filepath.Base(p)); rotated && errors.Is(err, fs.ErrNotExist) {
			if live := filepath.Join(filepath.Dir(p), base); !slices.Contains(gone, live) {
				gone = append(gone, live)
			}
			continue
		}
		if err != nil {
			return err
		}
		read++
		_, err = x.Consume(audit.NewLineReader(f, 0))
		f.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
	}
	if read == 0 && len(gone) > 0 {
		return fmt.Errorf("no audit files left in %s: the rotated files listed were deleted meanwhile", strings.Join(gone, ", "))
	}
	return nil
}
