package vault

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	vaultapi "github.com/hashicorp/vault/api"

	"github.com/keytrail/keytrail/broker"
)

// DefaultPublicKeysTTL is how long TransitKeys caches the key list.
const DefaultPublicKeysTTL = 30 * time.Second

// DefaultPublicKeysRetry is how long TransitKeys serves the last list after a
// failed read before it asks Vault again.
const DefaultPublicKeysRetry = 5 * time.Second

// TransitKeysOptions configure NewTransitKeys.
type TransitKeysOptions struct {
	Client       *vaultapi.Client // required
	TransitMount string           // default "transit"
	Keys         []string         // transit key names (required, at least one)
	CacheTTL     time.Duration    // default DefaultPublicKeysTTL
	// MaxStale is how long a key's last good versions are still served
	// while Vault cannot be read; default 10 × CacheTTL.
	MaxStale time.Duration
	// Retry is how long after a failed read the last list is served
	// without asking Vault again; default DefaultPublicKeysRetry (at most
	// CacheTTL).
	Retry time.Duration
	// Log gets a warning for each key left out of the list because Vault
	// does not have it, denies reading it or holds a type the broker
	// cannot use, and Vault's warnings on the reads of a key (each once
	// per key and warning every 10 minutes); default slog.Default().
	Log *slog.Logger
	Now func() time.Time
}

// TransitKeys lists the public keys of the configured transit keys: every
// version from min_decryption_version to latest, as broker.PublicKey with KID
// "<name>:<version>" and Alg ES256 or EdDSA. Only public keys ever leave
// Vault.
//
// One key cannot take the others down: a key Vault does not have (a typo in
// a jwt grant), denies reading or holds in an unsupported type is left out
// and logged, while its last good versions, if any, are kept for MaxStale
// (JWTs they signed must still verify). A key that cannot be read because
// Vault is down, sealed or slow keeps its last good versions the same way;
// with none, the call fails.
type TransitKeys struct {
	c        *vaultapi.Client
	mount    string
	names    []string
	ttl      time.Duration
	maxStale time.Duration
	retry    time.Duration
	log      *slog.Logger
	warn     *warnLog // Vault's warnings on key reads
	now      func() time.Time

	// refresh is held while Vault is read (one refresh at a time): callers
	// with nothing cached wait for it, the others are served the last list.
	refresh chan struct{}

	mu      sync.Mutex
	known   map[string]knownKey // each key's last good versions
	cached  []broker.PublicKey  // the list last built
	at      time.Time           // when every key was last read (or found absent)
	oldest  time.Time           // the oldest read among cached's keys
	nextTry time.Time           // after a failed read: not before this
	lastErr error               // that read's error
}

