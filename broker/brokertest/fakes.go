// Package brokertest holds fakes of broker's ports for unit tests of the core
// and of the HTTP layer: an authenticator keyed by token string, a minter
// that records requests and revocations, and an audit sink that records
// events and fails on demand; for benchmarks, a minter and a sink that keep
// nothing. Real adapters are tested against real services
// elsewhere; these fakes never stand in for them in e2e.
package brokertest

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

// Authn accepts exactly the tokens in its map.
type Authn map[string]*broker.Identity

// Authenticate implements broker.Authenticator.
func (f Authn) Authenticate(ctx context.Context, raw string) (*broker.Identity, error) {
	if id, ok := f[raw]; ok {
		return id, nil
	}
	return nil, broker.Errorf(broker.ErrUnauthenticated, "bad_signature", "identity token rejected", nil)
}

// Minter mints "secret-<issuance id>" credentials and records every call.
type Minter struct {
	mu        sync.Mutex
	Reqs      []broker.MintRequest
	Revoked   []string
	Err       error // returned by Mint when set
	RevokeErr error // returned by Revoke when set (the call is recorded)
}

// Mint implements broker.Minter.
func (f *Minter) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Reqs = append(f.Reqs, req)
	if f.Err != nil {
		return nil, f.Err
	}
	return &broker.Credential{
		AccessToken: "hvs.secret-" + req.IssuanceID,
		Fields:      map[string]any{"accessor": "acc-" + req.IssuanceID},
		Refs:        broker.CredentialRefs{Accessor: "acc-" + req.IssuanceID, ExpiresAt: req.Now.Add(req.TTL)},
	}, nil
}

// Revoke implements broker.Revoker.
func (f *Minter) Revoke(ctx context.Context, is *broker.Issuance) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.Revoked = append(f.Revoked, is.ID)
	return f.RevokeErr
}

// Calls returns a copy of the recorded mint requests.
func (f *Minter) Calls() []broker.MintRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]broker.MintRequest(nil), f.Reqs...)
}

// RevokedIDs returns a copy of the revoked issuance ids.
func (f *Minter) RevokedIDs() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.Revoked...)
}

// Sink records events; Fail, when set, decides which appends fail, and
// Record, when set, is called with each event made durable, in order.
type Sink struct {
	mu      sync.Mutex
	events  []*audit.Event
	batches [][]*audit.Event
	Fail    func(ev *audit.Event) bool
	Record  func(ev *audit.Event)
}

var _ broker.BatchAuditSink = (*Sink)(nil)

// Append implements broker.AuditSink.
func (f *Sink) Append(ctx context.Context, ev *audit.Event) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.Fail != nil && f.Fail(ev) {
		return broker.Unavailable("audit_unavailable", time.Second, errors.New("disk full"))
	}
	f.record(ev)
	return nil
}

// AppendBatch implements broker.BatchAuditSink: all of evs, or none when
// Fail refuses any of them.
func (f *Sink) AppendBatch(ctx context.Context, evs []*audit.Event) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, ev := range evs {
		if f.Fail != nil && f.Fail(ev) {
			return broker.Unavailable("audit_unavailable", time.Second, errors.New("disk full"))
		}
	}
	for _, ev := range evs {
		f.record(ev)
	}
	f.batches = append(f.batches, append([]*audit.Event(nil), evs...))
	return nil
}

func (f *Sink) record(ev *audit.Event) {
	f.events = append(f.events, ev)
	if f.Record != nil {
		f.Record(ev)
	}
}

// Batches returns the event lists made durable by AppendBatch, in order.
func (f *Sink) Batches() [][]*audit.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([][]*audit.Event(nil), f.batches...)
}

// Events returns the recorded events.
func (f *Sink) Events() []*audit.Event {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]*audit.Event(nil), f.events...)
}

// Types returns the recorded event types in order.
func (f *Sink) Types() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, e := range f.events {
		out = append(out, e.Type)
	}
	return out
}

// QuietMinter mints credentials of the same shape as Minter's and keeps
// nothing (for benchmarks: a Minter's record grows with every call). It
// calls no backend and never waits, so it is a broker.InProcessMinter, as
// the proxy minter of scenario C's grant is: the exchange makes no
// deadline context for it.
type QuietMinter struct{}

// MintsInProcess implements broker.InProcessMinter.
func (QuietMinter) MintsInProcess() bool { return true }

// Mint implements broker.Minter.
func (QuietMinter) Mint(_ context.Context, req broker.MintRequest) (*broker.Credential, error) {
	return &broker.Credential{
		AccessToken: "hvs.bench-" + req.IssuanceID,
		Fields:      map[string]any{"accessor": "acc-" + req.IssuanceID},
		Refs:        broker.CredentialRefs{Accessor: "acc-" + req.IssuanceID, ExpiresAt: req.Now.Add(req.TTL)},
	}, nil
}

// DiscardSink accepts every event, seals nothing and keeps nothing (for
// benchmarks of what the caller costs).
type DiscardSink struct{}

// Append implements broker.AuditSink.
func (DiscardSink) Append(context.Context, *audit.Event) error { return nil }

// SyncBuffer is a strings.Builder safe for writers on several goroutines
// (a logger, a child process's output) and a test reading it meanwhile.
type SyncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// DeadlineStore is a Store that records, for each GetBlock and
// FindIssuance it is asked, how long the caller's context had left (-1:
// no deadline).
type DeadlineStore struct {
	broker.Store
	mu   sync.Mutex
	left []time.Duration
}

func (d *DeadlineStore) note(ctx context.Context) {
	left := time.Duration(-1)
	if dl, ok := ctx.Deadline(); ok {
		left = time.Until(dl)
	}
	d.mu.Lock()
	d.left = append(d.left, left)
	d.mu.Unlock()
}

// Calls returns the time each call so far had left, in order.
func (d *DeadlineStore) Calls() []time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Duration(nil), d.left...)
}

// FindIssuance implements broker.Store.
func (d *DeadlineStore) FindIssuance(ctx context.Context, kind broker.RefKind, v string) (*broker.Issuance, error) {
	d.note(ctx)
	return d.Store.FindIssuance(ctx, kind, v)
}

// GetBlock implements broker.Store.
func (d *DeadlineStore) GetBlock(ctx context.Context, w string) (*broker.Block, error) {
	d.note(ctx)
	return d.Store.GetBlock(ctx, w)
}
