package vault_test

import (
	"context"
	"testing"
	"time"

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

	mint := func(t *testing.T, m *vault.TokenMinter, ttl time.Duration) *broker.Credential {
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
		return cred
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
