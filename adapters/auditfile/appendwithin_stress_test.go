package auditfile

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestAppendWithinStress: many callers of AppendWithin, half with bounds of
// 20 µs to 2 ms, half with a minute, on a sink whose fsync stalls and
// resumes over and over (a small queue, often full). Each caller gets its
// own outcome: nil only for an event that is in the file (once); a pending
// error (ErrUnavailable wrapping ErrAuditPending) otherwise, and only for a
// short bound, never for a minute's (a pooled timer firing late into the
// next caller's wait would show as one); an event refused before it was
// queued is never written. Run it with -race.
func TestAppendWithinStress(t *testing.T) { appendWithinStress(t) }

func appendWithinStress(t *testing.T) {
	fl := &faults{}
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	s := openT(t, Options{Path: path, Now: newClock().Now, MaxBatch: 4}, faultSeams(fl))
	const callers, each = 24, 40
	type outcome struct {
		typ  string
		long bool
		err  error
	}
	results := make(chan outcome, callers*each)
	pending := make(chan struct{}, callers*each)
	var wg sync.WaitGroup
	for g := range callers {
		wg.Go(func() {
			for i := range each {
				typ := fmt.Sprintf("g%02d-%02d", g, i)
				d := time.Minute
				long := (g+i)%2 == 0
				if !long {
					d = time.Duration(20+(g*each+i)*37%2000) * time.Microsecond
				}
				err := s.AppendWithin(&audit.Event{Type: typ}, d)
				if err != nil {
					pending <- struct{}{}
				}
				results <- outcome{typ, long, err}
			}
		})
	}
	finished := make(chan struct{})
	go func() { wg.Wait(); close(finished) }()
	// Stall the next fsync until three callers gave up (or 5 ms passed:
	// only callers with a minute may be left), then let it go; again
	// until every caller is done.
	stalls := 0
	for done := false; !done; {
		gate := make(chan struct{})
		fl.set(func(f *faults) { f.syncGate = gate })
	wait:
		for n := 0; n < 3; {
			select {
			case <-pending:
				n++
			case <-time.After(5 * time.Millisecond):
				break wait
			case <-finished:
				done = true
				break wait
			}
		}
		close(gate)
		stalls++
	}
	fl.set(func(f *faults) { f.syncGate = nil })
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	close(results)

	inFile := map[string]int{}
	for _, ev := range readEvents(t, path) {
		inFile[ev.Type]++
	}
	var ok, pend, notQueued int
	for r := range results {
		switch {
		case r.err == nil:
			ok++
			if inFile[r.typ] != 1 {
				t.Errorf("%s: AppendWithin() = nil, but the event is in the file %d times", r.typ, inFile[r.typ])
			}
		case errors.Is(r.err, broker.ErrUnavailable) && errors.Is(r.err, broker.ErrAuditPending):
			pend++
			if r.long {
				t.Errorf("%s (bound a minute): %v, want nil", r.typ, r.err)
			}
			if strings.Contains(r.err.Error(), "not enqueued") {
				notQueued++ // held for the feeder: written all the same
			}
			if inFile[r.typ] != 1 {
				t.Errorf("%s: pending (%v), in the file %d times, want once (it may still land, and the sink was closed after the stalls)", r.typ, r.err, inFile[r.typ])
			}
		default:
			t.Errorf("%s: AppendWithin() = %v, want nil or a pending error", r.typ, r.err)
		}
		delete(inFile, r.typ)
	}
	for typ := range inFile {
		t.Errorf("the file has %s, which no caller appended", typ)
	}
	t.Logf("%d stalls; %d durable, %d pending (%d not queued)", stalls, ok, pend, notQueued)
	if pend == 0 || ok == 0 {
		t.Errorf("durable %d, pending %d: the stress did not exercise both", ok, pend)
	}
}

// TestAppendWithinStressAsyncTimers is TestAppendWithinStress, ten times,
// with the timers of Go before 1.23 (GODEBUG=asynctimerchan=1, which an
// operator may still set): a timer that fires as the wait ends otherwise
// keeps its value in its channel after Stop, and the pool must not hand
// that on to the next caller, whose wait it would end at once.
func TestAppendWithinStressAsyncTimers(t *testing.T) {
	t.Setenv("GODEBUG", "asynctimerchan=1")
	for range 10 {
		if appendWithinStress(t); t.Failed() {
			return
		}
	}
}
