package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// TestIdentityGuard: the 429s of an authenticated caller take from its own
// bucket of PerIdentity, refilled at PerIdentity per SummaryEvery; past it
// they are counted by its summary, handed out when a suppressed 429 comes
// after the span ended, when the caller is dropped to make room
// (MaxSources), and at the final sweep, after which every 429 is audited
// on its own. Callers are keyed by workload, else by iss and sub, and per
// event type.
func TestIdentityGuard(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	g := newIdentityGuard(RefusalLimits{PerIdentity: 2, MaxSources: 2, SummaryEvery: time.Minute})
	show := func(out []refusalSummary) string {
		s := ""
		for _, o := range out {
			s += fmt.Sprintf("[%s %s %d %s %s]", o.scope(), o.who.name(), o.n, o.first.Sub(t0), o.last.Sub(t0))
		}
		return s
	}
	pay := &limitedCaller{typ: audit.TypeDeny, workload: "payments-api", owner: "team-payments"}
	payIntro := &limitedCaller{typ: audit.TypeIntrospect, workload: "payments-api"}
	verifier := &limitedCaller{typ: audit.TypeIntrospect, iss: "https://k8s.example", sub: "verifier"}
	step := func(name string, who *limitedCaller, d time.Duration, wantBy, wantOut string) {
		t.Helper()
		by, _, out := g.takeKey(who.key(), "", who, refusalTag{}, at(d))
		if by != wantBy || show(out) != wantOut {
			t.Errorf("%s: take(%s, +%s) = %q, %q; want %q, %q", name, who.name(), d, by, show(out), wantBy, wantOut)
		}
	}
	step("pay/1", pay, 0, "", "")
	step("pay/2", pay, 0, "", "")
	for range 998 {
		step("pay/suppressed", pay, time.Second, RefusalScopeIdentity, "")
	}
	// 2 per minute: one token back after 30s.
	step("pay/refilled", pay, 31*time.Second, "", "")
	step("pay/empty", pay, 31*time.Second, RefusalScopeIdentity, "")
	step("pay/refilled-again", pay, 61*time.Second, "", "")
	step("pay/after-span", pay, 61*time.Second, RefusalScopeIdentity, "[identity payments-api 999 1s 31s]")
	step("pay-introspect/own-entry", payIntro, 62*time.Second, "", "")
	step("verifier/evicts-pay", verifier, 63*time.Second, "", "[identity payments-api 1 1m1s 1m1s]")
	step("verifier/2", verifier, 63*time.Second, "", "")
	step("verifier/suppressed", verifier, 64*time.Second, RefusalScopeIdentity, "")
	if got, want := show(g.sweep(at(65*time.Second), true, true)), "[identity https://k8s.example#verifier 1 1m4s 1m4s]"; got != want {
		t.Errorf("final sweep = %s, want %s", got, want)
	}
	step("verifier/after-final", verifier, 64*time.Second, "", "")
	if g := newIdentityGuard(RefusalLimits{PerIdentity: -1}); g != nil {
		t.Error("PerIdentity -1 made an identity guard")
	}
}

// TestIdentitySummaryRestored: an identity summary whose write failed is
// put back under its caller (not its empty source address) and written
// again by the next flush, with the same event.
func TestIdentitySummaryRestored(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	g := newIdentityGuard(RefusalLimits{PerIdentity: 1, SummaryEvery: time.Minute})
	who := &limitedCaller{typ: audit.TypeIntrospect, iss: "https://k8s.example", sub: "verifier"}
	g.takeKey(who.key(), "", who, refusalTag{}, t0)
	g.takeKey(who.key(), "", who, refusalTag{}, t0)
	out := g.sweep(t0, true, false)
	if len(out) != 1 || out[0].n != 1 {
		t.Fatalf("sweep = %+v, want one summary of 1", out)
	}
	if !g.restore(out[0]) {
		t.Fatal("restore of a failed summary: not kept")
	}
	if g.len() != 1 {
		t.Errorf("%d entries after the restore, want the caller's 1", g.len())
	}
	again := g.sweep(t0, true, false)
	if len(again) != 1 {
		t.Fatalf("sweep after the restore = %+v, want one summary", again)
	}
	ev := again[0].event()
	if got, want := fmt.Sprintf("%s %+v %+v %s %v", ev.Type, ev.Outcome, ev.Identity, ev.Admin, ev.Details),
		"introspect &{Status:429 Error:slow_down Reason:rate_limited} &{Iss:https://k8s.example Sub:verifier JTI:} https://k8s.example#verifier map[caller:map[iss:https://k8s.example sub:verifier] first:2026-11-29T12:00:00.000000000Z last:2026-11-29T12:00:00.000000000Z scope:identity suppressed:1]"; got != want {
		t.Errorf("restored summary's event = %s\nwant %s", got, want)
	}
}

