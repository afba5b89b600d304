package broker_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/keytrail/keytrail/broker"
)

// TestExchangeRevokedBrokerJWTKnownToCache: a revoked broker JWT of a
// workload without a rate (no bucket of its own bounds its store reads)
// cost one or two store reads per /v1/token request, also when this
// instance's revocation cache already knew its jti revoked (a store read
// that can only confirm it). The cache's knowledge now refuses it before
// the store is read; a broker JWT the cache knows nothing of is still
// looked up (the live credential keeps exchanging), and so is a revoked
// one the cache has not learned yet.
func TestExchangeRevokedBrokerJWTKnownToCache(t *testing.T) {
	const calls = 100
	store := &findCountingStore{}
	var cache *broker.RevocationCache
	svc, sink, handoff := chainServiceWith(t, chainPolicy, &broker.RefusalLimits{PerIdentity: -1}, func(s broker.Store) broker.Store {
		store.Store = s
		c, err := broker.NewRevocationCache(store, broker.CacheOptions{Now: func() time.Time { return time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC) }})
		if err != nil {
			t.Fatal(err)
		}
		cache = c
		return c.Store()
	})
	ctx := context.Background()
	exchange := func() error {
		_, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: handoff.AccessToken, Grant: "payments-vault"})
		return err
	}
	// Live: looked up, exchanged.
	finds := store.finds.Load()
	if err := exchange(); err != nil {
		t.Fatalf("exchange of the live broker JWT = %v", err)
	}
	if store.finds.Load() == finds {
		t.Fatal("the live broker JWT was not looked up in the store")
	}
	// Revoked by another instance whose notice has not arrived: the
	// store says so.
	is := *handoff.Issuance
	is.RevokedAt = time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	if _, err := store.Store.MarkRevoked(ctx, &is); err != nil {
		t.Fatal(err)
	}
	finds = store.finds.Load()
	if err := exchange(); !errors.Is(err, broker.ErrDenied) || broker.AsError(err).Reason != "credential_revoked" {
		t.Fatalf("exchange of the revoked JWT (cache not told) = %v, want credential_revoked", err)
	}
	if store.finds.Load() == finds {
		t.Fatal("the revoked JWT the cache does not know was not looked up in the store")
	}
	// The notice arrives.
	cache.Apply(broker.Notice{Revoked: []string{handoff.Issuance.ID}})
	before := len(sink.Events())
	finds = store.finds.Load()
	for range calls {
		if err := exchange(); !errors.Is(err, broker.ErrDenied) || broker.AsError(err).Reason != "credential_revoked" {
			t.Fatalf("exchange of the revoked JWT = %v, want credential_revoked", err)
		}
	}
	if reads := store.finds.Load() - finds; reads != 0 {
		t.Errorf("%d exchanges of a revoked broker JWT the cache knows (workload without rate): %d store reads, want 0", calls, reads)
	}
	if n := len(sink.Events()) - before; n != calls {
		t.Errorf("%d deny events, want %d (per_identity -1: every refusal audited)", n, calls)
	}
}
