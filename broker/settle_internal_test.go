package broker

import (
	"fmt"
	"testing"
	"time"
)

// TestSettleLargeRevocation records the progress of a revocation of 50,000
// issuances, all revoked at once, as Revoke's storeProgress does. The record
// is updated under the store's compare-and-set (with memstore, under its
// lock, so every other store call waits), and its cost used to grow with n²:
// about 10 s of CPU here. Linear, it takes a few tens of ms (a few hundred
// under the race detector); the bound leaves room for a loaded machine.
func TestSettleLargeRevocation(t *testing.T) {
	const n = 50_000
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("iss_01JTEST%019d", i)
	}
	rev := &Revocation{Pending: append([]string(nil), ids...), Revoked: []string{}, Failed: []RevokeFailure{}}
	start := time.Now()
	settle(rev, ids, nil, time.Unix(0, 0))
	took := time.Since(start)
	if len(rev.Revoked) != n || len(rev.Pending) != 0 || rev.CompletedAt.IsZero() {
		t.Fatalf("settle(%d ids): revoked %d, pending %d, completed %v", n, len(rev.Revoked), len(rev.Pending), rev.CompletedAt)
	}
	if took > 2*time.Second {
		t.Errorf("settle(%d ids) took %v, want under 2s (linear in the ids)", n, took)
	}
}
