package vault

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
)

// TokenMinterOptions configure NewTokenMinter.
type TokenMinterOptions struct {
	Client *vaultapi.Client // from NewClient (required)
	// Role, when set, mints through auth/token/create/<Role> instead of
	// auth/token/create-orphan. The role must have orphan=true and
	// allowed_policies covering the grants; see the package documentation.
	Role string
	// Deployment, when set, is added to the token meta as "deployment":
	// the keytrail deployment that minted the token, so that the
	// reconciliation of another deployment sharing this Vault leaves the
	// token alone (see TokenInventoryOptions.Deployment).
	Deployment string
	// Log gets Vault's warnings on token creation (`Policy "x" does not
	// exist`: a grant's policy misspelled or not written, whose tokens get
	// 403 everywhere), each once per grant and warning every 10 minutes;
	// default slog.Default().
	Log *slog.Logger
	Now func() time.Time // default time.Now
}

// TokenMinter mints and revokes Vault tokens for grants of kind vault_token.
//
// Each token is an orphan service token (it survives the broker's own token),
// not renewable, with ttl and explicit_max_ttl both set to the request's TTL
// so nothing can extend it, the grant's policies and num_uses, display name
// keytrail-<workload> (stored by Vault as token-keytrail-<workload>) and meta
// {workload, owner, session_id, issuance_id, grant} (and deployment when
// TokenMinterOptions.Deployment is set), which Vault writes in
// clear into the auth block of every audit entry of every request made with
// the token. A token Vault answers with a longer or renewable lease, or not
// as an orphan (a token role edited since CheckRole), is revoked at once
// and the mint fails.
type TokenMinter struct {
	c          *vaultapi.Client
	path       string
	role       string
	deployment string
	now        func() time.Time
	warn       *warnLog
}

var (
	_ broker.Minter  = (*TokenMinter)(nil)
	_ broker.Revoker = (*TokenMinter)(nil)
)

