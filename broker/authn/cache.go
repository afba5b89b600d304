package authn

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// DefaultVerifiedCacheSize is how many verified tokens a Verifier remembers
// when Options.VerifiedCacheSize is 0.
const DefaultVerifiedCacheSize = 10000

// verifiedCache remembers tokens whose signature verified, by the SHA-256 of
// the raw token, so that a workload presenting the same identity token again
// (a renewal, a second grant, a restart) does not pay for the signature
// check (an ES256 verification is about 80 µs, a third of an exchange's
// broker CPU; issue #9).
//
// A hit changes nothing about what is accepted. It is used only when the
// issuer's key that verified the signature is still the key the issuer's
// current JWKS selects for the token's kid and alg (resolveKey runs on every
// hit, with its refetch and stale-key rules), and the time claims (exp, nbf,
// iat), audience, issuer and lifetime are checked again on every hit exactly
// as after a signature check, and so is the typ header against the
// issuer's token_types. A key removed from the JWKS, an issuer removed or
// its token_types narrowed by a policy reload (which builds a new Verifier,
// with a cache of its own) or an expired token therefore fail as they
// would without the cache. Only successes are
// remembered; the signature is the only thing not recomputed, and it is a
// pure function of the token bytes and the key.
type verifiedCache struct {
	mu      sync.Mutex
	max     int
	entries map[[sha256.Size]byte]*verifiedEntry
}

// verifiedEntry is one token that verified: how it was routed, the key that
// verified it and its decoded claims (shared read-only by every hit).
type verifiedEntry struct {
	st     *issuerState
	kid    string
	hasKid bool
	alg    string
	typ    any // the typ header, when hasTyp
	hasTyp bool
	key    crypto.PublicKey
	claims jwt.MapClaims
	digest [sha256.Size]byte // the identity's TokenDigest
	until  time.Time         // exp plus the leeway: no use keeping it longer
}

func newVerifiedCache(max int) *verifiedCache {
	if max <= 0 {
		return nil
	}
	return &verifiedCache{max: max, entries: make(map[[sha256.Size]byte]*verifiedEntry)}
}

func (c *verifiedCache) get(h [sha256.Size]byte) *verifiedEntry {
	if c == nil {
		return nil
	}
	c.mu.Lock()
	e := c.entries[h]
	c.mu.Unlock()
	return e
}

func (c *verifiedCache) forget(h [sha256.Size]byte) {
	if c == nil {
		return
	}
	c.mu.Lock()
	delete(c.entries, h)
	c.mu.Unlock()
}

// put remembers e. At capacity it first drops expired entries, then, if
// still full, an arbitrary tenth (Go's map order is random): the cache is an
// optimisation, and a dropped token is simply verified again.
func (c *verifiedCache) put(h [sha256.Size]byte, e *verifiedEntry, now time.Time) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[h]; !ok && len(c.entries) >= c.max {
		for k, old := range c.entries {
			if now.After(old.until) {
				delete(c.entries, k)
			}
		}
		for k := range c.entries {
			if len(c.entries) < c.max-c.max/10 {
				break
			}
			delete(c.entries, k)
		}
	}
	c.entries[h] = e
}

func (c *verifiedCache) len() int {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// sameKey reports whether a and b are the same public key material. Keys of
// crypto/rsa, crypto/ecdsa and crypto/ed25519 all have Equal; a set of keys
// (several keys under one kid) is never cached.
//
// Every cache hit asks, and the key resolved is nearly always the very key
// the entry was verified with (the issuer's cached key set has not
// changed): the same pointer is answered at once. ecdsa.PublicKey.Equal
// would compare the coordinates through big.Int.Bytes, 4 allocations per
// call; rsa.PublicKey.Equal compares the moduli. Another pointer (the key
// set was fetched again) is compared by Equal as before.
func sameKey(a, b any) bool {
	switch ka := a.(type) {
	case *ecdsa.PublicKey:
		if kb, ok := b.(*ecdsa.PublicKey); ok && ka == kb && ka != nil {
			return true
		}
	case *rsa.PublicKey:
		if kb, ok := b.(*rsa.PublicKey); ok && ka == kb && ka != nil {
			return true
		}
	}
	ea, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && b != nil && ea.Equal(b)
}
