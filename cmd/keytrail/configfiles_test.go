package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/keytrail/keytrail/e2e/harness"
)

// writeKeyPair writes, as name.crt and name.key in dir, a self-signed
// certificate valid from notBefore to notAfter and its ECDSA key.
func writeKeyPair(t *testing.T, dir, name string, notBefore, notAfter time.Time) (certFile, keyFile string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: notBefore, NotAfter: notAfter, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, DNSNames: []string{name}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certFile = writeFile(t, dir, name+".crt", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})))
	keyFile = writeFile(t, dir, name+".key", pkcs8PEM(t, key))
	return certFile, keyFile
}

// pkcs8PEM is key as a PKCS#8 PEM block.
func pkcs8PEM(t *testing.T, key crypto.PrivateKey) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
}

// writeEd25519Key writes a new Ed25519 checkpoint key to dir/name.
func writeEd25519Key(t *testing.T, dir, name string) string {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return writeFile(t, dir, name, pkcs8PEM(t, priv))
}

// TestServerStartupNamesTheFileAtFault: a TLS key pair, a Vault CA bundle
// or a checkpoint key that does not parse stops keytrail server at
// start-up with an error naming the configuration field and the file, as
// keytrail config check names them, and with no hint about something else.
func TestServerStartupNamesTheFileAtFault(t *testing.T) {
	vp := harness.StartVault(t)
	dir := t.TempDir()
	pol := writeFile(t, dir, "policy.yaml", serverTestPolicy)
	certFile, keyFile := writeKeyPair(t, dir, "broker", time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	otherCert, _ := writeKeyPair(t, dir, "other", time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour))
	garbage := writeFile(t, dir, "garbage.pem", "not a PEM file\n")
	tests := []struct {
		name    string
		mod     func(*Config)
		want    []string
		notWant string
	}{
		{name: "fail/tls-key-unparsable", mod: func(c *Config) { c.TLS = &TLSConfig{CertFile: certFile, KeyFile: garbage} },
			want: []string{"tls.key_file: " + garbage + ": no PEM private key"}},
		{name: "fail/tls-cert-unparsable", mod: func(c *Config) { c.TLS = &TLSConfig{CertFile: garbage, KeyFile: keyFile} },
			want: []string{"tls.cert_file: " + garbage + ": no PEM certificate"}},
		{name: "fail/tls-mismatched-pair", mod: func(c *Config) { c.TLS = &TLSConfig{CertFile: otherCert, KeyFile: keyFile} },
			want: []string{"tls.key_file: " + keyFile + ": private key does not match the certificate of tls.cert_file " + otherCert}},
		{name: "fail/vault-ca-unparsable", mod: func(c *Config) { c.Vault.CAFile = garbage },
			want: []string{"vault.ca_file: " + garbage + ": no PEM certificate"}, notWant: "VAULT_TOKEN"},
		{name: "fail/checkpoint-key-unparsable", mod: func(c *Config) { c.Audit.CheckpointKeyFile = garbage },
			want: []string{"audit.checkpoint_key_file: " + garbage + ": no PEM block found"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			readyc, errc := goServer(t, ctx, t.TempDir(), pol, vp.Addr, vp.RootToken, tt.mod)
			var err error
			select {
			case addr := <-readyc:
				cancel()
				<-errc
				t.Fatalf("server started on %s, want a start-up error", addr)
			case err = <-errc:
			case <-time.After(60 * time.Second):
				t.Fatal("server neither started nor failed")
			}
			for _, w := range tt.want {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("runServer() = %v, want an error containing %q", err, w)
				}
			}
			if tt.notWant != "" && err != nil && strings.Contains(err.Error(), tt.notWant) {
				t.Errorf("runServer() = %v, want no mention of %s", err, tt.notWant)
			}
		})
	}
}

// TestLoadKeyPairAcceptsWhatX509KeyPairAccepts: loadKeyPair (keytrail
// server's start-up and its TLS reload) accepts every pair
// tls.X509KeyPair does. A chain whose intermediate Go's x509 cannot parse
// (here: a negative serial number, which Go refuses since 1.23 and some
// old CAs issued) is served as is by tls.X509KeyPair, which parses only
// the leaf; the relying party, not the broker, judges the chain.
func TestLoadKeyPairAcceptsWhatX509KeyPairAccepts(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile := writeKeyPair(t, dir, "leaf", time.Now().Add(-time.Hour), time.Now().Add(time.Hour))
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(0x7f0102), Subject: pkix.Name{CommonName: "old intermediate"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	i := bytes.Index(der, []byte{0x02, 0x03, 0x7f, 0x01, 0x02}) // the serial's INTEGER
	if i < 0 {
		t.Fatal("serial not found in the DER")
	}
	der[i+2] = 0xff // now negative
	if _, err := x509.ParseCertificate(der); err == nil {
		t.Fatal("x509.ParseCertificate accepts a negative serial: the test no longer tests anything")
	}
	leafPEM, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	chain := string(leafPEM) + string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	chainFile := writeFile(t, dir, "chain.crt", chain)
	keyPEM, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	want, err := tls.X509KeyPair([]byte(chain), keyPEM)
	if err != nil {
		t.Fatalf("tls.X509KeyPair: %v", err)
	}
	got, err := loadKeyPair(chainFile, keyFile)
	if err != nil {
		t.Fatalf("loadKeyPair refuses a pair tls.X509KeyPair accepts: %v", err)
	}
	if len(got.Certificate) != len(want.Certificate) || !bytes.Equal(got.Certificate[1], der) {
		t.Fatalf("loadKeyPair chain has %d certificates, want %d with the intermediate", len(got.Certificate), len(want.Certificate))
	}
}
