package policies

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"
)

// TestLoadFileErrorsNameTheFile: a policy file larger than MaxFileSize and
// a directory with no policy file were said with the loader's "policies: "
// prefix ("policies: P: larger than N bytes", "policies: D: no *.yaml or
// *.yml files in directory"), unlike the config file ("P: larger than N
// bytes") and a policy file that is not a regular file. They name the file
// as those do now, by Load and LoadFS; the system's errors keep the prefix,
// as the config file's keep "config: ".
func TestLoadFileErrorsNameTheFile(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, []byte("# "+strings.Repeat("a", MaxFileSize)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	bigDir := filepath.Join(dir, "bigdir")
	if err := os.Mkdir(bigDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(big, filepath.Join(bigDir, "a.yaml")); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(dir, "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	size := ": larger than " + strconv.Itoa(MaxFileSize) + " bytes"
	for _, tt := range []struct{ path, want string }{
		{big, big + size},
		{bigDir, filepath.Join(bigDir, "a.yaml") + size},
		{empty, empty + ": no *.yaml or *.yml files in directory"},
	} {
		if _, err := Load(tt.path); err == nil || err.Error() != tt.want {
			t.Errorf("Load(%s) = %v, want %q", tt.path, err, tt.want)
		}
	}
	if _, err := Load(filepath.Join(dir, "nope")); err == nil || err.Error() != "policies: stat "+filepath.Join(dir, "nope")+": no such file or directory" {
		t.Errorf("Load(missing) = %v, want the system's error with the \"policies: \" prefix", err)
	}

	fsys := fstest.MapFS{
		"p/big.yaml":    {Data: []byte("# " + strings.Repeat("a", MaxFileSize) + "\n")},
		"d/a.yaml":      {Data: []byte("# " + strings.Repeat("a", MaxFileSize) + "\n")},
		"e/readme.txt":  {Data: []byte("x")},
		"odd\x01/x.txt": {Data: []byte("x")},
	}
	for _, tt := range []struct{ path, want string }{
		{"p/big.yaml", "p/big.yaml" + size},
		{"d", "d/a.yaml" + size},
		{"e", "e: no *.yaml or *.yml files in directory"},
		{"odd\x01", `"odd\x01": no *.yaml or *.yml files in directory`},
	} {
		if _, err := LoadFS(fsys, tt.path); err == nil || err.Error() != tt.want {
			t.Errorf("LoadFS(%q) = %v, want %q", tt.path, err, tt.want)
		}
	}
}
