package vault

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/policies"
)

// fakeKey is a transit key the fake Vault signs with.
type fakeKey struct {
	typ     string
	ec      map[int]*ecdsa.PrivateKey
	ed      map[int]ed25519.PrivateKey
	latest  int
	minDec  int
	minEnc  int               // min_encryption_version; 0 = none
	created map[int]time.Time // creation_time per version; default 2026-01-01
}

func newFakeKey(t *testing.T, typ string, versions int) *fakeKey {
	t.Helper()
	k := &fakeKey{typ: typ, ec: map[int]*ecdsa.PrivateKey{}, ed: map[int]ed25519.PrivateKey{}, latest: versions, minDec: 1}
	for v := 1; v <= versions; v++ {
		switch typ {
		case KeyTypeECDSAP256:
			pk, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			k.ec[v] = pk
		case KeyTypeEd25519:
			_, pk, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			k.ed[v] = pk
		}
	}
	return k
}

func (k *fakeKey) public(v int) any {
	if k.typ == KeyTypeEd25519 {
		return k.ed[v].Public()
	}
	return &k.ec[v].PublicKey
}

// readReply is the data of transit/keys/<name>, as Vault formats it.
func (k *fakeKey) readReply(t *testing.T) map[string]any {
	t.Helper()
	keys := map[string]any{}
	for v := k.minDec; v <= k.latest; v++ {
		var pub string
		switch k.typ {
		case KeyTypeECDSAP256:
			der, err := x509.MarshalPKIXPublicKey(&k.ec[v].PublicKey)
			if err != nil {
				t.Fatal(err)
			}
			pub = string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
		case KeyTypeEd25519:
			pub = base64.StdEncoding.EncodeToString(k.ed[v].Public().(ed25519.PublicKey))
		}
		created := "2026-01-01T00:00:00Z"
		if c, ok := k.created[v]; ok {
			created = c.Format(time.RFC3339Nano)
		}
		keys[fmt.Sprint(v)] = map[string]any{"name": k.typ, "public_key": pub, "creation_time": created}
	}
	return map[string]any{"data": map[string]any{
		"name": "k", "type": k.typ, "latest_version": k.latest, "min_decryption_version": k.minDec,
		"min_encryption_version": k.minEnc, "derived": false, "keys": keys,
	}}
}

// sign signs input with version v the way transit does.
func (k *fakeKey) sign(t *testing.T, v int, input []byte) string {
	t.Helper()
	switch k.typ {
	case KeyTypeECDSAP256:
		h := sha256.Sum256(input)
		r, s, err := ecdsa.Sign(rand.Reader, k.ec[v], h[:])
		if err != nil {
			t.Fatal(err)
		}
		sig := make([]byte, 64)
		r.FillBytes(sig[:32])
		s.FillBytes(sig[32:])
		return fmt.Sprintf("vault:v%d:%s", v, base64.RawURLEncoding.EncodeToString(sig))
	default:
		return fmt.Sprintf("vault:v%d:%s", v, base64.StdEncoding.EncodeToString(ed25519.Sign(k.ed[v], input)))
	}
}

func jwtReq(key string) broker.MintRequest {
	return broker.MintRequest{
		IssuanceID: "iss_01JWT",
		Workload:   "orders-client",
		Owner:      "team-orders",
		SessionID:  "ses_42",
		Grant: policies.Grant{
			Name: "orders-jwt", Kind: broker.KindJWT, TTL: policies.Duration(5 * time.Minute),
			JWT: &policies.JWTGrant{Audience: "orders-api", TransitKey: key},
		},
		TTL: 5*time.Minute + 700*time.Millisecond,
		Now: t0.Add(400 * time.Millisecond),
	}
}

