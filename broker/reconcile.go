package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
)

// TaggedCredential is one live backend credential that carries keytrail
// tags (for a Vault token: its meta), found by a TaggedSource. Ref is what
// the backend revokes it by (a Vault token accessor); it is not a secret.
type TaggedCredential struct {
	Kind       string // grant kind, e.g. KindVaultToken
	Ref        string // backend reference (token accessor)
	IssuanceID string
	Workload   string
	Owner      string
	SessionID  string
	Grant      string
	CreatedAt  time.Time
	ExpiresAt  time.Time // zero when the backend did not say
}

// TaggedSource lists the live credentials of one backend that carry
// keytrail tags, and revokes one of them by its reference.
//
// ListTagged MUST honour ctx and return ErrUnavailable when the backend
// cannot be listed completely (a partial list is an error, never a short
// answer). skip, when not nil, is asked about the live references, many at
// a time, before the source looks the credentials up: skip(refs)[i] true
// means refs[i] is neither looked up nor returned. The Reconciler answers
// true for the references its Store already explains (one batched Store
// lookup per call), so that a run's backend lookups follow the credentials
// it does not know rather than every live one. RevokeTagged MUST answer
// an error wrapping ErrNotFound, and revoke nothing, when the backend says
// the credential is already gone (it expired or was revoked by someone else
// since the listing): the Reconciler then records nothing for it.
type TaggedSource interface {
	ListTagged(ctx context.Context, skip func(refs []string) []bool) ([]TaggedCredential, error)
	RevokeTagged(ctx context.Context, c TaggedCredential) error
}

// IssuedIndex answers, for one reconciliation run, whether the audit log
// holds an `issue` event for an issuance id, and no `orphan_revoked` event
// after it (a withdrawn credential, e.g. one whose store write failed, is
// not explained by its issue event). Snapshot is called once per
// run, before the backend is listed, so a credential whose issue event
// became durable before the listing is always found.
type IssuedIndex interface {
	Snapshot(ctx context.Context) (IssuedSnapshot, error)
}

// IssuedSnapshot is one run's view of the audit log's issue events.
type IssuedSnapshot struct {
	// Issued reports whether the log holds an issue event for the
	// issuance id.
	Issued func(issuanceID string) bool
	// Since is the time of the oldest event the log has held (zero: it
	// holds none). The log's silence about an issuance means "never
	// audited" only for issuances made at or after it: older ones may
	// have been recorded in files that are no longer there.
	Since time.Time
}

// ReconcilerOptions configure NewReconciler.
type ReconcilerOptions struct {
	Source TaggedSource // required
	Store  Store        // required
	Audit  AuditSink    // required: orphan_revoked events
	// Issued, when set, is the audit log's index of issue events: a
	// credential the Store does not know is kept when the log has its issue
	// event (the in-memory store after a restart).
	Issued IssuedIndex
	// IssuedComplete says Issued sees the issue events of every broker that
	// shares the Store (a single instance). Then a credential whose issuance
	// the Store holds but the audit log does not is revoked too: the broker
	// crashed between the Store write and the audit event. With several
	// instances a local log cannot say that for the others' issuances, and
	// the Store alone decides for them (see Chain).
	IssuedComplete bool
	// Chain is the chain id of Issued's log (this instance's own). With a
	// shared Store, an issuance recorded with this AuditChain must have
	// its issue event in Issued too, as with IssuedComplete: this
	// instance wrote both and may have crashed between them.
	Chain string
	// Interval between runs after the one at start-up (default 5m).
	Interval time.Duration
	// Grace leaves alone credentials created less than Grace ago: an
	// exchange may be between its mint and its durable record (default
	// DefaultReconcileGrace; it must exceed the broker's mint timeout plus
	// store and audit timeouts, the sum of Service.Timeouts).
	Grace time.Duration
	// CallTimeout bounds each backend, store or audit call (default 10s).
	CallTimeout time.Duration
	Now         func() time.Time
	Logger      *slog.Logger
}

// Reconciler finds backend credentials carrying keytrail tags that the
// broker's records do not explain, and revokes them.
//
// A tagged credential is kept only when its issuance is explained: the
// Store holds it unrevoked with the same backend reference and (where the
// IssuedIndex can tell: every instance's events, or this instance's own
// chain) the audit log holds its `issue` event, or the Store lost it
// (the in-memory store after a restart) but the audit log holds its issue
// event. Every other one — minted and then never recorded because the broker
// crashed or the backend answered after the mint deadline, recorded but
// never audited, or revoked in the Store — is revoked by its reference and an
// `orphan_revoked` event is written. A Store or audit index that cannot be
// read stops the run without revoking anything (fail safe: an outage never
// revokes explained credentials).
type Reconciler struct {
	o ReconcilerOptions

	mu    sync.Mutex
	stats ReconcileStats
}

