package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
)

// DefaultReaderPolicy is the Vault policy of the per-issuance reader token
// when DynamicMinterOptions.ReaderPolicies is empty. It must grant read on
// the paths of the vault_dynamic grants (e.g. database/creds/*).
const DefaultReaderPolicy = "keytrail-dynamic"

// UsernameTemplate is the username_template the Vault database connections
// (database/config/<name>; a connection setting, not a role's) behind
// vault_dynamic grants should carry: "kt-" + UsernameTag(issuance id) + "-" +
// 8 random characters, e.g. kt-iss-01jq3v7k9m2x4h8r6t5b0c1d2e-x7k2m9qa (42
// characters, within PostgreSQL's 63). It reads the issuance id from the
// display name of the reader token DynamicMinter creates for each issuance
// ("token-iss-<ULID>-<workload>").
const UsernameTemplate = `{{ printf "kt-%s-%s" (.DisplayName | replace "token-" "" | truncate 30 | lowercase) (random 8 | lowercase) }}`

// secretFields are the response fields, in order of preference, whose value
// becomes the access token (the secret the fingerprint is taken of).
var secretFields = []string{"password", "secret_key", "private_key", "rsa_private_key", "token", "client_secret"}

// displayNameSanitize is what Vault's token store replaces with "-" in a
// display name (vault/token_store.go).
var displayNameSanitize = regexp.MustCompile("[^a-zA-Z0-9-]")

// cleanupTimeout bounds the revocation of a half-minted credential.
const cleanupTimeout = 5 * time.Second

// UsernameTag is the part of an issuance id that generated user names carry:
// the id as Vault's token display name keeps it ("_" becomes "-"),
// lowercased. A ULID is case-insensitive, so the tag names exactly one
// issuance: iss_01JQ3V... has the tag iss-01jq3v...
func UsernameTag(issuanceID string) string {
	return strings.ToLower(displayNameSanitize.ReplaceAllString(issuanceID, "-"))
}

// IssuanceIDFromUsername recovers the issuance id from a user name generated
// with UsernameTemplate ("kt-iss-<ulid>-<random>"), or returns false.
func IssuanceIDFromUsername(username string) (string, bool) {
	rest, ok := strings.CutPrefix(strings.ToLower(username), "kt-iss-")
	if !ok || len(rest) < 26 {
		return "", false
	}
	id := strings.ToUpper(rest[:26])
	for _, r := range id {
		if !strings.ContainsRune("0123456789ABCDEFGHJKMNPQRSTVWXYZ", r) {
			return "", false
		}
	}
	if len(rest) > 26 && rest[26] != '-' {
		return "", false
	}
	return broker.PrefixIssuance + id, true
}

// DynamicMinterOptions configure NewDynamicMinter.
type DynamicMinterOptions struct {
	Client *vaultapi.Client // from NewClient (required)
	// ReaderPolicies are the policies of the per-issuance reader token
	// (default [DefaultReaderPolicy]). They must allow read on the grants'
	// paths and nothing more is needed. Without sudo, the broker's token
	// must hold them too (Vault's subset rule), or use Role.
	ReaderPolicies []string
	// Role, when set, creates reader tokens through auth/token/create/<Role>
	// (a role with orphan=true and allowed_policies covering ReaderPolicies).
	Role string
	// AllowUntaggedUsernames accepts a credential whose username does not
	// carry the issuance id (a connection without UsernameTemplate). By default
	// such a credential is revoked and the mint fails: the SPEC promises
	// that generated user names embed the issuance id.
	AllowUntaggedUsernames bool
	// Deployment, when set, is added to the reader token's meta, as
	// TokenMinterOptions.Deployment.
	Deployment string
	// Log gets Vault's warnings on the reader token's creation and on the
	// read, as TokenMinterOptions.Log; default slog.Default().
	Log *slog.Logger
	Now func() time.Time // default time.Now
}

