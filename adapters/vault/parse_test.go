package vault

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var (
	sig64     = bytes.Repeat([]byte{0xfb}, 64) // encodes differently in base64 and base64url
	sigStd    = base64.StdEncoding.EncodeToString(sig64)
	sigRawURL = base64.RawURLEncoding.EncodeToString(sig64)
)

var signatureCases = []struct {
	name    string
	in      string
	version int
	typ     string
	want    []byte // nil: error
}{
	{"ok/ecdsa-jws", "vault:v1:" + sigRawURL, 1, KeyTypeECDSAP256, sig64},
	{"ok/ed25519-std", "vault:v12:" + sigStd, 12, KeyTypeEd25519, sig64},
	{"fail/ecdsa-std-encoding", "vault:v1:" + sigStd, 1, KeyTypeECDSAP256, nil},
	{"fail/ed25519-url-encoding", "vault:v1:" + sigRawURL, 1, KeyTypeEd25519, nil},
	{"fail/wrong-version", "vault:v2:" + sigRawURL, 1, KeyTypeECDSAP256, nil},
	{"fail/leading-zero-version", "vault:v01:" + sigRawURL, 1, KeyTypeECDSAP256, nil},
	{"fail/no-prefix", sigRawURL, 1, KeyTypeECDSAP256, nil},
	{"fail/no-version-separator", "vault:v1" + sigRawURL, 1, KeyTypeECDSAP256, nil},
	{"fail/short", "vault:v1:" + base64.RawURLEncoding.EncodeToString(sig64[:63]), 1, KeyTypeECDSAP256, nil},
	{"fail/asn1-der", "vault:v1:MEUCIQDx", 1, KeyTypeECDSAP256, nil},
	{"fail/rsa-type", "vault:v1:" + sigStd, 1, "rsa-2048", nil},
	{"fail/empty", "", 1, KeyTypeEd25519, nil},
}

func TestParseVaultSignature(t *testing.T) {
	t.Parallel()
	for _, tc := range signatureCases {
		got, err := parseVaultSignature(tc.in, tc.version, tc.typ)
		if (err == nil) != (tc.want != nil) {
			t.Errorf("%s: parseVaultSignature(%q) error = %v, want ok=%v", tc.name, tc.in, err, tc.want != nil)
			continue
		}
		if diff := cmp.Diff(tc.want, got); diff != "" {
			t.Errorf("%s: parseVaultSignature(%q) (-want +got):\n%s", tc.name, tc.in, diff)
		}
	}
}

func FuzzParseVaultSignature(f *testing.F) {
	for _, tc := range signatureCases {
		f.Add(tc.in, tc.version, tc.typ)
	}
	f.Fuzz(func(t *testing.T, in string, version int, typ string) {
		got, err := parseVaultSignature(in, version, typ)
		if err != nil {
			return
		}
		if len(got) != 64 {
			t.Fatalf("parseVaultSignature(%q) = %d bytes, want 64", in, len(got))
		}
		if !strings.HasPrefix(in, "vault:v") {
			t.Fatalf("parseVaultSignature(%q) accepted input without prefix", in)
		}
	})
}

