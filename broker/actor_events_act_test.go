package broker_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestDelegatedCredentialEventsCarryAct: the introspect event of a
// credential minted with an actor token names that actor as act, as
// recorded at issuance (the introspected credential's, as its workload
// and issuance id are; the event's identity stays the caller's); one
// minted without names none. (An auditor had to join on the issuance id.)
func TestDelegatedCredentialEventsCarryAct(t *testing.T) {
	f := newFixture(t)
	actor := ssoUser("user:carol", f.now.Add(time.Hour))
	f.authn["actor"] = actor
	ctx := context.Background()
	delegated, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", ActorToken: "actor", Grant: "payments-vault"})
	if err != nil {
		t.Fatal(err)
	}
	alone, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
	if err != nil {
		t.Fatal(err)
	}
	want := []audit.Identity{{Iss: actor.Iss, Sub: actor.Sub, JTI: actor.JTI}}
	for _, tc := range []struct {
		name string
		tok  string
		act  []audit.Identity
	}{{"delegated", delegated.AccessToken, want}, {"alone", alone.AccessToken, nil}} {
		rid := "req_intro_" + tc.name
		res, err := f.svc.Introspect(ctx, broker.IntrospectRequest{CallerToken: "batch", Token: tc.tok, RequestID: rid})
		if err != nil || !res.Active {
			t.Fatalf("introspect %s = %+v, %v", tc.name, res, err)
		}
		var ev *audit.Event
		for _, e := range f.sink.Events() {
			if e.RequestID == rid {
				ev = e
			}
		}
		if ev == nil || ev.Type != audit.TypeIntrospect || !slices.Equal(ev.Act, tc.act) || ev.Identity == nil || ev.Identity.Sub != "system:serviceaccount:data:batch" {
			t.Errorf("%s: introspect event %+v, want act %+v and the caller as identity", tc.name, ev, tc.act)
		}
	}
}
