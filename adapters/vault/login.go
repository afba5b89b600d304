package vault

// The broker's own Vault login and the renewal of its token.
//
// Methods: a static token, a token file (re-read when it changes, as Vault
// Agent or a Kubernetes Secret rotate it), AppRole and Kubernetes.
//
// AppRole and Kubernetes log in by writing to auth/<mount>/login through the
// vault/api client's Logical().Write: that is exactly what the packages
// github.com/hashicorp/vault/api/auth/approle and .../auth/kubernetes do, but
// they are separate Go modules that keytrail does not require, and this file
// needs nothing else from them. Run then renews the broker's token with
// auth/token/renew-self; when it cannot be renewed any more (max TTL
// reached) or Vault refuses it (token revoked), Run logs in again.
//
// Run renews by itself rather than with vault/api's LifetimeWatcher: the
// watcher takes a 403 "permission denied" on renew-self, which is what Vault
// answers for a revoked token, for "not renewable" in every RenewBehavior,
// and then only sleeps until the old lease is nearly over, while every
// Vault call fails. Its renewals also take no ctx.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/policies"
)

// Login methods (LoginOptions.Method).
const (
	LoginToken      = "token"      // LoginOptions.Token, e.g. from VAULT_TOKEN
	LoginTokenFile  = "token_file" // LoginOptions.TokenFile, re-read on change
	LoginAppRole    = "approle"    // role_id_file + secret_id_file
	LoginKubernetes = "kubernetes" // service-account token file + role
)

// Defaults of LoginOptions.
const (
	// DefaultKubernetesJWTFile is where Kubernetes mounts a pod's
	// service-account token. A projected token with audience "vault" (see
	// docs/deploy) is the better choice: set JWTFile to its path.
	DefaultKubernetesJWTFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"
	DefaultTokenFilePoll     = 10 * time.Second
	DefaultLoginRetryMin     = time.Second
	DefaultLoginRetryMax     = 30 * time.Second
	// DefaultMaxRenewInterval is the longest wait between two renewals of
	// a renewable token. A renewal is how Run learns that the token was
	// revoked, so this bounds how long that goes unnoticed.
	DefaultMaxRenewInterval = time.Minute
	// maxCredentialFileBytes caps what is read from a token, role id,
	// secret id or JWT file.
	maxCredentialFileBytes = 64 << 10
)

// LoginOptions configure NewLogin. Only the fields of the chosen Method may
// be set.
type LoginOptions struct {
	// Client is the broker's client (from NewClient). Start and Run set its
	// token; every minter sharing it uses the new token from the next request.
	Client *vaultapi.Client
	Method string // LoginToken, LoginTokenFile, LoginAppRole or LoginKubernetes

	Token     string // token: the token itself
	TokenFile string // token_file: a file holding the token (trimmed)

	RoleIDFile   string // approle: file holding the role id
	SecretIDFile string // approle: file holding the secret id

	Role    string // kubernetes: the Vault role to log in as
	JWTFile string // kubernetes: service-account token file (default DefaultKubernetesJWTFile)

	// Mount is the auth mount path for approle and kubernetes (default
	// "approle" / "kubernetes").
	Mount string

	// PollInterval is how often a token file's mtime is checked (default
	// DefaultTokenFilePoll).
	PollInterval time.Duration
	// RetryMin and RetryMax bound the exponential backoff between failed
	// re-logins in Run (defaults DefaultLoginRetryMin, DefaultLoginRetryMax).
	RetryMin, RetryMax time.Duration
	// MaxRenewInterval is the longest wait between two renewals of a
	// renewable token (default DefaultMaxRenewInterval); otherwise a token
	// is renewed when two thirds of its lease have passed.
	MaxRenewInterval time.Duration
	// RevokeGrace is how long after an AppRole or Kubernetes re-login the
	// token it replaced is revoked (revoke-self with that token): the
	// Vault calls sent with it before are over by then. Default: the
	// client's timeout (which bounds every call) plus a second. A token
	// the operator gives (token, token_file) is never revoked.
	RevokeGrace time.Duration
	// Leases, when it holds a lease (TokenLeases.Note: a PKI role with
	// generate_lease=true), stops that revocation: revoking the replaced
	// token would revoke the leases it owns, and with them the
	// certificates issued with it. Nil: none known.
	Leases *TokenLeases

	Logger *slog.Logger                         // default: discard
	Now    func() time.Time                     // default time.Now
	After  func(time.Duration) <-chan time.Time // default time.After; waits of Run
}

