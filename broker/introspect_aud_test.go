package broker_test

import (
	"context"
	"testing"

	"github.com/keytrail/keytrail/broker"
)

// TestIssuanceRecordsJWTAudience: a broker JWT's issuance records the
// audience it was signed for (the grant's at the mint), which
// introspection answers as aud (RFC 7662 §2.2); other kinds have none.
func TestIssuanceRecordsJWTAudience(t *testing.T) {
	svc, _, handoff := chainService(t, chainPolicy)
	ctx := context.Background()
	if handoff.Issuance.Audience != "keytrail" {
		t.Errorf("jwt issuance audience = %q, want keytrail (grant handoff-jwt's)", handoff.Issuance.Audience)
	}
	stored, err := svc.Store().GetIssuance(ctx, handoff.Issuance.ID)
	if err != nil || stored.Audience != "keytrail" {
		t.Errorf("stored jwt issuance audience = %+v, %v; want keytrail", stored, err)
	}
	vt, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
	if err != nil {
		t.Fatal(err)
	}
	if vt.Issuance.Audience != "" {
		t.Errorf("vault token issuance audience = %q, want none", vt.Issuance.Audience)
	}
}
