package harness

import (
	"os"
	"path/filepath"
	"testing"
)

func TestRemoveBinaryRemovesItsDirectory(t *testing.T) {
	dir, err := os.MkdirTemp("", "keytrail-bin-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	old := buildPath
	t.Cleanup(func() { buildPath = old })
	buildPath = filepath.Join(dir, "keytrail")
	if err := os.WriteFile(buildPath, []byte("binary"), 0o755); err != nil {
		t.Fatal(err)
	}
	RemoveBinary()
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the binary's directory is still there after RemoveBinary: %v", err)
	}
	buildPath = ""
	RemoveBinary() // nothing built: nothing to do, no panic
}