// fakeTransit serves transit/keys/<name> and transit/sign/<name> for key,
// checking the sign body exactly. signOverride, when set, replaces the
// signature Vault returns.
func fakeTransit(t *testing.T, name string, key *fakeKey, signOverride func(input []byte) string) map[string]http.HandlerFunc {
	return map[string]http.HandlerFunc{
		"GET /v1/transit/keys/" + name: func(w http.ResponseWriter, r *http.Request) { reply(w, 200, key.readReply(t)) },
		"PUT /v1/transit/sign/" + name: func(w http.ResponseWriter, r *http.Request) {
			body := decodeBody(t, r)
			in, _ := body["input"].(string)
			input, err := base64.StdEncoding.DecodeString(in)
			if err != nil {
				t.Errorf("sign input is not standard base64: %v", err)
			}
			want := map[string]any{"input": in, "key_version": float64(key.latest)}
			if key.typ == KeyTypeECDSAP256 {
				want["hash_algorithm"] = "sha2-256"
				want["marshaling_algorithm"] = "jws"
			}
			if diff := cmp.Diff(want, body); diff != "" {
				t.Errorf("sign body (-want +got):\n%s", diff)
			}
			sig := key.sign(t, key.latest, input)
			if signOverride != nil {
				sig = signOverride(input)
			}
			reply(w, 200, map[string]any{"data": map[string]any{"signature": sig, "key_version": key.latest}})
		},
	}
}

