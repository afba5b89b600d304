package broker

// Revocation: the security team's way to end one credential, a session, a
// workload or everything an owner holds, on every instance at once.
//
// Order of a revocation (Service.Revoke):
//
//  1. select: the named issuance, or every still-active issuance of the
//     session, workload or owner (an owner's: recorded with it at issue, or
//     of a workload the policy in force gives it; store reads only; a
//     failure changes nothing);
//  2. audit: a `revoke` event (and one `block` event per blocked workload)
//     naming the admin, the reason and every selected issuance id. If the
//     audit log cannot take it the call fails with ErrUnavailable and
//     nothing is revoked: an unaudited admin action is not allowed. It is
//     waited for at most AuditTimeout: past that (a disk whose writes hang)
//     the event is queued and may still land, and the revocation goes on
//     (it takes access away; holding it back until the disk recovers would
//     leave the credentials valid) but is not reported done: the call
//     answers 503 audit_unavailable naming the revocation, and its
//     revoke_result events are written after the revoke events, nobody
//     waiting for them (should the late write fail, the revoke events are
//     written again first; if that fails too, the result is not written
//     either, and an ERROR names the revocation). The record keeps the
//     revoke events (Revocation.Decision) until they are durable, and is
//     not complete meanwhile: the RevocationWorker of any instance, after a
//     restart too, writes its results for the revocation only once the
//     revoke events are durable, writing them again first, from the
//     record when the instance that made them is not the one writing them
//     and decisionGrace has passed (see lateDecision). Every revoke and
//     block event carries the decision's time (details.decided_at, the
//     record's CreatedAt and the marks' RevokedAt): the sink stamps an
//     event late or written again with the time it writes it;
//  3. store, durable first: the blocks, the Revocation record with every
//     issuance pending, then each issuance marked RevokedAt. Until the
//     record is stored a failure answers ErrUnavailable and the revocation
//     is not made (blocks stored before it stay: the retry puts them
//     again); once it is, the worker finishes it. From here on
//     the revocation is in force on every instance, because every check
//     (Exchange's block check, Introspect, the proxy) reads the Store per
//     request; and it is never forgotten, because the RevocationWorker of any
//     instance finishes whatever the record still lists as pending;
//  4. backends: each kind's Revoker (Vault tokens by accessor...), with a
//     deadline per call; kinds without a Revoker (proxy credentials, broker
//     JWTs) are revoked by the store mark alone and denied by the proxy and
//     introspection until they expire;
//  5. the record is updated (revoked, pending, failed; see Writers below), a
//     `revoke_result` event written, and only then the change announced
//     through the Store's Notifier, if it has one: announcing is second and
//     never needed for correctness;
//  6. the sweep, SweepDelay after the revocation (see below), by the
//     RevocationWorker of any instance.
//
// The sweep. Step 1 cannot see a credential whose exchange had already
// passed its block check (or, for a revocation without a block, had simply
// started) but had not stored its issuance yet: the mint takes up to
// MintTimeout and the store write up to StoreTimeout. Nor, with FastReads,
// what another instance issues to a blocked workload before its cache
// learns the block (cacheLag). So a revocation of a session, workload or
// owner, and every revocation that blocks, stores SweepAt (its creation
// plus SweepDelay: MintTimeout + StoreTimeout + cacheLag + revokeClockSkew;
// for a block, SweepDelay after the blocks are stored, which follows the
// audit writes: until then an exchange may still pass its block check),
// and stays incomplete (CompletedAt zero, so the worker's pending list
// holds it and any instance's worker does it, after a restart too) until
// the sweep has run. The sweep selects again, on the Store: the active
// issuances of the session, workload or owner issued by the revocation's
// creation (plus revokeClockSkew; issued_at is stamped before the mint, on
// the minting instance's clock), and the active issuances of each blocked
// workload issued while the block stands (if it was lifted meanwhile,
// those issued before the unblock, which Unblock records on every
// revocation whose sweep is due that blocked the workload: later ones
// belong to the unblocked workload. When a block stands at the sweep
// although an unblock is recorded, the sweep reads it: another
// revocation's block created more than revokeClockSkew after the unblock
// is a re-block, so the unblock held and its time still bounds this
// revocation's part; any other (this revocation's own, the unblock having
// failed after recording its time, or a re-block too close to the unblock
// to tell) makes the sweep take what the workload got up to now, an
// over-revocation on the safe side; an unblock that lifted nothing, its
// audit write failed or the block replaced, takes its time back, so that
// a later unblock's time bounds the part, not one before it while the
// block still stood). For a revocation of a
// session or an issuance that part starts MintTimeout + StoreTimeout +
// revokeClockSkew before its creation: the workload's other credentials
// issued earlier were stored when it selected and are not its own. Whatever
// it finds that the record does not list yet is added to the record as
// pending (stored first), then marked, revoked at its backend and settled
// like the rest, and a `revoke_result` event (`by: sweep`) names it under
// `swept`. The sweep also takes back any unexpired issuance stored as
// revoked by the revocation that the record lists neither as revoked nor as
// pending: the mark keeps it out of every selection of active issuances, so
// a record that lost it would otherwise never end it at its backend. A
// credential issued after the revocation to a session or
// workload it did not block is not taken. The cost: a credential that
// raced the revocation stays usable until the sweep (SweepDelay, 12 s with
// the defaults) instead of being refused at once; in exchange the
// exchange's hot path gains no Store read.
//
// Writers. Once created (PutRevocation), a revocation record is changed by
// several writers, on any instance and at the same time: Revoke's progress
// write, the worker's retries, the sweep, Unblock. Each changes it through
// Store.UpdateRevocation, a compare-and-set on the record as stored, and
// changes only what it did itself: settle moves the ids this writer
// handled from Pending to Revoked (or sets their failure) and leaves every
// other id as stored; the sweep adds the ids it found and clears SweepAt;
// Unblock sets one Unblocked time. None writes back a copy it read earlier,
// which could drop the ids a sweep added (never revoked at their backend)
// or an unblock time (the sweep then takes the unblocked workload's new
// credentials).
//
// Propagation. RevocationCache is each instance's in-memory set of revoked
// issuances and blocked workloads, refreshed from the Store at least every
// second and updated at once by every Notifier message. RevocationCache.Store
// fronts the Store with it: a check denies when the Store or the cache says
// so. (The revocation flow itself, selection, marks, worker and sweep,
// decides on the Store's own records, never on a copy the cache marked
// revoked: a mark the cache stands in for must still be written.) Without
// FastReads every check also reads the Store, so a revocation is
// visible everywhere as soon as step 3 is done. With FastReads (the server's
// setting) the cache answers the hot-path checks alone while its view is
// fresh, so a revocation made elsewhere is in force here within one refresh
// interval (one second), or at once when the notice arrives; a stale view
// falls back to Store reads. (The cache also covers a revocation write that
// a Redis failover lost: its refreshes add to the revoked set and never drop
// an id before it leaves the Window. When the Store's version goes back, its
// data was lost or restored, the cache also drops the issuance records it
// read from it, so none of them is served as active any more; keeps the
// blocks it knew that the Store lost, as it keeps revoked ids (also a block
// announced before any refresh read it, when the Store holds neither it
// nor its revocation: a loss right after the revocation); logs an
// ERROR and counts the loss (StoreLosses); and writes back into the Store
// the lost blocks and the Window's revocation records it read, not
// audited again (restoreLost), so that an instance started after the loss
// learns them. A broker JWT whose issuance the Store no longer holds is
// refused when the cache knows its id revoked (checkBrokerToken).)

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode"

	"github.com/keytrail/keytrail/broker/audit"
)

// Limits on admin input.
const (
	maxSelectorLen = 256
	maxReasonLen   = 1024
	// revokeParallel bounds concurrent backend revocations of one call.
	revokeParallel = 8
	// noticeMaxIDs bounds the issuance ids carried by one notice; a larger
	// revocation is announced without ids and learned from the Store.
	noticeMaxIDs = 10000
)

// RevokeOptions are the choices of one revocation besides its target.
type RevokeOptions struct {
	// Block also stops new issuance to the workloads concerned.
	Block bool
	// Force accepts a workload or owner that neither the policy in force
	// nor the Store knows (see Revoke).
	Force bool
}

// Revoke ends the credentials sel selects and, when o.Block is set, blocks
// new issuance to the workloads they belong to (the named workload; every
// policy workload of the named owner; the workloads of the named issuance or
// session). Exactly one selector field must be set and reason is required.
//
// A workload or owner named by sel must be known: in the policy in force, or
// named by an issuance the Store holds (active or not: a workload removed
// from the policy may still hold credentials). Otherwise, unless o.Force,
// Revoke refuses it (ErrNotFound, unknown_workload or unknown_owner) before
// anything is audited or stored: a typo or a wrong case would match nothing
// and, with a block, block a name no workload has.
//
// Matched counts the named issuance (whatever its state), or the session's,
// workload's or owner's issuances that were active (unexpired, unrevoked).
// The returned revocation lists each as revoked (stored as revoked and ended
// at its backend) or pending (to be retried by the RevocationWorker, with
// the reason in Failed), and SweepAt when the credentials minted while it
// ran will be looked for. The revocation is stored and audited before Revoke
// returns; see the file comment for the order, the sweep and the failure
// behaviour.
func (s *Service) Revoke(ctx context.Context, admin *Admin, sel RevokeSelector, reason string, o RevokeOptions, requestID string) (*Revocation, error) {
	block := o.Block
	if admin == nil {
		return nil, Errorf(ErrUnauthenticated, "missing_admin", "revocation needs an authorized admin", nil)
	}
	if err := validateSelector(sel); err != nil {
		return nil, err
	}
	reason = strings.TrimSpace(reason)
	if err := validateReason(reason); err != nil {
		return nil, err
	}

	matched, err := s.selectIssuances(ctx, sel)
	if err != nil {
		return nil, err
	}
	if len(matched) == 0 && !o.Force {
		if err := s.checkKnown(ctx, sel); err != nil {
			return nil, err
		}
	}
	var blocks []string
	if block {
		if blocks, err = s.blockTargets(ctx, sel, matched); err != nil {
			return nil, err
		}
	}

	now := s.d.Now()
	rev := &Revocation{
		ID: NewID(PrefixRevocation), Selector: sel, Reason: reason, Block: block,
		Admin: admin.String(), CreatedAt: now, Matched: len(matched),
		Revoked: []string{}, Pending: ids(matched), Failed: []RevokeFailure{},
		Blocks: blocks,
	}
	if sel.IssuanceID != "" && len(matched) == 1 {
		rev.Act = slices.Clone(matched[0].Act)
	}
	if sel.IssuanceID == "" || len(blocks) > 0 {
		// A scope or a block: credentials minted meanwhile are found by
		// the sweep (see the file comment).
		rev.SweepAt = now.Add(s.SweepDelay())
	}

	// 2. Audit the decision before anything changes. A revocation naming
	// more issuances than one audit line holds is written as several
	// revoke events (see eventParts), all before anything changes.
	// decided_at: the time the record and the marks use. The sink stamps
	// an event with the time it writes it, which for a decision queued
	// behind a write that hangs (or written again, writtenAgain) is later:
	// trace and report take revoked_at from it.
	decidedAt := now.UTC().Format(audit.TimeFormat)
	details := map[string]any{"selector": sel, "matched": rev.Matched, "block": block, "decided_at": decidedAt}
	if block {
		details["blocks"] = blocks
	}
	if o.Force {
		details["force"] = true
	}
	if !rev.SweepAt.IsZero() {
		details["sweep_at"] = rev.SweepAt
	}
	// The revoke events (one per part) and the block events are made
	// durable together when the sink can (BatchAuditSink): a failure then
	// leaves none of them. With a sink that writes them one by one, a
	// failure after the first leaves the decision audited in part: a
	// revoke_result with not_made says that nothing was revoked (trace and
	// report would read the issuances the written parts name as revoked).
	var decision []*audit.Event
	for _, part := range eventParts(details, map[string][]string{"issuance_ids": rev.Pending}, nil) {
		decision = append(decision, &audit.Event{
			Type: audit.TypeRevoke, RequestID: requestID, RevocationID: rev.ID,
			IssuanceID: sel.IssuanceID, SessionID: sel.SessionID, Workload: sel.Workload, Owner: sel.Owner,
			Admin: rev.Admin, Identity: auditIdentity(admin.Identity), Act: auditIdentities(rev.Act), Reason: reason,
			Details: part, Outcome: &audit.Outcome{Status: 200},
		})
	}
	for _, w := range blocks {
		decision = append(decision, &audit.Event{
			Type: audit.TypeBlock, RequestID: requestID, RevocationID: rev.ID, Workload: w,
			Admin: rev.Admin, Identity: auditIdentity(admin.Identity), Reason: reason,
			Details: map[string]any{"decided_at": decidedAt}, Outcome: &audit.Outcome{Status: 200},
		})
	}
	// Waited for at most AuditTimeout. Past it (pending) the events stay
	// queued and the revocation goes on, answered 503: every later event
	// of this revocation is written after them (after), nobody waiting.
	// Copies taken before the sink fills in their chain fields: the
	// record keeps them should the write not be durable in time.
	unwritten := unsealed(decision)
	dw := s.startAppend(ctx, rev.ID, "audit revoke event failed", decision, nil, false, 0)
	var after *auditWrite
	pending := s.awaitAudit(&dw.auditWait)
	switch {
	case errors.Is(pending, ErrAuditPending):
		after = dw
		// The worker's results for it wait until they are durable: this
		// instance's through lateDecisions, any instance's (after a
		// restart too) through the record, which keeps the events until
		// they are (see lateDecision).
		dw.late = s.noteLateDecision(rev.ID, now, rev.Matched)
		rev.Decision = unwritten
	case pending != nil:
		if dw.written > 0 {
			s.auditNotMade(context.WithoutCancel(ctx), nil, rev, requestID, "audit_unavailable", nil)
		}
		return nil, Unavailable("audit_unavailable", time.Second, pending)
	}

	// 3. Durable first: the blocks, the record (everything pending), the
	// issuance marks. The client going away does not stop it. The blocks
	// go first: once the record is stored the worker finishes the
	// revocation whatever this call answers, and nothing would put a block
	// that failed after it. So a failure up to the record leaves a
	// revocation not made (nothing revoked, no record: the caller retries),
	// at most with some of its blocks already in force, the safe side.
	dctx := context.WithoutCancel(ctx)
	var blocked []string
	for _, w := range blocks {
		b := Block{Workload: w, Reason: reason, RevocationID: rev.ID, Admin: rev.Admin, CreatedAt: now}
		sctx, cancel := context.WithTimeout(dctx, s.d.StoreTimeout)
		err := s.d.Store.PutBlock(sctx, b)
		cancel()
		if err != nil && !unreplicated(err) && s.blockStored(dctx, b) {
			err = nil // its reply lost (see blockStored)
		}
		if err != nil {
			if unreplicated(err) { // stored all the same, in force
				blocked = append(blocked, w)
			}
			return nil, s.notMade(dctx, after, rev, requestID, blocked, fmt.Errorf("block %s: %w", w, err))
		}
		blocked = append(blocked, w)
	}
	if len(blocks) > 0 {
		// The sweep's delay counts from when the blocks are in force, not
		// from the selection: an exchange may pass its block check until
		// then, and the audit writes above take what they take.
		if at := s.d.Now().Add(s.SweepDelay()); at.After(rev.SweepAt) {
			rev.SweepAt = at
		}
	}
	err = s.putRevocation(dctx, rev)
	if err != nil && !unreplicated(err) && s.revocationStored(dctx, rev.ID, rev.Matched) {
		// Its reply lost (see blockStored). Read back from the primary:
		// with store.min_replicas no replica confirmed it (the write may
		// have ended before its WAIT, or in it), so it is unconfirmed.
		lost := err
		err = nil
		if s.acksReplicas() {
			err = Unavailable(ReasonStoreUnreplicated, time.Second,
				fmt.Errorf("the record's write failed, but it is stored (its reply was lost); no replica confirmed it: %w", lost))
		}
	}
	if err != nil {
		if unreplicated(err) {
			return nil, s.unconfirmed(dctx, after, rev, requestID, err)
		}
		return nil, s.notMade(dctx, after, rev, requestID, blocked, err)
	}
	marked, failed, wrote := s.markAll(dctx, matched, rev.ID, now)

	// 4. Backends.
	revoked, bfailed := s.revokeBackends(dctx, marked)
	failed = append(failed, bfailed...)
	// Marks found stored (another revocation's, a withdrawal's) stay
	// pending in the progress write: only its acknowledgement confirms
	// them (see unconfirmedMarks), and a write applied but not confirmed
	// (store_unreplicated) must leave them pending in the record, as the
	// answer says, for the worker to finish. (Not with a store that waits
	// for no replica: there they are revoked at once.)
	revoked, failed, found := s.unconfirmedMarks(marked, wrote, revoked, failed)
	if cur, err := s.storeProgress(dctx, rev.ID, rev.Matched, revoked, failed); err != nil {
		// The stored record lists as pending what this write did not
		// settle (all of it, if the write was not applied); the worker
		// redoes it (revokers are idempotent).
		s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "storing revocation progress failed",
			slog.String("revocation_id", rev.ID), slog.String("error", err.Error()))
		settle(rev, revoked, failed, s.d.Now())
	} else {
		rev = cur // with whatever other writers stored meanwhile
		if len(found) > 0 {
			// Acknowledged, so the found marks are confirmed too: they
			// are revoked. Should this second write fail, the record
			// keeps them pending and the worker settles them.
			if cur, err := s.storeProgress(dctx, rev.ID, rev.Matched, found, nil); err != nil {
				s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "storing revocation progress failed",
					slog.String("revocation_id", rev.ID), slog.String("error", err.Error()))
				settle(rev, found, nil, s.d.Now())
			} else {
				rev = cur
			}
		}
	}

	// 5. Result, then announce.
	status := 200
	if len(rev.Pending) > 0 {
		status = 202
	}
	s.auditResult(dctx, after, rev, requestID, status, "", "request", nil, true)
	s.announce(dctx, Notice{RevocationID: rev.ID, Revoked: ids(marked), Blocked: blocks})
	if after != nil {
		// Made, but not reported done: its revoke event is not durable.
		e := Unavailable("audit_unavailable", time.Second, &RevocationMadeError{ID: rev.ID, Err: pending})
		e.Safe = "the revocation " + rev.ID + " was made, but its revoke event was not durable in time (the audit log is not taking writes): " +
			"it is written, then the result, once the log takes writes again; GET /v1/admin/revocations/" + rev.ID +
			" shows the revocation once the audit log takes writes again (that call is audited too)"
		return nil, e
	}
	return cloneRevocation(rev), nil
}

// acksReplicas reports whether the store's writes wait for replicas
// (ReplicaAcker; a Store that does not say is taken to).
func (s *Service) acksReplicas() bool {
	a, ok := s.records().(ReplicaAcker)
	return !ok || a.AcksReplicas()
}

// blockStored reports whether the block b, whose PutBlock answered an
// error (not store_unreplicated), is stored all the same: the reply to a
// write the store applied was lost (a timeout after Redis wrote it, a
// connection cut before the answer). The block's revocation id is the new
// revocation's, so a block found with it is this write's. Then the
// revocation goes on as if the write had answered: "not made" would be
// wrong (the block is in force; a stored record, revocationStored, is
// finished by the worker whatever the answer). A later write of the
// revocation that the replicas acknowledge confirms it, as for any write
// (the store replicates in order). Not found, or the read failing: not
// made, as answered; a write still on its way to the store when this read
// came (a very slow network) may yet land (docs/RELIABILITY.md).
func (s *Service) blockStored(ctx context.Context, b Block) bool {
	sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
	defer cancel()
	got, err := s.records().GetBlock(sctx, b.Workload)
	if err != nil || got.RevocationID != b.RevocationID {
		return false
	}
	s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "revocation: the store answered a block write with an error, but the block is stored (its reply was lost)",
		slog.String("revocation_id", b.RevocationID), slog.String("workload", b.Workload))
	return true
}

// revocationStored is blockStored for the record of the new revocation id,
// naming size issuances: the read fetches and decodes the whole record, so
// it gets recordTimeout(size), as the write did (a read of a large record
// timing out answered "not made" for a stored one; redisstore bounds its
// GET by the record's size too, and decodes after it). With store.min_replicas the
// record found is not confirmed (acksReplicas): Revoke answers it as a
// record the replicas did not confirm.
func (s *Service) revocationStored(ctx context.Context, id string, size int) bool {
	sctx, cancel := context.WithTimeout(ctx, s.recordTimeout(size))
	defer cancel()
	if _, err := s.records().GetRevocation(sctx, id); err != nil {
		return false
	}
	s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "revocation: the store answered the record's write with an error, but the record is stored (its reply was lost)",
		slog.String("revocation_id", id))
	return true
}

// notMade audits and returns the failure of a revocation whose record could
// not be stored: nothing is revoked and no worker will; blocked are the
// blocks it stored before (in force, and left: the retry puts them again).
func (s *Service) notMade(ctx context.Context, after *auditWrite, rev *Revocation, requestID string, blocked []string, cause error) error {
	s.auditNotMade(ctx, after, rev, requestID, "store_unavailable", blocked)
	if after != nil {
		s.lateDecisions.Delete(rev.ID) // no record: no worker writes for it
	}
	safe := "the revocation was not made (the store is unavailable): nothing was revoked; retry"
	if len(blocked) > 0 {
		safe = "the revocation was not made (the store is unavailable): nothing was revoked, but the block of " +
			strings.Join(blocked, ", ") + " is in force; retry"
	}
	e := Unavailable("store_unavailable", time.Second, cause)
	e.Safe = safe
	return e
}

// auditNotMade writes the revoke_result of a revocation that was not made
// (details.not_made; reason says why): nothing was revoked and no worker
// will; blocked are the blocks in force all the same.
func (s *Service) auditNotMade(ctx context.Context, after *auditWrite, rev *Revocation, requestID, reason string, blocked []string) {
	none := cloneRevocation(rev)
	none.Pending, none.Failed = []string{}, []RevokeFailure{} // nothing left to do: not made
	s.auditResult(ctx, after, none, requestID, 503, reason, "", map[string]any{
		"not_made": true, "blocks_in_force": append([]string{}, blocked...),
	}, false)
}

// unconfirmed audits and returns the failure of a revocation whose record
// the store applied but could not confirm as replicated (store.min_replicas):
// it is made, everything pending, and the worker finishes it unless a
// failover loses the record; the caller retries to be sure (a retry makes
// a second revocation, which finds what the first did not).
func (s *Service) unconfirmed(ctx context.Context, after *auditWrite, rev *Revocation, requestID string, cause error) error {
	s.auditResult(ctx, after, rev, requestID, 503, ReasonStoreUnreplicated, "", map[string]any{"unconfirmed": true}, true)
	e := Unavailable(ReasonStoreUnreplicated, time.Second, cause)
	e.Safe = "the revocation " + rev.ID + " is stored, but fewer store replicas than store.min_replicas confirmed it: " +
		"it is finished in the background unless a store failover loses it; retry"
	return e
}

