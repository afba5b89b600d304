package broker_test

import (
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// TestRateLimitRefusalsDoNotConsume: requests refused with 429 take nothing
// from the workload's bucket, however many arrive at once. A flood of
// concurrent refused requests (a start-up storm of one workload's pods, a
// retry loop) must not leave the bucket in debt: once the clock has moved
// on by burst/rate, the full burst is allowed again, and a refusal's
// Retry-After never exceeds the time one token takes.
func TestRateLimitRefusalsDoNotConsume(t *testing.T) {
	f := newFixture(t)
	wl, ok := f.pol.Workload("payments-api") // rate: {per_second: 1, burst: 2}
	if !ok {
		t.Fatal("no workload payments-api")
	}
	var mu sync.Mutex
	now := f.now
	svc, err := broker.NewService(broker.Deps{
		Policy: f.svc.Policy, Authn: func() broker.Authenticator { return f.authn },
		Store: f.store, Audit: f.sink,
		Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

	const rounds, callers, calls = 300, 16, 50
	for round := range rounds {
		// Exhaust the bucket, then flood it with refused requests.
		for i := 0; i < 2; i++ {
			if err := svc.Allow(wl); err != nil {
				t.Fatalf("round %d: request %d of a full bucket refused: %v", round, i+1, err)
			}
		}
		var maxRetry atomic.Int64
		var wg sync.WaitGroup
		start := make(chan struct{})
		for range callers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				for range calls {
					if err := svc.Allow(wl); err != nil {
						if ra := int64(broker.AsError(err).RetryAfter); ra > maxRetry.Load() {
							maxRetry.Store(ra)
						}
					}
				}
			}()
		}
		close(start)
		wg.Wait()
		if ra := time.Duration(maxRetry.Load()); ra > time.Second {
			t.Fatalf("round %d: a refusal said Retry-After %v; at 1/s one token takes 1s", round, ra)
		}
		// Two seconds refill the burst of 2.
		advance(2 * time.Second)
	}
}
