package proxy_test

import (
	"context"
	"slices"
	"testing"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestUseEventsCarryAct: the use and use_result events of a request made
// with a proxy credential minted with an actor token name that actor as
// act, as the issuance recorded it (docs/SPEC-ADDITIONS.md "Delegation"),
// so an auditor reading a use sees who the workload acted for without
// joining on the issuance id; those of a credential minted without one
// name none; so does the deny of a request refused with it. (They carried
// no act.)
func TestUseEventsCarryAct(t *testing.T) {
	f := newFixture(t, fixtureOpts{})
	delegated, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{
		SubjectToken: identityToken, ActorToken: actorToken, Grant: "stripe", RequestID: "req_delegated"})
	if err != nil {
		t.Fatal(err)
	}
	f.waitEvent(t, audit.TypeIssue)
	alone := f.credential(t, "stripe")
	want := []audit.Identity{{Iss: "https://ci.example", Sub: "user:carol", JTI: "jti-carol"}}
	for _, tc := range []struct {
		name string
		res  *broker.ExchangeResult
		act  []audit.Identity
	}{{"delegated", delegated, want}, {"alone", alone, nil}} {
		res := f.do(t, "GET", "/v1/proxy/stripe/v1/charges", bearer(tc.res.AccessToken), nil)
		if res.Status != 200 {
			t.Fatalf("%s: GET = %d %s", tc.name, res.Status, res.Body)
		}
		f.waitEvent(t, audit.TypeUseResult)
		n := 0
		for _, ev := range f.sink.Events() {
			if ev.IssuanceID != tc.res.Issuance.ID || (ev.Type != audit.TypeUse && ev.Type != audit.TypeUseResult) {
				continue
			}
			n++
			if !slices.Equal(ev.Act, tc.act) {
				t.Errorf("%s: %s event act = %+v, want %+v", tc.name, ev.Type, ev.Act, tc.act)
			}
		}
		if n != 2 {
			t.Errorf("%s: %d use and use_result events, want 2", tc.name, n)
		}
	}
	// A refused request with the delegated credential: its deny too.
	if res := f.do(t, "GET", "/v1/proxy/stripe/v1/not-allowed", bearer(delegated.AccessToken), nil); res.Status != 403 {
		t.Fatalf("GET a path the grant does not allow = %d %s, want 403", res.Status, res.Body)
	}
	f.waitEvent(t, audit.TypeDeny)
	denies := f.eventsOf(audit.TypeDeny)
	if len(denies) != 1 || denies[0].IssuanceID != delegated.Issuance.ID || !slices.Equal(denies[0].Act, want) {
		t.Errorf("deny events %+v, want one of %s with act %+v", denies, delegated.Issuance.ID, want)
	}
}