// validateSelector checks that exactly one field is set and that it looks
// like what it names.
func validateSelector(sel RevokeSelector) error {
	type field struct{ name, value, prefix string }
	var set []field
	for _, f := range []field{
		{"issuance_id", sel.IssuanceID, PrefixIssuance},
		{"session_id", sel.SessionID, PrefixSession},
		{"workload", sel.Workload, ""},
		{"owner", sel.Owner, ""},
	} {
		if f.value != "" {
			set = append(set, f)
		}
	}
	if len(set) != 1 {
		return Errorf(ErrInvalidRequest, "bad_selector", "exactly one of issuance_id, session_id, workload or owner is required", nil)
	}
	f := set[0]
	if len(f.value) > maxSelectorLen || !printable(f.value) || strings.TrimSpace(f.value) != f.value {
		return Errorf(ErrInvalidRequest, "bad_selector", f.name+" is not a valid value", nil)
	}
	if f.prefix != "" && !strings.HasPrefix(f.value, f.prefix) {
		return Errorf(ErrInvalidRequest, "bad_selector", f.name+" must start with "+f.prefix, nil)
	}
	return nil
}

func validateReason(reason string) error {
	switch {
	case reason == "":
		return Errorf(ErrInvalidRequest, "missing_reason", "reason is required", nil)
	case len(reason) > maxReasonLen:
		return Errorf(ErrInvalidRequest, "bad_reason", fmt.Sprintf("reason must be at most %d bytes", maxReasonLen), nil)
	case !printable(reason):
		return Errorf(ErrInvalidRequest, "bad_reason", "reason must not contain control characters", nil)
	}
	return nil
}

func printable(s string) bool {
	for _, r := range s {
		if unicode.IsControl(r) || r == unicode.ReplacementChar {
			return false
		}
	}
	return true
}

// selectIssuances reads what sel names: the one issuance, or the active
// issuances of the session, workload or owner, as the Store holds them. An
// owner's are those recorded with it at issue and those of the workloads
// the policy in force gives it (recorded with a former owner, if the
// workload changed hands).
func (s *Service) selectIssuances(ctx context.Context, sel RevokeSelector) ([]*Issuance, error) {
	sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
	defer cancel()
	if sel.IssuanceID != "" {
		is, err := s.records().GetIssuance(sctx, sel.IssuanceID)
		switch {
		case errors.Is(err, ErrNotFound):
			return nil, Errorf(ErrNotFound, "unknown_issuance", "no issuance with this id", err)
		case err != nil:
			return nil, Unavailable("store_unavailable", time.Second, err)
		}
		return []*Issuance{is}, nil
	}
	now := s.d.Now()
	list, err := s.records().ListIssuances(sctx, IssuanceFilter{
		Workload: sel.Workload, Owner: sel.Owner, SessionID: sel.SessionID, ActiveAt: now,
	})
	if err != nil {
		return nil, Unavailable("store_unavailable", time.Second, err)
	}
	if sel.Owner == "" {
		return list, nil
	}
	seen := map[string]bool{}
	for _, is := range list {
		seen[is.ID] = true
	}
	for _, w := range s.ownerWorkloads(sel.Owner) {
		more, err := s.records().ListIssuances(sctx, IssuanceFilter{Workload: w, ActiveAt: now})
		if err != nil {
			return nil, Unavailable("store_unavailable", time.Second, err)
		}
		for _, is := range more {
			if !seen[is.ID] {
				seen[is.ID] = true
				list = append(list, is)
			}
		}
	}
	return list, nil
}

// ownerWorkloads lists the workloads the policy in force gives owner.
func (s *Service) ownerWorkloads(owner string) []string {
	var out []string
	for _, w := range s.d.Policy().Workloads() {
		if w.Owner == owner {
			out = append(out, w.Name)
		}
	}
	return out
}

// checkKnown refuses a workload or owner selector that names what neither
// the policy in force nor the Store knows (see Revoke); an issuance or
// session selector passes.
func (s *Service) checkKnown(ctx context.Context, sel RevokeSelector) error {
	var what, name string
	var f IssuanceFilter
	var similar []string
	pol := s.d.Policy()
	switch {
	case sel.Workload != "":
		if _, ok := pol.Workload(sel.Workload); ok {
			return nil
		}
		what, name, f = "workload", sel.Workload, IssuanceFilter{Workload: sel.Workload, Limit: 1}
		for _, w := range pol.Workloads() {
			if strings.EqualFold(w.Name, name) {
				similar = append(similar, w.Name)
			}
		}
	case sel.Owner != "":
		what, name, f = "owner", sel.Owner, IssuanceFilter{Owner: sel.Owner, Limit: 1}
		for _, w := range pol.Workloads() {
			if w.Owner == name {
				return nil
			}
			if strings.EqualFold(w.Owner, name) && !slices.Contains(similar, w.Owner) {
				similar = append(similar, w.Owner)
			}
		}
	default:
		return nil
	}
	sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
	defer cancel()
	list, err := s.records().ListIssuances(sctx, f)
	if err != nil {
		return Unavailable("store_unavailable", time.Second, err)
	}
	if len(list) > 0 {
		return nil
	}
	if what == "workload" {
		// A block outlives the policy entry and the issuances it stopped.
		if _, err := s.records().GetBlock(sctx, name); err == nil {
			return nil
		} else if !errors.Is(err, ErrNotFound) {
			return Unavailable("store_unavailable", time.Second, err)
		}
	}
	msg := fmt.Sprintf("no %s named %q in the policy in force and no issuance recorded for it", what, name)
	if len(similar) > 0 {
		msg += fmt.Sprintf(" (names are case-sensitive: did you mean %q?)", strings.Join(similar, `" or "`))
	}
	msg += "; nothing was revoked or blocked; to revoke or block this name anyway, send force (keytrail revoke --force)"
	return Errorf(ErrNotFound, "unknown_"+what, msg, nil)
}

// blockTargets lists the workloads a blocking revocation blocks: the named
// workload; every policy workload of the named owner and the workloads of
// its matched issuances; the workload of the named issuance; the workloads
// of every issuance the session was given, active or not (a session whose
// credentials were revoked earlier, or have expired, is still blocked by
// its workload).
func (s *Service) blockTargets(ctx context.Context, sel RevokeSelector, matched []*Issuance) ([]string, error) {
	set := map[string]bool{}
	switch {
	case sel.Workload != "":
		set[sel.Workload] = true
	case sel.Owner != "":
		for _, w := range s.ownerWorkloads(sel.Owner) {
			set[w] = true
		}
	case sel.SessionID != "":
		sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
		all, err := s.records().ListIssuances(sctx, IssuanceFilter{SessionID: sel.SessionID})
		cancel()
		if err != nil {
			return nil, Unavailable("store_unavailable", time.Second, err)
		}
		for _, is := range all {
			set[is.Workload] = true
		}
	}
	if sel.Workload == "" {
		for _, is := range matched {
			set[is.Workload] = true
		}
	}
	out := make([]string, 0, len(set))
	for w := range set {
		out = append(out, w)
	}
	slices.Sort(out)
	return out, nil
}

// markAll stores each issuance as revoked by revID (an issuance already
// revoked keeps its first revocation). It returns the issuances now marked,
// a failure for each that could not be stored, and the ids whose mark this
// call wrote (see mark).
func (s *Service) markAll(ctx context.Context, list []*Issuance, revID string, now time.Time) ([]*Issuance, []RevokeFailure, map[string]bool) {
	var marked []*Issuance
	var failed []RevokeFailure
	wrote := map[string]bool{}
	for _, is := range list {
		w, err := s.mark(ctx, is, revID, now)
		if err != nil {
			s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "marking issuance revoked failed",
				slog.String("issuance_id", is.ID), slog.String("revocation_id", revID), slog.String("error", err.Error()))
			failed = append(failed, RevokeFailure{IssuanceID: is.ID, Error: "the revocation could not be stored yet; retrying"})
			continue
		}
		if w {
			wrote[is.ID] = true
		}
		marked = append(marked, is)
	}
	return marked, failed, wrote
}

// mark stores is as revoked by revID unless it is already. is must be read
// from s.records(): a record that only the revocation cache calls revoked
// (a mark that failed, or a revocation write a failover lost) must still be
// written. The write is conditional (Store.MarkRevoked): when another
// revocation marked the issuance since is was read (two revocations
// selected it at the same time), its mark stands and is takes it, so an
// issuance is attributed to the first revocation that marked it.
//
// It reports whether this call wrote the mark: the stored mark is the one
// it sent (revID and now). A mark found stored instead, even one carrying
// revID (written by another writer of the same revocation meanwhile: the
// worker of another instance, or the worker while Revoke still runs), is
// one whose write MarkRevoked did not wait for (see unconfirmedMarks).
func (s *Service) mark(ctx context.Context, is *Issuance, revID string, now time.Time) (bool, error) {
	if !is.RevokedAt.IsZero() {
		return false, nil
	}
	c := *is
	c.RevokedAt, c.RevocationID = now, revID
	sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
	defer cancel()
	stored, err := s.d.Store.MarkRevoked(sctx, &c)
	if err != nil {
		return false, err
	}
	is.RevokedAt, is.RevocationID = stored.RevokedAt, stored.RevocationID
	return stored.RevocationID == revID && stored.RevokedAt.Equal(now), nil
}

// unconfirmedMarks moves out of revoked, into failed, each issuance of
// marked whose mark this call did not write (not in wrote, see markAll),
// and returns those ids as found: a mark another revocation (or the
// exchange's withdrawal) wrote, or one of this revocation's that was
// stored already or that another of its writers stored meanwhile (a mark
// whose writer got an error, store_unreplicated, is stored all the same),
// found stored by mark, which waits for no replica then
// (Store.MarkRevoked). Such a mark may be one its writer could not confirm
// on the store's replicas (store.min_replicas), and only a later write of
// this revocation that the replicas confirm (its progress write: a
// replica confirming a write has every earlier one) confirms it too.
// Revoke and the worker store their progress with those issuances still
// pending, and settle them as revoked only once that write is
// acknowledged; otherwise the answer, the revoke_result and the stored
// record list them pending, not revoked on a mark that a failover may
// lose, and the worker (again) finishes them. Marks this call wrote were
// confirmed by their own write.
//
// A Store whose writes never wait for replicas (ReplicaAcker: memstore,
// redisstore without store.min_replicas) confirms nothing later than it
// applies it: a mark found stored is as confirmed as one written, so
// nothing moves and found is nil (one progress write, answered revoked).
func (s *Service) unconfirmedMarks(marked []*Issuance, wrote map[string]bool, revoked []string, failed []RevokeFailure) ([]string, []RevokeFailure, []string) {
	if !s.acksReplicas() {
		return revoked, failed, nil
	}
	isFound := map[string]bool{}
	for _, is := range marked {
		if !wrote[is.ID] {
			isFound[is.ID] = true
		}
	}
	if len(isFound) == 0 {
		return revoked, failed, nil
	}
	var keep, found []string
	for _, id := range revoked {
		if !isFound[id] {
			keep = append(keep, id)
			continue
		}
		found = append(found, id)
		failed = append(failed, RevokeFailure{IssuanceID: id, Error: "its revoked mark, found stored, is not confirmed by the store yet; retrying"})
	}
	return keep, failed, found
}

// revokeBackends calls each issuance's Revoker, a few at a time, each with
// its own deadline. Kinds without a Revoker are ended by the store mark.
func (s *Service) revokeBackends(ctx context.Context, list []*Issuance) ([]string, []RevokeFailure) {
	type result struct {
		id  string
		err error
	}
	results := make([]result, len(list))
	sem := make(chan struct{}, revokeParallel)
	var wg sync.WaitGroup
	for i, is := range list {
		results[i].id = is.ID
		rv, ok := s.d.Revokers[is.Kind]
		if !ok {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			rctx, cancel := context.WithTimeout(ctx, s.d.MintTimeout)
			defer cancel()
			results[i].err = rv.Revoke(rctx, is)
		}()
	}
	wg.Wait()
	var revoked []string
	var failed []RevokeFailure
	for i, r := range results {
		if r.err == nil {
			revoked = append(revoked, r.id)
			continue
		}
		e := AsError(r.err)
		s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "backend revocation failed; will retry",
			slog.String("issuance_id", r.id), slog.String("kind", list[i].Kind),
			slog.String("accessor", list[i].Refs.Accessor), slog.String("error", r.err.Error()))
		failed = append(failed, RevokeFailure{IssuanceID: r.id, Error: safeRevokeError(e)})
	}
	return revoked, failed
}

// safeRevokeError is the text a receipt shows for a failed backend call: the
// stable reason only, never the backend's own message.
func safeRevokeError(e *Error) string {
	reason := e.Reason
	if reason == "" {
		reason = "backend_error"
	}
	return "backend revocation failed (" + reason + "); retrying"
}

// settle applies one writer's outcome to rev: the ids in done (revoked, or
// gone) move from Pending to Revoked, and each failure becomes the Failed
// entry of its id while that id is still pending. Every other id keeps its
// state: rev is the freshly stored record (see storeProgress), and what
// other writers added to it since this writer read it (ids the sweep
// found, an unblock time) is not this writer's to drop. When nothing is
// pending any more, the sweep has run and the decision events are durable
// (Decision empty), rev is complete at now.
func settle(rev *Revocation, done []string, failed []RevokeFailure, now time.Time) {
	// Sets, not slices.Contains: a revocation of tens of thousands of
	// issuances would take seconds of CPU per update (n²).
	isDone := make(map[string]bool, len(done))
	wasRevoked := make(map[string]bool, len(rev.Revoked))
	for _, id := range rev.Revoked {
		wasRevoked[id] = true
	}
	for _, id := range done {
		isDone[id] = true
		if !wasRevoked[id] {
			wasRevoked[id] = true
			rev.Revoked = append(rev.Revoked, id)
		}
	}
	byID := map[string]RevokeFailure{}
	for _, f := range rev.Failed {
		byID[f.IssuanceID] = f
	}
	for _, f := range failed {
		byID[f.IssuanceID] = f
	}
	pending := []string{}
	fails := []RevokeFailure{}
	for _, id := range rev.Pending {
		if isDone[id] {
			continue
		}
		isDone[id] = true // listed once
		pending = append(pending, id)
		if f, ok := byID[id]; ok {
			fails = append(fails, f)
		} else {
			fails = append(fails, RevokeFailure{IssuanceID: id, Error: "not attempted yet; retrying"})
		}
	}
	rev.Pending, rev.Failed = pending, fails
	if len(pending) == 0 && rev.SweepAt.IsZero() && len(rev.Decision) == 0 && rev.CompletedAt.IsZero() {
		rev.CompletedAt = now
	}
}

// storeProgress stores what one writer did to revocation id (see settle)
// on the record as stored now, and returns that record; size is the
// issuances the record names (recordTimeout).
func (s *Service) storeProgress(ctx context.Context, id string, size int, done []string, failed []RevokeFailure) (*Revocation, error) {
	now := s.d.Now()
	return s.updateRevocation(ctx, id, size, func(r *Revocation) error {
		settle(r, done, failed, now)
		return nil
	})
}

// storeWrapper is a Store that fronts another and adds answers of its own
// (RevocationCache.Store adds the cache's denials).
type storeWrapper interface{ unwrap() Store }

// records is the Store whose records the revocation flow decides on: the
// Service's store without the wrappers that add answers of their own. A
// cache-decorated record looks revoked (RevokedAt set) before its mark is
// stored, and deciding on it left the mark unwritten for good. Writes
// still go through s.d.Store.
func (s *Service) records() Store {
	st := s.d.Store
	for {
		w, ok := st.(storeWrapper)
		if !ok {
			return st
		}
		st = w.unwrap()
	}
}

// putRevocation creates a revocation record. Every later change goes
// through updateRevocation: a writer that put back a whole copy it read
// earlier would drop what others wrote meanwhile (the ids a sweep added,
// an unblock time). It gets recordTimeout: the record names every issuance
// matched, pending, each with its failure.
func (s *Service) putRevocation(ctx context.Context, rev *Revocation) error {
	sctx, cancel := context.WithTimeout(ctx, s.recordTimeout(rev.Matched))
	defer cancel()
	return s.d.Store.PutRevocation(sctx, rev)
}

// updateRevocation applies fn, which must change only what its writer did,
// to the stored record id (Store.UpdateRevocation: fn may run more than
// once) and returns the record as stored, within recordTimeout(size), size
// being the issuances the record names (Matched; 0 when not known).
func (s *Service) updateRevocation(ctx context.Context, id string, size int, fn func(*Revocation) error) (*Revocation, error) {
	sctx, cancel := context.WithTimeout(ctx, s.recordTimeout(size))
	defer cancel()
	return s.d.Store.UpdateRevocation(sctx, id, fn)
}

// recordIDsPerTimeout is how many issuances a revocation record may name
// per StoreTimeout its update is given on top of the first: an update reads,
// decodes, encodes and writes the whole record, one JSON value, about 80
// bytes per issuance pending with a failure (a few more while its decision
// is held), and its cost grows with it. Measured on the real Redis
// (BenchmarkUpdateLargeRevocation, 100,000 issuances: 0.3-0.7 s, 2.35 s
// under load; 6 s with -race), against 2 s + 4 x 2 s = 10 s.
const recordIDsPerTimeout = 25_000

// recordTimeout bounds one update of a revocation record naming size
// issuances: StoreTimeout, and one more per recordIDsPerTimeout issuances.
// The update stays one compare-and-set (settle's outcome, the sweep's
// finds with its done mark, the decision's clear with the completion land
// together or not at all), so it is given the time its record needs; a
// store that hangs holds it as long.
func (s *Service) recordTimeout(size int) time.Duration {
	return s.d.StoreTimeout + time.Duration(size/recordIDsPerTimeout)*s.d.StoreTimeout
}

// auditResult writes the revoke_result event of Revoke's request, with
// extra added to its details. It is logged, not returned, on failure: the
// decision itself is already audited. It is waited for at most
// AuditTimeout (then it stays queued and may still land), and not at all
// when after, the request's revoke events, is not nil: those were not
// durable in time, and the result is written once their write has ended.
// A list of issuances too long for one event (over maxEventListBytes) is
// split over several revoke_result events, as eventParts says. owe: the
// revocation has a record, and should the result fail, the RevocationWorker
// writes one from the record (see owedResults, markResultOwed).
func (s *Service) auditResult(ctx context.Context, after *auditWrite, rev *Revocation, requestID string, status int, reason, by string, extra map[string]any, owe bool) {
	w := s.startAppend(ctx, rev.ID, "audit revoke_result failed", s.resultEvents(rev, requestID, status, reason, by, extra), after, owe, rev.Matched)
	if after == nil {
		if err := s.awaitAudit(&w.auditWait); errors.Is(err, ErrAuditPending) {
			s.d.Logger.LogAttrs(ctx, slog.LevelError, "audit revoke_result not durable in time; it may still land",
				slog.String("revocation_id", rev.ID), slog.String("error", err.Error()))
		}
	}
}

// auditWrite is an append of revocation events (evs) on a goroutine of its
// own (startAppend): done is closed when it has ended, err (and written, the
// events made durable) then set.
type auditWrite struct {
	auditWait
	evs     []*audit.Event
	written int
	// at, on a worker's result write that succeeded, is when it was
	// durable (Deps.Now): it covers a ResultOwed mark made before.
	at time.Time
	// late, on the write of revoke events Revoke stopped waiting for, is
	// resolved once the write after it (the request's revoke_result) has
	// ended.
	late *lateDecision
}

// lateDecision is a revocation's revoke events (and block events) that
// Revoke stopped waiting for (AuditTimeout), kept in
// Service.lateDecisions until they are durable and the record says so.
// done is closed once the request's own writes for the revocation have
// ended (its revoke_result written, or not: see startAppend); left then
// holds the events still not durable (their write and its retry failed),
// fresh copies. A RevocationWorker's revoke_result for the revocation is
// written only after done, and only once left is written
// (decisionDurable): never before the revoke event, nor without it, nor
// before the request's result.
//
// The record carries the same events (Revocation.Decision) from its
// creation until they are durable (clearDecision), and is not complete
// meanwhile, so the worker of any instance lists it. An instance with no
// entry for it (another instance, or this one after a restart: the entry
// and any write a hung disk held are gone) leaves them to the instance
// that made them for decisionGrace, writing no result for the revocation
// meanwhile, then takes that instance for gone: before any revoke_result for the revocation it appends
// the record's events to its own log, then clears them (a pass with
// nothing else to write writes a result too, the request's being lost
// with it). Should the instance that made them still be running, its late
// write may land as well: the decision is then in both logs, under the
// same revocation id. A duplicate, never a result without its decision.
type lateDecision struct {
	done      chan struct{}
	decidedAt time.Time // the revocation's creation (writtenAgain)
	size      int       // the issuances the record names (recordTimeout)
	mu        sync.Mutex
	left      []*audit.Event
}

// noteLateDecision records that revocation id's revoke events, decided at
// decidedAt, are not durable yet.
func (s *Service) noteLateDecision(id string, decidedAt time.Time, size int) *lateDecision {
	ld := &lateDecision{done: make(chan struct{}), decidedAt: decidedAt, size: size}
	s.lateDecisions.Store(id, ld)
	return ld
}

// resolve ends the request's part: left are the events it could not make
// durable (none: the record is told, and the entry dropped once it is).
func (ld *lateDecision) resolve(ctx context.Context, s *Service, id string, left []*audit.Event) {
	ld.mu.Lock()
	ld.left = left
	ld.mu.Unlock()
	close(ld.done)
	if len(left) == 0 {
		s.clearDecision(ctx, id, ld.size, ld)
	}
}

// lateDecisionOf is this instance's entry for revocation id, if any.
func (s *Service) lateDecisionOf(id string) *lateDecision {
	if v, ok := s.lateDecisions.Load(id); ok {
		return v.(*lateDecision)
	}
	return nil
}

// decisionDurable returns once revocation id's revoke events are durable:
// at once unless Revoke stopped waiting for them (stored, the record's
// Decision as the caller read it, empty, and no entry here); with this
// instance's entry, once the request's writes have ended, the events it
// left not durable appended again first; without one, once the record's
// events, read afresh, are appended (see lateDecision). Then the record is
// told (clearDecision). An error (the append failed, or the record could
// not be read) means they are not known to be in the log: nothing about
// the revocation may be written after them yet.
func (s *Service) decisionDurable(ctx context.Context, id string, size int, stored []*audit.Event) error {
	if ld := s.lateDecisionOf(id); ld != nil {
		select {
		case <-ld.done:
		case <-ctx.Done(): // shutdown: a later pass (any instance's, from the record)
			return ctx.Err()
		}
		ld.mu.Lock()
		if len(ld.left) > 0 {
			n, err := s.appendAll(ctx, ld.left)
			if err != nil {
				ld.left = unsealed(ld.left[n:])
				ld.mu.Unlock()
				return err
			}
			ld.left = nil
		}
		ld.mu.Unlock()
		s.clearDecision(ctx, id, ld.size, ld)
		return nil
	}
	if len(stored) == 0 {
		return nil
	}
	// Read afresh: another instance may have written them since.
	cur, err := s.readRevocation(ctx, id, size)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil
	case err != nil:
		return fmt.Errorf("read revocation %s for its revoke events: %w", id, err)
	case len(cur.Decision) == 0:
		return nil
	case !s.decisionAbandoned(cur.CreatedAt):
		return errDecisionHeld
	}
	s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "revocation's revoke event not known durable: writing it again from the record",
		slog.String("revocation_id", id))
	if _, err := s.appendAll(ctx, writtenAgain(cur.Decision, cur.CreatedAt)); err != nil {
		return err
	}
	s.clearDecision(ctx, id, cur.Matched, nil)
	return nil
}

