package vault

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
)

// TokenInventoryOptions configure NewTokenInventory.
type TokenInventoryOptions struct {
	Client *vaultapi.Client // from NewClient (required)
	// Concurrency of the per-accessor lookups (default 8).
	Concurrency int
	// Deployment, when set, is this broker's deployment (the minters'
	// TokenMinterOptions.Deployment): a token whose meta names another
	// deployment is not listed (another keytrail deployment sharing this
	// Vault minted it, and only its reconciliation may judge it), like
	// another Vault user's. A token without deployment meta (minted
	// before deployments were tagged) is listed as before. Empty: every
	// keytrail token is listed, whatever its deployment.
	Deployment string
	Now        func() time.Time // default time.Now
}

// TokenInventory lists the Vault tokens keytrail made (meta with an
// issuance_id and a workload, and keytrail's display name; see
// parseTokenLookup) and revokes them by accessor: the backend half of the
// broker's reconciliation (broker.Reconciler). A DynamicMinter reader token
// is listed with kind vault_dynamic (the credential it holds), any other
// with vault_token.
//
// Listing needs `LIST auth/token/accessors`, which Vault guards with sudo,
// and `update` on auth/token/lookup-accessor; InventoryPolicy returns that
// policy. Revocation uses auth/token/revoke-accessor like TokenMinter.
type TokenInventory struct {
	c           *vaultapi.Client
	concurrency int
	deployment  string
	now         func() time.Time

	// untagged holds the accessors looked up before whose tokens are not
	// this deployment's (no keytrail meta, or another display name: other
	// Vault users' tokens; another deployment's). A token's meta and
	// display name never change, so
	// they are not looked up again while they live; each
	// listing keeps only the accessors it still sees.
	mu       sync.Mutex
	untagged map[string]struct{}
}

var _ broker.TaggedSource = (*TokenInventory)(nil)

// NewTokenInventory validates o and returns a TokenInventory.
func NewTokenInventory(o TokenInventoryOptions) (*TokenInventory, error) {
	if o.Client == nil {
		return nil, errors.New("vault token inventory: client is required")
	}
	if o.Concurrency < 0 {
		return nil, errors.New("vault token inventory: concurrency must not be negative")
	}
	if o.Concurrency == 0 {
		o.Concurrency = 8
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &TokenInventory{c: o.Client, concurrency: o.Concurrency, deployment: o.Deployment, now: o.Now, untagged: map[string]struct{}{}}, nil
}

// InventoryPolicy is the HCL a broker token needs, on top of BrokerPolicy,
// for reconciliation. Listing accessors requires sudo.
func InventoryPolicy() string {
	return "path \"auth/token/accessors\" {\n  capabilities = [\"list\", \"sudo\"]\n}\n" +
		"path \"auth/token/lookup-accessor\" {\n  capabilities = [\"update\"]\n}\n"
}

// skipBatch is how many accessors ListTagged asks skip about at once.
const skipBatch = 1024

// ListTagged lists every token accessor and looks up each one that skip
// does not claim (asked skipBatch accessors at a time) and that is not
// known to be untagged, returning the tokens keytrail made (see
// parseTokenLookup). An accessor that disappears between the listing and its
// lookup (expired, revoked) is left out; any other lookup failure fails the
// whole listing.
func (ti *TokenInventory) ListTagged(ctx context.Context, skip func(accessors []string) []bool) ([]broker.TaggedCredential, error) {
	const op = "list token accessors"
	sec, err := ti.c.Logical().ListWithContext(ctx, "auth/token/accessors")
	if err != nil {
		return nil, translate(op, err)
	}
	var accessors []string
	if sec != nil && sec.Data != nil {
		keys, ok := sec.Data["keys"].([]any)
		if !ok && sec.Data["keys"] != nil {
			return nil, badResponse(op, "keys is not a list")
		}
		for _, k := range keys {
			s, ok := k.(string)
			if !ok {
				return nil, badResponse(op, "a key is not a string")
			}
			accessors = append(accessors, s)
		}
	}

	ti.mu.Lock()
	untagged := make(map[string]struct{}, len(ti.untagged))
	for _, a := range accessors {
		if _, ok := ti.untagged[a]; ok {
			untagged[a] = struct{}{}
		}
	}
	ti.untagged = untagged // forget accessors no longer listed
	ti.mu.Unlock()

	skipped := make([]bool, len(accessors))
	if skip != nil {
		var ask []string
		var at []int // ask[j] is accessors[at[j]]
		for i, a := range accessors {
			if _, ok := untagged[a]; !ok {
				ask = append(ask, a)
				at = append(at, i)
			}
		}
		for start := 0; start < len(ask); start += skipBatch {
			if err := ctx.Err(); err != nil {
				return nil, translate(op, err)
			}
			end := min(start+skipBatch, len(ask))
			for j, yes := range skip(ask[start:end]) {
				if yes && start+j < end {
					skipped[at[start+j]] = true
				}
			}
		}
	}

	type result struct {
		cred     *broker.TaggedCredential
		untagged bool
		looked   bool // false: skipped, no lookup made
		err      error
	}
	results := make([]result, len(accessors))
	work := make(chan int)
	var wg sync.WaitGroup
	for range min(ti.concurrency, max(1, len(accessors))) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				a := accessors[i]
				if _, ok := untagged[a]; ok || skipped[i] {
					continue
				}
				c, unt, err := ti.lookup(ctx, a)
				results[i] = result{cred: c, untagged: unt, looked: true, err: err}
			}
		}()
	}
	for i := range accessors {
		work <- i
	}
	close(work)
	wg.Wait()

	// Vault answers 403 to the lookup of a token it is revoking (and of a
	// just-expired one): such an accessor is gone. A broker token that may
	// not look up at all gets 403 for every accessor, its own included,
	// and that fails the listing.
	denied, looked := 0, 0
	for _, r := range results {
		if r.looked {
			looked++
		}
		if statusOf(r.err) == 403 {
			denied++
		}
	}
	var out []broker.TaggedCredential
	for _, r := range results {
		if statusOf(r.err) == 403 && denied < looked {
			continue
		}
		if r.err != nil {
			return nil, translate("lookup accessor", r.err)
		}
		if r.cred != nil {
			out = append(out, *r.cred)
		}
	}
	ti.mu.Lock() // untagged may be read by a concurrent listing's copy
	for i, r := range results {
		if r.untagged {
			untagged[accessors[i]] = struct{}{}
		}
	}
	ti.mu.Unlock()
	return out, nil
}

