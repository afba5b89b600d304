package broker_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// TestDelegatedCredentialRevocationEventsCarryAct: the events about one
// credential minted with an actor token name that actor as act, as its
// issue, use and introspect events do: the revoke and revoke_result events
// of its revocation by issuance id (identity stays the admin's), and the
// orphan_revoked event of one taken back because its store write failed.
// A revocation of a workload (several credentials) names none, nor does
// one of a credential minted without an actor. (They named none: an
// auditor had to join on the issuance id to see who acted.)
func TestDelegatedCredentialRevocationEventsCarryAct(t *testing.T) {
	f := newFixture(t)
	actor := ssoUser("user:carol", f.now.Add(time.Hour))
	f.authn["actor"] = actor
	ctx := context.Background()
	want := []audit.Identity{{Iss: actor.Iss, Sub: actor.Sub, JTI: actor.JTI}}
	delegated, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", ActorToken: "actor", Grant: "payments-vault"})
	if err != nil {
		t.Fatal(err)
	}
	alone, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "batch", Grant: "payments-vault"})
	if err != nil {
		t.Fatal(err)
	}
	check := func(t *testing.T, rid string, act []audit.Identity) {
		t.Helper()
		types := map[string]int{}
		for _, ev := range f.sink.Events() {
			if ev.RequestID != rid {
				continue
			}
			types[ev.Type]++
			if ev.Type == audit.TypeBlock {
				continue // about a workload
			}
			if !slices.Equal(ev.Act, act) {
				t.Errorf("%s event act %+v, want %+v", ev.Type, ev.Act, act)
			}
			if ev.Type == audit.TypeRevoke && (ev.Identity == nil || ev.Identity.Sub != "alice") {
				t.Errorf("revoke event identity %+v, want the admin's", ev.Identity)
			}
		}
		if types[audit.TypeRevoke] != 1 || types[audit.TypeRevokeResult] != 1 {
			t.Errorf("events of %s: %v, want one revoke and one revoke_result", rid, types)
		}
	}
	for _, tc := range []struct {
		name string
		sel  broker.RevokeSelector
		act  []audit.Identity
	}{
		{"delegated", broker.RevokeSelector{IssuanceID: delegated.Issuance.ID}, want},
		{"alone", broker.RevokeSelector{IssuanceID: alone.Issuance.ID}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rid := "req_rev_" + tc.name
			if _, err := f.svc.Revoke(ctx, secops, tc.sel, "test", broker.RevokeOptions{}, rid); err != nil {
				t.Fatal(err)
			}
			check(t, rid, tc.act)
		})
	}
	t.Run("workload", func(t *testing.T) {
		if _, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", ActorToken: "actor", Grant: "payments-vault"}); err != nil {
			t.Fatal(err)
		}
		if _, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "test", broker.RevokeOptions{}, "req_rev_wl"); err != nil {
			t.Fatal(err)
		}
		for _, ev := range f.sink.Events() {
			if ev.RequestID == "req_rev_wl" && ev.Act != nil {
				t.Errorf("%s event of a workload's revocation names act %+v, want none", ev.Type, ev.Act)
			}
		}
	})
	t.Run("orphan-revoked", func(t *testing.T) {
		bs := &blockingStore{Store: f.store, entered: make(chan struct{}, 1), release: make(chan struct{}),
			err: broker.Unavailable("store_unavailable", time.Second, errors.New("redis down"))}
		close(bs.release)
		svc := f.serviceWith(t, bs, f.sink)
		if _, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "batch", ActorToken: "actor", Grant: "payments-vault", RequestID: "req_orphan"}); !errors.Is(err, broker.ErrUnavailable) {
			t.Fatalf("exchange = %v, want unavailable", err)
		}
		n := 0
		for _, ev := range f.sink.Events() {
			if ev.RequestID == "req_orphan" && ev.Type == audit.TypeOrphanRevoked {
				n++
				if !slices.Equal(ev.Act, want) {
					t.Errorf("orphan_revoked act %+v, want %+v", ev.Act, want)
				}
			}
		}
		if n != 1 {
			t.Errorf("%d orphan_revoked events, want 1", n)
		}
	})
	// A block's sweep that finds another credential of the workload:
	// its revoke_result names that one too, and no act.
	t.Run("sweep", func(t *testing.T) {
		res, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "batch", ActorToken: "actor", Grant: "payments-vault"})
		if err != nil {
			t.Fatal(err)
		}
		rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: res.Issuance.ID}, "test", broker.RevokeOptions{Block: true}, "req_rev_sweep")
		if err != nil {
			t.Fatal(err)
		}
		check(t, "req_rev_sweep", want)
		// One minted by an instance that had not learned the block yet.
		late := *res.Issuance
		late.ID, late.IssuedAt, late.Act = "iss_01LATE", f.now, nil
		late.Refs.Fingerprint, late.Refs.Accessor = "sha256:late", "acc-late"
		if err := f.store.PutIssuance(ctx, &late); err != nil {
			t.Fatal(err)
		}
		w, err := broker.NewRevocationWorker(f.svc, broker.WorkerOptions{Interval: 2 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		f.now = rev.SweepAt
		if err := w.Tick(ctx); err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, ev := range f.sink.Events() {
			if ev.RevocationID == rev.ID && ev.Type == audit.TypeRevokeResult && ev.Details["by"] == "sweep" {
				n++
				if !strings.Contains(fmt.Sprint(ev.Details["swept"]), "iss_01LATE") {
					t.Errorf("sweep's revoke_result %+v does not name the late credential under swept", ev.Details)
				}
				if ev.Act != nil {
					t.Errorf("sweep's revoke_result %+v names act %+v, want none (it names another issuance)", ev.Details, ev.Act)
				}
			}
		}
		if n == 0 {
			t.Error("no revoke_result by the sweep")
		}
	})
}