// LoginStatus is a snapshot of the broker's own Vault login, for logs,
// metrics and readiness. It never holds a token or a credential.
type LoginStatus struct {
	Method    string
	Logins    int       // successful logins (a token method: the token loaded and looked up), Start included
	Renewals  int       // successful renewals of the current and earlier tokens
	Failures  int       // failed login attempts in Run
	LastLogin time.Time // of the current token
	// ExpiresAt is when the current token's lease ends as last seen (login
	// or renewal); zero for a token without expiry.
	ExpiresAt time.Time
	Renewable bool
	// TokenType is the current token's type: TokenTypeService or
	// TokenTypeBatch. A batch token cannot create tokens, so it cannot
	// serve vault_token or vault_dynamic grants.
	TokenType string
	LastError string // of the last failed attempt, "" after a success
	// ReplacedRevokeFailures counts the revocations of a token a re-login
	// replaced (AppRole, Kubernetes) that failed: each leaves that token
	// valid until its TTL, and is logged at WARN.
	ReplacedRevokeFailures int
	// RefusedRevokeFailures counts the revocations of a token a login got
	// and the broker refused (a use limit: token_num_uses; or a login in
	// flight when it was stopped) that failed: each leaves that token
	// valid until its TTL or last use, and is logged at WARN.
	RefusedRevokeFailures int
}

// Token types (LoginStatus.TokenType).
const (
	TokenTypeService = "service"
	TokenTypeBatch   = "batch"
)

// Login logs the broker in to Vault and keeps its token alive. Start makes
// the first login; Run renews and logs in again until its ctx ends.
type Login struct {
	c            *vaultapi.Client // the broker's client: gets the token
	lc           *vaultapi.Client // login requests only: never holds a token between calls
	method       string
	token        string
	file         string
	roleIDFile   string
	secretIDFile string
	role         string
	jwtFile      string
	mount        string
	poll         time.Duration
	retryMin     time.Duration
	retryMax     time.Duration
	maxRenew     time.Duration
	revokeGrace  time.Duration
	leases       *TokenLeases
	log          *slog.Logger
	now          func() time.Time
	after        func(time.Duration) <-chan time.Time
	// renewAfter replaces keepAlive's real-time timer in tests; nil: a
	// real timer.
	renewAfter func(time.Duration) <-chan time.Time

	loginMu sync.Mutex // one login at a time (lc's token is set during lookups)
	// loginNumUses is auth.num_uses of the last answer lc got (vault/api's
	// SecretAuth does not decode it), set by lc's response callback in the
	// goroutine that holds loginMu.
	loginNumUses int

	mu      sync.Mutex
	secret  *vaultapi.Secret // auth of the current token, for keepAlive
	current string           // the current token
	fileSig fileSig          // token_file: what the file looked like when read
	status  LoginStatus
}

// fileSig identifies one version of a file without reading it.
type fileSig struct {
	mod  time.Time
	size int64
}

