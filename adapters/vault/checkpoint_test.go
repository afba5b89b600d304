package vault

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"encoding/base64"
	"errors"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/keytrail/keytrail/broker"
	"github.com/keytrail/keytrail/broker/audit"
)

var cpMsg = audit.CheckpointSigningInput("kt-test", 7, "00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff00ff")

func TestTransitCheckpointSignerSign(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		typ      string
		versions int
	}{
		{"ok/ed25519", KeyTypeEd25519, 1},
		{"ok/ed25519-latest-of-three", KeyTypeEd25519, 3},
		{"ok/ecdsa-p256-jws", KeyTypeECDSAP256, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			key := newFakeKey(t, tc.typ, tc.versions)
			f := newFakeVault(t, fakeTransit(t, "audit-cp", key, nil))
			s, err := NewTransitCheckpointSigner(TransitCheckpointSignerOptions{Client: f.client(t), Key: "audit-cp"})
			if err != nil {
				t.Fatal(err)
			}
			if got, want := s.KeyID(), "audit-cp"; got != want {
				t.Errorf("KeyID() before Sign = %q, want %q", got, want)
			}
			sig, err := s.Sign(context.Background(), cpMsg)
			if err != nil {
				t.Fatalf("Sign() = %v", err)
			}
			wantKID := kid("audit-cp", tc.versions)
			got := struct{ KeyID, Alg string }{s.KeyID(), s.Alg()}
			want := struct{ KeyID, Alg string }{wantKID, audit.AlgVaultTransit}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("KeyID/Alg after Sign (-want +got):\n%s", diff)
			}
			// The signature verifies with the public key the JWKS would
			// serve under that kid, and with no other version.
			var keys []broker.PublicKey
			for v := 1; v <= tc.versions; v++ {
				alg := "EdDSA"
				if tc.typ == KeyTypeECDSAP256 {
					alg = "ES256"
				}
				keys = append(keys, broker.PublicKey{KID: kid("audit-cp", v), Alg: alg, Key: key.public(v)})
			}
			verify, err := CheckpointVerifyFunc(keys)
			if err != nil {
				t.Fatal(err)
			}
			if err := verify(wantKID, s.Alg(), cpMsg, sig); err != nil {
				t.Errorf("verify(%s) = %v, want nil", wantKID, err)
			}
			if tc.versions > 1 {
				if err := verify(kid("audit-cp", 1), s.Alg(), cpMsg, sig); err == nil {
					t.Errorf("verify(version 1) = nil, want an error for a version-%d signature", tc.versions)
				}
			}
			if n := f.count("GET /v1/transit/keys/audit-cp"); n != 1 {
				t.Errorf("key reads = %d, want 1", n)
			}
			if _, err := s.Sign(context.Background(), cpMsg); err != nil {
				t.Fatalf("second Sign() = %v", err)
			}
			if n := f.count("GET /v1/transit/keys/audit-cp"); n != 1 {
				t.Errorf("key reads after a second Sign = %d, want 1 (cached)", n)
			}
		})
	}
}

// TestTransitCheckpointSignerRotation: after the cache ages out, a rotated
// key signs with its new version and KeyID follows.
func TestTransitCheckpointSignerRotation(t *testing.T) {
	t.Parallel()
	key := newFakeKey(t, KeyTypeEd25519, 2)
	key.latest = 1
	var mu sync.Mutex
	locked := map[string]http.HandlerFunc{
		"GET /v1/transit/keys/cp": func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			reply(w, 200, key.readReply(t))
		},
		// Signs with the version asked for, as Vault does.
		"PUT /v1/transit/sign/cp": func(w http.ResponseWriter, r *http.Request) {
			body := decodeBody(t, r)
			v, _ := body["key_version"].(float64)
			in, _ := body["input"].(string)
			input, err := base64.StdEncoding.DecodeString(in)
			if err != nil || v < 1 || v > 2 {
				reply(w, 400, map[string]any{"errors": []string{"bad request"}})
				return
			}
			reply(w, 200, map[string]any{"data": map[string]any{"signature": key.sign(t, int(v), input)}})
		},
	}
	f := newFakeVault(t, locked)
	now := t0
	var nowMu sync.Mutex
	clock := func() time.Time { nowMu.Lock(); defer nowMu.Unlock(); return now }
	s, err := NewTransitCheckpointSigner(TransitCheckpointSignerOptions{Client: f.client(t), Key: "cp", KeyRefresh: time.Minute, Now: clock})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Load(context.Background()); err != nil {
		t.Fatalf("Load() = %v", err)
	}
	var got []string
	got = append(got, s.KeyID())
	mu.Lock()
	key.latest = 2
	mu.Unlock()
	if _, err := s.Sign(context.Background(), cpMsg); err != nil {
		t.Fatal(err)
	}
	got = append(got, s.KeyID()) // still cached: version 1
	nowMu.Lock()
	now = now.Add(2 * time.Minute)
	nowMu.Unlock()
	if _, err := s.Sign(context.Background(), cpMsg); err != nil {
		t.Fatal(err)
	}
	got = append(got, s.KeyID())
	if diff := cmp.Diff([]string{"cp:1", "cp:1", "cp:2"}, got); diff != "" {
		t.Errorf("KeyID() after Load, Sign, Sign after rotation (-want +got):\n%s", diff)
	}
}

