package vault_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/memstore"
	vault "github.com/keytrail/keytrail/adapters/vault"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/e2e/harness"
	"github.com/keytrail/keytrail/policies"
)

// TestRealVaultReconcile runs the broker's reconciliation (broker.Reconciler
// over TokenInventory) against a real `vault server -dev`.
func TestRealVaultReconcile(t *testing.T) {
	v := harness.StartVault(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	root := v.Client // the inventory lists accessors, which needs sudo

	// mint mints a token for a new issuance and returns that issuance
	// (its id and references), recorded nowhere.
	mint := func(t *testing.T, m *vault.TokenMinter, ttl time.Duration) *broker.Issuance {
		t.Helper()
		req := broker.MintRequest{
			IssuanceID: broker.NewID(broker.PrefixIssuance), Workload: "app", Owner: "team-app", SessionID: "ses_rec",
			Grant: policies.Grant{Name: "app-vault", Kind: broker.KindVaultToken, TTL: policies.Duration(ttl),
				VaultToken: &policies.VaultTokenGrant{Policies: []string{"default"}}},
			TTL: ttl, Now: time.Now(),
		}
		cred, err := m.Mint(ctx, req)
		if err != nil {
			t.Fatalf("Mint() = %v", err)
		}
		return &broker.Issuance{ID: req.IssuanceID, Workload: req.Workload, Owner: req.Owner, SessionID: req.SessionID,
			Grant: req.Grant.Name, Kind: req.Grant.Kind, IssuedAt: req.Now, ExpiresAt: cred.Refs.ExpiresAt, Refs: cred.Refs}
	}
	// gone reports whether Vault no longer knows the token of accessor.
	gone := func(t *testing.T, accessor string) bool {
		t.Helper()
		_, err := root.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": accessor})
		return err != nil
	}

	// A token that expires between the listing and its revocation was not
	// revoked by the reconciliation: Vault answers revoke-accessor with
	// 200 and the warning "No token found with this accessor", and no
	// orphan_revoked event may say otherwise.
	t.Run("ok/expired-before-revocation-records-nothing", func(t *testing.T) {
		m, err := vault.NewTokenMinter(vault.TokenMinterOptions{Client: root})
		if err != nil {
			t.Fatal(err)
		}
		cred := mint(t, m, 3*time.Second)
		inv, err := vault.NewTokenInventory(vault.TokenInventoryOptions{Client: root})
		if err != nil {
			t.Fatal(err)
		}
		src := &expireAfterListing{TokenInventory: inv, wait: func(creds []broker.TaggedCredential) {
			listed := false
			for _, c := range creds {
				listed = listed || c.Ref == cred.Refs.Accessor
			}
			if !listed {
				t.Errorf("ListTagged() = %+v, want the fresh token %s listed", creds, cred.Refs.Accessor)
				return
			}
			deadline := time.Now().Add(30 * time.Second)
			for !gone(t, cred.Refs.Accessor) {
				if time.Now().After(deadline) {
					t.Fatalf("token %s still known to Vault 30s after its 3s TTL", cred.Refs.Accessor)
				}
				<-time.After(100 * time.Millisecond) // poll Vault's own expiry
			}
		}}
		sink := &brokertest.Sink{}
		r, err := broker.NewReconciler(broker.ReconcilerOptions{Source: src, Store: memstore.New(time.Now), Audit: sink,
			// An hour ahead: every listed token is past the grace.
			Now: func() time.Time { return time.Now().Add(time.Hour) }})
		if err != nil {
			t.Fatal(err)
		}
		rep, err := r.RunOnce(ctx)
		if err != nil {
			t.Fatalf("RunOnce() = %v", err)
		}
		if rep.Revoked != 0 || rep.Gone != 1 || rep.Failures != 0 {
			t.Errorf("RunOnce() = %+v, want Gone 1, nothing revoked or failed", rep)
		}
		if types := sink.Types(); len(types) != 0 {
			t.Errorf("audit events %v, want none for a token that expired on its own", types)
		}
	})

	// Two keytrail deployments (each its own in-memory store) share this
	// Vault. Each one's reconciliation revokes only its own orphans (and
	// those minted before tokens named their deployment), never the other
	// deployment's tokens, which its own records cannot explain.
	t.Run("ok/two-deployments-leave-each-others-tokens", func(t *testing.T) {
		minter := func(deployment string) *vault.TokenMinter {
			m, err := vault.NewTokenMinter(vault.TokenMinterOptions{Client: root, Deployment: deployment})
			if err != nil {
				t.Fatal(err)
			}
			return m
		}
		reconciler := func(deployment string, store broker.Store, sink broker.AuditSink) *broker.Reconciler {
			inv, err := vault.NewTokenInventory(vault.TokenInventoryOptions{Client: root, Deployment: deployment})
			if err != nil {
				t.Fatal(err)
			}
			r, err := broker.NewReconciler(broker.ReconcilerOptions{Source: inv, Store: store, Audit: sink,
				Now: func() time.Time { return time.Now().Add(time.Hour) }})
			if err != nil {
				t.Fatal(err)
			}
			return r
		}
		orphanA := mint(t, minter("dep-a"), 10*time.Minute) // a's, never recorded (a crashed)
		legacy := mint(t, minter(""), 10*time.Minute)       // minted before tokens named a deployment
		ofB := mint(t, minter("dep-b"), 10*time.Minute)     // b's, recorded by b
		sec, err := root.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": ofB.Refs.Accessor})
		if err != nil {
			t.Fatal(err)
		}
		if meta, _ := sec.Data["meta"].(map[string]any); meta[vault.MetaDeployment] != "dep-b" {
			t.Errorf("meta of b's token = %v, want deployment dep-b", meta)
		}
		storeB := memstore.New(time.Now)
		if err := storeB.PutIssuance(ctx, ofB); err != nil {
			t.Fatal(err)
		}

		sinkA := &brokertest.Sink{}
		rep, err := reconciler("dep-a", memstore.New(time.Now), sinkA).RunOnce(ctx)
		if err != nil {
			t.Fatalf("a: RunOnce() = %v", err)
		}
		if rep.Revoked != 2 || rep.Failures != 0 {
			t.Errorf("a: RunOnce() = %+v, want 2 revoked (its orphan and the untagged one)", rep)
		}
		var revoked []string
		for _, ev := range sinkA.Events() {
			revoked = append(revoked, ev.IssuanceID+" "+ev.Reason)
		}
		slices.Sort(revoked)
		want := []string{orphanA.ID + " " + broker.OrphanNoRecord, legacy.ID + " " + broker.OrphanNoRecord}
		slices.Sort(want)
		if diff := cmp.Diff(want, revoked); diff != "" {
			t.Errorf("a's orphan_revoked events (-want +got):\n%s", diff)
		}
		if gone(t, ofB.Refs.Accessor) {
			t.Fatalf("a's reconciliation revoked b's token %s", ofB.ID)
		}

		sinkB := &brokertest.Sink{}
		rep, err = reconciler("dep-b", storeB, sinkB).RunOnce(ctx)
		if err != nil {
			t.Fatalf("b: RunOnce() = %v", err)
		}
		if rep.Revoked != 0 || rep.Kept != 1 || len(sinkB.Events()) != 0 {
			t.Errorf("b: RunOnce() = %+v with events %v, want its recorded token kept and nothing revoked", rep, sinkB.Types())
		}
		if gone(t, ofB.Refs.Accessor) {
			t.Errorf("b's token %s was revoked", ofB.ID)
		}
	})
}

// expireAfterListing is a TokenInventory whose listing returns only once
// wait, given what was listed, has returned.
type expireAfterListing struct {
	*vault.TokenInventory
	wait func([]broker.TaggedCredential)
}

func (s *expireAfterListing) ListTagged(ctx context.Context, skip func([]string) []bool) ([]broker.TaggedCredential, error) {
	creds, err := s.TokenInventory.ListTagged(ctx, skip)
	if err == nil {
		s.wait(creds)
	}
	return creds, err
}
