package trace_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/trace"
)

// The call that starts a long read of the audit files (the first load
// after start, or a rebuild) did the whole read inside its own request:
// only callers behind it were bounded by RefreshWait. The read now goes on
// in the background and that first caller is answered the same bounded way
// (503 audit_index_busy, with Retry-After) while it runs; the next call
// after it finished answers from the index it loaded. The read is held
// (not timed): the answer cannot come from a finished read.
func TestLiveFirstCallDuringLongReadAnswersBusy(t *testing.T) {
	for _, tc := range []struct {
		name string
		// setup returns a Live whose next refresh is the long read, and
		// the value to trace after it.
		setup func(t *testing.T, wait time.Duration) (*trace.Live, string)
	}{
		{"first-load", func(t *testing.T, wait time.Duration) (*trace.Live, string) {
			dir := t.TempDir()
			writeLines(t, dir, "audit.jsonl", sealed(t, "chn_first", 0, fixtureEvents()))
			live, err := trace.NewLive(trace.LiveOptions{Path: filepath.Join(dir, "audit.jsonl"), RefreshWait: wait})
			if err != nil {
				t.Fatal(err)
			}
			return live, idB
		}},
		{"rebuild", func(t *testing.T, wait time.Duration) (*trace.Live, string) {
			f := newRebuildFixtureWait(t, wait)
			f.cut()
			return f.live, "iss_big_0450"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// A short RefreshWait keeps the test quick; the read is held
			// until release however long it is.
			live, q := tc.setup(t, 10*time.Millisecond)
			started, release := make(chan struct{}), make(chan struct{})
			var once sync.Once
			trace.SetAfterReadHook(live, func() {
				once.Do(func() {
					close(started)
					<-release
				})
			})
			var releaseOnce sync.Once
			defer releaseOnce.Do(func() { close(release) })

			done := make(chan error, 1)
			go func() { _, err := live.Trace(context.Background(), q); done <- err }()
			<-started
			var err error
			select {
			case err = <-done:
			case <-time.After(time.Minute):
				releaseOnce.Do(func() { close(release) })
				<-done
				t.Fatal("the call that started the read was still waiting for it after a minute")
			}
			var be *broker.Error
			if !errors.Is(err, broker.ErrUnavailable) || !errors.As(err, &be) || be.Reason != "audit_index_busy" || be.RetryAfter <= 0 {
				t.Errorf("Trace that started the read = %v, want unavailable, reason audit_index_busy, with a Retry-After", err)
			}

			releaseOnce.Do(func() { close(release) })
			// Refresh waits for the lock without a bound: the read
			// started by Trace is done once it returns.
			if err := live.Refresh(); err != nil {
				t.Fatal(err)
			}
			// The index, not a Trace: its refresh would be bounded by the
			// short RefreshWait.
			if res, err := live.Index().Lookup(q); err != nil || res.Issuance.ID != q {
				t.Errorf("Lookup(%s) after the read = %v, %v, want the issuance", q, res, err)
			}
		})
	}
}

// A trace's refresh runs out of the HTTP handler (whose recovery would
// have caught a panic): a panic while reading is an error of that call,
// and releases the refresh lock (the next call is not "busy").
func TestLiveRefreshPanicIsAnError(t *testing.T) {
	dir := t.TempDir()
	writeLines(t, dir, "audit.jsonl", sealed(t, "chn_panic", 0, fixtureEvents()))
	// A RefreshWait no refresh reaches: the answer is the panic's.
	live, err := trace.NewLive(trace.LiveOptions{Path: filepath.Join(dir, "audit.jsonl"), RefreshWait: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	trace.SetAfterReadHook(live, func() { panic("reader bug") })
	for i := range 2 {
		_, err := live.Trace(context.Background(), idB)
		var be *broker.Error
		if !errors.Is(err, broker.ErrUnavailable) || !errors.As(err, &be) || be.Reason != "audit_unreadable" {
			t.Errorf("Trace #%d with a reader that panics = %v, want unavailable, reason audit_unreadable", i+1, err)
		}
	}
}
