package vault

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/policies"
)

// Defaults of KVOptions.
const (
	DefaultKVTTL     = 30 * time.Second
	DefaultKVTimeout = 5 * time.Second
)

// ReasonSecretNotFound is the Reason of the broker.ErrNotFound errors of
// KVSecrets: the KV path, its current version or the field does not exist.
const ReasonSecretNotFound = "secret_not_found"

// KVOptions configure NewKVSecrets.
type KVOptions struct {
	Client *vaultapi.Client // from NewClient (required)
	// TTL is how long a value read from Vault is served from memory
	// (default DefaultKVTTL; a rotated secret is picked up within TTL).
	TTL time.Duration
	// Timeout bounds one Vault read (default DefaultKVTimeout). The read runs
	// on its own deadline so that callers that give up do not fail the
	// others waiting for the same value.
	Timeout time.Duration
	Now     func() time.Time // default time.Now
}

// KVSecrets is the broker.SecretSource of proxy grants: it reads one field
// of a Vault KV v2 secret. ref.VaultKV is the full API path of the read
// ("secret/data/upstreams/stripe"), ref.Field the key inside data.data.
//
// Values are cached per (path, field) for TTL; when an entry has expired the
// next caller refreshes it, and concurrent callers of the same entry share one
// Vault read. Errors are not cached. A value is never put in an error or a
// log line: errors name the path and field only.
//
// Errors: broker.ErrNotFound (Reason ReasonSecretNotFound) when the path, its
// current version (deleted or destroyed) or the field does not exist;
// broker.ErrUnavailable for everything else (Vault down, sealed, denied, a
// field that is not a non-empty string), with the Reasons of this package.
//
// The broker's Vault token needs the read capability on each path.
type KVSecrets struct {
	c       *vaultapi.Client
	ttl     time.Duration
	timeout time.Duration
	now     func() time.Time

	mu      sync.Mutex
	entries map[kvKey]*kvEntry
}

var _ broker.CachedSecretSource = (*KVSecrets)(nil)

type kvKey struct{ path, field string }

// kvEntry is one cached value, or a read in flight (done not yet closed).
type kvEntry struct {
	done    chan struct{} // closed when value/err are set
	value   string
	err     error
	expires time.Time
}

// maxKVEntries bounds the cache; proxy grants are few, so this only guards
// against a policy with an unreasonable number of secrets.
const maxKVEntries = 4096

// NewKVSecrets validates o and returns a KVSecrets.
func NewKVSecrets(o KVOptions) (*KVSecrets, error) {
	var errs []error
	if o.Client == nil {
		errs = append(errs, errors.New("vault kv: client is required"))
	}
	if o.TTL < 0 {
		errs = append(errs, errors.New("vault kv: ttl must not be negative"))
	}
	if o.Timeout < 0 {
		errs = append(errs, errors.New("vault kv: timeout must not be negative"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	if o.TTL == 0 {
		o.TTL = DefaultKVTTL
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultKVTimeout
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return &KVSecrets{c: o.Client, ttl: o.TTL, timeout: o.Timeout, now: o.Now, entries: map[kvKey]*kvEntry{}}, nil
}

// Secret implements broker.SecretSource.
func (k *KVSecrets) Secret(ctx context.Context, ref policies.ProxySecret) (string, error) {
	if ref.VaultKV == "" || ref.Field == "" || strings.HasPrefix(ref.VaultKV, "/") || strings.ContainsAny(ref.VaultKV, "?#") {
		return "", configError("kv secret reference needs a relative API path and a field")
	}
	key := kvKey{ref.VaultKV, ref.Field}
	k.mu.Lock()
	e := k.entries[key]
	if e != nil {
		select {
		case <-e.done:
			if e.err != nil || !k.now().Before(e.expires) {
				e = nil // failed or expired: refresh below
			}
		default: // in flight: wait for it
		}
	}
	if e == nil {
		e = &kvEntry{done: make(chan struct{})}
		k.evictLocked()
		k.entries[key] = e
		go k.fill(ctx, key, e)
	}
	k.mu.Unlock()

	select {
	case <-e.done:
		return e.value, e.err
	case <-ctx.Done():
		return "", broker.Unavailable(ReasonUnavailable, retryOutage, fmt.Errorf("vault kv read %s: %w", key.path, ctx.Err()))
	}
}

// CachedSecret implements broker.CachedSecretSource: the value of a read
// that succeeded within TTL, as Secret returns it, or ok false (no entry, a
// read in flight, failed or expired) when Secret must be called.
func (k *KVSecrets) CachedSecret(ref policies.ProxySecret) (string, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e := k.entries[kvKey{ref.VaultKV, ref.Field}]
	if e == nil {
		return "", false
	}
	select {
	case <-e.done:
	default:
		return "", false // in flight
	}
	if e.err != nil || !k.now().Before(e.expires) {
		return "", false
	}
	return e.value, true
}

// fill reads one entry on its own deadline (detached from the first caller's
// cancellation) and publishes the result.
func (k *KVSecrets) fill(ctx context.Context, key kvKey, e *kvEntry) {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), k.timeout)
	defer cancel()
	v, err := k.read(rctx, key)
	e.value, e.err = v, err
	e.expires = k.now().Add(k.ttl)
	if err != nil {
		k.mu.Lock()
		if k.entries[key] == e {
			delete(k.entries, key) // errors are not cached
		}
		k.mu.Unlock()
	}
	close(e.done)
}

// evictLocked drops expired entries when the cache is full, and everything
// when that is not enough.
func (k *KVSecrets) evictLocked() {
	if len(k.entries) < maxKVEntries {
		return
	}
	now := k.now()
	for key, e := range k.entries {
		select {
		case <-e.done:
			if !now.Before(e.expires) {
				delete(k.entries, key)
			}
		default:
		}
	}
	if len(k.entries) >= maxKVEntries {
		clear(k.entries)
	}
}

// read fetches one field from Vault.
func (k *KVSecrets) read(ctx context.Context, key kvKey) (string, error) {
	op := "kv read " + key.path
	sec, err := k.c.Logical().ReadWithContext(ctx, key.path)
	if err != nil {
		if statusOf(err) == 404 {
			return "", notFound(key, "path")
		}
		return "", translate(op, err)
	}
	// vault/api answers (nil, nil) on a 404 without a body, and a secret
	// with data.data null on a 404 for a deleted or destroyed version.
	if sec == nil || sec.Data == nil {
		return "", notFound(key, "path")
	}
	raw, ok := sec.Data["data"]
	if !ok {
		return "", badResponse(op, "no data.data in the answer (is the path a KV v2 data/ path?)")
	}
	if raw == nil {
		return "", notFound(key, "current version")
	}
	data, ok := raw.(map[string]any)
	if !ok {
		return "", badResponse(op, "data.data is not an object")
	}
	v, ok := data[key.field]
	if !ok || v == nil {
		return "", notFound(key, "field")
	}
	s, ok := v.(string)
	if !ok {
		return "", configError("kv %s: field %q is not a string (%T)", key.path, key.field, v)
	}
	if s == "" {
		return "", configError("kv %s: field %q is empty", key.path, key.field)
	}
	return s, nil
}

func notFound(key kvKey, what string) error {
	return broker.Errorf(broker.ErrNotFound, ReasonSecretNotFound, "the upstream secret was not found",
		fmt.Errorf("vault kv %s field %q: %s does not exist", key.path, key.field, what))
}
