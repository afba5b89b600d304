package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/policies"
)

// TestLoadConfigSizeCap: the config file is capped as a policy file is
// (policies.MaxFileSize, 4 MiB), so a mistaken path (a log, a binary, /dev/zero) is not read
// whole. A file of exactly the cap gets past the size check (here to fail
// validation instead); one byte more is refused, naming the file.
func TestLoadConfigSizeCap(t *testing.T) {
	const limit = policies.MaxFileSize
	dir := t.TempDir()
	// A YAML comment of n bytes in all: a document with no settings.
	write := func(name string, n int) string {
		t.Helper()
		b := make([]byte, n)
		for i := range b {
			b[i] = 'a'
		}
		copy(b, "# ")
		b[n-1] = '\n'
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	getenv := func(string) string { return "" }
	const sizeErr = "larger than 4194304 bytes"

	over := write("over.yaml", limit+1)
	_, err := LoadConfig(over, getenv)
	if err == nil || err.Error() != over+": "+sizeErr {
		t.Errorf("LoadConfig(a file of %d bytes) = %v; want %q", limit+1, err, over+": "+sizeErr)
	}

	at := write("at.yaml", limit)
	_, err = LoadConfig(at, getenv)
	if err != nil && strings.Contains(err.Error(), sizeErr) {
		t.Errorf("LoadConfig(a file of exactly %d bytes) = %v; want past the size check", limit, err)
	}
}
