package broker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// TestRefusalGuardSummaries: a source's summary is handed out when a
// suppressed refusal comes after its span ended (the new one opens the
// next span), and when the source is dropped to make room for another;
// Retry-After is the time until a token is back.
func TestRefusalGuardSummaries(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	g := newRefusalGuard(RefusalLimits{PerSecond: 0.5, Burst: 1, MaxSources: 2, SummaryEvery: time.Minute})
	show := func(out []refusalSummary) string {
		s := ""
		for _, o := range out {
			s += fmt.Sprintf("[%s %d %s %s]", o.ip, o.n, o.first.Sub(t0), o.last.Sub(t0))
		}
		return s
	}
	step := func(name, ip string, at time.Duration, wantOK bool, wantRetry time.Duration, wantOut string) {
		t.Helper()
		by, retry, out := g.take(ip, "", t0.Add(at))
		if ok := by == ""; ok != wantOK || retry != wantRetry || show(out) != wantOut {
			t.Errorf("%s: take(%s, +%s) = %v, %s, %q; want %v, %s, %q", name, ip, at, ok, retry, show(out), wantOK, wantRetry, wantOut)
		}
	}
	step("ok/burst", "192.0.2.1", 0, true, 0, "")
	step("suppressed/first", "192.0.2.1", time.Second, false, time.Second, "")
	step("suppressed/second", "192.0.2.1", 1500*time.Millisecond, false, 500*time.Millisecond, "")
	// At +70s the bucket is full again: audited, the span stays pending.
	step("ok/refilled", "192.0.2.1", 70*time.Second, true, 0, "")
	step("suppressed/after-span", "192.0.2.1", 71*time.Second, false, time.Second, "[192.0.2.1 2 1s 1.5s]")
	step("ok/other", "192.0.2.2", 72*time.Second, true, 0, "")
	step("ok/third-evicts-oldest", "192.0.2.3", 73*time.Second, true, 0, "[192.0.2.1 1 1m11s 1m11s]")
	if n := g.len(); n != 2 {
		t.Errorf("%d sources tracked, want 2", n)
	}
	if out := g.sweep(t0.Add(73*time.Second), true, false); len(out) != 0 {
		t.Errorf("sweep after the summaries were handed out = %q, want none", show(out))
	}
}

// TestRefusalGuardRestore: a summary put back after its write failed goes
// into its source's pending one, into a new source's while there is room,
// else aside (naming its source only while it has one); the next sweep
// hands all of them out again and the guard never grows past MaxSources.
func TestRefusalGuardRestore(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	g := newRefusalGuard(RefusalLimits{PerSecond: 1, Burst: 1, MaxSources: 2, SummaryEvery: time.Minute})
	g.take("192.0.2.1", "", at(0))
	g.take("192.0.2.1", "", at(time.Second/2)) // suppressed: pending 1
	g.restore(refusalSummary{ip: "192.0.2.1", n: 3, first: at(-time.Second), last: at(-time.Second / 2)})
	g.restore(refusalSummary{ip: "192.0.2.2", n: 2, first: at(0), last: at(time.Second)}) // room: a new source
	g.restore(refusalSummary{ip: "192.0.2.3", n: 4, first: at(2 * time.Second), last: at(3 * time.Second)})
	g.restore(refusalSummary{ip: "192.0.2.3", n: 1, first: at(time.Second), last: at(time.Second)})
	if n := g.len(); n != 2 {
		t.Fatalf("%d sources tracked, want 2", n)
	}
	show := func(out []refusalSummary) string {
		s := ""
		for _, o := range out {
			s += fmt.Sprintf("[%s %d %s %s]", o.ip, o.n, o.first.Sub(t0), o.last.Sub(t0))
		}
		return s
	}
	want := "[192.0.2.1 4 -1s 500ms][192.0.2.2 2 0s 1s][192.0.2.3 5 1s 3s]"
	if got := show(g.sweep(at(2*time.Minute), false, false)); got != want {
		t.Errorf("sweep = %s, want %s", got, want)
	}
	if n := g.len(); n != 0 {
		t.Fatalf("%d sources tracked after the sweep, want 0", n)
	}
	g.restore(refusalSummary{ip: "192.0.2.4", n: 1, first: at(0), last: at(0)})
	g.take("192.0.2.5", "", at(2*time.Minute))
	g.restore(refusalSummary{ip: "192.0.2.7", n: 1, first: at(0), last: at(0)})
	g.restore(refusalSummary{ip: "192.0.2.8", n: 2, first: at(0), last: at(time.Second)})
	out := g.sweep(at(2*time.Minute), true, false)
	if got, want := show(out), "[192.0.2.4 1 0s 0s][ 3 0s 1s]"; got != want {
		t.Errorf("sweep = %s, want %s", got, want)
	}
	if ev := out[len(out)-1].event(); ev.Source != nil {
		t.Errorf("the summary of several sources names source %+v, want none", ev.Source)
	}
}