// DynamicMinter mints credentials of grants of kind vault_dynamic: it reads
// a Vault dynamic-secrets path (database/creds/<role>, or any engine that
// answers a read with a lease) and returns the secret's fields with the
// lease.
//
// For each issuance it first creates a reader token: an orphan service
// token, not renewable, with ttl and explicit_max_ttl both the request's
// TTL, the ReaderPolicies only (no default policy), display name
// "<issuance id>-<workload>" (stored by Vault as token-iss-<ULID>-<workload>)
// and meta {workload, owner, session_id, issuance_id, grant}. It reads the
// path with that token, so that
//
//   - the database engine's username_template sees the issuance id in
//     {{.DisplayName}} (see UsernameTemplate), and Vault's audit log names
//     the issuance on the read;
//   - the lease belongs to the reader token: when the token expires at the
//     grant's TTL, Vault revokes the lease and the engine drops the user,
//     whatever the role's default_ttl says. The reader token's secret is
//     dropped after the read; only its accessor is kept.
//
// The credential: AccessToken is the first of the fields password,
// secret_key, private_key, rsa_private_key, token, client_secret; Fields are
// every field of the secret's data plus lease_id and lease_duration (the
// seconds until the credential ends: the lease or the reader token,
// whichever ends first); Refs carry LeaseID, Username (the data's username),
// Accessor (the reader token's) and ExpiresAt.
type DynamicMinter struct {
	c          *vaultapi.Client
	path       string
	policies   []string
	untagged   bool
	deployment string
	now        func() time.Time
	warn       *warnLog
}

var (
	_ broker.Minter  = (*DynamicMinter)(nil)
	_ broker.Revoker = (*DynamicMinter)(nil)
)

