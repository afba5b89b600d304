package e2e

import (
	"fmt"
	"os"
	"testing"

	"github.com/keytrail/keytrail/e2e/harness"
)

// TestMain removes the keytrail binary the harness built for this run:
// every run used to leave ~45 MB in the temp directory. Under -race, the
// binaries the tests run exit without the race detector's 1 s sleep
// (harness.SkipRaceExitSleep).
func TestMain(m *testing.M) {
	if err := harness.SkipRaceExitSleep(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: %v\n", err)
		os.Exit(2)
	}
	code := m.Run()
	harness.RemoveBinary()
	os.Exit(code)
}
