package main

import (
	"strings"
	"testing"
)

// TestPolicyExplainNamesMissingFlag: 'policy explain' without --token or
// --grant said "--token and --grant are required" whichever one was given.
// It now names the one missing (both when neither is given); exit 2.
func TestPolicyExplainNamesMissingFlag(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		want    string
		notWant string
	}{
		{[]string{"--token", "t.jwt"}, "policy explain: --grant is required", "--token"},
		{[]string{"--grant", "g"}, "policy explain: --token is required", "--grant"},
		{nil, "policy explain: --token and --grant are required", ""},
	} {
		args := append([]string{"policy", "explain", "--policy", "../../policies/examples"}, tc.args...)
		_, _, err := runCLI(t, nil, args...)
		if c := exitCode(err); c != exitUsage {
			t.Errorf("%v: exit %d (%v), want %d", tc.args, c, err, exitUsage)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %q, want %q", tc.args, err, tc.want)
		}
		if tc.notWant != "" && strings.Contains(err.Error(), tc.notWant) {
			t.Errorf("%v: %q names %s, which was given", tc.args, err, tc.notWant)
		}
	}
}