func TestJWTMinterMint(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		typ  string
		alg  string
	}{
		{"ok/es256", KeyTypeECDSAP256, "ES256"},
		{"ok/eddsa", KeyTypeEd25519, "EdDSA"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			key := newFakeKey(t, tc.typ, 2)
			f := newFakeVault(t, fakeTransit(t, "sig", key, nil))
			now := t0
			var mu sync.Mutex
			clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
			m, err := NewJWTMinter(JWTMinterOptions{Client: f.client(t), PublicURL: "https://keytrail.test", Now: clock, KeyRefresh: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			cred, err := m.Mint(context.Background(), jwtReq("sig"))
			if err != nil {
				t.Fatalf("Mint() = %v", err)
			}
			wantExp := t0.Add(5 * time.Minute) // iat floors t0+400ms, exp = iat + 300s
			if diff := cmp.Diff(map[string]any{"jti": "iss_01JWT", "kid": "sig:2"}, cred.Fields); diff != "" {
				t.Errorf("Fields (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(broker.CredentialRefs{JTI: "iss_01JWT", ExpiresAt: wantExp}, cred.Refs); diff != "" {
				t.Errorf("Refs (-want +got):\n%s", diff)
			}

			tok, err := jwt.Parse(cred.AccessToken, func(tk *jwt.Token) (any, error) { return key.public(2), nil },
				jwt.WithValidMethods([]string{tc.alg}), jwt.WithIssuer("https://keytrail.test"), jwt.WithAudience("orders-api"),
				jwt.WithExpirationRequired(), jwt.WithTimeFunc(func() time.Time { return t0.Add(time.Minute) }))
			if err != nil {
				t.Fatalf("jwt.Parse(minted) = %v", err)
			}
			if diff := cmp.Diff(map[string]any{"alg": tc.alg, "typ": "JWT", "kid": "sig:2"}, tok.Header); diff != "" {
				t.Errorf("header (-want +got):\n%s", diff)
			}
			wantClaims := jwt.MapClaims{
				"iss": "https://keytrail.test", "sub": "orders-client", "aud": "orders-api",
				"owner": "team-orders", "sid": "ses_42", "jti": "iss_01JWT", "grant": "orders-jwt",
				"iat": float64(t0.Unix()), "nbf": float64(t0.Unix()), "exp": float64(wantExp.Unix()),
			}
			if diff := cmp.Diff(wantClaims, tok.Claims); diff != "" {
				t.Errorf("claims (-want +got):\n%s", diff)
			}

			// The key's metadata is cached for KeyRefresh, then read again.
			if _, err := m.Mint(context.Background(), jwtReq("sig")); err != nil {
				t.Fatal(err)
			}
			if n := f.count("GET /v1/transit/keys/sig"); n != 1 {
				t.Errorf("key reads within refresh = %d, want 1", n)
			}
			mu.Lock()
			now = now.Add(time.Minute)
			mu.Unlock()
			if _, err := m.Mint(context.Background(), jwtReq("sig")); err != nil {
				t.Fatal(err)
			}
			if n := f.count("GET /v1/transit/keys/sig"); n != 2 {
				t.Errorf("key reads after refresh = %d, want 2", n)
			}
			if n := f.count("PUT /v1/transit/sign/sig"); n != 3 {
				t.Errorf("sign calls = %d, want 3", n)
			}
		})
	}
}

func TestJWTMinterFailures(t *testing.T) {
	t.Parallel()
	other := newFakeKey(t, KeyTypeECDSAP256, 1)
	tests := []struct {
		name    string
		routes  func(t *testing.T) map[string]http.HandlerFunc
		req     func(*broker.MintRequest)
		wantErr errShape
	}{
		{
			name: "fail/signature-by-another-key",
			routes: func(t *testing.T) map[string]http.HandlerFunc {
				return fakeTransit(t, "sig", newFakeKey(t, KeyTypeECDSAP256, 1), func(in []byte) string { return other.sign(t, 1, in) })
			},
			wantErr: errShape{unavailable, ReasonBadResponse},
		},
		{
			name: "fail/signature-of-other-version",
			routes: func(t *testing.T) map[string]http.HandlerFunc {
				k := newFakeKey(t, KeyTypeEd25519, 2)
				return fakeTransit(t, "sig", k, func(in []byte) string { return k.sign(t, 1, in) })
			},
			wantErr: errShape{unavailable, ReasonBadResponse},
		},
		{
			name: "fail/asn1-signature",
			routes: func(t *testing.T) map[string]http.HandlerFunc {
				return fakeTransit(t, "sig", newFakeKey(t, KeyTypeECDSAP256, 1), func(in []byte) string { return "vault:v1:MEUCIQ==" })
			},
			wantErr: errShape{unavailable, ReasonBadResponse},
		},
		{
			name: "fail/unsupported-key-type",
			routes: func(t *testing.T) map[string]http.HandlerFunc {
				return map[string]http.HandlerFunc{"GET /v1/transit/keys/sig": replyRaw(200, `{"data":{"type":"aes256-gcm96","latest_version":1,"min_decryption_version":1,"keys":{"1":1700000000}}}`)}
			},
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name: "fail/key-missing",
			routes: func(t *testing.T) map[string]http.HandlerFunc {
				return map[string]http.HandlerFunc{"GET /v1/transit/keys/sig": replyRaw(404, ``)}
			},
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name: "fail/sign-sealed",
			routes: func(t *testing.T) map[string]http.HandlerFunc {
				r := fakeTransit(t, "sig", newFakeKey(t, KeyTypeEd25519, 1), nil)
				r["PUT /v1/transit/sign/sig"] = replyRaw(503, `{"errors":["Vault is sealed"]}`)
				return r
			},
			wantErr: errShape{unavailable, ReasonUnavailable},
		},
		{
			name:    "fail/no-audience",
			routes:  func(t *testing.T) map[string]http.HandlerFunc { return nil },
			req:     func(r *broker.MintRequest) { r.Grant.JWT.Audience = "" },
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name:    "fail/key-name-traversal",
			routes:  func(t *testing.T) map[string]http.HandlerFunc { return nil },
			req:     func(r *broker.MintRequest) { r.Grant.JWT.TransitKey = "../sys/seal" },
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name:    "fail/ttl-under-a-second",
			routes:  func(t *testing.T) map[string]http.HandlerFunc { return nil },
			req:     func(r *broker.MintRequest) { r.TTL = time.Millisecond },
			wantErr: errShape{invalid, "ttl_too_short"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeVault(t, tc.routes(t))
			m, err := NewJWTMinter(JWTMinterOptions{Client: f.client(t), PublicURL: "https://keytrail.test"})
			if err != nil {
				t.Fatal(err)
			}
			req := jwtReq("sig")
			if tc.req != nil {
				tc.req(&req)
			}
			cred, err := m.Mint(context.Background(), req)
			if diff := cmp.Diff(tc.wantErr, shapeOf(err)); diff != "" {
				t.Errorf("Mint() = %v, want %+v", err, tc.wantErr)
			}
			if cred != nil {
				t.Errorf("Mint() credential = %v, want nil", cred)
			}
		})
	}
}

func TestNewJWTMinterValidates(t *testing.T) {
	t.Parallel()
	f := newFakeVault(t, nil)
	c := f.client(t)
	for _, tc := range []struct {
		name string
		o    JWTMinterOptions
		ok   bool
	}{
		{"ok/minimal", JWTMinterOptions{Client: c, PublicURL: "https://k.test"}, true},
		{"ok/mount", JWTMinterOptions{Client: c, PublicURL: "https://k.test", TransitMount: "keytrail/transit"}, true},
		{"fail/no-client", JWTMinterOptions{PublicURL: "https://k.test"}, false},
		{"fail/relative-url", JWTMinterOptions{Client: c, PublicURL: "/k"}, false},
		{"fail/bad-mount", JWTMinterOptions{Client: c, PublicURL: "https://k.test", TransitMount: "../sys"}, false},
		{"fail/negative-refresh", JWTMinterOptions{Client: c, PublicURL: "https://k.test", KeyRefresh: -time.Second}, false},
	} {
		_, err := NewJWTMinter(tc.o)
		if (err == nil) != tc.ok {
			t.Errorf("%s: NewJWTMinter() = %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
	m, _ := NewJWTMinter(JWTMinterOptions{Client: c, PublicURL: "https://k.test"})
	if err := m.Revoke(context.Background(), &broker.Issuance{}); err != nil {
		t.Errorf("JWTMinter.Revoke() = %v, want nil", err)
	}
	if n := f.total(); n != 0 {
		t.Errorf("Vault calls = %d, want 0", n)
	}
}

func TestTransitKeys(t *testing.T) {
	t.Parallel()
	ec := newFakeKey(t, KeyTypeECDSAP256, 3)
	ec.minDec = 2
	ed := newFakeKey(t, KeyTypeEd25519, 1)
	var mu sync.Mutex
	failing := false
	guard := func(h http.HandlerFunc) http.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			fail := failing
			mu.Unlock()
			if fail {
				replyRaw(503, `{"errors":["Vault is sealed"]}`)(w, r)
				return
			}
			h(w, r)
		}
	}
	f := newFakeVault(t, map[string]http.HandlerFunc{
		"GET /v1/transit/keys/ec": guard(func(w http.ResponseWriter, r *http.Request) { reply(w, 200, ec.readReply(t)) }),
		"GET /v1/transit/keys/ed": guard(func(w http.ResponseWriter, r *http.Request) { reply(w, 200, ed.readReply(t)) }),
	})
	now := t0
	tk, err := NewTransitKeys(TransitKeysOptions{Client: f.client(t), Keys: []string{"ed", "ec", "ed"}, CacheTTL: 10 * time.Second, MaxStale: time.Minute, Retry: 5 * time.Second, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	want := []broker.PublicKey{
		{KID: "ec:2", Alg: "ES256", Key: ec.public(2)},
		{KID: "ec:3", Alg: "ES256", Key: ec.public(3)},
		{KID: "ed:1", Alg: "EdDSA", Key: ed.public(1)},
	}
	steps := []struct {
		name    string
		advance time.Duration
		fail    bool
		reads   int // total key reads after the step
		wantErr errShape
	}{
		{"ok/first-read", 0, false, 2, errShape{}},
		{"ok/cached", 9 * time.Second, false, 2, errShape{}},
		{"ok/refreshed", 2 * time.Second, false, 4, errShape{}},
		{"ok/stale-while-vault-down", 30 * time.Second, true, 5, errShape{}},
		// After a failed read Vault is left alone for Retry.
		{"ok/stale-not-retried-within-retry", 2 * time.Second, true, 5, errShape{}},
		{"fail/too-stale", 29 * time.Second, true, 6, errShape{unavailable, ReasonUnavailable}},
		{"fail/error-not-retried-within-retry", time.Second, false, 6, errShape{unavailable, ReasonUnavailable}},
		{"ok/recovered", 4 * time.Second, false, 8, errShape{}},
	}
	for _, s := range steps {
		now = now.Add(s.advance)
		mu.Lock()
		failing = s.fail
		mu.Unlock()
		got, err := tk.PublicKeys(context.Background())
		if diff := cmp.Diff(s.wantErr, shapeOf(err)); diff != "" {
			t.Fatalf("%s: PublicKeys() error = %v, want %+v", s.name, err, s.wantErr)
		}
		if err == nil {
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("%s: PublicKeys() (-want +got):\n%s", s.name, diff)
			}
		}
		if n := f.total(); n != s.reads {
			t.Errorf("%s: key reads = %d, want %d", s.name, n, s.reads)
		}
	}
}

func TestHealth(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		body string
		want errShape
	}{
		{"ok/active", `{"initialized":true,"sealed":false,"standby":false}`, errShape{}},
		{"ok/standby", `{"initialized":true,"sealed":false,"standby":true,"performance_standby":true}`, errShape{}},
		{"fail/sealed", `{"initialized":true,"sealed":true,"standby":true}`, errShape{unavailable, ReasonUnavailable}},
		{"fail/uninitialized", `{"initialized":false,"sealed":true}`, errShape{unavailable, ReasonUnavailable}},
		{"fail/removed", `{"initialized":true,"sealed":false,"removed_from_cluster":true}`, errShape{unavailable, ReasonUnavailable}},
		{"fail/ha-unhealthy", `{"initialized":true,"sealed":false,"standby":true,"ha_connection_healthy":false}`, errShape{unavailable, ReasonUnavailable}},
		{"ok/dr-primary", `{"initialized":true,"sealed":false,"replication_dr_mode":"primary","replication_performance_mode":"primary"}`, errShape{}},
		{"ok/performance-secondary", `{"initialized":true,"sealed":false,"replication_dr_mode":"disabled","replication_performance_mode":"secondary"}`, errShape{}},
		// A DR secondary answers sys/health but serves no client request
		// (no token lookup, no mint) until it is promoted.
		{"fail/dr-secondary", `{"initialized":true,"sealed":false,"replication_dr_mode":"secondary","replication_performance_mode":"disabled"}`, errShape{unavailable, ReasonUnavailable}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeVault(t, map[string]http.HandlerFunc{
				"GET /v1/sys/health": func(w http.ResponseWriter, r *http.Request) {
					if got := r.URL.Query().Get("sealedcode"); got != "299" {
						t.Errorf("sealedcode = %q, want 299", got)
					}
					replyRaw(299, tc.body)(w, r)
				},
			})
			err := HealthChecker{Client: f.client(t)}.Ping(context.Background())
			if diff := cmp.Diff(tc.want, shapeOf(err)); diff != "" {
				t.Errorf("Ping() = %v, want %+v", err, tc.want)
			}
		})
	}
	if got := shapeOf((HealthChecker{}).Ping(context.Background())); got != (errShape{unavailable, ReasonConfig}) {
		t.Errorf("Ping(no client) = %+v, want config error", got)
	}
}

func TestBrokerPolicy(t *testing.T) {
	t.Parallel()
	got := BrokerPolicy("", "keytrail-signing")
	want := strings.Join([]string{
		`path "auth/token/create-orphan" {`, `  capabilities = ["update"]`, `}`,
		`path "auth/token/revoke-accessor" {`, `  capabilities = ["update"]`, `}`,
		`path "transit/keys/keytrail-signing" {`, `  capabilities = ["read"]`, `}`,
		`path "transit/sign/keytrail-signing" {`, `  capabilities = ["update"]`, `}`, ``,
	}, "\n")
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("BrokerPolicy() (-want +got):\n%s", diff)
	}
}

