package broker

import (
	"context"
	"crypto"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
	"github.com/keytrail/keytrail/policies"
)

// Authenticator verifies workload identity tokens.
//
// Authenticate MUST honour ctx, MUST return an *Error of kind
// ErrUnauthenticated (with a coarse Reason such as "token_expired",
// "untrusted_issuer", "bad_signature", "malformed") for any token it does not
// accept, and ErrUnavailable when the issuer's keys cannot be had. It MUST NOT
// put the token or any part of it in errors.
type Authenticator interface {
	Authenticate(ctx context.Context, raw string) (*Identity, error)
}

// MintRequest is what a Minter needs to mint one credential.
type MintRequest struct {
	IssuanceID string
	Workload   string
	Owner      string
	SessionID  string
	Grant      policies.Grant
	TTL        time.Duration // already capped by the grant's TTL
	Identity   *Identity
	Now        time.Time
}

// Credential is a freshly minted credential. AccessToken is the secret handed
// to the workload; Fields are kind-specific response fields (user name,
// password, lease id, certificate...). Refs.Fingerprint is filled in by the
// Service from AccessToken.
type Credential struct {
	AccessToken string
	Fields      map[string]any
	Refs        CredentialRefs
}

// String never prints the secret.
func (c *Credential) String() string {
	if c == nil {
		return "<nil credential>"
	}
	return "credential(" + Fingerprint(c.AccessToken) + ")"
}

// Minter mints credentials of one grant kind.
//
// Mint MUST honour ctx, MUST NOT return a credential whose expiry exceeds
// req.Now+req.TTL, MUST tag the credential with the issuance id wherever the
// backend keeps tags, and MUST NOT retry a create blindly (a retried create can
// leave a credential nobody recorded). Backend outages are ErrUnavailable.
// A credential it created but will not return and could not revoke (its
// clean-up failed) it reports as an *UnrevokedError naming it, at least
// when the credential carries no tag the reconciliation finds it by (a
// certificate; Vault tokens carry their issuance id in their meta).
type Minter interface {
	Mint(ctx context.Context, req MintRequest) (*Credential, error)
}

// InProcessMinter is a Minter whose Mint makes no backend call and never
// waits (the proxy minter: a random credential the store record alone
// makes valid). Exchange gives its Mint the request's context without a
// deadline of its own, sparing the deadline's context and timer on every
// exchange, and bounds it by MintTimeout afterwards instead: a mint that
// returns MintTimeout or more after the exchange stamped its issued_at is
// refused as backend_timeout, as the deadline would have had it refused
// (the sweep relies on that bound, see revoke.go). A credential such a
// Minter returns exists nowhere until it is stored, so refusing it leaves
// nothing to revoke. MintsInProcess must always return the same answer.
type InProcessMinter interface {
	Minter
	MintsInProcess() bool
}

// UnrevokedError is a Minter's failure that left a credential behind: the
// backend created it, the Minter refused it and its revocation failed.
// Refs name it (never the secret) so that the deny event records them and
// trace finds it by them; Err is the failure, with its category.
type UnrevokedError struct {
	Refs CredentialRefs
	Err  error
}

func (e *UnrevokedError) Error() string { return e.Err.Error() }
func (e *UnrevokedError) Unwrap() error { return e.Err }

// Revoker ends an issued credential at its backend. Revoke MUST be idempotent:
// revoking an already revoked or expired credential succeeds.
type Revoker interface {
	Revoke(ctx context.Context, is *Issuance) error
}

// RefKind names an index by which an issuance can be found.
type RefKind string

// Indexes every Store keeps.
const (
	RefFingerprint RefKind = "fingerprint"
	RefAccessor    RefKind = "accessor"
	RefJTI         RefKind = "jti"
	RefLeaseID     RefKind = "lease_id"
	RefUsername    RefKind = "username"
	RefSerial      RefKind = "serial"
	RefRequestID   RefKind = "request_id"
)