// NewLogin validates o and returns a Login. It reads no file and calls no
// Vault: Start does.
func NewLogin(o LoginOptions) (*Login, error) {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf("vault.auth: "+format, args...)) }
	if o.Client == nil {
		bad("client is required")
	}
	set := map[string]bool{
		"token": o.Token != "", "token_file": o.TokenFile != "",
		"role_id_file": o.RoleIDFile != "", "secret_id_file": o.SecretIDFile != "",
		"role": o.Role != "", "jwt_file": o.JWTFile != "", "mount": o.Mount != "",
	}
	var need, allowed []string
	mount := o.Mount
	switch o.Method {
	case LoginToken:
		need, allowed = []string{"token"}, []string{"token"}
	case LoginTokenFile:
		need, allowed = []string{"token_file"}, []string{"token_file"}
	case LoginAppRole:
		need = []string{"role_id_file", "secret_id_file"}
		allowed = []string{"role_id_file", "secret_id_file", "mount"}
		if mount == "" {
			mount = "approle"
		}
	case LoginKubernetes:
		need = []string{"role"}
		allowed = []string{"role", "jwt_file", "mount"}
		if mount == "" {
			mount = "kubernetes"
		}
	default:
		bad("method: must be %s, %s, %s or %s, not %q", LoginToken, LoginTokenFile, LoginAppRole, LoginKubernetes, o.Method)
	}
	for _, f := range need {
		if !set[f] {
			bad("%s: required for method %s", f, o.Method)
		}
	}
	if allowed != nil {
		for _, f := range []string{"token", "token_file", "role_id_file", "secret_id_file", "role", "jwt_file", "mount"} {
			if set[f] && !slices.Contains(allowed, f) {
				bad("%s: not used by method %s", f, o.Method)
			}
		}
	}
	if mount != "" && !validName(mount) {
		bad("mount: bad auth mount path %q", mount)
	}
	if o.Role != "" && !PlainRoleName(o.Role) {
		bad("role: %q must be a plain name", o.Role)
	}
	if o.PollInterval < 0 || o.RetryMin < 0 || o.RetryMax < 0 || o.MaxRenewInterval < 0 || o.RevokeGrace < 0 {
		bad("durations must not be negative")
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	// Login requests go through a clone that never carries the broker's
	// token: a login needs none, and an expired one must not get in the way.
	// vaultapi's Clone runs NewClient, which reads VAULT_TOKEN,
	// VAULT_NAMESPACE and VAULT_HEADERS again: reset all three. The login
	// goes to the broker client's namespace (NewClient's Namespace), where
	// its auth method is mounted.
	lc, err := o.Client.Clone()
	if err != nil {
		return nil, fmt.Errorf("vault.auth: clone client: %w", err)
	}
	lc.ClearToken()
	lc.SetHeaders(http.Header{vaultapi.RequestHeaderName: []string{"true"}})
	if ns := o.Client.Namespace(); ns != "" {
		lc.SetNamespace(ns)
	}

	l := &Login{
		c: o.Client, method: o.Method,
		token: o.Token, file: o.TokenFile, roleIDFile: o.RoleIDFile, secretIDFile: o.SecretIDFile,
		role: o.Role, jwtFile: o.JWTFile, mount: mount,
		poll: o.PollInterval, retryMin: o.RetryMin, retryMax: o.RetryMax, maxRenew: o.MaxRenewInterval,
		revokeGrace: o.RevokeGrace, leases: o.Leases,
		log: o.Logger, now: o.Now, after: o.After,
	}
	// lc is new: nothing else uses it yet while the callback is set.
	l.lc = lc.WithResponseCallbacks(noteRetryAfter, l.noteNumUses)
	if l.method == LoginKubernetes && l.jwtFile == "" {
		l.jwtFile = DefaultKubernetesJWTFile
	}
	if l.poll == 0 {
		l.poll = DefaultTokenFilePoll
	}
	if l.retryMin == 0 {
		l.retryMin = DefaultLoginRetryMin
	}
	if l.retryMax == 0 {
		l.retryMax = DefaultLoginRetryMax
	}
	if l.maxRenew == 0 {
		l.maxRenew = DefaultMaxRenewInterval
	}
	if l.revokeGrace == 0 {
		// vault/api bounds every call by the client's timeout (as a ctx
		// deadline), so a call sent with the old token is over by then.
		timeout := o.Client.ClientTimeout()
		if timeout <= 0 {
			timeout = DefaultTimeout
		}
		l.revokeGrace = timeout + time.Second
	}
	if l.retryMax < l.retryMin {
		l.retryMax = l.retryMin
	}
	if l.log == nil {
		l.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if l.now == nil {
		l.now = time.Now
	}
	if l.after == nil {
		l.after = time.After
	}
	l.status.Method = l.method
	l.log = l.log.With(slog.String("component", "vault_login"), slog.String("method", l.method))
	return l, nil
}

// Start logs in once and sets the client's token. It does not retry: a
// broker that cannot log in at start-up should fail to start, loudly.
// Errors are *broker.Error of kind ErrUnavailable (see the package
// documentation for the reasons); they name the method, the mount and the
// files, never a credential. A token with a use limit (num_uses in the
// login answer or lookup-self) is refused as vault_config, in Start and in
// Run's logins alike: Vault lets it create no token and revokes it after
// its last use. Such a token an AppRole or Kubernetes login got is revoked
// (revoke-self, bounded; a failure is only logged) before the error.
func (l *Login) Start(ctx context.Context) error {
	if err := l.loginOnce(ctx); err != nil {
		return err
	}
	st := l.Status()
	l.log.Info("vault login", slog.Time("expires_at", st.ExpiresAt), slog.Bool("renewable", st.Renewable))
	return nil
}

// String names the method and mount, never a credential, so that a Login
// printed by mistake leaks nothing.
func (l *Login) String() string {
	if l.mount != "" {
		return "vault login (" + l.method + " at auth/" + l.mount + ")"
	}
	return "vault login (" + l.method + ")"
}

// LogValue is String for log/slog.
func (l *Login) LogValue() slog.Value { return slog.StringValue(l.String()) }

// Status returns a snapshot of the login state.
func (l *Login) Status() LoginStatus {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.status
}

// errTokenFileChanged ends a watch when the token file holds a new token.
var errTokenFileChanged = errors.New("token file changed")

// errTokenRefused marks a renewal that Vault refused because the token is
// no longer valid (revoked, or unknown to it).
var errTokenRefused = errors.New("vault refused the broker's token")

// Run keeps the broker's token alive until ctx ends, then returns nil.
// Start must have succeeded first.
//
// A renewable token is renewed at once, then when two thirds of its lease
// have passed, and at least every MaxRenewInterval. Run logs in again when
// the token cannot be renewed further and its lease is nearly over (max TTL
// reached, not renewable, or renewals failing), and at once when Vault
// refuses a renewal with 401 or 403 (or "invalid token"), as it does for a
// revoked token: approle and kubernetes log in anew, token_file re-reads
// its file, token looks the same token up again (a static token cannot be
// replaced: Run logs an error and keeps retrying). Failed logins are
// retried with exponential backoff between RetryMin and RetryMax, waiting
// at least as long as a 429's Retry-After asks (bounded to 1-60 s); the old
// token stays set meanwhile, and is still renewed. With token_file, the
// file's mtime and size are polled every PollInterval and a new token in
// it replaces the current one at once.
//
// The token an AppRole or Kubernetes re-login replaces is revoked
// (revoke-self with it, bounded) RevokeGrace after the new one is set, once
// the calls sent with it are over, rather than left valid until its TTL;
// at once when ctx ends first, and Run returns after that. One Vault
// refused (revoked), a batch token (Vault revokes none), one the operator
// gave (token, token_file) and, once Leases holds a lease, every one (its
// revocation would revoke the certificates issued with it) are left alone.
// Only its accessor is logged. A re-login in flight when ctx ends is let
// finish for up to 2 s, and the token it got is revoked, not used (write).
func (l *Login) Run(ctx context.Context) error {
	l.mu.Lock()
	started := l.secret != nil
	l.mu.Unlock()
	if !started {
		return errors.New("vault login: Run called before a successful Start")
	}
	var revoking sync.WaitGroup
	defer revoking.Wait()
	delay := l.retryMin
	for {
		began := l.now()
		// The current token is renewed until a new one replaces it: while
		// new logins fail, it may still be valid.
		l.mu.Lock()
		sec := l.secret
		l.mu.Unlock()
		kctx, stopKeep := context.WithCancel(ctx)
		kept := make(chan error, 1)
		keeping := make(chan struct{})
		go func() {
			defer close(keeping)
			kept <- l.keepAlive(kctx, sec)
		}()
		stop := func() {
			stopKeep()
			<-keeping
		}

		err := l.watch(ctx, kept)
		if ctx.Err() != nil {
			stop()
			return nil
		}
		switch {
		case errors.Is(err, errTokenFileChanged):
			l.log.Info("vault token file changed; loading the new token", slog.String("file", l.file))
		case errors.Is(err, errTokenRefused) && l.method == LoginToken:
			l.log.Error("vault refused the broker's token (revoked?); a static token cannot be replaced: give the broker a new one and restart it; retrying meanwhile",
				slog.String("error", err.Error()))
		case errors.Is(err, errTokenRefused):
			l.log.Error("vault refused the broker's token (revoked?); logging in again", slog.String("error", err.Error()))
		case err != nil:
			l.log.Warn("vault token renewal failed; logging in again", slog.String("error", err.Error()))
		default:
			l.log.Info("vault token cannot be renewed further; logging in again")
		}
		// A watch that ended at once (a token already at its max TTL, a
		// static token that is about to expire, a token refused as soon as
		// it was renewed) must not spin: wait first, longer each time. A
		// watch that lasted resets the backoff.
		// When the token being replaced ends, as last seen: a revocation
		// after that is moot.
		oldEnds := l.Status().ExpiresAt
		if errors.Is(err, errTokenFileChanged) || l.now().Sub(began) >= l.retryMin {
			delay = l.retryMin
		} else {
			if !l.wait(ctx, delay) {
				stop()
				return nil
			}
			delay = min(delay*2, l.retryMax)
		}
		for {
			err := l.loginOnce(ctx)
			if err == nil {
				break
			}
			if ctx.Err() != nil {
				stop()
				return nil
			}
			l.mu.Lock()
			l.status.Failures++
			l.status.LastError = err.Error()
			l.mu.Unlock()
			// Vault's rate limit quota says when to come back (a 429's
			// Retry-After, 1-60 s as for mints): not before then.
			wait := delay
			if d, ok := vaultWait(err); ok && d > wait {
				wait = d
			}
			l.log.Error("vault login failed; retrying", slog.String("error", err.Error()), slog.Duration("retry_in", wait))
			if !l.wait(ctx, wait) {
				stop()
				return nil
			}
			delay = min(delay*2, l.retryMax)
		}
		stop()
		st := l.Status()
		l.log.Info("vault login", slog.Int("logins", st.Logins), slog.Time("expires_at", st.ExpiresAt), slog.Bool("renewable", st.Renewable))
		if old := sec.Auth; l.revokesReplaced() && !errors.Is(err, errTokenRefused) && old.Accessor != "" && old.ClientToken != l.currentToken() {
			revoking.Add(1)
			go func() {
				defer revoking.Done()
				l.revokeReplaced(ctx, old.ClientToken, old.Accessor, oldEnds)
			}()
		}
	}
}

// revokesReplaced reports whether the tokens of l's method are the
// broker's own to revoke: those of its AppRole or Kubernetes logins, not
// one the operator gave.
func (l *Login) revokesReplaced() bool {
	return l.method == LoginAppRole || l.method == LoginKubernetes
}

func (l *Login) currentToken() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.current
}

