package broker

import (
	"fmt"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
)

// TestIdentityKeyActorApart: the entry of a caller acting for a party is
// apart from every caller's own entry, and from every other pair's,
// whatever bytes the subject's and the actor's claims hold (a sub is
// whatever its issuer signed, \x00 included): a subject whose sub ends
// like the key of another caller acting for a party would otherwise take
// from that entry's bucket, its refusals unaudited, and be counted by its
// summary.
func TestIdentityKeyActorApart(t *testing.T) {
	const idp, actIdp = "https://idp.example", "https://a"
	acting := func(c limitedCaller, iss, sub string) *limitedCaller {
		c.actIss, c.actSub = iss, sub
		return &c
	}
	agent := limitedCaller{typ: audit.TypeDeny, iss: idp, sub: "agent"}
	tail := "\x00act\x00" + fmt.Sprint(len(actIdp)) + ":" + actIdp + "x"
	callers := []*limitedCaller{
		acting(agent, actIdp, "x"),
		{typ: audit.TypeDeny, iss: idp, sub: "agent" + tail},
		acting(limitedCaller{typ: audit.TypeDeny, iss: idp, sub: "agent" + tail}, actIdp, "x"),
		acting(agent, actIdp, "x"+tail),
		acting(agent, actIdp+"x", ""),
		{typ: audit.TypeDeny, workload: "w" + tail},
		acting(limitedCaller{typ: audit.TypeDeny, workload: "w"}, actIdp, "x"),
		&agent,
	}
	seen := map[string]string{}
	for _, c := range callers {
		k := c.key()
		if other, dup := seen[k]; dup {
			t.Errorf("%q and %q share the entry %q", other, c.name(), k)
		}
		seen[k] = c.name()
	}

	// Through the guard: the crafted subject's own refusals leave the
	// bucket of the agent acting for x full.
	g := newIdentityGuard(RefusalLimits{PerIdentity: 1, MaxSources: 10, SummaryEvery: time.Minute})
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	crafted := callers[1]
	for range 3 {
		g.takeKey(crafted.key(), "", crafted, refusalTag{reason: "no_workload"}, t0)
	}
	victim := callers[0]
	if by, _, _ := g.takeKey(victim.key(), "", victim, refusalTag{reason: "actor_not_permitted"}, t0); by != "" {
		t.Errorf("the agent's first refusal acting for x after another subject's 3 = %q, want audited", by)
	}
}