// RefKinds lists every index a Store keeps.
func RefKinds() []RefKind {
	return []RefKind{RefFingerprint, RefAccessor, RefJTI, RefLeaseID, RefUsername, RefSerial, RefRequestID}
}

// RefValue is what an issuance is indexed under for kind; ok is false for
// an unknown kind.
func (is *Issuance) RefValue(kind RefKind) (v string, ok bool) {
	switch kind {
	case RefFingerprint:
		return is.Refs.Fingerprint, true
	case RefAccessor:
		return is.Refs.Accessor, true
	case RefJTI:
		return is.Refs.JTI, true
	case RefLeaseID:
		return is.Refs.LeaseID, true
	case RefUsername:
		return is.Refs.Username, true
	case RefSerial:
		return is.Refs.Serial, true
	case RefRequestID:
		return is.RequestID, true
	}
	return "", false
}

// IssuanceFilter selects issuances; empty fields match everything. ActiveAt,
// when set, keeps only issuances active at that time; UnexpiredAt only
// those not expired at that time, revoked or not.
type IssuanceFilter struct {
	Workload    string
	Owner       string
	SessionID   string
	ActiveAt    time.Time
	UnexpiredAt time.Time
	Limit       int // 0 = no limit
}

// Block stops new issuance to one workload.
type Block struct {
	Workload     string    `json:"workload"`
	Reason       string    `json:"reason"`
	RevocationID string    `json:"revocation_id,omitempty"`
	Admin        string    `json:"admin,omitempty"`
	CreatedAt    time.Time `json:"created_at"`
}

// RevokeSelector says what a revocation targets; exactly one field is set.
type RevokeSelector struct {
	IssuanceID string `json:"issuance_id,omitempty"`
	SessionID  string `json:"session_id,omitempty"`
	Workload   string `json:"workload,omitempty"`
	Owner      string `json:"owner,omitempty"`
}

// RevokeFailure is one issuance whose backend revocation has not succeeded yet.
type RevokeFailure struct {
	IssuanceID string `json:"issuance_id"`
	Error      string `json:"error"`
}

// Revocation is an admin action and its progress.
type Revocation struct {
	ID        string          `json:"revocation_id"`
	Selector  RevokeSelector  `json:"selector"`
	Reason    string          `json:"reason"`
	Block     bool            `json:"block"`
	Admin     string          `json:"admin,omitempty"`
	CreatedAt time.Time       `json:"created_at"`
	Matched   int             `json:"matched"`
	Revoked   []string        `json:"revoked"`
	Pending   []string        `json:"pending,omitempty"`
	Failed    []RevokeFailure `json:"failed"`
	// Blocks are the workloads the revocation blocked (when Block is set).
	Blocks []string `json:"blocks,omitempty"`
	// Act is, for the revocation of one issuance (Selector.IssuanceID)
	// minted with an actor token, that issuance's act: its revoke events,
	// and its revoke_result events that name no other issuance, carry it.
	// Empty otherwise, and in records written before it was kept.
	Act []IdentityRef `json:"act,omitempty"`
	// SweepAt is when the revocation's sweep is due: the second selection
	// that finds the credentials minted while the revocation ran (or, for
	// a block, by an instance that had not learned the block yet) and
	// revokes them under this revocation (see broker/revoke.go). Zero once
	// the sweep has run, and for the revocation of one issuance without a
	// block, which needs none. CompletedAt stays zero until it has run.
	SweepAt time.Time `json:"sweep_at,omitzero"`
	// SweptBy is the id of the worker pass whose write ran the sweep (a
	// new id per sweep write), so that a pass whose sweep write failed
	// can tell, reading the record, whether the write applied is its own
	// or another instance's that found the same issuances. Empty before
	// the sweep (and in records stored before it was added).
	SweptBy string `json:"swept_by,omitempty"`
	// SweptEarlier are the ids of the sweep writes whose SweptBy a later
	// sweep write replaced (oldest first, the last maxSweptEarlier): another
	// instance's sweep that read the record while the sweep was still due
	// and found more lands after this one. The pass whose write that was
	// reads the record back after a failed answer and finds its id here,
	// its write applied; taken for unapplied, its find was never named
	// under swept. Stored record only, like SweptBy.
	SweptEarlier []string `json:"swept_earlier,omitempty"`
	// Unblocked holds when each of Blocks was unblocked before the sweep
	// ran (UTC): the sweep takes none of that workload's credentials
	// issued after it.
	Unblocked map[string]time.Time `json:"unblocked,omitempty"`
	// Decision holds the revocation's decision events (revoke, block;
	// without chain fields) while they are not known durable: set on the
	// record as created when Revoke stopped waiting for them
	// (AuditTimeout), cleared (UpdateRevocation) once they are in an audit
	// log. While it is set the record is not complete, and no
	// revoke_result for the revocation is written before these events:
	// the RevocationWorker of any instance, after a restart too, appends
	// them again first when the instance that made them does not (see
	// broker/revoke.go lateDecision). Stored record only.
	Decision []*audit.Event `json:"decision,omitempty"`
	// ResultOwed is when a revoke_result of the revocation was last not
	// written (its write failed, or the stopping worker cut it): a result
	// is owed. The RevocationWorker of any instance, after a restart too,
	// lists the record while it is set (RevocationFilter.Pending; a
	// complete record too) and writes one from it, then clears it; another
	// instance than the one that set it (or this one after a restart)
	// waits decisionGrace after it first (see broker/revoke.go
	// markResultOwed). Zero otherwise. Stored record only.
	ResultOwed  time.Time `json:"result_owed,omitzero"`
	CompletedAt time.Time `json:"completed_at,omitzero"`
}

