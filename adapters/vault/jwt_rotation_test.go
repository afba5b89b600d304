package vault

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	vaultapi "github.com/hashicorp/vault/api"
)

// TestJWTMinterSignsOnlyWithPublishedVersions: right after the transit key
// is rotated, a JWT the broker mints must verify against the JWKS the
// broker serves at that moment (TransitKeys, which caches its read): the
// new version is published first and signed with once it is PublishDelay
// old. min_encryption_version, which makes transit refuse older versions,
// wins over the delay.
func TestJWTMinterSignsOnlyWithPublishedVersions(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		typ string
		alg string
	}{
		{KeyTypeECDSAP256, "ES256"},
		{KeyTypeEd25519, "EdDSA"},
	} {
		t.Run(tc.alg, func(t *testing.T) {
			t.Parallel()
			rt := newRotatingTransit(t, "sig", tc.typ)
			clock, advance, rotate := rt.clock, rt.advance, rt.rotate
			jwks, err := NewTransitKeys(TransitKeysOptions{Client: rt.f.client(t), Keys: []string{"sig"}, Now: clock})
			if err != nil {
				t.Fatal(err)
			}
			m, err := NewJWTMinter(JWTMinterOptions{Client: rt.f.client(t), PublicURL: "https://keytrail.test", Now: clock})
			if err != nil {
				t.Fatal(err)
			}
			// mint mints a JWT now and verifies it as a resource server
			// would, against the JWKS the broker serves now; it returns the kid.
			mint := func(step string) string {
				t.Helper()
				req := jwtReq("sig")
				req.Now = clock()
				cred, err := m.Mint(context.Background(), req)
				if err != nil {
					t.Fatalf("%s: Mint() = %v", step, err)
				}
				served, err := jwks.PublicKeys(context.Background())
				if err != nil {
					t.Fatalf("%s: PublicKeys() = %v", step, err)
				}
				var kid string
				_, err = jwt.Parse(cred.AccessToken, func(tok *jwt.Token) (any, error) {
					kid, _ = tok.Header["kid"].(string)
					for _, k := range served {
						if k.KID == kid && k.Alg == tc.alg {
							return k.Key, nil
						}
					}
					return nil, jwt.ErrTokenUnverifiable
				}, jwt.WithValidMethods([]string{tc.alg}), jwt.WithIssuer("https://keytrail.test"), jwt.WithAudience("orders-api"),
					jwt.WithExpirationRequired(), jwt.WithTimeFunc(clock))
				if err != nil {
					t.Fatalf("%s: the JWT (kid %q) does not verify against the served JWKS: %v", step, kid, err)
				}
				return kid
			}
			steps := []struct {
				name    string
				before  func()
				wantKID string
			}{
				{"ok/before-rotation", func() {}, "sig:1"},
				// The JWKS is read (and cached), the key is rotated, and
				// the minter's KeyRefresh runs out just after.
				{"ok/just-rotated-signs-with-published", func() {
					advance(DefaultKeyRefresh - time.Second)
					if _, err := jwks.PublicKeys(context.Background()); err != nil {
						t.Fatal(err)
					}
					advance(time.Second / 2)
					rotate()
					advance(time.Second)
				}, "sig:1"},
				{"ok/new-version-once-published", func() { advance(2 * time.Minute) }, "sig:2"}, // DefaultPublishDelay,
				// An operator who raises min_encryption_version to a fresh
				// version leaves nothing else transit would sign with.
				{"ok/min-encryption-version-wins", func() {
					rotate()
					rt.minEncToLatest()
					advance(DefaultKeyRefresh)
					advance(DefaultPublicKeysTTL)
				}, "sig:3"},
			}
			for _, s := range steps {
				s.before()
				if got := mint(s.name); got != s.wantKID {
					t.Errorf("%s: kid = %q, want %q", s.name, got, s.wantKID)
				}
			}
		})
	}
}

