package main

import (
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/policies"
)

// TestPolicyFileErrorsNameTheFileAsConfigFiles: a policy file larger than
// policies.MaxFileSize and a policy directory with no policy file were said
// with the loader's "policies: " prefix ("policy not read: policies: P:
// larger than N bytes"), unlike the config file ("P: larger than N bytes")
// and a policy file that is a named pipe. keytrail policy check and config
// check say them as those now, on one line.
func TestPolicyFileErrorsNameTheFileAsConfigFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	big := writeFile(t, dir, "big.yaml", "# "+strings.Repeat("a", policies.MaxFileSize)+"\n")
	empty := filepath.Join(dir, "empty")
	if err := os.Mkdir(empty, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ path, want string }{
		{big, big + ": larger than " + strconv.Itoa(policies.MaxFileSize) + " bytes"},
		{empty, empty + ": no *.yaml or *.yml files in directory"},
	} {
		_, stderr, err := runCLI(t, nil, "policy", "check", tt.path)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 1 || ee.msg != "policy not read: "+tt.want || stderr != "" {
			t.Errorf("keytrail policy check %s = %v (stderr %q), want exit 1: %q", tt.path, err, stderr, "policy not read: "+tt.want)
		}

		cfg := writeFile(t, dir, "config.yaml", "public_url: https://keytrail.internal\npolicy: "+tt.path+
			"\nvault: {address: https://vault.internal:8200}\naudit: {file: "+filepath.Join(dir, "audit.jsonl")+"}\n")
		out, stderr, err := runCLI(t, nil, "config", "check", "--config", cfg)
		all := out + stderr
		if err != nil {
			all += err.Error()
		}
		if err == nil || strings.Contains(all, "policies: ") || !strings.Contains(all, tt.want) {
			t.Errorf("config check (policy %s) = %v\n%s%s\nwant it to say %q without \"policies: \"", tt.path, err, out, stderr, tt.want)
		}
	}
}