// lookup returns the token's tags; nil and untagged for a token that is
// not keytrail's (meta or display name); nil for one that no longer exists.
func (ti *TokenInventory) lookup(ctx context.Context, accessor string) (c *broker.TaggedCredential, untagged bool, err error) {
	sec, err := ti.c.Logical().WriteWithContext(ctx, "auth/token/lookup-accessor", map[string]any{"accessor": accessor})
	if responseSays(err, 400, "invalid accessor", "token not found", "bad token") {
		return nil, false, nil
	}
	if statusOf(err) == 403 {
		return nil, false, err // sorted out by ListTagged
	}
	if err != nil {
		return nil, false, translate("lookup accessor", err)
	}
	if sec == nil || sec.Data == nil {
		return nil, false, nil
	}
	c, err = parseTokenLookup(accessor, sec.Data, ti.now(), ti.deployment)
	return c, c == nil && err == nil, err
}

// storedDisplayName is the display name Vault stores for a token created
// with display_name name (vault/token_store.go: "token-" prefixed,
// sanitized, without a trailing "-").
func storedDisplayName(name string) string {
	return strings.TrimSuffix(displayNameSanitize.ReplaceAllString("token-"+name, "-"), "-")
}

// parseTokenLookup reads the data of a lookup-accessor answer. A token is
// keytrail's only when its meta names an issuance and a workload and its
// display name is the one keytrail gives such a token: "keytrail-<workload>"
// (TokenMinter) or "<issuance id>-<workload>" (a DynamicMinter reader
// token), as Vault stores them. Any other token, whatever its meta, is
// another Vault user's and answers nil: the reconciliation never revokes
// it. So does a token whose meta names a deployment other than deployment
// (when that is set): another keytrail deployment's, which this one's
// records cannot explain. A token without deployment meta is this
// deployment's (minted before the tag existed).
//
// CreatedAt is on the clock of now (the broker's): Vault's creation_time is
// on Vault's, and a Vault clock behind the broker's would make a token
// minted a moment ago look older than the reconciliation's grace period,
// to be revoked before the exchange that minted it recorded it. Vault's own
// count of the token's age (creation_ttl - ttl, both Vault's, less a
// second for ttl's rounding) taken back from now gives a second creation
// time; the later of the two is kept, so a token is never taken for older
// than either says.
func parseTokenLookup(accessor string, d map[string]any, now time.Time, deployment string) (*broker.TaggedCredential, error) {
	meta, _ := d["meta"].(map[string]any)
	str := func(k string) string { s, _ := meta[k].(string); return s }
	if str("issuance_id") == "" || str("workload") == "" {
		return nil, nil
	}
	if dep := str(MetaDeployment); deployment != "" && dep != "" && dep != deployment {
		return nil, nil
	}
	c := &broker.TaggedCredential{
		Kind: broker.KindVaultToken, Ref: accessor, IssuanceID: str("issuance_id"),
		Workload: str("workload"), Owner: str("owner"), SessionID: str("session_id"), Grant: str("grant"),
	}
	switch dn, _ := d["display_name"].(string); dn {
	case storedDisplayName("keytrail-" + c.Workload):
	case storedDisplayName(c.IssuanceID + "-" + c.Workload):
		// A DynamicMinter reader token: it holds the lease of a
		// vault_dynamic credential, and its orphan_revoked event says so.
		c.Kind = broker.KindVaultDynamic
	default:
		return nil, nil
	}
	if a, ok := d["accessor"].(string); ok && a != "" && a != accessor {
		return nil, badResponse("lookup accessor", "answer names another accessor")
	}
	if ct, ok := d["creation_time"]; ok && ct != nil {
		secs, err := unixSeconds(ct)
		if err != nil {
			return nil, badResponse("lookup accessor", "creation_time: "+err.Error())
		}
		c.CreatedAt = time.Unix(secs, 0)
	}
	if cttl, ttl := d["creation_ttl"], d["ttl"]; cttl != nil && ttl != nil {
		created, err := unixSeconds(cttl)
		if err != nil {
			return nil, badResponse("lookup accessor", "creation_ttl: "+err.Error())
		}
		left, err := unixSeconds(ttl)
		if err != nil {
			return nil, badResponse("lookup accessor", "ttl: "+err.Error())
		}
		if created > 0 && left > 0 {
			age := time.Duration(max(created-left-1, 0)) * time.Second
			if at := now.Add(-age); at.After(c.CreatedAt) {
				c.CreatedAt = at
			}
		}
	}
	if et, ok := d["expire_time"].(string); ok && et != "" {
		t, err := time.Parse(time.RFC3339Nano, et)
		if err != nil {
			return nil, badResponse("lookup accessor", "expire_time is not RFC 3339")
		}
		c.ExpiresAt = t
	}
	return c, nil
}