// Listed reports whether the worker lists r (RevocationFilter.Pending):
// not complete, or complete with a revoke_result owed (ResultOwed).
func (r *Revocation) Listed() bool { return r.CompletedAt.IsZero() || !r.ResultOwed.IsZero() }

// Store keeps issuances, revocations and blocks, shared by every broker
// instance that uses it.
//
// Every method MUST honour ctx and apply its own deadline, MUST translate
// backend errors: a missing record is ErrNotFound, an unreachable backend is
// ErrUnavailable. PutIssuance overwrites an existing record with the same id
// and keeps every index (RefKind values, workload, owner, session) in step,
// unless the stored record is revoked (RevokedAt set): then it writes
// nothing, so that a put sent again (go-redis resends a command whose reply
// was lost) cannot undo a revocation's mark made in between.
// Blocks and revocations are durable and never expire.
type Store interface {
	PutIssuance(ctx context.Context, is *Issuance) error
	GetIssuance(ctx context.Context, id string) (*Issuance, error)
	FindIssuance(ctx context.Context, kind RefKind, value string) (*Issuance, error)
	// FindIssuances is FindIssuance for many values of one kind, in as
	// few round trips as the backend allows (the reconciliation looks up
	// every live Vault token's accessor): out[i] is the issuance found for
	// values[i], nil when there is none. An unknown kind or an empty value
	// is ErrInvalidRequest.
	FindIssuances(ctx context.Context, kind RefKind, values []string) ([]*Issuance, error)
	ListIssuances(ctx context.Context, f IssuanceFilter) ([]*Issuance, error)
	// MarkRevoked stores is, which carries its revoked mark, as PutIssuance
	// does, unless the stored record of is.ID is revoked already: then it
	// writes nothing, so the first mark is the one an issuance keeps,
	// however many marks raced. A mark is a revocation's (RevokedAt and
	// RevocationID set) or a withdrawal's (RevokedAt set, RevocationID
	// empty: the exchange's own mark of a credential it never handed out,
	// audit_failed or client_gone), and either kind stands against the
	// other: a withdrawal never overwrites a revocation's id, nor a
	// revocation a withdrawal. One atomic step; it returns the record as
	// stored afterwards (the first mark's; when it wrote is, is's mark as
	// sent, RevokedAt to the nanosecond: the revocation flow tells by it
	// its own write from a mark found stored, see broker/revoke.go mark). A record that is not stored at
	// all is written (a mark restores a record the store lost). An is
	// without RevokedAt is ErrInvalidRequest. With replicas, the write is
	// acknowledged as a revoked PutIssuance's is; a mark found stored
	// (nothing written) waits for no replica, so it may be one its own
	// writer could not confirm. A caller that must know it is replicated
	// learns it from a later write of its own that is acknowledged: the
	// store replicates in order, so a replica that acknowledged a write
	// has every write the store applied before it (the revocation flow
	// counts on this, see broker/revoke.go unconfirmedMarks).
	MarkRevoked(ctx context.Context, is *Issuance) (*Issuance, error)

	// PutRevocation stores r whole. The revocation flow uses it only to
	// create a record; every later change goes through UpdateRevocation.
	// A put sent again by the store's client (go-redis resends a command
	// whose reply was lost) writes nothing more: an UpdateRevocation made
	// in between stays (another call stores r whole again).
	PutRevocation(ctx context.Context, r *Revocation) error
	// UpdateRevocation reads the stored revocation id, applies fn to it and
	// writes the result only if nobody wrote the record in between (a
	// compare-and-set, with PutRevocation's change number and indexes),
	// retrying a bounded number of times on conflict; it returns the record
	// as stored. fn may therefore run more than once, each time on a fresh
	// copy: it MUST be a pure function of its argument and MUST NOT call the
	// Store. An error from fn is returned as is and nothing is written.
	// ErrNotFound when there is no such revocation; ErrUnavailable when the
	// conflicts outlast the retries.
	UpdateRevocation(ctx context.Context, id string, fn func(*Revocation) error) (*Revocation, error)
	GetRevocation(ctx context.Context, id string) (*Revocation, error)
	ListRevocations(ctx context.Context, f RevocationFilter) ([]*Revocation, error)
	// RevocationVersion is the store's revocation change number: every
	// PutRevocation or UpdateRevocation write that completes after the
	// call returns v is given a
	// number above v, so ListRevocations with ChangedAfter: v lists at
	// least every revocation written since (possibly some written just
	// before). It starts at zero and never decreases while the data lasts;
	// a store that lost its data (restored, flushed) may go back, which
	// readers treat as "read everything again".
	RevocationVersion(ctx context.Context) (uint64, error)

	PutBlock(ctx context.Context, b Block) error
	// DeleteBlock removes the block of workload only while it is the block
	// revocationID made (the RevocationID of the block as GetBlock read
	// it; "" for a block without one), in one atomic step: a block put
	// since the caller read it (another revocation blocking the workload
	// again) is left standing and the answer is ErrBlockChanged.
	// ErrNotFound when the workload is not blocked.
	DeleteBlock(ctx context.Context, workload, revocationID string) error
	GetBlock(ctx context.Context, workload string) (*Block, error) // ErrNotFound when not blocked
	ListBlocks(ctx context.Context) ([]Block, error)

	// DeploymentID is the id of the deployment the store's data belongs
	// to (every broker instance sharing it): created at random by the
	// first call, atomically (callers racing on a store without one all
	// get the first one created), and then the same for every caller
	// however it reaches the store, for as long as the store's data lasts.
	// It is 1 to 64 letters, digits, '.', '_' or '-' (PrefixDeployment and
	// a ULID). With replicas, its creation is acknowledged as a block's is.
	DeploymentID(ctx context.Context) (string, error)

	// PutRetiringKey records that the transit key name stays in the JWKS
	// of every instance sharing the store until until, whether its policy
	// names the key or not: JWTs it signed may be live until then (a key a
	// policy reload stopped naming, or one an instance signs with). One
	// atomic step: a later until than the one stored replaces it, an
	// earlier or equal one changes nothing, so repeating a put is
	// harmless. Times are kept to the millisecond, rounded up. An empty
	// name or a zero until is ErrInvalidRequest. With replicas, the write
	// is acknowledged as a block's is.
	PutRetiringKey(ctx context.Context, name string, until time.Time) error
	// RetiringKeys returns the recorded retiring keys whose until is after
	// now (UTC), and removes those whose until is not, in one atomic step.
	RetiringKeys(ctx context.Context, now time.Time) (map[string]time.Time, error)

	Ping(ctx context.Context) error
}

