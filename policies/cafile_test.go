package policies

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testCAPEM is a self-signed CA certificate named name, valid for a year,
// as PEM.
func testCAPEM(t *testing.T, name string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// caFilesPolicy is a valid policy whose issuer and proxy grant both name
// ca as their ca_file.
func caFilesPolicy(t *testing.T, ca string) *Policy {
	t.Helper()
	p, err := Parse("t.yaml", []byte(doc(map[string]string{
		"issuers": `[{name: i, issuer: "https://issuer.example", jwks_url: "https://issuer.example/jwks", audiences: [keytrail], algorithms: [RS256], ca_file: "` + ca + `"}]`,
		"grants":  proxyGrant(`upstream: "https://api.example.com", ca_file: "` + ca + `", secret: {vault_kv: secret/data/x, field: key}, inject: {header: X-Api-Key}, paths: ["/x"]`),
	})))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestCAFileIsWhatCheckFilesRead: the ca_file bytes a policy hands its
// users (the verifier, the proxy) are those CheckFiles read and checked,
// even when the file changed since: before, each user read the file again,
// so a reload could check one bundle and use another. A policy whose
// CheckFiles did not run reads a ca_file at its first use and keeps the
// outcome, an error included, for its life: a new policy (a reload) reads
// it again.
func TestCAFileIsWhatCheckFilesRead(t *testing.T) {
	dir := t.TempDir()
	ca := filepath.Join(dir, "ca.pem")
	checked := testCAPEM(t, "checked")
	if err := os.WriteFile(ca, checked, 0o600); err != nil {
		t.Fatal(err)
	}
	p := caFilesPolicy(t, ca)
	if _, err := p.CheckFiles(time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ca, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, err := p.CAFile(ca)
	if err != nil || !bytes.Equal(got, checked) {
		t.Fatalf("CAFile after CheckFiles and a change of the file = %q, %v; want the bytes CheckFiles read", got, err)
	}
	got[0] = 'X' // a copy: the next caller still gets the bytes read
	if again, _ := p.CAFile(ca); !bytes.Equal(again, checked) {
		t.Errorf("CAFile after its result was modified = %q, want the bytes CheckFiles read", again)
	}

	// Not checked: read at first use, the outcome kept.
	missing := filepath.Join(dir, "later.pem")
	q := caFilesPolicy(t, missing)
	if _, err := q.CAFile(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("CAFile(missing) = %v, want does not exist", err)
	}
	if err := os.WriteFile(missing, checked, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := q.CAFile(missing); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CAFile(missing) once the file exists = %v, want the error read first, kept for the policy", err)
	}
	if got, err := caFilesPolicy(t, missing).CAFile(missing); err != nil || !bytes.Equal(got, checked) {
		t.Errorf("CAFile of a new policy = %q, %v; want the file read again", got, err)
	}

	// A path the policy does not name is read, not kept.
	other := filepath.Join(dir, "other.pem")
	if _, err := p.CAFile(other); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("CAFile(other) = %v, want does not exist", err)
	}
	if err := os.WriteFile(other, checked, 0o600); err != nil {
		t.Fatal(err)
	}
	if got, err := p.CAFile(other); err != nil || !bytes.Equal(got, checked) {
		t.Errorf("CAFile(a path the policy does not name) = %q, %v; want it read", got, err)
	}
}