// TestJWTMinterSignsWithServedKID: the minter and the JWKS read the
// transit key separately, and a flapping Vault can fail one reader and not
// the other. With Published set, every JWT's kid is one the JWKS serves at
// that moment, whichever reader is behind.
func TestJWTMinterSignsWithServedKID(t *testing.T) {
	t.Parallel()
	type step struct {
		name    string
		before  func(rt *rotatingTransit)
		wantKID string
	}
	for _, tc := range []struct {
		name  string
		setup func(rt *rotatingTransit)
		steps []step
	}{
		// The JWKS cannot read the key after a rotation and serves its
		// last list (MaxStale, 5 min) while the minter reads the new
		// version, DefaultPublishDelay old by then.
		{name: "jwks-reads-fail", steps: []step{
			{"ok/before-rotation", func(*rotatingTransit) {}, "sig:1"},
			{"ok/jwks-stale-keeps-served-kid", func(rt *rotatingTransit) {
				rt.advance(time.Second)
				rt.rotate()
				rt.setJWKSDown(true)
				rt.advance(DefaultPublishDelay + DefaultKeyRefresh)
			}, "sig:1"},
			// Vault answers the JWKS again: the new version is served
			// from now on, and signed with once it has been served for
			// DefaultPublishDelay (verifiers cached the list without it).
			{"ok/jwks-back-new-version-waits", func(rt *rotatingTransit) {
				rt.setJWKSDown(false)
				rt.advance(DefaultPublicKeysRetry)
			}, "sig:1"},
			{"ok/new-version-once-served-long-enough", func(rt *rotatingTransit) { rt.advance(DefaultPublishDelay) }, "sig:2"},
		}},
		// The reverse: the JWKS has read the key after an operator raised
		// min_decryption_version (withdrawing version 1), while the
		// minter still holds its earlier read, in which version 2 was too
		// young to sign with.
		{name: "minter-read-behind", setup: func(rt *rotatingTransit) {
			rt.rotate() // version 2, created at t0
		}, steps: []step{
			{"ok/young-version-not-yet", func(*rotatingTransit) {}, "sig:1"},
			{"ok/withdrawn-version-not-signed", func(rt *rotatingTransit) {
				rt.advance(time.Second)
				rt.setMinDecryption(2)
				rt.advance(DefaultPublicKeysTTL)
			}, "sig:2"},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rt := newRotatingTransit(t, "sig", KeyTypeECDSAP256)
			if tc.setup != nil {
				tc.setup(rt)
			}
			jwks, err := NewTransitKeys(TransitKeysOptions{Client: rt.jwksClient(t), Keys: []string{"sig"}, Now: rt.clock,
				Log: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			m, err := NewJWTMinter(JWTMinterOptions{Client: rt.f.client(t), PublicURL: "https://keytrail.test", Now: rt.clock, Published: jwks})
			if err != nil {
				t.Fatal(err)
			}
			for _, s := range tc.steps {
				s.before(rt)
				req := jwtReq("sig")
				req.Now = rt.clock()
				cred, err := m.Mint(context.Background(), req)
				if err != nil {
					t.Fatalf("%s: Mint() = %v", s.name, err)
				}
				// As a relying party fetching the broker's JWKS now.
				served, err := jwks.PublicKeys(context.Background())
				if err != nil {
					t.Fatalf("%s: PublicKeys() = %v", s.name, err)
				}
				var kid string
				_, err = jwt.Parse(cred.AccessToken, func(tok *jwt.Token) (any, error) {
					kid, _ = tok.Header["kid"].(string)
					for _, k := range served {
						if k.KID == kid {
							return k.Key, nil
						}
					}
					return nil, jwt.ErrTokenUnverifiable
				}, jwt.WithValidMethods([]string{"ES256"}), jwt.WithIssuer("https://keytrail.test"), jwt.WithAudience("orders-api"),
					jwt.WithExpirationRequired(), jwt.WithTimeFunc(rt.clock))
				if err != nil {
					t.Fatalf("%s: the JWT (kid %q) does not verify against the served JWKS: %v", s.name, kid, err)
				}
				if kid != s.wantKID {
					t.Errorf("%s: kid = %q, want %q", s.name, kid, s.wantKID)
				}
			}
		})
	}
}

// TestJWTMinterNothingServed: when the JWKS serves no version transit
// would sign with, Mint fails (ErrUnavailable) instead of signing with a
// kid verifiers cannot find, and makes no sign call.
func TestJWTMinterNothingServed(t *testing.T) {
	t.Parallel()
	rt := newRotatingTransit(t, "sig", KeyTypeECDSAP256)
	jwks, err := NewTransitKeys(TransitKeysOptions{Client: rt.jwksClient(t), Keys: []string{"sig"}, Now: rt.clock, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	m, err := NewJWTMinter(JWTMinterOptions{Client: rt.f.client(t), PublicURL: "https://keytrail.test", Now: rt.clock, Published: jwks})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := jwks.PublicKeys(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Only version 2 is signable now, and the JWKS cannot read it.
	rt.rotate()
	rt.minEncToLatest()
	rt.setJWKSDown(true)
	rt.advance(DefaultPublicKeysTTL)
	req := jwtReq("sig")
	req.Now = rt.clock()
	_, err = m.Mint(context.Background(), req)
	if got, want := shapeOf(err), (errShape{unavailable, ReasonUnavailable}); got != want {
		t.Errorf("Mint() = %v (%+v), want %+v", err, got, want)
	}
	if n := rt.f.count("PUT /v1/transit/sign/sig"); n != 0 {
		t.Errorf("sign calls = %d, want 0", n)
	}
}

// rotatingTransit is a fake Vault with one transit key that the test
// rotates on its own clock: each new version's creation_time is the clock's
// now, and signing refuses versions below min_encryption_version as transit
// does.
type rotatingTransit struct {
	t   *testing.T
	typ string
	f   *fakeVault

	mu  sync.Mutex
	now time.Time
	key *fakeKey
	// jwksDown fails (503) the key reads of clients from jwksClient, as a
	// flapping Vault may fail one reader's requests and not another's.
	jwksDown bool
}

// jwksClient is a client whose key reads fail while jwksDown is set.
func (rt *rotatingTransit) jwksClient(t *testing.T) *vaultapi.Client {
	c := rt.f.client(t)
	c.AddHeader(jwksReaderHeader, "1")
	return c
}

const jwksReaderHeader = "X-Test-Jwks-Reader"

func (rt *rotatingTransit) setJWKSDown(down bool) {
	rt.mu.Lock()
	rt.jwksDown = down
	rt.mu.Unlock()
}

// setMinDecryption sets min_decryption_version, as transit/keys/<name>/config does.
func (rt *rotatingTransit) setMinDecryption(v int) {
	rt.mu.Lock()
	rt.key.minDec = v
	rt.mu.Unlock()
}

// newRotatingTransit starts the fake with version 1 of key name, created an
// hour before t0, and the clock at t0.
func newRotatingTransit(t *testing.T, name, typ string) *rotatingTransit {
	t.Helper()
	rt := &rotatingTransit{t: t, typ: typ, now: t0, key: newFakeKey(t, typ, 1)}
	rt.key.created = map[int]time.Time{1: t0.Add(-time.Hour)}
	rt.f = newFakeVault(t, map[string]http.HandlerFunc{
		"GET /v1/transit/keys/" + name: func(w http.ResponseWriter, r *http.Request) {
			rt.mu.Lock()
			defer rt.mu.Unlock()
			if rt.jwksDown && r.Header.Get(jwksReaderHeader) != "" {
				replyRaw(503, `{"errors":["flapping"]}`)(w, r)
				return
			}
			reply(w, 200, rt.key.readReply(t))
		},
		"PUT /v1/transit/sign/" + name: func(w http.ResponseWriter, r *http.Request) {
			body := decodeBody(t, r)
			in, _ := body["input"].(string)
			input, err := base64.StdEncoding.DecodeString(in)
			if err != nil {
				t.Errorf("sign input is not standard base64: %v", err)
			}
			fv, _ := body["key_version"].(float64)
			v := int(fv)
			rt.mu.Lock()
			defer rt.mu.Unlock()
			if v < 1 || v > rt.key.latest || v < rt.key.minEnc {
				// As transit: "requested version for signing is less than the minimum encryption key version".
				replyRaw(400, `{"errors":["requested version for signing is not allowed"]}`)(w, r)
				return
			}
			reply(w, 200, map[string]any{"data": map[string]any{"signature": rt.key.sign(t, v, input), "key_version": v}})
		},
	})
	return rt
}

func (rt *rotatingTransit) clock() time.Time {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.now
}

func (rt *rotatingTransit) advance(d time.Duration) {
	rt.mu.Lock()
	rt.now = rt.now.Add(d)
	rt.mu.Unlock()
}

// rotate adds a version created now, as transit/keys/<name>/rotate does.
func (rt *rotatingTransit) rotate() {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.key.latest++
	v := rt.key.latest
	switch rt.typ {
	case KeyTypeECDSAP256:
		pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			rt.t.Fatal(err)
		}
		rt.key.ec[v] = pk
	default:
		_, pk, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			rt.t.Fatal(err)
		}
		rt.key.ed[v] = pk
	}
	rt.key.created[v] = rt.now
}

// minEncToLatest sets min_encryption_version to the latest version.
func (rt *rotatingTransit) minEncToLatest() {
	rt.mu.Lock()
	rt.key.minEnc = rt.key.latest
	rt.mu.Unlock()
}