// RevocationPager is the optional part of a Store that lists revocations
// a page at a time. ListRevocationPages calls fn with what
// ListRevocations(f) lists, in pages, in no particular order, each
// revocation once; the records of a page are fn's (the store keeps no
// reference to them). It stops at fn's first error and returns it as is.
// The revocation cache's full read uses it, when the Store has it, to hold
// one page of decoded records at a time instead of the Window's all.
type RevocationPager interface {
	ListRevocationPages(ctx context.Context, f RevocationFilter, fn func([]*Revocation) error) error
}

// ReplicaAcker is the optional part of a Store that says whether its
// writes wait for replicas to acknowledge them (Redis with
// store.min_replicas). AcksReplicas false means they never do: a write the
// store applied is as confirmed as any of its writes will be, so a mark
// found stored (MarkRevoked writing nothing) needs no later acknowledged
// write to confirm it (broker/revoke.go unconfirmedMarks). A Store that
// does not implement it, or that a wrapper hides, is taken to wait for
// replicas: the flow then confirms found marks with a write of its own.
type ReplicaAcker interface {
	AcksReplicas() bool
}

// RetireMillis is until as the stores keep it (PutRetiringKey): unix
// milliseconds, rounded up.
func RetireMillis(until time.Time) int64 {
	ms := until.UnixMilli()
	if time.UnixMilli(ms).Before(until) {
		ms++
	}
	return ms
}

