package broker_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/policies"
)

// TestIntrospectOtherKindsIgnorePolicy pins what 92a3c97 left unchanged: a
// minted Vault token or broker JWT stays usable at its backend whatever the
// policy in force says of its grant or workload, so introspection answers
// it active (only a proxy credential, which the broker itself serves, is
// answered by the policy: TestIntrospectProxyCredentialPolicy).
func TestIntrospectOtherKindsIgnorePolicy(t *testing.T) {
	f := newFixture(t)
	// payments-api renamed away, orders-jwt and payments-vault allowed to
	// nobody.
	pol, err := policies.Parse("gone.yaml", []byte(strings.Replace(testPolicy, "  - name: payments-api\n", "  - name: payments-renamed\n", 1)))
	if err != nil {
		t.Fatal(err)
	}
	f.pol = pol
	for _, c := range []struct{ kind, grant, tok string }{
		{broker.KindJWT, "orders-jwt", "eyJhbGciOiJFUzI1NiJ9.jwt-for-test.sig"},
		{broker.KindVaultToken, "payments-vault", "hvs.token-for-test"},
		{broker.KindJWT, "grant-not-in-policy", "eyJhbGciOiJFUzI1NiJ9.other-jwt.sig"},
	} {
		is := &broker.Issuance{
			ID: broker.NewID(broker.PrefixIssuance), Workload: "payments-api", Owner: "team-payments", SessionID: "ses_x",
			Grant: c.grant, Kind: c.kind, IssuedAt: f.now, ExpiresAt: f.now.Add(10 * time.Minute),
			Refs: broker.CredentialRefs{Fingerprint: broker.Fingerprint(c.tok), ExpiresAt: f.now.Add(10 * time.Minute)},
		}
		if err := f.store.PutIssuance(context.Background(), is); err != nil {
			t.Fatal(err)
		}
		res, err := f.svc.Introspect(context.Background(), broker.IntrospectRequest{CallerToken: "batch", Token: c.tok})
		if err != nil {
			t.Fatalf("Introspect %s %s = %v", c.kind, c.grant, err)
		}
		if !res.Active || res.Issuance == nil || res.Issuance.ID != is.ID {
			t.Errorf("Introspect %s of grant %s with its workload gone from the policy = active %v, want active (its backend still takes it)", c.kind, c.grant, res.Active)
		}
	}
}