// NewTokenMinter validates o and returns a TokenMinter.
func NewTokenMinter(o TokenMinterOptions) (*TokenMinter, error) {
	if o.Client == nil {
		return nil, errors.New("vault token minter: client is required")
	}
	path := "auth/token/create-orphan"
	if o.Role != "" {
		if !PlainRoleName(o.Role) {
			return nil, fmt.Errorf("vault token minter: role %q: must be a plain name", o.Role)
		}
		path = "auth/token/create/" + url.PathEscape(o.Role)
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	return &TokenMinter{c: o.Client, path: path, role: o.Role, deployment: o.Deployment, now: now, warn: newWarnLog(o.Log, now)}, nil
}

// CheckRole reads the token role the minter creates tokens through (none
// set: nothing to check) and fails unless it exists, has orphan=true, can
// make service tokens and sets no token_num_uses: a token created through a role without orphan
// is a child of the broker's own token, and Vault revokes it when that
// token is revoked or expires (at the broker's next login), long before its
// TTL; a role with token_type=batch makes batch tokens whatever the request
// asks, which have no accessor, so every mint through it would fail; a role
// with token_num_uses caps every token's uses whatever the grant says (and
// a one-use reader token cannot hand out a lease). Reading the role needs
// read on auth/token/roles/<role> (MinimumBrokerPolicy with TokenRole has
// it).
func (m *TokenMinter) CheckRole(ctx context.Context) error {
	if m.role == "" {
		return nil
	}
	const op = "read token role"
	sec, err := m.c.Logical().ReadWithContext(ctx, "auth/token/roles/"+url.PathEscape(m.role))
	if err != nil {
		return translate(op, err)
	}
	if sec == nil || sec.Data == nil {
		return fmt.Errorf("vault token role %q does not exist (auth/token/roles/%s)", m.role, m.role)
	}
	if orphan, _ := sec.Data["orphan"].(bool); !orphan {
		return fmt.Errorf("vault token role %q must set orphan=true: tokens created through it would be children of the broker's own token and be revoked with it", m.role)
	}
	if n, _ := asInt(sec.Data["token_num_uses"]); n > 0 {
		return fmt.Errorf("vault token role %q sets token_num_uses=%d: Vault caps every token made through it at %d uses whatever the grant's num_uses says (0 becomes %[2]d), and refuses every vault_dynamic read through a one-use reader token (\"token had one use left, so leased credentials were immediately revoked\"); set uses in the grants (vault_token.num_uses) and token_num_uses=0 on the role", m.role, n, n)
	}
	if tt, _ := sec.Data["token_type"].(string); tt == "batch" {
		return fmt.Errorf("vault token role %q has token_type=batch: Vault makes batch tokens through it whatever keytrail asks, and a batch token has no accessor to record or revoke it by; use service or default-batch", m.role)
	}
	return nil
}

// tokenCreateBody is the body of the create call.
func tokenCreateBody(req broker.MintRequest, secs int64, deployment string) map[string]any {
	g := req.Grant.VaultToken
	ttl := strconv.FormatInt(secs, 10) + "s"
	return map[string]any{
		"type":             "service", // batch tokens have no accessor to revoke by
		"policies":         slices.Clone(g.Policies),
		"ttl":              ttl,
		"explicit_max_ttl": ttl,
		"renewable":        false,
		"num_uses":         g.NumUses,
		"display_name":     "keytrail-" + req.Workload,
		"meta":             issuanceMeta(req, deployment),
	}
}

// Mint creates one token. It never retries: on a timeout after Vault created
// the token, the token is unrecorded but bounded by explicit_max_ttl and
// traceable through its meta (issuance_id) in Vault's audit log.
func (m *TokenMinter) Mint(ctx context.Context, req broker.MintRequest) (*broker.Credential, error) {
	g := req.Grant.VaultToken
	switch {
	case req.Grant.Kind != broker.KindVaultToken || g == nil:
		return nil, configError("grant %q of kind %q is not a vault_token grant", req.Grant.Name, req.Grant.Kind)
	case len(g.Policies) == 0:
		// Vault would let the token inherit the broker token's policies.
		return nil, configError("grant %q lists no policies", req.Grant.Name)
	case slices.ContainsFunc(g.Policies, func(p string) bool { return strings.EqualFold(strings.TrimSpace(p), "root") }):
		return nil, configError("grant %q lists the root policy", req.Grant.Name)
	case g.NumUses < 0:
		return nil, configError("grant %q: negative num_uses", req.Grant.Name)
	case req.IssuanceID == "" || req.Workload == "":
		return nil, configError("mint request without issuance id or workload")
	}
	secs := int64(req.TTL / time.Second)
	if secs < 1 {
		return nil, broker.Errorf(broker.ErrInvalidRequest, "ttl_too_short", "the requested ttl is too short", fmt.Errorf("vault token ttl %v < 1s", req.TTL))
	}

	const op = "create token"
	sec, err := m.c.Logical().WriteWithContext(ctx, m.path, tokenCreateBody(req, secs, m.deployment))
	if err != nil {
		return nil, translate(op, err)
	}
	if sec != nil {
		m.warn.note(op, req.Grant.Name, req.IssuanceID, sec.Warnings)
	}
	if sec == nil || sec.Auth == nil || sec.Auth.ClientToken == "" || sec.Auth.Accessor == "" {
		return nil, badResponse(op, "no auth block with client token and accessor")
	}
	a := sec.Auth
	lease := time.Duration(a.LeaseDuration) * time.Second
	if a.LeaseDuration <= 0 || a.LeaseDuration > int(secs) || a.Renewable {
		// Never hand out a token that outlives the grant: take it back,
		// even when the caller has gone away meanwhile.
		return nil, m.takeBack(ctx, a.Accessor, ReasonBadResponse, retryOutage,
			fmt.Errorf("vault %s: token lease %ds (renewable=%v) does not fit ttl %ds", op, a.LeaseDuration, a.Renewable, secs))
	}
	if !a.Orphan {
		// A token role edited after CheckRole (orphan=false) makes
		// children of the broker's own token, which Vault revokes with
		// it (at its expiry, at the next login) long before their TTL.
		return nil, m.takeBack(ctx, a.Accessor, ReasonConfig, retryMisconfig,
			fmt.Errorf("vault %s: %s made a token that is not an orphan: it would be revoked with the broker's own token (does the token role still set orphan=true?)", op, m.path))
	}
	expires := m.now().Add(lease)
	if !req.Now.IsZero() && expires.After(req.Now.Add(req.TTL)) {
		// Vault counts from its own clock, a round trip after req.Now.
		expires = req.Now.Add(req.TTL)
	}
	pols := a.TokenPolicies
	if len(pols) == 0 {
		pols = a.Policies
	}
	return &broker.Credential{
		AccessToken: a.ClientToken,
		Fields: map[string]any{
			"accessor":       a.Accessor,
			"policies":       slices.Clone(pols),
			"lease_duration": a.LeaseDuration,
		},
		Refs: broker.CredentialRefs{Accessor: a.Accessor, ExpiresAt: expires},
	}, nil
}

// takeBack revokes a token Mint will not hand out, even when the caller
// has gone away meanwhile, and returns cause as an ErrUnavailable of the
// given reason, saying whether the token was revoked.
func (m *TokenMinter) takeBack(ctx context.Context, accessor, reason string, retry time.Duration, cause error) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	if rerr := m.revokeAccessor(rctx, accessor); rerr != nil {
		cause = fmt.Errorf("%w; taking it back failed, it stays valid: %w", cause, rerr)
	} else {
		cause = fmt.Errorf("%w; the token was revoked", cause)
	}
	return broker.Unavailable(reason, retry, cause)
}