// errDecisionHeld is decisionDurable's answer for a decision another
// instance (or this one before a restart) made, still within
// decisionGrace: its result waits for a later pass.
var errDecisionHeld = errors.New("its revoke event is left to the instance that made it for now")

// decisionGrace is how long after a revocation's creation a worker with no
// entry for its held decision events (lateDecision) leaves them to the
// instance that made them, whose late write may only be slow: a few
// AuditTimeouts. Past it, the worker takes that instance for gone and
// writes them itself (a duplicate should the late write land after all).
// Until then it writes no result for the revocation either, so a result
// never precedes its decision; the next pass past the grace writes both.
func (s *Service) decisionGrace() time.Duration { return 3 * s.d.AuditTimeout }

// decisionAbandoned reports whether a held decision of a revocation
// created at createdAt, which this instance has no entry for, is past
// decisionGrace.
func (s *Service) decisionAbandoned(createdAt time.Time) bool {
	return !s.d.Now().Before(createdAt.Add(s.decisionGrace()))
}

// errDecisionClear is clearDecision's answer from its update function
// when the record holds no decision events: nothing to write.
var errDecisionClear = errors.New("no decision events to clear")

// clearDecision stores that revocation id's decision events are durable:
// Decision cleared, and the record complete if nothing else is left. Once
// it is stored (or there is no record) ld, this instance's entry, is
// dropped, also when the store applied the write without confirming its
// replicas (store_unreplicated): a completed record is never visited
// again, so the entry would stay for the process's life (should a
// failover lose the write, the record's events bring the revocation back
// to any worker, which writes them again: a duplicate, never a result
// without them). Another failure is logged and leaves both: the record's
// events keep the revocation incomplete, and the next worker pass clears
// it (ld, done and with nothing left, tells that no append is needed).
func (s *Service) clearDecision(ctx context.Context, id string, size int, ld *lateDecision) {
	now := s.d.Now()
	_, err := s.updateRevocation(ctx, id, size, func(r *Revocation) error {
		if len(r.Decision) == 0 {
			return errDecisionClear
		}
		r.Decision = nil
		if len(r.Pending) == 0 && r.SweepAt.IsZero() && r.CompletedAt.IsZero() {
			r.CompletedAt = now
		}
		return nil
	})
	if err != nil && !errors.Is(err, errDecisionClear) && !errors.Is(err, ErrNotFound) && !unreplicated(err) {
		s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "storing that a revocation's revoke event is durable failed; the worker retries",
			slog.String("revocation_id", id), slog.String("error", err.Error()))
		return
	}
	if ld != nil {
		s.lateDecisions.CompareAndDelete(id, ld)
	}
}

// markResultOwed stores on revocation id's record that one of its
// revoke_results was not written (Revocation.ResultOwed, now), so that the
// RevocationWorker of any instance, after this one's restart too, lists the
// record, complete or not, and writes a result from it (see Tick), where
// this instance's memory of it (owedResults, the worker's retry state) is
// lost with the process. Called once the write has failed, before the
// caller's done is closed, with the caller's cancellation detached (a
// result cut by the shutdown is marked too); size is the issuances the
// record names (recordTimeout). It returns the mark as stored (applied
// without its replicas confirming it counts), zero when none is (a record
// gone, or a failure, logged: the result is then owed in this instance's
// memory only), and whether the caller may count on the record (not a
// failure).
func (s *Service) markResultOwed(ctx context.Context, id string, size int) (time.Time, bool) {
	ctx = context.WithoutCancel(ctx)
	now := s.d.Now().UTC()
	_, err := s.updateRevocation(ctx, id, size, func(r *Revocation) error {
		r.ResultOwed = now
		return nil
	})
	switch {
	case errors.Is(err, ErrNotFound):
		return time.Time{}, true
	case err != nil && !unreplicated(err):
		s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "storing that a revocation's revoke_result is owed failed; "+
			"only this instance's worker writes it, while it runs",
			slog.String("revocation_id", id), slog.String("error", err.Error()))
		return time.Time{}, false
	}
	return now, true
}

// clearResultOwed clears revocation id's ResultOwed mark when it is not
// later than upTo, the time a revoke_result the worker wrote for it since
// was durable (or the mark this worker's last result was found to say the
// same as): a mark made after it (a later result that failed) stays. It
// reports whether the record no longer carries a mark up to upTo.
func (s *Service) clearResultOwed(ctx context.Context, id string, size int, upTo time.Time) bool {
	_, err := s.updateRevocation(ctx, id, size, func(r *Revocation) error {
		if r.ResultOwed.IsZero() || r.ResultOwed.After(upTo) {
			return errUnchanged
		}
		r.ResultOwed = time.Time{}
		return nil
	})
	if err != nil && !errors.Is(err, errUnchanged) && !errors.Is(err, ErrNotFound) && !unreplicated(err) {
		s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "storing that a revocation's owed revoke_result is written failed; the worker retries",
			slog.String("revocation_id", id), slog.String("error", err.Error()))
		return false
	}
	return true
}

// decisionOrphaned reports whether revocation r's decision events, which
// its record lists as not known durable, are left to the worker: this
// instance has no entry for them (another instance made them, or this one
// before a restart) and decisionGrace has passed, or its request's writes
// have ended with the events not durable. With them durable and only the record not told, it tells
// the record (clearDecision) and reports false, as while the request is
// still writing them.
func (s *Service) decisionOrphaned(ctx context.Context, r *Revocation) bool {
	id := r.ID
	ld := s.lateDecisionOf(id)
	if ld == nil {
		return s.decisionAbandoned(r.CreatedAt)
	}
	if !closed(ld.done) || !ld.mu.TryLock() { // the request's, or a worker's, append in progress
		return false
	}
	left := len(ld.left)
	ld.mu.Unlock()
	if left > 0 {
		return true
	}
	s.clearDecision(ctx, id, r.Matched, ld)
	return false
}

// closed reports whether ch is closed.
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// unsealed returns fresh copies of evs without the chain fields: a sink
// fills them in on the events it refused too (sealed, then truncated away).
func unsealed(evs []*audit.Event) []*audit.Event {
	out := make([]*audit.Event, 0, len(evs))
	for _, ev := range evs {
		c := *ev
		c.V, c.Seq, c.Time, c.Chain, c.Prev = 0, 0, "", "", ""
		out = append(out, &c)
	}
	return out
}

// writtenAgain returns fresh copies of decision events (unsealed) to be
// written again, after the write that should have made them durable: the
// sink stamps them with the time they are written now, so each revoke and
// block event carries the time the decision was made, the revocation's
// creation, in details.decided_at (RFC 3339, UTC; trace and report take a
// revoke event's revoked_at from it). Revoke sets it in every one it makes;
// this adds it to those that lack it (kept in a record by a version that
// did not set it); copies that carry it already keep theirs.
func writtenAgain(evs []*audit.Event, decidedAt time.Time) []*audit.Event {
	out := unsealed(evs)
	if decidedAt.IsZero() {
		return out
	}
	at := decidedAt.UTC().Format(audit.TimeFormat)
	for _, ev := range out {
		if ev.Type != audit.TypeRevoke && ev.Type != audit.TypeBlock {
			continue
		}
		if _, ok := ev.Details["decided_at"]; ok {
			continue
		}
		d := maps.Clone(ev.Details)
		if d == nil {
			d = map[string]any{}
		}
		d["decided_at"] = at
		ev.Details = d
	}
	return out
}

// startAppend appends evs (appendAll, the caller's cancellation detached)
// on a goroutine of its own, once the write after (when not nil) has ended,
// so that they never overtake an event still pending whatever the sink; a
// failure is logged (msg, revocation id). When after failed (a revoke event
// the request stopped waiting for, whose write then failed: the revocation
// went ahead all the same) its events not written are appended again
// first, and evs only once they are durable: a revoke_result never lands
// without its revoke event before it. The caller waits for it at most
// AuditTimeout (awaitAudit) or not at all: a disk whose writes hang holds
// the goroutine, not the admin's request. owe: should evs (a request's
// revoke_result) not be written, the revocation is noted in owedResults and
// its record marked (markResultOwed; size: the issuances it names), both
// before done is closed, for the worker (of any instance, after a restart
// too) to write a result in its place.
func (s *Service) startAppend(ctx context.Context, revID, msg string, evs []*audit.Event, after *auditWrite, owe bool, size int) *auditWrite {
	w := &auditWrite{auditWait: auditWait{done: make(chan struct{})}, evs: evs}
	ctx = context.WithoutCancel(ctx)
	go func() {
		defer close(w.done)
		// Noted before the record can be told the decision is durable
		// (resolve, deferred below): once it is complete, no pass lists it.
		failed := func() {
			if owe {
				s.owedResults.Store(revID, time.Time{})
				if at, _ := s.markResultOwed(ctx, revID, size); !at.IsZero() {
					s.owedResults.CompareAndSwap(revID, time.Time{}, at) // unless the worker took it meanwhile
				}
			}
		}
		if after != nil {
			<-after.done
			// Whatever is left not durable, once this write has ended
			// (deferred: before done is closed).
			var left []*audit.Event
			if after.late != nil {
				defer func() { after.late.resolve(ctx, s, revID, left) }()
			}
			if after.err != nil {
				again := unsealed(after.evs[after.written:])
				if after.late != nil {
					again = writtenAgain(again, after.late.decidedAt)
				}
				if n, err := s.appendAll(ctx, again); err != nil {
					left = unsealed(again[n:])
					w.err = err
					failed()
					s.d.Logger.LogAttrs(ctx, slog.LevelError, "audit revoke event failed again: the revocation is in force, "+
						"but neither its revoke event nor its revoke_result is in the audit log (GET /v1/admin/revocations/{id} shows it)",
						slog.String("revocation_id", revID), slog.String("error", err.Error()))
					return
				}
			}
		}
		w.written, w.err = s.appendAll(ctx, evs)
		if w.err != nil {
			failed()
			s.d.Logger.LogAttrs(ctx, slog.LevelError, msg,
				slog.String("revocation_id", revID), slog.String("error", w.err.Error()))
		}
	}()
	return w
}

// resultEvents builds the revoke_result event (or its parts) auditResult
// writes.
func (s *Service) resultEvents(rev *Revocation, requestID string, status int, reason, by string, extra map[string]any) []*audit.Event {
	details := map[string]any{"matched": rev.Matched}
	if by != "" {
		details["by"] = by
	}
	if !rev.SweepAt.IsZero() {
		details["sweep_at"] = rev.SweepAt
	}
	lists := map[string][]string{"revoked": rev.Revoked, "pending": rev.Pending}
	for k, v := range extra {
		if ids, ok := v.([]string); ok && k == "swept" {
			lists[k] = ids
			continue
		}
		details[k] = v
	}
	// The one issuance's act, while the result names no other (a block's
	// sweep may have found more).
	var act []audit.Identity
	if len(rev.Act) > 0 && namesOnly(rev.Selector.IssuanceID, rev.Failed, lists) {
		act = auditIdentities(rev.Act)
	}
	var evs []*audit.Event
	for _, part := range eventParts(details, lists, append([]RevokeFailure{}, rev.Failed...)) {
		ev := &audit.Event{
			Type: audit.TypeRevokeResult, RequestID: requestID, RevocationID: rev.ID, Admin: rev.Admin, Act: act,
			Details: part, Outcome: &audit.Outcome{Status: status, Reason: reason},
		}
		if status >= 500 {
			ev.Outcome.Error = "temporarily_unavailable"
		}
		evs = append(evs, ev)
	}
	return evs
}

// namesOnly reports whether every issuance id of lists and failed is id.
func namesOnly(id string, failed []RevokeFailure, lists map[string][]string) bool {
	for _, ids := range lists {
		for _, x := range ids {
			if x != id {
				return false
			}
		}
	}
	for _, f := range failed {
		if f.IssuanceID != id {
			return false
		}
	}
	return true
}

// resultDigest is a digest of what evs say (type, revocation, request,
// admin, details, outcome; not the chain fields the sink adds), so that
// two results saying the same compare equal. ok is false if they could
// not be encoded (then they compare equal to nothing).
func resultDigest(evs []*audit.Event) (sum [sha256.Size]byte, ok bool) {
	h := sha256.New()
	enc := json.NewEncoder(h)
	for _, ev := range evs {
		err := enc.Encode(struct {
			Type, RevocationID, RequestID, Admin string
			Details                              map[string]any
			Outcome                              *audit.Outcome
		}{ev.Type, ev.RevocationID, ev.RequestID, ev.Admin, ev.Details, ev.Outcome})
		if err != nil {
			return sum, false
		}
	}
	h.Sum(sum[:0])
	return sum, true
}

// appendAll makes evs durable, together when there are several and the
// sink can (BatchAuditSink: all or none), else one by one up to the first
// failure. written is the number of events made durable.
func (s *Service) appendAll(ctx context.Context, evs []*audit.Event) (written int, err error) {
	if b, ok := s.d.Audit.(BatchAuditSink); ok && len(evs) > 1 {
		if err := b.AppendBatch(ctx, evs); err != nil {
			return 0, err
		}
		return len(evs), nil
	}
	for _, ev := range evs {
		if err := s.d.Audit.Append(ctx, ev); err != nil {
			return written, err
		}
		written++
	}
	return written, nil
}

// maxEventListBytes bounds the encoded issuance ids and failures one revoke
// or revoke_result event lists, a quarter of audit.MaxLineBytes: an event
// naming every id of a large revocation (about 31,000 ids fill a line)
// would be refused by the audit log, and the revocation with it.
const maxEventListBytes = audit.MaxLineBytes / 4

// eventParts returns the details of the events that together list ids (by
// detail key) and failed (under "failed"): one map when everything fits in
// maxEventListBytes, else several, each with every key of details and
// every list key (its own share of the ids, possibly empty; "failed" when
// failed is not nil), and "part" (1,
// 2, ...) and "parts" (their number). Ids keep their order across parts.
func eventParts(details map[string]any, ids map[string][]string, failed []RevokeFailure) []map[string]any {
	keys := slices.Sorted(maps.Keys(ids))
	newPart := func() map[string]any {
		p := maps.Clone(details)
		for _, k := range keys {
			p[k] = []string{}
		}
		if failed != nil {
			p["failed"] = []RevokeFailure{}
		}
		return p
	}
	parts := []map[string]any{newPart()}
	size := 0
	add := func(n int) map[string]any {
		if size > 0 && size+n > maxEventListBytes {
			parts, size = append(parts, newPart()), 0
		}
		size += n
		return parts[len(parts)-1]
	}
	for _, k := range keys {
		for _, id := range ids[k] {
			p := add(jsonLen(id) + 1)
			p[k] = append(p[k].([]string), id)
		}
	}
	for _, f := range failed {
		p := add(jsonLen(f.IssuanceID) + jsonLen(f.Error) + len(`{"issuance_id":,"error":},`))
		p["failed"] = append(p["failed"].([]RevokeFailure), f)
	}
	if len(parts) > 1 {
		for i, p := range parts {
			p["part"], p["parts"] = i+1, len(parts)
		}
	}
	return parts
}

// jsonLen bounds the length of s as a JSON string: quotes, and six bytes
// for a byte the encoder may escape (\u00XX).
func jsonLen(s string) int {
	n := len(s) + 2
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= 0x80 {
			n += 5
		}
	}
	return n
}

// notifier is the Store's Notifier, if it has one (see WithNotifier).
func (s *Service) notifier() Notifier {
	n, _ := s.d.Store.(Notifier)
	return n
}

// announce publishes n, best effort, with a short deadline.
func (s *Service) announce(ctx context.Context, n Notice) {
	nf := s.notifier()
	if nf == nil {
		return
	}
	if len(n.Revoked) > noticeMaxIDs {
		n.Revoked = nil
	}
	pctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
	defer cancel()
	if err := nf.Publish(pctx, n); err != nil {
		s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "announcing revocation failed; instances learn it at their next refresh",
			slog.String("revocation_id", n.RevocationID), slog.String("error", err.Error()))
	}
}

func ids(list []*Issuance) []string {
	out := make([]string, 0, len(list))
	for _, is := range list {
		out = append(out, is.ID)
	}
	return out
}

func cloneRevocation(r *Revocation) *Revocation {
	c := *r
	c.Revoked = append([]string{}, r.Revoked...)
	c.Pending = append([]string{}, r.Pending...)
	c.Failed = append([]RevokeFailure{}, r.Failed...)
	c.Blocks = slices.Clone(r.Blocks)
	c.Unblocked = maps.Clone(r.Unblocked)
	c.Decision = slices.Clone(r.Decision)
	return &c
}

// GetRevocation returns a revocation and its progress.
func (s *Service) GetRevocation(ctx context.Context, id string) (*Revocation, error) {
	if !strings.HasPrefix(id, PrefixRevocation) || len(id) > maxSelectorLen || !printable(id) {
		return nil, Errorf(ErrInvalidRequest, "bad_revocation_id", "revocation ids start with "+PrefixRevocation, nil)
	}
	sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
	defer cancel()
	r, err := s.d.Store.GetRevocation(sctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, Errorf(ErrNotFound, "unknown_revocation", "no revocation with this id", err)
	case err != nil:
		return nil, Unavailable("store_unavailable", time.Second, err)
	}
	if r.Revoked == nil {
		r.Revoked = []string{}
	}
	if r.Pending == nil {
		r.Pending = []string{}
	}
	if r.Failed == nil {
		r.Failed = []RevokeFailure{}
	}
	return r, nil
}

// Blocks lists the blocked workloads.
func (s *Service) Blocks(ctx context.Context) ([]Block, error) {
	sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
	defer cancel()
	bs, err := s.d.Store.ListBlocks(sctx)
	if err != nil {
		return nil, Unavailable("store_unavailable", time.Second, err)
	}
	if bs == nil {
		bs = []Block{}
	}
	return bs, nil
}

// Unblock lifts the block of workload. The `unblock` event is written
// before the block is removed; ErrNotFound when the workload is not blocked.
func (s *Service) Unblock(ctx context.Context, admin *Admin, workload, reason, requestID string) error {
	return s.UnblockIf(ctx, admin, workload, "", reason, requestID)
}

// UnblockIf is Unblock of the block revocationID made: when the workload's
// block is another revocation's (blocked again since the caller looked,
// e.g. between an unconfirmed unblock and its retry) nothing is lifted and
// it answers ErrNotFound, reason block_changed. An empty revocationID lifts
// whatever block stands.
func (s *Service) UnblockIf(ctx context.Context, admin *Admin, workload, revocationID, reason, requestID string) error {
	if admin == nil {
		return Errorf(ErrUnauthenticated, "missing_admin", "unblocking needs an authorized admin", nil)
	}
	if workload == "" || len(workload) > maxSelectorLen || !printable(workload) {
		return Errorf(ErrInvalidRequest, "bad_workload", "workload is not a valid name", nil)
	}
	if revocationID != "" && (!strings.HasPrefix(revocationID, PrefixRevocation) || len(revocationID) > maxSelectorLen || !printable(revocationID)) {
		return Errorf(ErrInvalidRequest, "bad_revocation_id", "revocation ids start with "+PrefixRevocation, nil)
	}
	reason = strings.TrimSpace(reason)
	if len(reason) > maxReasonLen || !printable(reason) {
		return Errorf(ErrInvalidRequest, "bad_reason", "reason is not valid", nil)
	}
	sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
	b, err := s.d.Store.GetBlock(sctx, workload)
	cancel()
	switch {
	case errors.Is(err, ErrNotFound):
		return Errorf(ErrNotFound, "not_blocked", notBlocked, err)
	case err != nil:
		return Unavailable("store_unavailable", time.Second, err)
	case revocationID != "" && b.RevocationID != revocationID:
		return Errorf(ErrNotFound, "block_changed", "the workload is not blocked by "+revocationID+
			" any more but by "+cmp.Or(b.RevocationID, "a block without revocation")+": nothing was unblocked", nil)
	}
	noted, at, err := s.noteUnblock(ctx, workload)
	if err != nil {
		s.unnoteUnblock(ctx, workload, noted, at)
		return Unavailable("store_unavailable", time.Second, err)
	}
	ev := &audit.Event{
		Type: audit.TypeUnblock, RequestID: requestID, Workload: workload, RevocationID: b.RevocationID,
		Admin: admin.String(), Identity: auditIdentity(admin.Identity), Reason: reason,
		Details: map[string]any{"blocked_at": b.CreatedAt, "blocked_by": b.Admin, "block_reason": b.Reason},
		Outcome: &audit.Outcome{Status: 200},
	}
	// Lifting a block gives access back: not without its event, waited
	// for at most AuditTimeout (Audit). An event still pending may land
	// later, saying status 200: a second unblock event (503
	// audit_unavailable) queued behind it, nobody waiting for it, says the
	// block was not lifted, as after a failed delete.
	if err := s.Audit(ctx, ev); err != nil {
		s.unnoteUnblock(ctx, workload, noted, at) // the block stands
		e := Unavailable("audit_unavailable", time.Second, err)
		if errors.Is(err, ErrAuditPending) {
			log := s.d.Logger
			s.AuditDeferred(ctx, &audit.Event{Type: audit.TypeUnblock, RequestID: requestID, Workload: workload,
				RevocationID: b.RevocationID, Admin: admin.String(),
				Outcome: &audit.Outcome{Status: StatusOf(e), Error: CodeOf(e), Reason: e.Reason}}, func(aerr error) {
				if aerr != nil {
					log.LogAttrs(context.Background(), slog.LevelError, "audit unblock failure failed",
						slog.String("request_id", requestID), slog.String("error", aerr.Error()))
				}
			})
		}
		e.Safe = "the audit log is not taking writes: the workload was not unblocked; retry"
		return e
	}
	// Deleted only while it is still the block read above: a revocation
	// that blocked the workload again meanwhile keeps its block.
	sctx, cancel = context.WithTimeout(context.WithoutCancel(ctx), s.d.StoreTimeout)
	err = s.d.Store.DeleteBlock(sctx, workload, b.RevocationID)
	cancel()
	if errors.Is(err, ErrBlockChanged) {
		s.unnoteUnblock(ctx, workload, noted, at) // another revocation's block stands
		return s.unblockOvertaken(ctx, admin, workload, b.RevocationID, requestID)
	}
	if err != nil && !errors.Is(err, ErrNotFound) {
		// Applied but not confirmed by the replicas: in force unless a
		// failover loses it. Said so, not "failed", and announced.
		unconfirmed := unreplicated(err)
		reason := "store_unavailable"
		if unconfirmed {
			reason = ReasonStoreUnreplicated
		}
		fail := &audit.Event{Type: audit.TypeUnblock, RequestID: requestID, Workload: workload, Admin: admin.String(),
			Outcome: &audit.Outcome{Status: 503, Error: "temporarily_unavailable", Reason: reason}}
		if unconfirmed {
			fail.Details = map[string]any{"unconfirmed": true}
		}
		if aerr := s.Audit(ctx, fail); aerr != nil { // at most AuditTimeout
			s.d.Logger.LogAttrs(ctx, slog.LevelError, "audit unblock failure failed", slog.String("error", aerr.Error()))
		}
		e := Unavailable(reason, time.Second, err)
		if unconfirmed {
			s.announce(context.WithoutCancel(ctx), Notice{RevocationID: b.RevocationID, Unblocked: []string{workload}})
			e.Safe = "the unblock is stored but not confirmed by the store's replicas; retry to be sure: " +
				"404 not_found (not blocked) then means it holds"
		} else {
			e.Safe = "a backend is temporarily unavailable and the unblock may not have been stored; retry: " +
				"404 not_found (not blocked) then means it was"
		}
		return e
	}
	s.announce(context.WithoutCancel(ctx), Notice{RevocationID: b.RevocationID, Unblocked: []string{workload}})
	return nil
}

