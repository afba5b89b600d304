package redisstore

import (
	"context"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// TestDeleteBlockSentAgain: go-redis sends a command again when a network
// error lost its reply, after the command ran. DeleteBlock's script run a
// second time with the same KEYS and ARGV (as go-redis resends them) answers
// "deleted", whether nothing happened in between or a revocation blocked
// the workload again (that block stays); another call (another id) is told
// what it finds.
func TestDeleteBlockSentAgain(t *testing.T) {
	s := newInternalStore(t, "{resend}:")
	ctx := context.Background()
	block := func(w, rev string) {
		t.Helper()
		if err := s.PutBlock(ctx, broker.Block{Workload: w, RevocationID: rev, CreatedAt: time.Now()}); err != nil {
			t.Fatalf("PutBlock(%s, %s) = %v", w, rev, err)
		}
	}
	run := func(keys []string, args []any) int64 {
		t.Helper()
		n, err := deleteBlockScript.Run(ctx, s.client, keys, args...).Int64()
		if err != nil {
			t.Fatalf("deleteBlockScript(%v) = %v", args, err)
		}
		return n
	}
	for _, c := range []struct {
		name    string
		between func(w string)
		want    string // the block standing at the end: its revocation, "" for none
	}{
		{"ok/nothing-between", func(string) {}, ""},
		{"ok/blocked-again-between", func(w string) { block(w, "rev_2") }, "rev_2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			w := "w-" + c.name[3:]
			block(w, "rev_1")
			keys, args := s.deleteBlockArgs(w, "rev_1", "call-1")
			if got := run(keys, args); got != 1 {
				t.Fatalf("first run = %d, want 1 (deleted)", got)
			}
			c.between(w)
			if got := run(keys, args); got != 1 {
				t.Errorf("the same call sent again = %d, want 1 (deleted by this call)", got)
			}
			// Another call, with its own id, is told what stands.
			other := map[string]int64{"": 0, "rev_2": -1}[c.want]
			okeys, oargs := s.deleteBlockArgs(w, "rev_1", "call-2")
			if got := run(okeys, oargs); got != other {
				t.Errorf("another call = %d, want %d", got, other)
			}
			b, err := s.GetBlock(ctx, w)
			switch {
			case c.want == "" && err == nil:
				t.Errorf("GetBlock() = %+v, want no block", b)
			case c.want != "" && (err != nil || b.RevocationID != c.want):
				t.Errorf("GetBlock() = %+v, %v; want %s's block standing", b, err, c.want)
			}
			if ttl, err := s.client.PTTL(ctx, keys[2]).Result(); err != nil || ttl <= 0 || ttl > s.unblockTTL() {
				t.Errorf("PTTL(%s) = %v, %v; want up to %v", keys[2], ttl, err, s.unblockTTL())
			}
		})
	}
}