// TestJWTMinterIssWithoutTrailingSlash: the iss of a broker JWT is the
// discovery issuer (served without a trailing slash); verifiers compare the
// two byte for byte, so a public_url written with a trailing slash must not
// leak into iss.
func TestJWTMinterIssWithoutTrailingSlash(t *testing.T) {
	key := newFakeKey(t, KeyTypeEd25519, 1)
	f := newFakeVault(t, fakeTransit(t, "sig", key, nil))
	m, err := NewJWTMinter(JWTMinterOptions{Client: f.client(t), PublicURL: "https://keytrail.test/"})
	if err != nil {
		t.Fatal(err)
	}
	cred, err := m.Mint(context.Background(), jwtReq("sig"))
	if err != nil {
		t.Fatal(err)
	}
	claims := jwt.MapClaims{}
	if _, _, err := jwt.NewParser().ParseUnverified(cred.AccessToken, claims); err != nil {
		t.Fatal(err)
	}
	if claims["iss"] != "https://keytrail.test" {
		t.Errorf("JWT iss = %q, want the discovery issuer https://keytrail.test", claims["iss"])
	}
}

// TestTransitKeysOneKeyCannotTakeDownTheOthers: a key Vault does not have
// (a typo in one jwt grant), denies or cannot serve now leaves the other
// keys in the JWKS; its last good versions stay for MaxStale.
func TestTransitKeysOneKeyCannotTakeDownTheOthers(t *testing.T) {
	t.Parallel()
	ec := newFakeKey(t, KeyTypeECDSAP256, 1)
	ed := newFakeKey(t, KeyTypeEd25519, 1)
	ecKeys := []broker.PublicKey{{KID: "ec:1", Alg: "ES256", Key: ec.public(1)}}
	both := append(slices.Clone(ecKeys), broker.PublicKey{KID: "ed:1", Alg: "EdDSA", Key: ed.public(1)})
	// What Vault answers for the key "ed" at each step ("ec" always works).
	const (
		ok      = "ok"
		absent  = "absent"  // 404: no such key
		denied  = "denied"  // 403
		sealed  = "sealed"  // 503
		allDeny = "alldeny" // 403 for every key: the broker's token was revoked
	)
	tests := []struct {
		name  string
		steps []string // Vault's answer for "ed" on each read, a minute apart
		want  []broker.PublicKey
		err   errShape
		warn  bool // a warning names transit/keys/ed
	}{
		{"ok/absent-key-left-out", []string{absent}, ecKeys, errShape{}, true},
		{"ok/denied-key-left-out", []string{denied}, ecKeys, errShape{}, true},
		{"ok/deleted-key-keeps-its-versions", []string{ok, absent}, both, errShape{}, true},
		{"ok/sealed-key-keeps-its-versions", []string{ok, sealed}, both, errShape{}, false},
		{"ok/token-revoked-keeps-every-version", []string{ok, allDeny}, both, errShape{}, false},
		{"fail/sealed-key-never-read", []string{sealed}, nil, errShape{unavailable, ReasonUnavailable}, false},
		{"fail/token-revoked-nothing-known", []string{allDeny}, nil, errShape{unavailable, ReasonDenied}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var mu sync.Mutex
			answer := ok
			deny := replyRaw(403, `{"errors":["permission denied"]}`)
			f := newFakeVault(t, map[string]http.HandlerFunc{
				"GET /v1/transit/keys/ec": func(w http.ResponseWriter, r *http.Request) {
					mu.Lock()
					a := answer
					mu.Unlock()
					if a == allDeny {
						deny(w, r)
						return
					}
					reply(w, 200, ec.readReply(t))
				},
				"GET /v1/transit/keys/ed": func(w http.ResponseWriter, r *http.Request) {
					mu.Lock()
					a := answer
					mu.Unlock()
					switch a {
					case ok:
						reply(w, 200, ed.readReply(t))
					case absent:
						replyRaw(404, `{"errors":[]}`)(w, r)
					case denied, allDeny:
						deny(w, r)
					case sealed:
						replyRaw(503, `{"errors":["Vault is sealed"]}`)(w, r)
					}
				},
			})
			var logs bytes.Buffer // PublicKeys logs from the caller's goroutine
			now := t0
			tk, err := NewTransitKeys(TransitKeysOptions{Client: f.client(t), Keys: []string{"ec", "ed"}, CacheTTL: 10 * time.Second, MaxStale: 5 * time.Minute,
				Log: slog.New(slog.NewJSONHandler(&logs, nil)), Now: func() time.Time { return now }})
			if err != nil {
				t.Fatal(err)
			}
			var got []broker.PublicKey
			for i, a := range tc.steps {
				mu.Lock()
				answer = a
				mu.Unlock()
				now = now.Add(time.Minute)
				got, err = tk.PublicKeys(context.Background())
				if i < len(tc.steps)-1 && err != nil {
					t.Fatalf("step %d (%s): PublicKeys() = %v", i, a, err)
				}
			}
			if diff := cmp.Diff(tc.err, shapeOf(err)); diff != "" {
				t.Fatalf("PublicKeys() error = %v, want %+v", err, tc.err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("PublicKeys() (-want +got):\n%s", diff)
			}
			if warned := strings.Contains(logs.String(), `"transit_key":"transit/keys/ed"`); warned != tc.warn {
				t.Errorf("warning for transit/keys/ed logged = %v, want %v; logs:\n%s", warned, tc.warn, logs.String())
			}
		})
	}

	t.Run("ok/versions-dropped-after-max-stale", func(t *testing.T) {
		t.Parallel()
		var mu sync.Mutex
		edAbsent := false
		f := newFakeVault(t, map[string]http.HandlerFunc{
			"GET /v1/transit/keys/ec": func(w http.ResponseWriter, r *http.Request) { reply(w, 200, ec.readReply(t)) },
			"GET /v1/transit/keys/ed": func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				a := edAbsent
				mu.Unlock()
				if a {
					replyRaw(404, `{"errors":[]}`)(w, r)
					return
				}
				reply(w, 200, ed.readReply(t))
			},
		})
		now := t0
		tk, err := NewTransitKeys(TransitKeysOptions{Client: f.client(t), Keys: []string{"ec", "ed"}, CacheTTL: 10 * time.Second, MaxStale: time.Minute,
			Log: slog.New(slog.DiscardHandler), Now: func() time.Time { return now }})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tk.PublicKeys(context.Background()); err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		edAbsent = true
		mu.Unlock()
		for _, step := range []struct {
			advance time.Duration
			want    []broker.PublicKey
		}{{30 * time.Second, both}, {29 * time.Second, both}, {2 * time.Second, ecKeys}} {
			now = now.Add(step.advance)
			got, err := tk.PublicKeys(context.Background())
			if err != nil {
				t.Fatalf("PublicKeys() = %v", err)
			}
			if diff := cmp.Diff(step.want, got); diff != "" {
				t.Errorf("%v after ed's last read: PublicKeys() (-want +got):\n%s", now.Sub(t0), diff)
			}
		}
	})
}