func unixSeconds(v any) (int64, error) {
	switch n := v.(type) {
	case json.Number:
		return n.Int64()
	case float64:
		return int64(n), nil
	case int64:
		return n, nil
	case int:
		return int64(n), nil
	case string:
		return strconv.ParseInt(strings.TrimSpace(n), 10, 64)
	default:
		return 0, fmt.Errorf("unexpected type %T", v)
	}
}

// RevokeTagged revokes the token by accessor. A token that is already gone
// (it expired, or someone else revoked it, since the listing) answers an
// error wrapping broker.ErrNotFound: nothing was revoked. Vault 1.10 and
// later answer 200 with the warning "No token found with this accessor"
// for it (revoke-accessor is idempotent since hashicorp/vault#13661, and a
// revoked token answers 204 with no body); older ones answer 400
// "invalid accessor" or "token not found".
func (ti *TokenInventory) RevokeTagged(ctx context.Context, c broker.TaggedCredential) error {
	if c.Ref == "" {
		return broker.Errorf(broker.ErrInvalidRequest, "missing_accessor", "the credential has no Vault token accessor", errors.New("vault revoke: no accessor"))
	}
	sec, err := ti.c.Logical().WriteWithContext(ctx, "auth/token/revoke-accessor", map[string]any{"accessor": c.Ref})
	gone := responseSays(err, 400, "token not found", "invalid accessor")
	if err == nil && sec != nil {
		for _, w := range sec.Warnings {
			if strings.Contains(strings.ToLower(w), "no token found") {
				gone = true
			}
		}
	}
	if gone {
		return broker.Errorf(broker.ErrNotFound, "token_gone", "the Vault token no longer exists", errors.New("vault revoke accessor: no token found with this accessor"))
	}
	return translate("revoke accessor", err)
}
