package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/keytrail/keytrail/broker/audit"
)

// Admin roles (SPEC "Security teams and auditors").
const (
	RoleRevoke = "revoke"
	RoleTrace  = "trace"
	RoleReport = "report"
)

// Admin is an authenticated identity that policy lists under admins.
type Admin struct {
	Name     string      // the policy admin entry
	Identity IdentityRef // who exactly
	Roles    []string
}

// String names the admin for audit events: "<entry>:<sub>".
func (a *Admin) String() string { return a.Name + ":" + a.Identity.Sub }

// AdminRequest describes one admin call for authorization and audit.
type AdminRequest struct {
	Token     string // the caller's identity token (Bearer)
	Role      string // the role the call needs; "" means any admin
	Action    string // e.g. "revoke", "list_blocks", "trace"
	Target    map[string]any
	Source    Source
	RequestID string
	// Refuse, when set, is the answer to an authorized admin: a call to a
	// path or method under /v1/admin/ that no route serves. It is recorded
	// (and returned) as the call's outcome once the caller is known to be
	// an admin; anyone else gets the usual 401/403.
	Refuse error
}

// AuthorizeAdmin authenticates the caller (a token that is a revoked broker
// credential is refused, as checkBrokerToken says) and checks that policy
// grants it the role. Every call, allowed or denied, is recorded as an admin event
// naming the caller and the action, and the target once the caller is
// authenticated; an allowed call whose event cannot be made durable is
// refused (ErrUnavailable). Refusals before the caller authenticated are
// bounded per source (refuseAnonymous), those of an authenticated caller
// that is no admin per identity (suppressCaller: past
// RefusalLimits.PerIdentity the same refusal with no event, counted by a
// summary); an admin's are never limited.
func (s *Service) AuthorizeAdmin(ctx context.Context, req AdminRequest) (*Admin, error) {
	details := map[string]any{"action": req.Action}
	if req.Role != "" {
		details["role"] = req.Role
	}
	ev := &audit.Event{Type: audit.TypeAdmin, RequestID: req.RequestID, Source: auditSource(req.Source), Details: details}
	deny := func(err error) (*Admin, error) {
		err = bearerError(err)
		s.recordDeny(ctx, ev, err)
		return nil, err
	}
	// Refusals before the caller authenticated count against the
	// source's RefusalLimits.
	refuse := func(err error) (*Admin, error) {
		return nil, s.refuseAnonymous(ctx, ev, req.Source, bearerError(err))
	}
	if req.Token == "" {
		return refuse(missingBearer("missing_admin_token", "admin calls need an identity token as a Bearer token"))
	}
	pol, authn := s.policyAndAuthn()
	id, err := authn.Authenticate(ctx, req.Token)
	if err != nil {
		return refuse(err)
	}
	ev.Identity = auditIdentity(id.Ref())
	// The target is the caller's own text (a path segment, query values, a
	// body): recorded only once the caller is authenticated, so that a
	// stranger cannot write into the audit log (as for a deny's grant).
	if len(req.Target) > 0 {
		details["target"] = boundTarget(req.Target)
	}
	if !pol.Trusts(id.IssuerName, id.Iss) {
		return deny(errPolicyReloaded(id))
	}
	entry, ok := pol.MatchAdmin(id.IssuerName, id.Claims, req.Role)
	if !ok {
		// A caller that is no admin is refused whatever follows: its
		// refusals (not_admin, a revoked broker JWT) take from its
		// identity's bucket (RefusalLimits.PerIdentity) before the store
		// is read, and past it are answered not_admin with no event of
		// their own and no store read, counted by its summary. An admin is
		// never limited.
		notAdmin := Errorf(ErrDenied, "not_admin", "this identity is not an admin", nil)
		if answer := s.suppressCaller(ctx, adminCaller(id), refusalTag{action: req.Action}, notAdmin); answer != nil {
			return nil, answer
		}
		if err := s.checkCallerBrokerToken(ctx, req.Token, id); err != nil {
			return deny(err)
		}
		return deny(notAdmin)
	}
	if err := s.checkCallerBrokerToken(ctx, req.Token, id); err != nil {
		// A revoked broker JWT matching an admin entry is no admin's
		// credential any more: its refusals take from its identity's
		// bucket as a non-admin's do, after the store read (an admin's
		// own calls never take from it). A 5xx is recorded as always.
		if errors.Is(err, ErrUnauthenticated) {
			return nil, s.refuseCaller(ctx, ev, adminCaller(id), refusalTag{action: req.Action, reason: refusalReason(err)}, bearerError(err))
		}
		return deny(err)
	}
	a := &Admin{Name: entry.Name, Identity: id.Ref(), Roles: entry.Roles}
	ev.Admin = a.String()
	if req.Role != "" && !entry.HasRole(req.Role) {
		return deny(Errorf(ErrDenied, "missing_role", "this admin lacks the "+req.Role+" role", nil))
	}
	if req.Refuse != nil {
		return deny(req.Refuse)
	}
	ev.Outcome = &audit.Outcome{Status: 200}
	if err := s.Audit(ctx, ev); err != nil { // at most AuditTimeout
		e := Unavailable("audit_unavailable", time.Second, err)
		s.denyBehindPending(ctx, ev, e)
		return nil, e
	}
	return a, nil
}

// adminCaller is the caller whose refused admin calls an identity guard
// counts: id, who is no admin (or whose broker JWT was revoked).
func adminCaller(id *Identity) *limitedCaller {
	return &limitedCaller{typ: audit.TypeAdmin, iss: id.Iss, sub: id.Sub}
}

// boundTarget returns target with every string longer than maxSelectorLen
// (longer than any selector, workload, owner or session id can be)
// replaced by its length and SHA-256: the caller's own text, recorded for
// any authenticated caller, admin or not, must not let one call write tens
// of KiB into the audit log. Other values are kept as they are.
func boundTarget(target map[string]any) map[string]any {
	out := make(map[string]any, len(target))
	for k, v := range target {
		switch t := v.(type) {
		case string:
			out[k] = boundTargetString(t)
		case RevokeSelector:
			out[k] = RevokeSelector{
				IssuanceID: boundTargetString(t.IssuanceID), SessionID: boundTargetString(t.SessionID),
				Workload: boundTargetString(t.Workload), Owner: boundTargetString(t.Owner),
			}
		default:
			out[k] = v
		}
	}
	return out
}

func boundTargetString(s string) string {
	if len(s) <= maxSelectorLen {
		return s
	}
	return fmt.Sprintf("(%d bytes, %s)", len(s), Fingerprint(s))
}