func TestTransitCheckpointSignerFailures(t *testing.T) {
	t.Parallel()
	other := newFakeKey(t, KeyTypeEd25519, 1)
	tests := []struct {
		name    string
		routes  func(t *testing.T) map[string]http.HandlerFunc
		wantErr errShape
	}{
		{
			name: "fail/signature-by-another-key",
			routes: func(t *testing.T) map[string]http.HandlerFunc {
				return fakeTransit(t, "cp", newFakeKey(t, KeyTypeEd25519, 1), func(in []byte) string { return other.sign(t, 1, in) })
			},
			wantErr: errShape{unavailable, ReasonBadResponse},
		},
		{
			name: "fail/signature-of-other-version",
			routes: func(t *testing.T) map[string]http.HandlerFunc {
				k := newFakeKey(t, KeyTypeECDSAP256, 2)
				return fakeTransit(t, "cp", k, func(in []byte) string { return k.sign(t, 1, in) })
			},
			wantErr: errShape{unavailable, ReasonBadResponse},
		},
		{
			name: "fail/asn1-signature-without-jws-marshaling",
			routes: func(t *testing.T) map[string]http.HandlerFunc {
				return fakeTransit(t, "cp", newFakeKey(t, KeyTypeECDSAP256, 1), func([]byte) string { return "vault:v1:MEUCIQ==" })
			},
			wantErr: errShape{unavailable, ReasonBadResponse},
		},
		{
			name: "fail/no-signature",
			routes: func(t *testing.T) map[string]http.HandlerFunc {
				r := fakeTransit(t, "cp", newFakeKey(t, KeyTypeEd25519, 1), nil)
				r["PUT /v1/transit/sign/cp"] = replyRaw(200, `{"data":{}}`)
				return r
			},
			wantErr: errShape{unavailable, ReasonBadResponse},
		},
		{
			name: "fail/unsupported-key-type",
			routes: func(t *testing.T) map[string]http.HandlerFunc {
				return map[string]http.HandlerFunc{"GET /v1/transit/keys/cp": replyRaw(200, `{"data":{"type":"rsa-2048","latest_version":1,"min_decryption_version":1,"keys":{"1":{}}}}`)}
			},
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name: "fail/key-missing",
			routes: func(t *testing.T) map[string]http.HandlerFunc {
				return map[string]http.HandlerFunc{"GET /v1/transit/keys/cp": replyRaw(404, ``)}
			},
			wantErr: errShape{unavailable, ReasonConfig},
		},
		{
			name: "fail/sign-denied",
			routes: func(t *testing.T) map[string]http.HandlerFunc {
				r := fakeTransit(t, "cp", newFakeKey(t, KeyTypeEd25519, 1), nil)
				r["PUT /v1/transit/sign/cp"] = replyRaw(403, `{"errors":["permission denied"]}`)
				return r
			},
			wantErr: errShape{unavailable, ReasonDenied},
		},
		{
			name: "fail/sign-sealed",
			routes: func(t *testing.T) map[string]http.HandlerFunc {
				r := fakeTransit(t, "cp", newFakeKey(t, KeyTypeEd25519, 1), nil)
				r["PUT /v1/transit/sign/cp"] = replyRaw(503, `{"errors":["Vault is sealed"]}`)
				return r
			},
			wantErr: errShape{unavailable, ReasonUnavailable},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeVault(t, tc.routes(t))
			s, err := NewTransitCheckpointSigner(TransitCheckpointSignerOptions{Client: f.client(t), Key: "cp"})
			if err != nil {
				t.Fatal(err)
			}
			sig, err := s.Sign(context.Background(), cpMsg)
			if diff := cmp.Diff(tc.wantErr, shapeOf(err)); diff != "" {
				t.Errorf("Sign() = %v, want %+v", err, tc.wantErr)
			}
			if sig != nil {
				t.Errorf("Sign() signature = %x, want nil", sig)
			}
			if got := s.KeyID(); got != "cp" {
				t.Errorf("KeyID() after a failed Sign = %q, want %q (no version signed with)", got, "cp")
			}
		})
	}

	t.Run("fail/cancelled-context", func(t *testing.T) {
		t.Parallel()
		f := newFakeVault(t, nil) // any request fails the test
		s, err := NewTransitCheckpointSigner(TransitCheckpointSignerOptions{Client: f.client(t), Key: "cp"})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := s.Sign(ctx, cpMsg); !errors.Is(err, broker.ErrUnavailable) {
			t.Errorf("Sign(cancelled) = %v, want ErrUnavailable", err)
		}
	})
}