// unblockOvertaken answers an unblock whose block was replaced by another
// revocation's between its read and its delete: nothing was lifted. Its
// unblock event (status 200) is already written, so a second one says it
// did not happen (404 block_changed), as a failed delete's 503 does.
func (s *Service) unblockOvertaken(ctx context.Context, admin *Admin, workload, revocationID, requestID string) error {
	fail := &audit.Event{Type: audit.TypeUnblock, RequestID: requestID, Workload: workload, RevocationID: revocationID,
		Admin: admin.String(), Outcome: &audit.Outcome{Status: 404, Error: "not_found", Reason: "block_changed"}}
	standing := "another revocation"
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.d.StoreTimeout)
	if cur, err := s.records().GetBlock(sctx, workload); err == nil {
		standing = cmp.Or(cur.RevocationID, "a block without revocation")
		fail.Details = map[string]any{"standing_revocation_id": cur.RevocationID}
	}
	cancel()
	if aerr := s.Audit(ctx, fail); aerr != nil { // at most AuditTimeout
		s.d.Logger.LogAttrs(ctx, slog.LevelError, "audit unblock failure failed", slog.String("error", aerr.Error()))
	}
	return Errorf(ErrNotFound, "block_changed", "the workload was blocked again by "+standing+
		" while it was being unblocked: nothing was unblocked", nil)
}

// notBlocked is Unblock's answer for a workload with no block: the same
// for a retry whose first try went through (its answer lost, or a 503), so
// a retry is safe and its 404 says it.
const notBlocked = "the workload is not blocked: nothing to unblock (an earlier unblock of it that answered 503 or was not answered went through)"

// noteUnblock records the unblock time on every revocation that blocked
// workload and whose sweep is still due, so no sweep takes the credentials
// the workload gets once unblocked. Every one, not only the revocation the
// block record names: a later blocking revocation of the same workload
// overwrites the block record, and the earlier one's sweep still selects
// the workload's credentials. A revocation that already records an unblock
// keeps the first one: what the workload got between that unblock and a
// re-block is not that revocation's. Written before the block is deleted:
// while the block stands the sweep ignores it. It returns the revocations
// it wrote (or tried to write) the time at on, also when it fails part
// way, for unnoteUnblock.
func (s *Service) noteUnblock(ctx context.Context, workload string) (noted []*Revocation, at time.Time, err error) {
	sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
	revs, err := s.records().ListRevocations(sctx, RevocationFilter{Pending: true})
	cancel()
	at = s.d.Now().UTC()
	if err != nil {
		return nil, at, err
	}
	for _, r := range revs {
		if r.SweepAt.IsZero() || !slices.Contains(r.Blocks, workload) {
			continue
		}
		_, err := s.updateRevocation(ctx, r.ID, r.Matched, func(rev *Revocation) error {
			if rev.SweepAt.IsZero() || !slices.Contains(rev.Blocks, workload) {
				return errUnchanged // swept meanwhile
			}
			if _, ok := rev.Unblocked[workload]; ok {
				return errUnchanged
			}
			if rev.Unblocked == nil {
				rev.Unblocked = map[string]time.Time{}
			}
			rev.Unblocked[workload] = at
			return nil
		})
		if errors.Is(err, ErrNotFound) || errors.Is(err, errUnchanged) {
			continue
		}
		// Also when it failed: the write may have been applied (an
		// unconfirmed one, a lost reply).
		noted = append(noted, r)
		if err != nil {
			return noted, at, fmt.Errorf("revocation %s: %w", r.ID, err)
		}
	}
	return noted, at, nil
}

// unnoteUnblock takes back the time noteUnblock recorded on noted when the
// unblock then lifted nothing (its audit write failed, or another
// revocation's block replaced the one it read): the block still stands, and
// a later unblock that does lift it would otherwise keep this earlier time
// as the first, so the sweep would leave what the workload got in between
// while blocked (an instance that had not learned the block yet). Only a
// time still equal to at is removed. A failure is logged: the time stays,
// and the sweep reads the standing block (see lateIssuances).
func (s *Service) unnoteUnblock(ctx context.Context, workload string, noted []*Revocation, at time.Time) {
	ctx = context.WithoutCancel(ctx)
	for _, r := range noted {
		_, err := s.updateRevocation(ctx, r.ID, r.Matched, func(rev *Revocation) error {
			if t, ok := rev.Unblocked[workload]; !ok || !t.Equal(at) {
				return errUnchanged
			}
			delete(rev.Unblocked, workload)
			return nil
		})
		if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, errUnchanged) {
			s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "unblock lifted nothing but its time stays recorded on the revocation",
				slog.String("revocation_id", r.ID), slog.String("workload", workload), slog.String("error", err.Error()))
		}
	}
}

// errUnchanged is an update function's answer when there is nothing to
// write.
var errUnchanged = errors.New("nothing to change")

// ListIssuances returns issuance records (never secrets) matching f.
func (s *Service) ListIssuances(ctx context.Context, f IssuanceFilter) ([]*Issuance, error) {
	for _, v := range []string{f.Workload, f.Owner, f.SessionID} {
		if len(v) > maxSelectorLen || !printable(v) {
			return nil, Errorf(ErrInvalidRequest, "bad_filter", "filter values must be short printable strings", nil)
		}
	}
	if f.Limit < 0 {
		return nil, Errorf(ErrInvalidRequest, "bad_limit", "limit must not be negative", nil)
	}
	sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
	defer cancel()
	list, err := s.d.Store.ListIssuances(sctx, f)
	if err != nil {
		return nil, Unavailable("store_unavailable", time.Second, err)
	}
	if list == nil {
		list = []*Issuance{}
	}
	return list, nil
}

// WithNotifier returns st with n as its Notifier: Service.Revoke and
// Unblock announce through the Store's Notifier when it has one, so wiring
// a store that is not one itself (the embedded store with an in-process
// fan-out) goes through this.
func WithNotifier(st Store, n Notifier) Store {
	return notifyingStore{Store: st, Notifier: n}
}

type notifyingStore struct {
	Store
	Notifier
}

func (s notifyingStore) unwrap() Store { return s.Store }

// WorkerOptions configure a RevocationWorker.
type WorkerOptions struct {
	// Interval between passes over the stored revocations (default 2s).
	Interval time.Duration
	// MaxBackoff caps the wait between two retries of one revocation
	// (default 1m); the wait doubles from Interval after each failed try.
	MaxBackoff time.Duration
}

// RevocationWorker finishes revocations whose backend part failed, and
// sweeps them (see the file comment): every Interval it loads the stored
// revocations that are not complete, retries their pending issuances and
// runs the sweeps that are due, with exponential backoff per revocation.
// When nothing is pending any more and the sweep has run it stores
// CompletedAt; it writes a `revoke_result` event when it finished pending
// issuances or the sweep found some, even when its progress write failed
// (it may be applied all the same; see retryOne), but not one identical in
// content to the last it wrote for the revocation, and never before the
// revocation's revoke event nor waiting on the audit log for more than
// AuditTimeout (see auditPass). A result that fails once the record is
// complete, its own or the request's (Service.owedResults), is written
// again by a later pass (see resultOwed), and marked in the record
// (Revocation.ResultOwed) for the worker of any instance, after a restart
// too (see noteResultOwed). Any number
// of instances may run one: revokers are
// idempotent, so two instances retrying the same revocation do no harm
// (each may write its own revoke_result event).
type RevocationWorker struct {
	s       *Service
	o       WorkerOptions
	mu      sync.Mutex
	retry   map[string]*retryState
	pending atomic.Int64
	// results are the result writes (startResult) that have not called
	// the audit sink yet: Run waits for them when it ends.
	results sync.WaitGroup
}

type retryState struct {
	attempts int
	next     time.Time
	// result is the digest of the last revoke_result this worker wrote
	// for the revocation, or started to write and not seen fail
	// (resultDigest; zero: none yet).
	result [sha256.Size]byte
	// last is the write of that result (nil: none yet); the next one is
	// appended after it has ended.
	last *auditWrite
	// swept are ids a sweep found whose revoke_result, naming them under
	// swept, was not written (held while the decision is left to the
	// instance that made it, see decisionGrace, or failed): the next
	// result the worker writes for the revocation names them so.
	swept []string
	// owed: the request's own revoke_result (Revoke's) was not written
	// (Service.owedResults) and no result of this worker has been started
	// since: a result is owed, written by the next pass that writes one,
	// or by resultOwed once the record is complete; not when the last
	// result this worker wrote or started says the same (auditPass).
	owed bool
	// size is the issuances the record names, as last seen (Matched), for
	// resultOwed's read of a record no pass lists (readRevocation).
	size int
	// marked is the ResultOwed mark this worker's (or the request's)
	// failed result stored in the record (zero: none known). A record
	// found without it, or an earlier one, later on was cleared by a
	// worker whose result was durable after it, another instance's: the
	// result is written, and this one owes none (resultOwed).
	marked time.Time
	// covered is a ResultOwed mark of the record that the last result
	// this worker wrote was found to say the same as (auditPass): written,
	// it covers that mark (see Tick).
	covered time.Time
	// claim is another instance's ResultOwed mark, past its grace, that
	// this worker took over (noteResultOwed): before writing the result
	// resultOwed replaces it in the record with a mark of its own, only if
	// it is still there, so that of the instances that took it over one
	// writes the result (the others see a fresh mark and wait its grace).
	claim time.Time
}

// NewRevocationWorker returns a worker over s's store, revokers and audit
// sink.
func NewRevocationWorker(s *Service, o WorkerOptions) (*RevocationWorker, error) {
	if s == nil {
		return nil, errors.New("broker: NewRevocationWorker: service is required")
	}
	if o.Interval < 0 || o.MaxBackoff < 0 {
		return nil, errors.New("broker: NewRevocationWorker: interval and max backoff must not be negative")
	}
	if o.Interval == 0 {
		o.Interval = 2 * time.Second
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = time.Minute
	}
	return &RevocationWorker{s: s, o: o, retry: map[string]*retryState{}}, nil
}

// PendingCount is the number of revocations with pending backend work, or
// a sweep past its time, seen by the last pass (the
// keytrail_revocations_pending gauge); not one whose only work left is
// writing its decision events (Revocation.Decision).
func (w *RevocationWorker) PendingCount() int { return int(w.pending.Load()) }

// Run makes a pass every Interval until ctx ends. It then returns once
// none of the revoke_result writes its passes started can still reach the
// audit sink: they end with ctx (see startResult), not written, their
// record marked first (markResultOwed), so that the next start (or any
// instance's worker) writes them; one the sink then refuses is marked
// after Run may have returned (a store closed by then loses the mark, and
// an ERROR says so), as is a request's owed result (Service.owedResults)
// that fails after Run has returned (docs/RELIABILITY.md). One the sink took before is the sink's
// (on a disk whose writes hang, its Close ends it): Run's end is what the
// server waits for before it closes the audit log, and it is not held.
func (w *RevocationWorker) Run(ctx context.Context) error {
	t := time.NewTicker(w.o.Interval)
	defer t.Stop()
	for {
		if err := w.Tick(ctx); err != nil && ctx.Err() == nil {
			w.s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "revocation worker pass failed", slog.String("error", err.Error()))
		}
		select {
		case <-ctx.Done():
			w.results.Wait()
			return nil
		case <-t.C:
		}
	}
}

// Tick makes one pass: it retries every pending revocation whose backoff
// has passed. Its waits for the revoke_results it writes take at most
// AuditTimeout in all (see auditWaitBudget).
func (w *RevocationWorker) Tick(ctx context.Context) error {
	s := w.s
	ctx = context.WithValue(ctx, auditWaitKey{}, &auditWaitBudget{left: s.d.AuditTimeout})
	sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
	revs, err := s.d.Store.ListRevocations(sctx, RevocationFilter{Pending: true})
	cancel()
	if err != nil {
		return fmt.Errorf("list revocations: %w", err)
	}
	now := s.d.Now()
	var due []*Revocation
	seen := map[string]bool{}
	counted := map[string]bool{} // the ones the gauge counts
	w.mu.Lock()
	// Revocations whose request's own result was not written: owed (see
	// retryState.owed), due now (the request has ended).
	s.owedResults.Range(func(k, v any) bool {
		id := k.(string)
		s.owedResults.Delete(id)
		st := w.retry[id]
		if st == nil {
			st = &retryState{next: now}
			w.retry[id] = st
		}
		st.owed = true
		if at, _ := v.(time.Time); !at.IsZero() {
			st.marked = at
		}
		return true
	})
	// Complete records listed for a ResultOwed mark whose result is
	// written: the mark is cleared below (clears, with the time that
	// covers it), and their retry state kept until it is.
	clears := map[string]time.Time{}
	for _, r := range revs {
		if !r.ResultOwed.IsZero() {
			w.noteResultOwed(r, now, clears)
		}
		if !r.CompletedAt.IsZero() {
			continue
		}
		seen[r.ID] = true
		// Work left now: pending issuances, or a sweep whose time has
		// come. A revocation only waiting for its sweep is not due yet,
		// and not counted as pending.
		work := len(r.Pending) > 0 || r.SweepAt.IsZero() || !now.Before(r.SweepAt)
		if !work {
			continue
		}
		// Only its decision events left (Decision, see lateDecision):
		// due, but waiting on the audit log, not on a backend.
		if len(r.Pending) > 0 || !r.SweepAt.IsZero() || len(r.Decision) == 0 {
			counted[r.ID] = true
		}
		st := w.retry[r.ID]
		if st == nil {
			// Leave a fresh revocation to the request that is still
			// working on it for one interval.
			st = &retryState{next: r.CreatedAt.Add(w.o.Interval)}
			w.retry[r.ID] = st
		}
		st.size = r.Matched
		if !now.Before(st.next) {
			due = append(due, r)
		}
	}
	// A revocation no longer listed (complete) whose last result from
	// this worker failed, or is still on its way, or that has sweep finds
	// no written result named (an earlier result that failed after the
	// last one had started), is kept: no later pass would list it, and
	// that result (naming the sweep's finds, or the end of its pending
	// issuances) would never be written (owed).
	var owed []string
	for id, st := range w.retry {
		if _, ok := clears[id]; seen[id] || ok {
			continue
		}
		switch inFlight, failed := st.lastResult(); {
		case inFlight:
		case (failed || len(st.swept) > 0 || st.owed) && !now.Before(st.next):
			owed = append(owed, id)
		case !failed && len(st.swept) == 0 && !st.owed:
			delete(w.retry, id)
		}
	}
	w.mu.Unlock()
	w.pending.Store(int64(len(counted)))

	var errs []error
	for _, r := range due {
		if ctx.Err() != nil {
			break
		}
		done, err := w.retryOne(ctx, r)
		if err != nil {
			errs = append(errs, err)
		}
		w.mu.Lock()
		if done {
			if st := w.retry[r.ID]; st != nil && (st.owes() || !r.ResultOwed.IsZero()) {
				// Complete, its result not written (yet): see owed; or
				// its record's ResultOwed mark still to clear, once a
				// result is written (noteResultOwed).
				st.attempts, st.next = 1, s.d.Now().Add(w.backoff(1))
			} else {
				delete(w.retry, r.ID)
			}
			if counted[r.ID] {
				w.pending.Add(-1)
			}
		} else if st := w.retry[r.ID]; st != nil {
			if err == nil && len(r.Pending) == 0 && !r.SweepAt.IsZero() {
				// Only the sweep is left: due at its time, not after
				// the backoff of the retries that just succeeded.
				st.attempts, st.next = 0, r.SweepAt
			} else {
				st.attempts++
				st.next = s.d.Now().Add(w.backoff(st.attempts))
			}
		}
		w.mu.Unlock()
	}
	for _, id := range owed {
		if ctx.Err() != nil {
			break
		}
		if err := w.resultOwed(ctx, id); err != nil {
			errs = append(errs, err)
		}
	}
	for _, r := range revs {
		upTo, ok := clears[r.ID]
		if !ok || ctx.Err() != nil {
			continue
		}
		if s.clearResultOwed(ctx, r.ID, r.Matched, upTo) {
			w.mu.Lock()
			if st := w.retry[r.ID]; st != nil && !st.owes() {
				delete(w.retry, r.ID)
			}
			w.mu.Unlock()
		}
	}
	return errors.Join(errs...)
}

// noteResultOwed is Tick's part for a listed record r with a ResultOwed
// mark (w.mu held). While this worker owes a result for it (its retry
// state: its own result failed or on its way, or the request's noted in
// owedResults) its passes write it as before. Once the record is complete
// and this worker's last result, written, covers the mark (durable after
// it, or found to say the same as a result owed then), the mark is cleared
// (clears). Otherwise the result is another's: the instance whose write
// failed, which may still be running and write it, gets decisionGrace
// after the mark; past it (that instance gone, or this one restarted) the
// result is owed here, written by the next pass that writes one, or by
// resultOwed once the record is complete: should that instance still be
// running, its result may land too (a duplicate, never none).
func (w *RevocationWorker) noteResultOwed(r *Revocation, now time.Time, clears map[string]time.Time) {
	st := w.retry[r.ID]
	if st != nil && st.owes() {
		return
	}
	if st != nil && !r.CompletedAt.IsZero() {
		// (err and at are set before done is closed: read after it.)
		if st.last != nil && closed(st.last.done) && st.last.err == nil && !st.last.at.Before(r.ResultOwed) {
			clears[r.ID] = st.last.at
			return
		}
		if st.covered.Equal(r.ResultOwed) {
			clears[r.ID] = st.covered
			return
		}
	}
	if !w.s.decisionAbandoned(r.ResultOwed) {
		return
	}
	if st == nil {
		st = &retryState{next: now}
		w.retry[r.ID] = st
	}
	st.owed, st.size, st.claim = true, r.Matched, r.ResultOwed
}

// lastResult reports whether the worker's last revoke_result for a
// revocation (st.last) is still on its way, or ended not written (failed,
// or held: see startResult).
func (st *retryState) lastResult() (inFlight, failed bool) {
	if st.last == nil {
		return false, false
	}
	if !closed(st.last.done) {
		return true, false
	}
	return false, st.last.err != nil
}

// owes reports whether a result for a revocation may be owed: the
// worker's last one still on its way, or failed, or sweep finds left
// unnamed by a failed one (swept: it may have failed after the last one
// started, which did not name them), or the request's own not written
// (owed).
func (st *retryState) owes() bool {
	inFlight, failed := st.lastResult()
	return inFlight || failed || len(st.swept) > 0 || st.owed
}

// resultOwed writes again the result of revocation id that the worker's
// last pass over it failed to write (or an earlier one, naming sweep finds,
// that failed after the last one had started, or the request's own: see
// retryState.owed), the record having been
// complete since (so no pass lists it again): from the record read afresh,
// naming the sweep's finds its failed result named under swept (kept in
// its retry state), by worker otherwise. A record gone (retention) drops it; one
// open again is the passes' again.
func (w *RevocationWorker) resultOwed(ctx context.Context, id string) error {
	s := w.s
	w.mu.Lock()
	size := 0
	if st := w.retry[id]; st != nil {
		size = st.size
	}
	w.mu.Unlock()
	r, err := s.readRevocation(ctx, id, size)
	w.mu.Lock()
	st := w.retry[id]
	switch {
	case st == nil:
		w.mu.Unlock()
		return nil
	case errors.Is(err, ErrNotFound):
		delete(w.retry, id)
		w.mu.Unlock()
		return nil
	case err != nil:
		st.attempts++
		st.next = s.d.Now().Add(w.backoff(st.attempts))
		w.mu.Unlock()
		return fmt.Errorf("read revocation %s for its unwritten result: %w", id, err)
	case r.CompletedAt.IsZero():
		w.mu.Unlock()
		return nil // listed by the next pass
	case !st.marked.IsZero() && r.ResultOwed.Before(st.marked):
		// Its mark cleared since (see marked): another instance wrote
		// the result; writing it here too repeated it, and a failure
		// here marked it again for that instance to repeat, for as long
		// as this log fails.
		delete(w.retry, id)
		w.mu.Unlock()
		return nil
	}
	st.attempts++
	st.next = s.d.Now().Add(w.backoff(st.attempts))
	// Its own result to write again (failed, or sweep finds to name):
	// whatever the last one said. Only the request's owed: not when the
	// worker's last result says the same (auditPass), written since the
	// request's failed or on its way (a result of a pass that finished
	// the issuances, waiting for the revoke event the request's waited
	// for too): it is the result the request owed.
	inFlight, failed := st.lastResult()
	again := inFlight || failed || len(st.swept) > 0
	claim := st.claim
	if again {
		claim = time.Time{} // its own result to write: the mark is its own
	}
	w.mu.Unlock()
	if !claim.IsZero() {
		// Another instance's mark, past its grace: taken over only while
		// it is still there (not written, cleared, or taken over since by
		// another instance, nor marked again by its owner), replaced by
		// this worker's own (see claim).
		at := s.d.Now().UTC()
		cur, err := s.updateRevocation(ctx, id, r.Matched, func(c *Revocation) error {
			if !c.ResultOwed.Equal(claim) {
				return errUnchanged
			}
			c.ResultOwed = at
			return nil
		})
		w.mu.Lock()
		st := w.retry[id]
		switch {
		case st == nil:
			w.mu.Unlock()
			return nil
		case errors.Is(err, errUnchanged) || errors.Is(err, ErrNotFound):
			// Written, or another's again: a later mark is taken over
			// past its own grace (noteResultOwed).
			st.owed, st.claim = false, time.Time{}
			w.mu.Unlock()
			return nil
		case err != nil && !unreplicated(err):
			w.mu.Unlock()
			return fmt.Errorf("take over the unwritten result of revocation %s: %w", id, err)
		}
		st.marked, st.claim = at, time.Time{}
		w.mu.Unlock()
		if cur != nil {
			r = cur
		}
	}
	// hadPending: a result by worker when nothing was swept (auditPass).
	w.auditPass(ctx, r, true, nil, again)
	return nil
}

func (w *RevocationWorker) backoff(attempts int) time.Duration {
	d := w.o.Interval
	for i := 1; i < attempts && d < w.o.MaxBackoff; i++ {
		d *= 2
	}
	return min(d, w.o.MaxBackoff)
}