// TestRefusalLimitsNotFinite: a PerSecond of NaN or ±Inf, which would let
// every refusal through unsaid, is a Deps error, not the limit off.
func TestRefusalLimitsNotFinite(t *testing.T) {
	for _, ps := range []float64{math.NaN(), math.Inf(1), math.Inf(-1)} {
		_, err := NewService(Deps{Policy: func() *policies.Policy { return nil }, Authn: func() Authenticator { return nil },
			Store: nopStore{}, Audit: nopSink{}, RefusalLimits: &RefusalLimits{PerSecond: ps}})
		if err == nil || !strings.Contains(err.Error(), "RefusalLimits.PerSecond") {
			t.Errorf("NewService(PerSecond %v) = %v, want an error naming RefusalLimits.PerSecond", ps, err)
		}
	}
}

// nopStore and nopSink satisfy the ports for a NewService that must fail.
type (
	nopStore struct{ Store }
	nopSink  struct{ AuditSink }
)

// stuckSink is an audit sink whose writer hangs: deferred events are taken
// and never answered; AppendWithin (a waited write) reports that it was
// entered and waits for release.
type stuckSink struct {
	nopSink
	mu       sync.Mutex
	events   []*audit.Event
	entered  chan int // the number of events taken when AppendWithin was entered
	released chan struct{}
}

func (f *stuckSink) AppendDeferred(ev *audit.Event, done func(error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.events = append(f.events, ev)
}

func (f *stuckSink) AppendWithin(ev *audit.Event, d time.Duration) error {
	f.mu.Lock()
	f.events = append(f.events, ev)
	n := len(f.events)
	f.mu.Unlock()
	f.entered <- n
	<-f.released
	return fmt.Errorf("not durable within %s: %w", d, ErrAuditPending)
}

func (f *stuckSink) taken() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.events)
}

