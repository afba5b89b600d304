package broker_test

import (
	"bytes"
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/trace"
)

// TestRevokeManyIssuancesFitsAuditLines revokes a workload holding more
// active credentials than one audit line (audit.MaxLineBytes) can name. The
// sink seals every event as the audit file does and refuses a line over the
// bound, as it does: the revocation must still be made, every credential
// revoked, and the revoke and revoke_result events must name each one
// (split over several events of their type, each line within the bound).
func TestRevokeManyIssuancesFitsAuditLines(t *testing.T) {
	// Enough ids that one event naming them all is over 1 MiB.
	const n = 40_000
	var bulk *bulkStore
	f := newRevFixture(t, func(_ *revFixture, s broker.Store) broker.Store {
		bulk = &bulkStore{Store: s, m: map[string]broker.Issuance{}}
		return bulk
	})
	chain := audit.NewChain("c1")
	var longest int
	var log bytes.Buffer
	f.sink.Fail = func(ev *audit.Event) bool {
		cp := *ev // Seal fills in the chain fields
		line, err := chain.Seal(&cp, f.clock())
		if err != nil {
			return true
		}
		longest = max(longest, len(line))
		log.Write(append(line, '\n'))
		return false
	}
	ctx := context.Background()
	want := make([]string, 0, n)
	now := f.clock()
	for i := range n {
		id := fmt.Sprintf("iss_01JTEST%019d", i)
		bulk.m[id] = broker.Issuance{
			ID: id, Workload: "payments-api", Owner: "team-payments",
			SessionID: "ses_1", Grant: "payments-vault", Kind: broker.KindVaultToken,
			IssuedAt: now, ExpiresAt: now.Add(time.Hour),
		}
		want = append(want, id)
	}
	slices.Sort(want)

	rev, err := f.svc.Revoke(ctx, secops, broker.RevokeSelector{Workload: "payments-api"}, "incident 7", broker.RevokeOptions{}, "req_big")
	if err != nil {
		t.Fatalf("Revoke() error = %v", err)
	}
	if rev.Matched != n || len(rev.Revoked) != n {
		t.Fatalf("Revoke() matched %d, revoked %d; want %d and %d", rev.Matched, len(rev.Revoked), n, n)
	}
	if longest > audit.MaxLineBytes {
		t.Fatalf("longest audit line = %d bytes, over %d", longest, audit.MaxLineBytes)
	}
	var named, revoked []string
	parts := map[string]int{}
	for _, ev := range f.sink.Events() {
		if ev.RevocationID != rev.ID {
			continue
		}
		parts[ev.Type]++
		switch ev.Type {
		case audit.TypeRevoke:
			named = append(named, ev.Details["issuance_ids"].([]string)...)
		case audit.TypeRevokeResult:
			revoked = append(revoked, ev.Details["revoked"].([]string)...)
		}
	}
	slices.Sort(named)
	slices.Sort(revoked)
	if !slices.Equal(named, want) {
		t.Errorf("revoke events name %d issuances, want the %d matched", len(named), n)
	}
	if !slices.Equal(revoked, want) {
		t.Errorf("revoke_result events list %d revoked, want %d", len(revoked), n)
	}
	if parts[audit.TypeRevoke] < 2 || parts[audit.TypeRevokeResult] < 2 {
		t.Errorf("events per type = %v, want the lists split over several", parts)
	}
	// An auditor tracing the last id (in the last part) finds the revocation.
	idx, err := trace.NewIndex(trace.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := idx.Consume(&log); err != nil {
		t.Fatalf("Consume() error = %v", err)
	}
	res, err := idx.Lookup(want[n-1])
	if err != nil {
		t.Fatalf("Lookup(%s) error = %v", want[n-1], err)
	}
	if res.Issuance.RevocationID != rev.ID {
		t.Errorf("Lookup(%s): revocation_id = %q, want %s", want[n-1], res.Issuance.RevocationID, rev.ID)
	}
}

// bulkStore holds the issuances of m in a plain map in front of Store, so
// that a test can revoke tens of thousands without encoding each one.
type bulkStore struct {
	broker.Store
	mu sync.Mutex
	m  map[string]broker.Issuance
}

func (b *bulkStore) PutIssuance(ctx context.Context, is *broker.Issuance) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.m[is.ID]; ok {
		b.m[is.ID] = *is
		return nil
	}
	return b.Store.PutIssuance(ctx, is)
}

func (b *bulkStore) MarkRevoked(ctx context.Context, is *broker.Issuance) (*broker.Issuance, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if cur, ok := b.m[is.ID]; ok {
		if cur.RevokedAt.IsZero() {
			b.m[is.ID] = *is
			cur = *is
		}
		return &cur, nil
	}
	return b.Store.MarkRevoked(ctx, is)
}

func (b *bulkStore) GetIssuance(ctx context.Context, id string) (*broker.Issuance, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if is, ok := b.m[id]; ok {
		return &is, nil
	}
	return b.Store.GetIssuance(ctx, id)
}

func (b *bulkStore) ListIssuances(ctx context.Context, f broker.IssuanceFilter) ([]*broker.Issuance, error) {
	list, err := b.Store.ListIssuances(ctx, f)
	if err != nil || f.Workload != "payments-api" || f.Owner != "" || f.SessionID != "" {
		return list, err
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, is := range b.m {
		if is.RevokedAt.IsZero() && (f.ActiveAt.IsZero() || f.ActiveAt.Before(is.ExpiresAt)) {
			list = append(list, &is)
		}
	}
	return list, nil
}
