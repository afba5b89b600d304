package authn

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"testing"
)

// sameKey answers by key material, whichever pointer holds it, and answers
// the same pointer (every verified-token cache hit while the issuer's key
// set is unchanged) without allocating.
func TestSameKey(t *testing.T) {
	ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ec2, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	ecCopy := ec.PublicKey // same material, another pointer (a key set fetched again)
	rsaCopy := rk.PublicKey
	edCopy := append(ed25519.PublicKey(nil), edPub...)
	for _, c := range []struct {
		name string
		a, b any
		want bool
	}{
		{"ecdsa same pointer", &ec.PublicKey, &ec.PublicKey, true},
		{"ecdsa same material", &ec.PublicKey, &ecCopy, true},
		{"ecdsa other key", &ec.PublicKey, &ec2.PublicKey, false},
		{"rsa same pointer", &rk.PublicKey, &rk.PublicKey, true},
		{"rsa same material", &rk.PublicKey, &rsaCopy, true},
		{"rsa vs ecdsa", &rk.PublicKey, &ec.PublicKey, false},
		{"ed25519 same material", edPub, edCopy, true},
		{"ed25519 vs ecdsa", edPub, &ec.PublicKey, false},
		{"nil cached key", &ec.PublicKey, nil, false},
		{"not a key", "x", "x", false},
	} {
		if got := sameKey(c.a, c.b); got != c.want {
			t.Errorf("%s: sameKey = %v, want %v", c.name, got, c.want)
		}
	}
	for _, k := range []any{&ec.PublicKey, &rk.PublicKey} {
		if n := testing.AllocsPerRun(100, func() { _ = sameKey(k, k) }); n != 0 {
			t.Errorf("sameKey(%T, same pointer): %v allocations, want 0", k, n)
		}
	}
}