// TestRefusalFlushNotSerial: a flush of several summaries on a hung audit
// disk queues them all at once and waits once (AuditTimeout in all), not
// one after another each for up to AuditTimeout: at shutdown that was
// MaxSources times AuditTimeout before the audit sink could close.
func TestRefusalFlushNotSerial(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	sink := &stuckSink{entered: make(chan int, 16), released: make(chan struct{})}
	svc, err := NewService(Deps{Policy: func() *policies.Policy { return nil }, Authn: func() Authenticator { return nil },
		Store: nopStore{}, Audit: sink, Now: func() time.Time { return t0 }, AuditTimeout: time.Millisecond,
		RefusalLimits: &RefusalLimits{PerSecond: 1, Burst: 1, SummaryEvery: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	const sources = 3
	for i := range sources {
		ip := fmt.Sprintf("192.0.2.%d", i+1)
		svc.refusals.take(ip, "", t0)
		svc.refusals.take(ip, "", t0) // suppressed
	}
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		svc.FlushRefusalSummaries(context.Background(), true)
	}()
	select {
	case n := <-sink.entered:
		close(sink.released)
		<-flushed
		t.Fatalf("the flush waited for summary %d of %d alone, the others not queued yet", n, sources)
	case <-flushed:
	}
	if n := sink.taken(); n != sources {
		t.Errorf("%d summaries queued by the flush, want %d", n, sources)
	}
}

// TestRefusalGuardGlobal: past the global bucket, a refusal from any
// source, however many there are, is suppressed and counted by the one
// global summary (no source, details.scope "global"), its own source's
// bucket untouched; a source whose own bucket is empty is counted by its
// own summary (scope "source"), the global bucket untouched; Retry-After is
// the time until the bucket that refused has a token; a global summary
// whose write failed is pending again, not a tracked source.
func TestRefusalGuardGlobal(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	g := newRefusalGuard(RefusalLimits{PerSecond: 1, Burst: 2, MaxSources: 100, SummaryEvery: time.Minute,
		GlobalPerSecond: 0.25, GlobalBurst: 3})
	show := func(out []refusalSummary) string {
		s := ""
		for _, o := range out {
			s += fmt.Sprintf("[%s %q %d %s %s]", o.scope(), o.ip, o.n, o.first.Sub(t0), o.last.Sub(t0))
		}
		return s
	}
	step := func(name, ip string, d time.Duration, wantBy string, wantRetry time.Duration) {
		t.Helper()
		by, retry, out := g.take(ip, "", at(d))
		if by != wantBy || retry != wantRetry || len(out) != 0 {
			t.Errorf("%s: take(%s, +%s) = %q, %s, %q; want %q, %s, none", name, ip, d, by, retry, show(out), wantBy, wantRetry)
		}
	}
	step("a/1", "192.0.2.1", 0, "", 0)
	step("a/2", "192.0.2.1", 0, "", 0)
	step("a/own-bucket-empty", "192.0.2.1", 0, RefusalScopeSource, time.Second) // a's summary; the global bucket keeps its token
	step("b/last-global-token", "192.0.2.2", 0, "", 0)
	for i := range 50 {
		step("flood", fmt.Sprintf("2001:db8:%x::1", i), time.Second, RefusalScopeGlobal, 3*time.Second)
	}
	step("b/global-empty", "192.0.2.2", 2*time.Second, RefusalScopeGlobal, 2*time.Second)
	// +4s: one global token back; b's bucket was left its token.
	step("b/global-refilled", "192.0.2.2", 4*time.Second, "", 0)
	sums := g.sweep(at(61*time.Second), false, false)
	if got, want := show(sums), `[global "" 51 1s 2s][source "192.0.2.1" 1 0s 0s]`; got != want {
		t.Fatalf("sweep = %s, want %s", got, want)
	}
	for i, want := range []string{
		`<nil> map[first:2026-11-29T12:00:01.000000000Z last:2026-11-29T12:00:02.000000000Z scope:global suppressed:51]`,
		`&{IP:192.0.2.1 UserAgent:} map[first:2026-11-29T12:00:00.000000000Z last:2026-11-29T12:00:00.000000000Z scope:source suppressed:1]`,
	} {
		ev := sums[i].event()
		if got := fmt.Sprintf("%+v %v", ev.Source, ev.Details); got != want {
			t.Errorf("summary event %d = %s, want %s", i, got, want)
		}
	}
	n := g.len()
	g.restore(refusalSummary{global: true, n: 7, first: at(time.Second), last: at(2 * time.Second)})
	if got := g.len(); got != n {
		t.Errorf("a restored global summary made %d sources tracked of %d", got, n)
	}
	if got, want := show(g.sweep(at(2*time.Minute), true, false)), `[global "" 7 1s 2s]`; got != want {
		t.Errorf("sweep after a failed global summary = %s, want %s", got, want)
	}
}

// TestRefusalGuardGlobalOff: a negative GlobalPerSecond leaves only the
// sources' buckets.
func TestRefusalGuardGlobalOff(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	g := newRefusalGuard(RefusalLimits{PerSecond: 1, Burst: 1, GlobalPerSecond: -1, GlobalBurst: 1})
	for i := range 100 {
		if by, _, _ := g.take(fmt.Sprintf("192.0.2.%d", i), "", t0); by != "" {
			t.Fatalf("refusal %d of a new source suppressed with the global bucket off", i+1)
		}
	}
}

// TestRefusalGuardClosed: after the final sweep nothing writes a summary
// any more: a refusal past its source's bucket is audited on its own
// rather than counted and never written.
func TestRefusalGuardClosed(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	g := newRefusalGuard(RefusalLimits{PerSecond: 1, Burst: 1, SummaryEvery: time.Minute})
	g.take("192.0.2.1", "", t0)
	if by, _, _ := g.take("192.0.2.1", "", t0); by == "" {
		t.Fatal("second refusal within the span audited; want suppressed")
	}
	if out := g.sweep(t0, true, true); len(out) != 1 || out[0].n != 1 {
		t.Fatalf("final sweep = %+v, want the one summary", out)
	}
	if by, _, out := g.take("192.0.2.1", "", t0); by != "" || len(out) != 0 {
		t.Errorf("refusal after the final sweep: suppressed by %q, %d summaries; want audited on its own", by, len(out))
	}
	if out := g.sweep(t0.Add(time.Hour), true, true); len(out) != 0 {
		t.Errorf("a sweep after the final one = %+v, want none", out)
	}
}

// failingSink refuses every deferred event outright (a full disk): the
// write failed and will not land.
type failingSink struct{ nopSink }

func (failingSink) AppendDeferred(ev *audit.Event, done func(error)) {
	done(errors.New("audit: write: no space left on device"))
}

// lockedBuffer is a log destination safe for the sink's callbacks.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRefusalSummaryFailedAfterLastFlushNotKept: a summary whose write
// fails at or after the last flush (shutdown) is not written by anyone
// any more: the log line, its only record, says kept=false, and the
// closed guard holds nothing. (It said kept=true, and the summary was put
// back into a guard that no sweep would read again.)
func TestRefusalSummaryFailedAfterLastFlushNotKept(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	var logs lockedBuffer
	svc, err := NewService(Deps{Policy: func() *policies.Policy { return nil }, Authn: func() Authenticator { return nil },
		Store: nopStore{}, Audit: failingSink{}, Now: func() time.Time { return t0 }, AuditTimeout: time.Minute,
		Logger:        slog.New(slog.NewJSONHandler(&logs, nil)),
		RefusalLimits: &RefusalLimits{PerSecond: 1, Burst: 1, SummaryEvery: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	svc.refusals.take("192.0.2.1", "", t0)
	if by, _, _ := svc.refusals.take("192.0.2.1", "", t0); by == "" {
		t.Fatal("second refusal within the burst of 1 audited; want suppressed")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := svc.RunRefusalSummaries(ctx, nil); err != nil {
		t.Fatal(err)
	}
	var line map[string]any
	for _, l := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "audit refusal summary failed" {
			line = m
		}
	}
	if line == nil {
		t.Fatalf("no \"audit refusal summary failed\" log line; log:\n%s", logs.String())
	}
	if line["kept"] != false || line["suppressed"] != float64(1) || line["source"] != "192.0.2.1" {
		t.Errorf("log line of the summary failed at the last flush = %v; want kept false, suppressed 1, source 192.0.2.1", line)
	}
	if out := svc.refusals.sweep(t0.Add(time.Hour), true, true); len(out) != 0 {
		t.Errorf("the closed guard still holds %+v", out)
	}
}
