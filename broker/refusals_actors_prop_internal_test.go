package broker

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
)

// checkActorCount: the guard's count of entries acting for a party, per
// caller (refusalGuard.actors), is the number of such entries it tracks:
// none missing, none stale, no zero left behind, none past maxActors; and
// every entry's base is its caller's own key.
func checkActorCount(g *refusalGuard) error {
	if len(g.m) != g.order.Len() || len(g.m) > g.max {
		return fmt.Errorf("entries: map %d, list %d (max %d)", len(g.m), g.order.Len(), g.max)
	}
	live := map[string]int{}
	for el := g.order.Front(); el != nil; el = el.Next() {
		src := el.Value.(*refusalSource)
		if g.m[src.key] != el {
			return fmt.Errorf("entry %q not in the map", src.key)
		}
		want := ""
		if b := src.who.base(); b != nil {
			want = b.key()
		}
		if src.base != want {
			return fmt.Errorf("entry %q: base %q, want %q", src.key, src.base, want)
		}
		if src.base != "" {
			live[src.base]++
		}
	}
	if fmt.Sprint(live) != fmt.Sprint(g.actors) {
		return fmt.Errorf("actors = %v, live entries acting for a party = %v", g.actors, live)
	}
	for k, n := range g.actors {
		if n <= 0 || n > g.maxActors {
			return fmt.Errorf("actors[%q] = %d (max %d)", k, n, g.maxActors)
		}
	}
	return nil
}

// TestIdentityGuardActorCountRandomized drives an identity guard through
// random refusals of a few callers, on their own and acting for a few
// parties, with the time moving on, sweeps (some of every summary),
// evictions (MaxSources small), failed summary writes put back (restore:
// into a live entry, a new one, the caller's own past maxActors, or the
// aside, merged), and checks after each step that the count of entries
// acting for a party per caller is that of the live ones (a count that
// drifts up would leave a caller on its own bucket for good, one that
// drifts down would let it past maxActors), and that a party is given an
// entry of its own whenever its caller has fewer than maxActors.
func TestIdentityGuardActorCountRandomized(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	callers := []*limitedCaller{
		{typ: audit.TypeDeny, workload: "payments-api", owner: "team-payments"},
		{typ: audit.TypeDeny, workload: "agent", owner: "team-ai"},
		{typ: audit.TypeDeny, iss: "https://idp.example", sub: "unmatched"},
	}
	parties := []string{"u1", "u2", "u3", "u4", "u5", "u6"}
	for seed := uint64(1); seed <= 200; seed++ {
		r := rand.New(rand.NewPCG(seed, 42))
		maxSources := 3 + r.IntN(10)
		g := newIdentityGuard(RefusalLimits{PerIdentity: 1 + r.IntN(3), MaxSources: maxSources, SummaryEvery: time.Minute})
		g.maxActors = 1 + r.IntN(3)
		now := t0
		var failed []refusalSummary // summaries handed out, to fail some of
		hand := func(out []refusalSummary) {
			failed = append(failed, out...)
			if len(failed) > 50 {
				failed = failed[len(failed)-50:]
			}
		}
		for step := 0; step < 400; step++ {
			op := ""
			switch k := r.IntN(20); {
			case k < 13:
				who := callers[r.IntN(len(callers))]
				if r.IntN(4) > 0 {
					c := *who
					c.actIss, c.actSub = "https://idp.example", parties[r.IntN(len(parties))]
					who = &c
				}
				op = "take " + who.name()
				_, tracked := g.m[who.key()]
				before := 0
				if b := who.base(); b != nil {
					before = g.actors[b.key()]
				}
				by, _, out := g.takeKey(who.key(), "", who, refusalTag{reason: "actor_not_permitted"}, now)
				hand(out)
				if by != "" && by != RefusalScopeIdentity {
					t.Fatalf("seed %d step %d %s: by %q", seed, step, op, by)
				}
				if b := who.base(); b != nil && !tracked && before < g.maxActors {
					if _, ok := g.m[who.key()]; !ok {
						t.Fatalf("seed %d step %d %s: %d of %d entries acting for a party, yet none of its own", seed, step, op, before, g.maxActors)
					}
				}
			case k < 15:
				now = now.Add(time.Duration(r.IntN(90)) * time.Second)
				op = "time"
			case k < 17:
				all := r.IntN(4) == 0
				op = fmt.Sprintf("sweep all=%v", all)
				hand(g.sweep(now, all, false))
			default:
				if len(failed) == 0 {
					continue
				}
				i := r.IntN(len(failed))
				sum := failed[i]
				failed = append(failed[:i], failed[i+1:]...)
				op = "restore " + sum.who.name()
				if !g.restore(sum) {
					t.Fatalf("seed %d step %d %s: not kept", seed, step, op)
				}
			}
			if err := checkActorCount(g); err != nil {
				t.Fatalf("seed %d step %d after %s: %v", seed, step, op, err)
			}
		}
		// Every entry dropped (the summaries taken, buckets full again):
		// no count left behind.
		g.sweep(now, true, false)
		g.sweep(now.Add(time.Hour), true, false)
		if err := checkActorCount(g); err != nil {
			t.Fatalf("seed %d at the end: %v", seed, err)
		}
		if g.len() != 0 || len(g.actors) != 0 {
			t.Fatalf("seed %d: %d entries, actors %v after every bucket is full again", seed, g.len(), g.actors)
		}
	}
}
