package broker_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/broker/brokertest"
)

// slowBackendMinter acts as a backend that creates the credential as soon
// as the request reaches it but answers only once released; like an HTTP
// client, its Mint gives up when its context ends, leaving what the
// backend created behind.
type slowBackendMinter struct {
	*brokertest.Minter
	entered chan struct{}
	release chan struct{}

	mu      sync.Mutex
	created []string // issuance ids the backend created a credential for
}

func (m *slowBackendMinter) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	m.mu.Lock()
	m.created = append(m.created, req.IssuanceID)
	m.mu.Unlock()
	close(m.entered)
	select {
	case <-ctx.Done():
		return nil, broker.Unavailable("vault_unavailable", time.Second, ctx.Err())
	case <-m.release:
	}
	return m.Minter.Mint(ctx, req)
}

// TestExchangeClientGoneDuringMint: a caller that goes away while the
// backend creates its credential gets nothing, and the credential is not
// lost: the store holds its issuance marked revoked, the audit log its issue
// event, an orphan_revoked event (reason client_gone) and the request's
// deny (499 client_gone), and it is revoked at its backend. (The mint was
// cancelled with the caller's context: the backend's credential stayed
// valid, in neither the store nor the audit log.)
func TestExchangeClientGoneDuringMint(t *testing.T) {
	f := newFixture(t)
	m := &slowBackendMinter{Minter: f.minter, entered: make(chan struct{}), release: make(chan struct{})}
	svc, err := broker.NewService(broker.Deps{
		Policy:   f.svc.Policy,
		Authn:    func() broker.Authenticator { return f.authn },
		Minters:  map[string]broker.Minter{broker.KindVaultToken: m},
		Revokers: map[string]broker.Revoker{broker.KindVaultToken: f.minter},
		Store:    f.store, Audit: f.sink, Now: func() time.Time { return f.now },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		res, err := svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", RequestID: "req_gone"})
		if res != nil {
			err = errors.New("a credential was returned")
		}
		done <- err
	}()
	<-m.entered
	cancel() // the caller goes away while the backend works
	close(m.release)
	select {
	case err = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Exchange() did not return")
	}
	if e := broker.AsError(err); !errors.Is(err, broker.ErrUnavailable) || e.Reason != "client_gone" {
		t.Errorf("Exchange() = %v, want ErrUnavailable, reason client_gone", err)
	}

	m.mu.Lock()
	created := append([]string(nil), m.created...)
	m.mu.Unlock()
	if len(created) != 1 {
		t.Fatalf("backend created %v, want one credential", created)
	}
	id := created[0]
	is, err := f.store.GetIssuance(context.Background(), id)
	if err != nil {
		t.Fatalf("the backend's credential %s is not in the store: %v", id, err)
	}
	if is.RevokedAt.IsZero() || is.Refs.Accessor != "acc-"+id {
		t.Errorf("stored issuance = revoked at %v, accessor %q; want it revoked, accessor acc-%s", is.RevokedAt, is.Refs.Accessor, id)
	}
	if diff := cmp.Diff([]string{id}, f.minter.RevokedIDs()); diff != "" {
		t.Errorf("revoked at the backend (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]string{audit.TypeIssue, audit.TypeOrphanRevoked, audit.TypeDeny}, f.sink.Types()); diff != "" {
		t.Fatalf("audit events (-want +got):\n%s", diff)
	}
	evs := f.sink.Events()
	for i, ev := range evs {
		if ev.IssuanceID != id {
			t.Errorf("event %d (%s) names issuance %q, want %s", i, ev.Type, ev.IssuanceID, id)
		}
		if ev.Type != audit.TypeDeny && (ev.Credential == nil || ev.Credential.Accessor != "acc-"+id) {
			t.Errorf("event %d (%s) names credential %+v, want accessor acc-%s", i, ev.Type, ev.Credential, id)
		}
	}
	if o := evs[1]; o.Reason != "client_gone" || o.Outcome == nil || o.Outcome.Status != 200 {
		t.Errorf("orphan_revoked event: reason %q outcome %+v, want client_gone, 200", o.Reason, o.Outcome)
	}
	if diff := cmp.Diff(&audit.Outcome{Status: 499, Reason: "client_gone"}, evs[2].Outcome); diff != "" {
		t.Errorf("deny outcome (-want +got):\n%s", diff)
	}
}

// TestExchangeClientGoneDuringRecord: a caller that goes away after the
// mint, while the issuance is being recorded, is handed nothing either: the
// credential is recorded, then revoked. (It was returned to a caller no
// longer there and stayed valid until it expired.)
func TestExchangeClientGoneDuringRecord(t *testing.T) {
	f := newFixture(t)
	bs := &blockingStore{Store: f.store, entered: make(chan struct{}, 1), release: make(chan struct{})}
	f.svc = f.serviceWith(t, bs, f.sink)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		res, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault"})
		if res != nil {
			err = errors.New("a credential was returned")
		}
		done <- err
	}()
	<-bs.entered
	cancel()
	close(bs.release)
	if err := <-done; broker.AsError(err).Reason != "client_gone" {
		t.Errorf("Exchange() = %v, want reason client_gone", err)
	}
	id := f.minter.Calls()[0].IssuanceID
	if diff := cmp.Diff([]string{id}, f.minter.RevokedIDs()); diff != "" {
		t.Errorf("revoked at the backend (-want +got):\n%s", diff)
	}
	if is, err := f.store.GetIssuance(context.Background(), id); err != nil || is.RevokedAt.IsZero() {
		t.Errorf("stored issuance = %+v, %v; want it marked revoked", is, err)
	}
	if diff := cmp.Diff([]string{audit.TypeIssue, audit.TypeOrphanRevoked, audit.TypeDeny}, f.sink.Types()); diff != "" {
		t.Errorf("audit events (-want +got):\n%s", diff)
	}
}

// cachedBlocks answers GetBlock without looking at the caller's context,
// as the revocation cache (Service store in a server) answers from memory.
type cachedBlocks struct{ broker.Store }

func (c cachedBlocks) GetBlock(_ context.Context, workload string) (*broker.Block, error) {
	return c.Store.GetBlock(context.Background(), workload)
}

// TestExchangeClientGoneBeforeMint: a caller already gone when the exchange
// reaches the mint gets nothing minted at all: no backend call, no
// issuance, only the request's deny (499 client_gone). (The mint ran
// regardless of the caller, and the credential was created at its backend
// only to be revoked again.)
func TestExchangeClientGoneBeforeMint(t *testing.T) {
	f := newFixture(t)
	f.svc = f.serviceWith(t, cachedBlocks{f.store}, f.sink)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res, err := f.svc.Exchange(ctx, broker.ExchangeRequest{SubjectToken: "payments", Grant: "payments-vault", RequestID: "req_gone"})
	if res != nil {
		t.Fatal("a credential was returned")
	}
	if e := broker.AsError(err); !errors.Is(err, broker.ErrUnavailable) || e.Reason != "client_gone" {
		t.Errorf("Exchange() = %v, want ErrUnavailable, reason client_gone", err)
	}
	if calls := f.minter.Calls(); len(calls) != 0 {
		t.Errorf("the backend was asked for %d credential(s), want none", len(calls))
	}
	if revoked := f.minter.RevokedIDs(); len(revoked) != 0 {
		t.Errorf("revoked at the backend: %v, want nothing", revoked)
	}
	if diff := cmp.Diff([]string{audit.TypeDeny}, f.sink.Types()); diff != "" {
		t.Fatalf("audit events (-want +got):\n%s", diff)
	}
	ev := f.sink.Events()[0]
	if diff := cmp.Diff(&audit.Outcome{Status: 499, Reason: "client_gone"}, ev.Outcome); diff != "" {
		t.Errorf("deny outcome (-want +got):\n%s", diff)
	}
	if ev.IssuanceID != "" || ev.Workload != "payments-api" || ev.Grant != "payments-vault" || ev.RequestID != "req_gone" {
		t.Errorf("deny event names issuance %q, workload %q, grant %q, request %q; want no issuance, payments-api, payments-vault, req_gone",
			ev.IssuanceID, ev.Workload, ev.Grant, ev.RequestID)
	}
}