// NewDynamicMinter validates o and returns a DynamicMinter.
func NewDynamicMinter(o DynamicMinterOptions) (*DynamicMinter, error) {
	var errs []error
	if o.Client == nil {
		errs = append(errs, errors.New("vault dynamic minter: client is required"))
	}
	path := "auth/token/create-orphan"
	if o.Role != "" {
		if !PlainRoleName(o.Role) {
			errs = append(errs, fmt.Errorf("vault dynamic minter: role %q: must be a plain name", o.Role))
		}
		path = "auth/token/create/" + url.PathEscape(o.Role)
	}
	pols := slices.Clone(o.ReaderPolicies)
	if len(pols) == 0 {
		pols = []string{DefaultReaderPolicy}
	}
	for _, p := range pols {
		if t := strings.TrimSpace(p); t == "" || strings.EqualFold(t, "root") {
			errs = append(errs, fmt.Errorf("vault dynamic minter: reader policy %q: must be a named, non-root policy", p))
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	return &DynamicMinter{c: o.Client, path: path, policies: pols, untagged: o.AllowUntaggedUsernames, deployment: o.Deployment, now: now, warn: newWarnLog(o.Log, now)}, nil
}

// readerTokenBody is the body of the reader token's create call.
func (m *DynamicMinter) readerTokenBody(req broker.MintRequest, secs int64) map[string]any {
	ttl := strconv.FormatInt(secs, 10) + "s"
	return map[string]any{
		"type":              "service", // a batch token has no accessor and its leases outlive it
		"policies":          slices.Clone(m.policies),
		"no_default_policy": true,
		"ttl":               ttl,
		"explicit_max_ttl":  ttl,
		"renewable":         false,
		"num_uses":          0, // a used-up token is revoked, and its lease with it
		"display_name":      req.IssuanceID + "-" + req.Workload,
		"meta":              issuanceMeta(req, m.deployment),
	}
}

// Mint creates the reader token, reads the grant's path with it and returns
// the secret. Nothing is retried. Whatever goes wrong after the token was
// created revokes the token (and with it any lease it holds) before
// returning the error.
func (m *DynamicMinter) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	g := req.Grant.VaultDynamic
	switch {
	case req.Grant.Kind != broker.KindVaultDynamic || g == nil:
		return nil, configError("grant %q of kind %q is not a vault_dynamic grant", req.Grant.Name, req.Grant.Kind)
	case !validName(g.Path):
		return nil, configError("grant %q: bad vault_dynamic path %q", req.Grant.Name, g.Path)
	case req.IssuanceID == "" || req.Workload == "":
		return nil, configError("mint request without issuance id or workload")
	}
	secs := int64(req.TTL / time.Second)
	if secs < 1 {
		return nil, broker.Errorf(broker.ErrInvalidRequest, "ttl_too_short", "the requested ttl is too short", fmt.Errorf("vault dynamic ttl %v < 1s", req.TTL))
	}

	const opToken = "create reader token"
	tsec, err := m.c.Logical().WriteWithContext(ctx, m.path, m.readerTokenBody(req, secs))
	if err != nil {
		return nil, translate(opToken, err)
	}
	if tsec != nil {
		m.warn.note(opToken, req.Grant.Name, req.IssuanceID, tsec.Warnings)
	}
	if tsec == nil || tsec.Auth == nil || tsec.Auth.ClientToken == "" || tsec.Auth.Accessor == "" {
		return nil, badResponse(opToken, "no auth block with client token and accessor")
	}
	a := tsec.Auth
	tokenEnds := m.now().Add(time.Duration(a.LeaseDuration) * time.Second)
	if a.LeaseDuration <= 0 || a.LeaseDuration > int(secs) || a.Renewable {
		return nil, m.abort(ctx, a.Accessor, badResponse(opToken, fmt.Sprintf("reader token lease %ds (renewable=%v) does not fit ttl %ds", a.LeaseDuration, a.Renewable, secs)))
	}
	if !a.Orphan {
		// A token role edited to orphan=false: a child of the broker's own
		// token, revoked with it, and its lease (the credential) with it.
		return nil, m.abort(ctx, a.Accessor, configError("%s made a reader token that is not an orphan: it and its lease would be revoked with the broker's own token (does the token role still set orphan=true?)", m.path))
	}

	const opRead = "read dynamic secret"
	rc, err := m.c.CloneWithHeaders()
	if err != nil {
		return nil, m.abort(ctx, a.Accessor, configError("clone client: %v", err))
	}
	rc = rc.WithResponseCallbacks(noteRetryAfter) // rc is this mint's own
	rc.SetToken(a.ClientToken)
	sec, err := rc.Logical().ReadWithContext(ctx, g.Path)
	if err != nil {
		return nil, m.abort(ctx, a.Accessor, translate(opRead, err))
	}
	if sec != nil {
		m.warn.note(opRead, req.Grant.Name, req.IssuanceID, sec.Warnings)
	}
	if sec == nil {
		// vault/api answers a 404 with (nil, nil): no such path or role.
		return nil, m.abort(ctx, a.Accessor, broker.Unavailable(ReasonRejected, retryMisconfig, fmt.Errorf("vault %s: %s: not found", opRead, g.Path)))
	}
	if sec.LeaseID == "" || sec.LeaseDuration <= 0 {
		return nil, m.abort(ctx, a.Accessor, configError("grant %q: %s returned no lease (not a dynamic secret)", req.Grant.Name, g.Path))
	}
	cred, err := m.credential(req, sec, a.Accessor, tokenEnds)
	if err != nil {
		// Revoke the lease explicitly too: the token's revocation takes
		// the lease with it, but only eventually.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		return nil, m.abort(ctx, a.Accessor, err, m.revokeLease(rctx, sec.LeaseID))
	}
	return cred, nil
}

// credential builds the credential from a read's answer.
func (m *DynamicMinter) credential(req broker.MintRequest, sec *vaultapi.Secret, accessor string, tokenEnds time.Time) (*broker.Credential, error) {
	const op = "read dynamic secret"
	fields := make(map[string]any, len(sec.Data)+2)
	for k, v := range sec.Data {
		fields[k] = v
	}
	var secret string
	for _, k := range secretFields {
		if s, ok := sec.Data[k].(string); ok && s != "" {
			secret = s
			break
		}
	}
	if secret == "" {
		return nil, badResponse(op, fmt.Sprintf("%s: no secret field (one of %s)", req.Grant.VaultDynamic.Path, strings.Join(secretFields, ", ")))
	}
	username, _ := sec.Data["username"].(string)
	if username != "" && !m.untagged && !strings.Contains(strings.ToLower(username), UsernameTag(req.IssuanceID)) {
		return nil, configError("grant %q: generated username %q does not embed the issuance id %s: give the database connection username_template %s (see docs/DYNAMIC.md)",
			req.Grant.Name, username, req.IssuanceID, UsernameTemplate)
	}

	now := m.now()
	expires := now.Add(time.Duration(sec.LeaseDuration) * time.Second)
	if tokenEnds.Before(expires) {
		expires = tokenEnds // the lease ends with its token
	}
	if !req.Now.IsZero() && expires.After(req.Now.Add(req.TTL)) {
		// Vault counts from its own clock, a round trip after req.Now.
		expires = req.Now.Add(req.TTL)
	}
	fields["lease_id"] = sec.LeaseID
	fields["lease_duration"] = int(expires.Sub(now).Round(time.Second) / time.Second)
	return &broker.Credential{
		AccessToken: secret,
		Fields:      fields,
		Refs: broker.CredentialRefs{
			LeaseID:   sec.LeaseID,
			Username:  username,
			Accessor:  accessor,
			ExpiresAt: expires,
		},
	}, nil
}

// abort revokes the reader token (and so its leases) after a failed mint and
// returns cause; failed cleanups (the token's, and earlier ones passed in
// more) are added to its Err for the log.
func (m *DynamicMinter) abort(ctx context.Context, accessor string, cause error, more ...error) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	var failed []error
	for _, err := range more {
		if err != nil {
			failed = append(failed, fmt.Errorf("cleanup: %w", err))
		}
	}
	if err := revokeTokenAccessor(rctx, m.c, accessor); err != nil {
		failed = append(failed, fmt.Errorf("cleanup: revoking the reader token: %w", err))
	}
	if len(failed) == 0 {
		return cause
	}
	be := broker.AsError(cause)
	be.Err = errors.Join(append([]error{be.Err}, failed...)...)
	return be
}

