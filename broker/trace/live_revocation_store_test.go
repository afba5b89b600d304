package trace_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// A revocation made through another instance: its events are in that
// instance's log only, its record and the revoked marks in the shared
// store. The online trace of its id on this instance finds the issuances
// it names in the store (oldest first, the others as also matched), and
// says they come from the store; the named ids the store no longer has
// come last, as the index puts those it has no issue event of.
func TestLiveRevocationIDFromStore(t *testing.T) {
	const (
		revID  = "rev_01JXR0000000000000000000RR"
		idOld  = "iss_01JXE0000000000000000000EE" // issued first
		idNew  = "iss_01JXF0000000000000000000FF"
		idGone = "iss_01JXD0000000000000000000DD" // named, no longer stored
	)
	ctx := context.Background()
	evs := fixtureEvents()
	path := writeLines(t, t.TempDir(), "audit.jsonl", sealed(t, "chn_rev", 0, []*audit.Event{evs[0], evs[3]})) // idC only
	st := memstore.New(func() time.Time { return at(2 * time.Hour) })
	for _, is := range []*broker.Issuance{
		{ID: idOld, Workload: "orders", Owner: "team-orders", Grant: "orders-db", Kind: broker.KindVaultDynamic,
			IssuedAt: at(time.Minute), ExpiresAt: at(time.Hour), Refs: broker.CredentialRefs{LeaseID: "database/creds/orders/leaseE"},
			RevokedAt: at(20 * time.Minute), RevocationID: revID},
		{ID: idNew, Workload: "orders", Owner: "team-orders", Grant: "orders-db", Kind: broker.KindVaultDynamic,
			IssuedAt: at(2 * time.Minute), ExpiresAt: at(time.Hour), Refs: broker.CredentialRefs{LeaseID: "database/creds/orders/leaseF"}},
	} {
		if err := st.PutIssuance(ctx, is); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.PutRevocation(ctx, &broker.Revocation{ID: revID, Selector: broker.RevokeSelector{Workload: "orders"}, Reason: "INC-2",
		CreatedAt: at(20 * time.Minute), Matched: 3, Revoked: []string{idOld}, Pending: []string{idGone},
		Failed: []broker.RevokeFailure{{IssuanceID: idNew, Error: "vault unavailable"}}}); err != nil {
		t.Fatal(err)
	}
	live, err := trace.NewLive(trace.LiveOptions{Path: path, Store: st})
	if err != nil {
		t.Fatal(err)
	}
	res, err := live.Trace(ctx, revID)
	if err != nil {
		t.Fatalf("Trace(%s) = %v, want the issuances the revocation names, from the store", revID, err)
	}
	got := []any{res.Issuance.ID, res.Issuance.RevocationID, res.From, res.Query, res.AlsoMatched, len(res.Uses), len(res.Revocations)}
	want := []any{idOld, revID, trace.FromStore, trace.Match{Kind: trace.KindRevocationID, Value: revID}, []string{idNew, idGone}, 0, 0}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Trace(%s): issuance, revocation id, from, query, also matched, uses, revocations (-want +got):\n%s", revID, diff)
	}

	// A revocation id the store does not have either is not found.
	if _, err := live.Trace(ctx, "rev_01JXZ0000000000000000000ZZ"); !errors.Is(err, trace.ErrNoMatch) {
		t.Errorf("Trace(unknown revocation id) = %v, want no match", err)
	}
}