// revokeReplaced revokes tok, a token a re-login replaced, with
// revoke-self through a clone of the broker's client that holds it, once
// RevokeGrace has passed (at once when ctx has ended), bounded by
// cleanupTimeout; not at all once ends (the token's end as last seen; zero:
// none) has passed. Only accessor is logged; a failure is logged, not
// returned.
func (l *Login) revokeReplaced(ctx context.Context, tok, accessor string, ends time.Time) {
	t := time.NewTimer(l.revokeGrace)
	select {
	case <-ctx.Done():
	case <-t.C:
	}
	t.Stop()
	if l.leases.Held() {
		// Checked after the grace: a lease noted by a call sent with tok
		// before the re-login is noted by then.
		l.log.Warn("left the vault token a new login replaced valid until its ttl: leases may belong to it (a pki role with generate_lease=true), and revoking it would revoke them and their certificates",
			slog.String("accessor", accessor))
		return
	}
	if !ends.IsZero() && !l.now().Before(ends) {
		l.log.Debug("the vault token a new login replaced has ended: nothing to revoke", slog.String("accessor", accessor))
		return
	}
	const op = "revoke-self of the replaced broker token"
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	rc, err := l.c.CloneWithHeaders()
	if err == nil {
		rc.SetToken(tok)
		err = rc.Auth().Token().RevokeSelfWithContext(rctx, "")
	}
	if err != nil {
		l.mu.Lock()
		l.status.ReplacedRevokeFailures++
		l.mu.Unlock()
		l.log.Warn("could not revoke the vault token a new login replaced; it stays valid until its ttl unless it already ended (revoked, expired: 403)",
			slog.String("accessor", accessor), slog.String("error", translate(op, err).Error()))
		return
	}
	l.log.Info("revoked the vault token a new login replaced", slog.String("accessor", accessor))
}

