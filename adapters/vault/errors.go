package vault

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
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
	// Vault's own Retry-After on a 429 (a rate limit quota, with
	// enable_rate_limit_response_headers) is passed on within these bounds.
	minVaultRetryAfter = time.Second
	maxVaultRetryAfter = time.Minute
)

// translate turns an error of vault/api into a *broker.Error. op names the
// operation for the log ("create token"); err's text (which may carry Vault's
// error messages) goes only into Err, never into Safe, with no user info and
// not the path of an address NewClient built a client for (HideUserinfo).
func translate(op string, err error) error {
	if err == nil {
		return nil
	}
	var be *broker.Error
	if errors.As(err, &be) {
		return err
	}
	// The path of the client's address (rememberAddress) is hidden as
	// DisplayAddress hides it: a token may be pasted into it.
	cause := fmt.Errorf("vault %s: %w", op, HideUserinfo(err, rememberedAddresses()...))
	var re *vaultapi.ResponseError
	if errors.As(err, &re) {
		switch {
		case re.StatusCode == 401 || re.StatusCode == 403:
			return broker.Unavailable(ReasonDenied, retryMisconfig, cause)
		case re.StatusCode == 429:
			retry := retryOutage
			if d, ok := vaultWait(err); ok {
				retry = d
			}
			return broker.Unavailable(ReasonUnavailable, retry, cause)
		case re.StatusCode >= 500:
			return broker.Unavailable(ReasonUnavailable, retryOutage, cause)
		default:
			return broker.Unavailable(ReasonRejected, retryMisconfig, cause)
		}
	}
	// Connection refused or reset, TLS failures, DNS, the per-request
	// timeout and the caller's deadline all land here.
	return broker.Unavailable(ReasonUnavailable, retryOutage, cause)
}

// retryAfterNote prefixes the entry noteRetryAfter adds to the errors of a
// 429 answer that carried a Retry-After header.
const retryAfterNote = "Retry-After (from Vault): "

// maxErrorBody bounds what noteRetryAfter reads of an error answer.
const maxErrorBody = 64 << 10

// noteRetryAfter is the response callback of the clients of this package
// (NewClient, the login and reader-token clones): vault/api's
// ResponseError keeps the status and the errors of an answer but not its
// headers, so the Retry-After of a 429 (Vault's rate limit quotas send
// one, in seconds, when enable_rate_limit_response_headers is set) is
// added to the answer's errors, for translate to read. 429 from sys/health
// (a standby node, not an error) is left alone.
func noteRetryAfter(r *vaultapi.Response) {
	if r == nil || r.Response == nil || r.StatusCode != http.StatusTooManyRequests || r.Body == nil {
		return
	}
	if r.Request != nil && r.Request.URL != nil && strings.HasSuffix(r.Request.URL.Path, "/sys/health") {
		return
	}
	secs, err := strconv.Atoi(strings.TrimSpace(r.Header.Get("Retry-After")))
	if err != nil || secs < 0 {
		return
	}
	body := r.Body
	b, rerr := io.ReadAll(io.LimitReader(body, maxErrorBody))
	var e struct {
		Errors []string `json:"errors"`
	}
	if rerr != nil || len(b) == maxErrorBody || json.Unmarshal(b, &e) != nil {
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(b), body), body}
		return
	}
	_ = body.Close()
	e.Errors = append(e.Errors, retryAfterNote+strconv.Itoa(secs))
	nb, _ := json.Marshal(e)
	r.Body = io.NopCloser(bytes.NewReader(nb))
}

// vaultRetryAfter returns the wait noteRetryAfter noted in re, if any.
func vaultRetryAfter(re *vaultapi.ResponseError) (time.Duration, bool) {
	for _, msg := range re.Errors {
		if s, ok := strings.CutPrefix(msg, retryAfterNote); ok {
			if n, err := strconv.Atoi(s); err == nil && n >= 0 {
				return time.Duration(min(n, 24*3600)) * time.Second, true
			}
		}
	}
	return 0, false
}

// vaultWait returns the wait Vault asked for with the Retry-After of a 429
// (noteRetryAfter), bounded to [minVaultRetryAfter, maxVaultRetryAfter],
// if err is such an answer.
func vaultWait(err error) (time.Duration, bool) {
	var re *vaultapi.ResponseError
	if !errors.As(err, &re) || re.StatusCode != http.StatusTooManyRequests {
		return 0, false
	}
	d, ok := vaultRetryAfter(re)
	if !ok {
		return 0, false
	}
	return min(max(d, minVaultRetryAfter), maxVaultRetryAfter), true
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