// TestIdentitySummaryAtShutdown: the pending summary of a caller's 429s is
// written by the last flush (RunRefusalSummaries when its context ends).
func TestIdentitySummaryAtShutdown(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	sink := &recordingSink{}
	svc, err := NewService(Deps{Policy: func() *policies.Policy { return nil }, Authn: func() Authenticator { return nil },
		Store: nopStore{}, Audit: sink, Now: func() time.Time { return t0 },
		RefusalLimits: &RefusalLimits{PerIdentity: 1}})
	if err != nil {
		t.Fatal(err)
	}
	who := &limitedCaller{typ: audit.TypeDeny, workload: "payments-api", owner: "team-payments"}
	ctx := context.Background()
	for i := range 5 {
		ev := &audit.Event{Type: audit.TypeDeny, Workload: "payments-api"}
		err := svc.refuseLimited(ctx, ev, who, refusalTag{}, &Error{Kind: ErrRateLimited, Reason: ReasonRateLimited, Safe: "slow down", RetryAfter: 3 * time.Second})
		if e := AsError(err); !errors.Is(err, ErrRateLimited) || e.Reason != ReasonRateLimited || e.Safe != "slow down" || e.RetryAfter != 3*time.Second {
			t.Fatalf("refuseLimited = %v, want the 429 itself", err)
		}
		// Marked for keytrail_refusals_suppressed_total once not audited.
		if got, want := SuppressedScope(err), map[bool]string{true: RefusalScopeIdentity}[i > 0]; got != want {
			t.Errorf("429 %d: SuppressedScope = %q, want %q", i+1, got, want)
		}
	}
	if n := len(sink.Events()); n != 1 {
		t.Fatalf("%d events before shutdown, want the first 429's", n)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := svc.RunRefusalSummaries(cctx, nil); err != nil {
		t.Fatal(err)
	}
	evs := sink.Events()
	if len(evs) != 2 || evs[1].Details["scope"] != RefusalScopeIdentity || evs[1].Details["suppressed"] != 4 || evs[1].Workload != "payments-api" {
		t.Fatalf("events after shutdown = %d, last %+v; want the 429's and one summary of 4 naming payments-api", len(evs), evs[len(evs)-1])
	}
}

// recordingSink records the events appended to it.
type recordingSink struct {
	mu     sync.Mutex
	events []*audit.Event
}

func (r *recordingSink) Append(ctx context.Context, ev *audit.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
	return nil
}

func (r *recordingSink) Events() []*audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*audit.Event(nil), r.events...)
}