func TestNewTransitCheckpointSignerValidates(t *testing.T) {
	t.Parallel()
	c := newFakeVault(t, nil).client(t)
	for _, tc := range []struct {
		name string
		o    TransitCheckpointSignerOptions
		ok   bool
	}{
		{"ok/minimal", TransitCheckpointSignerOptions{Client: c, Key: "keytrail-ed25519"}, true},
		{"ok/mount", TransitCheckpointSignerOptions{Client: c, Key: "k", TransitMount: "ops/transit"}, true},
		{"fail/no-client", TransitCheckpointSignerOptions{Key: "k"}, false},
		{"fail/no-key", TransitCheckpointSignerOptions{Client: c}, false},
		{"fail/key-with-slash", TransitCheckpointSignerOptions{Client: c, Key: "a/b"}, false},
		{"fail/key-with-colon", TransitCheckpointSignerOptions{Client: c, Key: "a:1"}, false},
		{"fail/key-traversal", TransitCheckpointSignerOptions{Client: c, Key: ".."}, false},
		{"fail/bad-mount", TransitCheckpointSignerOptions{Client: c, Key: "k", TransitMount: "/transit"}, false},
		{"fail/negative-refresh", TransitCheckpointSignerOptions{Client: c, Key: "k", KeyRefresh: -time.Second}, false},
		{"fail/negative-publish-delay", TransitCheckpointSignerOptions{Client: c, Key: "k", PublishDelay: -time.Second}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := NewTransitCheckpointSigner(tc.o)
			if got := err == nil; got != tc.ok {
				t.Errorf("NewTransitCheckpointSigner(%+v) = %v, %v; want ok=%v", tc.o, s, err, tc.ok)
			}
		})
	}
}