// Revoke revokes the issuance's lease (synchronously: when it returns, the
// engine has dropped the user) and then its reader token by accessor. A
// lease or token Vault no longer knows (revoked, expired) counts as revoked.
// On a failed lease revocation the token is left alone and the error
// returned, so that the caller retries both.
func (m *DynamicMinter) Revoke(ctx context.Context, is *broker.Issuance) error {
	if is == nil || (is.Refs.LeaseID == "" && is.Refs.Accessor == "") {
		return broker.Errorf(broker.ErrInvalidRequest, "missing_lease", "the issuance has no Vault lease", errors.New("vault revoke: issuance without lease id or accessor"))
	}
	if is.Refs.LeaseID != "" {
		if err := m.revokeLease(ctx, is.Refs.LeaseID); err != nil {
			return err
		}
	}
	if is.Refs.Accessor != "" {
		return revokeTokenAccessor(ctx, m.c, is.Refs.Accessor)
	}
	return nil
}

// revokeLease revokes one lease with sys/leases/revoke (sync by default).
// Vault answers 204 for a lease it does not know.
func (m *DynamicMinter) revokeLease(ctx context.Context, leaseID string) error {
	_, err := m.c.Logical().WriteWithContext(ctx, "sys/leases/revoke", map[string]any{"lease_id": leaseID})
	if err == nil || responseSays(err, 400, "invalid lease", "lease not found") {
		return nil
	}
	return translate("revoke lease", err)
}

// revokeTokenAccessor revokes a token and its children by accessor; an
// accessor Vault no longer knows counts as revoked.
func revokeTokenAccessor(ctx context.Context, c *vaultapi.Client, accessor string) error {
	_, err := c.Logical().WriteWithContext(ctx, "auth/token/revoke-accessor", map[string]any{"accessor": accessor})
	if err == nil || responseSays(err, 400, "token not found", "invalid accessor") {
		return nil
	}
	return translate("revoke accessor", err)
}

// DynamicBrokerPolicy returns the HCL of what the broker's own token needs
// for vault_dynamic grants, on top of BrokerPolicy: revoke leases (and hold
// the reader policies, for create-orphan's subset rule).
func DynamicBrokerPolicy() string {
	return "path \"sys/leases/revoke\" {\n  capabilities = [\"update\"]\n}\n"
}

// ReaderPolicy returns the HCL of a reader policy allowing read on the given
// dynamic-secrets paths (globs allowed, e.g. "database/creds/*").
func ReaderPolicy(paths ...string) string {
	var b strings.Builder
	for _, p := range paths {
		fmt.Fprintf(&b, "path %q {\n  capabilities = [\"read\"]\n}\n", p)
	}
	return b.String()
}