// ReconcileStats are a Reconciler's totals since it was made (the
// keytrail_reconcile_* metrics). A run cut short by the end of its ctx
// (shutdown) counts neither as completed nor as failed.
type ReconcileStats struct {
	Runs       uint64            // runs that completed
	FailedRuns uint64            // runs stopped by an error (store, audit index or backend listing)
	Listed     uint64            // tagged credentials the runs looked at (ReconcileReport.Listed)
	Revoked    map[string]uint64 // orphans revoked, by reason (OrphanNoRecord, ...)
	Gone       uint64            // orphans already gone at their revocation (nothing recorded)
	Failures   uint64            // orphans whose revocation or event failed
	// LastSuccess is when the last completed run ended (zero: none yet).
	LastSuccess time.Time
}

// Stats returns the Reconciler's totals.
func (r *Reconciler) Stats() ReconcileStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := r.stats
	s.Revoked = maps.Clone(r.stats.Revoked)
	return s
}

// ReconcileReport summarises one run.
type ReconcileReport struct {
	Listed   int // tagged credentials found
	Kept     int // explained
	Known    int // of those kept, explained by the Store alone (no backend lookup)
	Young    int // younger than Grace, left for the next run
	Revoked  int // orphans revoked (each with an orphan_revoked event)
	Gone     int // orphans the backend no longer had at their revocation (expired): nothing recorded
	Failures int // orphans whose revocation or event failed; retried next run
}

// Reasons recorded in orphan_revoked events.
const (
	OrphanNoRecord        = "no_record"         // neither the Store nor the audit log knows the issuance
	OrphanNotAudited      = "not_audited"       // the Store has it, the audit log has no issue event
	OrphanRevoked         = "issuance_revoked"  // the Store marks it revoked
	OrphanAccessorChanged = "reference_differs" // the Store records another backend reference
	// OrphanStoreFailed is written by Exchange, not the Reconciler: the
	// issue event was durable but the Store write failed, so the credential
	// was revoked instead of handed out.
	OrphanStoreFailed = "store_failed"
	// OrphanClientGone is written by Exchange too: the caller went away
	// while the credential was minted or recorded, so it was revoked
	// instead of handed out.
	OrphanClientGone = "client_gone"
)

// DefaultReconcileGrace is ReconcilerOptions.Grace when it is not set.
const DefaultReconcileGrace = time.Minute

var errYoungRevocation = errors.New("revocation in progress")

