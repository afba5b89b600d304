package trace_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/trace"
)

// TestLiveTraceDuringRebuildAnswersBusy: a trace or report while another
// call rebuilds the index (every file read again: about 12 s at 200,000
// events) waited on Live's lock for the whole rebuild, and the auditor's
// HTTP request hung with it. It now waits at most
// LiveOptions.RefreshWait (default DefaultRefreshWait), or until its
// context ends, and answers unavailable (503 temporarily_unavailable, with
// Retry-After, reason audit_index_busy); once the rebuild is done, it
// answers from the new index.
func TestLiveTraceDuringRebuildAnswersBusy(t *testing.T) {
	f := newRebuildFixture(t)
	f.cut()
	started, release := make(chan struct{}), make(chan struct{})
	var once sync.Once
	trace.SetAfterReadHook(f.live, func() {
		once.Do(func() {
			close(started)
			<-release
		})
	})
	rebuilt := make(chan error, 1)
	go func() { rebuilt <- f.live.Refresh() }()
	<-started
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()

	calls := []struct {
		name string
		call func(context.Context) error
	}{
		{"trace", func(ctx context.Context) error { _, err := f.live.Trace(ctx, "iss_big_0450"); return err }},
		{"report", func(ctx context.Context) error { _, err := f.live.Report(ctx); return err }},
		{"trace/context-ended", func(context.Context) error {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_, err := f.live.Trace(ctx, "iss_big_0450")
			return err
		}},
	}
	for _, c := range calls {
		done := make(chan error, 1)
		go func() { done <- c.call(context.Background()) }()
		var err error
		select {
		case err = <-done:
		case <-time.After(time.Minute):
			t.Fatalf("%s: still waiting for the rebuild after a minute", c.name)
		}
		var be *broker.Error
		if !errors.Is(err, broker.ErrUnavailable) || !errors.As(err, &be) || be.Reason != "audit_index_busy" || be.RetryAfter <= 0 {
			t.Errorf("%s during a rebuild = %v, want unavailable, reason audit_index_busy, with a Retry-After", c.name, err)
		}
	}

	close(release)
	if err := <-rebuilt; err != nil {
		t.Fatal(err)
	}
	if _, err := f.live.Trace(context.Background(), "iss_big_0450"); err != nil {
		t.Errorf("Trace after the rebuild = %v, want the issuance", err)
	}
}
