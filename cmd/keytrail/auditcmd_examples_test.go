package main

import (
	"strings"
	"testing"
)

// TestAuditVerifyExamplesPass: the examples of 'audit verify --help' run
// against a signed log that ends with a checkpoint (their key and path
// replaced by the test's) pass. One was '--json --require-checkpoint DIR'
// without --key or --jwks: no checkpoint signature is then checked, so
// --require-checkpoint fails every log. Examples that need data from
// outside the files (--jwks, --expect-seq) are not run.
func TestAuditVerifyExamplesPass(t *testing.T) {
	dir := t.TempDir()
	signer, pubFile := devCheckpointSigner(t, dir)
	path, _ := writeSignedAudit(t, dir, signer)
	if _, _, err := runCLI(t, nil, "audit", "verify", "--key", pubFile, "--require-checkpoint", path); err != nil {
		t.Fatalf("the test's log does not verify with --require-checkpoint: %v", err)
	}
	help, _, err := runCLI(t, nil, "audit", "verify", "--help")
	if err != nil {
		t.Fatal(err)
	}
	_, ex, ok := strings.Cut(help, "\nExamples:\n")
	if !ok {
		t.Fatal("audit verify --help has no Examples")
	}
	ex, _, _ = strings.Cut(ex, "\n\n")
	ran := 0
	for _, line := range strings.Split(ex, "\n") {
		w := strings.Fields(line)
		if len(w) < 3 || w[0] != "keytrail" || strings.Contains(line, "--jwks") || strings.Contains(line, "--expect-seq") {
			continue
		}
		args := []string{}
		for i := 1; i < len(w); i++ {
			switch {
			case w[i] == "--key" && i+1 < len(w):
				args = append(args, w[i], pubFile)
				i++
			case !strings.HasPrefix(w[i], "-") && i > 2:
				args = append(args, path)
			default:
				args = append(args, w[i])
			}
		}
		ran++
		if out, _, err := runCLI(t, nil, args...); err != nil {
			t.Errorf("example %q (as %q) fails on a log that verifies: %v\n%s", line, args, err, out)
		}
	}
	if ran == 0 {
		t.Fatalf("no example of audit verify was run:\n%s", ex)
	}
}