// NewReconciler validates o and returns a Reconciler.
func NewReconciler(o ReconcilerOptions) (*Reconciler, error) {
	var errs []error
	if o.Source == nil {
		errs = append(errs, errors.New("reconciler: Source is required"))
	}
	if o.Store == nil {
		errs = append(errs, errors.New("reconciler: Store is required"))
	}
	if o.Audit == nil {
		errs = append(errs, errors.New("reconciler: Audit is required"))
	}
	if o.Interval < 0 || o.Grace < 0 || o.CallTimeout < 0 {
		errs = append(errs, errors.New("reconciler: durations must not be negative"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if o.Interval == 0 {
		o.Interval = 5 * time.Minute
	}
	if o.Grace == 0 {
		o.Grace = DefaultReconcileGrace
	}
	if o.CallTimeout == 0 {
		o.CallTimeout = 10 * time.Second
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Reconciler{o: o, stats: ReconcileStats{Revoked: map[string]uint64{}}}, nil
}

// Run reconciles at once and then every Interval until ctx ends. A failed
// run is logged and retried at the next tick.
func (r *Reconciler) Run(ctx context.Context) error {
	t := time.NewTicker(r.o.Interval)
	defer t.Stop()
	for {
		rep, err := r.RunOnce(ctx)
		if ctx.Err() != nil {
			// Cut short by shutdown: not a failed reconciliation.
			r.o.Logger.LogAttrs(ctx, slog.LevelDebug, "reconciliation interrupted by shutdown")
			return nil
		}
		lvl := slog.LevelInfo
		if err != nil {
			lvl = slog.LevelWarn
		}
		attrs := []slog.Attr{slog.Int("listed", rep.Listed), slog.Int("kept", rep.Kept), slog.Int("known", rep.Known), slog.Int("young", rep.Young),
			slog.Int("revoked", rep.Revoked), slog.Int("gone", rep.Gone), slog.Int("failures", rep.Failures)}
		if err != nil {
			attrs = append(attrs, slog.String("error", err.Error()))
		}
		r.o.Logger.LogAttrs(ctx, lvl, "reconciliation", attrs...)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// RunOnce runs one reconciliation.
func (r *Reconciler) RunOnce(ctx context.Context) (ReconcileReport, error) {
	rep, err := r.runOnce(ctx)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stats.Listed += uint64(rep.Listed)
	r.stats.Gone += uint64(rep.Gone)
	r.stats.Failures += uint64(rep.Failures)
	switch {
	case ctx.Err() != nil:
	case err != nil:
		r.stats.FailedRuns++
	default:
		r.stats.Runs++
		r.stats.LastSuccess = r.o.Now()
	}
	return rep, err
}

func (r *Reconciler) runOnce(ctx context.Context) (ReconcileReport, error) {
	var rep ReconcileReport
	snap := IssuedSnapshot{Issued: func(string) bool { return false }} // no index: the Store alone decides
	if r.o.Issued != nil {
		ictx, cancel := context.WithTimeout(ctx, r.o.CallTimeout)
		s, err := r.o.Issued.Snapshot(ictx)
		cancel()
		if err != nil {
			return rep, Unavailable("audit_index_unavailable", time.Minute, fmt.Errorf("reconcile: audit index: %w", err))
		}
		snap = s
	}
	// The cut-off is taken before listing: anything created after it is
	// young, whatever the listing takes.
	cutoff := r.o.Now().Add(-r.o.Grace)
	var known atomic.Int64
	skip := func(refs []string) []bool {
		out := r.explained(ctx, refs, snap)
		for _, ok := range out {
			if ok {
				known.Add(1)
			}
		}
		return out
	}
	lctx, cancel := context.WithTimeout(ctx, 4*r.o.CallTimeout)
	creds, err := r.o.Source.ListTagged(lctx, skip)
	cancel()
	if err != nil {
		return rep, fmt.Errorf("reconcile: list: %w", err)
	}
	rep.Known = int(known.Load())
	rep.Listed, rep.Kept = len(creds)+rep.Known, rep.Known
	for _, c := range creds {
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
		if c.IssuanceID == "" {
			continue
		}
		if !c.CreatedAt.IsZero() && c.CreatedAt.After(cutoff) {
			rep.Young++
			continue
		}
		why, err := r.judge(ctx, c, snap)
		if errors.Is(err, errYoungRevocation) {
			rep.Young++
			continue
		}
		if err != nil {
			return rep, err
		}
		if why == "" {
			rep.Kept++
			continue
		}
		err = r.revoke(ctx, c, why)
		if errors.Is(err, ErrNotFound) {
			// Expired (or revoked by someone else) since the listing:
			// this run revoked nothing, and an orphan_revoked event
			// would say it did.
			rep.Gone++
			continue
		}
		if err != nil {
			rep.Failures++
			r.o.Logger.LogAttrs(ctx, slog.LevelError, "revoking orphan credential failed",
				slog.String("issuance_id", c.IssuanceID), slog.String("accessor", c.Ref), slog.String("error", err.Error()))
			continue
		}
		rep.Revoked++
		r.mu.Lock()
		r.stats.Revoked[why]++
		r.mu.Unlock()
	}
	return rep, nil
}

// explained reports, for each backend reference, whether the Store alone
// explains its credential: it holds an unrevoked issuance recorded with
// that reference and (where the log must hold it, see mustBeAudited) the
// audit log holds its issue event. Such a credential needs no backend
// lookup; any doubt (not found, revoked, a Store error) answers false, and
// the credential is looked up and judged in full. One batched Store lookup
// serves all refs.
func (r *Reconciler) explained(ctx context.Context, refs []string, snap IssuedSnapshot) []bool {
	out := make([]bool, len(refs))
	var ask []string
	var at []int // ask[j] is refs[at[j]]
	for i, ref := range refs {
		if ref != "" {
			ask = append(ask, ref)
			at = append(at, i)
		}
	}
	if len(ask) == 0 {
		return out
	}
	sctx, cancel := context.WithTimeout(ctx, r.o.CallTimeout)
	found, err := r.o.Store.FindIssuances(sctx, RefAccessor, ask)
	cancel()
	if err != nil || len(found) != len(ask) {
		return out
	}
	for j, is := range found {
		switch {
		// The Vault tokens keytrail records by accessor: a vault_token's
		// own and a vault_dynamic's reader token.
		case is == nil || (is.Kind != KindVaultToken && is.Kind != KindVaultDynamic) || is.Refs.Accessor != ask[j]:
		case !is.RevokedAt.IsZero():
		case r.mustBeAudited(is, snap) && !snap.Issued(is.ID):
		default:
			out[at[j]] = true
		}
	}
	return out
}

// mustBeAudited reports whether is is explained only if the run's audit log
// holds its issue event: the log sees every instance's events
// (IssuedComplete) or is was recorded through this instance's own chain,
// and the log reaches back to when is was issued.
func (r *Reconciler) mustBeAudited(is *Issuance, snap IssuedSnapshot) bool {
	if r.o.Issued == nil || snap.Since.IsZero() || is.IssuedAt.Before(snap.Since) {
		return false
	}
	return r.o.IssuedComplete || r.o.Chain != "" && is.AuditChain == r.o.Chain
}

// judge returns "" for an explained credential, else the orphan reason.
func (r *Reconciler) judge(ctx context.Context, c TaggedCredential, snap IssuedSnapshot) (string, error) {
	sctx, cancel := context.WithTimeout(ctx, r.o.CallTimeout)
	is, err := r.o.Store.GetIssuance(sctx, c.IssuanceID)
	cancel()
	switch {
	case errors.Is(err, ErrNotFound):
		if snap.Issued(c.IssuanceID) {
			return "", nil
		}
		return OrphanNoRecord, nil
	case err != nil:
		return "", fmt.Errorf("reconcile: store: %w", err)
	case !is.RevokedAt.IsZero() && is.RevocationID != "" && is.RevokedAt.After(r.o.Now().Add(-r.o.Grace)):
		return "", errYoungRevocation // the revocation worker is on it
	case !is.RevokedAt.IsZero():
		return OrphanRevoked, nil
	case is.Refs.Accessor != "" && c.Ref != "" && is.Refs.Accessor != c.Ref:
		return OrphanAccessorChanged, nil
	case r.mustBeAudited(is, snap) && !snap.Issued(c.IssuanceID):
		return OrphanNotAudited, nil
	}
	return "", nil
}

// revoke revokes c and writes its orphan_revoked event; it returns the
// source's ErrNotFound, and writes nothing, when c was already gone. Once started it is
// finished (each call within CallTimeout) even when ctx ends: a shutdown
// that cut the backend call short could leave c revoked without its event,
// and the next run would no longer find c to write one.
func (r *Reconciler) revoke(ctx context.Context, c TaggedCredential, why string) error {
	ctx = context.WithoutCancel(ctx)
	rctx, cancel := context.WithTimeout(ctx, r.o.CallTimeout)
	err := r.o.Source.RevokeTagged(rctx, c)
	cancel()
	if err != nil {
		return err
	}
	ev := orphanRevokedEvent(&Issuance{ID: c.IssuanceID, Workload: c.Workload, Owner: c.Owner, SessionID: c.SessionID,
		Grant: c.Grant, Kind: c.Kind, Refs: CredentialRefs{Accessor: c.Ref, ExpiresAt: c.ExpiresAt}}, why, &audit.Outcome{Status: 200})
	if err := appendWithin(r.o.Audit, ev, r.o.CallTimeout); err != nil {
		return fmt.Errorf("orphan revoked but its event failed: %w", err)
	}
	return nil
}

// appendWithin appends ev to sink and waits for it at most d: a sink's
// Append may ignore its context once the event is queued (the audit file
// does), so a context deadline alone does not bound a write that hangs.
// Past d the error wraps ErrAuditPending (the append goes on, on a
// goroutine of its own for a sink that is not a BoundedAuditSink, and the
// event may still land).
func appendWithin(sink AuditSink, ev *audit.Event, d time.Duration) error {
	if b, ok := sink.(BoundedAuditSink); ok {
		return b.AppendWithin(ev, d)
	}
	done := make(chan error, 1)
	go func() { done <- sink.Append(context.Background(), ev) }()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("the event was not durable within %s: %w", d, ErrAuditPending)
	}
}

// orphanRevokedEvent is the orphan_revoked event for a credential revoked
// because nothing may hand it out: found by the reconciliation (why is its
// reason) or left by an exchange whose store write failed.
func orphanRevokedEvent(is *Issuance, why string, out *audit.Outcome) *audit.Event {
	return &audit.Event{
		Type: audit.TypeOrphanRevoked, IssuanceID: is.ID, Workload: is.Workload, Owner: is.Owner,
		SessionID: is.SessionID, Grant: is.Grant, Kind: is.Kind, Act: auditIdentities(is.Act), Reason: why,
		Credential: auditCredential(is.Refs), Outcome: out,
	}
}
