package main

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

// TestPolicyCheckSuggestsField: an unknown field near a known one of its
// mapping is named with the field meant, keeping file, field path and
// line; the server configuration's unknown fields too.
func TestPolicyCheckSuggestsField(t *testing.T) {
	dir := t.TempDir()
	pol := writeFile(t, dir, "p.yaml", "version: 1\nissuers:\n  - name: gh\n    issuer: https://token.actions.githubusercontent.com\n    sesion_claim: run_id\n")
	_, stderr, err := runCLI(t, nil, "policy", "check", pol)
	if exitCode(err) != 1 {
		t.Fatalf("policy check = %v, want exit 1", err)
	}
	if want := pol + ": issuers[0].sesion_claim: unknown field, did you mean session_claim? (line 5)"; !strings.Contains(stderr, want) {
		t.Errorf("policy check stderr lacks %q:\n%s", want, stderr)
	}

	cfg := writeFile(t, dir, "c.yaml", "listen: 127.0.0.1:8080\npolicy: "+pol+"\nlog:\n  levle: debug\n")
	_, stderr, err = runCLI(t, nil, "config", "check", "--config", cfg)
	if exitCode(err) != 1 {
		t.Fatalf("config check = %v, want exit 1", err)
	}
	if want := cfg + ": log.levle: unknown field, did you mean level? (line 4)"; !strings.Contains(stderr, want) {
		t.Errorf("config check stderr lacks %q:\n%s", want, stderr)
	}
}

// TestConfigCheckMissingFile: a configuration that cannot be read is one
// line, "config check: " and the system's error naming the file, as other
// commands print theirs (keytrail: audit verify: stat ...), not the
// error without the command on one line and "configuration not read" on
// the next.
func TestConfigCheckMissingFile(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.yaml")
	_, stderr, err := runCLI(t, nil, "config", "check", "--config", missing)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("config check of a missing file = %v, want exit 1", err)
	}
	if want := "config check: open " + missing + ": no such file or directory"; ee.msg != want {
		t.Errorf("config check of a missing file: message %q, want %q", ee.msg, want)
	}
	if stderr != "" {
		t.Errorf("config check of a missing file: stderr %q besides the message, want nothing", stderr)
	}
}

// TestConfigCheckDirectory: a --config that is a directory is one line
// naming it and what it is, as a missing file is, not the reason on one
// line and "invalid configuration" on the next.
func TestConfigCheckDirectory(t *testing.T) {
	dir := t.TempDir()
	_, stderr, err := runCLI(t, nil, "config", "check", "--config", dir)
	var ee exitError
	if !errors.As(err, &ee) || ee.code != 1 {
		t.Fatalf("config check of a directory = %v, want exit 1", err)
	}
	if want := "config check: " + dir + ": is a directory, not a regular file"; ee.msg != want {
		t.Errorf("config check of a directory: message %q, want %q", ee.msg, want)
	}
	if stderr != "" {
		t.Errorf("config check of a directory: stderr %q besides the message, want nothing", stderr)
	}
}
