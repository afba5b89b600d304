package trace_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/trace"
)

// TestLoadFilesSkipsRotatedFileDeleted: retention deleted a rotated file
// after LogFiles listed it and before LoadFiles opened it. LoadFiles
// failed ("open ...: no such file or directory"), although the file's
// events are gone from the log; it now skips it, as Live does, and
// indexes the files still there. Any other failure still fails, naming
// the file: the live file gone (renamed by a rotation, not deleted), a
// rotated file that cannot be read.
func TestLoadFilesSkipsRotatedFileDeleted(t *testing.T) {
	lines := sealed(t, "chn_ret", 0, fixtureEvents())
	setup := func(t *testing.T) []string {
		dir := t.TempDir()
		writeLines(t, dir, "audit.jsonl.20250601T100000.000000000Z", lines[:4])
		writeLines(t, dir, "audit.jsonl.20250601T110000.000000000Z", lines[4:8])
		writeLines(t, dir, "audit.jsonl", lines[8:])
		files, err := trace.LogFiles([]string{filepath.Join(dir, "audit.jsonl")})
		if err != nil || len(files) != 3 {
			t.Fatalf("fixture: LogFiles = %v, %v", files, err)
		}
		return files
	}

	t.Run("deleted", func(t *testing.T) {
		files := setup(t)
		if err := os.Remove(files[0]); err != nil { // retention: the oldest
			t.Fatal(err)
		}
		x, _ := trace.NewIndex(trace.Options{})
		if err := trace.LoadFiles(x, files); err != nil {
			t.Fatalf("LoadFiles with %s deleted by retention after the listing = %v, want it skipped", files[0], err)
		}
		want, _ := trace.NewIndex(trace.Options{})
		if err := trace.LoadFiles(want, []string{writeLines(t, t.TempDir(), "audit.jsonl", lines[4:])}); err != nil {
			t.Fatal(err)
		}
		if got, want := x.Stats(), want.Stats(); got != want {
			t.Errorf("LoadFiles with %s deleted: Stats() = %+v, want %+v (the files still there)", files[0], got, want)
		}
		if got, want := seqs(x.Events()), seqs(want.Events()); strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("LoadFiles with %s deleted: events %v, want %v", files[0], got, want)
		}
	})

	t.Run("live-file-gone", func(t *testing.T) {
		files := setup(t)
		if err := os.Remove(files[2]); err != nil {
			t.Fatal(err)
		}
		x, _ := trace.NewIndex(trace.Options{})
		if err := trace.LoadFiles(x, files); err == nil || !strings.Contains(err.Error(), files[2]) {
			t.Errorf("LoadFiles with the live file %s gone = %v, want an error naming it", files[2], err)
		}
	})

	// Every file listed is gone: the live file was not named (LogFiles
	// lists the rotated siblings of a path that names no file), and
	// retention deleted the rotated ones. LoadFiles returned nil and an
	// empty index, where keytrail trace says "no audit files left"; it now
	// says so too, naming the live path.
	t.Run("all-deleted", func(t *testing.T) {
		files := setup(t)
		live := files[2]
		if err := os.Remove(live); err != nil {
			t.Fatal(err)
		}
		rotated, err := trace.LogFiles([]string{live})
		if err != nil || len(rotated) != 2 {
			t.Fatalf("fixture: LogFiles without the live file = %v, %v", rotated, err)
		}
		for _, p := range rotated {
			if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}
		x, _ := trace.NewIndex(trace.Options{})
		err = trace.LoadFiles(x, rotated)
		if err == nil || !strings.Contains(err.Error(), "no audit files left") || !strings.Contains(err.Error(), live) {
			t.Errorf("LoadFiles with every file listed deleted = %v, want \"no audit files left\" naming %s", err, live)
		}
		if n := x.Stats().Events; n != 0 {
			t.Errorf("LoadFiles with every file listed deleted indexed %d events", n)
		}
	})

	t.Run("rotated-unreadable", func(t *testing.T) {
		files := setup(t)
		// A directory where the rotated file was: opened, not read.
		if err := os.Remove(files[1]); err != nil {
			t.Fatal(err)
		}
		if err := os.Mkdir(files[1], 0o700); err != nil {
			t.Fatal(err)
		}
		x, _ := trace.NewIndex(trace.Options{})
		if err := trace.LoadFiles(x, files); err == nil || !strings.Contains(err.Error(), files[1]) {
			t.Errorf("LoadFiles with %s unreadable = %v, want an error naming it", files[1], err)
		}
	})
}
