package broker_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// An actor token that verified (a trusted issuer's signature, unexpired,
// its audience) but is refused all the same, a revoked broker JWT or one
// whose workload is blocked, is named as act on the exchange's deny event
// (docs/SPEC-ADDITIONS.md "Delegation": act is recorded on the deny
// events), as the subject that is refused for the same reason is named as
// its identity: after revoking a leaked broker JWT, an auditor reads who
// still tried to act with it. (The deny named the subject and the reason
// actor_credential_revoked, but not which actor.) An actor token that does
// not verify is still not named (its claims are not known to be true).
func TestActorRefusedAfterAuthenticationNamedAsAct(t *testing.T) {
	for _, tc := range []struct {
		name  string
		close func(t *testing.T, svc *broker.Service, is *broker.Issuance)
	}{
		{name: "revoked", close: func(t *testing.T, svc *broker.Service, is *broker.Issuance) {
			if _, err := svc.Revoke(context.Background(), secops, broker.RevokeSelector{IssuanceID: is.ID}, "jwt leaked", broker.RevokeOptions{}, "req_r"); err != nil {
				t.Fatal(err)
			}
		}},
		{name: "workload-blocked", close: func(t *testing.T, svc *broker.Service, is *broker.Issuance) {
			if err := svc.Store().PutBlock(context.Background(), broker.Block{Workload: is.Workload, Reason: "incident", CreatedAt: time.Now()}); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			svc, sink, handoff := chainService(t, chainPolicy)
			ctx, jwtTok := context.Background(), handoff.AccessToken
			wantAct := []audit.Identity{{Iss: "https://keytrail.example", Sub: "payments-api", JTI: handoff.Issuance.ID}}
			tc.close(t, svc, handoff.Issuance)

			before := len(sink.Events())
			_, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "lookalike", ActorToken: jwtTok, Grant: "payments-vault", RequestID: "req_act"})
			if !errors.Is(err, broker.ErrDenied) || broker.AsError(err).Reason != "actor_credential_revoked" {
				t.Fatalf("exchange with the %s broker JWT as actor = %v, want access_denied (actor_credential_revoked)", tc.name, err)
			}
			var deny *audit.Event
			for _, ev := range sink.Events()[before:] {
				if ev.RequestID == "req_act" && ev.Type == audit.TypeDeny {
					deny = ev
				}
			}
			if deny == nil {
				t.Fatal("no deny event for the refused exchange")
			}
			if !slices.Equal(deny.Act, wantAct) || deny.Identity == nil || deny.Identity.JTI != "iss_01LOOKALIKE" {
				t.Errorf("deny event: identity %+v, act %+v; want the subject as identity and the refused actor %+v as act", deny.Identity, deny.Act, wantAct)
			}

			// A forged actor token names no act.
			before = len(sink.Events())
			_, err = svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "lookalike", ActorToken: "forged", Grant: "payments-vault", RequestID: "req_forged"})
			if !errors.Is(err, broker.ErrUnauthenticated) {
				t.Fatalf("exchange with a forged actor token = %v, want unauthenticated", err)
			}
			for _, ev := range sink.Events()[before:] {
				if ev.RequestID == "req_forged" && ev.Act != nil {
					t.Errorf("deny event of a forged actor token names act %+v, want none", ev.Act)
				}
			}
		})
	}
}