// RevocationFilter narrows ListRevocations; the zero value lists every
// revocation. All conditions apply together. The hot readers use them so
// that their cost follows the recent, the unfinished and the changed
// revocations, not the whole history.
type RevocationFilter struct {
	// Since keeps revocations created at or after it (zero: any time).
	Since time.Time
	// Pending keeps only revocations not completed yet (CompletedAt zero)
	// and those with a revoke_result owed (ResultOwed set): see
	// Revocation.Listed.
	Pending bool
	// ChangedAfter keeps only revocations last written (created or
	// updated) after the call to RevocationVersion that returned it (zero:
	// any). Stores apply it from their own change index; Match does not
	// see it.
	ChangedAfter uint64
}

// Match reports whether r passes f's Since and Pending conditions.
func (f RevocationFilter) Match(r *Revocation) bool {
	return (f.Since.IsZero() || !r.CreatedAt.Before(f.Since)) && (!f.Pending || r.Listed())
}

// AuditSink makes audit events durable.
//
// Append MUST return nil only once the event is durable (written and synced,
// group commit allowed) and MUST fill in the chain fields (seq, time, chain,
// prev). Callers pass context.WithoutCancel where the event must be written
// even if the client went away. A failing sink returns ErrUnavailable.
type AuditSink interface {
	Append(ctx context.Context, ev *audit.Event) error
}

// BatchAuditSink is an AuditSink that can make several events durable
// together: AppendBatch seals evs in order into the chain and returns nil
// only once every one of them is durable (one write, one fsync or journal
// write); on error none of them is, a write that failed part way being
// undone. The parts of one revocation's decision go through it, so that a
// failing disk never leaves part of a decision in the log.
type BatchAuditSink interface {
	AuditSink
	AppendBatch(ctx context.Context, evs []*audit.Event) error
}

// DeferredAuditSink is an AuditSink that also takes events nobody waits for
// (a proxied call's use_result, written after the response is sent):
// AppendDeferred returns at once and the sink makes the event durable with
// a later batch, within a bound of its own, then calls done (when not nil)
// with the outcome. done must not block.
type DeferredAuditSink interface {
	AuditSink
	AppendDeferred(ev *audit.Event, done func(error))
}

