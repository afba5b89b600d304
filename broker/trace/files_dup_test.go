package trace_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/keytrail/keytrail/broker/trace"
)

// The same file named twice in different spellings (./ prefixes as a shell
// glob writes them, a symlinked directory) is read once: read twice, every
// event of it would be counted twice by the report and shown twice by the
// trace.
func TestLogFilesSameFileTwoSpellings(t *testing.T) {
	dir := t.TempDir()
	logs := filepath.Join(dir, "logs")
	if err := os.Mkdir(logs, 0o700); err != nil {
		t.Fatal(err)
	}
	lines := sealed(t, "chn_dup", 0, fixtureEvents())
	writeLines(t, logs, "audit.jsonl.20250601T100000.000000000Z", lines[:5])
	writeLines(t, logs, "audit.jsonl", lines[5:])
	if err := os.Symlink(logs, filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	cases := []struct {
		name string
		args []string
	}{
		{"glob-spelling", []string{"./logs/audit.jsonl", "./logs/audit.jsonl.20250601T100000.000000000Z"}},
		{"dot-segments", []string{"logs/./audit.jsonl", "logs"}},
		{"symlinked-dir", []string{"logs", "link/audit.jsonl"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			files, err := trace.LogFiles(tc.args)
			if err != nil {
				t.Fatal(err)
			}
			if len(files) != 2 {
				t.Errorf("LogFiles(%q) = %q, want the 2 files once each", tc.args, files)
			}
			x, _ := trace.NewIndex(trace.Options{})
			if err := trace.LoadFiles(x, files); err != nil {
				t.Fatal(err)
			}
			res, err := x.Lookup("use_U1")
			if err != nil {
				t.Fatal(err)
			}
			if len(res.Uses) != 3 { // use, use_result, shared_use_suspected
				t.Errorf("Lookup(use_U1) over %q: %d use events, want 3", tc.args, len(res.Uses))
			}
		})
	}
}