// retryOne runs r's sweep when it is due, retries the pending issuances of
// r (with those the sweep found) and stores the progress. It reports whether
// r is complete.
func (w *RevocationWorker) retryOne(ctx context.Context, r *Revocation) (bool, error) {
	s := w.s
	hadPending := len(r.Pending) > 0
	var swept []string
	if !r.SweepAt.IsZero() && !s.d.Now().Before(r.SweepAt) {
		late, err := s.lateIssuances(ctx, r)
		if err != nil {
			return false, fmt.Errorf("sweep revocation %s: %w", r.ID, err)
		}
		// Durable first: once the record lists them as pending, the worker
		// of any instance finishes them; until then the stored SweepAt makes
		// the next pass sweep again. Added to the record as stored now, so
		// nothing another writer stored since r was read is lost.
		found := ids(late)
		var written *Revocation // the record as fn's last run left it
		// This write's own id: the read after a failed write
		// (sweepApplied) takes the record for this write only when it
		// carries it, not when another instance's sweep, which found the
		// same issuances, wrote the same lists.
		by := NewID("sweep_")
		cur, err := s.updateRevocation(ctx, r.ID, r.Matched+len(found), func(c *Revocation) error {
			swept = addPending(c, found)
			if !c.SweepAt.IsZero() || len(swept) > 0 {
				if c.SweptBy != "" {
					// Another sweep write is applied already (its pass
					// may not know yet): keep its id, see sweepApplied.
					c.SweptEarlier = append(c.SweptEarlier, c.SweptBy)
					if n := len(c.SweptEarlier) - maxSweptEarlier; n > 0 {
						c.SweptEarlier = slices.Delete(c.SweptEarlier, 0, n)
					}
				}
				c.SweptBy = by
			}
			c.SweepAt = time.Time{}
			written = cloneRevocation(c)
			return nil
		})
		switch {
		case err == nil:
			*r = *cur
		case unreplicated(err) && written != nil:
			// Applied on the primary, not confirmed by the replicas: the
			// record lists them and the sweep is done, so no later pass
			// sweeps them again, and they would be finished (and audited)
			// as plain pending ids, no longer named as the sweep's. Go on
			// from the record as written: this pass ends them and its
			// revoke_result names them under swept. The progress write
			// below, once acknowledged, confirms this one too (the store
			// replicates in order).
			s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "storing revocation sweep not confirmed; going on",
				slog.String("revocation_id", r.ID), slog.String("error", err.Error()))
			*r = *written
		case written != nil:
			// Failed after fn ran: a write that timed out (the store
			// timeout, a deadline) or lost its answer may be applied all
			// the same, and then it is lost as the sweep's just as above.
			// One read tells: go on from the record as read when it shows
			// the sweep done and what it found listed; otherwise return
			// with the sweep left due, as for a write refused.
			if got, ok := s.sweepApplied(ctx, r.ID, r.Matched+len(found), by, swept); ok {
				s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "storing revocation sweep failed but it is applied; going on",
					slog.String("revocation_id", r.ID), slog.String("error", err.Error()))
				*r = *got
				break
			}
			return false, fmt.Errorf("store revocation %s: %w", r.ID, err)
		default:
			return false, fmt.Errorf("store revocation %s: %w", r.ID, err)
		}
		if len(swept) > 0 {
			s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "revocation sweep found credentials minted while it ran",
				slog.String("revocation_id", r.ID), slog.Any("issuance_ids", swept))
		}
	}
	var toRevoke []*Issuance
	var failed []RevokeFailure
	var gone []string
	for _, id := range r.Pending {
		sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
		is, err := s.records().GetIssuance(sctx, id) // its mark as stored
		cancel()
		switch {
		case errors.Is(err, ErrNotFound):
			gone = append(gone, id) // past retention: nothing left to end
			continue
		case err != nil:
			failed = append(failed, RevokeFailure{IssuanceID: id, Error: "the revocation could not be stored yet; retrying"})
			continue
		}
		toRevoke = append(toRevoke, is)
	}
	marked, mfailed, wrote := s.markAll(ctx, toRevoke, r.ID, s.d.Now())
	revoked, bfailed := s.revokeBackends(ctx, marked)
	failed = append(append(failed, mfailed...), bfailed...)
	// As in Revoke: marks found stored stay pending in the first progress
	// write, and only once it is acknowledged, which confirms them too,
	// does a second write settle them as revoked. A write that fails may
	// be applied all the same (store_unreplicated: on the primary, not
	// confirmed by the replicas) and complete the record, after which no
	// pass lists it again: the revoke_result below is then written all
	// the same, from what this pass knows, or the revocation's last one
	// would say pending for good. It lists as revoked only marks an
	// acknowledged write covers: the found ones stay pending unless the
	// first write was acknowledged, and the record keeps them pending
	// for the next pass.
	revoked, failed, found := s.unconfirmedMarks(marked, wrote, revoked, failed)
	done := append(gone, revoked...)
	cur, err := s.storeProgress(ctx, r.ID, r.Matched, done, failed)
	if err == nil && len(found) > 0 {
		*r = *cur
		done, failed = found, nil
		cur, err = s.storeProgress(ctx, r.ID, r.Matched, found, nil)
	}
	if err != nil {
		s.d.Logger.LogAttrs(ctx, slog.LevelWarn, "storing revocation progress failed",
			slog.String("revocation_id", r.ID), slog.String("error", err.Error()))
		// The result is built from the record read afresh where the
		// read works, not from the pass's copy: another writer (another
		// instance's sweep) may have added ids since the copy was read,
		// and a result from the copy said 200, nothing pending, while
		// they were. Settling this pass's outcome on it again is what a
		// write applied already did (settle is idempotent), and what an
		// unapplied one would have done. A failed read keeps the copy.
		if cur, rerr := s.readRevocation(ctx, r.ID, r.Matched); rerr == nil {
			*r = *cur
		}
		settle(r, done, failed, s.d.Now())
		w.auditPass(ctx, r, hadPending, swept, false)
		return false, fmt.Errorf("store revocation %s: %w", r.ID, err)
	}
	*r = *cur
	w.auditPass(ctx, r, hadPending, swept, true)
	if r.CompletedAt.IsZero() {
		return false, nil // pending issuances, or the sweep not due yet
	}
	if hadPending || len(swept) > 0 {
		s.d.Logger.LogAttrs(ctx, slog.LevelInfo, "pending revocation completed", slog.String("revocation_id", r.ID))
	}
	return true, nil
}

// readRevocation reads revocation id as stored, within recordTimeout(size),
// size being the issuances the record names as last known (0: not known,
// the store timeout): the read fetches and decodes the whole record, which
// for 100,000 issuances takes longer than the store timeout under load,
// and a worker read cut short left such a record's owed result unwritten
// and its sweep write taken for unapplied at every pass.
func (s *Service) readRevocation(ctx context.Context, id string, size int) (*Revocation, error) {
	sctx, cancel := context.WithTimeout(ctx, s.recordTimeout(size))
	defer cancel()
	return s.d.Store.GetRevocation(sctx, id)
}

// sweepApplied reads revocation id after its sweep write failed and
// reports whether the record shows that write applied: the sweep done
// (SweepAt clear) by this write (SweptBy is by: a record another
// instance's sweep wrote may list the same finds, and taking it for this
// write named them under swept twice; or by is among SweptEarlier: a
// later sweep write, which found more, replaced it, and taking this write
// for unapplied left its finds named under swept by no revoke_result,
// the later sweep's naming only what it added) and every id it added
// (swept) listed, pending or revoked. It returns the record as read; a
// failed read is not applied.
func (s *Service) sweepApplied(ctx context.Context, id string, size int, by string, swept []string) (*Revocation, bool) {
	got, err := s.readRevocation(ctx, id, size)
	if err != nil || !got.SweepAt.IsZero() || (got.SweptBy != by && !slices.Contains(got.SweptEarlier, by)) {
		return nil, false
	}
	listed := make(map[string]bool, len(got.Pending)+len(got.Revoked))
	for _, l := range [][]string{got.Pending, got.Revoked} {
		for _, x := range l {
			listed[x] = true
		}
	}
	for _, x := range swept {
		if !listed[x] {
			return nil, false
		}
	}
	return got, true
}

// auditPass writes the revoke_result of one worker pass over r, as r now
// stands: by sweep when the sweep found issuances (swept), by worker when
// the pass finished every issuance that was pending; none otherwise.
//
// After a failed progress write (stored false), not one identical in
// content to the last one this worker wrote for r: a pass whose progress
// write the store refused (Redis out of memory, or read-only, still
// serving reads) leaves the record as it was, and every pass after it does
// the same work and would write the same result again, once per backoff
// for as long as the store refuses. The log holds it already; a result
// that differs (anything settled, failed or found in between) is written.
// A pass whose write was acknowledged (stored) writes its result in any
// case: it says what the record now is, and another writer (Revoke's
// request, another instance) may have written a different result for r
// since this worker's last one, which must not stay the last word. The
// digest is kept with r's retry state, which lasts as long as r is
// incomplete.
//
// The pass waits for its result at most AuditTimeout, and not past ctx's
// end: a disk whose writes hang must not stop the worker's passes (every
// revocation's backend retries) nor hold Run's shutdown. A result still on
// its way then counts as written (it may land, and the next pass making
// the same one writes no duplicate) until its write fails: then the next
// pass writes it. The results of one revocation land in the order the
// passes made them, each after the revocation's revoke events (see
// startResult, lateDecision).
func (w *RevocationWorker) auditPass(ctx context.Context, r *Revocation, hadPending bool, swept []string, stored bool) {
	s := w.s
	status := 200
	if len(r.Pending) > 0 {
		status = 202
	}
	// Found by an earlier pass whose result was not written: still the
	// sweep's, named under swept by the next result.
	w.mu.Lock()
	if st := w.retry[r.ID]; st != nil {
		swept = addIDs(slices.Clone(st.swept), swept)
	}
	w.mu.Unlock()
	var evs []*audit.Event
	decisionOnly := false // written only because of the held decision
	switch {
	case len(swept) > 0:
		// The ids the sweep added, named in the log whatever their state.
		evs = s.resultEvents(r, "", status, "", "sweep", map[string]any{"swept": swept})
	case hadPending && len(r.Pending) == 0:
		evs = s.resultEvents(r, "", status, "", "worker", nil)
	case len(r.Decision) > 0 && s.decisionOrphaned(ctx, r):
		// Its decision events are not known durable and no request of
		// this instance is writing them: the result written after them
		// may be lost with them (see lateDecision). This one is written
		// after them.
		evs, decisionOnly = s.resultEvents(r, "", status, "", "worker", nil), true
	default:
		return
	}
	sum, ok := resultDigest(evs)
	if !ok {
		sum = [sha256.Size]byte{} // equal to nothing written
	}
	w.mu.Lock()
	st := w.retry[r.ID]
	if !stored && ok && st != nil && st.result == sum {
		// The same as the last result this worker wrote or started (one
		// that fails is written again: its digest is forgotten), so also
		// what a result owed for the request would say (retryState.owed),
		// or the record's ResultOwed mark as read (covered, once written).
		st.owed = false
		if !r.ResultOwed.IsZero() {
			st.covered = r.ResultOwed
		}
		w.mu.Unlock()
		return
	}
	if decisionOnly && st != nil && st.last != nil && !closed(st.last.done) {
		// Written for the decision alone, and the last result (with the
		// decision before it) is still on its way: one at a time while
		// the log hangs, pending issuances or not.
		w.mu.Unlock()
		return
	}
	var prev *auditWrite
	if st != nil {
		prev = st.last
	}
	rw := w.startResult(ctx, r.ID, r.Matched, evs, slices.Clone(r.Decision), swept, prev)
	if st != nil {
		st.size = r.Matched
		st.result, st.last, st.swept, st.owed, st.claim = sum, rw, nil, false, time.Time{}
	}
	w.mu.Unlock()

	// At most AuditTimeout, and not past shutdown: a disk whose writes
	// hang holds the write's goroutine, not the worker's passes. And at
	// most AuditTimeout for all the results of one Tick: on a log that
	// hangs, the first one waited for spends it, and the others are not
	// waited for (each a goroutine of its own, one at a time per
	// revocation: the next pass writes nothing while it is on its way).
	wait := s.d.AuditTimeout
	b, _ := ctx.Value(auditWaitKey{}).(*auditWaitBudget)
	if b != nil {
		wait = min(wait, b.left)
	}
	start := time.Now()
	t := time.NewTimer(max(wait, 0))
	defer t.Stop()
	select {
	case <-rw.done:
	case <-ctx.Done():
	case <-t.C:
		if wait > 0 {
			s.d.Logger.LogAttrs(ctx, slog.LevelError, "audit revoke_result not durable in time; it may still land",
				slog.String("revocation_id", r.ID), slog.String("by", "worker"))
		}
	}
	if b != nil {
		b.left -= time.Since(start)
	}
}

// auditWaitBudget is what is left of a Tick's time for waiting on its
// revoke_results (AuditTimeout at its start): without it, the first pass
// on a log that hangs took AuditTimeout per revocation with a result to
// write (1,000 revocations held the worker for hours, and Run's shutdown
// as long). Only the Tick's goroutine uses it.
type auditWaitBudget struct{ left time.Duration }

type auditWaitKey struct{}

// startResult appends evs, a worker pass's revoke_result of revocation id,
// on a goroutine of its own, once prev (the worker's previous result write
// for id, when not nil) has ended, so that results land in the order they
// were made, and once the revocation's revoke events are durable
// (decisionDurable; decision is the record's Decision as the pass read
// it): a result is never written before or without them.
// When it fails (or is not written) its digest is forgotten, if it is
// still the last result the worker started for id, so that the next pass
// writes it again, and the ids it named under swept (swept) are kept for
// the next result, which a later pass, with no sweep of its own, would
// otherwise write by worker; then it is logged, and done closed.
// It ends with ctx (the worker's Run's: the service shutting down): a
// result not handed to the audit sink by then is not written, as if it
// had failed. Run waits until it has ended or called the sink with ctx
// (which refuses it once ctx has ended, as the audit file does).
func (w *RevocationWorker) startResult(ctx context.Context, id string, size int, evs, decision []*audit.Event, swept []string, prev *auditWrite) *auditWrite {
	s := w.s
	rw := &auditWrite{auditWait: auditWait{done: make(chan struct{})}, evs: evs}
	w.results.Add(1)
	go func() {
		var handed sync.Once
		hand := func() { handed.Do(w.results.Done) }
		defer hand()
		defer close(rw.done)
		if prev != nil {
			select {
			case <-prev.done:
			case <-ctx.Done():
			}
		}
		msg, level := "audit revoke_result failed", slog.LevelError
		var marked time.Time // the record's ResultOwed mark this failure stored
		err := ctx.Err()
		if err != nil {
			// Not written: the record is marked before Run may return
			// (the store still open), so the next start writes it.
			rw.err = err
			msg, level = "audit revoke_result not written: the revocation worker stopped; "+
				"the record marks it owed, and the next start (or another instance) writes it", slog.LevelWarn
			var ok bool
			if marked, ok = s.markResultOwed(ctx, id, size); !ok {
				msg, level = "audit revoke_result not written: the revocation worker stopped, and marking it owed in the record failed", slog.LevelError
			}
		}
		hand() // from here on, every wait ends with ctx, and the sink refuses what comes after it
		if err != nil {
			// Stopped: marked above.
		} else if err := s.decisionDurable(ctx, id, size, decision); errors.Is(err, errDecisionHeld) {
			rw.err = err
			msg, level = "audit revoke_result held until the revocation's revoke event is written; a later pass writes both", slog.LevelInfo
		} else if err != nil && ctx.Err() != nil {
			// Cut by the shutdown (waiting for the request's late write,
			// or writing the event again, or reading the record): nothing
			// failed, and the record keeps the events (the revocation
			// incomplete) for the next start or another instance.
			rw.err = err
			msg, level = "audit revoke_result not written: the revocation worker stopped before the revocation's revoke event was written; "+
				"the record keeps it, and the next start (or another instance) writes both", slog.LevelWarn
		} else if err != nil {
			rw.err = err
			msg = "audit revoke_result not written: the revocation's revoke event is not in the audit log " +
				"(writing it again first, or reading the record for it, failed); the next pass that writes a result for it tries both again"
		} else {
			rw.written, rw.err = s.appendAll(ctx, evs)
			var ok bool
			if rw.err != nil {
				marked, ok = s.markResultOwed(ctx, id, size)
			}
			switch {
			case rw.err == nil:
				rw.at = s.d.Now()
			case !ok:
				// Owed in this worker's memory only (the digest forgotten
				// below): lost should the instance stop first.
				if ctx.Err() != nil {
					msg = "audit revoke_result not written: the revocation worker stopped, and marking it owed in the record failed"
				}
			case ctx.Err() != nil:
				// Cut by the shutdown (the sink refuses a write whose
				// context has ended): nothing failed, and the mark has
				// the next start (or another instance) write it.
				msg, level = "audit revoke_result not written: the revocation worker stopped; "+
					"the record marks it owed, and the next start (or another instance) writes it", slog.LevelWarn
			default:
				msg = "audit revoke_result failed; the record marks it owed, and a later pass writes it"
			}
		}
		if rw.err != nil {
			w.mu.Lock()
			if st := w.retry[id]; st != nil {
				if st.last == rw {
					st.result = [sha256.Size]byte{}
				}
				st.swept = addIDs(st.swept, swept)
				if !marked.IsZero() {
					st.marked, st.claim = marked, time.Time{}
				}
			}
			w.mu.Unlock()
			s.d.Logger.LogAttrs(ctx, level, msg,
				slog.String("revocation_id", id), slog.String("error", rw.err.Error()))
		}
	}()
	return rw
}

// addIDs appends to ids those of more it does not hold yet.
func addIDs(ids, more []string) []string {
	for _, id := range more {
		if !slices.Contains(ids, id) {
			ids = append(ids, id)
		}
	}
	return ids
}

// addPending adds to r, as pending, the ids of found it does not list yet
// (counted in Matched) and returns them. Should r be complete already (a
// sweep found what another instance's completed sweep had not), it is open
// again: the worker lists only incomplete revocations.
func addPending(r *Revocation, found []string) []string {
	known := map[string]bool{}
	for _, l := range [][]string{r.Revoked, r.Pending} {
		for _, id := range l {
			known[id] = true
		}
	}
	var added []string
	for _, id := range found {
		if known[id] {
			continue
		}
		known[id] = true
		added = append(added, id)
		r.Pending = append(r.Pending, id)
		r.Failed = append(r.Failed, RevokeFailure{IssuanceID: id, Error: "not attempted yet; retrying"})
	}
	r.Matched += len(added)
	if len(added) > 0 {
		r.CompletedAt = time.Time{}
	}
	return added
}

// maxSweptEarlier bounds Revocation.SweptEarlier: a pass reads the record
// back at once after its failed sweep write, and each later sweep write
// that replaces an id must have found issuances the earlier ones had not.
const maxSweptEarlier = 8

// Bounds behind SweepDelay.
const (
	// cacheLag bounds how long a RevocationCache with FastReads may still
	// answer "not blocked" after a block is stored: its view answers alone
	// for two refresh intervals after a refresh, which itself may take one,
	// and the interval is at most one second.
	cacheLag = 3 * time.Second
	// revokeClockSkew is the difference between two instances' clocks the
	// sweep allows for (a larger one is a clock_skew event).
	revokeClockSkew = 2 * time.Second
)

// inFlight bounds how long before a revocation's creation (by its clock) an
// exchange that stored its issuance only after the revocation selected may
// have stamped issued_at: its mint and its store write, plus clock skew.
func (s *Service) inFlight() time.Duration {
	return s.d.MintTimeout + s.d.StoreTimeout + revokeClockSkew
}

// SweepDelay is how long after its creation a revocation is swept (see the
// file comment): an exchange that passed its block check before the
// revocation, or on an instance whose cache had not learned the block yet
// (cacheLag), has stored its issuance by then, its mint and its store write
// being bounded by MintTimeout and StoreTimeout; plus revokeClockSkew.
func (s *Service) SweepDelay() time.Duration {
	return s.d.MintTimeout + s.d.StoreTimeout + cacheLag + revokeClockSkew
}

// lateIssuances is the sweep's selection: the still-active issuances r
// should have covered that it does not list yet. Those of r's session,
// workload or owner (as selectIssuances, with the policy in force now)
// issued by r's creation (plus revokeClockSkew: issued_at
// is the minting instance's clock); and, for each workload r blocked, every
// one issued before now (for a session or issuance, from inFlight before
// r's creation on) while the block stands, or, when it was lifted
// meanwhile, before the unblock (r.Unblocked; SweepAt when not recorded):
// credentials issued after an unblock are not r's. It also takes back every
// unexpired issuance stored as revoked by r that r lists neither as revoked
// nor as pending: marked, so no selection of active issuances finds it
// again, but not known to be ended at its backend.
func (s *Service) lateIssuances(ctx context.Context, r *Revocation) ([]*Issuance, error) {
	now := s.d.Now()
	known := map[string]bool{}
	for _, l := range [][]string{r.Revoked, r.Pending} {
		for _, id := range l {
			known[id] = true
		}
	}
	var late []*Issuance
	// add takes the active issuances f selects issued in [from, cutoff]
	// (from zero: no lower bound).
	add := func(f IssuanceFilter, from, cutoff time.Time) error {
		f.UnexpiredAt = now // active ones, and those r marked
		sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
		list, err := s.records().ListIssuances(sctx, f)
		cancel()
		if err != nil {
			return err
		}
		for _, is := range list {
			if known[is.ID] {
				continue
			}
			marked := !is.RevokedAt.IsZero() && is.RevocationID == r.ID
			if !marked && (!is.Active(now) || is.IssuedAt.After(cutoff) || is.IssuedAt.Before(from)) {
				continue
			}
			known[is.ID] = true
			late = append(late, is)
		}
		return nil
	}
	sel := r.Selector
	if sel.IssuanceID == "" {
		f := IssuanceFilter{Workload: sel.Workload, Owner: sel.Owner, SessionID: sel.SessionID}
		if err := add(f, time.Time{}, r.CreatedAt.Add(revokeClockSkew)); err != nil {
			return nil, err
		}
	}
	if sel.Owner != "" {
		// As selectIssuances: the owner's workloads in the policy in force.
		for _, w := range s.ownerWorkloads(sel.Owner) {
			if err := add(IssuanceFilter{Workload: w}, time.Time{}, r.CreatedAt.Add(revokeClockSkew)); err != nil {
				return nil, err
			}
		}
	}
	// A block's part is what was minted while r ran, or by an instance that
	// had not learned the block yet. For a workload or an owner the scope
	// part above already took everything earlier; for a session or an
	// issuance, the workload's other credentials issued before r were there
	// to select and are not r's: only those whose exchange may still have
	// been minting or storing at r's creation (issued_at is stamped before
	// the mint, on the minting instance's clock) or that came later.
	var from time.Time
	if sel.SessionID != "" || sel.IssuanceID != "" {
		from = r.CreatedAt.Add(-s.inFlight())
	}
	for _, wl := range r.Blocks {
		sctx, cancel := context.WithTimeout(ctx, s.d.StoreTimeout)
		b, err := s.records().GetBlock(sctx, wl)
		cancel()
		cutoff := now
		unblocked, wasUnblocked := r.Unblocked[wl]
		switch {
		case errors.Is(err, ErrNotFound):
			cutoff = r.SweepAt
			if wasUnblocked && unblocked.Before(cutoff) {
				cutoff = unblocked // what the workload got once unblocked is its own
			}
		case err != nil:
			return nil, fmt.Errorf("block %s: %w", wl, err)
		case wasUnblocked && b.RevocationID != r.ID && b.CreatedAt.After(unblocked.Add(revokeClockSkew)):
			// Another revocation's block, made after the recorded unblock:
			// the unblock held, and what the workload got once unblocked
			// is its own (the new block's sweep takes what is its).
			cutoff = unblocked
		}
		if err := add(IssuanceFilter{Workload: wl}, from, cutoff); err != nil {
			return nil, err
		}
	}
	slices.SortFunc(late, func(a, b *Issuance) int { return strings.Compare(a.ID, b.ID) })
	return late, nil
}

