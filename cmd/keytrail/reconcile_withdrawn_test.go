package main

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// listedTokens is a broker.TaggedSource over a fixed list of live tokens
// that records what it is asked to revoke.
type listedTokens struct {
	mu      sync.Mutex
	live    []broker.TaggedCredential
	revoked []string
}

func (l *listedTokens) ListTagged(ctx context.Context, skip func([]string) []bool) ([]broker.TaggedCredential, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	refs := make([]string, len(l.live))
	for i, c := range l.live {
		refs[i] = c.Ref
	}
	var out []broker.TaggedCredential
	for i, skipped := range skip(refs) {
		if !skipped {
			out = append(out, l.live[i])
		}
	}
	return out, nil
}

func (l *listedTokens) RevokeTagged(ctx context.Context, c broker.TaggedCredential) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.revoked = append(l.revoked, c.IssuanceID)
	return nil
}

// TestReconcileRevokesWithdrawnIssuance: an exchange whose store write
// failed after its issue event became durable, and whose own revocation
// failed too, leaves a live token nobody was handed, an issue event and an
// orphan_revoked event (store_failed, revoke_failed) saying "the
// reconciliation takes it from here". The reconciliation must revoke it
// (no_record): the issue event of a withdrawn issuance explains nothing.
// A token whose issue event stands alone is still kept.
func TestReconcileRevokesWithdrawnIssuance(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	withdrawn, kept := broker.NewID(broker.PrefixIssuance), broker.NewID(broker.PrefixIssuance)
	log := `{"v":1,"time":"2026-11-26T10:00:00Z","type":"issue","issuance_id":"` + withdrawn + `","credential":{"accessor":"acc-w","expires_at":"2999-01-01T00:00:00Z"}}` + "\n" +
		`{"v":1,"time":"2026-11-26T10:00:00Z","type":"issue","issuance_id":"` + kept + `","credential":{"accessor":"acc-k","expires_at":"2999-01-01T00:00:00Z"}}` + "\n" +
		`{"v":1,"time":"2026-11-26T10:00:01Z","type":"orphan_revoked","issuance_id":"` + withdrawn + `","reason":"store_failed","credential":{"accessor":"acc-w"},"outcome":{"status":503,"error":"temporarily_unavailable","reason":"revoke_failed"}}` + "\n"
	if err := os.WriteFile(path, []byte(log), 0o600); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	created := now.Add(-2 * time.Hour)
	src := &listedTokens{live: []broker.TaggedCredential{
		{Kind: broker.KindVaultToken, Ref: "acc-w", IssuanceID: withdrawn, Workload: "payments-api", CreatedAt: created},
		{Kind: broker.KindVaultToken, Ref: "acc-k", IssuanceID: kept, Workload: "payments-api", CreatedAt: created},
	}}
	sink := &brokertest.Sink{}
	rec, err := broker.NewReconciler(broker.ReconcilerOptions{
		Source: src, Store: memstore.New(func() time.Time { return now }), Audit: sink,
		Issued: newAuditIssueIndex(path), IssuedComplete: true, Now: func() time.Time { return now },
	})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := rec.RunOnce(context.Background())
	if err != nil {
		t.Fatalf("RunOnce() error = %v", err)
	}
	if diff := cmp.Diff([]string{withdrawn}, src.revoked); diff != "" {
		t.Errorf("revoked (-want +got):\n%s (report %+v)", diff, rep)
	}
	evs := sink.Events()
	if len(evs) != 1 || evs[0].IssuanceID != withdrawn || evs[0].Reason != broker.OrphanNoRecord {
		t.Errorf("orphan_revoked events = %v, want one for %s with reason no_record", sink.Types(), withdrawn)
	}
}