// wait returns false when ctx ends first.
func (l *Login) wait(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-l.after(d):
		return true
	}
}

// watch waits until keepAlive of the current token ends (its result from
// kept), the token file holds a new token (errTokenFileChanged) or ctx ends
// (nil).
func (l *Login) watch(ctx context.Context, kept <-chan error) error {
	for {
		var tick <-chan time.Time
		if l.method == LoginTokenFile {
			tick = l.after(l.poll)
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-kept:
			return err
		case <-tick:
			changed, err := l.tokenFileChanged()
			if err != nil {
				l.log.Warn("vault token file unreadable; keeping the current token", slog.String("file", l.file), slog.String("error", err.Error()))
				continue
			}
			if changed {
				return errTokenFileChanged
			}
		}
	}
}

// keepAlive renews the token of sec until ctx ends (nil), Vault refuses it
// (an error wrapping errTokenRefused), or it cannot be renewed further and
// its lease is nearly over: nil, or the last renewal's error when renewals
// were failing. A token without a TTL needs no renewal: keepAlive waits for
// ctx.
//
// A failed renewal is retried with backoff between RetryMin and RetryMax,
// and no sooner than a 429's Retry-After asks (bounded to 1-60 s), but
// never later than the point where the token is replaced.
//
// Its waits follow the token's lease in real time (as vault/api's
// LifetimeWatcher's did), not the injected After, which paces Run's retries.
func (l *Login) keepAlive(ctx context.Context, sec *vaultapi.Secret) error {
	const op = "renew-self of the broker token"
	a := sec.Auth
	if a.LeaseDuration <= 0 {
		<-ctx.Done()
		return nil
	}
	lease := time.Duration(a.LeaseDuration) * time.Second
	expires := time.Now().Add(lease)
	// Within grace of its end a token is replaced, not renewed. It is a
	// tenth of the longest lease seen: a token at its max TTL gets shorter
	// leases from each renewal.
	grace := lease / 10
	renewable := a.Renewable
	retry := l.retryMin
	var (
		lastErr error
		// retryIn is the wait before the next renewal after a failed
		// one: the backoff, or a 429's Retry-After when longer.
		retryIn time.Duration
	)
	// The first renewal is at once: it shows early whether the token can
	// be renewed (and has not been revoked meanwhile).
	first := true
	for {
		rem := time.Until(expires)
		if rem <= grace {
			return lastErr
		}
		d := rem - grace
		switch {
		case !renewable:
		case first:
			d = 0
		case lastErr != nil:
			// Never past the point where the token is replaced.
			d = min(d, retryIn)
		default:
			d = min(d, rem*2/3, l.maxRenew)
		}
		first = false
		if d > 0 && !l.renewWait(ctx, d) {
			return nil
		}
		if !renewable {
			continue
		}
		s, err := l.c.Auth().Token().RenewTokenAsSelfWithContext(ctx, a.ClientToken, 0)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil && tokenRefused(err) {
			// A revoked token and one whose policy lacks renew-self both get
			// 403 "permission denied": lookup-self tells them apart.
			lerr := l.lookUpRefused(ctx, a.ClientToken)
			if ctx.Err() != nil {
				return nil
			}
			switch {
			case lerr == nil:
				l.log.Warn("vault token still valid but may not renew itself (does its policy allow update on auth/token/renew-self?); keeping it until its lease is nearly over",
					slog.String("error", translate(op, err).Error()))
				renewable, lastErr = false, nil
				continue
			case tokenRefused(lerr):
				return fmt.Errorf("%w: %w", errTokenRefused, translate(op, err))
			}
			// Unknown: count it as a failed renewal.
		}
		if err == nil && (s == nil || s.Auth == nil) {
			err = badResponse(op, "no auth block")
		}
		if err != nil {
			lastErr = translate(op, err)
			// Vault's rate limit quota says when to come back (a 429's
			// Retry-After, 1-60 s, as for Run's logins): not before then.
			retryIn = retry
			if w, ok := vaultWait(err); ok && w > retryIn {
				retryIn = w
			}
			l.log.Warn("vault token renewal failed; retrying", slog.String("error", lastErr.Error()), slog.Duration("retry_in", min(retryIn, max(rem-grace, 0))))
			retry = min(retry*2, l.retryMax)
			continue
		}
		lastErr, retry = nil, l.retryMin
		got := time.Duration(s.Auth.LeaseDuration) * time.Second
		expires = time.Now().Add(got)
		renewable = s.Auth.Renewable
		if got > lease {
			lease, grace = got, got/10
		}
		l.renewed(a.ClientToken, s.Auth)
	}
}