func TestCheckpointVerifyFunc(t *testing.T) {
	t.Parallel()
	edPub, edPriv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecKey := newFakeKey(t, KeyTypeECDSAP256, 1)
	ecSig, err := parseVaultSignature(ecKey.sign(t, 1, cpMsg), 1, KeyTypeECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	edSig := ed25519.Sign(edPriv, cpMsg)
	keys := []broker.PublicKey{
		{KID: "ed:1", Alg: "EdDSA", Key: edPub},
		{KID: "ec:1", Alg: "ES256", Key: ecKey.public(1)},
		{KID: "bare:1", Key: edPub},               // no alg: the key type decides
		{KID: "fs:1", Alg: "Ed25519", Key: edPub}, // RFC 9864's name for EdDSA over Ed25519
		{KID: "ed:1", Alg: "EdDSA", Key: edPub},   // the same key twice is fine
	}
	verify, err := CheckpointVerifyFunc(keys)
	if err != nil {
		t.Fatal(err)
	}
	flip := func(b []byte) []byte { c := append([]byte(nil), b...); c[10] ^= 1; return c }
	type outcome struct {
		OK      bool
		Unknown bool
	}
	for _, tc := range []struct {
		name string
		kid  string
		alg  string
		msg  []byte
		sig  []byte
		want outcome
	}{
		{"ok/ed25519", "ed:1", audit.AlgVaultTransit, cpMsg, edSig, outcome{OK: true}},
		{"ok/es256-raw-r-s", "ec:1", audit.AlgVaultTransit, cpMsg, ecSig, outcome{OK: true}},
		{"ok/key-without-alg", "bare:1", audit.AlgVaultTransit, cpMsg, edSig, outcome{OK: true}},
		{"ok/key-alg-ed25519", "fs:1", audit.AlgVaultTransit, cpMsg, edSig, outcome{OK: true}},
		{"fail/forged-ed25519", "ed:1", audit.AlgVaultTransit, cpMsg, flip(edSig), outcome{}},
		{"fail/forged-es256", "ec:1", audit.AlgVaultTransit, cpMsg, flip(ecSig), outcome{}},
		{"fail/other-head", "ed:1", audit.AlgVaultTransit, audit.CheckpointSigningInput("kt-test", 8, "00"), edSig, outcome{}},
		{"fail/ed25519-sig-under-ec-kid", "ec:1", audit.AlgVaultTransit, cpMsg, edSig, outcome{}},
		{"fail/es256-short-sig", "ec:1", audit.AlgVaultTransit, cpMsg, ecSig[:63], outcome{}},
		{"fail/alg-ed25519-claimed", "ed:1", audit.AlgEd25519, cpMsg, edSig, outcome{}},
		{"fail/unknown-kid", "ed:2", audit.AlgVaultTransit, cpMsg, edSig, outcome{Unknown: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := verify(tc.kid, tc.alg, tc.msg, tc.sig)
			got := outcome{OK: err == nil, Unknown: errors.Is(err, audit.ErrUnknownKey)}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("verify(%q, %q) = %v, want %+v", tc.kid, tc.alg, err, tc.want)
			}
		})
	}

	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		keys []broker.PublicKey
	}{
		{"fail/no-kid", []broker.PublicKey{{Alg: "EdDSA", Key: edPub}}},
		{"fail/rsa-key", []broker.PublicKey{{KID: "r:1", Alg: "RS256", Key: &rsaKey.PublicKey}}},
		{"fail/p384-key", []broker.PublicKey{{KID: "p:1", Key: &p384.PublicKey}}},
		{"fail/alg-mismatch", []broker.PublicKey{{KID: "ed:1", Alg: "ES256", Key: edPub}}},
		{"fail/alg-ed25519-on-p256", []broker.PublicKey{{KID: "ec:1", Alg: "Ed25519", Key: ecKey.public(1)}}},
		{"fail/short-ed25519", []broker.PublicKey{{KID: "ed:1", Key: edPub[:31]}}},
		{"fail/kid-names-two-keys", []broker.PublicKey{{KID: "ed:1", Key: edPub}, {KID: "ed:1", Key: otherPub}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if f, err := CheckpointVerifyFunc(tc.keys); err == nil || f != nil {
				t.Errorf("CheckpointVerifyFunc(%s) = %v, %v; want an error", tc.name, f != nil, err)
			}
		})
	}
}

