package vault

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
)

// DefaultPublicKeysTTL is how long TransitKeys caches the key list.
const DefaultPublicKeysTTL = 30 * time.Second

// TransitKeysOptions configure NewTransitKeys.
type TransitKeysOptions struct {
	Client       *vaultapi.Client // required
	TransitMount string           // default "transit"
	Keys         []string         // transit key names (required, at least one)
	CacheTTL     time.Duration    // default DefaultPublicKeysTTL
	// MaxStale is how long the last good list is still served while Vault
	// cannot be read; default 10 × CacheTTL.
	MaxStale time.Duration
	Now      func() time.Time
}

// TransitKeys lists the public keys of the configured transit keys: every
// version from min_decryption_version to latest, as broker.PublicKey with KID
// "<name>:<version>" and Alg ES256 or EdDSA. Only public keys ever leave
// Vault.
type TransitKeys struct {
	c        *vaultapi.Client
	mount    string
	names    []string
	ttl      time.Duration
	maxStale time.Duration
	now      func() time.Time

	// mu is held while Vault is read, so concurrent callers wait for one
	// refresh instead of each starting their own.
	mu     sync.Mutex
	cached []broker.PublicKey
	at     time.Time
}

var _ broker.PublicKeySource = (*TransitKeys)(nil)

// NewTransitKeys validates o and returns a TransitKeys.
func NewTransitKeys(o TransitKeysOptions) (*TransitKeys, error) {
	var errs []error
	if o.Client == nil {
		errs = append(errs, errors.New("vault transit keys: client is required"))
	}
	mount := o.TransitMount
	if mount == "" {
		mount = "transit"
	}
	if !validName(mount) {
		errs = append(errs, fmt.Errorf("vault transit keys: bad transit mount %q", mount))
	}
	if len(o.Keys) == 0 {
		errs = append(errs, errors.New("vault transit keys: at least one key name is required"))
	}
	for i, k := range o.Keys {
		if !validName(k) || strings.Contains(k, "/") {
			errs = append(errs, fmt.Errorf("vault transit keys: keys[%d]: bad name %q", i, k))
		}
	}
	if o.CacheTTL < 0 || o.MaxStale < 0 {
		errs = append(errs, errors.New("vault transit keys: durations must not be negative"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	ttl := o.CacheTTL
	if ttl == 0 {
		ttl = DefaultPublicKeysTTL
	}
	stale := o.MaxStale
	if stale == 0 {
		stale = 10 * ttl
	}
	now := o.Now
	if now == nil {
		now = time.Now
	}
	names := slices.Clone(o.Keys)
	slices.Sort(names)
	names = slices.Compact(names)
	return &TransitKeys{c: o.Client, mount: mount, names: names, ttl: ttl, maxStale: stale, now: now}, nil
}

// PublicKeys returns the keys, sorted by name then version. When Vault cannot
// be read it serves the last good list for up to MaxStale, then fails with
// ErrUnavailable.
func (t *TransitKeys) PublicKeys(ctx context.Context) ([]broker.PublicKey, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	age := t.now().Sub(t.at)
	if t.cached != nil && age < t.ttl {
		return slices.Clone(t.cached), nil
	}
	var out []broker.PublicKey
	for _, name := range t.names {
		k, err := readTransitKey(ctx, t.c, t.mount, name)
		if err != nil {
			if t.cached != nil && age < t.maxStale {
				return slices.Clone(t.cached), nil
			}
			return nil, err
		}
		alg := k.method().Alg()
		for v := k.MinDecryption; v <= k.Latest; v++ {
			out = append(out, broker.PublicKey{KID: kid(name, v), Alg: alg, Key: k.Public[v]})
		}
	}
	t.cached, t.at = out, t.now()
	return slices.Clone(out), nil
}
