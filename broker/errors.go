package broker

import (
	"errors"
	"fmt"
	"time"
)

// Error categories. Every error the Service returns wraps exactly one of them;
// the HTTP layer maps the category to a status and an OAuth error code.
var (
	ErrInvalidRequest   = errors.New("invalid request")         // 400 invalid_request
	ErrInvalidTarget    = errors.New("unknown grant")           // 400 invalid_target
	ErrUnauthenticated  = errors.New("unauthenticated")         // 401 invalid_grant (invalid_token: introspection, admin API)
	ErrDenied           = errors.New("access denied")           // 403 access_denied
	ErrNotFound         = errors.New("not found")               // 404 not_found
	ErrMethodNotAllowed = errors.New("method not allowed")      // 405 method_not_allowed
	ErrRateLimited      = errors.New("rate limited")            // 429 slow_down
	ErrUnavailable      = errors.New("temporarily unavailable") // 503 temporarily_unavailable
)

// ErrBlockChanged is Store.DeleteBlock's answer when the workload's block is
// not the one the caller named (another revocation blocked it again since
// it was read): nothing was deleted. It is not a category and wraps none:
// the workload is blocked, so it must not read as ErrNotFound.
var ErrBlockChanged = errors.New("block changed")

// Error is a categorised error with a description that is safe to show to the
// caller. Err holds the internal cause, which goes only to the log.
type Error struct {
	Kind       error         // one of the category sentinels
	Code       string        // optional OAuth error code overriding the category's default
	Safe       string        // safe, coarse text for error_description
	Reason     string        // stable machine reason for audit/metrics, e.g. "token_expired"
	RetryAfter time.Duration // for ErrRateLimited and ErrUnavailable; negative: none (retrying cannot help)
	Err        error         // internal cause; never shown to callers
	// NoToken marks a 401 of a protected resource to a request that carried
	// no Bearer token at all: its WWW-Authenticate challenge names no error
	// (RFC 6750 §3.1).
	NoToken bool
}

// CodeInvalidToken is the error code of a protected resource (introspection,
// the admin API) refusing the caller's Bearer token (RFC 6750 §3.1).
// POST /v1/token keeps the SPEC's invalid_grant for a rejected subject token.
const CodeInvalidToken = "invalid_token"

// bearerError returns err as a protected resource reports it: an
// ErrUnauthenticated error (a rejected or missing caller token) gets the code
// invalid_token; any other error is returned unchanged.
func bearerError(err error) error {
	e := AsError(err)
	if !errors.Is(e.Kind, ErrUnauthenticated) || e.Code != "" {
		return err
	}
	c := *e
	c.Code = CodeInvalidToken
	return &c
}

// missingBearer is the 401 of a protected resource asked without a Bearer
// token.
func missingBearer(reason, safe string) *Error {
	return &Error{Kind: ErrUnauthenticated, Code: CodeInvalidToken, NoToken: true, Reason: reason, Safe: safe}
}

func (e *Error) Error() string {
	msg := e.Kind.Error()
	if e.Reason != "" {
		msg += " (" + e.Reason + ")"
	}
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

// Unwrap lets errors.Is match both the category and the internal cause.
func (e *Error) Unwrap() []error {
	if e.Err != nil {
		return []error{e.Kind, e.Err}
	}
	return []error{e.Kind}
}

// Errorf builds a categorised error. safe is shown to callers; reason is a
// stable snake_case word for audit events and metrics; cause may be nil.
func Errorf(kind error, reason, safe string, cause error) *Error {
	return &Error{Kind: kind, Reason: reason, Safe: safe, Err: cause}
}

// ErrAuditPending marks an audit event that was not durable within the
// time its caller waits for it (Service.Audit, BoundedAuditSink): the
// append goes on and the event may land later, a write that hung having
// completed. What it records must not happen all the same: the request is
// refused, and its deny event need not be waited for (it is queued behind
// the pending one).
var ErrAuditPending = errors.New("audit event not durable in time")

// RevocationMadeError is the cause of the 503 audit_unavailable of a
// revocation that was made (stored, in force, finished by the worker) but
// whose revoke event was not durable in time: the API names ID in a field
// of its own, so that a caller tells it from a revocation not made
// without reading prose.
type RevocationMadeError struct {
	ID  string
	Err error
}

func (e *RevocationMadeError) Error() string {
	return "revocation " + e.ID + " made: " + e.Err.Error()
}

func (e *RevocationMadeError) Unwrap() error { return e.Err }

// ReasonStoreUnreplicated is the reason of a Store write that the store
// applied but could not confirm as replicated as configured (redisstore's
// min_replicas): it is in force unless a failover loses it.
const ReasonStoreUnreplicated = "store_unreplicated"

// unreplicated reports whether err is a Store write applied but not
// confirmed (ReasonStoreUnreplicated).
func unreplicated(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Reason == ReasonStoreUnreplicated
}

// Unavailable builds an ErrUnavailable with a Retry-After hint.
func Unavailable(reason string, retryAfter time.Duration, cause error) *Error {
	return &Error{Kind: ErrUnavailable, Reason: reason, Safe: "a backend is temporarily unavailable; retry later", RetryAfter: retryAfter, Err: cause}
}

// AsError returns err as *Error, classifying unknown errors as unavailable
// (fail closed: an error we cannot explain never turns into a credential).
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	for _, k := range []error{ErrInvalidRequest, ErrInvalidTarget, ErrUnauthenticated, ErrDenied, ErrNotFound, ErrMethodNotAllowed, ErrRateLimited, ErrUnavailable} {
		if errors.Is(err, k) {
			return &Error{Kind: k, Reason: "error", Safe: k.Error(), Err: err}
		}
	}
	return &Error{Kind: ErrUnavailable, Reason: "internal", Safe: "temporarily unavailable; retry later", RetryAfter: time.Second, Err: fmt.Errorf("unclassified: %w", err)}
}