// Revoke revokes the issuance's token by its accessor, with its child
// tokens. An accessor Vault no longer knows (revoked, expired) counts as
// revoked.
func (m *TokenMinter) Revoke(ctx context.Context, is *broker.Issuance) error {
	if is == nil || is.Refs.Accessor == "" {
		return broker.Errorf(broker.ErrInvalidRequest, "missing_accessor", "the issuance has no Vault token accessor", errors.New("vault revoke: issuance without accessor"))
	}
	return m.revokeAccessor(ctx, is.Refs.Accessor)
}

func (m *TokenMinter) revokeAccessor(ctx context.Context, accessor string) error {
	_, err := m.c.Logical().WriteWithContext(ctx, "auth/token/revoke-accessor", map[string]any{"accessor": accessor})
	if err == nil || responseSays(err, 400, "token not found", "invalid accessor") {
		return nil
	}
	return translate("revoke accessor", err)
}

// BrokerPolicy returns the HCL of a least-privilege Vault policy for the
// broker's own token: mint orphan tokens, revoke them by accessor, and read
// and sign with the named transit keys under mount (default "transit").
// With create-orphan and no sudo, the broker token must also hold the
// policies its vault_token grants hand out (Vault's subset rule).
func BrokerPolicy(mount string, transitKeys ...string) string {
	return brokerPolicy("", mount, transitKeys...)
}

// brokerPolicy is BrokerPolicy, minting through the token role tokenRole
// when it is set (create through the role, read the role for CheckRole).
func brokerPolicy(tokenRole, mount string, transitKeys ...string) string {
	if mount == "" {
		mount = "transit"
	}
	var b strings.Builder
	if tokenRole != "" {
		fmt.Fprintf(&b, "path %q {\n  capabilities = [\"update\"]\n}\n", "auth/token/create/"+tokenRole)
		fmt.Fprintf(&b, "path %q {\n  capabilities = [\"read\"]\n}\n", "auth/token/roles/"+tokenRole)
	} else {
		b.WriteString("path \"auth/token/create-orphan\" {\n  capabilities = [\"update\"]\n}\n")
	}
	b.WriteString("path \"auth/token/revoke-accessor\" {\n  capabilities = [\"update\"]\n}\n")
	for _, k := range transitKeys {
		fmt.Fprintf(&b, "path %q {\n  capabilities = [\"read\"]\n}\n", mount+"/keys/"+k)
		fmt.Fprintf(&b, "path %q {\n  capabilities = [\"update\"]\n}\n", mount+"/sign/"+k)
	}
	return b.String()
}

// issuanceMeta is the token meta every keytrail-minted Vault token carries
// (SPEC "Audit log"), so each Vault audit entry made with it names its
// issuance, and, when deployment is set, the keytrail deployment that
// minted it (MetaDeployment).
func issuanceMeta(req broker.MintRequest, deployment string) map[string]string {
	m := map[string]string{
		"workload":    req.Workload,
		"owner":       req.Owner,
		"session_id":  req.SessionID,
		"issuance_id": req.IssuanceID,
		"grant":       req.Grant.Name,
	}
	if deployment != "" {
		m[MetaDeployment] = deployment
	}
	return m
}

// MetaDeployment is the token meta key naming the keytrail deployment that
// minted a token. A token without it was minted before deployments were
// tagged (or by a minter without one).
const MetaDeployment = "deployment"