// TestIdentityGuardActorsBounded: an exchange's refusals of a verified
// actor token take from a bucket of the caller acting for that party
// (exchangeActor), at most maxActors per caller: the refusals acting for
// any further party take from the caller's own bucket, and its summary
// names no actor, until an entry is dropped (its bucket full again, or
// evicted), which makes room again. A summary put back after a failed
// write respects the bound too.
func TestIdentityGuardActorsBounded(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	g := newIdentityGuard(RefusalLimits{PerIdentity: 1, MaxSources: 10, SummaryEvery: time.Minute})
	g.maxActors = 2
	pay := &limitedCaller{typ: audit.TypeDeny, workload: "payments-api", owner: "team-payments"}
	acting := func(sub string) *limitedCaller {
		c := *pay
		c.actIss, c.actSub = "https://idp.example", sub
		return &c
	}
	take := func(name string, who *limitedCaller, d time.Duration, wantBy string) {
		t.Helper()
		if by, _, _ := g.takeKey(who.key(), "", who, refusalTag{reason: "actor_not_permitted"}, at(d)); by != wantBy {
			t.Errorf("%s: take = %q, want %q", name, by, wantBy)
		}
	}
	take("u1", acting("u1"), 0, "")
	take("u1/suppressed", acting("u1"), 0, RefusalScopeIdentity)
	take("u2", acting("u2"), 0, "")
	// A third party: the caller's own bucket (full: audited), then its
	// own bucket is empty, for any further party and the caller alike.
	take("u3/as-caller", acting("u3"), 0, "")
	take("u4/as-caller", acting("u4"), 0, RefusalScopeIdentity)
	take("caller", pay, 0, RefusalScopeIdentity)
	if n := g.actors[pay.key()]; n != 2 || g.len() != 3 {
		t.Fatalf("actors of payments-api = %d, entries %d; want 2 and 3 (u1, u2, the caller's)", n, g.len())
	}
	out := g.sweep(at(2*time.Minute), false, false)
	names := map[string]int{}
	for _, s := range out {
		names[s.who.name()] += s.n
		if ev := s.event(); (s.who.actIss != "") != (len(ev.Act) == 1) || len(ev.Act) == 1 && (ev.Act[0].Sub != s.who.actSub || ev.Act[0].JTI != "") {
			t.Errorf("summary of %s names act %+v", s.who.name(), ev.Act)
		}
	}
	if want := map[string]int{"payments-api acting for https://idp.example#u1": 1, "payments-api": 2}; fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("summaries = %v, want %v", names, want)
	}
	// The span over, the entries (their summaries taken, buckets full)
	// are dropped: room for parties again.
	g.sweep(at(3*time.Minute), false, false)
	if n := g.actors[pay.key()]; n != 0 {
		t.Errorf("actors of payments-api after the sweep = %d, want 0 (every entry dropped)", n)
	}
	take("u3/own", acting("u3"), 3*time.Minute, "")
	take("u3/own-suppressed", acting("u3"), 3*time.Minute, RefusalScopeIdentity)
	take("u5/own", acting("u5"), 3*time.Minute, "")
	// A failed summary of a sixth party, put back with no room for it:
	// counted by the caller's own entry, naming no actor.
	if !g.restore(refusalSummary{n: 4, first: at(3 * time.Minute), last: at(3 * time.Minute), key: acting("u6").key(), who: acting("u6"),
		tags: map[refusalTag]int{{reason: "actor_not_permitted"}: 4}}) {
		t.Fatal("restore not kept")
	}
	if n := g.actors[pay.key()]; n != 2 {
		t.Errorf("actors after restore = %d, want 2", n)
	}
	names = map[string]int{}
	for _, s := range g.sweep(at(4*time.Minute), true, true) {
		names[s.who.name()] += s.n
	}
	if want := map[string]int{"payments-api acting for https://idp.example#u3": 1, "payments-api": 4}; fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("final summaries = %v, want %v", names, want)
	}

	// Dropping an entry to make room (MaxSources) frees its place too.
	g = newIdentityGuard(RefusalLimits{PerIdentity: 1, MaxSources: 2, SummaryEvery: time.Minute})
	g.maxActors = 1
	take("e/u1", acting("u1"), 0, "")
	take("e/other", &limitedCaller{typ: audit.TypeDeny, workload: "other"}, 0, "")
	take("e/another", &limitedCaller{typ: audit.TypeDeny, workload: "another"}, 0, "") // evicts u1's
	if n := g.actors[pay.key()]; n != 0 {
		t.Errorf("actors after u1's entry was evicted = %d, want 0", n)
	}
	take("e/u2", acting("u2"), 0, "")
	if n := g.actors[pay.key()]; n != 1 {
		t.Errorf("actors after u2's entry = %d, want 1", n)
	}
}