// TestTransitKeysDoNotQueueBehindSlowVault: while one caller waits for a
// slow Vault, the others are served the last list at once; with nothing
// cached they wait for that read rather than start their own.
func TestTransitKeysDoNotQueueBehindSlowVault(t *testing.T) {
	t.Parallel()
	ec := newFakeKey(t, KeyTypeECDSAP256, 1)
	want := []broker.PublicKey{{KID: "ec:1", Alg: "ES256", Key: ec.public(1)}}
	entered, release := make(chan struct{}, 4), make(chan struct{})
	var mu sync.Mutex
	slow := false
	f := newFakeVault(t, map[string]http.HandlerFunc{
		"GET /v1/transit/keys/ec": func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			s := slow
			mu.Unlock()
			if s {
				entered <- struct{}{}
				<-release
			}
			reply(w, 200, ec.readReply(t))
		},
	})
	var nowMu sync.Mutex
	now := t0
	clock := func() time.Time { nowMu.Lock(); defer nowMu.Unlock(); return now }
	tk, err := NewTransitKeys(TransitKeysOptions{Client: f.client(t), Keys: []string{"ec"}, CacheTTL: 10 * time.Second, MaxStale: time.Minute, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tk.PublicKeys(context.Background()); err != nil {
		t.Fatal(err)
	}
	nowMu.Lock()
	now = now.Add(20 * time.Second) // stale, within MaxStale
	nowMu.Unlock()
	mu.Lock()
	slow = true
	mu.Unlock()

	first := make(chan error, 1)
	go func() {
		_, err := tk.PublicKeys(context.Background())
		first <- err
	}()
	<-entered // the first caller is reading Vault
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := tk.PublicKeys(ctx)
	if err != nil {
		t.Fatalf("PublicKeys() during a slow read = %v, want the last list at once", err)
	}
	select {
	case err := <-first:
		t.Fatalf("the second caller was answered only after the first caller's read ended (%v): it queued behind Vault", err)
	default: // the first caller is still held in Vault
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("PublicKeys() during a slow read (-want +got):\n%s", diff)
	}
	close(release)
	if err := <-first; err != nil {
		t.Errorf("the reading caller: PublicKeys() = %v", err)
	}
	if n := f.total(); n != 2 {
		t.Errorf("key reads = %d, want 2 (the second caller must not read)", n)
	}
}

// TestTransitKeysCallerWhoGivesUpDoesNotFailOthers: a JWKS client that
// disconnects while the broker reads Vault (a verifier with a short timeout
// on a cold cache) says nothing about Vault: the next caller must get the
// keys, not that client's cancellation as 503 for the retry interval.
func TestTransitKeysCallerWhoGivesUpDoesNotFailOthers(t *testing.T) {
	t.Parallel()
	ec := newFakeKey(t, KeyTypeECDSAP256, 1)
	entered := make(chan struct{}, 1)
	var mu sync.Mutex
	hold := true
	f := newFakeVault(t, map[string]http.HandlerFunc{
		"GET /v1/transit/keys/ec": func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			h := hold
			hold = false
			mu.Unlock()
			if h {
				entered <- struct{}{}
				<-r.Context().Done() // held until the caller gives up
				return
			}
			reply(w, 200, ec.readReply(t))
		},
	})
	tk, err := NewTransitKeys(TransitKeysOptions{Client: f.client(t), Keys: []string{"ec"}, Now: func() time.Time { return t0 }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	first := make(chan error, 1)
	go func() {
		_, err := tk.PublicKeys(ctx)
		first <- err
	}()
	<-entered
	cancel()
	if err := <-first; !errors.Is(err, broker.ErrUnavailable) {
		t.Fatalf("the caller who gave up: PublicKeys() = %v, want ErrUnavailable", err)
	}
	got, err := tk.PublicKeys(context.Background())
	if err != nil {
		t.Fatalf("the next caller: PublicKeys() = %v, want the keys (the previous caller's cancellation is not a Vault outage)", err)
	}
	want := []broker.PublicKey{{KID: "ec:1", Alg: "ES256", Key: ec.public(1)}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("the next caller: PublicKeys() (-want +got):\n%s", diff)
	}
}

// TestServesVersionSplitsKIDAsTheJWKS: the minter finds a key version in
// the JWKS by the KID rule broker/jwks uses (broker.ParseKeyID: the last
// ":"). It split at the first ":", so a key whose name held one (policy
// validation refuses it today; the KID format does not) was never found
// served, while the JWKS read the same KID at its last ":".
func TestServesVersionSplitsKIDAsTheJWKS(t *testing.T) {
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	served := []broker.PublicKey{{KID: kid("team:orders", 2), Alg: "EdDSA", Key: pub}}
	if !servesVersion(served, "team:orders", 2, pub) {
		t.Errorf("servesVersion(%q, version 2) = false, want true", served[0].KID)
	}
	if servesVersion(served, "team", 2, pub) || servesVersion(served, "team:orders", 1, pub) {
		t.Errorf("servesVersion matched another key or version of %q", served[0].KID)
	}
}
