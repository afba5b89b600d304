package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestExchangeAuditFailedDenyNamesCredential: when the issue event fails,
// the credential minted is revoked; the deny event, the only event left
// about it, names it (its references, never a secret), and says
// details.unrevoked: true when that revocation failed, as the deny of a mint
// that left a credential behind does. (It named neither: a credential
// whose revocation failed there was named nowhere in the audit log.)
func TestExchangeAuditFailedDenyNamesCredential(t *testing.T) {
	for _, tc := range []struct {
		name      string
		revokeErr error
		unrevoked any
	}{
		{name: "revoked"},
		{name: "revoke-failed", revokeErr: errors.New("vault down"), unrevoked: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.minter.RevokeErr = tc.revokeErr
			f.sink.Fail = isType(audit.TypeIssue)
			denied := make(chan *audit.Event, 1)
			f.sink.Record = func(ev *audit.Event) {
				if ev.Type == audit.TypeDeny {
					denied <- ev
				}
			}
			_, err := f.svc.Exchange(context.Background(), broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", RequestID: "req_af"})
			if e := broker.AsError(err); !errors.Is(err, broker.ErrUnavailable) || e.Reason != "audit_unavailable" {
				t.Fatalf("Exchange() = %v, want ErrUnavailable (audit_unavailable)", err)
			}
			var deny *audit.Event
			select {
			case deny = <-denied:
			case <-time.After(10 * time.Second):
				t.Fatalf("no deny event after 10s; events %v", f.sink.Types())
			}
			id := f.minter.Calls()[0].IssuanceID
			if deny.IssuanceID != id || deny.Credential == nil || deny.Credential.Accessor != "acc-"+id ||
				deny.Credential.Fingerprint != broker.Fingerprint("hvs.secret-"+id) || deny.Credential.ExpiresAt == "" {
				t.Errorf("deny event issuance %q credential %+v; want issuance %s with accessor acc-%s, its fingerprint and expiry", deny.IssuanceID, deny.Credential, id, id)
			}
			if got := deny.Details["unrevoked"]; got != tc.unrevoked {
				t.Errorf("deny event details.unrevoked = %v, want %v (details %v)", got, tc.unrevoked, deny.Details)
			}
		})
	}
}
