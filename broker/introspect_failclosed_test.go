package broker_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keytrail/keytrail/adapters/memstore"
	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/brokertest"
	"github.com/keytrail/keytrail/policies"
)

// unreachableStore fails the reads introspection makes while down is set
// (the Store unreachable), and its block reads alone while blockDown is.
type unreachableStore struct {
	broker.Store
	down, blockDown atomic.Bool
}

var errUnreachable = errors.New("store unreachable")

func (s *unreachableStore) FindIssuance(ctx context.Context, kind broker.RefKind, value string) (*broker.Issuance, error) {
	if s.down.Load() {
		return nil, errUnreachable
	}
	return s.Store.FindIssuance(ctx, kind, value)
}

func (s *unreachableStore) GetBlock(ctx context.Context, workload string) (*broker.Block, error) {
	if s.down.Load() || s.blockDown.Load() {
		return nil, errUnreachable
	}
	return s.Store.GetBlock(ctx, workload)
}

// Introspection fails closed (SPEC "POST /v1/introspect"; RFC 7662): a
// credential that is revoked, expired, withdrawn or whose workload is
// blocked is {"active": false}, and when its state cannot be read (the
// Store unreachable, with or without a revocation cache, fresh or gone
// stale) the answer is 503, never active: true.
func TestIntrospectFailsClosed(t *testing.T) {
	for _, cached := range []bool{false, true} {
		name := "no-cache"
		if cached {
			name = "fast-reads-cache"
		}
		t.Run(name, func(t *testing.T) {
			var mu sync.Mutex
			now := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
			clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
			inner := &unreachableStore{Store: memstore.New(clock)}
			var st broker.Store = inner
			var cache *broker.RevocationCache
			if cached {
				c, err := broker.NewRevocationCache(inner, broker.CacheOptions{FastReads: true, Now: clock, Interval: time.Second})
				if err != nil {
					t.Fatal(err)
				}
				cache, st = c, c.Store()
			}
			pol, err := policies.Parse("p.yaml", []byte(testPolicy))
			if err != nil {
				t.Fatal(err)
			}
			minter := &brokertest.Minter{}
			svc, err := broker.NewService(broker.Deps{
				Policy: func() *policies.Policy { return pol },
				Authn: func() broker.Authenticator {
					return brokertest.Authn{"payments": identity("system:serviceaccount:payments:api", map[string]any{
						"kubernetes.io": map[string]any{"namespace": "payments", "pod": map[string]any{"uid": "pod-1"}},
					}), "batch": identity("system:serviceaccount:data:batch", nil)}
				},
				Minters:  map[string]broker.Minter{broker.KindVaultToken: minter},
				Revokers: map[string]broker.Revoker{broker.KindVaultToken: minter},
				Store:    st,
				Audit:    &brokertest.Sink{},
				Now:      clock,
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			refresh := func() {
				if cache != nil {
					if err := cache.Refresh(ctx); err != nil {
						t.Fatal(err)
					}
				}
			}
			issue := func() *broker.ExchangeResult {
				t.Helper()
				res, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
				if err != nil {
					t.Fatal(err)
				}
				advance(time.Second) // past the rate limit
				refresh()
				return res
			}
			introspect := func(tok string) (*broker.IntrospectResult, error) {
				// As workload batch, which has no rate limit: payments-api's
				// (1/s) would refuse the introspections made here at one
				// clock reading.
				return svc.Introspect(ctx, broker.IntrospectRequest{CallerToken: "batch", Token: tok})
			}
			wantActive := func(t *testing.T, tok string, want bool) {
				t.Helper()
				res, err := introspect(tok)
				if err != nil || res.Active != want {
					t.Fatalf("Introspect = %+v, %v; want active %v", res, err, want)
				}
				if !want && res.Issuance != nil {
					t.Errorf("inactive answer carries the issuance %s", res.Issuance.ID)
				}
			}
			wantUnavailable := func(t *testing.T, tok string) {
				t.Helper()
				res, err := introspect(tok)
				if !errors.Is(err, broker.ErrUnavailable) {
					t.Fatalf("Introspect with the store down = %+v, %v; want 503 (ErrUnavailable)", res, err)
				}
			}

			live := issue()
			wantActive(t, live.AccessToken, true) // cached by fingerprint now

			t.Run("store-down", func(t *testing.T) {
				inner.down.Store(true)
				defer inner.down.Store(false)
				if cached {
					// A fresh view answers from memory (FastReads): the
					// record and the block it holds are those of a
					// refresh within two intervals.
					wantActive(t, live.AccessToken, true)
					advance(3 * time.Second) // no refresh since: the view goes stale
				}
				wantUnavailable(t, live.AccessToken)
				wantUnavailable(t, "never-issued")
			})
			refresh()

			t.Run("block-unreadable", func(t *testing.T) {
				// The record is read, its workload's block is not.
				inner.blockDown.Store(true)
				defer inner.blockDown.Store(false)
				if cached {
					wantActive(t, live.AccessToken, true) // fresh view
					advance(3 * time.Second)
				}
				wantUnavailable(t, live.AccessToken)
			})
			refresh()

			t.Run("revoked", func(t *testing.T) {
				res := issue()
				wantActive(t, res.AccessToken, true)
				if _, err := svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: res.Issuance.ID}, "leaked", broker.RevokeOptions{}, "req_r"); err != nil {
					t.Fatal(err)
				}
				wantActive(t, res.AccessToken, false)
				inner.down.Store(true) // and with the store gone: not active either
				defer inner.down.Store(false)
				if res, err := introspect(res.AccessToken); err == nil && res.Active {
					t.Fatalf("Introspect(revoked, store down) = active")
				}
			})
			t.Run("expired", func(t *testing.T) {
				res := issue()
				advance(16 * time.Minute) // past the grant's 15m
				refresh()
				wantActive(t, res.AccessToken, false)
			})
			t.Run("workload-blocked", func(t *testing.T) {
				res := issue()
				wantActive(t, res.AccessToken, true)
				if _, err := svc.Revoke(ctx, secops, broker.RevokeSelector{IssuanceID: live.Issuance.ID}, "incident", broker.RevokeOptions{Block: true}, "req_b"); err != nil {
					t.Fatal(err)
				}
				wantActive(t, res.AccessToken, false)
			})
		})
	}
}
