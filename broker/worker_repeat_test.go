package broker_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestWorkerNoRepeatedResult: while the store refuses writes but serves
// reads, every worker pass over a pending revocation does the same work,
// its progress write is refused (not applied), and the record stays
// pending. The worker writes its revoke_result on a failed progress write
// all the same (the write may have been applied), so it wrote the same
// revoke_result (by worker, 200) after every backoff: the audit log filled
// with identical events. Now a revoke_result identical in content to the
// last one the worker wrote for the revocation is not written again after a
// refused write; one that differs is. Once the store takes writes the
// record completes and the completing pass writes its result again (the
// one copy), so that it is the revocation's last word even when another
// writer (here: a 202 as Revoke's request would write it) wrote a
// different result since: with the dedupe on acknowledged passes too, that
// 202 stayed the last revoke_result of a completed revocation.
func TestWorkerNoRepeatedResult(t *testing.T) {
	for _, tc := range []struct {
		name string
		gone bool // the pending issuance is past retention (not found)
	}{
		{"past-retention", true},
		{"backend-retried", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			f, ro := newFaultFixture(t, false)
			is := f.issue(t, "payments")
			f.rv.setErr(broker.Unavailable("vault_unavailable", time.Second, errors.New("connection refused")))
			rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: is.ID}, "INC-60", broker.RevokeOptions{}, "req_1")
			if err != nil || !slices.Equal(rev.Pending, []string{is.ID}) {
				t.Fatalf("Revoke() = %+v, %v; want %s pending", rev, err, is.ID)
			}
			f.rv.setErr(nil)
			if tc.gone {
				ro.gone.Store(&is.ID)
			}
			ro.failUpdates(updateRefused, -1)
			w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: time.Second, MaxBackoff: 4 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			byWorker := func() []map[string]any {
				var out []map[string]any
				for _, ev := range f.sink.Events() {
					if ev.Type == "revoke_result" && ev.RevocationID == rev.ID && ev.Details["by"] == "worker" {
						out = append(out, ev.Details)
					}
				}
				return out
			}
			const passes = 4
			for range passes {
				f.advance(4 * time.Second) // past any backoff: every pass is due
				if err := w.Tick(ctx); !errors.Is(err, broker.ErrUnavailable) {
					t.Fatalf("worker pass with writes refused = %v, want ErrUnavailable", err)
				}
			}
			if stored, err := f.mem.GetRevocation(ctx, rev.ID); err != nil || !slices.Equal(stored.Pending, []string{is.ID}) {
				t.Fatalf("stored revocation after the refused passes: %+v, %v; want %s still pending", stored, err, is.ID)
			}
			if got := byWorker(); len(got) != 1 {
				t.Errorf("%d passes with the progress write refused wrote %d revoke_result events by worker, want 1 (the same content each time)", passes, len(got))
			}

			// Another writer's result for the same revocation comes
			// between (a 202 pending, as a concurrent Revoke whose own
			// write was refused too would write it).
			other := *lastResult(t, f, rev.ID)
			other.Details = map[string]any{"matched": 1, "pending": []string{is.ID}}
			other.Outcome = &audit.Outcome{Status: 202}
			if err := f.sink.Append(ctx, &other); err != nil {
				t.Fatal(err)
			}

			// The store takes writes again: the record completes, and the
			// completing pass's result is the last word.
			ro.failUpdates(updateOK, 0)
			f.advance(4 * time.Second)
			if err := w.Tick(ctx); err != nil {
				t.Fatal(err)
			}
			stored, err := f.mem.GetRevocation(ctx, rev.ID)
			if err != nil || !slices.Equal(stored.Revoked, []string{is.ID}) || len(stored.Pending) != 0 || stored.CompletedAt.IsZero() {
				t.Fatalf("stored revocation at the end: %+v, %v; want complete, %s revoked", stored, err, is.ID)
			}
			got := byWorker()
			if len(got) != 2 {
				t.Errorf("revoke_result events by worker at the end: %d, want 2 (the refused passes' one, the completing pass's)", len(got))
			}
			last := lastResult(t, f, rev.ID)
			if revoked, _ := last.Details["revoked"].([]string); last.Details["by"] != "worker" || last.Outcome.Status != 200 || !slices.Equal(revoked, []string{is.ID}) {
				t.Errorf("last revoke_result = by %v, %d, revoked %v; want the worker's, 200, %s revoked", last.Details["by"], last.Outcome.Status, last.Details["revoked"], is.ID)
			}
		})
	}
}