// renewWait waits d on keepAlive's clock (real time, or renewAfter) and
// returns false when ctx ends first.
func (l *Login) renewWait(ctx context.Context, d time.Duration) bool {
	if l.renewAfter != nil {
		select {
		case <-ctx.Done():
			return false
		case <-l.renewAfter(d):
			return true
		}
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// lookUpRefused looks tok up with lookup-self, through the login client,
// and returns vault/api's error.
func (l *Login) lookUpRefused(ctx context.Context, tok string) error {
	l.loginMu.Lock()
	defer l.loginMu.Unlock()
	l.lc.SetToken(tok)
	defer l.lc.ClearToken()
	_, err := l.lc.Auth().Token().LookupSelfWithContext(ctx)
	return err
}

// tokenRefused reports whether a renewal error says that the token itself
// is no longer valid: 401 or 403 (Vault's "permission denied" for a revoked
// token), or 400 "invalid token" / "bad token".
func tokenRefused(err error) bool {
	st := statusOf(err)
	return st == http.StatusUnauthorized || st == http.StatusForbidden ||
		responseSays(err, http.StatusBadRequest, "invalid token", "bad token")
}

// renewed records a renewal of tok, unless another token has replaced it
// meanwhile.
func (l *Login) renewed(tok string, a *vaultapi.SecretAuth) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if tok != l.current {
		return
	}
	l.status.Renewals++
	l.status.ExpiresAt = time.Time{}
	if a.LeaseDuration > 0 {
		l.status.ExpiresAt = l.now().Add(time.Duration(a.LeaseDuration) * time.Second)
	}
	l.status.Renewable = a.Renewable
	l.log.Debug("vault token renewed")
}

// tokenFileChanged reports whether the token file holds a token other than
// the current one. A file whose mtime and size are unchanged is not read.
func (l *Login) tokenFileChanged() (bool, error) {
	fi, err := os.Stat(l.file)
	if err != nil {
		return false, err
	}
	sig := fileSig{mod: fi.ModTime(), size: fi.Size()}
	l.mu.Lock()
	same := sig == l.fileSig
	cur := l.current
	l.mu.Unlock()
	if same {
		return false, nil
	}
	tok, err := ReadCredentialFile(l.file)
	if err != nil {
		return false, err
	}
	if tok == cur {
		l.mu.Lock()
		l.fileSig = sig
		l.mu.Unlock()
		return false, nil
	}
	return true, nil
}

// loginOnce makes one login and, on success, sets the client's token and
// the state the watcher needs.
func (l *Login) loginOnce(ctx context.Context) error {
	l.loginMu.Lock()
	defer l.loginMu.Unlock()
	var (
		sec *vaultapi.Secret
		sig fileSig
		err error
	)
	switch l.method {
	case LoginToken:
		sec, err = l.lookupToken(ctx, l.token, "token")
	case LoginTokenFile:
		var tok string
		if fi, serr := os.Stat(l.file); serr == nil {
			sig = fileSig{mod: fi.ModTime(), size: fi.Size()}
		}
		tok, err = ReadCredentialFile(l.file)
		if err != nil {
			return configError("token_file: %v", err)
		}
		sec, err = l.lookupToken(ctx, tok, "token_file "+l.file)
	case LoginAppRole:
		sec, err = l.loginAppRole(ctx)
	case LoginKubernetes:
		sec, err = l.loginKubernetes(ctx)
	default:
		err = configError("login method %q", l.method)
	}
	if err != nil {
		return err
	}
	now := l.now()
	l.c.SetToken(sec.Auth.ClientToken)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.secret, l.current, l.fileSig = sec, sec.Auth.ClientToken, sig
	l.status.Logins++
	l.status.LastLogin = now
	l.status.LastError = ""
	l.status.Renewable = sec.Auth.Renewable
	l.status.ExpiresAt = time.Time{}
	if sec.Auth.LeaseDuration > 0 {
		l.status.ExpiresAt = now.Add(time.Duration(sec.Auth.LeaseDuration) * time.Second)
	}
	// Vault gives batch tokens no accessor (vault/api does not decode the
	// login's token_type; lookup-self's accessor is empty too).
	l.status.TokenType = TokenTypeService
	if sec.Auth.Accessor == "" {
		l.status.TokenType = TokenTypeBatch
		l.log.Warn("the broker's vault token is a batch token: Vault refuses it every token creation, so vault_token and vault_dynamic grants cannot be served (use token_type=service)")
	}
	return nil
}

// lookupToken checks a given token with auth/token/lookup-self and returns
// it as an auth Secret for keepAlive.
func (l *Login) lookupToken(ctx context.Context, tok, what string) (*vaultapi.Secret, error) {
	op := "lookup-self of the broker token (" + what + ")"
	l.lc.SetToken(tok)
	defer l.lc.ClearToken()
	s, err := l.lc.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return nil, translate(op, err)
	}
	if s == nil || s.Data == nil {
		return nil, badResponse(op, "no token data")
	}
	ttl, err := s.TokenTTL()
	if err != nil {
		return nil, badResponse(op, "bad ttl")
	}
	renewable, err := s.TokenIsRenewable()
	if err != nil {
		return nil, badResponse(op, "bad renewable flag")
	}
	if n, _ := asInt(s.Data["num_uses"]); n != 0 {
		return nil, restrictedUse(op, n, "create the broker's token without a use limit (num_uses=0, vault token create -use-limit=0)")
	}
	accessor, _ := s.Data["accessor"].(string)
	return &vaultapi.Secret{Auth: &vaultapi.SecretAuth{
		ClientToken:   tok,
		Accessor:      accessor,
		LeaseDuration: int(ttl / time.Second),
		Renewable:     renewable,
	}}, nil
}

