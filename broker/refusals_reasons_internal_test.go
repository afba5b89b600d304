package broker

import (
	"context"
	"maps"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// TestRefusalSummariesCountReasons: a summary of suppressed refusals counts
// them by the reason each would have been answered (details.reasons), the
// global one and a source's alike, and the 429 that answers one says whose
// refusals were too many and what the request itself was refused for.
// (A fleet's expired tokens past the global bucket were one count of
// source_rate_limited: token_expired was nowhere, and the 429 read as
// the caller's own rate.)
func TestRefusalSummariesCountReasons(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	sink := &recordingSink{}
	svc, err := NewService(Deps{Policy: func() *policies.Policy { return nil }, Authn: func() Authenticator { return nil },
		Store: nopStore{}, Audit: sink, Now: func() time.Time { return t0 },
		RefusalLimits: &RefusalLimits{PerSecond: 1, Burst: 2, SummaryEvery: time.Minute, GlobalPerSecond: 0.001, GlobalBurst: 3}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	expired := func() error {
		return Errorf(ErrUnauthenticated, "token_expired", "the identity token has expired", nil)
	}
	badForm := func() error { return Errorf(ErrInvalidRequest, "bad_form", "malformed form", nil) }
	noReason := func() error { return &Error{Kind: ErrInvalidRequest, Safe: "something is wrong"} }
	refuse := func(ip string, err error) error {
		return svc.refuseAnonymous(ctx, &audit.Event{Type: audit.TypeDeny}, Source{IP: ip}, err)
	}
	// 192.0.2.1: two audited (the global bucket 3 -> 1), three past its
	// own bucket.
	for i := range 5 {
		err := refuse("192.0.2.1", expired())
		if suppressed := SuppressedScope(err) == RefusalScopeSource; suppressed != (i >= 2) {
			t.Fatalf("refusal %d of 192.0.2.1: %v (scope %q)", i+1, err, SuppressedScope(err))
		}
		if i >= 2 {
			if safe := AsError(err).Safe; !strings.Contains(safe, "from this address") || !strings.Contains(safe, "the identity token has expired") {
				t.Errorf("source 429's description %q; want it to blame this address and say the token expired", safe)
			}
		}
	}
	// 192.0.2.2: one audited (the global bucket 1 -> 0), then every
	// refusal from it past the global bucket.
	if err := refuse("192.0.2.2", badForm()); SuppressedScope(err) != "" {
		t.Fatalf("first refusal of 192.0.2.2 suppressed: %v", err)
	}
	for i, mk := range []func() error{expired, expired, badForm, noReason, expired, expired, badForm} {
		err := refuse("192.0.2.2", mk())
		if SuppressedScope(err) != RefusalScopeGlobal {
			t.Fatalf("refusal %d of 192.0.2.2: %v, want suppressed by the global bucket", i+2, err)
		}
		if i == 0 {
			if safe := AsError(err).Safe; !strings.Contains(safe, "all addresses") || !strings.Contains(safe, "the identity token has expired") {
				t.Errorf("global 429's description %q; want it to say all addresses' refusals and that the token expired", safe)
			}
		}
	}
	svc.FlushRefusalSummaries(ctx, true)
	want := map[string]map[string]int{
		RefusalScopeSource: {"token_expired": 3},
		RefusalScopeGlobal: {"token_expired": 4, "bad_form": 2, "invalid_request": 1},
	}
	got := map[string]map[string]int{}
	for _, ev := range sink.Events() {
		if ev.Outcome == nil || ev.Outcome.Reason != ReasonRefusalsSuppressed {
			continue
		}
		scope, _ := ev.Details["scope"].(string)
		r, ok := ev.Details["reasons"].(map[string]int)
		if !ok {
			t.Errorf("%s summary details %v: no reasons", scope, ev.Details)
			continue
		}
		got[scope] = r
		sum := 0
		for _, n := range r {
			sum += n
		}
		if sum != ev.Details["suppressed"] {
			t.Errorf("%s summary: reasons %v add up to %d, suppressed %v", scope, r, sum, ev.Details["suppressed"])
		}
	}
	for scope, w := range want {
		if !maps.Equal(got[scope], w) {
			t.Errorf("%s summary reasons %v, want %v", scope, got[scope], w)
		}
	}
}

// TestRefusalSummaryReasonsKeptOnFailedWrite: the reasons of a summary
// whose write failed are written with the next one, the aside's too.
func TestRefusalSummaryReasonsKeptOnFailedWrite(t *testing.T) {
	t0 := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	g := newRefusalGuard(RefusalLimits{PerSecond: 1, Burst: 1, MaxSources: 1, SummaryEvery: time.Minute, GlobalPerSecond: -1})
	g.takeKey(sourceKey("192.0.2.1"), "192.0.2.1", nil, refusalTag{reason: "a"}, t0)
	g.takeKey(sourceKey("192.0.2.1"), "192.0.2.1", nil, refusalTag{reason: "a"}, t0)
	out := g.sweep(t0, true, false)
	if len(out) != 1 {
		t.Fatalf("%d summaries, want 1", len(out))
	}
	// 192.0.2.2 takes the only slot; the failed summary of 192.0.2.1 goes
	// aside, and so does a second one's.
	g.takeKey(sourceKey("192.0.2.2"), "192.0.2.2", nil, refusalTag{reason: "b"}, t0)
	g.restore(out[0])
	g.restore(refusalSummary{ip: "192.0.2.3", n: 2, first: t0, last: t0, tags: map[refusalTag]int{{reason: "b"}: 2}})
	out = g.sweep(t0, true, false)
	if len(out) != 1 {
		t.Fatalf("%d summaries, want the aside", len(out))
	}
	ev := out[0].event()
	if r, _ := ev.Details["reasons"].(map[string]int); !maps.Equal(r, map[string]int{"a": 1, "b": 2}) || ev.Details["suppressed"] != 3 {
		t.Errorf("aside summary details %v; want reasons a:1 b:2, suppressed 3", ev.Details)
	}
}
