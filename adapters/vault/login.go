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
// needs nothing else from them. The broker's token is then kept alive with
// vault/api's LifetimeWatcher; when it cannot be renewed any more (max TTL
// reached, renewal refused, token revoked), Run logs in again.

import (
	"context"
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
	LastError string // of the last failed attempt, "" after a success
}

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
	log          *slog.Logger
	now          func() time.Time
	after        func(time.Duration) <-chan time.Time

	loginMu sync.Mutex // one login at a time (lc's token is set during lookups)

	mu      sync.Mutex
	secret  *vaultapi.Secret // auth of the current token, for the LifetimeWatcher
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
	if o.PollInterval < 0 || o.RetryMin < 0 || o.RetryMax < 0 {
		bad("durations must not be negative")
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	// Login requests go through a clone that never carries the broker's
	// token: a login needs none, and an expired one must not get in the way.
	// vaultapi's Clone runs NewClient, which reads VAULT_TOKEN,
	// VAULT_NAMESPACE and VAULT_HEADERS again: reset all three.
	lc, err := o.Client.Clone()
	if err != nil {
		return nil, fmt.Errorf("vault.auth: clone client: %w", err)
	}
	lc.ClearToken()
	lc.ClearNamespace()
	lc.SetHeaders(http.Header{vaultapi.RequestHeaderName: []string{"true"}})

	l := &Login{
		c: o.Client, lc: lc, method: o.Method,
		token: o.Token, file: o.TokenFile, roleIDFile: o.RoleIDFile, secretIDFile: o.SecretIDFile,
		role: o.Role, jwtFile: o.JWTFile, mount: mount,
		poll: o.PollInterval, retryMin: o.RetryMin, retryMax: o.RetryMax,
		log: o.Logger, now: o.Now, after: o.After,
	}
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
// files, never a credential.
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

// Run keeps the broker's token alive until ctx ends, then returns nil.
// Start must have succeeded first.
//
// A token with a TTL is renewed by a vaultapi.LifetimeWatcher. When the
// watcher gives up (the token reached its max TTL, or renewal kept failing
// until the lease is nearly over), Run logs in again: approle and kubernetes
// log in anew, token_file re-reads its file, token looks the same token up
// again (which fails once it has expired: a static token cannot be
// replaced). Failed logins are retried with exponential backoff between
// RetryMin and RetryMax; the old token stays set meanwhile. With
// token_file, the file's mtime and size are polled every PollInterval and a
// new token in it replaces the current one at once.
func (l *Login) Run(ctx context.Context) error {
	l.mu.Lock()
	started := l.secret != nil
	l.mu.Unlock()
	if !started {
		return errors.New("vault login: Run called before a successful Start")
	}
	delay := l.retryMin
	for {
		began := l.now()
		err := l.watch(ctx)
		if ctx.Err() != nil {
			return nil
		}
		switch {
		case errors.Is(err, errTokenFileChanged):
			l.log.Info("vault token file changed; loading the new token", slog.String("file", l.file))
		case err != nil:
			l.log.Warn("vault token renewal failed; logging in again", slog.String("error", err.Error()))
		default:
			l.log.Info("vault token cannot be renewed further; logging in again")
		}
		// A watch that ended at once (a token already at its max TTL, a
		// static token that is about to expire) must not spin: wait first,
		// longer each time. A watch that lasted resets the backoff.
		if errors.Is(err, errTokenFileChanged) || l.now().Sub(began) >= l.retryMin {
			delay = l.retryMin
		} else {
			if !l.wait(ctx, delay) {
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
				return nil
			}
			l.mu.Lock()
			l.status.Failures++
			l.status.LastError = err.Error()
			l.mu.Unlock()
			l.log.Error("vault login failed; retrying", slog.String("error", err.Error()), slog.Duration("retry_in", delay))
			if !l.wait(ctx, delay) {
				return nil
			}
			delay = min(delay*2, l.retryMax)
		}
		st := l.Status()
		l.log.Info("vault login", slog.Int("logins", st.Logins), slog.Time("expires_at", st.ExpiresAt), slog.Bool("renewable", st.Renewable))
	}
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

// watch renews the current token until the LifetimeWatcher gives up (its
// result), the token file changes (errTokenFileChanged) or ctx ends.
func (l *Login) watch(ctx context.Context) error {
	l.mu.Lock()
	sec := l.secret
	l.mu.Unlock()

	var done <-chan error
	var renewed <-chan *vaultapi.RenewOutput
	if sec.Auth.LeaseDuration > 0 {
		w, err := l.c.NewLifetimeWatcher(&vaultapi.LifetimeWatcherInput{
			Secret:        sec,
			RenewBehavior: vaultapi.RenewBehaviorIgnoreErrors,
		})
		if err != nil {
			return err
		}
		go w.Start()
		defer w.Stop()
		done, renewed = w.DoneCh(), w.RenewCh()
	}
	// A token without a TTL (done stays nil) needs no renewal: only ctx or
	// a new token file ends the watch.
	for {
		var tick <-chan time.Time
		if l.method == LoginTokenFile {
			tick = l.after(l.poll)
		}
		select {
		case <-ctx.Done():
			return nil
		case err := <-done:
			return err
		case r := <-renewed:
			l.mu.Lock()
			l.status.Renewals++
			if r != nil && r.Secret != nil && r.Secret.Auth != nil {
				l.status.ExpiresAt = l.now().Add(time.Duration(r.Secret.Auth.LeaseDuration) * time.Second)
				l.status.Renewable = r.Secret.Auth.Renewable
			}
			l.mu.Unlock()
			l.log.Debug("vault token renewed")
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
	tok, err := readCredentialFile(l.file)
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
		tok, err = readCredentialFile(l.file)
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
	return nil
}

// lookupToken checks a given token with auth/token/lookup-self and returns
// it as an auth Secret for the LifetimeWatcher.
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
	return &vaultapi.Secret{Auth: &vaultapi.SecretAuth{
		ClientToken:   tok,
		LeaseDuration: int(ttl / time.Second),
		Renewable:     renewable,
	}}, nil
}

// loginAppRole writes role_id and secret_id to auth/<mount>/login, as
// github.com/hashicorp/vault/api/auth/approle does. Both files are read on
// every login, so a rotated secret id is picked up at the next one.
func (l *Login) loginAppRole(ctx context.Context) (*vaultapi.Secret, error) {
	roleID, err := readCredentialFile(l.roleIDFile)
	if err != nil {
		return nil, configError("approle role_id_file: %v", err)
	}
	secretID, err := readCredentialFile(l.secretIDFile)
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
	jwt, err := readCredentialFile(l.jwtFile)
	if err != nil {
		return nil, configError("kubernetes jwt_file: %v", err)
	}
	return l.write(ctx, "kubernetes", map[string]any{"role": l.role, "jwt": jwt})
}

func (l *Login) write(ctx context.Context, method string, body map[string]any) (*vaultapi.Secret, error) {
	path := "auth/" + l.mount + "/login"
	op := method + " login at " + path
	// lc never holds a token here (loginMu is held; lookupToken clears it).
	sec, err := l.lc.Logical().WriteWithContext(ctx, path, body)
	if err != nil {
		return nil, translate(op, err)
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" {
		return nil, badResponse(op, "no auth block with a client token")
	}
	return sec, nil
}

// readCredentialFile reads a small secret file and trims white space. The
// content never appears in an error.
func readCredentialFile(path string) (string, error) {
	f, err := os.Open(path)
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
