package redisstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/redisstore"
	"github.com/keytrail/keytrail/adapters/storetest"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/e2e/harness"
)

// BenchmarkUpdateLargeRevocation: one update of the worst-case record of a
// revocation naming KEYTRAIL_BENCH_REVS issuances (default 50,000): every
// one pending with a failure, and the held decision (revoke events listing
// them all), settled at once (everything revoked, the decision cleared).
func BenchmarkUpdateLargeRevocation(b *testing.B) {
	n := benchWindowRevs(b)
	r := harness.StartRedis(b)
	s := newStore(b, r, redisstore.Options{Prefix: "{bench-big}:", Timeout: time.Minute})
	ctx := context.Background()
	ids := make([]string, n)
	failed := make([]broker.RevokeFailure, n)
	for i := range ids {
		ids[i] = broker.NewID(broker.PrefixIssuance)
		failed[i] = broker.RevokeFailure{IssuanceID: ids[i], Error: "the backend revocation failed (vault: 503 Service Unavailable); retrying"}
	}
	var decision []*audit.Event
	for lo := 0; lo < n; lo += 25_000 {
		hi := min(lo+25_000, n)
		decision = append(decision, &audit.Event{Type: audit.TypeRevoke, RevocationID: "rev_big", Workload: "payments", Admin: "secops:alice",
			Reason: "incident", Details: map[string]any{"issuance_ids": ids[lo:hi], "decided_at": "2026-11-26T12:00:00Z"}})
	}
	now := storetest.Epoch()
	b.ReportAllocs()
	for b.Loop() {
		b.StopTimer()
		rev := &broker.Revocation{ID: "rev_big", CreatedAt: now, Admin: "secops:alice", Reason: "incident",
			Selector: broker.RevokeSelector{Workload: "payments"}, Matched: n, Revoked: []string{},
			Pending: append([]string{}, ids...), Failed: append([]broker.RevokeFailure{}, failed...), Decision: decision}
		if err := s.PutRevocation(ctx, rev); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		start := time.Now()
		_, err := s.UpdateRevocation(ctx, "rev_big", func(c *broker.Revocation) error {
			c.Revoked, c.Pending, c.Failed, c.Decision = append(c.Revoked, c.Pending...), nil, []broker.RevokeFailure{}, nil
			c.CompletedAt = now
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(time.Since(start).Milliseconds()), "ms/update")
	}
}

// TestUpdateRevocationKeepsCallerDeadline: an update of a large record
// takes longer than the store's per-call Timeout (every update reads,
// decodes, encodes and writes the whole record: 100,000 issuances took
// 2.35 s against the 2 s timeout). The Service gives such an update a
// deadline sized by the record; the store capped it at its Timeout all the
// same, so the update never fit. It now keeps the caller's deadline.
func TestUpdateRevocationKeepsCallerDeadline(t *testing.T) {
	r := harness.StartRedis(t)
	s := newStore(t, r, redisstore.Options{Prefix: "{slow-update}:", Timeout: 500 * time.Millisecond})
	ctx := context.Background()
	now := storetest.Epoch()
	rev := &broker.Revocation{ID: "rev_slow", CreatedAt: now, Admin: "secops:alice", Reason: "incident",
		Selector: broker.RevokeSelector{Workload: "payments"}, Matched: 1, Revoked: []string{}, Pending: []string{"iss_1"}, Failed: []broker.RevokeFailure{}}
	if err := s.PutRevocation(ctx, rev); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	got, err := s.UpdateRevocation(cctx, "rev_slow", func(c *broker.Revocation) error {
		// Work on a large record that outlasts the store's Timeout: the
		// duration itself is what is tested (no condition to wait for).
		time.Sleep(time.Second)
		c.Revoked, c.Pending, c.CompletedAt = []string{"iss_1"}, nil, now
		return nil
	})
	if err != nil || got.CompletedAt.IsZero() {
		t.Fatalf("UpdateRevocation with a 1 m deadline taking 1 s (store Timeout 500 ms) = %+v, %v; want it stored", got, err)
	}
	// Without a deadline of its own, the call is bounded by the Timeout.
	_, err = s.UpdateRevocation(ctx, "rev_slow", func(c *broker.Revocation) error {
		time.Sleep(time.Second) // as above
		return nil
	})
	if err == nil {
		t.Fatal("UpdateRevocation without a deadline taking 1 s (store Timeout 500 ms) = nil, want its timeout")
	}
}