// CacheOptions configure a RevocationCache.
type CacheOptions struct {
	// Notifier delivers announcements; nil means refresh only.
	Notifier Notifier
	// Interval between refreshes from the Store (default 1s; at most 1s).
	Interval time.Duration
	// Window: revocations created longer ago than this are not cached (their
	// credentials have expired; the Store's marks still stand). Default 24h.
	Window time.Duration
	// FullRefresh is how often every revocation of the Window is read again
	// (dropping older ones), next to the refreshes that read only those
	// written since the last one, by the Store's RevocationVersion (default
	// 1m). Between full reads a refresh costs one version read when nothing
	// changed. A full read is also spaced at least fullSpacing times its own
	// last duration apart, so that however many revocations the Window holds
	// they take about 1% of the time; and Run does them in the background,
	// so a long one never holds up the refreshes.
	FullRefresh time.Duration
	// FullTimeout bounds one full read in Run (default 5m; each Store round
	// trip has its own, shorter, deadline too).
	FullTimeout time.Duration
	// FastReads lets the cache answer the per-request checks alone while its
	// view is fresh (refreshed within two intervals): GetBlock for a
	// workload it does not know as blocked, and FindIssuance by fingerprint
	// for a record it fetched within IssuanceTTL (revocations since then are
	// in its revoked set). That keeps Redis off the hot path; revocations
	// and blocks still reach this instance within one refresh interval, or
	// at once through the Notifier. A stale view (Store unreachable) falls
	// back to Store reads, which then fail closed.
	FastReads bool
	// IssuanceTTL bounds how long a fetched issuance is reused (default 1m).
	IssuanceTTL time.Duration
	// MaxIssuances bounds the issuance cache (default 20,000 records, some
	// tens of MB). Records older than IssuanceTTL are dropped at every
	// refresh, so the cache holds about one IssuanceTTL of the distinct
	// credentials in use; past the bound it is emptied and refilled.
	MaxIssuances int
	Now          func() time.Time
	Logger       *slog.Logger
}

// RevocationCache is one instance's in-memory view of the revocation state:
// revoked issuance ids and blocked workloads, re-read from the Store every
// Interval and updated at once by Notifier messages. Store() returns a
// Store that adds the cache's denials to the underlying Store's answers and,
// with FastReads, answers the hot-path checks alone while the view is fresh
// (see the file comment).
type RevocationCache struct {
	st Store
	o  CacheOptions

	mu        sync.RWMutex
	revoked   map[string]time.Time // issuance id -> when revoked (the revocation's creation; a notice's arrival)
	blocked   map[string]Block
	seq       uint64        // notices applied so far
	log       []noticeEntry // notices applied during the refresh in progress
	refreshed time.Time
	version   uint64 // Store's RevocationVersion the revoked set reflects
	// seen is the highest RevocationVersion read since the Store's
	// version last went back: the bound that check uses, as version may
	// be lowered below what was read (a full read's rewind, keepRecords).
	seen     uint64
	epoch    uint64    // times the Store's version was seen going back
	fullAt   time.Time // end of the last full read (zero: none yet)
	fullCost time.Duration
	// touched collects the ids learned while a full read is in progress
	// (nil otherwise): its result, read before they were, must keep them.
	touched map[string]struct{}
	// learners are told when the view gains a revoked issuance or a
	// blocked workload (OnLearn).
	learners []func()

	issMu  sync.Mutex
	issues map[string]cachedIssuance // fingerprint -> record (FastReads)
	// issGen counts the times issues was dropped because the Store's data
	// went back: a record read before that is not cached after it.
	issGen uint64

	// What the cache writes back when the Store loses its data (see
	// restoreLost). lostBlocks (under mu) are the blocks the cache knew
	// when the Store's version went back that the Store no longer listed:
	// kept in the blocked set, and written back, until a listing of the
	// Store holds them again. listGen (under mu) counts the block listings
	// readChanges started.
	lostBlocks map[string]lostBlock
	listGen    uint64
	// okGen (under mu) is the listGen of the last listing that ended
	// without error (see backedLocked).
	okGen  uint64
	losses atomic.Uint64
	// backDone is the most StoreLosses LossesWrittenBack saw with nothing
	// left to write back.
	backDone atomic.Uint64
	// dropped counts the kept revocation records that did not decode when
	// restoreLost came to write them back (WriteBackDropped).
	dropped atomic.Uint64
	// unlisted (under mu) are the blocks learned from notices that no
	// listing of the Store has held yet, workload -> revocation id: one
	// that a listing started after the notice lacks, while the Store does
	// not hold its revocation either (stored before the notice was sent,
	// and never deleted), was lost with the Store's data, even when its
	// version did not go back (the loss came before a refresh read it).
	unlisted map[string]string
	// heard (under mu) are the blocks of the blocked set learned from
	// notices since the last listing, workload -> who announced it: a
	// notice alone proves no block (anyone who can PUBLISH on the channel
	// can send one), so such a block, when the Store loses data, is kept
	// here (fail closed) but written back only when this instance
	// announced it itself (its Revoke stored it) or the cache read its
	// revocation's record, naming the workload among its blocks, from the
	// Store (see backedLocked).
	heard map[string]heardBlock
	// undo (under mu) are the lost blocks lifted (an unblock notice) while
	// or after restoreLost wrote them back, workload -> revocation id: the
	// unblock's delete may have come before the write landed, so
	// restoreLost deletes them again (DeleteBlock, that revocation's block
	// only), and a listing that still holds one ignores it meanwhile.
	undo map[string]string
	// lifted (under mu) are the blocks lifted by the unblock notices this
	// cache applied, for the Window: a revocation's block, once lifted, is
	// never put again (a new block is a new revocation's) but by the
	// write-back of an instance that missed the notice (restoreLost), or
	// by a failover losing the delete. A listing started after the notice
	// that holds it again ignores it, and restoreLost deletes it again
	// (undo), when this cache saw the Store lose data since the notice or
	// up to liftLossGrace before it; otherwise the Store's block stands
	// and the lift is forgotten: a notice alone proves no unblock (anyone
	// who can PUBLISH on the channel can send one).
	lifted map[string]liftedBlock
	// lossAt (under mu) is when this cache last saw the Store lose data
	// (zero: never).
	lossAt time.Time
	// recMu guards revs, the Window's revocation records as last read from
	// the Store, by id, and lostRevs, the records of revs when the Store's
	// version went back (gen: the listing that saw it), each written back
	// unless the Store has it again. Not mu: a full read merges the
	// Window's records, and the hot path's checks take mu meanwhile. Taken
	// after mu, never before. The records are kept encoded (keptRev).
	recMu    sync.Mutex
	revs     map[string]revEntry
	lostRevs map[string]revEntry
	// span (under recMu) is the step of a loss seen by an announced block
	// alone whose records are being written back (see lossSpan); zero
	// when none.
	span lossSpan
	// heardIDs (under mu) are the ids of the revoked set learned from
	// notices (not this instance's own) that no read of the Store listed
	// since. What notices alone keep for the Window (these, the lost
	// blocks kept here only, lostBlock.here, and the lifted blocks) is
	// bounded by heardCap (maxHeard) each: anyone who can PUBLISH on the
	// channel can send notices without limit. Past it a notice's new
	// entry is refused (not kept; counted in refused, a WARN at most
	// every refusedWarnEvery): nothing known is dropped, a revocation
	// really made is still read from the Store at the next refresh, and
	// a lifted block not remembered stands if it comes back.
	heardIDs map[string]struct{}
	heardCap int
	// blockCap bounds the lost blocks kept here only (maxHeardBlocks): a
	// kept block costs about 580 B of heap against an id's 100 B.
	blockCap  int
	refused   atomic.Uint64
	refusedAt atomic.Int64 // c.o.Now() of the last refusal WARN, UnixNano (0: none)
}

// maxHeard bounds each of what notices alone keep for the Window (see
// heardIDs): the documented scale is 400,000 revocations in the Window,
// whose ids a refresh reads from the Store within a second of their
// notice, and blocks and unblocks are far fewer.
const maxHeard = 400_000

// maxHeardBlocks bounds the lost blocks kept here only (see heardIDs):
// about 580 B of heap each (a block in the blocked set and in lostBlocks),
// so 400,000 of them would take some 230 MB next to a GOMEMLIMIT of
// 460 MiB; 100,000 (~58 MB) is still far above the workloads a deployment
// blocks.
const maxHeardBlocks = 100_000

// refusedWarnEvery: the WARN that notices past maxHeard were refused is
// logged at most this often.
const refusedWarnEvery = time.Minute

// lossSpan is the step, by creation time from (inclusive) to (exclusive;
// zero: no end), of the records queued for the write-back of a loss seen
// by an announced block alone (a failover to a replica that lacked the
// last writes): first those created in the last announcedLossSpan. A
// replica that lagged longer also lacks those created before: while a step
// finds one of its records missing from the Store (or holds none), the
// write-back reaches back one more step, the announcedLossSpan before the
// newest record created before it, and stops once a step finds all of
// its records there (see extendSpan). A forged block notice, which looks
// the same, so costs the reads of one or two steps, not the Window's.
// seen: a record of the step was looked up; missing: one was not there.
type lossSpan struct {
	from, to      time.Time
	seen, missing bool
}

// holds reports whether a record created at at is of the step.
func (s lossSpan) holds(at time.Time) bool {
	return !s.from.IsZero() && !at.Before(s.from) && (s.to.IsZero() || at.Before(s.to))
}

// heardBlock is the revocation id of a block learned from a notice, and
// whether this instance announced it (cachedStore.Publish); prev (when
// hasPrev) is the block of the workload the notice replaced in the
// blocked set that the cache had more than a notice's word for (see
// backedLocked): a loss writes that one back, not the notice's, so that a
// forged notice naming a blocked workload does not leave its real block
// unwritten.
type heardBlock struct {
	rid     string
	own     bool
	prev    Block
	hasPrev bool
}

// revEntry is a revocation record as read by the listing gen (readChanges)
// or by a full read (gen 0 for one that started before any listing); ver
// is the Store's version that read saw before reading the record (every
// change the copy lacks has a number above it, see keepRecords).
type revEntry struct {
	r    keptRev
	gen  uint64
	ver  uint64
	full bool // read by a full read
}

// liftedBlock is the revocation id of a block an unblock notice lifted,
// the listGen current when it was applied, and when.
type liftedBlock struct {
	rid string
	gen uint64
	at  time.Time
}

// liftLossGrace: a lifted block that comes back into the Store is deleted
// again only when the cache saw the Store lose data after its unblock
// notice or at most this long before it (an unblock made after the loss,
// before another instance's write-back, which follows its own sight of
// the loss within a refresh or two).
const liftLossGrace = time.Minute

// announcedLossSpan: a loss seen by an announced block gone with its
// revocation, the Store's version not going back (a failover to a replica
// that lacked the last writes), writes back the records created this long
// before the lost block's notice (or its record, when read and created
// before it) or since first, then a step of this length further back at
// a time while the step before found records missing (see lossSpan).
const announcedLossSpan = time.Minute

// lostBlock is a block the Store lost: restored is the listGen current
// when it was written back (0: not yet); writing, that restoreLost is
// writing it back; loss, the listGen of the listing that found it lost;
// here, that it is kept in the blocked set only, never written back (a
// block learned from a notice alone, see heard). restoreLost runs next to
// readChanges (Run): a write that ends after another loss was seen (loss
// changed) does not count as written back.
type lostBlock struct {
	b        Block
	restored uint64
	writing  bool
	loss     uint64
	here     bool
}

type cachedIssuance struct {
	is *Issuance
	at time.Time
}

type noticeEntry struct {
	seq uint64
	n   Notice
	own bool // announced by this instance (cachedStore.Publish)
}

// NewRevocationCache returns an empty cache over st; call Refresh or Run.
func NewRevocationCache(st Store, o CacheOptions) (*RevocationCache, error) {
	if st == nil {
		return nil, errors.New("broker: NewRevocationCache: store is required")
	}
	if o.Interval < 0 || o.Interval > time.Second {
		return nil, errors.New("broker: NewRevocationCache: interval must be at most 1s")
	}
	if o.Interval == 0 {
		o.Interval = time.Second
	}
	if o.Window <= 0 {
		o.Window = 24 * time.Hour
	}
	if o.FullRefresh <= 0 {
		o.FullRefresh = time.Minute
	}
	if o.FullTimeout <= 0 {
		o.FullTimeout = 5 * time.Minute
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.IssuanceTTL <= 0 {
		o.IssuanceTTL = time.Minute
	}
	if o.MaxIssuances <= 0 {
		o.MaxIssuances = 20_000
	}
	return &RevocationCache{st: st, o: o, revoked: map[string]time.Time{}, blocked: map[string]Block{},
		issues: map[string]cachedIssuance{}, revs: map[string]revEntry{}, lostBlocks: map[string]lostBlock{},
		lostRevs: map[string]revEntry{}, unlisted: map[string]string{}, heard: map[string]heardBlock{},
		undo: map[string]string{}, lifted: map[string]liftedBlock{}, heardIDs: map[string]struct{}{}, heardCap: maxHeard, blockCap: maxHeardBlocks}, nil
}

// NoticesRefused is how many revoked ids, lost blocks and lifted blocks
// learned from notices alone the cache refused to keep, past maxHeard
// (see heardIDs).
func (c *RevocationCache) NoticesRefused() uint64 { return c.refused.Load() }

// warnRefused logs a WARN, at most every refusedWarnEvery, when the cache
// refused entries since refused was before. Called without mu.
func (c *RevocationCache) warnRefused(ctx context.Context, before uint64) {
	n := c.refused.Load()
	if n == before {
		return
	}
	now, last := c.o.Now().UnixNano(), c.refusedAt.Load()
	if last != 0 && now-last < int64(refusedWarnEvery) || !c.refusedAt.CompareAndSwap(last, now) {
		return
	}
	c.o.Logger.LogAttrs(ctx, slog.LevelWarn, "revocation cache: notices past the cap refused: "+
		"the revoked ids, lost blocks or lifted blocks kept on a notice's word alone are at the cap (forged notices on the channel?); "+
		"nothing known is dropped, and revocations really made are still read from the store at the next refresh",
		slog.Uint64("refused_total", n), slog.Int("cap", c.heardCap), slog.Int("blocks_cap", c.blockCap))
}

// Revoked reports whether the cache knows issuance id as revoked.
func (c *RevocationCache) Revoked(id string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, ok := c.revoked[id]
	return ok
}

// Blocked reports whether the cache knows workload as blocked.
func (c *RevocationCache) Blocked(workload string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, ok := c.blocked[workload]
	return ok
}

// state reports whether the cache knows issuance id as revoked and
// workload as blocked, under one read lock.
func (c *RevocationCache) state(id, workload string) (revoked, blocked bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	_, revoked = c.revoked[id]
	_, blocked = c.blocked[workload]
	return revoked, blocked
}

// revocationCacheOf returns the RevocationCache whose Store st is, or
// fronts through other wrappers; nil when there is none.
func revocationCacheOf(st Store) *RevocationCache {
	for st != nil {
		if cs, ok := st.(*cachedStore); ok {
			return cs.c
		}
		w, ok := st.(storeWrapper)
		if !ok {
			return nil
		}
		st = w.unwrap()
	}
	return nil
}

// KnownRevoked reports whether this instance's in-memory revocation state
// (the RevocationCache behind the Service's Store) holds issuance id as
// revoked or workload as blocked: revocations made here, announced by
// other instances or read at the cache's last refresh. It makes no Store
// round trip and allocates nothing, so a hot path can ask it again just
// before acting (the proxy, right before a request goes upstream). Without
// a RevocationCache it knows nothing and reports false, false.
func (s *Service) KnownRevoked(id, workload string) (revoked, blocked bool) {
	if s.cache == nil {
		return false, false
	}
	return s.cache.state(id, workload)
}

// FindIssuanceWithin is Store().FindIssuance(ctx, kind, value) with the
// Store call bounded by timeout. When the RevocationCache behind the Store
// answers from memory (FastReads: a record by fingerprint fetched within
// IssuanceTTL, the view fresh) there is no Store call and no deadline is
// made: a context.WithTimeout (a context, a timer, their cancellation) per
// lookup is a measurable share of a proxied request's CPU. The wrappers
// between the Service's Store and its RevocationCache (this package's,
// the only ones revocationCacheOf looks through) add no answers of their
// own to FindIssuance or GetBlock, so the answer is the Store's.
//
// A record answered from memory is the cache's own, shared with every
// other lookup of the credential (a copy only when the cache knows it
// revoked, to show RevokedAt): the caller must not modify it.
func (s *Service) FindIssuanceWithin(ctx context.Context, kind RefKind, value string, timeout time.Duration) (*Issuance, error) {
	if s.cache != nil && kind == RefFingerprint {
		if is, _, ok := s.cache.findInMemory(value, true); ok {
			return is, nil
		}
	}
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return s.d.Store.FindIssuance(sctx, kind, value)
}

// GetBlockWithin is Store().GetBlock(ctx, workload) with the Store call
// bounded by timeout; as FindIssuanceWithin, an answer the RevocationCache
// gives from memory (its view fresh, FastReads) makes no deadline.
func (s *Service) GetBlockWithin(ctx context.Context, workload string, timeout time.Duration) (*Block, error) {
	if s.cache != nil {
		if b, known := s.cache.blockInMemory(workload); known {
			if b == nil {
				return nil, errNotBlocked
			}
			return b, nil
		}
	}
	sctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return s.d.Store.GetBlock(sctx, workload)
}

// OnLearn registers f, called each time the view gains a revoked issuance
// or a blocked workload it did not hold: by Apply (a revocation made here,
// or announced) or by a refresh that read it from the Store. f runs on the
// goroutine that learned it, after the cache's lock is released (it may
// ask Revoked, Blocked or Service.KnownRevoked), and must not block. It is
// not told what was learned: revocations are rare, and asking the view
// again is how a caller finds out what concerns it. Registrations are for
// the cache's lifetime (one per proxy).
func (c *RevocationCache) OnLearn(f func()) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.learners = append(c.learners, f)
}

// tell calls the learners returned by a locked section that learned
// something (nil when it learned nothing).
func tell(learners []func()) {
	for _, f := range learners {
		f()
	}
}

// OnKnownRevoked registers f with the RevocationCache behind the Service's
// Store (RevocationCache.OnLearn): f is called each time this instance's
// in-memory revocation state gains a revoked issuance or a blocked workload
// (a revocation or block made here, announced, or read at a refresh), and
// asks KnownRevoked about the work it has under way (the proxy cuts its
// in-flight requests so). It reports false, registering nothing, without a
// RevocationCache.
func (s *Service) OnKnownRevoked(f func()) bool {
	if s.cache == nil {
		return false
	}
	s.cache.OnLearn(f)
	return true
}

// Refreshed is when the last successful refresh finished.
func (c *RevocationCache) Refreshed() time.Time {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.refreshed
}

// Apply applies a notice, and tells the learners (OnLearn) when it revoked
// or blocked something new.
func (c *RevocationCache) Apply(n Notice) { c.apply(n, false) }

// apply is Apply; own: n is this instance's own announcement (its Revoke
// stored what n says before announcing it).
func (c *RevocationCache) apply(n Notice, own bool) {
	now := c.o.Now()
	refused := c.refused.Load()
	defer c.warnRefused(context.Background(), refused)
	c.mu.Lock()
	c.seq++
	if c.log != nil {
		c.log = append(c.log, noticeEntry{seq: c.seq, n: n, own: own})
	}
	var learners []func()
	if c.applyLocked(n, now, own) {
		learners = c.learners
	}
	c.mu.Unlock()
	tell(learners)
}

// applyLocked applies n (own: see apply) and reports whether it added a
// revoked issuance or a blocked workload.
func (c *RevocationCache) applyLocked(n Notice, now time.Time, own bool) (learned bool) {
	for _, id := range n.Revoked {
		if !own {
			if _, ok := c.revoked[id]; !ok {
				if len(c.heardIDs) >= c.heardCap {
					c.refused.Add(1) // past the cap (see heardIDs)
					continue
				}
				c.heardIDs[id] = struct{}{}
			}
		}
		learned = c.learnLocked(id, now) || learned
	}
	for _, w := range n.Blocked {
		// A block already known stays when it is n's; another
		// revocation's is replaced by n's (its reason, admin and time
		// were the other's), so that a later notice of the unblock of
		// the block it replaced does not lift it.
		b, ok := c.blocked[w]
		if !ok {
			learned = true
		}
		if !ok || b.RevocationID != n.RevocationID {
			h := heardBlock{rid: n.RevocationID, own: own}
			if ok && c.backedLocked(b) {
				h.prev, h.hasPrev = b, true
			} else if old, was := c.heard[w]; ok && was && old.hasPrev {
				h.prev, h.hasPrev = old.prev, true
			}
			c.blocked[w] = Block{Workload: w, RevocationID: n.RevocationID, CreatedAt: now}
			c.heard[w] = h
			if n.RevocationID != "" {
				c.unlisted[w] = n.RevocationID
			}
		}
	}
	for _, w := range n.Unblocked {
		// Remembered only when it lifts a block this cache knew: a notice
		// naming blocks nobody made (anyone who may PUBLISH on the
		// channel can send one) does not grow the set.
		b, ok := c.blocked[w]
		lb, lost := c.lostBlocks[w]
		knew := n.RevocationID != "" && (ok && b.RevocationID == n.RevocationID || lost && lb.b.RevocationID == n.RevocationID)
		if _, was := c.lifted[w]; knew && !was && len(c.lifted) >= c.heardCap {
			// Past the cap (see heardIDs): not remembered, so a block
			// that comes back stands (fail closed); the notice still
			// lifts what it lifts below.
			c.refused.Add(1)
		} else if knew {
			c.lifted[w] = liftedBlock{rid: n.RevocationID, gen: c.listGen, at: now}
		}
		// Only the block the unblock lifted (see Notice): a re-block
		// learned before this notice stands.
		if b, ok := c.blocked[w]; ok && (n.RevocationID == "" || b.RevocationID == n.RevocationID) {
			delete(c.blocked, w)
			delete(c.heard, w)
		}
		if h, ok := c.heard[w]; ok && h.hasPrev && (n.RevocationID == "" || h.prev.RevocationID == n.RevocationID) {
			// The block a notice displaced is lifted: not written back.
			h.prev, h.hasPrev = Block{}, false
			c.heard[w] = h
		}
		if lb, ok := c.lostBlocks[w]; ok && (n.RevocationID == "" || lb.b.RevocationID == n.RevocationID) {
			delete(c.lostBlocks, w) // not to be written back, nor kept
			if lb.writing || lb.restored != 0 {
				// Its write-back may land after the unblock's delete:
				// deleted again (restoreLost).
				c.undo[w] = lb.b.RevocationID
			}
		}
		if rid, ok := c.unlisted[w]; ok && (n.RevocationID == "" || rid == n.RevocationID) {
			delete(c.unlisted, w)
		}
	}
	return learned
}

