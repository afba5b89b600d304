package main

import (
	"errors"
	"strings"
	"testing"
)

// TestExclusiveFlagsNamedAsFlags: two flags that cannot go together were
// reported in cobra's words, "if any flags in the group [out out-dir] are
// set none of the others can be; [out out-dir] were all set": flag names
// without their dashes, in a sentence a user has to decode, unlike every
// other usage error ("give exactly one of --issuance, --session, ...").
// Now the flags given are named with dashes, in the group's order, and the
// choice is stated; still exit 2.
func TestExclusiveFlagsNamedAsFlags(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"fetch", "--grant", "g", "--out", "a", "--out-dir", "b"},
			"fetch: --out and --out-dir cannot be used together: give one of --out or --out-dir (see keytrail fetch --help)"},
		{[]string{"fetch", "--grant", "g", "--out", "-", "--github-actions", "--identity-token-file", "t"},
			"fetch: --identity-token-file and --github-actions cannot be used together: give one of --identity-token-file, --identity-token-env or --github-actions (see keytrail fetch --help)"},
		{[]string{"exec", "--grant", "g", "--env", "X", "--identity-token-env", "T", "--identity-token-file", "t", "--github-actions", "--", "true"},
			"exec: --identity-token-file, --identity-token-env and --github-actions cannot be used together: give one of --identity-token-file, --identity-token-env or --github-actions (see keytrail exec --help)"},
	} {
		_, _, err := runCLI(t, nil, tt.args...)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != 2 || ee.msg != tt.want {
			t.Errorf("keytrail %s = %v, want exit 2 with %q", strings.Join(tt.args, " "), err, tt.want)
		}
	}
}
