package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/keytrail/keytrail/broker"
)

// noticeWait bounds the wait for one notice (or a channel's close) that
// must come: it fails the test instead of hanging it, and sets no pace.
const noticeWait = 10 * time.Second

// RunNotifier is the contract suite of a broker.Notifier (memstore's
// Notifier, the Redis store's pub/sub): what broker.Notifier's doc comment
// promises, checked the same way for both. newNotifier returns a Notifier
// whose notices no other call's subscribers see.
func RunNotifier(t *testing.T, newNotifier func(t *testing.T) broker.Notifier) {
	// Notices are compared as the revocation cache reads them: an empty
	// list and none are the same.
	opts := cmpopts.EquateEmpty()
	subscribe := func(t *testing.T, n broker.Notifier, ctx context.Context) <-chan broker.Notice {
		t.Helper()
		ch, err := n.Subscribe(ctx)
		if err != nil {
			t.Fatalf("Subscribe() = %v, want nil", err)
		}
		return ch
	}
	next := func(t *testing.T, ch <-chan broker.Notice) (broker.Notice, bool) {
		t.Helper()
		select {
		case got, ok := <-ch:
			return got, ok
		case <-time.After(noticeWait):
			t.Fatalf("no notice within %s", noticeWait)
			return broker.Notice{}, false
		}
	}

	t.Run("ok/every-subscriber-in-order", func(t *testing.T) {
		n := newNotifier(t)
		a, b := subscribe(t, n, ctx(t)), subscribe(t, n, ctx(t))
		want := []broker.Notice{
			{RevocationID: "rev_1", Revoked: []string{"iss_1", "iss_2"}, Blocked: []string{"payments-api"}},
			{RevocationID: "rev_1", Unblocked: []string{"payments-api"}},
			{Revoked: []string{"iss_3"}},
		}
		for _, w := range want {
			if err := n.Publish(ctx(t), w); err != nil {
				t.Fatalf("Publish(%+v) = %v, want nil", w, err)
			}
		}
		for name, ch := range map[string]<-chan broker.Notice{"a": a, "b": b} {
			for i, w := range want {
				got, ok := next(t, ch)
				if !ok {
					t.Fatalf("subscriber %s closed before notice %d", name, i)
				}
				if d := cmp.Diff(w, got, opts); d != "" {
					t.Errorf("subscriber %s notice %d (-want +got):\n%s", name, i, d)
				}
			}
		}
	})
	// A notice published again by another Publish call is another notice:
	// a block, its unblock and the same block again (a revocation that
	// blocked the workload again) all reach every subscriber, in order
	// (the Redis store drops only a PUBLISH its client sent again).
	t.Run("ok/same-notice-published-again-delivered-again", func(t *testing.T) {
		n := newNotifier(t)
		ch := subscribe(t, n, ctx(t))
		block := broker.Notice{RevocationID: "rev_1", Blocked: []string{"payments-api"}}
		want := []broker.Notice{block, {RevocationID: "rev_1", Unblocked: []string{"payments-api"}}, block, block}
		for _, w := range want {
			if err := n.Publish(ctx(t), w); err != nil {
				t.Fatalf("Publish(%+v) = %v, want nil", w, err)
			}
		}
		for i, w := range want {
			got, ok := next(t, ch)
			if !ok {
				t.Fatalf("subscription closed before notice %d", i)
			}
			if d := cmp.Diff(w, got, opts); d != "" {
				t.Errorf("notice %d (-want +got):\n%s", i, d)
			}
		}
	})

	t.Run("ok/notice-is-a-copy", func(t *testing.T) {
		n := newNotifier(t)
		ch := subscribe(t, n, ctx(t))
		in := broker.Notice{RevocationID: "rev_c", Revoked: []string{"iss_1"}, Blocked: []string{"w"}, Unblocked: []string{"v"}}
		if err := n.Publish(ctx(t), in); err != nil {
			t.Fatalf("Publish() = %v, want nil", err)
		}
		in.Revoked[0], in.Blocked[0], in.Unblocked[0] = "mutated", "mutated", "mutated"
		got, _ := next(t, ch)
		want := broker.Notice{RevocationID: "rev_c", Revoked: []string{"iss_1"}, Blocked: []string{"w"}, Unblocked: []string{"v"}}
		if d := cmp.Diff(want, got, opts); d != "" {
			t.Errorf("notice after the publisher changed its copy (-want +got):\n%s", d)
		}
	})
	t.Run("ok/closed-when-ctx-ends", func(t *testing.T) {
		n := newNotifier(t)
		sctx, cancel := context.WithCancel(ctx(t))
		ch := subscribe(t, n, sctx)
		cancel()
		for {
			if _, ok := next(t, ch); !ok {
				return
			}
		}
	})
	t.Run("ok/slow-subscriber-does-not-block-publish", func(t *testing.T) {
		n := newNotifier(t)
		subscribe(t, n, ctx(t)) // a subscriber that never reads
		// Far more than any buffer: every Publish returns, none waits for
		// the stuck subscriber (a blocked one would hold the test until
		// the deadline, and fail it).
		pctx, cancel := context.WithTimeout(ctx(t), noticeWait)
		defer cancel()
		for i := range 1000 {
			if err := n.Publish(pctx, broker.Notice{RevocationID: fmt.Sprintf("rev_%d", i)}); err != nil {
				t.Fatalf("Publish(notice %d) with a stuck subscriber = %v, want nil", i, err)
			}
		}
		// A subscriber that reads still gets what is published next.
		fresh := subscribe(t, n, ctx(t))
		want := broker.Notice{RevocationID: "rev_after"}
		if err := n.Publish(ctx(t), want); err != nil {
			t.Fatalf("Publish() = %v, want nil", err)
		}
		if got, _ := next(t, fresh); !cmp.Equal(want, got, opts) {
			t.Errorf("fresh subscriber got %+v, want %+v", got, want)
		}
	})
	t.Run("fail/cancelled", func(t *testing.T) {
		n := newNotifier(t)
		cctx, cancel := context.WithCancel(ctx(t))
		cancel()
		err := n.Publish(cctx, broker.Notice{RevocationID: "rev_x"})
		wantErr(t, "Publish(cancelled)", err, broker.ErrUnavailable)
		wantErr(t, "Publish(cancelled)", err, context.Canceled)
		_, err = n.Subscribe(cctx)
		wantErr(t, "Subscribe(cancelled)", err, broker.ErrUnavailable)
		wantErr(t, "Subscribe(cancelled)", err, context.Canceled)
	})
}