// TestTransitCheckpointSignerSignsOnlyWithPublishedVersions: right after the
// transit key is rotated, a checkpoint must verify against the JWKS the
// broker serves at that moment (what `keytrail audit verify --jwks <URL>`
// reads): like the JWT minter, the signer uses a new version only once it
// is PublishDelay old, and min_encryption_version wins over the delay.
func TestTransitCheckpointSignerSignsOnlyWithPublishedVersions(t *testing.T) {
	t.Parallel()
	for _, typ := range []string{KeyTypeECDSAP256, KeyTypeEd25519} {
		t.Run(typ, func(t *testing.T) {
			t.Parallel()
			rt := newRotatingTransit(t, "cp", typ)
			jwks, err := NewTransitKeys(TransitKeysOptions{Client: rt.f.client(t), Keys: []string{"cp"}, Now: rt.clock})
			if err != nil {
				t.Fatal(err)
			}
			s, err := NewTransitCheckpointSigner(TransitCheckpointSignerOptions{Client: rt.f.client(t), Key: "cp", Now: rt.clock})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Load(context.Background()); err != nil {
				t.Fatalf("Load() = %v", err)
			}
			// sign signs a checkpoint now and verifies it as `audit verify
			// --jwks` would, against the JWKS served now; it returns the
			// checkpoint's key id.
			sign := func(step string) string {
				t.Helper()
				sig, err := s.Sign(context.Background(), cpMsg)
				if err != nil {
					t.Fatalf("%s: Sign() = %v", step, err)
				}
				served, err := jwks.PublicKeys(context.Background())
				if err != nil {
					t.Fatalf("%s: PublicKeys() = %v", step, err)
				}
				verify, err := CheckpointVerifyFunc(served)
				if err != nil {
					t.Fatal(err)
				}
				if err := verify(s.KeyID(), s.Alg(), cpMsg, sig); err != nil {
					t.Errorf("%s: the checkpoint (key %s) does not verify against the served JWKS: %v", step, s.KeyID(), err)
				}
				return s.KeyID()
			}
			steps := []struct {
				name    string
				before  func()
				wantKID string
			}{
				{"ok/before-rotation", func() {}, "cp:1"},
				// The JWKS is read (and cached), the key is rotated, and
				// the signer's KeyRefresh runs out just after.
				{"ok/just-rotated-signs-with-published", func() {
					rt.advance(DefaultKeyRefresh - time.Second)
					if _, err := jwks.PublicKeys(context.Background()); err != nil {
						t.Fatal(err)
					}
					rt.advance(time.Second / 2)
					rt.rotate()
					rt.advance(time.Second)
				}, "cp:1"},
				{"ok/new-version-once-published", func() { rt.advance(DefaultPublishDelay) }, "cp:2"},
				{"ok/min-encryption-version-wins", func() {
					rt.rotate()
					rt.minEncToLatest()
					rt.advance(DefaultKeyRefresh)
					rt.advance(DefaultPublicKeysTTL)
				}, "cp:3"},
			}
			for _, st := range steps {
				st.before()
				if got := sign(st.name); got != st.wantKID {
					t.Errorf("%s: KeyID() = %q, want %q", st.name, got, st.wantKID)
				}
			}
		})
	}
}

// TestTransitCheckpointSignerVerifyOwn: the sink checks, at Open, a
// checkpoint line under one of the signer's key versions with the public
// keys Load read (no further Vault call): a signature its key made
// verifies, another does not, a version newer than the key's latest is
// forged, and a kid of another key is not the signer's to tell.
func TestTransitCheckpointSignerVerifyOwn(t *testing.T) {
	t.Parallel()
	key := newFakeKey(t, KeyTypeEd25519, 2)
	f := newFakeVault(t, fakeTransit(t, "audit-cp", key, nil))
	s, err := NewTransitCheckpointSigner(TransitCheckpointSignerOptions{Client: f.client(t), Key: "audit-cp"})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := s.Load(ctx); err != nil {
		t.Fatal(err)
	}
	sig, err := s.Sign(ctx, cpMsg)
	if err != nil {
		t.Fatal(err)
	}
	bad := append([]byte(nil), sig...)
	bad[0] ^= 1
	for _, tc := range []struct {
		name        string
		kid         string
		sig         []byte
		known, good bool
	}{
		{"ok/own", kid("audit-cp", 2), sig, true, true},
		{"fail/changed-signature", kid("audit-cp", 2), bad, true, false},
		{"fail/other-version", kid("audit-cp", 1), sig, true, false},
		{"fail/version-after-latest", kid("audit-cp", 3), sig, true, false},
		{"unknown/other-key", kid("other", 2), sig, false, false},
		{"unknown/bare-name", "audit-cp", sig, false, false},
	} {
		known, good := s.VerifyOwn(ctx, tc.kid, cpMsg, tc.sig)
		if known != tc.known || good != tc.good {
			t.Errorf("%s: VerifyOwn(%q) = %v, %v; want %v, %v", tc.name, tc.kid, known, good, tc.known, tc.good)
		}
	}
	if n := f.count("GET /v1/transit/keys/audit-cp"); n != 1 {
		t.Errorf("key reads = %d, want 1 (Load's, cached)", n)
	}
}
