package audit_test

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/keytrail/keytrail/broker/audit"
)

// HashLine is the lower-case hex SHA-256 of the line (what "prev" holds),
// and costs one allocation: its string.
func TestHashLineText(t *testing.T) {
	for _, line := range []string{"", `{"v":1,"seq":1}`, strings.Repeat("x", 70000)} {
		sum := sha256.Sum256([]byte(line))
		if got, want := audit.HashLine([]byte(line)), hex.EncodeToString(sum[:]); got != want {
			t.Errorf("HashLine(%.20q) = %q, want %q", line, got, want)
		}
	}
	line := []byte(`{"v":1,"seq":7,"time":"2026-11-28T02:00:00.000000000Z","chain":"c","prev":"","type":"use"}`)
	if n := testing.AllocsPerRun(100, func() { _ = audit.HashLine(line) }); n > 1 {
		t.Errorf("HashLine: %v allocations, want 1", n)
	}
}
