package main

import (
	"strings"
	"testing"
)

// TestGroupHelpHasExamples: keytrail --help, and the --help of the
// commands that only group others (audit, config, policy), showed no
// example, and keytrail --help did not say what the exit statuses mean,
// so a first-time user's first screen had no command line to start from
// (not even keytrail dev). Each now shows examples that run one of its
// subcommands, and keytrail --help states the exit status shared by all
// (0 success, 2 usage) and where the others are told.
func TestGroupHelpHasExamples(t *testing.T) {
	for _, path := range [][]string{nil, {"audit"}, {"config"}, {"policy"}, {"completion"}} {
		name := strings.Join(append([]string{"keytrail"}, path...), " ")
		out, _, err := runCLI(t, nil, append(path, "--help")...)
		if err != nil {
			t.Errorf("%s --help: %v", name, err)
			continue
		}
		_, ex, ok := strings.Cut(out, "\nExamples:\n")
		if !ok {
			t.Errorf("%s --help has no Examples:\n%s", name, out)
			continue
		}
		ex, _, _ = strings.Cut(ex, "\n\n")
		cmd, _, err := newRootCmd(&env{}).Find(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(ex, "\n") {
			runs := false
			for _, sub := range cmd.Commands() {
				if strings.Contains(line, name+" "+sub.Name()+" ") || strings.HasSuffix(line, name+" "+sub.Name()) {
					runs = true
				}
			}
			if !runs {
				t.Errorf("%s --help example %q runs none of its commands", name, line)
			}
		}
		if path == nil && (!strings.Contains(out, "Exit status:") || !strings.Contains(out, "2 usage")) {
			t.Errorf("keytrail --help does not state the exit status:\n%s", out)
		}
	}
}
