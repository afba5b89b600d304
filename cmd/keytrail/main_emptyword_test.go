package main

import (
	"errors"
	"testing"
)

// TestEmptyCommandWordSuggestsNothing: an empty or blank word where a
// command goes ('keytrail "$CMD"' with CMD unset) got every command as a
// suggestion ('did you mean "audit", "bench", ... or "version"?'), since
// each name has the empty prefix. It is now called empty, with no
// suggestion; exit 2.
func TestEmptyCommandWordSuggestsNothing(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{""}, `unknown command "" for "keytrail": the command is empty (a shell variable not set?) (see keytrail --help)`},
		{[]string{" "}, `unknown command " " for "keytrail": the command is empty (a shell variable not set?) (see keytrail --help)`},
		{[]string{"policy", ""}, `policy: unknown command "" for "keytrail policy": the command is empty (a shell variable not set?) (see keytrail policy --help)`},
	} {
		_, _, err := runCLI(t, nil, tt.args...)
		var ee exitError
		if !errors.As(err, &ee) || ee.code != exitUsage || ee.msg != tt.want {
			t.Errorf("keytrail %q = %v, want exit 2 with %q", tt.args, err, tt.want)
		}
	}
}