// CachedIssuances is how many issuance records the FastReads cache holds.
func (c *RevocationCache) CachedIssuances() int {
	c.issMu.Lock()
	defer c.issMu.Unlock()
	return len(c.issues)
}

// dropIssuances empties the issuance cache: the Store's data went back, so
// records read from it before may say what it no longer holds (or hold an
// issuance active that its revocation, lost with the data, had marked).
func (c *RevocationCache) dropIssuances() {
	c.issMu.Lock()
	defer c.issMu.Unlock()
	c.issGen++
	clear(c.issues)
}

// sweepIssuances drops the records older than IssuanceTTL: they would not
// be used again, and without this the cache grew to MaxIssuances under a
// steady stream of new credentials (seen in the 30-minute soak).
func (c *RevocationCache) sweepIssuances(now time.Time) {
	c.issMu.Lock()
	defer c.issMu.Unlock()
	for k, e := range c.issues {
		if now.Sub(e.at) >= c.o.IssuanceTTL {
			delete(c.issues, k)
		}
	}
}

// learnLocked adds id to the revoked set (keeping when it was first
// learned) and, during a full read, to the ids that read must keep. It
// reports whether id is new to the set.
func (c *RevocationCache) learnLocked(id string, now time.Time) (learned bool) {
	if _, ok := c.revoked[id]; !ok {
		c.revoked[id] = now
		learned = true
	}
	if c.touched != nil {
		c.touched[id] = struct{}{}
	}
	return learned
}

// revokedSince yields every issuance id (revoked or still pending) of the
// revocations created at or after cutoff, with its revocation's creation
// time.
func revokedSince(revs []*Revocation, cutoff time.Time) iter.Seq2[string, time.Time] {
	return func(yield func(string, time.Time) bool) {
		for _, r := range revs {
			if r.CreatedAt.Before(cutoff) {
				continue
			}
			for _, l := range [][]string{r.Revoked, r.Pending} {
				for _, id := range l {
					if !yield(id, r.CreatedAt) {
						return
					}
				}
			}
		}
	}
}

// fullSpacing: a full read starts no sooner than this many times the last
// one's duration after it ended, so full reads take at most about 1% of
// the time (and of the Store's) however large the Window's set grows.
const fullSpacing = 100

// fullDue reports whether a full read should start: none done yet, or
// FullRefresh (and fullSpacing times the last one's duration) since the
// last.
func (c *RevocationCache) fullDue(now time.Time) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.fullAt.IsZero() || now.Sub(c.fullAt) >= max(c.o.FullRefresh, fullSpacing*c.fullCost)
}

// Refresh brings the view up to date: a full read of the Window's
// revocations when one is due (the first refresh, then every FullRefresh
// or more, see fullDue) or when the Store's version went back (its data was
// restored or lost); then the blocks and the revocations written since the
// last refresh, so that between full reads a refresh's cost follows the
// revocation rate per interval, not the Window's total. It keeps notices
// applied meanwhile and drops issuance records older than IssuanceTTL. Run
// refreshes the same way but does the full reads in the background.
func (c *RevocationCache) Refresh(ctx context.Context) error {
	if c.fullDue(c.o.Now()) {
		if err := c.readAll(ctx); err != nil {
			return err
		}
	}
	back, err := c.readChanges(ctx)
	if err != nil {
		return err
	}
	if back {
		if err := c.readAll(ctx); err != nil {
			return err
		}
		if _, err := c.readChanges(ctx); err != nil {
			return err
		}
	}
	return c.restoreLost(ctx)
}

// StoreLosses is how many times the cache saw the Store lose data: its
// revocation change number going back, or a block announced to it missing
// from the Store with its revocation (keytrail_store_data_losses_total).
func (c *RevocationCache) StoreLosses() uint64 { return c.losses.Load() }

// LossesWrittenBack is how many of the losses StoreLosses counts the
// cache has finished writing back after (restoreLost): the count at the
// last call that found nothing left to write, nor being written, of what
// the cache queued (blocks kept here only, see heard, are not written).
// What puts the store's deployment id back after a loss waits for it:
// with the id back, an instance started later takes the store for the one
// it knew, so that id must not come back before the blocks and records.
// A write-back that keeps failing holds it back.
func (c *RevocationCache) LossesWrittenBack() uint64 {
	n := c.losses.Load() // before the check: its queue is complete (see readChanges)
	if !c.writingBack() {
		for {
			d := c.backDone.Load()
			if d >= n || c.backDone.CompareAndSwap(d, n) {
				break
			}
		}
	}
	return c.backDone.Load()
}

// writingBack reports whether a block or a revocation record queued to be
// written back is not yet written (being written included).
func (c *RevocationCache) writingBack() bool {
	c.mu.RLock()
	for _, lb := range c.lostBlocks {
		if lb.restored == 0 && !lb.here {
			c.mu.RUnlock()
			return true
		}
	}
	c.mu.RUnlock()
	c.recMu.Lock()
	defer c.recMu.Unlock()
	return len(c.lostRevs) > 0 || !c.span.from.IsZero()
}

// WriteBackDropped is how many revocation records the cache kept to write
// back after a data loss that it could not decode, and so dropped from
// the write-back, each logged at ERROR
// (keytrail_store_data_loss_records_dropped_total). Not to happen: a
// record that does is lost with the Store's data.
func (c *RevocationCache) WriteBackDropped() uint64 { return c.dropped.Load() }

// restoreLost writes back into the Store what it lost that this cache
// knew (see readChanges): each lost block (PutBlock), then each of the
// Window's revocation records the Store does not hold (PutRevocation; a
// record it holds again, written since or by another instance, is left
// as it is), so that an instance started after the loss learns them, and
// the RevocationWorker finishes what they list as pending. Nothing is
// audited: these are the decisions audited when they were made, put back.
// It stops at the first failure; what is left is written at the next
// refresh. A write the Store made but its replicas did not confirm
// (store_unreplicated, store.min_replicas, as after a failover until the
// old primary rejoins) is in force, as Revoke takes it: the write-back
// goes on (counted as unconfirmed in its WARN). A block lifted meanwhile
// (an unblock notice) is not written. Run calls it in the background, one
// at a time, next to its refreshes and notices (see lostBlock.loss).
func (c *RevocationCache) restoreLost(ctx context.Context) error {
	c.mu.RLock()
	var blocks []Block
	for _, lb := range c.lostBlocks {
		if lb.restored == 0 && !lb.writing && !lb.here {
			blocks = append(blocks, lb.b)
		}
	}
	undo := len(c.undo) > 0
	c.mu.RUnlock()
	// The records to write back, oldest first (no copy of the map: the
	// Window may hold hundreds of thousands).
	type lostRev struct {
		id string
		e  revEntry
		at time.Time
	}
	c.recMu.Lock()
	revs := make([]lostRev, 0, len(c.lostRevs))
	for id, e := range c.lostRevs {
		revs = append(revs, lostRev{id, e, e.r.createdAt()})
	}
	c.recMu.Unlock()
	cutoff := c.o.Now().Add(-c.o.Window)
	if len(blocks) == 0 && len(revs) == 0 && !undo {
		c.extendSpan(cutoff)
		return nil
	}
	if err := c.undoLifted(ctx); err != nil {
		return err
	}
	slices.SortFunc(blocks, func(a, b Block) int { return strings.Compare(a.Workload, b.Workload) })
	written, unconfirmed := 0, 0
	for _, b := range blocks {
		// Not a block lifted since the list was taken; one lifted while
		// it is written is deleted again (applyLocked, undoLifted).
		c.mu.Lock()
		lb, ok := c.lostBlocks[b.Workload]
		if !ok || lb.restored != 0 || lb.writing || lb.b != b || lb.here {
			c.mu.Unlock()
			continue
		}
		lb.writing = true
		loss := lb.loss
		c.lostBlocks[b.Workload] = lb
		c.mu.Unlock()
		err := c.st.PutBlock(ctx, b)
		if unreplicated(err) { // on the primary: in force
			err = nil
			unconfirmed++
		}
		c.mu.Lock()
		if lb, ok := c.lostBlocks[b.Workload]; ok && lb.b == b {
			lb.writing = false
			// Not when the Store was seen losing it again meanwhile:
			// the write may have been before that loss.
			if err == nil && lb.loss == loss {
				lb.restored = c.listGen
			}
			c.lostBlocks[b.Workload] = lb
		}
		c.mu.Unlock()
		if err != nil {
			return fmt.Errorf("writing back the block of %s: %w", b.Workload, err)
		}
		written++
	}
	if err := c.undoLifted(ctx); err != nil {
		return err
	}
	slices.SortFunc(revs, func(a, b lostRev) int { return cmp.Or(a.at.Compare(b.at), strings.Compare(a.id, b.id)) })
	put := 0
	for _, l := range revs {
		r, err := l.e.r.revocation()
		if err != nil { // not to happen: dropped, not retried forever
			c.dropped.Add(1)
			c.o.Logger.LogAttrs(ctx, slog.LevelError, "revocation cache: cannot write back a revocation the store lost",
				slog.String("revocation_id", l.id), slog.String("error", err.Error()))
		} else if !r.CreatedAt.Before(cutoff) {
			_, err := c.st.GetRevocation(ctx, r.ID)
			missing := errors.Is(err, ErrNotFound)
			if missing {
				if err = c.st.PutRevocation(ctx, r); unreplicated(err) {
					err = nil
					unconfirmed++
				}
				if err == nil {
					put++
				}
			}
			if err != nil {
				return fmt.Errorf("writing back revocation %s: %w", r.ID, err)
			}
			c.recMu.Lock()
			if c.span.holds(l.at) {
				c.span.seen = true
				c.span.missing = c.span.missing || missing
			}
			c.recMu.Unlock()
		}
		c.recMu.Lock()
		if c.lostRevs[l.id] == l.e {
			delete(c.lostRevs, l.id)
		}
		c.recMu.Unlock()
	}
	c.extendSpan(cutoff)
	if written > 0 || put > 0 {
		c.o.Logger.LogAttrs(ctx, slog.LevelWarn, "revocation store lost data: wrote back what this instance knew",
			slog.Int("blocks", written), slog.Int("revocations", put), slog.Int("unconfirmed", unconfirmed))
	}
	return nil
}

// restoreDue reports whether restoreLost has anything to write or delete.
func (c *RevocationCache) restoreDue() bool {
	c.mu.RLock()
	due := len(c.undo) > 0
	for _, lb := range c.lostBlocks {
		if due = due || (lb.restored == 0 && !lb.writing && !lb.here); due {
			break
		}
	}
	c.mu.RUnlock()
	if due {
		return true
	}
	c.recMu.Lock()
	defer c.recMu.Unlock()
	return len(c.lostRevs) > 0 || !c.span.from.IsZero()
}

// undoLifted deletes again the blocks lifted while or after restoreLost
// wrote them back (see undo): only that revocation's block, so a block
// put since by another revocation stands.
func (c *RevocationCache) undoLifted(ctx context.Context) error {
	c.mu.RLock()
	undo := maps.Clone(c.undo)
	c.mu.RUnlock()
	for w, rid := range undo {
		err := c.st.DeleteBlock(ctx, w, rid)
		if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrBlockChanged) && !unreplicated(err) {
			return fmt.Errorf("deleting the written-back block of %s, unblocked since: %w", w, err)
		}
		c.mu.Lock()
		if c.undo[w] == rid {
			delete(c.undo, w)
		}
		c.mu.Unlock()
	}
	return nil
}

// readChanges re-reads the blocks and the revocations written since the
// version the revoked set reflects, keeping notices applied meanwhile. Until
// a full read has loaded the set it reads the blocks only, and it does not
// mark the view refreshed. back reports that the Store's version went back:
// a full read is needed.
//
// When the version went back, the blocks the cache knew that the Store no
// longer lists are kept in the blocked set (lostBlocks), and the Window's
// revocation records it read are queued to be written back (lostRevs):
// restoreLost writes both into the Store. So are, when a block announced
// to it is gone with its revocation (a loss the version does not show),
// that block and the records created in the last announcedLossSpan. A lost block stays in the set
// until a listing holds the workload's block again, or, once written back,
// a listing that started after the write does not (it was lifted since).
func (c *RevocationCache) readChanges(ctx context.Context) (back bool, err error) {
	c.sweepIssuances(c.o.Now())
	c.mu.Lock()
	start := c.seq
	c.log = []noticeEntry{}
	prev, high, loaded := c.version, c.seen, !c.fullAt.IsZero()
	c.listGen++
	gen := c.listGen
	var unlisted map[string]string // nil, no allocation, while there are none
	if len(c.unlisted) > 0 {
		unlisted = maps.Clone(c.unlisted)
	}
	c.mu.Unlock()

	blocks, err := c.st.ListBlocks(ctx)
	var version uint64
	if err == nil && loaded {
		// The version is read before the revocations: everything written
		// up to it is in what follows (RevocationVersion's contract).
		version, err = c.st.RevocationVersion(ctx)
	}
	// Against the highest version read, not prev: a full read may have
	// lowered that (see keepRecords), and a loss back to between the two
	// is a loss.
	back = err == nil && loaded && version < max(prev, high)
	if back {
		// The loss may have come between the listing and the version's
		// read: the listing is then the data from before it, holding the
		// blocks lost. Listed again, after the read that saw the loss.
		blocks, err = c.st.ListBlocks(ctx)
	}
	// The blocks announced before this listing started that it lacks,
	// whose revocation the Store does not hold: lost (see unlisted).
	var gone, lifted map[string]string
	if err == nil {
		for _, b := range blocks {
			delete(unlisted, b.Workload)
		}
	}
	if err == nil && len(unlisted) > 0 {
		gone, lifted = map[string]string{}, map[string]string{}
		read := map[string]error{} // one read per revocation (an owner's blocks many workloads)
		for w, rid := range unlisted {
			gerr, ok := read[rid]
			if !ok {
				_, gerr = c.st.GetRevocation(ctx, rid)
				read[rid] = gerr
			}
			switch {
			case errors.Is(gerr, ErrNotFound):
				gone[w] = rid
			case gerr == nil:
				lifted[w] = rid // its revocation stands: unblocked since
			default:
				err = gerr // cannot tell lifted from lost: no refresh
			}
			if err != nil {
				break
			}
		}
	}
	var revs []*Revocation
	if err == nil && loaded && version > prev {
		revs, err = c.st.ListRevocations(ctx, RevocationFilter{Since: c.o.Now().Add(-c.o.Window), ChangedAfter: prev})
	}
	kept := make([]keptRev, len(revs)) // encoded before taking mu
	for i, r := range revs {
		kept[i] = keepRevocation(r)
	}
	now := c.o.Now()
	var learners []func()
	var lost []slog.Attr
	var cameBack, standing []string
	refused := c.refused.Load()
	defer func() {
		tell(learners)
		c.warnRefused(ctx, refused)
		if len(cameBack) > 0 {
			c.o.Logger.LogAttrs(ctx, slog.LevelWarn, "revocation cache: blocks lifted here came back into the store "+
				"(written back after a data loss by an instance that missed the unblock, or the unblock's delete lost in a failover); deleting them again",
				slog.Int("blocks", len(cameBack)), slog.String("workloads", strings.Join(cameBack[:min(len(cameBack), 10)], ",")))
		}
		if len(standing) > 0 {
			c.o.Logger.LogAttrs(ctx, slog.LevelWarn, "revocation cache: the store holds blocks that unblock notices said were lifted, "+
				"and no data loss was seen: they stand (a notice lifts nothing; if an unblock was made, its delete was lost: unblock again)",
				slog.Int("blocks", len(standing)), slog.String("workloads", strings.Join(standing[:min(len(standing), 10)], ",")))
		}
		if lost != nil {
			c.o.Logger.LogAttrs(ctx, slog.LevelError, "revocation store lost data "+
				"(Redis restarted without persistence, flushed, restored or failed over to a replica that lacked writes): "+
				"keeping the blocks and revocations this instance knew and writing them back", lost...)
		}
	}() // after the unlock below
	c.mu.Lock()
	defer c.mu.Unlock()
	logged := c.log
	c.log = nil
	if err != nil {
		return false, err
	}
	learned := false
	cutoff := now.Add(-c.o.Window)
	for id, at := range revokedSince(revs, cutoff) {
		learned = c.learnLocked(id, at) || learned
		delete(c.heardIDs, id) // read from the Store
	}
	for w, l := range c.lifted {
		if l.at.Before(cutoff) {
			delete(c.lifted, w)
		}
	}
	blocked := make(map[string]Block, len(blocks))
	for _, b := range blocks {
		if rid, ok := c.undo[b.Workload]; ok && rid == b.RevocationID {
			continue // written back after its unblock: being deleted
		}
		if l, ok := c.lifted[b.Workload]; ok && l.rid == b.RevocationID && gen > l.gen {
			if back || (!c.lossAt.IsZero() && !c.lossAt.Before(l.at.Add(-liftLossGrace))) {
				// Lifted before this listing started, put back since,
				// around a data loss: a write-back by an instance that
				// missed the unblock.
				c.undo[b.Workload] = l.rid
				cameBack = append(cameBack, b.Workload)
				continue
			}
			// No loss seen: nothing but an unblock's lost delete, or
			// a notice that was no unblock's (forged, replayed), could
			// leave it there. The Store's block stands.
			delete(c.lifted, b.Workload)
			standing = append(standing, b.Workload)
		}
		blocked[b.Workload] = b
		if _, ok := c.blocked[b.Workload]; !ok {
			learned = true
		}
		delete(c.unlisted, b.Workload) // listed: lifting it is an unblock
	}
	for w, rid := range lifted {
		if c.unlisted[w] == rid {
			delete(c.unlisted, w)
		}
	}
	lostNow := false
	// The earliest lost announced block's notice, or its revocation's
	// record as read from the Store when created before it (its Revoke
	// took a while between the record and the notice, or its instance's
	// clock is behind): that record, missing, must be of the first step.
	announced := now
	for w, rid := range gone {
		// Still the block announced (not lifted, nor replaced, since).
		if b, ok := c.blocked[w]; ok && b.RevocationID == rid && c.unlisted[w] == rid {
			if _, listed := blocked[w]; !listed {
				c.loseBlockLocked(b, gen)
				lostNow = true
				if b.CreatedAt.Before(announced) {
					announced = b.CreatedAt
				}
				c.recMu.Lock()
				e, read := c.revs[rid]
				c.recMu.Unlock()
				if at := e.r.createdAt(); read && at.Before(announced) {
					announced = at
				}
			}
		}
		delete(c.unlisted, w)
	}
	// Either way the Store lost writes: the records read from it are
	// queued to be written back, not only the blocks (restoreLost writes
	// those the Store does not hold). The Window's every one when the
	// version went back; seen by an announced block alone, a failover to
	// a replica that lacked the last writes, most often only records
	// created that recently (announcedLossSpan): those, then further back
	// a step at a time while records are missing (lossSpan; a forged block
	// notice, which looks the same, so costs no read of the Window).
	var lostSince time.Time
	switch {
	case back:
		lostSince = cutoff
	case lostNow:
		// From the minute before the lost block was announced, not
		// before now: the failover may have taken longer than a minute,
		// and records made on the new primary since (in the Store) must
		// not make the first step look whole (see lossSpan).
		lostSince = announced.Add(-announcedLossSpan)
		if lostSince.Before(cutoff) {
			lostSince = cutoff
		}
	}
	lostRevs := c.noteRecords(revs, kept, cutoff, gen, version, lostSince, back)
	if back || lostNow {
		for w, b := range c.blocked {
			if _, ok := blocked[w]; !ok && back {
				c.loseBlockLocked(b, gen)
			}
		}
		c.losses.Add(1)
		c.lossAt = now
		seen := "revocation change number went back"
		if !back {
			seen = "announced block and its revocation missing"
		}
		lost = []slog.Attr{slog.String("seen_by", seen), slog.Uint64("version_was", max(prev, high)), slog.Uint64("version", version),
			slog.Int("blocks_lost", len(c.lostBlocks)), slog.Int("revocations_known", lostRevs)}
		here := 0
		for _, lb := range c.lostBlocks {
			if lb.here {
				here++
			}
		}
		if here > 0 {
			lost = append(lost, slog.Int("blocks_kept_here_only", here))
		}
	}
	for w, lb := range c.lostBlocks {
		_, listed := blocked[w]
		switch {
		case lb.writing:
			// Being written back (restoreLost runs next to the
			// refreshes): kept until the write has answered and a later
			// listing holds it, so that an unblock whose delete came
			// before the write landed deletes it again (undo) instead
			// of leaving it standing.
			if !listed {
				blocked[w] = lb.b
			}
		case listed, lb.restored != 0 && lb.restored < gen:
			// The Store holds a block of w again; or it held the one
			// written back before this listing started, and no longer
			// does: lifted since.
			delete(c.lostBlocks, w)
		case lb.here && lb.b.CreatedAt.Before(cutoff):
			// Kept here only (learned from a notice alone) for the
			// Window, as the revoked ids notices name: forged notices
			// do not grow the set for good.
			delete(c.lostBlocks, w)
		default:
			blocked[w] = lb.b
		}
	}
	c.blocked = blocked
	c.okGen = gen
	clear(c.heard) // the logged notices below heard again
	switch {
	case back:
		c.version, c.seen = version, version
		c.epoch++
		c.dropIssuances()
	case loaded:
		c.version = max(c.version, version)
		c.seen = max(c.seen, version)
		c.refreshed = now
	}
	for _, e := range logged {
		if e.seq > start {
			learned = c.applyLocked(e.n, now, e.own) || learned
		}
	}
	if learned {
		learners = c.learners
	}
	return back, nil
}

// loseBlockLocked notes b, of the blocked set, as lost by the listing gen:
// to be written back (again), unless the cache has only a notice's word
// for it (see backedLocked): then kept here only. A write-back of it in
// progress stays marked as such (an unblock applied meanwhile must delete
// it again, see applyLocked), and does not count as written back when it
// ends (see lostBlock).
func (c *RevocationCache) loseBlockLocked(b Block, gen uint64) {
	here := !c.backedLocked(b)
	if h, ok := c.heard[b.Workload]; here && ok && h.rid == b.RevocationID && h.hasPrev {
		// A notice replaced a block the cache had more than its word
		// for (see heardBlock): that one is written back.
		b, here = h.prev, false
	}
	old, ok := c.lostBlocks[b.Workload]
	if here && !ok && len(c.lostBlocks) >= c.blockCap {
		c.refused.Add(1) // past the cap (see heardIDs): a notice's word alone
		return
	}
	c.lostBlocks[b.Workload] = lostBlock{b: b, loss: gen, writing: ok && old.writing && old.b == b, here: here}
}

