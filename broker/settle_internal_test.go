package broker

import (
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// TestSettleLargeRevocation records the progress of a revocation of 50,000
// issuances, as Revoke's storeProgress does: an id already recorded as
// revoked, or reported twice, is listed once, in the order first seen, and
// nothing stays pending. (Its cost, once n² and about 17 s of CPU for these
// 50,000 under the store's compare-and-set, is measured by
// BenchmarkSettle, not gated here: timings never gate a test.)
func TestSettleLargeRevocation(t *testing.T) {
	const n = 50_000
	ids := settleIDs(n)
	rev := &Revocation{Pending: append([]string(nil), ids...), Revoked: []string{ids[7]}, Failed: []RevokeFailure{}}
	done := append(append([]string(nil), ids...), ids[3], ids[7]) // two reported twice
	settle(rev, done, nil, time.Unix(0, 0))
	want := append([]string{ids[7]}, ids[:7]...)
	want = append(want, ids[8:]...)
	if d := cmp.Diff(want, rev.Revoked); d != "" {
		t.Errorf("settle(%d ids): revoked (-want +got):\n%s", n, d)
	}
	if len(rev.Pending) != 0 || rev.CompletedAt.IsZero() {
		t.Errorf("settle(%d ids): pending %d, completed %v; want none pending, completed", n, len(rev.Pending), rev.CompletedAt)
	}
}

// BenchmarkSettle: recording a revocation's progress grows about linearly
// with its ids (here 2.2 ms for 5,000 and 38 ms for 50,000; the n² code
// took about 17 s for 50,000).
func BenchmarkSettle(b *testing.B) {
	for _, n := range []int{5_000, 50_000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			ids := settleIDs(n)
			for b.Loop() {
				rev := &Revocation{Pending: append([]string(nil), ids...), Revoked: []string{}, Failed: []RevokeFailure{}}
				settle(rev, ids, nil, time.Unix(0, 0))
			}
		})
	}
}

func settleIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("iss_01JTEST%019d", i)
	}
	return ids
}
