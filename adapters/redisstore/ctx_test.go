package redisstore

import (
	"context"
	"testing"
	"time"
)

// Every store call is bounded by the store's timeout. A caller's deadline
// that is already at least as near (the Service's StoreTimeout around each
// of its store calls) is the bound as it is: wrapping it cost 2 allocations
// and a registration with the parent per Redis call, for the same deadline.
func TestCallContextBound(t *testing.T) {
	s := &Store{timeout: 2 * time.Second}
	near := func(t *testing.T, ctx context.Context, want time.Duration) {
		t.Helper()
		dl, ok := ctx.Deadline()
		if left := time.Until(dl); !ok || left > want || left < want-time.Second {
			t.Fatalf("call deadline %v away (set %v), want about %v", left, ok, want)
		}
	}
	t.Run("ok/no-deadline-gets-timeout", func(t *testing.T) {
		ctx, cancel := s.ctx(context.Background())
		defer cancel()
		near(t, ctx, 2*time.Second)
	})
	t.Run("ok/later-deadline-cut-to-timeout", func(t *testing.T) {
		parent, pcancel := context.WithTimeout(context.Background(), time.Minute)
		defer pcancel()
		ctx, cancel := s.ctx(parent)
		defer cancel()
		near(t, ctx, 2*time.Second)
	})
	t.Run("ok/nearer-deadline-kept-without-allocating", func(t *testing.T) {
		parent, pcancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
		defer pcancel()
		ctx, cancel := s.ctx(parent)
		near(t, ctx, 1500*time.Millisecond)
		cancel()
		if n := testing.AllocsPerRun(100, func() {
			_, cancel := s.ctx(parent)
			cancel()
		}); n != 0 {
			t.Errorf("call context under a nearer deadline: %v allocations, want 0", n)
		}
	})
	t.Run("fail/cancelled-parent-still-cancels", func(t *testing.T) {
		parent, pcancel := context.WithTimeout(context.Background(), time.Second)
		ctx, cancel := s.ctx(parent)
		defer cancel()
		pcancel()
		if ctx.Err() == nil {
			t.Fatal("call context not done after its parent was cancelled")
		}
	})
}
