package e2e

import (
	"os"
	"testing"

	"github.com/keytrail/keytrail/e2e/harness"
)

// TestMain removes the keytrail binary the harness built for this run:
// every run used to leave ~45 MB in the temp directory.
func TestMain(m *testing.M) {
	code := m.Run()
	harness.RemoveBinary()
	os.Exit(code)
}