// loginAppRole writes role_id and secret_id to auth/<mount>/login, as
// github.com/hashicorp/vault/api/auth/approle does. Both files are read on
// every login, so a rotated secret id is picked up at the next one.
func (l *Login) loginAppRole(ctx context.Context) (*vaultapi.Secret, error) {
	roleID, err := ReadCredentialFile(l.roleIDFile)
	if err != nil {
		return nil, configError("approle role_id_file: %v", err)
	}
	secretID, err := ReadCredentialFile(l.secretIDFile)
	if err != nil {
		return nil, configError("approle secret_id_file: %v", err)
	}
	return l.write(ctx, "approle", map[string]any{"role_id": roleID, "secret_id": secretID})
}

// loginKubernetes writes the role and the service-account token to
// auth/<mount>/login, as github.com/hashicorp/vault/api/auth/kubernetes
// does. The token file is read on every login: the kubelet rotates
// projected tokens.
func (l *Login) loginKubernetes(ctx context.Context) (*vaultapi.Secret, error) {
	jwt, err := ReadCredentialFile(l.jwtFile)
	if err != nil {
		return nil, configError("kubernetes jwt_file: %v", err)
	}
	return l.write(ctx, "kubernetes", map[string]any{"role": l.role, "jwt": jwt})
}

// loginStopGrace is how long a login request already sent may go on once
// its ctx has ended (Run's loop stopped, a start-up stopped), so that a
// token Vault made meanwhile is known, and revoked (within
// loginStopRevokeTimeout), rather than left valid until its TTL. Both
// together stay under the 5 s the server waits for the loop to stop
// before it revokes the broker's token and exits (cmd/keytrail's
// loginRevokeTimeout).
const (
	loginStopGrace         = 2 * time.Second
	loginStopRevokeTimeout = 2 * time.Second
)