// backedLocked reports whether the cache has more than a notice's word for
// b, a block of its blocked set: read from the Store (by a listing; or
// lost since, and backed then), announced by this instance (its Revoke
// stored it first), or named among the blocks of its revocation's record
// as the cache read it from the Store. A block notice alone proves
// nothing (anyone who can PUBLISH on the channel can send one, naming a
// revocation that never was): written back, it would block the workload
// on every instance for good. Takes recMu.
func (c *RevocationCache) backedLocked(b Block) bool {
	if lb, ok := c.lostBlocks[b.Workload]; ok && lb.b == b {
		return !lb.here
	}
	h, ok := c.heard[b.Workload]
	if !ok || h.rid != b.RevocationID || h.own {
		return true // not a notice's (see heard), or this instance's own
	}
	// The record read by the last listing that ended (or one since): the
	// block was put just before it, while that listing's block listing
	// had passed. One read before, or by a full read, proves no block
	// now: the workload may have been unblocked since (the record keeps
	// it among its blocks), and a notice naming that revocation again
	// (replayed) must not block it anew. Nor does a record that says the
	// workload was unblocked (Unblocked): a revocation's block, once
	// lifted, is never put again, so a block notice read after the
	// unblock's record is a replayed or late one.
	c.recMu.Lock()
	e, ok := c.revs[b.RevocationID]
	c.recMu.Unlock()
	if !ok || e.full || e.gen < c.okGen {
		return false
	}
	r, err := e.r.revocation()
	if err != nil || !slices.Contains(r.Blocks, b.Workload) {
		return false
	}
	_, unblocked := r.Unblocked[b.Workload]
	return !unblocked
}

// noteRecords keeps revs, read by listing gen after it saw the Store's
// version ver, among the records to write
// back should the Store lose them (those created at or after cutoff), and,
// when lostSince is not zero (the Store lost data), queues every one of
// them created at or after lostSince to be written back; it returns how
// many are queued.
func (c *RevocationCache) noteRecords(revs []*Revocation, kept []keptRev, cutoff time.Time, gen, ver uint64, lostSince time.Time, back bool) int {
	c.recMu.Lock()
	defer c.recMu.Unlock()
	switch {
	case back:
		c.span = lossSpan{} // the Window's every record is queued
	case !lostSince.IsZero() && c.span.from.IsZero():
		// A step under way stays: a later one (another forged notice
		// each second) must not restart it.
		c.span = lossSpan{from: lostSince}
	}
	for i, r := range revs {
		if !r.CreatedAt.Before(cutoff) {
			c.revs[r.ID] = revEntry{r: kept[i], gen: gen, ver: ver}
		}
	}
	if !lostSince.IsZero() {
		for id, e := range c.revs {
			if !e.r.createdAt().Before(lostSince) {
				c.lostRevs[id] = revEntry{r: e.r, gen: gen}
			}
		}
	}
	return len(c.lostRevs)
}

// extendSpan ends the step of the write-back of a loss seen by an
// announced block alone once restoreLost looked up every record of it
// (see lossSpan): when one was missing from the Store, or it held none,
// it queues the next step, the records created in the announcedLossSpan
// before the newest one created before it (not before cutoff); otherwise
// the write-back is over.
func (c *RevocationCache) extendSpan(cutoff time.Time) {
	c.recMu.Lock()
	defer c.recMu.Unlock()
	sp := c.span
	if sp.from.IsZero() {
		return
	}
	for _, e := range c.lostRevs {
		if sp.holds(e.r.createdAt()) {
			return // still queued (or queued again): not looked up yet
		}
	}
	if sp.seen && !sp.missing {
		c.span = lossSpan{}
		return
	}
	var newest time.Time
	for _, e := range c.revs {
		if at := e.r.createdAt(); at.Before(sp.from) && !at.Before(cutoff) && at.After(newest) {
			newest = at
		}
	}
	if newest.IsZero() {
		c.span = lossSpan{} // nothing older known
		return
	}
	next := lossSpan{from: newest.Add(-announcedLossSpan), to: sp.from}
	if next.from.Before(cutoff) {
		next.from = cutoff
	}
	for id, e := range c.revs {
		if next.holds(e.r.createdAt()) {
			c.lostRevs[id] = e
		}
	}
	c.span = next
}

// keepRecords replaces the records to write back with a full read's, recs
// (see readWindow), which started when listGen listings had: kept for the
// Window like the revoked set (those created before cutoff are dropped; a
// record the Store no longer lists was lost: it deletes none), so those
// read before that it did not list stay. A copy the same as a listing's
// keeps that listing's mark (see backedLocked). It takes recs over.
//
// Of two differing copies of a record, the full read's is the newer when
// the other was read before it began (an earlier full read's, or a
// listing's before listGen: listings run one at a time). A listing's since
// (listGen or later) overlaps it: either may have read the record first,
// and nothing in the records only moves forward to tell. Every change a
// copy lacks has a number above the version its read saw first (ver,
// RevocationVersion's contract), so for such a pair keepRecords reports the
// lower of their versions (rewind, ok): the listings then continue from it
// (readAll), and the next one reads the record again, after both reads.
// Meanwhile the full read's copy is kept, marked as a full read's: it
// backs no block.
func (c *RevocationCache) keepRecords(recs map[string]revEntry, cutoff time.Time, listGen uint64) (rewind uint64, ok bool) {
	for id, e := range recs {
		if e.r.createdAt().Before(cutoff) {
			delete(recs, id)
		}
	}
	c.recMu.Lock()
	defer c.recMu.Unlock()
	for id, e := range c.revs {
		f, listed := recs[id]
		switch {
		case !listed:
			if !e.r.createdAt().Before(cutoff) {
				recs[id] = e
			}
		case e.full:
		case f.r == e.r:
			recs[id] = revEntry{r: f.r, gen: e.gen, ver: max(e.ver, f.ver)}
		case e.gen >= listGen:
			if v := min(e.ver, f.ver); !ok || v < rewind {
				rewind, ok = v, true
			}
		}
	}
	c.revs = recs
	return rewind, ok
}

// readWindow reads the revocations created at or after since (the
// Window's, as a full read began): the issuances they revoked, each with
// its earliest revocation's time, and their records, kept encoded
// (keptRev, listing listGen, version ver) for the write-back after a data loss; read
// is how many it read. From a Store that lists a page at a time
// (RevocationPager: Redis) it decodes one page at a time, so that a full
// read never holds the Window's decoded records at once (some 590 B each
// against some 255 B kept: 400,000 revocations took some 240 MB more at
// the read's peak); the ids revoked by revocations created between since
// and the read's end less the Window stay in the set until the next full
// read (the safe side). Otherwise it reads them all (ListRevocations) and
// keeps what was created in the Window as the read ended.
func (c *RevocationCache) readWindow(ctx context.Context, since time.Time, listGen, ver uint64) (revoked map[string]time.Time, recs map[string]revEntry, read int, err error) {
	revoked, recs = map[string]time.Time{}, map[string]revEntry{}
	add := func(revs []*Revocation, cutoff time.Time) {
		for id, at := range revokedSince(revs, cutoff) {
			if t, ok := revoked[id]; !ok || at.Before(t) {
				revoked[id] = at
			}
		}
		for _, r := range revs {
			if !r.CreatedAt.Before(cutoff) {
				recs[r.ID] = revEntry{r: keepRevocation(r), gen: listGen, ver: ver, full: true}
			}
		}
		read += len(revs)
	}
	f := RevocationFilter{Since: since}
	if p, ok := c.st.(RevocationPager); ok {
		err = p.ListRevocationPages(ctx, f, func(page []*Revocation) error {
			add(page, since)
			return nil
		})
		if err != nil {
			return nil, nil, 0, err
		}
		return revoked, recs, read, nil
	}
	revs, err := c.st.ListRevocations(ctx, f)
	if err != nil {
		return nil, nil, 0, err
	}
	add(revs, c.o.Now().Add(-c.o.Window))
	return revoked, recs, read, nil
}

// readAll reads every revocation of the Window and adds them to the revoked
// set, dropping the ids older than the Window. An id the set already holds
// within the Window is kept even if the Store no longer lists it (its data
// went back: restored, flushed, a failover that lost the revocation write):
// the set is the union, so the cache goes on denying what it once learned
// for the Window, and it keeps what was learned while it read (from
// notices or readChanges running meanwhile). The first one also sets the
// version readChanges continues from.
func (c *RevocationCache) readAll(ctx context.Context) error {
	begin := c.o.Now()
	c.mu.Lock()
	if c.touched != nil {
		c.mu.Unlock()
		return errors.New("broker: revocation cache: a full read is already in progress")
	}
	c.touched = map[string]struct{}{}
	epoch, listGen := c.epoch, c.listGen
	c.mu.Unlock()

	version, err := c.st.RevocationVersion(ctx)
	var revoked map[string]time.Time
	var recs map[string]revEntry
	var read int
	if err == nil {
		// Built without the lock: a Window of many revocations takes a
		// while, and the hot path's checks read the set meanwhile.
		revoked, recs, read, err = c.readWindow(ctx, begin.Add(-c.o.Window), listGen, version)
	}
	now := c.o.Now()
	var rewind uint64
	var rewound bool
	if err == nil {
		rewind, rewound = c.keepRecords(recs, now.Add(-c.o.Window), listGen)
	}
	end := c.o.Now()
	var learners []func()
	defer func() { tell(learners) }() // after the unlock below
	c.mu.Lock()
	defer c.mu.Unlock()
	touched := c.touched
	c.touched = nil
	if err != nil {
		return err
	}
	for id := range c.heardIDs {
		if _, ok := revoked[id]; ok {
			delete(c.heardIDs, id) // read from the Store
		}
	}
	for id := range touched {
		if _, ok := revoked[id]; !ok {
			revoked[id] = c.revoked[id]
		}
	}
	cutoff := now.Add(-c.o.Window)
	kept := 0 // ids of the set that the new one holds
	for id, at := range c.revoked {
		if _, ok := revoked[id]; ok {
			kept++
		} else if !at.Before(cutoff) {
			revoked[id] = at
			kept++
		}
	}
	if len(revoked) > kept {
		learners = c.learners
	}
	for id := range c.heardIDs {
		if _, ok := revoked[id]; !ok {
			delete(c.heardIDs, id) // left the Window
		}
	}
	// What was read covers every change up to version; readChanges may
	// continue from there, unless the Store's version went back meanwhile
	// (then it continues from the lower version it saw). When a listing's
	// copy of a record and this read's differ, it continues from before
	// the older of the two reads (see keepRecords): the next listing reads
	// the record again.
	if epoch == c.epoch {
		c.version = max(c.version, version)
		c.seen = max(c.seen, version)
		if rewound {
			c.version = min(c.version, rewind)
		}
	}
	c.revoked, c.fullAt, c.fullCost = revoked, end, end.Sub(begin)
	if c.fullCost >= c.o.Interval {
		c.o.Logger.LogAttrs(ctx, slog.LevelInfo, "revocation cache: full read",
			slog.Int("revocations", read), slog.Int("revoked_issuances", len(revoked)),
			slog.Duration("took", c.fullCost), slog.Duration("next_after", max(c.o.FullRefresh, fullSpacing*c.fullCost)))
	}
	return nil
}

// Run refreshes every Interval and applies the Notifier's messages until ctx
// ends. A failing subscription is retried at every refresh. Full reads (see
// Refresh) run in the background with their own deadline, FullTimeout, so
// however long one takes the refreshes and notices go on meanwhile; so does
// the write-back after a data loss (restoreLost, one at a time).
func (c *RevocationCache) Run(ctx context.Context) error {
	t := time.NewTicker(c.o.Interval)
	defer t.Stop()
	var notices <-chan Notice
	// While the Store is down each of these fails at every refresh.
	subFails := outage{log: c.o.Logger, what: "revocation notices: subscribe", first: "revocation notices: subscribe failed; relying on refresh"}
	refreshFails := outage{log: c.o.Logger, what: "revocation cache refresh", first: "revocation cache refresh failed"}
	fullFails := outage{log: c.o.Logger, what: "revocation cache full read", first: "revocation cache full read failed; retrying at the next refresh"}
	restoreFails := outage{log: c.o.Logger, what: "revocation cache write-back", first: "writing back what the revocation store lost failed; retrying at the next refresh"}
	subscribe := func() {
		if c.o.Notifier == nil || notices != nil {
			return
		}
		ch, err := c.o.Notifier.Subscribe(ctx)
		if err != nil {
			if ctx.Err() == nil {
				subFails.fail(ctx, c.o.Now(), err)
			}
			return
		}
		subFails.ok(ctx, c.o.Now())
		notices = ch
	}
	var fullDone chan error    // non-nil while a full read runs
	var restoreDone chan error // non-nil while a write-back runs
	needFull := false          // the Store's version went back, or a full read failed
	refresh := func() {
		rctx, cancel := context.WithTimeout(ctx, c.o.Interval)
		back, err := c.readChanges(rctx)
		cancel()
		switch {
		case err == nil:
			refreshFails.ok(ctx, c.o.Now())
		case ctx.Err() == nil:
			refreshFails.fail(ctx, c.o.Now(), err)
		}
		needFull = needFull || back
		if err == nil && restoreDone == nil && c.restoreDue() {
			// In the background, one at a time, like a full read: a
			// write-back of many records takes seconds (100,000: some
			// 17 s), and notices go on being applied meanwhile. A
			// failure is retried at the next refresh.
			done := make(chan error, 1)
			restoreDone = done
			go func() {
				rctx, cancel := context.WithTimeout(ctx, c.o.FullTimeout)
				defer cancel()
				done <- c.restoreLost(rctx)
			}()
		}
		if fullDone != nil || !(needFull || c.fullDue(c.o.Now())) {
			return
		}
		needFull = false
		done := make(chan error, 1)
		fullDone = done
		go func() {
			fctx, cancel := context.WithTimeout(ctx, c.o.FullTimeout)
			defer cancel()
			done <- c.readAll(fctx)
		}()
	}
	subscribe()
	refresh()
	for {
		select {
		case <-ctx.Done():
			if fullDone != nil {
				<-fullDone
			}
			if restoreDone != nil {
				<-restoreDone
			}
			return nil
		case err := <-restoreDone:
			restoreDone = nil
			switch {
			case err == nil:
				restoreFails.ok(ctx, c.o.Now())
			case ctx.Err() == nil:
				restoreFails.fail(ctx, c.o.Now(), err)
			}
		case err := <-fullDone:
			fullDone = nil
			if err != nil {
				if ctx.Err() == nil {
					fullFails.fail(ctx, c.o.Now(), err)
				}
				needFull = true
				continue
			}
			fullFails.ok(ctx, c.o.Now())
			// Loaded (the first time, or again): the view is fresh now,
			// not only at the next tick.
			refresh()
		case n, ok := <-notices:
			if !ok {
				notices = nil
				continue
			}
			c.Apply(n)
		case <-t.C:
			subscribe()
			refresh()
		}
	}
}

// outageLogEvery is how often a failure that recurs at every refresh is
// logged again while it lasts.
const outageLogEvery = time.Minute

// outage logs one kind of failure that recurs at every refresh while the
// Store is down (about once a second): the first at WARN, then at most once
// per outageLogEvery with how long it has lasted and how many failures
// there were, and its end at INFO. Used by one goroutine.
type outage struct {
	log   *slog.Logger
	what  string // e.g. "revocation cache refresh"
	first string // the first failure's message

	since, logged time.Time // zero while it works
	failures      int
}

func (o *outage) fail(ctx context.Context, now time.Time, err error) {
	o.failures++
	switch {
	case o.since.IsZero():
		o.since, o.logged = now, now
		o.log.LogAttrs(ctx, slog.LevelWarn, o.first, slog.String("error", err.Error()))
	case now.Sub(o.logged) >= outageLogEvery:
		o.logged = now
		o.log.LogAttrs(ctx, slog.LevelWarn, o.what+" still failing", slog.String("error", err.Error()),
			slog.Duration("failing_for", now.Sub(o.since)), slog.Int("failures", o.failures))
	}
}

func (o *outage) ok(ctx context.Context, now time.Time) {
	if o.since.IsZero() {
		return
	}
	o.log.LogAttrs(ctx, slog.LevelInfo, o.what+" recovered",
		slog.Duration("failing_for", now.Sub(o.since)), slog.Int("failures", o.failures))
	o.since, o.logged, o.failures = time.Time{}, time.Time{}, 0
}

// Store returns a Store that reads through to the underlying one and adds
// the cache's denials: an issuance the cache knows as revoked is returned
// revoked, a workload it knows as blocked has a block. Its Publish applies
// the notice to this cache before announcing it, so the announcing
// instance's own view never lags.
func (c *RevocationCache) Store() Store { return &cachedStore{Store: c.st, c: c} }

type cachedStore struct {
	Store
	c *RevocationCache
}

var _ Notifier = (*cachedStore)(nil)

func (s *cachedStore) unwrap() Store { return s.Store }

func (s *cachedStore) deny(is *Issuance) *Issuance { return s.c.deny(is) }

// deny marks is revoked when the cache knows it as revoked.
func (c *RevocationCache) deny(is *Issuance) *Issuance {
	if is == nil || !is.RevokedAt.IsZero() {
		return is
	}
	c.mu.RLock()
	t, ok := c.revoked[is.ID]
	c.mu.RUnlock()
	if ok {
		is.RevokedAt = t
	}
	return is
}

// denyShared is deny for a record others share: unchanged when the cache
// knows no revocation of it, otherwise a copy with RevokedAt set.
func (c *RevocationCache) denyShared(is *Issuance) *Issuance {
	if !is.RevokedAt.IsZero() {
		return is
	}
	c.mu.RLock()
	t, ok := c.revoked[is.ID]
	c.mu.RUnlock()
	if !ok {
		return is
	}
	cp := *is
	cp.RevokedAt = t
	return &cp
}

func (s *cachedStore) GetIssuance(ctx context.Context, id string) (*Issuance, error) {
	is, err := s.Store.GetIssuance(ctx, id)
	return s.deny(is), err
}

// fresh reports whether the cache's view may answer alone (FastReads).
func (c *RevocationCache) fresh(now time.Time) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.o.FastReads && !c.refreshed.IsZero() && now.Sub(c.refreshed) <= 2*c.o.Interval
}

// findInMemory answers FindIssuance by fingerprint from memory when
// FastReads lets it: a record fetched within IssuanceTTL while the view is
// fresh, with the cache's denials. ok is false when the Store must be
// asked; gen is then the issuance generation read, which the caller
// caching the Store's answer compares. With shared, is is the cached
// record itself unless the cache's denials change it (a copy then), for a
// caller that only reads it (FindIssuanceWithin: no allocation per
// proxied request); otherwise always a copy, the caller's to keep.
func (c *RevocationCache) findInMemory(fp string, shared bool) (is *Issuance, gen uint64, ok bool) {
	if !c.o.FastReads {
		return nil, 0, false
	}
	now := c.o.Now()
	c.issMu.Lock()
	e, hit := c.issues[fp]
	gen = c.issGen
	c.issMu.Unlock()
	if hit && now.Sub(e.at) < c.o.IssuanceTTL && c.fresh(now) {
		if shared {
			return c.denyShared(e.is), gen, true
		}
		cp := *e.is
		return c.deny(&cp), gen, true
	}
	return nil, gen, false
}

func (s *cachedStore) FindIssuance(ctx context.Context, kind RefKind, value string) (*Issuance, error) {
	fast := kind == RefFingerprint && s.c.o.FastReads
	var gen uint64
	if fast {
		is, g, ok := s.c.findInMemory(value, false)
		if ok {
			return is, nil
		}
		gen = g
	}
	is, err := s.Store.FindIssuance(ctx, kind, value)
	if fast && err == nil && is != nil {
		cp := *is
		s.c.issMu.Lock()
		if len(s.c.issues) >= s.c.o.MaxIssuances {
			clear(s.c.issues)
		}
		if s.c.issGen == gen { // not read from data that went back meanwhile
			s.c.issues[value] = cachedIssuance{is: &cp, at: s.c.o.Now()}
		}
		s.c.issMu.Unlock()
	}
	return s.deny(is), err
}

// ListIssuances lists through the Store and adds the cache's denials. An
// active listing drops what the cache knows as revoked, so with a Limit it
// asks the Store again for as many more as it dropped (the Store's order
// is stable, so each answer extends the last) until it has Limit active
// records or the Store has no more.
func (s *cachedStore) ListIssuances(ctx context.Context, f IssuanceFilter) ([]*Issuance, error) {
	ask := f
	for {
		list, err := s.Store.ListIssuances(ctx, ask)
		if err != nil {
			return nil, err
		}
		out := make([]*Issuance, 0, len(list))
		for _, is := range list {
			s.deny(is)
			if !f.ActiveAt.IsZero() && !is.Active(f.ActiveAt) {
				continue
			}
			out = append(out, is)
		}
		dropped := len(list) - len(out)
		if f.Limit == 0 || dropped == 0 || len(list) < ask.Limit || len(out) >= f.Limit {
			if f.Limit > 0 && len(out) > f.Limit {
				out = out[:f.Limit]
			}
			return out, nil
		}
		ask.Limit += max(dropped, f.Limit)
	}
}

// errNotBlocked is the cache's answer for a workload it knows no block of:
// one value, since every exchange and proxied request asks.
var errNotBlocked = fmt.Errorf("workload not blocked: %w", ErrNotFound)

// blockInMemory answers GetBlock from memory while the view is fresh
// (FastReads): known is false when the Store must be asked; b is nil when
// the workload is not blocked.
func (c *RevocationCache) blockInMemory(workload string) (b *Block, known bool) {
	if !c.fresh(c.o.Now()) {
		return nil, false
	}
	c.mu.RLock()
	cb, ok := c.blocked[workload]
	c.mu.RUnlock()
	if ok {
		b := cb // copied here, so that only a block is allocated
		return &b, true
	}
	return nil, true
}

func (s *cachedStore) GetBlock(ctx context.Context, workload string) (*Block, error) {
	if b, known := s.c.blockInMemory(workload); known {
		if b == nil {
			return nil, errNotBlocked
		}
		return b, nil
	}
	b, err := s.Store.GetBlock(ctx, workload)
	if errors.Is(err, ErrNotFound) {
		s.c.mu.RLock()
		cb, ok := s.c.blocked[workload]
		s.c.mu.RUnlock()
		if ok {
			return &cb, nil
		}
	}
	return b, err
}

func (s *cachedStore) DeleteBlock(ctx context.Context, workload, revocationID string) error {
	err := s.Store.DeleteBlock(ctx, workload, revocationID)
	if err == nil || errors.Is(err, ErrNotFound) {
		s.c.Apply(Notice{RevocationID: revocationID, Unblocked: []string{workload}})
	}
	return err
}

// Publish applies n here, then announces it through the cache's Notifier.
func (s *cachedStore) Publish(ctx context.Context, n Notice) error {
	s.c.apply(n, true)
	if s.c.o.Notifier == nil {
		return nil
	}
	return s.c.o.Notifier.Publish(ctx, n)
}

// Subscribe subscribes to the cache's Notifier; without one the channel
// only closes when ctx ends.
func (s *cachedStore) Subscribe(ctx context.Context) (<-chan Notice, error) {
	if s.c.o.Notifier != nil {
		return s.c.o.Notifier.Subscribe(ctx)
	}
	ch := make(chan Notice)
	go func() { <-ctx.Done(); close(ch) }()
	return ch, nil
}
