package authn_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/authn"
)

// TestVerifiedCacheHit: a token presented again is answered without a second
// signature check, with the same identity.
func TestVerifiedCacheHit(t *testing.T) {
	f := newFixture(t, nil)
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		tok  string
		iss  string
	}{
		{"es256", sign(t, f.es.Key(), nil, claims(f.es)), "es"},
		{"eddsa", sign(t, f.ed.Key(), nil, claims(f.ed)), "ed"},
		{"rs256", sign(t, f.rs.Key(), nil, claims(f.rs)), "rs"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := f.v.SignatureChecks()
			for i := range 5 {
				got, err := f.v.Authenticate(ctx, tc.tok)
				if err != nil {
					t.Fatalf("Authenticate() #%d = %v", i, err)
				}
				if diff := cmp.Diff(wantIdentity(t, tc.iss, tc.tok), got); diff != "" {
					t.Errorf("Authenticate() #%d identity (-want +got):\n%s", i, diff)
				}
			}
			if got := f.v.SignatureChecks() - before; got != 1 {
				t.Errorf("5 presentations made %d signature checks, want 1", got)
			}
		})
	}
	// A token differing only in its signature is a different token: it is
	// verified in full and fails.
	tok := sign(t, f.es.Key(), nil, claims(f.es))
	if _, err := f.v.Authenticate(ctx, tok); err != nil {
		t.Fatal(err)
	}
	sig := sigOf(t, tok)
	sig[len(sig)-1] ^= 1
	bad := resign(tok, sig)
	_, err := f.v.Authenticate(ctx, bad)
	checkRejection(t, err, bad, "bad_signature")
}

// TestVerifiedCacheRechecksClaims: the time claims are checked on every hit,
// with the same outcome as a verifier without the cache at every instant
// around exp+leeway.
func TestVerifiedCacheRechecksClaims(t *testing.T) {
	f := newFixture(t, nil)
	uncachedOpts := f.opts
	uncachedOpts.VerifiedCacheSize = -1
	uncached, err := authn.New(context.Background(), uncachedOpts)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	exp := t0.Add(2 * time.Minute)
	tok := sign(t, f.es.Key(), nil, claims(f.es, set("exp", exp.Unix())))
	if _, err := f.v.Authenticate(ctx, tok); err != nil {
		t.Fatal(err)
	}
	f.clock.Advance(2*time.Minute + authn.DefaultLeeway - 2*time.Second)
	var outcomes []string
	for range 4 {
		_, errCached := f.v.Authenticate(ctx, tok)
		_, errPlain := uncached.Authenticate(ctx, tok)
		if reasonOf(errCached) != reasonOf(errPlain) {
			t.Errorf("at %v: cached = %v, uncached = %v", f.clock.Now().Sub(exp), errCached, errPlain)
		}
		outcomes = append(outcomes, fmt.Sprint(errCached == nil))
		f.clock.Advance(time.Second)
	}
	// exp+leeway-2s, -1s: valid; at exp+leeway and after: expired (jwt/v5).
	if diff := cmp.Diff([]string{"true", "true", "false", "false"}, outcomes); diff != "" {
		t.Errorf("accepted at exp+leeway-2s..+1s (-want +got):\n%s", diff)
	}
	_, err = f.v.Authenticate(ctx, tok)
	checkRejection(t, err, tok, "token_expired")
}