// QueuingAuditSink is an AuditSink that can hand an event to its writer
// without waiting for it: Enqueue queues ev as Append would when that needs
// no wait (room in the queue, the sink open) and reports true; the sink
// then calls done exactly once, from its own goroutine, with what Append
// would have returned (nil once ev is durable). done must not block. When
// Enqueue reports false nothing was queued and done is never called: the
// caller appends as before. An exchange queues its issue event this way
// before its store write instead of starting a goroutine to Append it.
type QueuingAuditSink interface {
	AuditSink
	Enqueue(ev *audit.Event, done func(error)) bool
}

// BoundedAuditSink is an AuditSink that can stop waiting for an event
// without a goroutine of its own per event: AppendWithin is Append (as for
// a caller passing context.WithoutCancel) that gives up once d has passed
// with the event not durable (a disk whose writes hang), returning an
// ErrUnavailable error that wraps ErrAuditPending. The event stays queued
// and may still become durable. Service.Audit uses it; for a sink without
// it, Service.Audit waits on a goroutine of its own.
type BoundedAuditSink interface {
	AuditSink
	AppendWithin(ev *audit.Event, d time.Duration) error
}

// PublicKey is one public verification key for broker-issued JWTs.
type PublicKey struct {
	KID string
	Alg string
	Key crypto.PublicKey
}

// PublicKeySource lists the public keys that verify broker-issued JWTs.
type PublicKeySource interface {
	PublicKeys(ctx context.Context) ([]PublicKey, error)
}

// Pinger is the optional readiness check of a collaborator.
type Pinger interface {
	Ping(ctx context.Context) error
}

// SecretSource reads the upstream secret of a proxy grant (Vault KV v2).
//
// Secret MUST honour ctx, MAY cache briefly, MUST NOT log or wrap the secret
// value in errors, and returns ErrUnavailable when the backend cannot be read
// and ErrNotFound when the path or field does not exist.
type SecretSource interface {
	Secret(ctx context.Context, ref policies.ProxySecret) (string, error)
}

// CachedSecretSource is a SecretSource that keeps values in memory.
// CachedSecret returns at once, without waiting for anything, what Secret
// would return from memory, or ok false when Secret would have to read the
// backend or wait for a read in flight. The proxy asks it first and makes
// the SecretTimeout deadline only for a Secret call.
type CachedSecretSource interface {
	SecretSource
	CachedSecret(ref policies.ProxySecret) (value string, ok bool)
}

// Notice announces a change of revocation state to every broker instance.
// It is a hint that speeds up what each instance would learn from the Store
// anyway: receivers never trust a notice more than the Store.
//
// RevocationID names the revocation the notice is about: the one that
// revoked Revoked and blocked Blocked, or, in a notice of Unblocked, the
// one whose block was lifted. A receiver drops its block of an unblocked
// workload only while that block is the named revocation's, so an unblock
// notice that arrives after the notice of a re-block (another revocation
// blocking the workload again) does not lift the new block. An unblock
// notice without RevocationID (a block without revocation, or an instance
// older than this field's use) lifts whatever block the receiver knows.
type Notice struct {
	RevocationID string   `json:"revocation_id,omitempty"`
	Revoked      []string `json:"revoked,omitempty"`   // issuance ids now marked revoked
	Blocked      []string `json:"blocked,omitempty"`   // workloads now blocked
	Unblocked    []string `json:"unblocked,omitempty"` // workloads no longer blocked
}

// Notifier announces revocations and blocks to every broker instance that
// shares a Store (Redis pub/sub, or an in-process fan-out for the embedded
// store). Announcing is second and best effort: the Store write is what
// makes a revocation effective, so a lost notice delays nothing past the
// receivers' next refresh.
//
// Publish MUST honour ctx. Subscribe returns once the subscription is
// active; the channel delivers notices published after that (including the
// subscriber's own) and is closed when ctx ends. A slow receiver MAY miss
// notices; a broken connection MAY lose some while it reconnects.
type Notifier interface {
	Publish(ctx context.Context, n Notice) error
	Subscribe(ctx context.Context) (<-chan Notice, error)
}