func pemP256(t testing.TB) string {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func pemP384(t testing.TB) string {
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func edB64(t testing.TB) string {
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return base64.StdEncoding.EncodeToString(pub)
}

// transitKeyCases returns JSON data objects of transit/keys/<name> answers.
func transitKeyCases(t testing.TB) []struct {
	name        string
	json        string
	wantVers    []int // versions with public keys; nil: error
	unsupported bool
} {
	q := func(s string) string { b, _ := json.Marshal(s); return string(b) }
	p256, ed := q(pemP256(t)), q(edB64(t))
	return []struct {
		name        string
		json        string
		wantVers    []int
		unsupported bool
	}{
		{"ok/ecdsa", `{"type":"ecdsa-p256","latest_version":1,"min_decryption_version":1,"keys":{"1":{"public_key":` + p256 + `}}}`, []int{1}, false},
		{"ok/ed25519-min-dec", `{"type":"ed25519","latest_version":3,"min_decryption_version":2,"keys":{"2":{"public_key":` + ed + `},"3":{"public_key":` + ed + `}}}`, []int{2, 3}, false},
		{"ok/older-versions-ignored", `{"type":"ed25519","latest_version":2,"min_decryption_version":2,"keys":{"1":{"public_key":"junk"},"2":{"public_key":` + ed + `}}}`, []int{2}, false},
		{"fail/aes", `{"type":"aes256-gcm96","latest_version":1,"min_decryption_version":1,"keys":{"1":1}}`, nil, true},
		{"fail/derived", `{"type":"ed25519","derived":true,"latest_version":1,"min_decryption_version":1,"keys":{"1":{"public_key":""}}}`, nil, true},
		{"fail/p384-under-p256-type", `{"type":"ecdsa-p256","latest_version":1,"min_decryption_version":1,"keys":{"1":{"public_key":` + q(pemP384(t)) + `}}}`, nil, false},
		{"fail/missing-latest", `{"type":"ed25519","latest_version":2,"min_decryption_version":1,"keys":{"1":{"public_key":` + ed + `}}}`, nil, false},
		{"fail/bad-version-key", `{"type":"ed25519","latest_version":1,"min_decryption_version":1,"keys":{"01":{"public_key":` + ed + `}}}`, nil, false},
		{"fail/fractional-version", `{"type":"ed25519","latest_version":1.5,"min_decryption_version":1,"keys":{"1":{"public_key":` + ed + `}}}`, nil, false},
		{"fail/ed25519-pem", `{"type":"ed25519","latest_version":1,"min_decryption_version":1,"keys":{"1":{"public_key":` + p256 + `}}}`, nil, false},
		{"fail/no-keys", `{"type":"ed25519","latest_version":1,"min_decryption_version":1}`, nil, false},
		{"fail/min-above-latest", `{"type":"ed25519","latest_version":1,"min_decryption_version":2,"keys":{}}`, nil, false},
		{"fail/null", `null`, nil, false},
	}
}

func decodeData(s string) (map[string]any, error) {
	var m map[string]any
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber() // as vault/api does
	err := d.Decode(&m)
	return m, err
}

func TestParseTransitKey(t *testing.T) {
	t.Parallel()
	for _, tc := range transitKeyCases(t) {
		data, err := decodeData(tc.json)
		if err != nil {
			t.Fatalf("%s: bad case JSON: %v", tc.name, err)
		}
		k, err := parseTransitKey("k", data)
		if (err == nil) != (tc.wantVers != nil) {
			t.Errorf("%s: parseTransitKey() error = %v, want ok=%v", tc.name, err, tc.wantVers != nil)
			continue
		}
		if got := errors.Is(err, errUnsupportedKey); got != tc.unsupported {
			t.Errorf("%s: parseTransitKey() unsupported = %v, want %v (%v)", tc.name, got, tc.unsupported, err)
		}
		if err != nil {
			continue
		}
		var got []int
		for v := k.MinDecryption; v <= k.Latest; v++ {
			if k.Public[v] != nil {
				got = append(got, v)
			}
		}
		if diff := cmp.Diff(tc.wantVers, got); diff != "" || len(k.Public) != len(tc.wantVers) {
			t.Errorf("%s: parseTransitKey() versions (-want +got):\n%s (public keys: %d)", tc.name, diff, len(k.Public))
		}
	}
}

func FuzzParseTransitKey(f *testing.F) {
	for _, tc := range transitKeyCases(f) {
		f.Add(tc.json)
	}
	f.Fuzz(func(t *testing.T, in string) {
		data, err := decodeData(in)
		if err != nil {
			return
		}
		k, err := parseTransitKey("k", data)
		if err != nil {
			return
		}
		if k.Latest < 1 || k.MinDecryption < 1 || k.MinDecryption > k.Latest {
			t.Fatalf("parseTransitKey(%q) = versions %d..%d", in, k.MinDecryption, k.Latest)
		}
		for v := k.MinDecryption; v <= k.Latest; v++ {
			if k.Public[v] == nil {
				t.Fatalf("parseTransitKey(%q): version %d has no public key", in, v)
			}
		}
	})
}