type knownKey struct {
	keys []broker.PublicKey
	at   time.Time
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
	if o.CacheTTL < 0 || o.MaxStale < 0 || o.Retry < 0 {
		errs = append(errs, errors.New("vault transit keys: durations must not be negative"))
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	ttl := cmp.Or(o.CacheTTL, DefaultPublicKeysTTL)
	stale := cmp.Or(o.MaxStale, 10*ttl)
	retry := min(cmp.Or(o.Retry, DefaultPublicKeysRetry), ttl)
	now := o.Now
	if now == nil {
		now = time.Now
	}
	names := slices.Clone(o.Keys)
	slices.Sort(names)
	names = slices.Compact(names)
	return &TransitKeys{
		c: o.Client, mount: mount, names: names, ttl: ttl, maxStale: stale, retry: retry,
		log: cmp.Or(o.Log, slog.Default()), warn: newWarnLog(o.Log, now), now: now,
		refresh: make(chan struct{}, 1), known: map[string]knownKey{},
	}, nil
}

// PublicKeys returns the keys, sorted by name then version. The list is read
// from Vault at most every CacheTTL; after a failed read, the last list is
// served for Retry before Vault is asked again, and while another caller
// reads Vault. A read cut short because ctx was cancelled is not a failed
// read: it fails this call only. It fails with ErrUnavailable only when a key Vault cannot
// serve now has no versions younger than MaxStale to fall back on.
func (t *TransitKeys) PublicKeys(ctx context.Context) ([]broker.PublicKey, error) {
	if keys, err := t.cachedList(false); keys != nil || err != nil {
		return keys, err
	}
	select {
	case t.refresh <- struct{}{}:
	default:
		// Someone is reading Vault: serve what there is rather than queue
		// behind a slow Vault.
		if keys, err := t.cachedList(true); keys != nil || err != nil {
			return keys, err
		}
		select {
		case t.refresh <- struct{}{}:
		case <-ctx.Done():
			return nil, broker.Unavailable(ReasonUnavailable, retryOutage, fmt.Errorf("vault read transit keys: %w", ctx.Err()))
		}
	}
	defer func() { <-t.refresh }()
	if keys, err := t.cachedList(false); keys != nil || err != nil {
		return keys, err // read while this caller waited
	}
	return t.read(ctx)
}

// cachedList answers from the cache when it is fresh, or, when stale is set
// or a failed read is too recent to retry, when every key in it is younger
// than MaxStale; with nothing to serve within Retry of a failed read, it
// returns that read's error. (nil, nil) means: read Vault.
func (t *TransitKeys) cachedList(stale bool) ([]broker.PublicKey, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	retrying := now.Before(t.nextTry)
	switch {
	case t.cached != nil && now.Sub(t.at) < t.ttl:
	case t.cached != nil && (stale || retrying) && now.Sub(t.oldest) < t.maxStale:
	case retrying && t.lastErr != nil:
		return nil, t.lastErr
	default:
		return nil, nil
	}
	return slices.Clone(t.cached), nil
}

// read reads every key from Vault and builds the list (see TransitKeys).
func (t *TransitKeys) read(ctx context.Context) ([]broker.PublicKey, error) {
	type result struct {
		k   *transitKey
		err error
	}
	results := make([]result, len(t.names))
	var outage error
	for i, name := range t.names {
		if outage != nil {
			// Vault is down or slow: the other keys would wait for the
			// same; they fall back like this one.
			results[i].err = outage
			continue
		}
		results[i].k, results[i].err = readTransitKey(ctx, t.c, t.mount, name, t.warn)
		if results[i].err != nil && isOutage(results[i].err) {
			outage = results[i].err
		}
	}

	if err := ctx.Err(); errors.Is(err, context.Canceled) {
		// The caller gave up (a JWKS client went away): that says nothing
		// about Vault, so nothing is recorded and the next caller reads.
		return nil, broker.Unavailable(ReasonUnavailable, retryOutage, fmt.Errorf("vault read transit keys: %w", err))
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	now := t.now()
	var (
		out       []broker.PublicKey
		oldest    = now
		failed    bool  // some key was served from its last versions, or failed
		readOne   bool  // some key was read
		outageErr error // a key that cannot be read now and has no fallback
		firstErr  error
		warn      []keyWarning
	)
	for i, name := range t.names {
		r := results[i]
		if r.err == nil {
			readOne = true
			alg := r.k.method().Alg()
			var keys []broker.PublicKey
			for v := r.k.MinDecryption; v <= r.k.Latest; v++ {
				keys = append(keys, broker.PublicKey{KID: kid(name, v), Alg: alg, Key: r.k.Public[v]})
			}
			t.known[name] = knownKey{keys: keys, at: now}
			out = append(out, keys...)
			continue
		}
		firstErr = cmp.Or(firstErr, r.err)
		absent := !isOutage(r.err)
		failed = failed || !absent
		if kk, ok := t.known[name]; ok && now.Sub(kk.at) < t.maxStale {
			// JWTs its versions signed must keep verifying.
			failed = true
			out = append(out, kk.keys...)
			oldest = minTime(oldest, kk.at)
			if absent {
				warn = append(warn, keyWarning{name, r.err, "transit key cannot be read; its last versions stay in the JWKS until they are older than the maximum staleness"})
			}
			continue
		}
		if absent {
			warn = append(warn, keyWarning{name, r.err, "transit key left out of the JWKS: Vault does not serve it; jwt grants signing with it fail until this is fixed"})
		} else {
			outageErr = cmp.Or(outageErr, r.err)
		}
	}
	if readOne {
		// Only some keys failed: say which. (When none could be read the
		// broker's token or Vault is the problem, and the caller says so.)
		for _, w := range warn {
			t.log.Warn(w.msg, slog.String("transit_key", t.mount+"/keys/"+w.name), slog.String("error", w.err.Error()))
		}
	}
	if outageErr != nil || (!readOne && len(out) == 0) {
		// A key Vault cannot serve now has nothing to fall back on, or no
		// key could be read at all (e.g. the broker's token was revoked):
		// an empty or partial list would make verifiers reject good JWTs.
		t.nextTry, t.lastErr = now.Add(t.retry), cmp.Or(outageErr, firstErr)
		if t.cached != nil && now.Sub(t.oldest) < t.maxStale {
			return slices.Clone(t.cached), nil
		}
		return nil, t.lastErr
	}
	t.cached, t.oldest, t.lastErr = out, oldest, nil
	if failed {
		t.nextTry = now.Add(t.retry)
	} else {
		t.at, t.nextTry = now, time.Time{}
	}
	return slices.Clone(out), nil
}

type keyWarning struct {
	name string
	err  error
	msg  string
}

// isOutage reports whether err says Vault cannot answer now (down, sealed,
// slow, a malformed answer) rather than that it will not serve the request
// (absent, denied, rejected, unsupported).
func isOutage(err error) bool {
	var be *broker.Error
	if !errors.As(err, &be) {
		return true
	}
	return be.Reason == ReasonUnavailable || be.Reason == ReasonBadResponse
}

func minTime(a, b time.Time) time.Time {
	if b.Before(a) {
		return b
	}
	return a
}
