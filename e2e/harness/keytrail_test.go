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

func TestNoRaceExitSleep(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"ok/unset", "", "atexit_sleep_ms=0"},
		{"ok/other-options-kept", "halt_on_error=1 log_path=/tmp/race", "halt_on_error=1 log_path=/tmp/race atexit_sleep_ms=0"},
		{"ok/own-sleep-kept", "halt_on_error=1 atexit_sleep_ms=500", "halt_on_error=1 atexit_sleep_ms=500"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := NoRaceExitSleep(tc.in); got != tc.want {
				t.Errorf("NoRaceExitSleep(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