// TestVerifiedCacheKeyChanges: a cached verification is used only while the
// issuer's JWKS still selects the same key material for the token.
func TestVerifiedCacheKeyChanges(t *testing.T) {
	ctx := context.Background()
	long := set("exp", t0.Add(time.Hour).Unix())

	t.Run("kid-reused-for-new-key", func(t *testing.T) {
		f := newFixture(t, nil)
		old := f.es.Key()
		tok := sign(t, old, nil, claims(f.es, long))
		if _, err := f.v.Authenticate(ctx, tok); err != nil {
			t.Fatal(err)
		}
		k2 := newKey(t, "ES256")
		k2.KID = old.KID
		f.es.ReplaceKeys(k2, f.esRSA)
		f.clock.Advance(authn.DefaultCacheTTL)
		// The next use is served from the stale keys and refetches in the
		// background; the use after that sees the new key.
		if _, err := f.v.Authenticate(ctx, tok); err != nil {
			t.Fatalf("Authenticate(stale keys, refetch started) = %v, want ok", err)
		}
		f.v.WaitFetches()
		before := f.v.SignatureChecks()
		_, err := f.v.Authenticate(ctx, tok)
		checkRejection(t, err, tok, "bad_signature")
		if got := f.v.SignatureChecks() - before; got != 1 {
			t.Errorf("signature checks after the key changed = %d, want 1 (verified again)", got)
		}
		if got := f.es.JWKSFetches(); got != 2 {
			t.Errorf("JWKS fetches = %d, want 2", got)
		}
	})
	t.Run("key-removed", func(t *testing.T) {
		f := newFixture(t, nil)
		tok := sign(t, f.es.Key(), nil, claims(f.es, long))
		if _, err := f.v.Authenticate(ctx, tok); err != nil {
			t.Fatal(err)
		}
		f.es.ReplaceKeys(newKey(t, "ES256"))
		f.clock.Advance(authn.DefaultCacheTTL)
		if _, err := f.v.Authenticate(ctx, tok); err != nil {
			t.Fatalf("Authenticate(stale keys, refetch started) = %v, want ok", err)
		}
		f.v.WaitFetches()
		_, err := f.v.Authenticate(ctx, tok)
		checkRejection(t, err, tok, "unknown_key")
	})
	t.Run("issuer-down-past-stale-window", func(t *testing.T) {
		f := newFixture(t, nil)
		tok := sign(t, f.es.Key(), nil, claims(f.es, long))
		if _, err := f.v.Authenticate(ctx, tok); err != nil {
			t.Fatal(err)
		}
		f.es.SetDown(true)
		f.clock.Advance(authn.DefaultCacheTTL + authn.DefaultStaleFor)
		_, err := f.v.Authenticate(ctx, tok)
		if err == nil {
			t.Fatal("Authenticate() = ok with the issuer's keys unusable, want jwks_unavailable")
		}
		if reasonOf(err) != "jwks_unavailable" {
			t.Errorf("Authenticate() = %v, want jwks_unavailable", err)
		}
	})
}

// reasonOf is the rejection reason of err, "" for nil.
func reasonOf(err error) string {
	var be *broker.Error
	if errors.As(err, &be) {
		return be.Reason
	}
	return fmt.Sprint(err)
}

// TestVerifiedCacheBounded: the cache never holds more than its size, and
// tokens dropped from it still verify.
func TestVerifiedCacheBounded(t *testing.T) {
	f := newFixture(t, func(o *authn.Options) { o.VerifiedCacheSize = 8 })
	ctx := context.Background()
	var toks []string
	for i := range 40 {
		toks = append(toks, sign(t, f.es.Key(), nil, claims(f.es, set("jti", fmt.Sprintf("j-%d", i)))))
	}
	for round := range 2 {
		for i, tok := range toks {
			if _, err := f.v.Authenticate(ctx, tok); err != nil {
				t.Fatalf("round %d token %d: %v", round, i, err)
			}
			if n := f.v.VerifiedCacheLen(); n > 8 {
				t.Fatalf("cache holds %d tokens, want at most 8", n)
			}
		}
	}
}

// TestVerifiedCacheOff: a negative size turns the cache off.
func TestVerifiedCacheOff(t *testing.T) {
	f := newFixture(t, func(o *authn.Options) { o.VerifiedCacheSize = -1 })
	tok := sign(t, f.es.Key(), nil, claims(f.es))
	for range 3 {
		if _, err := f.v.Authenticate(context.Background(), tok); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.v.SignatureChecks(); got != 3 {
		t.Errorf("signature checks = %d, want 3 with the cache off", got)
	}
}

// TestVerifiedCacheConcurrent runs hits, misses and evictions at once (for
// -race).
func TestVerifiedCacheConcurrent(t *testing.T) {
	f := newFixture(t, func(o *authn.Options) { o.VerifiedCacheSize = 4 })
	var toks []string
	for i := range 8 {
		toks = append(toks, sign(t, f.es.Key(), nil, claims(f.es, set("jti", fmt.Sprintf("c-%d", i)))))
	}
	var wg sync.WaitGroup
	errs := make(chan error, 8*50)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 50 {
				if _, err := f.v.Authenticate(context.Background(), toks[(g+i)%len(toks)]); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
