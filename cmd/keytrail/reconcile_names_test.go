package main

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/trace"
)

// The audit index reads the live file and the sink's rotated files
// (base.<trace.RotatedLayout>), as trace and audit verify do: not a compressed
// copy (base.<time>.gz, which logrotate makes), a backup (base.bak) or
// an editor's file next to them, whose bytes are not audit lines.
func TestAuditFileNamesOnlyLiveAndRotated(t *testing.T) {
	day := time.Date(2026, 11, 29, 10, 0, 0, 0, time.UTC)
	rotated := func(daysBefore int) string { return day.AddDate(0, 0, -daysBefore).Format(trace.RotatedLayout) }
	dir := t.TempDir()
	for _, n := range []string{
		"audit.jsonl",
		"audit.jsonl." + rotated(0),
		"audit.jsonl." + rotated(1),
		"audit.jsonl." + rotated(2) + ".gz",
		"audit.jsonl.bak",
		"audit.jsonl.swp",
		"other.jsonl." + rotated(0),
	} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "audit.jsonl."+rotated(3)), 0o700); err != nil {
		t.Fatal(err)
	}
	got, err := auditFileNames(dir, "audit.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"audit.jsonl", "audit.jsonl." + rotated(1), "audit.jsonl." + rotated(0)}
	if !slices.Equal(got, want) {
		t.Errorf("auditFileNames = %q, want %q", got, want)
	}
}
