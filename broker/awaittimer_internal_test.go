package broker

import (
	"context"
	"errors"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// spinSink answers each Append after spin (its own goroutine's work).
type spinSink struct{ spin func() }

func (s spinSink) Append(ctx context.Context, ev *audit.Event) error {
	s.spin()
	return nil
}

// TestAwaitAuditPoolAsyncTimers: the Service's pool of wait timers hands
// on no timer whose channel still holds a value, also under
// GODEBUG=asynctimerchan=1 (the timers of Go before 1.23, which an operator
// may set), where Stop leaves the value of a timer that fired as the wait
// ended: the next exchange or Audit would take it for its own AuditTimeout
// and fail at once (an exchange's credential revoked, a 503). Many waits
// end as their tiny AuditTimeout fires; then, with an AuditTimeout of a
// minute, no wait may end before its event; eight rounds.
func TestAwaitAuditPoolAsyncTimers(t *testing.T) {
	t.Setenv("GODEBUG", "asynctimerchan=1")
	// Phase 1: waits of 30 µs for events that take about as long;
	// phase 2: a minute's bound, events a few scheduler turns away.
	// (Appends a phase-1 wait gave up on may still run in phase 2.)
	var phase2 atomic.Bool
	spin := func() {
		if phase2.Load() {
			for range 3 {
				runtime.Gosched()
			}
			return
		}
		for end := time.Now().Add(30 * time.Microsecond); time.Now().Before(end); {
		}
	}
	s, err := NewService(Deps{
		Policy: func() *policies.Policy { return nil },
		Authn:  func() Authenticator { return nil },
		Store:  struct{ Store }{},
		Audit:  spinSink{spin: spin},
	})
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu     sync.Mutex
		failed int
		first  error
	)
	for round := 0; round < 8 && failed == 0; round++ {
		phase2.Store(false)
		s.d.AuditTimeout = 30 * time.Microsecond
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for range 200 {
					_ = s.Audit(context.Background(), &audit.Event{Type: "x"})
				}
			})
		}
		wg.Wait()
		s.d.AuditTimeout = time.Minute
		phase2.Store(true)
		for range 16 {
			wg.Go(func() {
				for range 200 {
					if err := s.Audit(context.Background(), &audit.Event{Type: "y"}); err != nil {
						mu.Lock()
						if failed++; first == nil {
							first = err
						}
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		if failed > 0 {
			t.Errorf("round %d: %d of 3200 waits bounded by a minute ended early: %v", round, failed, first)
		}
	}
	if !errors.Is(first, ErrAuditPending) && first != nil {
		t.Errorf("unexpected error %v", first)
	}
}
