package vault

import (
	"errors"
	"fmt"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
)

// Reasons of the *broker.Error values this package returns (see the package
// documentation).
const (
	ReasonUnavailable = "vault_unavailable"
	ReasonDenied      = "vault_denied"
	ReasonRejected    = "vault_rejected"
	ReasonBadResponse = "vault_bad_response"
	ReasonConfig      = "vault_config"
)

// Retry-After hints.
const (
	retryOutage    = 2 * time.Second  // Vault down, sealed, slow or busy
	retryMisconfig = 30 * time.Second // needs an operator
)

// translate turns an error of vault/api into a *broker.Error. op names the
// operation for the log ("create token"); err's text (which may carry Vault's
// error messages) goes only into Err, never into Safe.
func translate(op string, err error) error {
	if err == nil {
		return nil
	}
	var be *broker.Error
	if errors.As(err, &be) {
		return err
	}
	cause := fmt.Errorf("vault %s: %w", op, HideUserinfo(err))
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		switch {
		case re.StatusCode == 401 || re.StatusCode == 403:
			return broker.Unavailable(ReasonDenied, retryMisconfig, cause)
		case re.StatusCode == 429 || re.StatusCode >= 500:
			return broker.Unavailable(ReasonUnavailable, retryOutage, cause)
		default:
			return broker.Unavailable(ReasonRejected, retryMisconfig, cause)
		}
	}
	// Connection refused or reset, TLS failures, DNS, the per-request
	// timeout and the caller's deadline all land here.
	return broker.Unavailable(ReasonUnavailable, retryOutage, cause)
}

// maskedError is err with a text that hides a secret it carries.
type maskedError struct {
	msg string
	err error
}

func (e *maskedError) Error() string { return e.msg }
func (e *maskedError) Unwrap() error { return e.err }

// badResponse reports a 2xx answer the adapter cannot use.
func badResponse(op, what string) error {
	return broker.Unavailable(ReasonBadResponse, retryOutage, fmt.Errorf("vault %s: %s", op, what))
}

// configError reports a grant or issuance this adapter cannot serve.
func configError(format string, args ...any) error {
	return broker.Unavailable(ReasonConfig, retryMisconfig, fmt.Errorf("vault: "+format, args...))
}

// responseSays reports whether err is a Vault response error of the given
// status whose messages contain one of the phrases (case-insensitive).
func responseSays(err error, status int, phrases ...string) bool {
	var re *vaultapi.ResponseError
	if !errors.As(err, &re) || re.StatusCode != status {
		return false
	}
	for _, msg := range re.Errors {
		msg = strings.ToLower(msg)
		for _, p := range phrases {
			if strings.Contains(msg, p) {
				return true
			}
		}
	}
	return false
}

// statusOf returns the HTTP status of a Vault response error, or 0.
func statusOf(err error) int {
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		return re.StatusCode
	}
	return 0
}