// write sends a login (AppRole, Kubernetes) to auth/<mount>/login and
// returns its answer. A login whose ctx ends once it was sent is let
// finish (detached from ctx's cancel, still bounded by the client's
// timeout) for up to loginStopGrace: the token Vault made is then revoked
// (revokeRefused: counted and logged if that fails), and write fails with
// ctx's error; one cut off at loginStopGrace is logged at WARN (Vault may
// have made a token nobody knows). None is sent once ctx has ended.
func (l *Login) write(ctx context.Context, method string, body map[string]any) (*vaultapi.Secret, error) {
	path := "auth/" + l.mount + "/login"
	op := method + " login at " + path
	if err := ctx.Err(); err != nil {
		return nil, translate(op, err)
	}
	// lc never holds a token here (loginMu is held; lookupToken clears it).
	l.loginNumUses = 0
	wctx, cutOff := context.WithCancel(context.WithoutCancel(ctx))
	defer cutOff()
	written := make(chan struct{})
	go func() {
		select {
		case <-written:
			return
		case <-ctx.Done():
		}
		t := time.NewTimer(loginStopGrace)
		defer t.Stop()
		select {
		case <-written:
		case <-t.C:
			cutOff()
		}
	}()
	sec, err := l.lc.Logical().WriteWithContext(wctx, path, body)
	close(written)
	if ctx.Err() != nil {
		// Stopped while the login was in flight: its token, if Vault made
		// one, is not used.
		if err == nil && sec != nil && sec.Auth != nil && sec.Auth.ClientToken != "" {
			l.revokeRefusedWithin(ctx, sec.Auth.ClientToken, op+" (stopped while in flight)", loginStopRevokeTimeout)
		} else if err != nil && wctx.Err() != nil {
			l.log.Warn("a vault login in flight when the login was stopped did not answer in time; a token Vault made for it, if any, stays valid until its ttl",
				slog.String("op", op), slog.Duration("waited", loginStopGrace))
		}
		return nil, translate(op, context.Cause(ctx))
	}
	if err != nil {
		return nil, translate(op, err)
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return nil, badResponse(op, "no auth block with a client token")
	}
	if n := l.loginNumUses; n != 0 {
		l.revokeRefused(ctx, sec.Auth.ClientToken, op)
		return nil, restrictedUse(op, n, "set token_num_uses=0 on the "+method+" role the broker logs in as")
	}
	return sec, nil
}

// revokeRefused revokes a token a login got and the broker will not use
// (auth/token/revoke-self with the token itself: the default policy and
// MinimumBrokerPolicy allow it, even on a token's last use; without it Vault
// answers 403), so that it does not stay valid until its TTL; at
// most cleanupTimeout, even when ctx has ended. A failure is logged and
// counted (LoginStatus.RefusedRevokeFailures), never returned: the login
// fails anyway. l.loginMu is held.
func (l *Login) revokeRefused(ctx context.Context, tok, op string) {
	l.revokeRefusedWithin(ctx, tok, op, cleanupTimeout)
}

// revokeRefusedWithin is revokeRefused bounded by d.
func (l *Login) revokeRefusedWithin(ctx context.Context, tok, op string, d time.Duration) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d)
	defer cancel()
	l.lc.SetToken(tok)
	defer l.lc.ClearToken()
	if err := l.lc.Auth().Token().RevokeSelfWithContext(rctx, ""); err != nil {
		l.mu.Lock()
		l.status.RefusedRevokeFailures++
		l.mu.Unlock()
		l.log.Warn("could not revoke the token a login got and the broker refused; it stays valid until its ttl or last use",
			slog.String("op", op), slog.String("error", translate("revoke-self of a refused login token", err).Error()))
	}
}

// restrictedUse is the error of a login that gave the broker a token with a
// use limit: Vault refuses such a token every token creation ("restricted
// use token cannot generate child tokens"), so no vault_token or
// vault_dynamic grant could be served, and it dies after n requests.
func restrictedUse(op string, n int, fix string) error {
	uses := fmt.Sprintf("has a use limit (num_uses=%d)", n)
	if n < 0 {
		uses = "has a use limit, and this lookup was its last use"
	}
	return configError("%s: the broker's token %s: Vault refuses a restricted-use token every token creation (\"restricted use token cannot generate child tokens\") and revokes it after its last use; %s", op, uses, fix)
}

// maxLoginAnswerBytes bounds what noteNumUses reads of an answer.
const maxLoginAnswerBytes = 1 << 20

// noteNumUses is lc's response callback: it records auth.num_uses of a
// successful answer in loginNumUses and leaves the body for vault/api to
// parse as before.
func (l *Login) noteNumUses(r *vaultapi.Response) {
	if r == nil || r.Response == nil || r.StatusCode != http.StatusOK || r.Body == nil {
		return
	}
	body := r.Body
	b, err := io.ReadAll(io.LimitReader(body, maxLoginAnswerBytes))
	r.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(b), body), body}
	if err != nil {
		return
	}
	var a struct {
		Auth *struct {
			NumUses int `json:"num_uses"`
		} `json:"auth"`
	}
	if json.Unmarshal(b, &a) == nil && a.Auth != nil {
		l.loginNumUses = a.Auth.NumUses
	}
}

// ReadCredentialFile reads a small secret file (vault.token_file, the
// AppRole role and secret id files, the Kubernetes jwt_file) and trims
// white space. The content never appears in an error. Only a regular file
// is read (a symlink to one is followed: Kubernetes mounts a secret as a
// chain of them, swapped when it rotates): a named pipe, a socket, a
// device or a directory is refused, naming the path and what it is, as
// the config file is (policies.OpenRegular), instead of blocking the start
// or every later login forever.
func ReadCredentialFile(path string) (string, error) {
	f, err := policies.OpenRegular(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCredentialFileBytes+1))
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	if len(b) > maxCredentialFileBytes {
		return "", fmt.Errorf("%s: larger than %d bytes", path, maxCredentialFileBytes)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s: empty", path)
	}
	return s, nil
}
